"""Every ready spec in models/ checks in both phases, compiles, and runs forward and backward."""

from __future__ import annotations

import pytest
import torch

import netspec
from netspec.netfile import read_net
from tests.conftest import MODELS

SPECS = sorted(p.name for p in MODELS.iterdir())


def feeds(net: netspec.Net) -> dict[str, torch.Tensor]:
    """Random inputs of the spec's shapes; labels 0 or 1, valid for every classifier here."""
    return {
        blob: torch.randint(0, 2, shape).float() if blob == "label" else torch.rand(shape)
        for blob, shape in net.inputs.items()
    }


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_model_compiles_and_runs(name: str, phase: str) -> None:
    net = netspec.load(str(MODELS / name), phase)
    assert not [w for w in net.warnings if "warning" in w.msg and "units start equal" in w.msg]
    module = netspec.compile(net)
    out = module(**feeds(net))
    loss = sum(
        out[t] * w for info in net.layers for t, w in zip(info.node.tops, info.node.loss_weights, strict=True) if w
    )
    if isinstance(loss, torch.Tensor):
        assert torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_lenet_prototxt_and_yaml_are_the_same_net() -> None:
    assert read_net(str(MODELS / "lenet.prototxt")).message == read_net(str(MODELS / "lenet.yaml")).message
    assert netspec.load(str(MODELS / "lenet.yaml")).num_params == 431_080


@pytest.mark.parametrize(
    ("name", "params"), [("keras_cnn.yaml", 596_042), ("mlp_text.yaml", 1_146_132), ("convolution.prototxt", 78)]
)
def test_parameter_counts(name: str, params: int) -> None:
    assert netspec.load(str(MODELS / name)).num_params == params


def test_mlp_and_keras_cnn_have_the_course_shapes() -> None:
    mlp = netspec.load(str(MODELS / "mlp_text.yaml"))
    assert [mlp.shapes[b][1] for b in ("data", "fc1", "fc2", "fc3")] == [300, 2048, 256, 20]
    cnn = netspec.load(str(MODELS / "keras_cnn.yaml"))
    assert [cnn.shapes[b][1:] for b in ("data", "conv1", "conv2", "pool1", "flatten", "dense1", "dense2")] == [
        (1, 28, 28),
        (16, 26, 26),
        (32, 24, 24),
        (32, 12, 12),
        (4608,),
        (128,),
        (10,),
    ]


def test_xor_net_computes_xor_with_its_fixed_weights() -> None:
    module = netspec.compile(str(MODELS / "xor.yaml"))
    out = module(data=torch.tensor([[0.0, 0], [0, 1], [1, 0], [1, 1]]))["xor"]
    assert out.round().flatten().tolist() == [0, 1, 1, 0]
    assert (out - out.round()).abs().max() < 1e-3
