"""Every image reader decodes and resizes as Caffe does (netspec.data.images, OpenCV): the batches real
Caffe's ImageData layer made from the JPEGs and PNGs in tests/data/opencv_resize (Debian's caffe 1.0 with
OpenCV 4.5; `python tools/crosscheck_caffe.py ... fixture` remakes them), shrunk by a non-integer factor,
exactly halved and enlarged. Pillow's BILINEAR resize is up to 55 levels off in 98% of these pixels.

OpenCV's vectorised INTER_LINEAR rounds in two steps where its scalar code rounds once, so builds for
other CPUs may differ from Caffe's by one level in a few pixels: the bar is one level (on this data the
pixels are equal).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec._proto import netspec_pb2 as pb
from netspec.data import images
from netspec.data.datasets import load_arrays
from netspec.data.feeder import Feeder
from netspec.deploy.predict import read_input
from tests.conftest import DATA

FOLDER = DATA / "opencv_resize"
CAFFE = dict(np.load(FOLDER / "caffe_batches.npz"))  # 'colour_7x9' -> (4, 3, 7, 9) uint8, BGR
NAMES = ["colour.jpg", "colour.png", "grey.jpg", "grey.png"]  # the order of list.txt


def _size(key: str) -> tuple[int, int]:
    h, w = key.split("_")[1].split("x")
    return int(h), int(w)


def _within_one(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max() <= 1


@pytest.mark.parametrize("key", sorted(CAFFE))
def test_image_data_batches_are_caffes(tmp_path: Path, key: str) -> None:
    h, w = _size(key)
    spec = tmp_path / "images.prototxt"
    spec.write_text(
        f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" image_data_param {{ '
        f'source: "{FOLDER / "list.txt"}" root_folder: "{FOLDER}/" batch_size: 4 new_height: {h} '
        f"new_width: {w} is_color: {str(key.startswith('colour')).lower()} }} }}"
    )
    batch = Feeder(netspec.load(str(spec), phase="TEST"), torch.device("cpu"), seed=0).next()
    _within_one(batch["data"].numpy(), CAFFE[key])
    assert batch["label"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("key", sorted(CAFFE))
def test_predict_reads_images_as_caffe(key: str) -> None:
    h, w = _size(key)
    channels = 3 if key.startswith("colour") else 1
    for i, name in enumerate(NAMES):
        _within_one(read_input(str(FOLDER / name), (-1, channels, h, w), "BGR")[0], CAFFE[key][i])
    rgb = read_input(str(FOLDER / "colour.png"), (-1, 3, h, w), "RGB")[0]
    _within_one(rgb, CAFFE[f"colour_{h}x{w}"][1][::-1])


def test_image_folder_datasets_resize_as_caffe(tmp_path: Path) -> None:
    for cls, name in (("a", "colour.jpg"), ("b", "colour.png")):
        (tmp_path / cls).mkdir()
        shutil.copyfile(FOLDER / name, tmp_path / cls / name)
    p = pb.DatasetParameter(source=str(tmp_path), new_height=7, new_width=9, split=pb.DatasetParameter.ALL)
    data, labels = load_arrays(p, ".", pb.TRAIN)
    _within_one(data, CAFFE["colour_7x9"][:2, ::-1])  # a Dataset's images are RGB
    assert labels.tolist() == [0, 1]


def test_convert_imageset_resizes_as_caffe(tmp_path: Path) -> None:
    tool = Path(__file__).resolve().parent.parent / "tools" / "convert_imageset.py"
    run = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--resize_height=7",
            "--resize_width=9",
            f"{FOLDER}/",
            str(FOLDER / "list.txt"),
            str(tmp_path / "db"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    from netspec.data.probe import lmdb_env

    with lmdb_env(tmp_path / "db").begin() as txn:
        records = [pb.Datum.FromString(bytes(v)) for _, v in txn.cursor()]
    got = np.stack([np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width) for d in records])
    _within_one(got, CAFFE["colour_7x9"])  # convert_imageset reads every image in colour by default


def test_decoding_refuses_what_opencv_cannot_read() -> None:
    with pytest.raises(ValueError, match="not an image OpenCV can decode"):
        images.decode(b"not an image", "color")
    assert images.decode((FOLDER / "grey.png").read_bytes(), "native").shape == (40, 50)
    assert images.decode((FOLDER / "grey.png").read_bytes(), "color").shape == (40, 50, 3)


def test_checking_an_image_net_does_not_import_opencv(tmp_path: Path) -> None:
    # checking reads image headers with Pillow; OpenCV (and its import time) is for decoding only
    spec = tmp_path / "images.prototxt"
    spec.write_text(
        f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" image_data_param {{ '
        f'source: "{FOLDER / "list.txt"}" root_folder: "{FOLDER}/" batch_size: 4 new_height: 7 '
        "new_width: 9 } }"
    )
    code = (
        "import sys; from netspec.cli import main; sys.argv = ['netspec', 'check', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'cv2' not in sys.modules and 'torch' not in sys.modules\nprint('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
