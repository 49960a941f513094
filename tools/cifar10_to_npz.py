"""Turns the CIFAR-10 binary version (data_batch_1.bin ... data_batch_5.bin, test_batch.bin: records of
one label byte and 3x32x32 pixel bytes) into .npz files a Dataset layer reads: "data" (N, 3, 32, 32)
uint8 in Caffe's BGR channel order, and "label" (N,).

    python tools/cifar10_to_npz.py CIFAR_DIR OUT_DIR [--rgb]   # writes cifar10_train.npz, cifar10_test.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RECORD = 1 + 3 * 32 * 32


def read_batches(paths: list[Path], rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        if not path.is_file():
            sys.exit(f"{path}: no such file")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % RECORD:
            sys.exit(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
        records = raw.reshape(-1, RECORD)
        labels.append(records[:, 0].astype(np.int64))
        pixels = records[:, 1:].reshape(-1, 3, 32, 32)  # stored as R, G, B planes
        images.append(pixels if rgb else pixels[:, ::-1])
    return np.concatenate(images), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cifar_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--rgb", action="store_true", help="keep RGB order instead of Caffe's BGR")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": [args.cifar_dir / f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": [args.cifar_dir / "test_batch.bin"],
    }
    for split, paths in splits.items():
        data, labels = read_batches(paths, args.rgb)
        out = args.out_dir / f"cifar10_{split}.npz"
        np.savez(out, data=np.ascontiguousarray(data), label=labels)
        print(f"wrote {out}: {len(data)} images")


if __name__ == "__main__":
    main()
