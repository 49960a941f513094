"""Regenerates netspec/_proto/netspec_pb2.py and .pyi from schemas/netspec.proto.

Run after editing the schema: python tools/gen_proto.py [--check]
With --check, it only reports (exit 1) whether the committed code differs from a fresh generation.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "netspec" / "_proto"
FILES = ("netspec_pb2.py", "netspec_pb2.pyi", "netspec_docs.json")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'schemas'}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            "--include_source_info",
            f"--descriptor_set_out={out_dir / 'netspec.desc'}",
            str(ROOT / "schemas" / "netspec.proto"),
        ]
    )
    if code != 0:
        sys.exit(f"protoc failed with status {code}")
    desc = out_dir / "netspec.desc"
    (out_dir / "netspec_docs.json").write_text(
        json.dumps(comments(desc.read_bytes()), indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    desc.unlink()


def comments(descriptor_set: bytes) -> dict[str, str]:
    """The .proto comments of every message and field ("NetParameter", "NetParameter.layer"), which the
    generated code leaves out; the JSON Schema for editors shows them."""
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    proto = files.file[0]
    names: dict[tuple[int, ...], str] = {}

    def walk(messages: object, path: tuple[int, ...], prefix: str) -> None:
        for i, m in enumerate(messages):  # type: ignore[attr-defined]
            mpath, name = (*path, i), prefix + m.name
            names[mpath] = name
            for j, f in enumerate(m.field):
                names[(*mpath, 2, j)] = f"{name}.{f.name}"
            walk(m.nested_type, (*mpath, 3), name + ".")

    walk(proto.message_type, (4,), "")
    out = {}
    for loc in proto.source_code_info.location:
        name = names.get(tuple(loc.path))
        text = " ".join(line.strip() for line in (loc.leading_comments or loc.trailing_comments).splitlines())
        if name and text.strip():
            out[name] = text.strip()
    return out


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
