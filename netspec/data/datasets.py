"""The Dataset layer's sources: data sets that ship with scikit-learn, generated ones, and files.

Every source gives a data array (records on axis 0) and usually integer class labels; `split` picks the
training or test part by a seeded shuffle, so the parts are the same in every run and every phase.
`record_shape` answers the static checks without loading anything large: sizes of the bundled sets are
known, files are read only as far as their headers.
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

from netspec._proto import netspec_pb2 as pb
from netspec.data import probe
from netspec.errors import DataError, ParamError
from netspec.files import checked

if TYPE_CHECKING:
    import numpy as np

    from netspec.data.images import Color

# a `standardize` set's per-feature mean and standard deviation, flattened: what a trained model stores
Statistics = tuple[tuple[float, ...], tuple[float, ...]]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Bundled:
    """A data set that ships with scikit-learn: its loader's name and its sizes."""

    loader: str
    records: int
    features: int
    classes: int  # 0: a regression target


BUNDLED = {
    "digits": Bundled("load_digits", 1797, 64, 10),
    "iris": Bundled("load_iris", 150, 4, 3),
    "wine": Bundled("load_wine", 178, 13, 3),
    "breast_cancer": Bundled("load_breast_cancer", 569, 30, 2),
    "diabetes": Bundled("load_diabetes", 442, 10, 0),
}
GENERATED = ("xor", "spirals", "blobs")
GENERATED_LIMIT = 2**27  # values in a generated array (512 MiB as float32): records and blobs' class centres


@dataclass(frozen=True)
class SourceInfo:
    """What the static checks need: one record's shape, and whether there are labels (and their shape)."""

    record: tuple[int, ...]
    label: tuple[int, ...] | None
    classes: int  # 0 when unknown or a regression


def _kind(p: pb.DatasetParameter) -> str:
    if p.source in BUNDLED:
        return "bundled"
    if p.source in GENERATED:
        return "generated"
    suffix = Path(p.source).suffix.lower()
    if suffix in (".npz", ".npy", ".csv"):
        return suffix[1:]
    return "folder"


def describe(p: pb.DatasetParameter, base_dir: str) -> SourceInfo:
    """The record and label shapes of a source, reading as little as possible."""
    if not p.source:
        raise DataError(
            "dataset_param.source is not set",
            field="source",
            hint="a bundled set ("
            + ", ".join(BUNDLED)
            + "), a generated one ("
            + ", ".join(GENERATED)
            + "), or a .npz/.npy/.csv file or image folder",
        )
    kind = _kind(p)
    if kind == "bundled":
        b = BUNDLED[p.source]
        return SourceInfo((b.features,), (), b.classes)
    if kind == "generated":
        features = p.num_features if p.source == "blobs" else 2
        classes = p.num_classes if p.source in ("blobs", "spirals") else 2
        for field_name, rows in (("num_samples", p.num_samples), ("num_classes", classes)):
            if rows * max(1, features) > GENERATED_LIMIT:
                raise ParamError(
                    f"{field_name} {rows} x {features} features makes {rows * features:,} values; a "
                    f"generated set holds at most {GENERATED_LIMIT:,} (512 MiB)",
                    field="num_features" if features > rows else field_name,
                )
        return SourceInfo((features,), (), classes)
    path = _path(p, kind, base_dir)
    if kind == "npz":
        shapes = _npz_shapes(path)
        if p.data_key not in shapes:
            raise DataError(
                f"'{path}' has no array '{p.data_key}' (it has: {', '.join(sorted(shapes))})", field="data_key"
            )
        label = shapes.get(p.label_key)
        return SourceInfo(shapes[p.data_key][1:], None if label is None else label[1:], 0)
    if kind == "npy":
        data = _npy_shape(path)
        return SourceInfo(data[1:], None, 0)
    if kind == "csv":
        _header, row = _csv_head(path)
        return SourceInfo((len(row) - 1,), (), 0)
    if not path.is_dir():
        raise DataError(f"'{path}' is neither a .npz/.npy/.csv file nor a folder of class folders", field="source")
    folders, first = _folder_head(path)
    h, w = probe.image_size(first)
    return SourceInfo((_image_channels(first), h, w), (), len(folders))


