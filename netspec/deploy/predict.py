"""`netspec predict`: inputs (a .npy array, an image, CSV rows) through a spec or an ONNX model, and the
top classes with their labels when the model knows them, or the output values when they are not class
scores. An image is converted to what the model was trained on (size, channels, channel order, and the
value range of the training data), with a note for each conversion that was a guess."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netspec.errors import DataError
from netspec.files import checked

IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def read_input(
    path: str,
    shape: tuple[int, ...],
    channel_order: str,
    value_range: tuple[float, float] | None = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """The records of a file (one image, every CSV row, a .npy record or batch) shaped for a model input
    of `shape` (batch axis first, -1 where free), with a batch axis. `value_range` is the training data's
    (lowest, highest) value; what an image needed to fit the model is appended to `notes`."""
    p = checked(path, "input file")
    record = tuple(d for d in shape[1:])
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read '{path}' as a .npy array: {e}") from None
    elif suffix == ".csv":
        arr = _csv_rows(p, path)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
    elif suffix in IMAGES:
        arr = _image(p, record, channel_order, value_range, [] if notes is None else notes)
    else:
        raise DataError(
            f"cannot tell what '{path}' holds from its name",
            hint="give a .npy array, an image (.png, .jpg, ...) or a .csv of rows",
        )
    arr = np.asarray(arr, dtype=np.float32)
    want = int(np.prod([d for d in record if d > 0])) if all(d > 0 for d in record) else None
    if arr.shape == tuple(record):
        return arr[None]
    if arr.ndim == len(shape) and arr.shape[1:] == tuple(record):
        return arr
    if want is not None and arr.size == want:
        return arr.reshape((1, *record))
    if want is not None and arr.ndim == 2 and arr.shape[1] == want:  # one record per row
        return arr.reshape((arr.shape[0], *record))
    raise DataError(
        f"'{path}' holds {arr.size} values of shape {arr.shape}; the model takes records of shape {tuple(record)}"
    )


def _csv_rows(p: Path, path: str) -> np.ndarray:
    """Every row of numbers (a first row of names is a header), as (rows, values)."""
    lines = [ln for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        cells = [c for c in line.replace(";", ",").split(",") if c.strip()]
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            if n == 1 and len(lines) > 1:
                continue
            raise DataError(f"{path}:{n}: the row is not all numbers: {line[:80]}") from None
    if not rows:
        raise DataError(f"'{path}' has no rows of numbers")
    if len({len(r) for r in rows}) > 1:
        raise DataError(f"the rows of '{path}' have different numbers of values ({len(rows[0])} in the first)")
    return np.asarray(rows, dtype=np.float32)


def _image(
    path: Path, record: tuple[int, ...], channel_order: str, value_range: tuple[float, float] | None, notes: list[str]
) -> np.ndarray:
    from netspec.data import images, probe

    if len(record) != 3:
        raise DataError(f"the model takes records of shape {record}, not images")
    channels, height, width = record
    size = probe.image_size(path)
    try:
        pixels = images.read(path, "gray" if channels == 1 else "color", height, width)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image '{path}': {e}") from None
    if size != (height, width):
        notes.append(f"the {size[1]}x{size[0]} image was resized to {width}x{height}, the model's input size")
    gray = _is_gray(path)
    if gray is not None and gray != (channels == 1):
        notes.append(
            "the grayscale image was read as color (3 channels)"
            if gray
            else "the color image was read as grayscale, as the model takes one channel"
        )
    arr = images.to_chw(pixels).astype(np.float32)  # OpenCV's BGR
    if channels == 3 and channel_order != "BGR":
        arr = arr[::-1]
    if value_range is None:
        notes.append("the model records no range for its input; the pixels are fed as they are (0..255)")
    elif float(arr.max()) > value_range[1] * 1.01 + 1e-6:  # a 0..255 image for a model of another range
        lo, hi = value_range
        arr = lo + arr * ((hi - lo) / 255.0)
        notes.append(
            f"the pixels (0..255) were scaled to {lo:g}..{hi:g}, the range of the training data "
            "(a guess: check that it is what the model takes)"
        )
    return np.ascontiguousarray(arr)


def _is_gray(path: Path) -> bool | None:
    """Whether an image file holds one channel (None when Pillow cannot tell)."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.getbands() in (("L",), ("I",), ("F",), ("1",), ("L", "A"))
    except Exception:  # a format OpenCV reads and Pillow does not: no note
        return None


def class_scores(scores: np.ndarray, labels: list[str] | None) -> bool:
    """Whether an output holds class scores, to be ranked: a label per value, or probabilities (each row
    of several values, none negative, summing to 1). Anything else (a regression, features) is values."""
    flat = scores.reshape(scores.shape[0], -1)
    if flat.shape[1] < 2:
        return False
    if labels and len(labels) == flat.shape[1]:
        return True
    return bool((flat >= 0).all()) and bool(np.allclose(flat.sum(1), 1, atol=1e-3))


def top_k(scores: np.ndarray, k: int, labels: list[str] | None, row: int = 0) -> list[tuple[int, str, float]]:
    """(class, label, score) of the k highest scores of one item."""
    flat = scores.reshape(scores.shape[0], -1)[row]
    order = np.argsort(-flat, kind="stable")[:k]
    return [(int(i), labels[i] if labels and i < len(labels) else str(int(i)), float(flat[i])) for i in order]
