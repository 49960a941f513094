"""Caffe's convert_imageset: turns images listed with their labels into an LMDB (or LevelDB) of Caffe
`Datum` records, which a `Data` layer reads (data_param { source: DB_NAME backend: LMDB }).

    python tools/convert_imageset.py [--gray] [--shuffle] [--resize_height H --resize_width W]
        [--check_size] [--encoded] [--encode_type png|jpg] [--backend lmdb|leveldb] ROOT_FOLDER LISTFILE DB_NAME

LISTFILE has one "PATH LABEL" line per image: PATH is relative to ROOT_FOLDER and may contain spaces (the
label is the whole number after the last one). Record i of the list is stored under the key
"%08d_PATH" % i, as Caffe stores it. A record holds the image as bytes of C x H x W, channels in BGR
order for colour (Caffe's and OpenCV's), one channel with --gray. Images are decoded, converted to grey
and (with both --resize_height and --resize_width) resized by OpenCV itself, as Caffe's tool does
(netspec.data.images: cv::imread, cv::resize with INTER_LINEAR).

With --encoded (or --encode_type) a record holds an image file instead (encoded: true; channels, height
and width are left unset, as Caffe leaves them): the file's own bytes when they already decode to the
record's pixels (an RGB file, or an 8-bit grey one with --gray, not resized, of the --encode_type if one
is given), else the pixels re-encoded (PNG, or JPEG at OpenCV's quality 95), by default in the file's
type. Caffe's tool stores the file's bytes even when --gray asks for grey pixels; this one does not.

Images that cannot be read are skipped with a message, as Caffe skips them, and counted at the end.
--shuffle orders the list with Python's random.Random(SEED).shuffle (a Fisher-Yates shuffle, as
Caffe's; SEED is 0 unless --seed gives one), so the same list always gives the same database. Records
are committed every 1000. Caffe's flag spellings (-gray, --shuffle=true, --resize_height=256) work too.
EXIF orientation is not applied (netspec's image readers do not apply it either).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netspec.data import images  # after the path setup

BATCH = 1000  # records per commit, as Caffe
ENCODE_TYPES = ("png", "jpg", "jpeg", "bmp")
BOOL_FLAGS = ("gray", "shuffle", "check_size", "encoded")


class ConvertError(Exception):
    """A mistake in the arguments, the list or the images: printed as one line, exit status 1."""


@dataclass(frozen=True)
class Entry:
    line: int  # in LISTFILE, 1-based
    path: str  # as written in LISTFILE
    label: int


@dataclass
class Image8:
    """One image as a record holds it: (H, W, 3) RGB or (H, W) grey, uint8."""

    pixels: np.ndarray
    file_bytes: bytes | None  # the file itself, when storing it gives the same pixels
    file_type: str | None  # Pillow's format name of the file, for re-encoding in the same type

    @property
    def chw(self) -> tuple[int, int, int]:
        h, w = self.pixels.shape[:2]
        return (self.pixels.shape[2] if self.pixels.ndim == 3 else 1), h, w


# ---- arguments -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is negative")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(
        prog="convert_imageset.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root_folder", metavar="ROOT_FOLDER", help="the folder the list's paths are relative to")
    parser.add_argument("listfile", metavar="LISTFILE", help='"PATH LABEL" lines')
    parser.add_argument("db_name", metavar="DB_NAME", help="the database to create (it must not exist)")
    parser.add_argument("--gray", action="store_true", help="store images as one grey channel")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the list (reproducibly: see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of --shuffle's random.Random (default 0)")
    parser.add_argument("--resize_height", type=_size, default=0, metavar="H", help="resize to H rows (with W)")
    parser.add_argument("--resize_width", type=_size, default=0, metavar="W", help="resize to W columns (with H)")
    parser.add_argument("--check_size", action="store_true", help="fail unless all images have the same size")
    parser.add_argument("--encoded", action="store_true", help="store image files, not pixels")
    parser.add_argument(
        "--encode_type",
        type=str.lower,
        choices=ENCODE_TYPES,
        help="the file type for --encoded (default: each image's own); implies --encoded",
    )
    parser.add_argument(
        "--backend",
        type=str.lower,
        choices=("lmdb", "leveldb"),
        default="lmdb",
        help="lmdb (default) or leveldb (needs plyvel)",
    )
    return parser.parse_args(list(_caffe_flags(argv)))


def _caffe_flags(argv: list[str]) -> Iterator[str]:
    """gflags spellings as argparse's: -gray -> --gray, --shuffle=true -> --shuffle, --gray=false -> nothing."""
    for arg in argv:
        if arg[:1] == "-" and arg[1:2].isalpha() and len(arg) > 2:
            arg = "-" + arg
        name, eq, value = arg[2:].partition("=")
        if arg.startswith("--") and name in BOOL_FLAGS and eq:
            if value.lower() in ("true", "1", "yes"):
                yield f"--{name}"
            elif value.lower() not in ("false", "0", "no"):
                yield arg  # argparse reports it
            continue
        yield arg


