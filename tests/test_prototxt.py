"""netspec's prototxt reader gives the messages protobuf's own parser gives, with better errors."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SpecFieldError, SpecSyntaxError
from netspec.netfile import load_net_text
from netspec.spec.load import PROTOTXT
from tests.conftest import CAFFE, MODELS

PROTOTXTS = sorted(glob.glob(str(CAFFE / "*" / "*.prototxt")) + glob.glob(str(MODELS / "*.prototxt")))


def ours(text: str, message: str = "NetParameter") -> object:
    from netspec.spec.build import BuildOptions, SourceMap, build_message
    from netspec.spec.prototxt import parse_prototxt

    msg = getattr(pb, message)()
    build_message(parse_prototxt(text, "t.prototxt"), msg, SourceMap("t"), BuildOptions(quotes_mark_strings=True))
    return msg


@pytest.mark.parametrize("path", PROTOTXTS, ids=lambda p: p.split("/caffe/")[-1])
def test_files_parse_as_protobuf_parses_them(path: str) -> None:
    text = Path(path).read_text()
    kind = "SolverParameter" if "/solvers/" in path else "NetParameter"
    expected = text_format.Parse(text, getattr(pb, kind)())
    assert ours(text, kind) == expected


@pytest.mark.parametrize(
    "text",
    [
        'name: "a" layer { name: "x" type: "Input" top: "x" input_param { shape: { dim: [1, 2] } } }',
        'layer < name: "x" type: "ReLU" > layer: { name: \'y\' type: "ReLU" };',
        'name: "multi" "part" "string"  # comment\nforce_backward: true',
        'layer { name: "x\\ty\\n\\"q\\"" convolution_param { pad: 0x1 kernel_size: [3, 5] } }',
        'layer { name: "p" pooling_param { pool: 1 } loss_weight: 1e-3 loss_weight: -.5 loss_weight: 2f }',
        'layer { name: "f" param { lr_mult: inf } param { lr_mult: -inf } propagate_down: True propagate_down: f }',
    ],
)
def test_syntax_variants(text: str) -> None:
    assert ours(text) == text_format.Parse(text, pb.NetParameter())


names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
floats = st.floats(allow_nan=False, width=32)


@st.composite
def layers(draw: st.DrawFn) -> pb.LayerParameter:
    layer = pb.LayerParameter(name=draw(names), type=draw(st.sampled_from(["Convolution", "Pooling", "X"])))
    layer.bottom.extend(draw(st.lists(names, max_size=3)))
    layer.top.extend(draw(st.lists(names, max_size=3)))
    layer.loss_weight.extend(draw(st.lists(floats, max_size=2)))
    if draw(st.booleans()):
        c = layer.convolution_param
        c.num_output = draw(st.integers(0, 2**32 - 1))
        c.kernel_size.extend(draw(st.lists(st.integers(0, 99), max_size=3)))
        c.bias_term = draw(st.booleans())
        c.weight_filler.type = draw(names)
        c.weight_filler.std = draw(floats)
        c.axis = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        layer.pooling_param.pool = draw(st.sampled_from([0, 1, 2]))
        layer.pooling_param.round_mode = draw(st.sampled_from([0, 1]))
    for _ in range(draw(st.integers(0, 2))):
        rule = layer.include.add()
        rule.phase = draw(st.sampled_from([0, 1]))
        rule.stage.extend(draw(st.lists(names, max_size=2)))
    if draw(st.booleans()):
        layer.reshape_param.shape.dim.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)))
    return layer


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(layers(), max_size=4), names)
def test_any_message_printed_by_protobuf_reads_back_equal(layer_list: list[pb.LayerParameter], name: str) -> None:
    net = pb.NetParameter(name=name)
    net.layer.extend(layer_list)
    assert ours(text_format.MessageToString(net)) == net
    assert ours(text_format.MessageToString(net, as_one_line=True)) == net
    assert ours(text_format.MessageToString(net, as_utf8=True)) == net


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('layer {\n  name: "a"\n', "t.prototxt:1:7", "missing '}' before the end of the file"),
        ('layer {\n  name: "a"\n}\n}\n', "t.prototxt:4:1", "expected a field name, found '}'"),
        ('layer {\n  name "a"\n}', "t.prototxt:2:8", "expected ':' or '{' after field name 'name', found '\"a\"'"),
        ('name: "unterminated\n', "t.prototxt:1:7", "string literal is not closed on its line"),
        ('layer { name: "a" ty: "ReLU" }', "t.prototxt:1:19", "unknown field 'ty' in a layer"),
        (
            "layer { convolution_param { num_output: 3.5 } }",
            "t.prototxt:1:41",
            "field 'num_output' takes a non-negative integer, got '3.5'",
        ),
        (
            "layer { convolution_param { num_output: -1 } }",
            "t.prototxt:1:41",
            "field 'num_output' takes a non-negative integer (0 to 4294967295); -1 is out of range",
        ),
        (
            "layer { pooling_param { pool: MEAN } }",
            "t.prototxt:1:31",
            "field 'pool' takes one of MAX, AVE, STOCHASTIC; got 'MEAN'",
        ),
        ("layer { name: data }", "t.prototxt:1:15", "field 'name' takes a string, got the bare word data"),
        (
            'layer { name: "a" name: "b" }',
            "t.prototxt:1:19",
            "field 'name' is given twice (first on line 1); it takes one value",
        ),
        (
            'layer { include { phase: TRAIN } phase: "TEST" }',
            "t.prototxt:1:41",
            "field 'phase' takes one of TRAIN, TEST, got the string \"TEST\"",
        ),
        ("layer { clip_param { min: 0 } }", "t.prototxt:1:9", "required field 'max' of clip_param is missing"),
    ],
)
def test_errors_name_the_line_column_and_problem(text: str, where: str, message: str) -> None:
    with pytest.raises((SpecSyntaxError, SpecFieldError)) as e:
        load_net_text(text, "t.prototxt", PROTOTXT)
    assert str(e.value.loc) == where
    assert e.value.msg == message


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r'"caf\303\251"', "café"),
        (r'"caf\xc3\xa9"', "café"),
        (r'"caf\u00e9"', "café"),
        ('"café"', "café"),
        (r'"\U0001F600"', "\U0001f600"),
        (r'"\x41\101\0"', "AA\0"),
        (r"'\'\"\\\t'", "'\"\\\t"),
        (r'"a\?"', "a?"),
    ],
)
def test_string_escapes_stand_for_utf8_bytes(literal: str, value: str) -> None:
    assert ours(f"name: {literal}").name == value  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("literal", "col", "message"),
    [
        (r'"ab\ud800"', 10, "escape '\\ud800' is not a byte or a Unicode character in a string"),
        (r'"\U00110000"', 8, "escape '\\U00110000' is not a byte or a Unicode character in a string"),
        (r'"ab\xZZ"', 10, "escape '\\x' needs one or two hex digits in a string"),
        (r'"\777"', 8, "octal escape '\\777' is not a byte or a Unicode character in a string"),
        (r'"a" "\q"', 12, "unknown escape '\\q' in a string"),
        (r'"caf\351"', 7, "string is not valid UTF-8 text (at byte 3: e9)"),
    ],
)
def test_bad_strings_are_refused_where_they_are(literal: str, col: int, message: str) -> None:
    with pytest.raises(SpecSyntaxError) as e:
        load_net_text(f"name: {literal}", "t.prototxt", PROTOTXT)
    assert (e.value.msg, str(e.value.loc)) == (message, f"t.prototxt:1:{col}")


def test_unknown_field_hints_at_the_closest_name_and_the_right_block() -> None:
    with pytest.raises(SpecFieldError) as e:
        load_net_text("layer { convolution_param { num_ouput: 3 } }", "t.prototxt", PROTOTXT)
    assert e.value.hint == "did you mean 'num_output'?"
    with pytest.raises(SpecFieldError) as e:
        load_net_text('layer { name: "c" type: "Convolution" kernel_size: 3 }', "t.prototxt", PROTOTXT)
    assert e.value.hint == "'kernel_size' belongs inside convolution_param { ... }"
