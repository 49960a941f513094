"""Runs `netspec check` over every network prototxt shipped with BVLC Caffe, in both phases, and
compares parameter counts with Caffe's.

    python tools/check_caffe_zoo.py CAFFE_CHECKOUT [--fake-data]

The train/val nets read LMDB, LevelDB and HDF5 sources, as Caffe does when it sets a net up. With
--fake-data the script writes stand-ins of the real record shapes (MNIST 1x28x28, CIFAR-10 3x32x32,
ImageNet 3x256x256, ...) to a temporary folder and checks from there, so no data set is needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from netspec._proto import netspec_pb2 as pb  # noqa: E402 (after the path setup)
from netspec.errors import NetspecError  # noqa: E402
from netspec.net import load  # noqa: E402

KNOWN = {  # parameters reported by Caffe for the deploy and train/val nets
    "examples/mnist/lenet.prototxt": 431_080,
    "examples/mnist/lenet_train_test.prototxt": 431_080,
    "examples/cifar10/cifar10_quick.prototxt": 145_578,
    "examples/cifar10/cifar10_quick_train_test.prototxt": 145_578,
    "examples/cifar10/cifar10_full.prototxt": 89_578,
    "models/bvlc_alexnet/deploy.prototxt": 60_965_224,
    "models/bvlc_reference_caffenet/deploy.prototxt": 60_965_224,
    "models/bvlc_googlenet/deploy.prototxt": 6_998_552,
    "models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt": 57_687_624,
    "models/finetune_flickr_style/deploy.prototxt": 56_950_164,
    "examples/net_surgery/conv.prototxt": 78,
}
LMDB_SOURCES = {
    "examples/mnist/mnist_train_lmdb": (1, 28, 28),
    "examples/mnist/mnist_test_lmdb": (1, 28, 28),
    "examples/cifar10/cifar10_train_lmdb": (3, 32, 32),
    "examples/cifar10/cifar10_test_lmdb": (3, 32, 32),
    "examples/imagenet/ilsvrc12_train_lmdb": (3, 256, 256),
    "examples/imagenet/ilsvrc12_val_lmdb": (3, 256, 256),
}
LEVELDB_SOURCES = {
    "examples/siamese/mnist_siamese_train_leveldb": (2, 28, 28),
    "examples/siamese/mnist_siamese_test_leveldb": (2, 28, 28),
}
STAGES = {"examples/mnist/mnist_autoencoder.prototxt": {"TEST": ["test-on-test"]}}


def fake_data(root: Path) -> None:
    import h5py
    import lmdb
    import plyvel

    for rel, (c, h, w) in LMDB_SOURCES.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        with lmdb.open(str(root / rel), map_size=1 << 26) as env, env.begin(write=True) as txn:
            txn.put(b"0", pb.Datum(channels=c, height=h, width=w, data=bytes(c * h * w)).SerializeToString())
    for rel, (c, h, w) in LEVELDB_SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        db = plyvel.DB(str(root / rel), create_if_missing=True)
        db.put(b"0", pb.Datum(channels=c, height=h, width=w, data=bytes(c * h * w)).SerializeToString())
        db.close()
    folder = root / "examples/hdf5_classification/data"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with h5py.File(folder / f"{split}.h5", "w") as f:
            f["data"], f["label"] = np.zeros((10, 4), np.float32), np.zeros(10, np.float32)
        (folder / f"{split}.txt").write_text(f"examples/hdf5_classification/data/{split}.h5\n")
    for name in ("window_file_2007_trainval.txt", "window_file_2007_test.txt"):
        path = root / "examples/finetune_pascal_detection" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# 0\nimage.jpg\n3\n500\n375\n1\n1 0.9 1 2 3 4\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caffe", type=Path)
    parser.add_argument("--fake-data", action="store_true")
    args = parser.parse_args()
    caffe = args.caffe.resolve()
    specs = sorted(p for d in ("models", "examples") for p in (caffe / d).rglob("*.prototxt") if "solver" not in p.name)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.fake_data:
            fake_data(Path(tmp))
            os.chdir(tmp)
        else:
            os.chdir(caffe)
        for spec in specs:
            rel = str(spec.relative_to(caffe))
            for phase in ("TRAIN", "TEST"):
                try:
                    net = load(str(spec), phase, STAGES.get(rel, {}).get(phase, ()))
                except NetspecError as e:
                    failures += 1
                    print(f"FAIL  {rel:70s} {phase:5s} {str(e).splitlines()[0]}")
                    continue
                expected = KNOWN.get(rel)
                mark = "ok  " if expected in (None, net.num_params) else "DIFF"
                failures += mark == "DIFF"
                note = "" if expected is None else f" (Caffe: {expected:,})"
                warned = f" [warnings: {len(net.warnings)}]" if net.warnings else ""
                print(f"{mark}  {rel:70s} {phase:5s} {net.num_params:>12,}{note}{warned}")
    print(f"{len(specs)} nets, {failures} problem(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
