"""`netspec predict`: one input (a .npy array, an image, a CSV row) through a spec or an ONNX model, and
the top classes with their labels when the model knows them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netspec.errors import DataError
from netspec.files import checked

IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def read_input(path: str, shape: tuple[int, ...], channel_order: str) -> np.ndarray:
    """One record shaped for a model input of `shape` (batch axis first, -1 where free), with a batch axis."""
    p = checked(path, "input file")
    record = tuple(d for d in shape[1:])
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read '{path}' as a .npy array: {e}") from None
    elif suffix == ".csv":
        text = p.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        row = text[-1] if text else ""
        try:
            arr = np.asarray([float(c) for c in row.replace(";", ",").split(",") if c.strip()], dtype=np.float32)
        except ValueError:
            raise DataError(f"the last row of '{path}' is not all numbers: {row[:80]}") from None
    elif suffix in IMAGES:
        arr = _image(p, record, channel_order)
    else:
        raise DataError(f"cannot tell what '{path}' holds from its name",
                        hint="give a .npy array, an image (.png, .jpg, ...) or a .csv row")
    arr = np.asarray(arr, dtype=np.float32)
    want = int(np.prod([d for d in record if d > 0])) if all(d > 0 for d in record) else None
    if arr.shape == tuple(record):
        return arr[None]
    if arr.ndim == len(shape) and arr.shape[1:] == tuple(record):
        return arr
    if want is not None and arr.size == want:
        return arr.reshape((1, *record))
    raise DataError(f"'{path}' holds {arr.size} values of shape {arr.shape}; the model takes records of shape "
                    f"{tuple(record)}")


def _image(path: Path, record: tuple[int, ...], channel_order: str) -> np.ndarray:
    from netspec.data import images

    if len(record) != 3:
        raise DataError(f"the model takes records of shape {record}, not images")
    channels, height, width = record
    try:
        pixels = images.read(path, "gray" if channels == 1 else "color", height, width)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image '{path}': {e}") from None
    arr = images.to_chw(pixels).astype(np.float32)  # OpenCV's BGR
    return arr if channels == 1 or channel_order == "BGR" else arr[::-1]


def top_k(scores: np.ndarray, k: int, labels: list[str] | None) -> list[tuple[int, str, float]]:
    """(class, label, score) of the k highest scores of the first item."""
    flat = scores.reshape(scores.shape[0], -1)[0]
    order = np.argsort(-flat, kind="stable")[:k]
    return [(int(i), labels[i] if labels and i < len(labels) else str(int(i)), float(flat[i])) for i in order]
