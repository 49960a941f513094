"""Reading the records of Caffe's data sources (LMDB, LevelDB, image lists, HDF5 files): the data layers'
`records` hooks return these, and the solver's feeder batches them. numpy and Pillow only, no torch."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netspec._proto import netspec_pb2 as pb
from netspec.data import probe
from netspec.errors import DataError

if TYPE_CHECKING:
    from netspec.layers.base import LayerSpec


class Records:
    """Random access to one source's records: record i as (data array, label or None)."""

    uneven_hint = "write the records at one size (tools/convert_imageset.py --resize_height H --resize_width W)"

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | float | None]:
        raise NotImplementedError

    def bytes_estimate(self) -> int:
        first, _ = self.read(0)
        return len(self) * first.size * 4


class ImageListRecords(Records):
    """Caffe's ImageData source: "path label" lines, images read with Pillow."""

    uneven_hint = "give new_height and new_width to resize the images to one size"

    def __init__(self, s: LayerSpec) -> None:
        p = s.p
        listing = probe.resolve(p.source, s.base_dir, "image_data_param.source")
        self.items = []
        for n, line in enumerate(probe.read_list(listing, "image list"), 1):
            parts = line.rsplit(None, 1)
            try:
                self.items.append((p.root_folder + parts[0], float(parts[1])))
            except (IndexError, ValueError):
                raise DataError(f"{listing}:{n}: expected 'path label', got '{line}'") from None
        self.base_dir, self.color = s.base_dir, p.is_color
        self.size = (p.new_width, p.new_height) if p.new_height else None

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | float | None]:
        from PIL import Image

        path, label = self.items[i]
        file = probe.resolve(path, self.base_dir, "image")
        try:
            with Image.open(file) as im:
                im = im.convert("RGB" if self.color else "L")
                if self.size:
                    im = im.resize(self.size, Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise DataError(f"cannot read image '{file}': {e}") from None
        # Caffe stores images as BGR
        return (arr[..., ::-1].transpose(2, 0, 1) if self.color else arr[None]), label


class DatumRecords(Records):
    """Caffe's Data source: serialized Datum records in an LMDB (opened in each reading process) or a
    LevelDB (read into memory: LevelDB allows one process at a time), in key order."""

    def __init__(self, s: LayerSpec) -> None:
        p = s.p
        self.path = probe.resolve(p.source, s.base_dir, "data_param.source")
        self.lmdb = p.backend == p.LMDB
        self._txn = None
        if self.lmdb:
            self.keys = [key for key, _ in _lmdb_items(self.path, values=False)]
            self.values: list[bytes] = []
        else:
            self.keys, self.values = [], list(_leveldb_values(self.path))
        if not len(self):
            raise DataError(f"'{self.path}' has no records")
        self.force_color = p.force_encoded_color or s.lp.transform_param.force_color
        self.force_gray = s.lp.transform_param.force_gray

    def __len__(self) -> int:
        return len(self.keys) if self.lmdb else len(self.values)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_txn": None}  # each worker opens its own LMDB transaction

    def _value(self, i: int) -> bytes:
        if not self.lmdb:
            return self.values[i]
        if self._txn is None:
            self._txn = probe.lmdb_env(self.path).begin()
        return bytes(self._txn.get(self.keys[i]))

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | float | None]:
        d = pb.Datum.FromString(self._value(i))
        if d.encoded:
            from PIL import Image

            with Image.open(io.BytesIO(d.data)) as im:
                mode = probe.decoded_mode(im.mode, self.force_color, self.force_gray)
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
            arr = arr[..., ::-1].transpose(2, 0, 1) if mode == "RGB" else arr[None]
        elif d.float_data:
            arr = np.asarray(d.float_data, dtype=np.float32).reshape(d.channels, d.height, d.width)
        else:
            arr = np.frombuffer(d.data, dtype=np.uint8).reshape(d.channels, d.height, d.width)
        return arr, float(d.label)


def _lmdb_items(path: Path, values: bool) -> Iterator[tuple[bytes, bytes | None]]:
    with probe.lmdb_env(path).begin() as txn:
        for key, value in txn.cursor():
            yield bytes(key), bytes(value) if values else None


def _leveldb_values(path: Path) -> Iterator[bytes]:
    import plyvel

    db = plyvel.DB(str(path), create_if_missing=False)
    try:
        for _, value in db.iterator():
            yield bytes(value)
    finally:
        db.close()


def hdf5_arrays(s: LayerSpec) -> dict[str, np.ndarray]:
    """Caffe's HDF5Data source: each top's dataset from every file listed, concatenated."""
    import h5py

    listing = probe.resolve(s.p.source, s.base_dir, "hdf5_data_param.source")
    parts: dict[str, list[np.ndarray]] = {t: [] for t in s.lp.top}
    for name in probe.read_list(listing, "HDF5 file list"):
        file = probe.resolve(name, str(listing.parent), "HDF5 file")
        with h5py.File(file, "r") as f:
            for top in s.lp.top:
                if top not in f:
                    raise DataError(f"HDF5 file '{file}' has no dataset '{top}'")
                parts[top].append(np.asarray(f[top], dtype=np.float32))
    return {top: np.concatenate(arrays) for top, arrays in parts.items()}