def _path(p: pb.DatasetParameter, kind: str, base_dir: str) -> Path:
    """The source file, or folder of class folders (checked to be one with a better message below)."""
    if not any(c.exists() for c in (Path(p.source), Path(base_dir) / p.source)):
        _no_source(p.source, base_dir)
    return probe.resolve(p.source, base_dir, "dataset_param.source", "any" if kind == "folder" else "file")


def _no_source(source: str, base_dir: str) -> NoReturn:
    """A source that names no file and no built-in set is most often a misspelt set (`wines`) or file: the
    message names the closest and lists the sets that exist."""
    import difflib

    from netspec.errors import did_you_mean

    near_sets = did_you_mean(source, [*BUNDLED, *GENERATED])
    near_files: list[str] = []
    for folder in dict.fromkeys((Path(source).parent, (Path(base_dir) / source).parent)):
        try:
            names = [f.name for f in folder.iterdir()]
        except OSError:
            continue
        near_files += [str(folder / n) for n in difflib.get_close_matches(Path(source).name, names, n=3, cutoff=0.75)]
    hint = (f"{near_sets} " if near_sets else "") + "; ".join(
        filter(
            None,
            [
                ("files with near names: " + ", ".join(near_files)) if near_files else None,
                "bundled sets: " + ", ".join(BUNDLED),
                "generated: " + ", ".join(GENERATED),
            ],
        )
    )
    what = (
        "does not exist"
        if Path(source).suffix
        else "is neither a bundled or generated set nor an existing file or folder"
    )
    raise DataError(
        f"dataset_param.source '{source}' {what}",
        field="source",
        hint=hint + "; files are read from the working directory, then from the spec's folder",
    )


def _npy_header(f: IO[bytes], stored: int, where: str) -> tuple[int, ...]:
    """The shape in a .npy header; refuses a header that declares more data than the `stored` bytes
    hold, before anything of that size is allocated."""
    import numpy as np

    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    shape = tuple(int(d) for d in shape)
    declared = math.prod(shape) * dtype.itemsize
    held = stored - f.tell()
    if declared > held:
        raise DataError(
            f"{where} declares an array of shape {shape} ({declared} bytes) but holds {held} bytes",
            field="source",
            hint="the file is truncated or damaged",
        )
    return shape


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    with z.open(info) as f:
                        out[info.filename[:-4]] = _npy_header(f, info.file_size, f"'{path}' ({info.filename})")
            return out
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise DataError(f"cannot read '{path}' as a .npz archive: {e}", field="source") from None


def _npy_shape(path: Path) -> tuple[int, ...]:
    try:
        with open(path, "rb") as f:
            return _npy_header(f, path.stat().st_size, f"'{path}'")
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read '{path}' as a .npy array: {e}", field="source") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_head(path: Path) -> tuple[list[str] | None, list[str]]:
    """The header (if the first row is not numbers) and the first data row."""
    try:
        with open(path, newline="") as f:
            rows = csv.reader(f)
            first = next(rows, None)
            if first is None:
                raise DataError(f"'{path}' is empty", field="source")
            if all(_is_number(c) for c in first):
                return None, first
            row = next(rows, None)
            if row is None:
                raise DataError(f"'{path}' has a header but no rows", field="source")
            return first, row
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read '{path}': {e}", field="source") from None


def _folder_head(path: Path) -> tuple[list[str], Path]:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(
            f"image folder '{path}' has no class sub-folders",
            field="source",
            hint="put the images of each class in a sub-folder named after the class",
        )
    for cls in classes:
        for f in _images(path / cls):
            return classes, f
    raise DataError(f"image folder '{path}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})", field="source")


def _images(folder: Path) -> Iterator[Path]:
    """The image files of a class folder, in name order; only regular files (netspec.files)."""
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
            yield checked(f, "image", "file")


