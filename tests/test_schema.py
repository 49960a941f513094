"""The schema keeps every Caffe field as Caffe defines it, and the generated code is up to date."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from google.protobuf.descriptor import Descriptor

from netspec._proto import netspec_pb2 as pb
from tests.conftest import DATA, ROOT

CAFFE = json.loads((DATA / "caffe_schema.json").read_text())
MESSAGES = sorted(k for k in CAFFE if not k.startswith("__"))


def _compare(expected: dict, desc: Descriptor, path: str) -> list[str]:
    problems = []
    for name, (number, ftype, repeated, required, default, packed) in expected["fields"].items():
        f = desc.fields_by_name.get(name)
        if f is None:
            problems.append(f"{path}.{name} is missing")
            continue
        ours = [
            f.number,
            f.type,
            f.is_repeated,
            f.is_required,
            f.default_value if f.has_default_value else None,
            bool(f.GetOptions().packed),
        ]
        if ours != [number, ftype, repeated, required, default, packed]:
            problems.append(f"{path}.{name}: ours {ours}, Caffe's {[number, ftype, repeated, required, default]}")
    for enum, values in expected["enums"].items():
        ours_enum = {v.name: v.number for v in desc.enum_types_by_name[enum].values}
        if any(ours_enum.get(k) != v for k, v in values.items()):
            problems.append(f"{path}.{enum} values differ")
    for nested, sub in expected["nested"].items():
        problems += _compare(sub, desc.nested_types_by_name[nested], f"{path}.{nested}")
    return problems


@pytest.mark.parametrize("message", MESSAGES)
def test_every_caffe_field_keeps_its_name_number_type_and_default(message: str) -> None:
    desc = pb.DESCRIPTOR.message_types_by_name[message]
    assert _compare(CAFFE[message], desc, message) == []


def test_phase_enum_matches_caffe() -> None:
    assert {v.name: v.number for v in pb.DESCRIPTOR.enum_types_by_name["Phase"].values} == CAFFE["__enums__"]["Phase"]


def test_netspec_additions_use_numbers_outside_caffes_ranges() -> None:
    for name, desc in pb.DESCRIPTOR.message_types_by_name.items():
        caffe_fields = CAFFE.get(name, {"fields": {}})["fields"]
        for f in desc.fields:
            if f.name not in caffe_fields and name in CAFFE:
                assert f.number >= 7001, f"{name}.{f.name} = {f.number}"


def test_a_message_encoded_with_caffe_numbers_decodes() -> None:
    # a LayerParameter with convolution_param (106) { num_output (1): 20, kernel_size (4): 5 } on the wire
    wire = bytes([0x0A, 0x05]) + b"conv1" + bytes([0x12, 0x0B]) + b"Convolution"
    conv = bytes([0x08, 20, 0x20, 5])
    wire += bytes([0xD2, 0x06, len(conv)]) + conv
    layer = pb.LayerParameter.FromString(wire)
    assert (layer.name, layer.type) == ("conv1", "Convolution")
    assert layer.convolution_param.num_output == 20
    assert list(layer.convolution_param.kernel_size) == [5]


def test_generated_code_is_up_to_date() -> None:
    pytest.importorskip("grpc_tools")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
