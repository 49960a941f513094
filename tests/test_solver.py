"""The solver runner: Caffe's update rules and learning-rate policies, checked against real Caffe;
netspec's optimisers against torch.optim; settings errors."""

from __future__ import annotations

import glob
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SolverError, SpecFieldError
from netspec.train.schedule import Schedule
from netspec.train.solver import Solver
from tests.conftest import CAFFE

SOLVER_CASES = sorted(glob.glob(str(CAFFE / "solvers" / "*.prototxt")))


@pytest.mark.parametrize("path", SOLVER_CASES, ids=lambda p: Path(p).stem)
def test_eight_steps_equal_caffes(path: str) -> None:
    ref = np.load(path[: -len(".prototxt")] + ".npz")
    solver = Solver(path, quiet=True)
    params = solver.net.caffe_params()
    with torch.no_grad():
        for key in ref.files:
            if key.startswith("param:"):
                _, layer, i = key.split(":")
                params[layer][int(i)].copy_(torch.from_numpy(ref[key]))
    for step in range(1, 9):
        solver.step({"data": ref[f"step{step}:input:data"], "label": ref[f"step{step}:input:label"]})
        for key in ref.files:
            if key.startswith(f"step{step}:param:"):
                _, _, layer, i = key.split(":")
                got, want = params[layer][int(i)].detach().numpy(), ref[key]
                assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, np.abs(want).max()), (step, key)
    assert solver.iter == 8


def rate(policy: str, it: int, **fields: float) -> float:
    p = pb.SolverParameter(base_lr=0.01, lr_policy=policy, **fields)
    schedule = Schedule(p, max_iter=int(fields.get("max_iter", 100)))
    value = 0.0
    for i in range(it + 1):  # multistep advances one step per call, as Caffe's does
        value = schedule.rate(i)
    return value


def test_lr_policies_follow_caffes_formulas() -> None:
    assert f"{rate('inv', 100, gamma=1e-4, power=0.75):.6g}" == "0.00992565"  # Caffe's MNIST example log
    assert f"{rate('inv', 9999, gamma=1e-4, power=0.75):.5g}" == "0.0059463"
    assert rate("fixed", 50) == pytest.approx(0.01)
    assert rate("step", 25, gamma=0.1, stepsize=10) == pytest.approx(0.01 * 0.1**2)
    assert rate("exp", 3, gamma=0.5) == pytest.approx(0.01 * 0.125)
    assert rate("multistep", 7, gamma=0.5, stepvalue=[2, 5, 9]) == pytest.approx(0.01 * 0.25)
    assert rate("poly", 25, power=2, max_iter=100) == pytest.approx(0.01 * 0.75**2)
    assert rate("sigmoid", 10, gamma=-0.5, stepsize=5) == pytest.approx(0.01 / (1 + math.exp(2.5)))
    assert rate("cosine", 50, max_iter=100, min_lr=0.001) == pytest.approx(0.001 + 0.009 * 0.5)
    assert rate("fixed", 5, warmup_iter=10, warmup_start=0.1) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))


NET = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 5
        weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 4
        weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize(
    ("solver_type", "make"),
    [
        ("AdamW", lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)),
        ("Adamax", lambda ps: torch.optim.Adamax(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0)),
        ("NAdam", lambda ps: torch.optim.NAdam(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0)),
    ],
)
def test_modern_solvers_match_torch_optim(
    write_spec: Callable[..., str], solver_type: str, make: Callable[..., torch.optim.Optimizer]
) -> None:
    decay = 0.1 if solver_type == "AdamW" else 0
    spec = write_spec(
        f'type: "{solver_type}" base_lr: 0.01 momentum: 0.9 momentum2: 0.99 delta: 1e-8 '
        f'weight_decay: {decay} lr_policy: "fixed" max_iter: 10 random_seed: 3\nnet_param {{ {NET} }}',
        "solver.prototxt",
    )
    solver = Solver(spec, quiet=True)
    reference = {k: [t.detach().clone().requires_grad_(True) for t in v] for k, v in solver.net.caffe_params().items()}
    optimizer = make([t for v in reference.values() for t in v])
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen).float()
        solver.step({"data": x, "label": y})
        optimizer.zero_grad()
        h = torch.relu(x @ reference["ip1"][0].T + reference["ip1"][1])
        loss = torch.nn.functional.cross_entropy(h @ reference["ip2"][0].T + reference["ip2"][1], y.long())
        loss.backward()
        optimizer.step()
    for layer, blobs in solver.net.caffe_params().items():
        for got, want in zip(blobs, reference[layer], strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_fused_updates_equal_caffes_rule_blob_by_blob(write_spec: Callable[..., str], solver_type: str) -> None:
    """SGD with momentum and Adam run on torch's fused kernels; with iter_size, clipping, and blobs of
    several multipliers they must still give what the rule applied blob by blob gives."""
    net = NET.replace(
        'top: "ip2" inner_product_param', 'top: "ip2" param { lr_mult: 2 decay_mult: 0 } inner_product_param'
    )
    spec = write_spec(
        f'type: "{solver_type}" base_lr: 0.05 momentum: 0.9 momentum2: 0.99 delta: 0.1 weight_decay: 0.01 '
        f'lr_policy: "inv" gamma: 0.1 power: 0.75 iter_size: 2 clip_gradients: 0.5 max_iter: 10 random_seed: 3\n'
        f"net_param {{ {net} }}",
        "solver.prototxt",
    )
    fused, by_blob = Solver(spec, quiet=True), Solver(spec, quiet=True)
    assert fused.updater._groups is not None and len(fused.updater._groups) == 2
    by_blob.updater._groups = None
    for step in range(4):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen).float()
        for solver in (fused, by_blob):
            solver.step({"data": x, "label": y})
    for layer, blobs in fused.net.caffe_params().items():
        for got, want in zip(blobs, by_blob.net.caffe_params()[layer], strict=True):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), layer
    for a, b in zip(fused.updater.blobs, by_blob.updater.blobs, strict=True):
        for got, want in zip(a.history, b.history, strict=True):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), a.key


