"""Number, bool and enum spellings: prototxt reads them exactly as protobuf's text format does, YAML with
the same rules plus YAML's own spellings, and integers are range-checked by field."""

from __future__ import annotations

import math
import re

import pytest
import yaml
from google.protobuf import text_format, wrappers_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SpecFieldError, SpecSyntaxError
from netspec.netfile import load_net_text
from netspec.spec.build import BuildOptions, SourceMap, build_message
from netspec.spec.load import PROTOTXT, YAML
from netspec.spec.prototxt import parse_prototxt
from netspec.spec.yamltree import parse_yaml

# One field of each kind, as a prototxt snippet around the value, in the message it belongs to.
FIELDS = {
    "int32": (pb.LayerParameter, "softmax_param { axis: %s }"),
    "uint32": (pb.LayerParameter, "convolution_param { num_output: %s }"),
    "int64": (pb.BlobShape, "dim: %s"),
    "uint64": (wrappers_pb2.UInt64Value, "value: %s"),
    "float": (pb.LayerParameter, "loss_weight: %s"),
    "double": (wrappers_pb2.DoubleValue, "value: %s"),
    "bool": (pb.LayerParameter, "propagate_down: %s"),
    "enum": (pb.NetStateRule, "phase: %s"),
}


def ours(message: type[Message], text: str, fmt: str = PROTOTXT) -> Message | None:
    """The message netspec reads from `text`, or None where it refuses it with a located message."""
    msg = message()
    try:
        tree = parse_prototxt(text, "t.prototxt") if fmt == PROTOTXT else parse_yaml(text, "t.yaml")
        build_message(tree, msg, SourceMap("t"), BuildOptions(quotes_mark_strings=fmt == PROTOTXT))
    except (SpecFieldError, SpecSyntaxError) as e:
        assert e.loc is not None and "\n" not in e.msg
        return None
    return msg


def protobufs(message: type[Message], text: str) -> Message | None:
    msg = message()
    try:
        text_format.Merge(text, msg)
    except text_format.ParseError:
        return None
    return msg


def python_only(spelling: str) -> bool:
    """Spellings Python's text_format takes only because Python's int() and float() do, and that
    C++ protobuf (so Caffe) refuses: a '+' sign, '_' between digits, 0b/0o prefixes, an 'f' after
    inf or nan, more than one 'f' after a number."""
    return bool(
        "+" in spelling
        or "_" in spelling
        or re.search(r"0[bBoO]", spelling)
        or re.fullmatch(r"-?(inf|infinity|nan)f", spelling, re.IGNORECASE)
        or re.search(r"[0-9.][fF]{2,}$", spelling)
    )


digits = st.text("0123456789", min_size=1, max_size=30)
spellings = st.one_of(
    st.integers(-(2**65), 2**65).map(str),
    st.integers(0, 2**65).map(hex),
    st.integers(0, 2**65).map(lambda n: "0" + format(n, "o")),
    st.tuples(st.sampled_from(["", "-", "+"]), st.sampled_from(["0", "00", "0x", "0X", "0b", "0o", ""]), digits).map(
        "".join
    ),
    st.floats(allow_nan=False).map(repr),
    st.floats(width=32, allow_nan=False).map(lambda f: f"{f:g}"),
    st.tuples(
        st.sampled_from(["", "-", "+"]),
        digits,
        st.sampled_from(["", ".", ".5"]),
        st.sampled_from(["", "e5", "E-3", "e+400", "e"]),
        st.sampled_from(["", "f", "F", "ff"]),
    ).map("".join),
    st.tuples(
        st.sampled_from(["", "-", "+"]),
        st.sampled_from(["inf", "Infinity", "NaN", "nan", "iNF", "INFINITY"]),
        st.sampled_from(["", "f"]),
    ).map("".join),
    st.sampled_from(
        [
            "true",
            "True",
            "TRUE",
            "t",
            "1",
            "false",
            "False",
            "f",
            "0",
            "yes",
            "TRAIN",
            "TEST",
            "train",
            "1" + "0" * 309,
            "-1" + "0" * 400 + ".5",
            "1" * 5000,
            "0x" + "f" * 300,
            "0" * 50 + "7",
        ]
    ),
    st.text("0123456789abcdefxXeEfFinINaA.+-_", min_size=1, max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FIELDS)), spellings)
