"""`netspec convert` turns prototxt into YAML and back without losing anything."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspec._proto import netspec_pb2 as pb
from netspec.netfile import load_net_text, read_net, to_yaml
from netspec.spec.emit import to_prototxt
from netspec.spec.load import PROTOTXT, YAML
from tests.conftest import CAFFE, MODELS
from tests.test_prototxt import layers, names

NETS = sorted(
    glob.glob(str(CAFFE / "layers" / "*.prototxt"))
    + glob.glob(str(CAFFE / "nets" / "*.prototxt"))
    + glob.glob(str(MODELS / "*"))
)


@pytest.mark.parametrize("path", NETS, ids=lambda p: Path(p).name)
def test_round_trip_through_the_other_format_gives_an_equal_message(path: str) -> None:
    original = read_net(path).message
    if path.endswith(".prototxt"):
        back = load_net_text(to_yaml(original), "x.yaml", YAML).message
    else:
        back = load_net_text(to_prototxt(original), "x.prototxt", PROTOTXT).message
    assert back == original


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(layers(), max_size=4), names)
def test_any_net_survives_yaml(layer_list: list[pb.LayerParameter], name: str) -> None:
    net = pb.NetParameter(name=name)
    net.layer.extend(layer_list)
    assert load_net_text(to_yaml(net), "x.yaml", YAML).message == net


def test_yaml_output_is_readable() -> None:
    text = to_yaml(read_net(str(MODELS / "lenet.prototxt")).message)
    assert "- name: conv1\n  type: Convolution\n  bottom: data\n" in text
    assert "weight_filler: xavier" in text
    assert "input_param: {shape: [64, 1, 28, 28]}" in text
    assert "include: {phase: TEST}" in text
    assert "param:\n  - {lr_mult: 1}\n  - {lr_mult: 2}" in text
    assert "top: conv1" not in text  # implied by the name


def test_cli_convert_and_upgrade(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from netspec.cli import main

    v1 = tmp_path / "v1.prototxt"
    v1.write_text(
        'name: "old"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
        'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2 '
        "weight_decay: 1 weight_decay: 0 convolution_param { num_output: 4 kernel_size: 3 } }\n"
        'layers { name: "pool" type: POOLING bottom: "conv" top: "pool" '
        "pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }\n"
    )
    runner = CliRunner()
    out = tmp_path / "v1.yaml"
    assert runner.invoke(main, ["convert", str(v1), str(out)]).exit_code == 0
    assert read_net(str(out)).message == read_net(str(v1)).message
    upgraded = tmp_path / "new.prototxt"
    result = runner.invoke(main, ["convert", "--upgrade", str(v1), str(upgraded)])
    assert result.exit_code == 0, result.output
    net = text_format.Parse(upgraded.read_text(), pb.NetParameter())
    assert [layer.type for layer in net.layer] == ["Input", "Convolution", "Pooling"]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert net.layer[2].pooling_param.round_mode == pb.PoolingParameter.FLOOR
    assert not net.layers and not net.input


def test_nesting_at_the_limit_checks_and_converts_and_one_more_level_is_refused(tmp_path: Path) -> None:
    """The readers' nesting limit keeps every recursive walk (building, upgrading, both writers,
    protobuf's printer) well inside Python's recursion limit, even under the test runner's stack."""
    from click.testing import CliRunner

    from netspec.cli import main
    from netspec.spec.tree import MAX_DEPTH

    layer = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }\n'
    pairs = MAX_DEPTH // 2  # solver { net_param { ... } } is two levels
    deep = tmp_path / "deep.prototxt"
    deep.write_text(layer + "solver { net_param { " * pairs + 'name: "x"' + " } }" * pairs + "\n")
    runner = CliRunner()
    for args in (
        ["check", str(deep)],
        ["convert", str(deep), str(tmp_path / "deep.yaml")],
        ["check", str(tmp_path / "deep.yaml")],
        ["convert", "--upgrade", str(tmp_path / "deep.yaml"), str(tmp_path / "back.prototxt")],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    assert read_net(str(tmp_path / "back.prototxt")).message == read_net(str(deep)).message
    deeper = tmp_path / "deeper.prototxt"
    deeper.write_text(layer + "solver { net_param { " * pairs + "solver {}" + " } }" * pairs + "\n")
    for args in (["check", str(deeper)], ["convert", str(deeper), str(tmp_path / "x.yaml")]):
        result = runner.invoke(main, args)
        brace = len("solver { net_param { ") * pairs + len("solver {")  # the column of the 101st '{'
        assert (result.exit_code, result.output) == (
            1,
            f"{deeper}:2:{brace}: blocks nest more than "
            f"{MAX_DEPTH} levels deep here\n  hint: specs nest a few "
            "levels; is the file generated or damaged?\n",
        )
