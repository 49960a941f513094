"""Layer documentation from the registry and the schema: `netspec layers` and docs/layers.md."""

from __future__ import annotations

import inspect

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from netspec._proto import netspec_pb2 as pb
from netspec.layers.base import LayerDef

_CATEGORIES = ("data", "vision", "neuron", "normalization", "common", "utility", "recurrent", "loss")


def summary_line(d: LayerDef) -> str:
    doc = inspect.getdoc(d) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def listing(types: dict[str, LayerDef]) -> str:
    """One line per layer type, grouped by category."""
    lines = []
    for cat in _CATEGORIES:
        members = sorted((d for d in types.values() if d.category == cat), key=lambda d: d.type)
        if not members:
            continue
        lines.append(f"{cat}:")
        for d in members:
            mark = " (netspec)" if d.origin == "netspec" else ""
            text = summary_line(d)
            lines.append(f"  {d.type:<24} {text[:88] + ('...' if len(text) > 88 else '')}{mark}")
        lines.append("")
    lines.append("`netspec layers TYPE` shows a type's parameters and an example.")
    return "\n".join(lines)


def _default(fd: FieldDescriptor) -> str:
    if fd.is_repeated:
        return "[]"
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return "{}"
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.values_by_number[fd.default_value].name
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "true" if fd.default_value else "false"
    if fd.type == FieldDescriptor.TYPE_STRING:
        return repr(fd.default_value)
    return f"{fd.default_value:g}" if isinstance(fd.default_value, float) else str(fd.default_value)


def _kind(fd: FieldDescriptor) -> str:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        kind = fd.message_type.name
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        kind = "|".join(v.name for v in fd.enum_type.values)
    else:
        kind = {FieldDescriptor.TYPE_FLOAT: "float", FieldDescriptor.TYPE_DOUBLE: "float",
                FieldDescriptor.TYPE_BOOL: "bool", FieldDescriptor.TYPE_STRING: "string",
                FieldDescriptor.TYPE_INT64: "int", FieldDescriptor.TYPE_INT32: "int",
                FieldDescriptor.TYPE_UINT32: "uint"}.get(fd.type, "value")
    return f"repeated {kind}" if fd.is_repeated else kind


def fields(desc: Descriptor) -> list[tuple[str, str, str]]:
    """(name, kind, default) of each field of a parameter message."""
    return [(fd.name, _kind(fd), _default(fd)) for fd in desc.fields]


def describe(d: LayerDef) -> str:
    """A layer type's documentation: what it does, its arity, parameters with defaults, an example."""
    lines = [f"{d.type} ({d.category}{', a netspec addition' if d.origin == 'netspec' else ''})", ""]
    lines.append(inspect.getdoc(d) or "")
    lines += ["", f"bottoms: {d.bottoms}   tops: {d.tops}"]
    if d.loss:
        lines.append("a loss: the first top's loss_weight defaults to 1")
    if d.param_field:
        desc = getattr(pb.LayerParameter(), d.param_field).DESCRIPTOR
        lines += ["", f"{d.param_field} ({desc.name}):"]
        for name, kind, default in fields(desc):
            lines.append(f"  {name:<24} {kind:<32} default {default}")
    return "\n".join(lines)