def test_prototxt_numbers_read_as_protobuf_reads_them(kind: str, spelling: str) -> None:
    message, snippet = FIELDS[kind]
    text = snippet % spelling
    mine, theirs = ours(message, text), protobufs(message, text)
    if mine is None:
        assert theirs is None or python_only(spelling), f"protobuf reads {text!r} as {theirs}"
    else:
        assert theirs is not None, f"protobuf refuses {text!r}, netspec reads {mine}"
        assert mine.SerializeToString() == theirs.SerializeToString()  # bit for bit, NaN and -0.0 too


@pytest.mark.parametrize(
    ("kind", "spelling", "value"),
    [
        ("int64", "010", 8),
        ("int64", "-010", -8),
        ("int64", "0x1F", 31),
        ("int64", "-0X1f", -31),
        ("int64", "00", 0),
        ("int64", "0" * 5000 + "7", 7),
        ("uint32", "4294967295", 2**32 - 1),
        ("uint64", "0xffffffffffffffff", 2**64 - 1),
        ("float", "1" + "0" * 309, math.inf),
        ("float", "1e39", math.inf),
        ("double", "1e39", 1e39),
        ("double", "-1e400", -math.inf),
        ("float", "2f", 2.0),
        ("float", "-Infinity", -math.inf),
        ("float", "0e5", 0.0),
        ("enum", "0x1", pb.TEST),
        ("enum", "TRAIN", pb.TRAIN),
        ("bool", "t", True),
        ("bool", "False", False),
    ],
)
def test_prototxt_spellings(kind: str, spelling: str, value: object) -> None:
    message, snippet = FIELDS[kind]
    msg = ours(message, snippet % spelling)
    assert msg is not None
    assert _value(msg) == value


def _value(msg: Message) -> object:
    """The one number a FIELDS snippet sets."""
    fd, value = msg.ListFields()[0]
    while fd.type == fd.TYPE_MESSAGE:
        fd, value = value.ListFields()[0]
    return value[0] if fd.is_repeated else value


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        (
            "input_dim: 08",
            "field 'input_dim' takes a 32-bit integer, got '08'",
            "a leading 0 means octal in protobuf's text format, Caffe and YAML 1.1 (010 is 8), and octal has no digit 8 "
            "or 9: write 8",
        ),
        (
            "input_dim: 2147483648",
            "field 'input_dim' takes a 32-bit integer (-2147483648 to 2147483647); 2147483648 is out of range",
            None,
        ),
        (
            "layer { convolution_param { num_output: -0x1 } }",
            "field 'num_output' takes a non-negative integer (0 to 4294967295); -0x1 is out of range",
            None,
        ),
        (
            "layer { reshape_param { shape { dim: 9223372036854775808 } } }",
            "field 'dim' takes a 64-bit integer "
            "(-9223372036854775808 to 9223372036854775807); 9223372036854775808 is out of range",
            None,
        ),
        (
            "input_dim: " + "9" * 5000,
            "field 'input_dim' takes a 32-bit integer (-2147483648 to 2147483647); "
            + "9" * 40
            + "...9999999999 (5000 characters) is out of range",
            None,
        ),
        (
            "input_dim: +5",
            "field 'input_dim' takes a 32-bit integer, got '+5'",
            "protobuf's text format takes no '+' sign: leave it out",
        ),
        (
            "input_dim: 1e3",
            "field 'input_dim' takes a 32-bit integer, got '1e3'",
            "write it without a decimal point: input_dim: 1000",
        ),
        (
            "layer { loss_weight: 01 }",
            "field 'loss_weight' takes a number, got '01'",
            "a leading 0 means octal in protobuf's text format, Caffe and YAML 1.1 (010 is 8), and a float cannot be "
            "octal: leave out the leading 0",
        ),
        ("layer { loss_weight: 0x10 }", "field 'loss_weight' takes a number, got '0x10'", None),
        (
            "layer { loss_weight: +1 }",
            "field 'loss_weight' takes a number, got '+1'",
            "protobuf's text format takes no '+' sign: leave it out",
        ),
        (
            "layer { include { phase: 01 } }",
            "field 'phase' takes one of TRAIN, TEST; got '01'",
            "protobuf reads enum numbers without a leading 0; better, write the name",
        ),
        ("layer { include { phase: 2 } }", "field 'phase' takes one of TRAIN, TEST; got '2'", None),
        ("force_backward: yes", "field 'force_backward' takes true or false, got 'yes'", None),
    ],
)
def test_prototxt_refusals_name_the_field_and_why(text: str, message: str, hint: str | None) -> None:
    with pytest.raises(SpecFieldError) as e:
        load_net_text(text, "t.prototxt", PROTOTXT)
    assert (e.value.msg, e.value.hint) == (message, hint)
    assert e.value.loc is not None and e.value.loc.col == text.rindex(":") + 3


