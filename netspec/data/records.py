"""Reading the records of Caffe's data sources (LMDB, LevelDB, image lists, HDF5 files): the data layers'
`records` hooks return these, and the solver's feeder batches them. numpy and OpenCV (netspec.data.images),
no torch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from netspec._proto import netspec_pb2 as pb
from netspec.data import images, probe
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
    """Caffe's ImageData source: "path label" lines, images read as Caffe reads them (netspec.data.images)."""

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
        self.size = (p.new_height, p.new_width)  # Caffe resizes when both are given

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | float | None]:
        path, label = self.items[i]
        file = probe.resolve(path, self.base_dir, "image")
        try:
            pixels = images.read(file, "color" if self.color else "gray", *self.size)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image '{file}': {e}") from None
        return images.to_chw(pixels), label


class DatumRecords(Records):
    """Caffe's Data source: serialized Datum records in an LMDB (opened in each reading process) or a
    LevelDB (read into memory: LevelDB allows one process at a time), in key order."""

    def __init__(self, s: LayerSpec) -> None:
        p = s.p
        self.path = probe.resolve(p.source, s.base_dir, "data_param.source", probe.database_kind(p))
        self.lmdb = p.backend == p.LMDB
        self._txn: Any = None  # an lmdb.Transaction, opened on first read
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
        if d.encoded:  # Caffe's DecodeDatumToCVMat(Native)
            color: images.Color = "color" if self.force_color else "gray" if self.force_gray else "native"
            try:
                arr = images.to_chw(images.decode(d.data, color))
            except ValueError as e:
                raise DataError(f"record {i} of '{self.path}': {e}") from None
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
    """Caffe's HDF5Data source: each top's dataset from every file listed, concatenated (checked against
    the memory limit as it is read: a small compressed file can hold gigabytes)."""
    import h5py

    listing = probe.resolve(s.p.source, s.base_dir, "hdf5_data_param.source")
    parts: dict[str, list[np.ndarray]] = {t: [] for t in s.lp.top}
    values = 0
    for name in probe.read_list(listing, "HDF5 file list"):
        file = probe.resolve(name, str(listing.parent), "HDF5 file")
        try:
            f = h5py.File(file, "r")
        except OSError as e:
            raise DataError(f"cannot read HDF5 file '{file}': {e}") from None
        with f:
            for top in s.lp.top:
                if not isinstance(f.get(top), h5py.Dataset):
                    raise DataError(f"HDF5 file '{file}' has no dataset '{top}'")
                values += f[top].size
                probe.check_fits(values, f"hdf5_data_param.source '{listing}' (up to '{file}')")
                parts[top].append(np.asarray(f[top], dtype=np.float32))
    for top, arrays in parts.items():
        if len({a.shape[1:] for a in arrays}) > 1:
            raise DataError(
                f"the HDF5 files of '{listing}' hold records of different shapes in '{top}': "
                + ", ".join(sorted({str(a.shape[1:]) for a in arrays})[:3])
            )
    return {top: np.concatenate(arrays) for top, arrays in parts.items()}
