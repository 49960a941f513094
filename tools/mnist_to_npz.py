"""Turns MNIST's IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte and the t10k pair, gzipped
or not) into .npz files a Dataset layer reads: arrays "data" (N, 1, 28, 28) uint8 and "label" (N,).

    python tools/mnist_to_npz.py MNIST_DIR OUT_DIR     # writes OUT_DIR/mnist_train.npz, mnist_test.npz

Then, in a spec: dataset_param { source: "OUT_DIR/mnist_train.npz" split: ALL } for TRAIN and the test
file for TEST, with transform_param { scale: 0.00390625 } as Caffe's LeNet example uses.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        sys.exit(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(dims)):
        sys.exit(f"{path}: holds {values.size} values, its header says {dims}")
    return values.reshape(dims)


def find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    sys.exit(f"{folder}: no {stem}[.gz]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find(args.mnist_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(args.mnist_dir, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            sys.exit(f"{split}: {len(images)} images but {len(labels)} labels")
        out = args.out_dir / f"mnist_{split}.npz"
        np.savez(out, data=images[:, None], label=labels.astype(np.int64))
        print(f"wrote {out}: {len(images)} images")


if __name__ == "__main__":
    main()