def _image_channels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return 1 if im.mode in ("1", "L", "I", "F", "I;16") else 3


# ---- loading ----------------------------------------------------------------------------------------


def load_arrays(
    p: pb.DatasetParameter, base_dir: str, phase: int, stats: Statistics | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The records (float32) and labels of the part of the source this phase reads; a `standardize` set is
    scaled with `stats` when given (a trained model's own), else with its training part's statistics."""
    import numpy as np

    data, labels, presplit = _load_all(p, base_dir)
    split = p.split
    if split == p.AUTO:
        split = p.TRAIN if phase == pb.TRAIN else p.TEST
    if split == p.ALL:
        keep = np.ones(len(data), dtype=bool)
    else:
        test = _test_part(p, len(data), presplit)
        keep = test if split == p.TEST else ~test
    if p.standardize:
        mean, std = _statistics(p, data, presplit) if stats is None else _fitted(stats, data.shape[1:])
        data = data[keep]
        data = (data - mean) / std
    else:
        data = data[keep]
    labels = None if labels is None else labels[keep]
    if p.HasField("record_shape"):
        shape = tuple(int(d) for d in p.record_shape.dim)
        if math.prod(shape) != math.prod(data.shape[1:]):
            raise DataError(
                f"record_shape {shape} does not hold the {math.prod(data.shape[1:])} values of a record",
                field="record_shape",
            )
        data = data.reshape((len(data), *shape))
    if (p.new_height or p.new_width) and data.ndim == 4:
        data = _resize(data, p.new_height or data.shape[2], p.new_width or data.shape[3])
    return data, labels


def _test_part(p: pb.DatasetParameter, n: int, presplit: np.ndarray | None) -> np.ndarray:
    """Which records are the test part: the source's own split, else a seeded shuffle's first share."""
    import numpy as np

    if presplit is not None:
        return presplit
    if not 0 < p.test_fraction < 1:
        raise DataError(f"test_fraction must be between 0 and 1, got {p.test_fraction}", field="test_fraction")
    order = np.random.default_rng(p.seed).permutation(n)
    test = np.zeros(n, dtype=bool)
    test[order[: max(1, round(n * p.test_fraction))]] = True
    return test


def _statistics(p: pb.DatasetParameter, data: np.ndarray, presplit: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and standard deviation over the training part only (over every record with
    split ALL), so that nothing of the test part leaks into training; a constant feature keeps scale 1."""
    import numpy as np

    train = data if p.split == p.ALL else data[~_test_part(p, len(data), presplit)]
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std < 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _fitted(stats: Statistics, record: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stored statistics as arrays shaped like a record of the source; a source whose records no longer
    have as many features as the model was trained on is refused."""
    import numpy as np

    mean, std = (np.asarray(v, dtype=np.float32) for v in stats)
    if mean.size != math.prod(record) or std.size != mean.size:
        raise DataError(
            f"the model was trained on records of {mean.size} features, standardized with their statistics; "
            f"this source's records have {math.prod(record)}",
            field="source",
        )
    return mean.reshape(record), std.reshape(record)


def standardization(p: pb.DatasetParameter, base_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation a `standardize` Dataset applies to each feature of a record (the
    export moves them into the deployed graph)."""
    data, _, presplit = _load_all(p, base_dir)
    return _statistics(p, data, presplit)


def _resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, C, H, W) float records resized as Caffe resizes images (OpenCV's INTER_LINEAR), channel by
    channel."""
    import numpy as np

    from netspec.data import images as opencv

    if images.shape[2:] == (height, width):
        return images
    out = np.empty((*images.shape[:2], height, width), dtype=np.float32)
    for i in range(images.shape[0]):
        for c in range(images.shape[1]):
            out[i, c] = opencv.resize(np.ascontiguousarray(images[i, c], dtype=np.float32), height, width)
    return out


def _load_all(p: pb.DatasetParameter, base_dir: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Every record and label, and (for sources that come split) which records are the test part."""
    import numpy as np

    kind = _kind(p)
    if kind == "bundled":
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, BUNDLED[p.source].loader)()
        target = bunch.target.astype(np.float32)
        return bunch.data.astype(np.float32), target, None
    if kind == "generated":
        return (*_generate(p), None)
    path = _path(p, kind, base_dir)
    if kind in ("npz", "npy"):
        return (*_read_arrays(path, kind, p), None)
    if kind == "csv":
        return (*_read_csv(path, p.label_column), None)
    return (*_read_folder(path, p), None)


def _read_arrays(path: Path, kind: str, p: pb.DatasetParameter) -> tuple[np.ndarray, np.ndarray | None]:
    """A .npy array, or a .npz file's data and labels; the headers are checked against the file's size
    first, so a damaged or hostile header cannot make numpy allocate what the file does not hold."""
    import numpy as np

    try:
        if kind == "npy":
            probe.check_fits(math.prod(_npy_shape(path)), f"'{path}'")
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32), None
        shapes = _npz_shapes(path)
        probe.check_fits(sum(math.prod(shapes[k]) for k in {p.data_key, p.label_key} if k in shapes), f"'{path}'")
        with np.load(path, allow_pickle=False) as z:
            data = np.asarray(z[p.data_key], dtype=np.float32)
            labels = np.asarray(z[p.label_key], dtype=np.float32) if p.label_key in z.files else None
        return data, labels
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read '{path}' as a .{kind} array: {e}", field="source") from None


def _generate(p: pb.DatasetParameter) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    rng = np.random.default_rng(p.seed)
    n = p.num_samples
    if p.source == "xor":
        corners = rng.integers(0, 2, size=(n, 2))
        x = corners + rng.normal(0, p.noise, size=(n, 2))
        y = corners[:, 0] ^ corners[:, 1]
    elif p.source == "spirals":
        k = max(2, p.num_classes)
        y = rng.integers(0, k, size=n)
        t = rng.uniform(0.05, 1, size=n)
        angle = t * 3 * math.pi + y * 2 * math.pi / k
        x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + rng.normal(0, p.noise, size=(n, 2))
    else:
        k, f = max(2, p.num_classes), max(1, p.num_features)
        centres = rng.normal(0, 1, size=(k, f))
        y = rng.integers(0, k, size=n)
        x = centres[y] + rng.normal(0, p.noise, size=(n, f))
    return x.astype(np.float32), y.astype(np.float32)


def _read_csv(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    header, _ = _csv_head(path)
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        for line, row in enumerate(reader, 1):
            if (line == 1 and header is not None) or not row:
                continue
            try:
                rows.append([float(c) for c in row])
            except ValueError:
                bad = next(c for c in row if not _is_number(c))
                raise DataError(f"{path}:{line}: '{bad}' is not a number", field="source") from None
            if len(rows[-1]) != len(rows[0]):
                raise DataError(
                    f"{path}:{line}: {len(rows[-1])} columns, but the first row has {len(rows[0])}", field="source"
                )
    table = np.asarray(rows, dtype=np.float32)
    col = label_column % table.shape[1]
    return np.delete(table, col, axis=1), table[:, col]


def _read_folder(path: Path, p: pb.DatasetParameter) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    from netspec.data import images as opencv

    classes, first = _folder_head(path)
    color: Color = "gray" if _image_channels(first) == 1 else "color"
    h, w = probe.image_size(first)
    # every image is brought to new_height x new_width (each given or the first image's), in one resize
    height, width = p.new_height or h, p.new_width or w
    images, labels = [], []
    for index, cls in enumerate(classes):
        for f in _images(path / cls):
            try:
                pixels = opencv.read(f, color, height, width)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read image '{f}': {e}", field="source") from None
            chw = opencv.to_chw(pixels).astype(np.float32)
            images.append(chw if color == "gray" else chw[::-1])  # a Dataset's images are RGB, Caffe's BGR
            labels.append(index)
    return np.stack(images), np.asarray(labels, dtype=np.float32)
