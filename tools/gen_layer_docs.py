"""Writes what is generated from netspec's layer registry and schema: docs/layers.md and the JSON Schema
for editors (netspec/_proto/netspec.schema.json, which schemas/netspec.schema.json links to).
`--check` only says whether they are current.

    python tools/gen_layer_docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netspec.editor_schema import schema_text  # noqa: E402
from netspec.layers import all_types  # noqa: E402
from netspec.layers.docs import markdown  # noqa: E402

TARGETS = {
    ROOT / "docs" / "layers.md": lambda: markdown(all_types()),
    ROOT / "netspec" / "_proto" / "netspec.schema.json": schema_text,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is not current")
    args = parser.parse_args()
    stale = []
    for target, make in TARGETS.items():
        text, name = make(), target.relative_to(ROOT)
        if args.check:
            if not (target.is_file() and target.read_text(encoding="utf-8") == text):
                stale.append(str(name))
            continue
        target.parent.mkdir(exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {name}")
    if args.check:
        print("out of date: " + ", ".join(stale) + "; run tools/gen_layer_docs.py" if stale else "current")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