def test_decoupled_weight_decay_differs_from_l2_for_adam(write_spec: Callable[..., str]) -> None:
    results = []
    for decoupled in ("false", "true"):
        spec = write_spec(
            f'type: "Adam" base_lr: 0.01 momentum: 0.9 weight_decay: 0.5 lr_policy: "fixed" '
            f"max_iter: 10 random_seed: 3 decoupled_weight_decay: {decoupled}\nnet_param {{ {NET} }}",
            f"s_{decoupled}.prototxt",
        )
        solver = Solver(spec, quiet=True)
        for _ in range(3):
            solver.step({"data": torch.ones(8, 6), "label": torch.zeros(8)})
        results.append(solver.net.caffe_params()["ip1"][0].detach().clone())
    assert not torch.allclose(results[0], results[1])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            'type: "Adamm"',
            "unknown solver type 'Adamm'; netspec has SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, "
            "AdamW, Adamax, NAdam",
        ),
        (
            'lr_policy: "stp"',
            "unknown lr_policy 'stp'; netspec has fixed, step, exp, inv, multistep, poly, sigmoid, cosine",
        ),
        ('lr_policy: "step"', "lr_policy step needs a positive stepsize"),
        ('type: "AdaGrad" momentum: 0.9', "AdaGrad takes no momentum (Caffe requires momentum 0 for it)"),
        ('regularization_type: "L3"', "regularization_type must be L1 or L2, got 'L3'"),
        ("max_epoch: 3", "give max_iter or max_epoch, not both"),
    ],
)
def test_solver_setting_errors(write_spec: Callable[..., str], settings: str, message: str) -> None:
    spec = write_spec(f"base_lr: 0.1 max_iter: 10\n{settings}\nnet_param {{ {NET} }}", "solver.prototxt")
    with pytest.raises(SolverError) as e:
        Solver(spec, quiet=True)
    assert e.value.msg == message
    assert e.value.loc is not None and e.value.loc.file == spec


def test_test_iter_needs_test_interval(write_spec: Callable[..., str]) -> None:
    spec = write_spec(f"base_lr: 0.1 max_iter: 10 test_iter: 5\nnet_param {{ {NET} }}", "solver.prototxt")
    with pytest.raises(SolverError) as e:
        Solver(spec, quiet=True)
    assert e.value.msg == "test nets are given, so test_interval must be positive"


def test_missing_base_lr_and_length(write_spec: Callable[..., str]) -> None:
    with pytest.raises(SolverError, match="base_lr is not set"):
        Solver(write_spec(f"max_iter: 10\nnet_param {{ {NET} }}", "a.prototxt"), quiet=True)
    with pytest.raises(SolverError, match="give the length of training"):
        Solver(write_spec(f"base_lr: 0.1\nnet_param {{ {NET} }}", "b.prototxt"), quiet=True)


def test_net_file_named_by_a_solver(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 max_iter: 2 solver_type: NESTEROV momentum: 0.9'
    )
    solver = Solver(str(tmp_path / "solver.prototxt"), quiet=True)
    assert solver.param.type == "Nesterov"
    (tmp_path / "bad.prototxt").write_text('net: "nope.prototxt" base_lr: 0.1 max_iter: 2')
    with pytest.raises(SolverError) as e:
        Solver(str(tmp_path / "bad.prototxt"), quiet=True)
    assert e.value.msg == "net 'nope.prototxt' does not exist" and e.value.loc is not None


def test_overrides(write_spec: Callable[..., str]) -> None:
    spec = write_spec(f"base_lr: 0.1 max_iter: 10\nnet_param {{ {NET} }}", "solver.prototxt")
    solver = Solver(spec, overrides=("solver.base_lr=0.5", "ip1.inner_product_param.num_output=7"), quiet=True)
    assert solver.param.base_lr == 0.5
    assert solver.net.caffe_params()["ip1"][0].shape == (7, 6)
    with pytest.raises(SpecFieldError) as e:
        Solver(spec, overrides=("ip3.inner_product_param.num_output=7",), quiet=True)
    assert e.value.msg == "--set names layer 'ip3', which the net does not have"
    assert e.value.hint == "did you mean 'ip2'?"
    with pytest.raises(SpecFieldError) as e:
        Solver(spec, overrides=("solver.base_rate=1",), quiet=True)
    assert e.value.msg == "unknown field 'base_rate' in SolverParameter"
