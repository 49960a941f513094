"""Finds the shape of one record of a data source without loading the data set.

Caffe learns a data layer's top shapes by reading the first record when the net is set up; netspec's
static checks do the same, reading as little as they can (one LMDB record, one image's header, one
HDF5 dataset's shape). Paths are resolved as Caffe resolves them (from the working directory), and then
from the spec file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from netspec.errors import DataError
from netspec.files import Kind, checked


def resolve(path: str, base_dir: str, what: str, kind: Kind = "file") -> Path:
    """The file (or folder, as `kind` says) a spec names: from the working directory first, then from the
    spec's folder; anything but a regular file or folder is refused (netspec.files)."""
    if not path:
        raise DataError(f"{what} is not set", field="source")
    for candidate in (Path(path), Path(base_dir) / path):
        if candidate.exists() or candidate.is_symlink():
            try:
                return checked(candidate, what, kind)
            except DataError as e:
                e.field = "source"
                raise
    hint = "paths are read from the working directory, then from the spec's folder"
    if what.endswith("source"):
        hint += "; to check the net without its data, give its top shapes: netspec check --shape BLOB=N,C,H,W"
    raise DataError(f"{what} '{path}' does not exist", field="source", hint=hint)


def memory_limit() -> int:
    """Bytes of data netspec loads into memory at once: NETSPEC_MAX_MEMORY_MB, 2 GiB by default."""
    text = os.environ.get("NETSPEC_MAX_MEMORY_MB", "2048")
    if not text.strip().isdigit():
        raise DataError(f"NETSPEC_MAX_MEMORY_MB must be a whole number of MiB, got '{text}'")
    return int(text) * 2**20


def check_fits(values: int, what: str) -> None:
    """Refuses a source loaded whole (Dataset files, HDF5Data) whose float32 values exceed the memory limit,
    before they are read: a small compressed file can hold any number of zeros."""
    need, limit = 4 * values, memory_limit()
    if need > limit:
        raise DataError(
            f"{what} holds {values:,} values ({need / 2**20:,.0f} MiB as float32), more than the "
            f"{limit / 2**20:,.0f} MiB netspec loads into memory",
            hint="raise NETSPEC_MAX_MEMORY_MB, or store the data in an LMDB, which is streamed",
        )


def database_kind(p: Any) -> Kind:
    """What a Data layer's source may be: an LMDB is a folder or (made with subdir=False) one file; a
    LevelDB is always a folder."""
    return "any" if p.backend == p.LMDB else "folder"


def read_list(path: Path, what: str) -> list[str]:
    """The non-empty, non-comment lines of a list file (Caffe's HDF5Data and ImageData sources)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} '{path}': {e}", field="source") from None
    out = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise DataError(f"{what} '{path}' lists no files", field="source")
    return out


def read_list_raw(path: Path, what: str) -> list[str]:
    """Every stripped line of a text file, comments included (window files start entries with '#')."""
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} '{path}': {e}", field="source") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image '{path}': {e}", field="source") from None
    return h, w


def hdf5_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every dataset in an HDF5 file."""
    try:
        import h5py
    except ImportError:
        raise DataError("reading HDF5 files needs h5py: pip install h5py") from None
    try:
        with h5py.File(path, "r") as f:
            return {name: tuple(int(d) for d in ds.shape) for name, ds in f.items() if isinstance(ds, h5py.Dataset)}
    except OSError as e:
        raise DataError(f"cannot read HDF5 file '{path}': {e}", field="source") from None


def leveldb_first_record(path: Path) -> bytes:
    """The value of the first record of a LevelDB database."""
    try:
        import plyvel
    except ImportError:
        raise DataError("reading LevelDB sources needs the plyvel package: pip install plyvel") from None
    try:
        db = plyvel.DB(str(path), create_if_missing=False)
    except plyvel.Error as e:
        raise DataError(f"cannot open LevelDB '{path}': {e}", field="source") from None
    try:
        for _, value in db.iterator():
            return bytes(value)
    finally:
        db.close()
    raise DataError(f"LevelDB '{path}' has no records", field="source")


GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F"}  # Pillow's one-channel image modes
ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}  # more than 8 bits a value


def decoded_channels(image_mode: str, force_color: bool, force_gray: bool) -> int:
    """How many channels Caffe decodes an encoded Datum to: 3 or 1 as forced, else the image's own
    (DecodeDatumToCVMatNative, OpenCV's IMREAD_UNCHANGED: grey 1, palette 3, with alpha 4, grey with alpha
    included). It reads only the header, so that checking a spec needs no OpenCV; netspec.data.images
    decodes."""
    if force_color and force_gray:
        raise DataError("transform_param sets both force_color and force_gray", field="force_gray")
    if force_color or force_gray:
        return 3 if force_color else 1
    if image_mode in WIDE_MODES:
        raise DataError(
            f"encoded records hold {image_mode} images (more than 8 bits a value), which Caffe's Data "
            "layer refuses unless they are decoded to 8 bits",
            field="force_gray",
            hint="set transform_param { force_gray: true } or force_color",
        )
    return 1 if image_mode in GRAY_MODES else 4 if image_mode in ALPHA_MODES else 3


_LMDB: dict[tuple[str, int], object] = {}


def lmdb_env(path: Path) -> Any:
    """A read-only LMDB environment, opened once per process (py-lmdb refuses to open one twice, and an
    environment must not cross a fork, so the cache is keyed by process)."""
    try:
        import lmdb
    except ImportError:
        raise DataError("reading LMDB sources needs the lmdb package: pip install lmdb") from None
    key = (str(path.resolve()), os.getpid())
    if key not in _LMDB:
        try:
            _LMDB[key] = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir())
        except lmdb.Error as e:
            raise DataError(f"cannot open LMDB '{path}': {e}", field="source") from None
    return _LMDB[key]


def lmdb_first_record(path: Path) -> bytes:
    """The value of the first record of an LMDB database."""
    with lmdb_env(path).begin() as txn:
        cursor = txn.cursor()
        if not cursor.first():
            raise DataError(f"LMDB '{path}' has no records", field="source")
        return bytes(cursor.value())
