"""Writes the small files the README's examples read: examples/digit.png, one of the 8x8 digits that ship
with scikit-learn as a grey PNG (its 0..16 values stretched to 0..255, as an image file holds them), and
examples/digits_labels.txt, the ten class names in the order of the digits' labels.

    python tools/make_readme_files.py            # rewrites both in examples/

tests/test_readme.py checks that the committed files are what this script writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SAMPLE = 1796  # the last of the 1,797 images: an 8


def digit_png() -> bytes:
    """The PNG bytes of the sample digit."""
    import cv2
    from sklearn.datasets import load_digits

    pixels = load_digits().images[SAMPLE]
    ok, data = cv2.imencode(".png", np.round(pixels * 255 / 16).astype(np.uint8))
    assert ok
    return data.tobytes()


def labels_text() -> str:
    return "\n".join(LABELS) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "examples")
    args = parser.parse_args()
    (args.out / "digit.png").write_bytes(digit_png())
    (args.out / "digits_labels.txt").write_text(labels_text())
    print(f"wrote {args.out / 'digit.png'} and {args.out / 'digits_labels.txt'}")


if __name__ == "__main__":
    main()
