"""How a scalar's text becomes a number, a bool or an enum value, in each spec format.

Prototxt numbers are read as protobuf's text format reads them, to the same value (tests/test_numbers.py
holds netspec to Python's `text_format`): `010` is C-style octal 8 and `08` is no number, `0x1F` is hex, a
float field takes no octal or hex, a float too large for its field reads as infinity, and `inf`,
`infinity` and `nan` (any case, with `-`) are floats. Spellings that only Python's parser takes, through
Python's own int() and float() (`+5`, `1_000`, `0b101`, `0o17`, `inff`), are refused, as C++ protobuf (so
Caffe) refuses them.

YAML specs keep each scalar's text and read it by the field's type with the same rules, so a spec means
the same in both formats; YAML adds its own spellings: a leading `+`, `.inf` and `.nan`, any integer
spelling in a float field, and `yes`/`no`/`on`/`off` for bools.

Integers are range-checked without converting text that has more digits than any field can hold, so
an integer thousands of digits long costs nothing and meets no limit of Python's `int()`.
"""

from __future__ import annotations

import re

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor

from netspec.errors import SpecFieldError, did_you_mean, shown

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, "a non-negative integer"),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, "a non-negative integer"),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, "a non-negative integer"),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, "a non-negative integer"),
}
_MAX_DIGITS = 25  # more significant digits than any field's range has, in any base
_INT = re.compile(r"(?P<sign>[-+]?)(?:0[xX](?P<hex>[0-9a-fA-F]+)|0(?P<oct>[0-7]+)|(?P<dec>[1-9][0-9]*|0))")
# Each character can be matched one way only, so that a long non-number fails in linear time.
_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[fF]?")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]")
_SPECIAL = re.compile(r"[-+]?(?:inf|infinity|nan)", re.IGNORECASE)
_YAML_SPECIAL = re.compile(r"[-+]?\.(?:inf|nan)", re.IGNORECASE)
_PROTO_TRUE, _PROTO_FALSE = ("true", "True", "t", "1"), ("false", "False", "f", "0")
_YAML_TRUE, _YAML_FALSE = ("true", "t", "yes", "on", "1"), ("false", "f", "no", "off", "0")
_PLUS_HINT = "protobuf's text format takes no '+' sign: leave it out"
_OCTAL_HINT = "a leading 0 means octal in protobuf's text format, Caffe and YAML 1.1 (010 is 8)"


def int_kind(fd: FieldDescriptor) -> str:
    """What an integer field takes, in words: 'a 32-bit integer'."""
    return _INT_RANGES[fd.type][2]


def _spelling(text: str, yaml: bool, octal: bool = True) -> tuple[bool, str, int] | None:
    """(negative, digits, base) of an integer spelling, or None if `text` is not one."""
    m = _INT.fullmatch(text)
    if m is None or (m["sign"] == "+" and not yaml) or (m["oct"] and m["oct"].strip("0") and not octal):
        return None
    digits, base = next((m[g], b) for g, b in (("hex", 16), ("oct", 8), ("dec", 10)) if m[g] is not None)
    return m["sign"] == "-", digits.lstrip("0") or "0", base


def _integer(text: str, yaml: bool, octal: bool = True) -> int | None:
    """The value of an integer spelling, or None. A value with more digits than any field holds comes
    back as a stand-in just as far out of every range, without converting its digits."""
    spelling = _spelling(text, yaml, octal)
    if spelling is None:
        return None
    negative, digits, base = spelling
    value = int(digits, base) if len(digits) <= _MAX_DIGITS else 2**128
    return -value if negative else value


def read_int(fd: FieldDescriptor, text: str, yaml: bool) -> int:
    """An integer field's value; a SpecFieldError (without a location) says why there is none."""
    lo, hi, _ = _INT_RANGES[fd.type]
    value = _integer(text, yaml)
    if value is None:
        hint = None
        if text.startswith("+") and not yaml:
            hint = _PLUS_HINT
        elif _LEADING_ZERO.match(text) and text.lstrip("+-").isdigit():
            sign = text[0] if text[0] in "+-" else ""
            hint = f"{_OCTAL_HINT}, and octal has no digit 8 or 9: write {sign}{text.lstrip('+-0')}"
        elif _FLOAT.fullmatch(text) and len(text) <= 80 and float(text.rstrip("fF")).is_integer():
            hint = f"write it without a decimal point: {fd.name}: {int(float(text.rstrip('fF')))}"
        raise SpecFieldError(f"field '{fd.name}' takes {int_kind(fd)}, got '{shown(text)}'", hint=hint)
    if not lo <= value <= hi:
        raise SpecFieldError(f"field '{fd.name}' takes {int_kind(fd)} ({lo} to {hi}); {shown(text)} is out of range")
    return value


def read_float(fd: FieldDescriptor, text: str, yaml: bool) -> float:
    """A float or double field's value. The message rounds it to the field's width, as protobuf does: a
    value beyond a float field's range is infinity there."""
    if yaml:
        if _YAML_SPECIAL.fullmatch(text):
            return float(text.replace(".", ""))
        spelling = _spelling(text, yaml)
        if spelling is not None and spelling[2] != 10:  # exact: hex and octal digits convert in linear time
            value = int(spelling[1], spelling[2])
            return -_to_float(value) if spelling[0] else _to_float(value)
    elif text.startswith("+"):
        raise SpecFieldError(f"field '{fd.name}' takes a number, got '{shown(text)}'", hint=_PLUS_HINT)
    if _SPECIAL.fullmatch(text):
        return float(text)
    if _FLOAT.fullmatch(text):
        if _LEADING_ZERO.match(text) and (not yaml or text.lstrip("+-").isdigit()):
            raise SpecFieldError(
                f"field '{fd.name}' takes a number, got '{shown(text)}'",
                hint=f"{_OCTAL_HINT}, and a float cannot be octal: leave out the leading 0",
            )
        return float(text.rstrip("fF"))
    raise SpecFieldError(f"field '{fd.name}' takes a number, got '{shown(text)}'")


def _to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return float("inf")


def read_bool(fd: FieldDescriptor, text: str, yaml: bool) -> bool:
    """A bool field's value: protobuf's spellings in prototxt, YAML's as well in YAML."""
    key = text.lower() if yaml else text
    if key in (_YAML_TRUE if yaml else _PROTO_TRUE):
        return True
    if key in (_YAML_FALSE if yaml else _PROTO_FALSE):
        return False
    raise SpecFieldError(f"field '{fd.name}' takes true or false, got '{shown(text)}'")


def read_enum(fd: FieldDescriptor, text: str, yaml: bool) -> int:
    """An enum field's value, by name or by number (protobuf reads enum numbers without octal)."""
    enum: EnumDescriptor = fd.enum_type
    if text in enum.values_by_name:
        return int(enum.values_by_name[text].number)
    number = _integer(text, yaml, octal=yaml)
    if number is not None and number in enum.values_by_number:
        return number
    names = ", ".join(v.name for v in enum.values)
    hint = did_you_mean(text, enum.values_by_name) if len(text) <= 80 else None
    if number is None and _LEADING_ZERO.match(text):
        hint = "protobuf reads enum numbers without a leading 0; better, write the name"
    raise SpecFieldError(f"field '{fd.name}' takes one of {names}; got '{shown(text)}'", hint=hint)
