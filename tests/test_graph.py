"""The static graph: phase/stage/level filtering, in-place layers, inputs and outputs, parameter sharing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import netspec
from netspec.errors import GraphError, ParamError, ShapeError

TRAIN_TEST = """
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" include { phase: TRAIN } }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "acc5" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc5" accuracy_param { top_k: 2 }
        include { phase: TEST stage: "full" } }
layer { name: "deep" type: "Softmax" bottom: "fc" top: "deep" include { min_level: 2 } }
layer { name: "not_full" type: "Softmax" bottom: "fc" top: "nf" exclude { stage: "full" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def names(net: netspec.Net) -> list[str]:
    return [info.node.name for info in net.layers]


def test_phase_stage_and_level_rules(write_spec: Callable[..., str]) -> None:
    path = write_spec(TRAIN_TEST)
    assert names(netspec.load(path, "TRAIN")) == ["data", "fc", "drop", "not_full", "loss"]
    assert names(netspec.load(path, "TEST")) == ["data", "fc", "acc", "not_full", "loss"]
    assert names(netspec.load(path, "TEST", stages=["full"])) == ["data", "fc", "acc", "acc5", "loss"]
    assert names(netspec.load(path, "TEST", level=2)) == ["data", "fc", "acc", "deep", "not_full", "loss"]


def test_default_phase_is_the_spec_state_else_test(write_spec: Callable[..., str]) -> None:
    assert netspec.load(write_spec(TRAIN_TEST)).phase == "TEST"
    assert netspec.load(write_spec("state { phase: TRAIN }\n" + TRAIN_TEST)).phase == "TRAIN"


def test_outputs_are_unconsumed_blobs_sorted_and_inputs_are_fed_blobs(write_spec: Callable[..., str]) -> None:
    net = netspec.load(write_spec(TRAIN_TEST), "TEST")
    assert net.outputs == ["acc", "loss", "nf"]
    assert net.inputs == {"data": (4, 6), "label": (4,)}


def test_in_place_blobs_are_rewritten_and_blobs_feed_several_layers(write_spec: Callable[..., str]) -> None:
    net = netspec.load(write_spec(TRAIN_TEST), "TRAIN")
    module = netspec.compile(net)
    x, y = torch.randn(4, 6), torch.tensor([0.0, 1, 2, 0])
    blobs = module.blobs(data=x, label=y)
    assert set(blobs) == {"data", "label", "fc", "nf", "loss"}
    out = module(data=x, label=y)
    assert set(out) == {"loss", "nf"}


def test_loss_weights_default_to_one_for_the_first_top_of_a_loss(write_spec: Callable[..., str]) -> None:
    net = netspec.load(
        write_spec(
            TRAIN_TEST + 'layer { name: "l2" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "l2" top: "p2" }'
        )
    )
    weights = {info.node.name: info.node.loss_weights for info in net.layers}
    assert weights["loss"] == (1.0,) and weights["l2"] == (1.0, 0.0) and weights["fc"] == (0.0,)


def test_a_loss_without_tops_gets_one(write_spec: Callable[..., str]) -> None:
    net = netspec.load(write_spec(TRAIN_TEST.replace(' top: "loss"', "")))
    assert "loss" in net.outputs and net.shapes["loss"] == ()


def test_shared_parameters(write_spec: Callable[..., str]) -> None:
    spec = """
layer { name: "data" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 5 } } }
layer { name: "fa" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "fb" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 3 } }
"""
    net = netspec.load(write_spec(spec))
    assert net.num_params == 18
    assert net.layer("fb").blobs[0].owner == ("fa", 0)
    module = netspec.compile(net)
    params = module.caffe_params()
    assert params["fa"][0] is params["fb"][0]
    x = torch.randn(2, 5)
    out = module(a=x, b=x)
    torch.testing.assert_close(out["fa"], out["fb"])


def test_permissive_sharing_reshapes(write_spec: Callable[..., str]) -> None:
    spec = """
layer { name: "data" type: "Input" top: "a" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "p" type: "Parameter" top: "w" param { name: "shared" } parameter_param { shape { dim: 12 } } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "fc" param { name: "shared" share_mode: PERMISSIVE }
        inner_product_param { num_output: 2 bias_term: false } }
"""
    net = netspec.load(write_spec(spec))
    module = netspec.compile(net)
    assert module.caffe_params()["fc"][0].shape == (2, 6)
    assert module.caffe_params()["fc"][0].data_ptr() == module.caffe_params()["p"][0].data_ptr()


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (
            'layer { name: "fb" type: "InnerProduct" bottom: "data" top: "fb" param { name: "w" } '
            "inner_product_param { num_output: 4 } }",
            ShapeError,
            "shared param 'w' has shape (4, 6) here but (3, 6) in layer 'fa'",
        ),
        (
            'layer { name: "fb" type: "InnerProduct" bottom: "data" top: "fb" param { name: "w" lr_mult: 2 } '
            "inner_product_param { num_output: 3 } }",
            ParamError,
            "shared param 'w' has lr_mult 2.0 here but 1.0 in layer 'fa'",
        ),
        (
            'layer { name: "fa" type: "InnerProduct" bottom: "data" top: "f2" inner_product_param { num_output: 3 } }',
            ParamError,
            "another layer with parameters is also named 'fa' (line 2); weights are matched to layers by name",
        ),
        (
            'layer { name: "fa" type: "ReLU" bottom: "fa" top: "fa" }',  # Caffe would load fa's weights into the ReLU
            ParamError,
            "another layer with parameters is also named 'fa' (line 2); weights are matched to layers by name",
        ),
        (
            'layer { name: "data" type: "InnerProduct" bottom: "data" top: "f2" inner_product_param { num_output: 3 } }',
            ParamError,
            "another layer is also named 'data' (line 1), and this one has parameters; weights are matched to "
            "layers by name",
        ),
        (
            'layer { name: "x" type: "ReLU" bottom: "data" top: "fa_out" include { phase: TEST } exclude { phase: TRAIN } }',
            GraphError,
            "a layer may have include rules or exclude rules, not both",
        ),
        (
            'layer { name: "x" type: "Concat" bottom: "data" bottom: "fa" top: "fa" }',
            GraphError,
            "top 'fa' is bottom 1 of this layer but top 0; in-place tops must sit at the same position as their bottom",
        ),
        ('layer { type: "ReLU" bottom: "data" top: "r" }', GraphError, "the layer has no name"),
    ],
)
def test_graph_errors(write_spec: Callable[..., str], extra: str, error: type, message: str) -> None:
    base = (
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }\n'
        'layer { name: "fa" type: "InnerProduct" bottom: "data" top: "fa" param { name: "w" } '
        "inner_product_param { num_output: 3 } }\n"
    )
    with pytest.raises(error) as e:
        netspec.load(write_spec(base + extra))
    assert e.value.msg == message
    assert e.value.loc is not None and e.value.loc.line == 3


def test_duplicate_names_of_parameter_free_layers_are_allowed(write_spec: Callable[..., str]) -> None:
    spec = (
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }\n'
        'layer { name: "act" type: "ReLU" bottom: "data" top: "a" }\n'
        'layer { name: "act" type: "TanH" bottom: "data" top: "b" }\n'
    )
    assert names(netspec.load(write_spec(spec))) == ["data", "act", "act"]


def test_in_place_layers_keep_their_shape(write_spec: Callable[..., str]) -> None:
    spec = (
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }\n'
        'layer { name: "s" type: "Softmax" bottom: "data" top: "data" }\n'
        'layer { name: "r" type: "Reduction" bottom: "data" top: "data" reduction_param { axis: 1 } }\n'
    )
    with pytest.raises(ShapeError) as e:
        netspec.load(write_spec(spec))
    assert e.value.msg == "in place, top 'data' must keep its shape (2, 6), but Reduction makes it (2,)"
