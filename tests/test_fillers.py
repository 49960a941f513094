"""Fillers compute what Caffe's compute: the same fans, bounds, deviations and exact kernels."""

from __future__ import annotations

import math

import pytest
import torch

from netspec._proto import netspec_pb2 as pb
from netspec.errors import ParamError
from netspec.fillers import fill
from netspec.fillerspec import check_filler, fans

F = pb.FillerParameter


def test_fans_are_caffes() -> None:
    assert fans((20, 1, 5, 5)) == (25, 500)  # conv: fan_in = C*k*k, fan_out = N*k*k
    assert fans((500, 800)) == (800, 500)  # InnerProduct (num_output, K)
    assert fans((7,)) == (1, 7)


def test_constant_and_uniform() -> None:
    assert torch.equal(fill(F(type="constant", value=0.25), (3, 2)), torch.full((3, 2), 0.25))
    u = fill(F(type="uniform", min=-2, max=3), (20000,))
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean().item() - 0.5) < 0.05


@pytest.mark.parametrize(("norm", "n"), [(F.FAN_IN, 25), (F.FAN_OUT, 500), (F.AVERAGE, 262.5)])
def test_xavier_is_uniform_with_bound_sqrt_3_over_n(norm: int, n: float) -> None:
    w = fill(F(type="xavier", variance_norm=norm), (20, 1, 5, 5))
    bound = math.sqrt(3 / n)
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


@pytest.mark.parametrize(("norm", "n"), [(F.FAN_IN, 800), (F.FAN_OUT, 400), (F.AVERAGE, 600)])
def test_msra_is_gaussian_with_std_sqrt_2_over_n(norm: int, n: float) -> None:
    w = fill(F(type="msra", variance_norm=norm), (400, 800))
    assert w.std().item() == pytest.approx(math.sqrt(2 / n), rel=0.02)
    assert abs(w.mean().item()) < 0.002


def test_gaussian_sparse_keeps_about_sparse_per_output() -> None:
    w = fill(F(type="gaussian", std=1.0, sparse=5), (100, 1000))
    kept = (w != 0).float().mean().item()  # probability sparse / shape[0]
    assert kept == pytest.approx(0.05, abs=0.005)


def test_positive_unitball_rows_sum_to_one() -> None:
    w = fill(F(type="positive_unitball"), (6, 3, 2))
    torch.testing.assert_close(w.reshape(6, -1).sum(1), torch.ones(6))
    assert (w >= 0).all()


def test_bilinear_is_caffes_upsampling_kernel() -> None:
    w = fill(F(type="bilinear"), (2, 1, 4, 4))
    row = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(w[0, 0], row[:, None] * row[None, :])
    torch.testing.assert_close(w[1, 0], w[0, 0])
    odd = fill(F(type="bilinear"), (1, 1, 3, 3))[0, 0]
    row3 = torch.tensor([0.5, 1.0, 0.5])
    torch.testing.assert_close(odd, row3[:, None] * row3[None, :])


def test_netspec_additions() -> None:
    q = fill(F(type="orthogonal"), (64, 128)).double()
    torch.testing.assert_close(q @ q.T, torch.eye(64, dtype=torch.float64), atol=1e-5, rtol=0)
    g = fill(F(type="glorot_normal"), (300, 500))
    assert g.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.02)
    k = fill(F(type="kaiming_normal"), (300, 500))
    assert k.std().item() == pytest.approx(math.sqrt(2) / math.sqrt(500), rel=0.02)
    tanh = fill(F(type="kaiming_uniform", nonlinearity="tanh"), (300, 500))
    assert tanh.abs().max().item() == pytest.approx(5 / 3 * math.sqrt(3 / 500), rel=0.01)
    gained = fill(F(type="glorot_uniform", gain=2.0), (300, 500))
    assert gained.abs().max().item() == pytest.approx(2 * math.sqrt(6 / 800), rel=0.01)


@pytest.mark.parametrize(
    ("filler", "shape", "message"),
    [
        (F(type="xaviar"), (2, 2), "unknown filler type 'xaviar'"),
        (F(type="uniform", sparse=3), (2, 2), "sparse applies only to the gaussian filler"),
        (
            F(type="bilinear"),
            (2, 2, 3, 4),
            "the bilinear filler needs a 4-axis blob with square kernels, got shape (2, 2, 3, 4)",
        ),
        (
            F(type="kaiming_normal", nonlinearity="swish"),
            (2, 2),
            "unknown nonlinearity 'swish' (known: linear, conv, sigmoid, tanh, relu, leaky_relu, selu, elu, gelu)",
        ),
        (
            F(type="positive_unitball"),
            (),
            "the positive_unitball filler needs a blob with at least one axis, got a "
            "0-axis blob (a shared PReLU slope, or Scale/Bias with num_axes 0)",
        ),
        (
            F(type="gaussian", sparse=1),
            (),
            "the sparse filler needs a blob with at least one axis, got a 0-axis blob "
            "(a shared PReLU slope, or Scale/Bias with num_axes 0)",
        ),
    ],
)
def test_filler_errors(filler: pb.FillerParameter, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ParamError) as e:
        check_filler(filler, shape)
    assert e.value.msg == message
