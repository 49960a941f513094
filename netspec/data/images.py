"""Decoding and resizing images as Caffe does, for every reader (ImageData, encoded Datums, image-folder
Datasets, `netspec predict`, tools/convert_imageset.py): with OpenCV itself, which is what Caffe calls
(cv::imread/imdecode, then cv::resize with its default INTER_LINEAR).

OpenCV is what makes the pixels exact: its greyscale decoding (libjpeg's own luma plane for JPEG, libpng's
15-bit weights for PNG, cvtColor's 14-bit ones otherwise), its 16-to-8-bit conversion, and INTER_LINEAR's
11-bit fixed-point coefficients with no antialiasing when shrinking (Pillow's BILINEAR filter blends every
input pixel under the output one: on tests/data/opencv_resize, 40x50 -> 7x9 is up to 55 levels off in 98%
of the pixels), and its INTER_AREA path for an exact halving.
OpenCV's vectorised resize rounds in two steps where its scalar code rounds once, so a build on another
CPU can differ by one level in a few pixels; that is also true between two Caffe installations.
Imported only where images are decoded: `netspec check` reads image headers with Pillow alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

# Caffe's is_color true / false, and an encoded Datum's own channels (IMREAD_UNCHANGED: 1, 3, or 4 with alpha)
Color = Literal["color", "gray", "native"]


def decode(data: bytes, color: Color, height: int = 0, width: int = 0) -> np.ndarray:
    """An encoded image's pixels as Caffe's ReadImageToCVMat/DecodeDatumToCVMat make them: decoded by
    OpenCV to (H, W, 3) BGR, or (H, W) grey, or for 'native' as the file is ((H, W, 4) BGRA with alpha),
    then resized to (height, width) when both are given. ValueError when OpenCV cannot decode it, or
    decodes it 'native' to more than 8 bits, which Caffe refuses."""
    import cv2

    flags = {"color": cv2.IMREAD_COLOR, "gray": cv2.IMREAD_GRAYSCALE, "native": cv2.IMREAD_UNCHANGED}[color]
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) if data else None
    except cv2.error as e:  # e.g. more pixels than OpenCV's limit (2^30)
        raise ValueError(f"OpenCV cannot decode it ({str(e).strip().splitlines()[-1][:120]})") from None
    if pixels is None:
        raise ValueError("not an image OpenCV can decode")
    if pixels.dtype != np.uint8:
        raise ValueError(f"a {pixels.dtype} image; Caffe takes 8-bit images (force_gray or force_color decode to 8)")
    return resize(pixels, height, width) if height > 0 and width > 0 else pixels


def read(path: str | Path, color: Color, height: int = 0, width: int = 0) -> np.ndarray:
    """An image file decoded as `decode` does; OSError when it cannot be read."""
    return decode(Path(path).read_bytes(), color, height, width)


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv::resize with INTER_LINEAR of (H, W[, C]) uint8 or float32 pixels to (height, width[, C])."""
    import cv2

    if pixels.shape[:2] == (height, width):
        return pixels
    out = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape((height, width, *pixels.shape[2:]))  # OpenCV drops a channel axis of one


def to_chw(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) or (H, W) as Caffe's (C, H, W) record; BGR stays BGR, as Caffe stores images."""
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
