"""Regenerates netspec/_proto/netspec_pb2.py and .pyi from schemas/netspec.proto, and
grpc_predict_v2_pb2.py and .pyi (the Open Inference Protocol's gRPC messages) from schemas/grpc_predict_v2.proto.

Run after editing a schema: python tools/gen_proto.py [--check]
With --check, it only reports (exit 1) whether the committed code differs from a fresh generation.

The protoc inside grpcio-tools GRPC_TOOLS writes generated code that checks, on import, that the protobuf
runtime is no older than that protoc (protobuf PROTOBUF_FLOOR); newer runtimes, 7.x included, accept it.
That floor is the lower bound of netspec's protobuf requirement, and it is below the upper bounds of
tritonclient[grpc], kserve and mlserver (protobuf < 7), so one environment holds netspec and them. A newer
grpcio-tools would raise the floor to its own protobuf (7.35.1 with grpcio-tools 1.85), which they refuse.
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
FILES = (
    "netspec_pb2.py",
    "netspec_pb2.pyi",
    "netspec_docs.json",
    "grpc_predict_v2_pb2.py",
    "grpc_predict_v2_pb2.pyi",
)
GRPC_TOOLS = "1.80.0"
PROTOBUF_FLOOR = "6.31.1"
# The KServe messages are built in a descriptor pool of their own: tritonclient's and kserve's generated code
# defines the same names (inference.ModelInferRequest, ...) in protobuf's default pool, where a second
# definition from another file fails to load, and netspec must import beside them.
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out_dir: Path) -> None:
    from importlib.metadata import version

    from grpc_tools import protoc

    if version("grpcio-tools") != GRPC_TOOLS:
        sys.exit(
            f"tools/gen_proto.py needs grpcio-tools=={GRPC_TOOLS} (found {version('grpcio-tools')}): its code "
            f"loads with protobuf {PROTOBUF_FLOOR} and later; pip install grpcio-tools=={GRPC_TOOLS} --no-deps"
        )
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
    if code == 0:
        code = protoc.main(
            [
                "protoc",
                f"-I{ROOT / 'schemas'}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                str(ROOT / "schemas" / "grpc_predict_v2.proto"),
            ]
        )
    if code != 0:
        sys.exit(f"protoc failed with status {code}")
    kserve = out_dir / "grpc_predict_v2_pb2.py"
    text = kserve.read_text(encoding="utf-8")
    if text.count(DEFAULT_POOL) != 1:
        sys.exit(f"protoc's code for grpc_predict_v2.proto has no single '{DEFAULT_POOL}' line to give its own pool")
    kserve.write_text(text.replace(DEFAULT_POOL, OWN_POOL), encoding="utf-8")
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
