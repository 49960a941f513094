"""Writes docs/layers.md from netspec's layer registry (`--check` only says whether it is current).

    python tools/gen_layer_docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netspec.layers import all_types  # noqa: E402
from netspec.layers.docs import markdown  # noqa: E402

TARGET = ROOT / "docs" / "layers.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/layers.md is not current")
    args = parser.parse_args()
    text = markdown(all_types())
    if args.check:
        current = TARGET.is_file() and TARGET.read_text(encoding="utf-8") == text
        print(f"{TARGET.relative_to(ROOT)} is {'current' if current else 'out of date: run tools/gen_layer_docs.py'}")
        return 0 if current else 1
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(all_types())} layer types)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
