"""YAML specs: the same schema as prototxt, with conveniences, and errors on the right line."""

from __future__ import annotations

import pytest

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SpecFieldError, SpecSyntaxError
from netspec.netfile import load_net_text
from netspec.spec.load import PROTOTXT, YAML


def yaml_net(text: str) -> pb.NetParameter:
    return load_net_text(text, "n.yaml", YAML).message  # type: ignore[return-value]


def proto_net(text: str) -> pb.NetParameter:
    return load_net_text(text, "n.prototxt", PROTOTXT).message  # type: ignore[return-value]


def test_yaml_and_prototxt_give_the_same_message() -> None:
    y = yaml_net("""
name: tiny
layer:
  - name: data
    type: Input
    top: data
    input_param: {shape: {dim: [2, 3]}}
  - name: fc
    type: InnerProduct
    bottom: data
    top: fc
    param: [{lr_mult: 1}, {lr_mult: 2, decay_mult: 0}]
    inner_product_param: {num_output: 4, weight_filler: {type: xavier, variance_norm: AVERAGE}}
    include: {phase: TRAIN, stage: [a, b]}
""")
    p = proto_net("""
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "xavier" variance_norm: AVERAGE } }
        include { phase: TRAIN stage: "a" stage: "b" } }
""")
    assert y == p


def test_top_defaults_to_the_name_and_bottom_to_the_previous_first_top() -> None:
    net = yaml_net("""
layer:
  - {name: data, type: Input, top: [data, label], input_param: {shape: [[2, 3], [2]]}}
  - {name: fc, type: InnerProduct, inner_product_param: {num_output: 4}}
  - {name: relu, type: ReLU}
  - {name: silence, type: Silence, bottom: label}
  - {name: prob, type: Softmax}
  - {name: loss, type: SoftmaxWithLoss, bottom: [fc, label]}
""")
    wiring = [(list(layer.bottom), list(layer.top)) for layer in net.layer]
    assert wiring == [
        ([], ["data", "label"]),
        (["data"], ["fc"]),
        (["fc"], ["relu"]),
        (["label"], []),
        (["relu"], ["prob"]),
        (["fc", "label"], ["loss"]),
    ]


def test_explicit_empty_lists_keep_the_defaults_out() -> None:
    net = yaml_net(
        "layer:\n  - {name: a, type: Input, input_param: {shape: [1]}}\n"
        "  - {name: b, type: SoftmaxWithLoss, bottom: [a, a], top: []}\n"
    )
    assert list(net.layer[1].top) == []


def test_scalars_stand_for_lists_and_shapes_and_fillers_have_short_forms() -> None:
    net = yaml_net("""
layer:
  - name: c
    type: Convolution
    bottom: x
    convolution_param: {num_output: 2, kernel_size: 3, pad: 1, weight_filler: msra}
  - {name: d, type: DummyData, dummy_data_param: {shape: [[1, 2], [3]]}}
""")
    c = net.layer[0].convolution_param
    assert list(c.kernel_size) == [3] and list(c.pad) == [1]
    assert c.weight_filler == pb.FillerParameter(type="msra")
    assert [list(s.dim) for s in net.layer[1].dummy_data_param.shape] == [[1, 2], [3]]


def test_numbers_keep_their_exact_text_and_words_stay_words() -> None:
    net = yaml_net("layer:\n  - {name: yes, type: ReLU, bottom: on, loss_weight: [1e-4, 0x10, .5]}\n")
    layer = net.layer[0]
    assert layer.name == "yes" and list(layer.bottom) == ["on"]
    assert list(layer.loss_weight) == pytest.approx([1e-4, 16.0, 0.5])


def test_quotes_are_only_yaml_syntax() -> None:
    net = yaml_net('layer:\n  - {name: "p", type: "Pooling", bottom: x, pooling_param: {pool: "AVE", pad: "1"}}\n')
    assert net.layer[0].pooling_param.pool == pb.PoolingParameter.AVE
    assert net.layer[0].pooling_param.pad == 1


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("name: a\nname: b\n", 2, "duplicate key 'name' (first given on line 1)"),
        ("layer:\n  - name: a\n    type: ReLU\n    type: TanH\n", 4, "duplicate key 'type' (first given on line 3)"),
        ("layer:\n  - name: a\n    typo: ReLU\n", 3, "unknown field 'typo' in a layer"),
        (
            "layer:\n  - name: a\n    convolution_param:\n      num_output: many\n",
            4,
            "field 'num_output' takes a non-negative integer, got 'many'",
        ),
        (
            "layer:\n  - name: a\n   type: ReLU\n",
            3,
            "YAML syntax: while parsing a block collection did not find expected '-' indicator",
        ),
        ("layer: [a, b]\n", 1, "field 'layer' takes a LayerParameter message ({ ... }), got 'a'"),
        ("- a\n- b\n", 1, "the top level of a YAML spec must be a mapping (name: ..., layer: [...])"),
        ("layer:\n  - <<: {name: x}\n", 2, "YAML merge keys ('<<') are not supported in specs; write the fields out"),
        ("base: &b {name: x}\nlayer:\n  - <<: *b\n", 1, "YAML anchors (&b) are not allowed; specs are plain data"),
        ("name: x\nlayer:\n  - *b\n", 3, "YAML aliases (*b) are not allowed; specs are plain data"),
        (
            "name: !!python/object/apply:os.system [ls]\n",
            1,
            "YAML tags (!!python/object/apply:os.system) are not allowed; specs are plain data",
        ),
        ("name: !!str x\n", 1, "YAML tags (!!str) are not allowed"),
        ("layer:\n  - ! {name: x}\n", 2, "YAML tags (!) are not allowed"),
        ("layer:\n  - {? [a]: b}\n", 2, "a mapping key must be a plain name"),
        ("name: a\n---\nname: b\n", 2, "a spec file holds one YAML document; this is a second"),
    ],
)
def test_errors_point_at_the_yaml_line(text: str, line: int, message: str) -> None:
    with pytest.raises((SpecSyntaxError, SpecFieldError)) as e:
        yaml_net(text)
    assert e.value.loc is not None and e.value.loc.line == line
    assert e.value.msg.startswith(message)


def test_solver_section_is_a_solver_parameter() -> None:
    net = yaml_net("solver: {type: Adam, base_lr: 0.001, lr_policy: fixed, early_stopping: {metric: accuracy}}\n")
    assert net.solver.type == "Adam"
    assert net.solver.early_stopping.metric == "accuracy"


@pytest.mark.parametrize("loader", ["SafeLoader", "CSafeLoader"])
@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('name: ok\nlayer: {name: "a\\ud800"}\n', "n.yaml:2:", "Unicode character"),
        ("name: ok\nlayer: {name: a\x01}\n", "n.yaml:2:16", "characters are not allowed (character U+0001)"),
    ],
)
def test_invalid_characters_are_refused_by_either_loader(
    loader: str, text: str, where: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from netspec.spec import yamltree

    if not hasattr(yaml, loader):
        pytest.skip("PyYAML is built without libyaml")
    monkeypatch.setattr(yamltree, "_Loader", getattr(yaml, loader))
    with pytest.raises(SpecSyntaxError) as e:
        yaml_net(text)
    assert str(e.value.loc).startswith(where)
    assert message in e.value.msg
