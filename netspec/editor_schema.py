"""A JSON Schema of YAML specs, for editors (`netspec schema`).

YAML language servers (VS Code's YAML extension, JetBrains, Neovim's yamlls) complete and check a file
from a JSON Schema. This one is generated, never written by hand: every message and field of
`schemas/netspec.proto` with its proto2 default and its comment, the registered layer types, and the
shorthands netspec's YAML reader accepts (a single value for a list, a filler given by its type name, a
shape as a list of dims, sweep parameters keyed by path), so that what it flags is what `netspec check`
would refuse. Misspelt fields are flagged because every object is closed (`additionalProperties: false`).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from netspec._proto import netspec_pb2 as pb
from netspec.layers import all_types
from netspec.layers.docs import summary_line

DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_FILE = "netspec.schema.json"

_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# YAML words netspec reads as true/false and as special floats (spec/build.py's rules).
_BOOL_WORDS = ["true", "false", "True", "False", "yes", "no", "on", "off"]
_FLOAT_WORDS = ["inf", "-inf", "+inf", "nan", ".inf", "-.inf", ".nan", "infinity", "-infinity"]


@cache
def _comments() -> dict[str, str]:
    text = resources.files("netspec._proto").joinpath("netspec_docs.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def _name(desc: Descriptor) -> str:
    return desc.full_name.removeprefix(pb.DESCRIPTOR.package + ".") if pb.DESCRIPTOR.package else desc.full_name


def _scalar(fd: FieldDescriptor) -> dict[str, Any]:
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return {"anyOf": [{"type": "boolean"}, {"enum": _BOOL_WORDS}]}
    if fd.type == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in fd.enum_type.values]
        return {"enum": names + [v.number for v in fd.enum_type.values]}
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return {"anyOf": [{"type": "number"}, {"enum": _FLOAT_WORDS}]}
    if fd.type in _INTS:
        lo, hi = _INTS[fd.type]
        return {"type": "integer", "minimum": lo, "maximum": hi}
    return {"type": ["string", "number", "boolean"]}  # YAML quoting is syntax: `name: 1` is the string "1"


def _either(test: dict[str, Any], then: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """One of two forms, told apart by `test`: if/then/else rather than anyOf, so that a validator
    reports the mistake inside the form that was written, not that no form fits."""
    return {"if": test, "then": then, "else": other}


def _value(fd: FieldDescriptor) -> dict[str, Any]:
    """The schema of one value of a field (an item, for a repeated one)."""
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return _scalar(fd)
    ref = {"$ref": f"#/definitions/{_name(fd.message_type)}"}
    name = fd.message_type.name
    if name == "BlobShape":  # `shape: [64, 1, 28, 28]`
        return _either({"type": "array"}, {"type": "array", "items": {"type": "integer", "minimum": 0}}, ref)
    if name == "FillerParameter":  # `weight_filler: xavier`
        return _either({"type": "string"}, {"type": "string"}, ref)
    return _either({"type": "null"}, {}, ref)  # `loss_param:` with nothing after it


def _field(fd: FieldDescriptor) -> dict[str, Any]:
    item = _value(fd)
    if fd.is_repeated:
        schema = _either({"type": "array"}, {"type": "array", "items": item}, _either({"type": "null"}, {}, item))
        if fd.message_type is not None and fd.message_type.name == "BlobShape":  # a list of dims is one shape
            schema = _either({"type": "array", "items": {"type": "integer"}}, {"items": {"minimum": 0}}, schema)
        if fd.message_type is not None and fd.message_type.name == "SweepRange":
            keyed = {
                "type": "object",
                "additionalProperties": _sweep_range(keyed=True),
                "propertyNames": {"pattern": r"\."},
            }
            schema = _either({"type": "object", "propertyNames": {"pattern": r"\."}}, keyed, schema)
    else:
        schema = dict(item)
        if fd.type != FieldDescriptor.TYPE_MESSAGE and fd.has_default_value:
            schema["default"] = _default(fd)
    text = _comments().get(f"{_name(fd.containing_type)}.{fd.name}")
    if text:
        schema["description"] = text
    return schema


def _default(fd: FieldDescriptor) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.values_by_number[fd.default_value].name
    return fd.default_value


def _message(desc: Descriptor) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {fd.name: _field(fd) for fd in desc.fields},
    }
    text = _comments().get(_name(desc))
    if text:
        schema["description"] = text
    return schema


def _sweep_range(keyed: bool) -> dict[str, Any]:
    schema = _message(pb.SweepRange.DESCRIPTOR)
    if keyed:  # the path is the key
        schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "path"}
    return schema


def _messages(desc: Descriptor, seen: dict[str, Descriptor]) -> None:
    if _name(desc) in seen:
        return
    seen[_name(desc)] = desc
    for fd in desc.fields:
        if fd.message_type is not None:
            _messages(fd.message_type, seen)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a YAML spec: a NetParameter."""
    seen: dict[str, Descriptor] = {}
    _messages(pb.NetParameter.DESCRIPTOR, seen)
    definitions = {name: _message(desc) for name, desc in sorted(seen.items())}
    layer = definitions["LayerParameter"]["properties"]
    types = all_types()
    layer["type"] = {"enum": sorted(types), "description": "The layer type (`netspec layers` lists them)."}
    for d in types.values():  # a layer's own parameters are described by its type's docstring
        if d.param_field and d.param_field in layer and "description" not in layer[d.param_field]:
            layer[d.param_field]["description"] = f"{d.type}: {summary_line(d)}"
    for wired in ("top", "bottom"):
        layer[wired]["description"] = (
            "Defaults to the layer's name." if wired == "top" else "Defaults to the previous layer's first top."
        )
    root = {
        "$schema": DRAFT,
        "title": "netspec spec",
        "description": "A network spec in YAML: layers, a solver section and a sweep section "
        "(schemas/netspec.proto, generated by `netspec schema`).",
        "$ref": "#/definitions/NetParameter",
        "definitions": definitions,
    }
    return root


def schema_text() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(json_schema(), indent=1, sort_keys=False) + "\n"


def installed_schema() -> str:
    """The schema file that ships with netspec (generated by tools/gen_layer_docs.py)."""
    return str(resources.files("netspec._proto").joinpath(SCHEMA_FILE))


def modeline(schema_path: str) -> str:
    """The first line that points a YAML language server at the schema."""
    return f"# yaml-language-server: $schema={schema_path}\n"
