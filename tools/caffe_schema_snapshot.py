"""Writes tests/data/caffe_schema.json: every message, field number, type, label and default of a
Caffe caffe.proto, so a test can hold netspec's schema to Caffe's without Caffe at test time.

    python tools/caffe_schema_snapshot.py path/to/caffe/src/caffe/proto/caffe.proto
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def describe(desc) -> dict:  # type: ignore[no-untyped-def]
    out = {"fields": {}, "enums": {}, "nested": {}}
    for f in desc.fields:
        default = f.default_value if f.has_default_value else None
        out["fields"][f.name] = [f.number, f.type, f.is_repeated, f.is_required, default, bool(f.GetOptions().packed)]
    for e in desc.enum_types:
        out["enums"][e.name] = {v.name: v.number for v in e.values}
    for n in desc.nested_types:
        out["nested"][n.name] = describe(n)
    return out


def main() -> None:
    proto = Path(sys.argv[1]).resolve()
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        if protoc.main(["protoc", f"-I{proto.parent}", f"--python_out={tmp}", str(proto)]) != 0:
            sys.exit("protoc failed")
        sys.path.insert(0, tmp)
        module = importlib.import_module(proto.stem + "_pb2")
        snapshot = {name: describe(d) for name, d in module.DESCRIPTOR.message_types_by_name.items()}
        snapshot["__enums__"] = {
            name: {v.name: v.number for v in e.values} for name, e in module.DESCRIPTOR.enum_types_by_name.items()
        }
    out = ROOT / "tests" / "data" / "caffe_schema.json"
    out.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out.relative_to(ROOT)} ({len(snapshot) - 1} messages)")


if __name__ == "__main__":
    main()