# ---- the list --------------------------------------------------------------------------------------


def read_list(listfile: str) -> list[Entry]:
    try:
        # surrogateescape keeps paths that are not UTF-8 as the bytes they are, for keys and file names
        text = Path(listfile).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise ConvertError(f"cannot read list file '{listfile}': {e.strerror or e}") from None
    entries = []
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip()
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) < 2:
            raise ConvertError(f"{listfile}:{n}: expected 'PATH LABEL', got '{line}'")
        try:
            label = int(parts[1])
        except ValueError:
            raise ConvertError(f"{listfile}:{n}: label '{parts[1]}' is not a whole number") from None
        if not -(2**31) <= label < 2**31:
            raise ConvertError(f"{listfile}:{n}: label {label} does not fit Datum's int32 label")
        entries.append(Entry(n, parts[0], label))
    if not entries:
        raise ConvertError(f"list file '{listfile}' lists no images")
    return entries


# ---- images ----------------------------------------------------------------------------------------


def read_image(file: str, gray: bool, size: tuple[int, int] | None, keep_file: bool) -> Image8:
    """The image as a record holds it, decoded and resized by netspec.data.images (OpenCV, as Caffe's
    tool); raises OSError or ValueError when it cannot be read."""
    from PIL import Image

    data = Path(file).read_bytes()
    with Image.open(io.BytesIO(data)) as opened:  # the header only: the file's type and mode
        mode, file_type = opened.mode, opened.format
    pixels = images.decode(data, "gray" if gray else "color", *(size or (0, 0)))
    if not gray:
        pixels = np.ascontiguousarray(pixels[..., ::-1])  # records are written from RGB (see to_datum)
    # only then do the file's own bytes decode to these pixels, in netspec's reader and in Caffe's
    same = size is None and mode == ("L" if gray else "RGB")
    return Image8(pixels, data if same and keep_file else None, file_type)


def encode(image: Image8, encode_type: str | None, path: str) -> bytes:
    """The image file a record stores: the file itself when it can be, else the pixels re-encoded."""
    from PIL import Image

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    wanted = encode_type or ext  # without --encode_type, Caffe takes the type from the file's name
    if image.file_bytes is not None and (wanted == ext or {wanted, ext} == {"jpg", "jpeg"}):
        return image.file_bytes
    fmt = Image.registered_extensions().get("." + wanted) or (image.file_type if encode_type is None else None)
    if fmt is None or fmt not in Image.SAVE:
        raise ConvertError(f"cannot encode '{path}' as {fmt or wanted or 'its type'}: give --encode_type png or jpg")
    out = io.BytesIO()
    Image.fromarray(image.pixels).save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def to_datum(image: Image8, label: int, encoded: bytes | None) -> bytes:
    from netspec._proto import netspec_pb2 as pb

    if encoded is not None:
        return pb.Datum(data=encoded, label=label, encoded=True).SerializeToString()
    c, h, w = image.chw
    pixels = image.pixels[..., ::-1].transpose(2, 0, 1) if c == 3 else image.pixels  # RGB -> BGR, C x H x W
    # encoded: false is written explicitly, as Caffe's CVMatToDatum does: the bytes equal Caffe's records
    return pb.Datum(
        channels=c, height=h, width=w, data=np.ascontiguousarray(pixels).tobytes(), label=label, encoded=False
    ).SerializeToString()


# ---- databases -------------------------------------------------------------------------------------