@settings(max_examples=300, deadline=None)
@given(spellings)
def test_yaml_numbers_read_as_yaml_reads_them(spelling: str) -> None:
    """Wherever PyYAML (YAML 1.1) reads a plain scalar as a number, netspec reads the same number; it also
    reads some spellings YAML 1.1 calls strings (`1e-4`), and refuses 1_000, 0b11 and 1:30."""
    try:
        value = yaml.safe_load(f"v: {spelling}")["v"]
    except (yaml.YAMLError, ValueError):  # ValueError: PyYAML's int() past 4,300 digits
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or re.search(r"[_:]|0b", spelling):
        return
    double = ours(wrappers_pb2.DoubleValue, f"value: {spelling}", YAML)
    assert double is not None
    try:
        expected = float(value)
    except OverflowError:  # an integer past the largest double reads as infinity, as protobuf's text format does
        expected = math.inf if value > 0 else -math.inf
    assert double.value == expected or (math.isnan(expected) and math.isnan(double.value))
    if isinstance(value, int):
        int64 = ours(wrappers_pb2.Int64Value, f"value: {spelling}", YAML)
        assert (int64.value if int64 is not None else None) == (value if -(2**63) <= value < 2**63 else None)


@pytest.mark.parametrize(
    ("kind", "spelling", "value"),
    [
        ("int64", "010", 8),
        ("int64", "+5", 5),
        ("int64", "0x1F", 31),
        ("int64", "'12'", 12),
        ("float", "010", 8.0),
        ("float", "0x10", 16.0),
        ("float", "1e-4", pytest.approx(1e-4)),
        ("float", ".inf", math.inf),
        ("float", "-.inf", -math.inf),
        ("float", "+.5", 0.5),
        ("float", "1" + "0" * 309, math.inf),
        ("float", "0x" + "f" * 300, math.inf),
        ("double", "00.5", 0.5),
        ("bool", "yes", True),
        ("bool", "Off", False),
        ("enum", "TEST", pb.TEST),
        ("enum", "01", pb.TEST),
    ],
)
def test_yaml_spellings(kind: str, spelling: str, value: object) -> None:
    message, snippet = FIELDS[kind]
    key, _, inner = snippet.partition(" { ")
    text = f"{key}: {{{inner.rstrip(' }') % spelling}}}" if inner else (snippet % spelling)
    msg = ours(message, text, YAML)
    assert msg is not None
    assert _value(msg) == value


def test_yaml_nan_is_nan() -> None:
    msg = ours(pb.LayerParameter, "loss_weight: .NaN", YAML)
    assert msg is not None and math.isnan(msg.loss_weight[0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dim: 08", "field 'dim' takes a 64-bit integer, got '08'"),
        ("dim: 1_000", "field 'dim' takes a 64-bit integer, got '1_000'"),
        ("dim: 0b11", "field 'dim' takes a 64-bit integer, got '0b11'"),
        ("dim: 1:30", "field 'dim' takes a 64-bit integer, got '1:30'"),
        (
            "dim: -9223372036854775809",
            "field 'dim' takes a 64-bit integer (-9223372036854775808 to "
            "9223372036854775807); -9223372036854775809 is out of range",
        ),
    ],
)
def test_yaml_refusals(text: str, message: str) -> None:
    with pytest.raises(SpecFieldError) as e:
        build_message(parse_yaml(text, "t.yaml"), pb.BlobShape(), SourceMap("t"), BuildOptions(False))
    assert e.value.msg == message
    assert str(e.value.loc) == "t.yaml:1:6"


@pytest.mark.parametrize("fmt", [PROTOTXT, YAML])
def test_a_long_almost_number_is_refused_without_backtracking(fmt: str) -> None:
    """A regression: an ambiguous float pattern took minutes on 10,000 digits followed by a letter."""
    almost = "1" * 100_000 + "x"
    assert ours(pb.LayerParameter, f"loss_weight: {almost}", fmt) is None
    assert ours(pb.LayerParameter, f"loss_weight: {almost[:-1]}.5e-3f", fmt) is not None
