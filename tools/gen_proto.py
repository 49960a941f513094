"""Regenerates netspec/_proto/netspec_pb2.py and .pyi from schemas/netspec.proto.

Run after editing the schema: python tools/gen_proto.py [--check]
With --check, it only reports (exit 1) whether the committed code differs from a fresh generation.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "netspec" / "_proto"
FILES = ("netspec_pb2.py", "netspec_pb2.pyi")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    code = protoc.main(["protoc", f"-I{ROOT / 'schemas'}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                        str(ROOT / "schemas" / "netspec.proto")])
    if code != 0:
        sys.exit(f"protoc failed with status {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        print(f"wrote {', '.join(FILES)} in {OUT.relative_to(ROOT)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [f for f in FILES if not filecmp.cmp(Path(tmp) / f, OUT / f, shallow=False)]
    if stale:
        sys.exit(f"generated code is out of date: {', '.join(stale)}; run python tools/gen_proto.py")
    print("generated code is up to date")


if __name__ == "__main__":
    main()