class LmdbWriter:
    """Writes batches of records in one transaction each; the map grows by doubling, as Caffe's does."""

    def __init__(self, path: Path) -> None:
        import lmdb

        self.lmdb, self.path, self.map_size = lmdb, path, 1 << 20  # 1 MiB to start, as liblmdb's default
        path.mkdir(parents=True)  # Caffe makes the folder, and fails when it exists
        try:
            self.env = lmdb.open(str(path), map_size=self.map_size, subdir=True)
        except lmdb.Error:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def write(self, batch: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in batch:
                        txn.put(key, value)
                return
            except self.lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
            except self.lmdb.Error as e:
                raise ConvertError(f"cannot write to '{self.path}': {e}") from None

    def close(self) -> None:
        self.env.close()


class LevelDBWriter:
    def __init__(self, path: Path) -> None:
        try:
            import plyvel
        except ImportError:
            raise ConvertError("--backend leveldb needs the plyvel package: pip install plyvel") from None
        self.plyvel, self.path = plyvel, path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = plyvel.DB(str(path), create_if_missing=True, error_if_exists=True)

    def write(self, batch: list[tuple[bytes, bytes]]) -> None:
        try:
            with self.db.write_batch() as wb:
                for key, value in batch:
                    wb.put(key, value)
        except self.plyvel.Error as e:
            raise ConvertError(f"cannot write to '{self.path}': {e}") from None

    def close(self) -> None:
        self.db.close()


# ---- the conversion --------------------------------------------------------------------------------


def convert(args: argparse.Namespace) -> None:
    if bool(args.resize_height) != bool(args.resize_width):
        raise ConvertError("--resize_height and --resize_width go together: give both, or neither")
    size = (args.resize_height, args.resize_width) if args.resize_height else None
    entries = read_list(args.listfile)
    if args.shuffle:
        print("Shuffling data")
        random.Random(args.seed).shuffle(entries)
    print(f"A total of {len(entries)} images.")
    encoded = args.encoded or args.encode_type is not None
    if args.encode_type and not args.encoded:
        print("encode_type specified, assuming encoded=true.")
    db = Path(args.db_name)
    if db.exists():
        raise ConvertError(
            f"database '{db}' already exists; convert_imageset never overwrites one (remove it, "
            "or choose another DB_NAME)"
        )
    try:
        writer: Any = LmdbWriter(db) if args.backend == "lmdb" else LevelDBWriter(db)
    except ConvertError:
        raise
    except Exception as e:  # OSError, lmdb.Error, plyvel.Error: a folder that cannot be made, a full disk
        raise ConvertError(f"cannot create database '{db}': {_reason(e)}") from None
    try:
        count, skipped = _write(args, entries, size, encoded, writer)
    except BaseException:
        writer.close()
        shutil.rmtree(db, ignore_errors=True)  # ours: it did not exist before
        raise
    writer.close()
    if not count:
        shutil.rmtree(db, ignore_errors=True)
        raise ConvertError(f"none of the {len(entries)} images could be read; no database written")
    print(f"Wrote {count} records to '{db}'" + (f"; skipped {skipped} unreadable image(s)" if skipped else ""))


def _write(
    args: argparse.Namespace, entries: list[Entry], size: tuple[int, int] | None, encoded: bool, writer: Any
) -> tuple[int, int]:
    count = skipped = 0
    first: tuple[int, int, int] | None = None
    batch: list[tuple[bytes, bytes]] = []
    for index, entry in enumerate(entries):
        file = os.path.join(args.root_folder, entry.path)
        try:
            image = read_image(file, args.gray, size, keep_file=encoded)
        except (OSError, ValueError) as e:
            print(f"skipped '{file}' (line {entry.line}): {_reason(e)}", file=sys.stderr)
            skipped += 1
            continue
        if args.check_size:
            first = first or image.chw
            if image.chw != first:
                raise ConvertError(
                    f"--check_size: '{file}' (line {entry.line}) is {_fmt(image.chw)} (C x H x W), "
                    f"but the first image is {_fmt(first)}"
                )
        value = to_datum(image, entry.label, encode(image, args.encode_type, entry.path) if encoded else None)
        batch.append((f"{index:08d}_{entry.path}".encode("utf-8", "surrogateescape"), value))
        count += 1
        if count % BATCH == 0:
            writer.write(batch)
            batch = []
            print(f"Processed {count} files.", flush=True)
    if batch:
        writer.write(batch)
        print(f"Processed {count} files.")
    return count, skipped


def _reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can read"
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def _fmt(chw: tuple[int, int, int]) -> str:
    return "x".join(map(str, chw))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        convert(args)
    except ConvertError as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (a partial database is removed)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
