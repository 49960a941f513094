"""Writes a net as prototxt or YAML, for `netspec convert`: reading the output back gives an equal message.

YAML output is written for people: wiring the YAML defaults restore is left out, shapes are lists, a
filler with only a type is `weight_filler: xavier`, small messages go on one line, and floats are the
shortest text that reads back as the same 32-bit value.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import yaml
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from netspec._proto import netspec_pb2 as pb


def to_prototxt(message: Message) -> str:
    return text_format.MessageToString(message)


class _Float(float):
    """A float written as its shortest text (for float32 fields: the shortest that survives float32)."""

    single: bool

    def __new__(cls, value: float, single: bool) -> _Float:
        obj = super().__new__(cls, value)
        obj.single = single
        return obj


class _Flow(list[object]):
    """A list written on one line."""


class _FlowMap(dict[str, object]):
    """A mapping written on one line."""


def _float_text(value: float, single: bool) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    for digits in range(1, 18):
        text = f"{value:.{digits}g}"
        back = float(text)
        if (struct.unpack("f", struct.pack("f", back))[0] if single else back) == value:
            break
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"  # YAML 1.1 reads 1e-05 as a string; 1.0e-05 is a float
    return mantissa + ("e" + exponent if exponent else "")


class _Dumper(yaml.SafeDumper):
    pass


_BREAKS = set("\n\r\x85\u2028\u2029")


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # line-break characters are escaped only inside double quotes
    style = '"' if any(ch in _BREAKS or not ch.isprintable() for ch in value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(_Float, lambda d, v: d.represent_scalar("tag:yaml.org,2002:float", _float_text(v, v.single)))
_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_Dumper.add_representer(_FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.values_by_number[value].name
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if value.is_integer() and abs(value) < 2**53 and math.copysign(1.0, value) > 0:
            return int(value)  # lr_mult: 1 rather than 1.0 (read back as the same float)
        return _Float(value, fd.type == FieldDescriptor.TYPE_FLOAT)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("latin-1")
    return value


def _is_leafy(d: dict[str, Any]) -> bool:
    return all(not isinstance(v, dict) and not (isinstance(v, list) and not isinstance(v, _Flow)) for v in d.values())


def _message(msg: Message) -> Any:
    name = msg.DESCRIPTOR.name
    if name == "BlobShape":
        return _Flow(list(msg.dim)) if msg.dim else {}
    fields = msg.ListFields()
    if name == "FillerParameter" and [fd.name for fd, _ in fields] == ["type"]:
        return msg.type
    out: dict[str, Any] = {}
    for fd, value in fields:
        out[fd.name] = _field(fd, value)
    return _FlowMap(out) if out and _is_leafy(out) and len(out) <= 6 else out


def _field(fd: FieldDescriptor, value: Any) -> Any:
    if fd.is_repeated:  # a single value stands for a list of one, as the reader allows
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            items = [_message(m) for m in value]
            if len(items) == 1:
                return items[0]
            return [_Flow(i) if isinstance(i, list) else i for i in items]
        if len(value) == 1:
            return _scalar(fd, value[0])
        return _Flow([_scalar(fd, v) for v in value])
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(value)
    return _scalar(fd, value)


Wiring = list[str] | None  # a layer's top or bottom as reading YAML fills it in; None: it fills in nothing


def yaml_text(net: pb.NetParameter, implied: list[tuple[Wiring, Wiring]]) -> str:
    """A net as YAML text, leaving out each layer's `implied` (top, bottom): what reading fills back in."""
    doc: dict[str, Any] = {}
    for fd, value in net.ListFields():
        doc[fd.name] = _layers(net, implied) if fd.name == "layer" else _field(fd, value)
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def _layers(net: pb.NetParameter, implied: list[tuple[Wiring, Wiring]]) -> list[dict[str, Any]]:
    layers = []
    for layer, defaults in zip(net.layer, implied, strict=True):
        entry: dict[str, Any] = {}
        for fd, value in layer.ListFields():
            entry[fd.name] = _field(fd, value)
        for wiring, default in zip(("top", "bottom"), defaults, strict=True):
            actual = list(getattr(layer, wiring))
            if default is not None and actual == default:
                entry.pop(wiring)  # reading it back fills the same in
            elif default and not actual:
                entry[wiring] = _Flow()  # an explicit empty list keeps the default out
        layers.append(entry)
    return layers
