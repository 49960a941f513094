"""The contract of every layer type: its examples check, its shape rule agrees with what the lowered
module computes, and its gradient is right (checked against finite differences in float64)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import netspec
from netspec.layers import all_types
from netspec.layers.base import Example, LayerDef
from tests.layer_harness import load_layer, make_input, run

# Besides the layers fed from outside (`feeds`, covered by the data tests) and the one whose code netspec
# never sees (`opaque`): what writes files (HDF5Output, tested in test_data_layers).
NOT_RUN = {"HDF5Output"}

CASES = [(d, i, ex) for d in all_types().values() for i, ex in enumerate(d.examples)]


def _id(case: tuple[LayerDef, int, Example]) -> str:
    return f"{case[0].type}-{case[1]}"


def test_every_runnable_layer_type_has_examples() -> None:
    missing = [t for t, d in all_types().items() if not (d.examples or d.feeds or d.opaque or t in NOT_RUN)]
    assert missing == []


def test_caffe_layer_types_are_all_registered() -> None:
    caffe = {
        "Input",
        "DummyData",
        "Data",
        "ImageData",
        "HDF5Data",
        "MemoryData",
        "HDF5Output",
        "WindowData",
        "Convolution",
        "Deconvolution",
        "Pooling",
        "SPP",
        "Crop",
        "Im2col",
        "LRN",
        "ReLU",
        "PReLU",
        "ELU",
        "Sigmoid",
        "TanH",
        "AbsVal",
        "BNLL",
        "Power",
        "Exp",
        "Log",
        "Threshold",
        "Clip",
        "Swish",
        "Dropout",
        "BatchNorm",
        "Scale",
        "Bias",
        "MVN",
        "InnerProduct",
        "Embed",
        "Concat",
        "Slice",
        "Split",
        "Eltwise",
        "Flatten",
        "Reshape",
        "Tile",
        "Reduction",
        "ArgMax",
        "Softmax",
        "Silence",
        "Filter",
        "BatchReindex",
        "Parameter",
        "SoftmaxWithLoss",
        "EuclideanLoss",
        "SigmoidCrossEntropyLoss",
        "HingeLoss",
        "ContrastiveLoss",
        "MultinomialLogisticLoss",
        "InfogainLoss",
        "Accuracy",
        "RNN",
        "LSTM",
        "LSTMUnit",
        "Python",
    }
    additions = {"LayerNorm", "GELU", "Maxout", "L1Loss", "CrossEntropyLoss", "Dataset"}
    assert caffe | additions <= set(all_types())
    # any other type is one of netspec's additions, marked as such
    assert {t for t, d in all_types().items() if d.origin == "netspec"} == set(all_types()) - caffe


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_inferred_shapes_are_the_computed_shapes(case: tuple[LayerDef, int, Example]) -> None:
    d, _, ex = case
    net = load_layer(d.type, ex.fields, ex.inputs, ex.tops, ex.phase)
    _, _, blobs = run(net, ex.inputs)
    info = net.layer("under_test")
    for top, shape in zip(info.node.tops, info.top_shapes, strict=True):
        got = tuple(blobs[top].shape)
        if d.data_dependent:  # the inferred size of axis 0 is an upper bound
            assert got[1:] == shape[1:] and got[0] <= shape[0], top
        else:
            assert got == shape, top


@pytest.mark.parametrize("case", [c for c in CASES if c[2].gradcheck], ids=_id)
def test_gradients_match_finite_differences(case: tuple[LayerDef, int, Example]) -> None:
    d, _, ex = case
    net = load_layer(d.type, ex.fields, ex.inputs, ex.tops, ex.phase)
    module = netspec.compile(net).double()
    float_inputs = {f"x{i}": make_input(s, torch.float64) for i, s in enumerate(ex.inputs)}
    differentiable = [
        k for k, s in zip(float_inputs, ex.inputs, strict=True) if s.kind in ("float", "positive", "prob")
    ]
    params = {k: p.detach().clone() for k, p in module.blob_params.items() if p.requires_grad}
    for p in params.values():
        p.normal_(0, 0.5) if p.dim() > 0 else None
    names = differentiable + list(params)
    if not names:
        pytest.skip("nothing differentiable")
    tops = net.layer("under_test").node.tops

    def f(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = dict(float_inputs)
        state = {}
        for name, value in zip(names, values, strict=True):
            if name in params:
                state[f"blob_params.{name}"] = value
            else:
                feeds[name] = value
        out = torch.func.functional_call(module, state, (), feeds, strict=False)
        return tuple(out[t] for t in tops if out[t].is_floating_point())

    start = [(float_inputs[n] if n in float_inputs else params[n]).clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(f, start, eps=1e-6, atol=1e-5, rtol=1e-4)


# String literals outside netspec/layers/ that equal a type name but are no comparison with one: the V1
# upgrade table maps Caffe's old enum to type names (a format table), and netspec.params builds message
# names from the suffix "Parameter".
NAMES_ALLOWED = {"netspec/spec/upgrade.py": None, "netspec/params.py": {"Parameter"}}


def test_no_module_outside_layers_names_a_layer_type() -> None:
    # facts about a layer type live on its LayerDef; the rest of netspec asks the LayerDef
    root = Path(netspec.__file__).parent
    names = set(all_types())
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel.startswith(("netspec/layers/", "netspec/_proto/")):
            continue
        allowed = NAMES_ALLOWED.get(rel, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and node.value in names
                and allowed is not None
                and node.value not in allowed
            ):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []
