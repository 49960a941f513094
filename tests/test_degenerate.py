"""Degenerate specs found by fuzzing (issue 9): 0-axis and zero-size bottoms, zero and huge parameters,
constants that overflow float32, and nets too big to allocate. Each is refused with one exact message,
or accepted and computed without work or memory in proportion to its (huge) sizes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from click.testing import CliRunner

import netspec
from netspec.cli import main
from netspec.errors import NetspecError, ParamError, ResourceError, ShapeError
from netspec.layers.base import In
from netspec.shapes import memory_limit
from tests.layer_harness import load_layer

SCALAR = In(())


@pytest.mark.parametrize(
    ("type_name", "inputs", "message"),
    [
        ("MultinomialLogisticLoss", (SCALAR, In((4,))), "bottom 0 has shape (), but needs at least 1 axis (N, ...)"),
        ("EuclideanLoss", (In((4, 3)), SCALAR), "bottom 1 has shape (), but needs at least 1 axis (N, ...)"),
        ("HingeLoss", (SCALAR, SCALAR), "bottom 0 has shape (), but needs at least 1 axis (N, ...)"),
        ("SigmoidCrossEntropyLoss", (SCALAR, SCALAR), "bottom 0 has shape (), but needs at least 1 axis (N, ...)"),
        ("ContrastiveLoss", (SCALAR, SCALAR, SCALAR), "bottom 0 has shape (), but needs at least 1 axis (N, ...)"),
        ("ArgMax", (SCALAR,), "the bottom has shape (), but needs at least 1 axis (N, ...) when no axis is given"),
        (
            "Filter",
            (In((4, 3)), SCALAR),
            "bottom 1 has shape (), but needs at least 1 axis (N, ...): Filter keeps items along axis 0",
        ),
        (
            "BatchReindex",
            (SCALAR, In((3,))),
            "bottom 0 has shape (), but needs at least 1 axis (N, ...): items are gathered along axis 0",
        ),
        ("BatchNorm", (SCALAR,), "the bottom has shape (), but needs at least 1 axis (N, C, ...)"),
        ("Softmax", (SCALAR,), "axis 1 needs a bottom with axes, got a 0-axis (scalar) bottom"),
    ],
)
def test_scalar_bottoms_are_refused_by_name(type_name: str, inputs: tuple[In, ...], message: str) -> None:
    with pytest.raises(ShapeError) as e:
        load_layer(type_name, "", inputs, 1)
    assert (e.value.layer, e.value.msg) == ("under_test", message)


def test_a_zero_size_blob_is_refused_where_it_is_made() -> None:
    with pytest.raises(ShapeError) as e:
        load_layer("Convolution", "convolution_param { num_output: 2 kernel_size: 3 }", (In((2, 0, 5, 5)),), 1)
    assert (e.value.layer, e.value.msg) == ("in0", "top 'x0' would have shape (2, 0, 5, 5), which holds no values")


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (
            4294967295,
            (13, 11),
            "pyramid level 3 (8x8 bins) does not fit the 13x11 input: its windows 2x2 would need "
            "padding 2x3, which must be smaller",
        ),
        (
            3,
            (5, 5),
            "pyramid level 2 (4x4 bins) does not fit the 5x5 input: its windows 2x2 would need padding 2x2, "
            "which must be smaller",
        ),
    ],
)
def test_spp_levels_that_caffe_cannot_pool_are_refused(height: int, width: tuple[int, int], message: str) -> None:
    with pytest.raises(ShapeError) as e:
        load_layer("SPP", f"spp_param {{ pyramid_height: {height} }}", (In((2, 3, *width)),), 1)
    assert (e.value.msg, e.value.field) == (message, "pyramid_height")


def test_pooling_over_a_trillion_values_is_inferred_from_the_axes_alone() -> None:
    net = load_layer("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 }", (In((1, 1, 10**6, 10**6)),), 1)
    assert net.shapes["y0"] == (1, 1, 500_000, 500_000)
    with pytest.raises(ShapeError) as e:  # Caffe's divisor of the last window, found without listing them all
        load_layer("Pooling", "pooling_param { pool: AVE kernel_size: 2 stride: 3 }", (In((1, 1, 999_999, 7)),), 1)
    assert e.value.msg == (
        "with this kernel and stride the last average-pooling window would start past the "
        "input, where Caffe's divisor is undefined"
    )


def test_huge_nets_count_params_and_macs_exactly() -> None:
    net = load_layer("InnerProduct", "inner_product_param { num_output: 4294967295 }", (In((2**40, 2**20)),), 1)
    assert net.num_params == 2**20 * 4294967295 + 4294967295
    assert net.num_macs == 2**60 * 4294967295


@pytest.mark.parametrize(
    ("type_name", "fields", "message"),
    [
        ("Log", "log_param { base: 1 }", "base 1 has no logarithm (log_1 divides by ln 1 = 0)"),
        (
            "Exp",
            "exp_param { shift: 1e30 }",
            "base^shift = e^1e+30 does not fit float32 (largest 3.403e+38): every output would be inf or nan",
        ),
        (
            "Exp",
            "exp_param { base: 10 scale: 3e38 }",
            "ln(base) * scale = 6.90776e+38 does not fit float32 (largest 3.403e+38): every output would be inf or nan",
        ),
    ],
)
def test_constants_that_overflow_float32_are_refused(type_name: str, fields: str, message: str) -> None:
    with pytest.raises(ParamError) as e:
        load_layer(type_name, fields, (In((2, 3)),), 1)
    assert e.value.msg == message


@pytest.mark.parametrize(
    ("type_name", "fields", "message"),
    [
        (
            "Log",
            "log_param { base: 1.5 scale: 3e38 }",
            "scale / ln(base), the gradient's factor, = 7.39891e+38 does "
            "not fit float32 (largest 3.403e+38): every gradient would be inf or nan",
        ),
        (
            "Power",
            "power_param { power: 1e30 scale: 1e30 }",
            "power * scale, the gradient's factor, = 1e+60 does not "
            "fit float32 (largest 3.403e+38): every gradient would be inf or nan",
        ),
    ],
)
def test_gradient_factors_that_overflow_float32_are_refused_for_training(
    type_name: str, fields: str, message: str
) -> None:
    with pytest.raises(ParamError) as e:
        load_layer(type_name, fields, (In((2, 3)),), 1, phase="TRAIN")
    assert e.value.msg == message
    load_layer(type_name, fields, (In((2, 3)),), 1, phase="TEST")  # inference never computes the gradient


def test_exp_with_a_very_negative_shift_is_zero_as_in_caffe() -> None:
    module = netspec.compile(load_layer("Exp", "exp_param { shift: -1e30 }", (In((2, 3)),), 1))
    assert torch.equal(module(x0=torch.ones(2, 3))["y0"], torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("fields", "want"),
    [("", [[[0.0]], [[0.0]], [[0.0]]]), ("argmax_param { out_max_val: true }", [[[0.0]], [[2.0]], [[-1.0]]])],
)
def test_argmax_over_one_value_per_item_is_that_value_as_in_caffe(fields: str, want: list) -> None:
    """Caffe's top for an (N,) bottom is (N, 1, 1) (or (N, 2, 1) with the values): each item has one value."""
    module = netspec.compile(load_layer("ArgMax", fields, (In((3,)),), 1))
    got = module(x0=torch.tensor([5.0, 2.0, -1.0]))["y0"]
    assert got.tolist() == (want if fields == "" else [[[0.0], [5.0]], [[0.0], [2.0]], [[0.0], [-1.0]]])


def test_stochastic_pooling_of_negative_values_is_computed_as_caffes_kernels() -> None:
    """TEST divides by FLT_MIN + sum(x), as Caffe's kernel does; TRAIN takes the first cell whose running sum
    reaches u * sum(x) and, where none does (only with negative values), the cell whose running sum is the
    largest."""
    fields = "pooling_param { pool: STOCHASTIC kernel_size: 2 }"
    x = torch.tensor([-3.0, 2.0, -1.0, 1.0]).reshape(1, 1, 2, 2)
    test = netspec.compile(load_layer("Pooling", fields, (In((1, 1, 2, 2)),), 1, phase="TEST"))
    assert torch.equal(test(x0=x)["y0"], torch.tensor(15.0 / -1.0).reshape(1, 1, 1, 1))
    train = netspec.compile(load_layer("Pooling", fields, (In((4096, 1, 2, 2)),), 1, phase="TRAIN"))
    torch.manual_seed(0)
    # thres = u * -1 in (-1, 0]; the running sums -3, -1, -2, -1 never reach it, and the first largest
    # is the second cell's
    assert torch.equal(train(x0=x.expand(4096, 1, 2, 2))["y0"].flatten(), torch.full((4096,), 2.0))
    # non-negative values: a cell with probability value / sum, here 3 with 3/4
    got = train(x0=torch.tensor([0.0, 1.0, 0.0, 3.0]).reshape(1, 1, 2, 2).expand(4096, 1, 2, 2))["y0"]
    assert set(got.flatten().tolist()) == {1.0, 3.0}
    assert 0.72 < float((got == 3.0).float().mean()) < 0.78


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_with_a_huge_local_size_is_computed_without_padding_by_it(region: str) -> None:
    """A window wider than the input sums every square: Caffe's formula over the whole axis, with its
    alpha / n (alpha / n^2 within a channel)."""
    n = 2**31 - 1
    net = load_layer(
        "LRN",
        f"lrn_param {{ local_size: {n} alpha: 3e8 beta: 0.75 k: 2 norm_region: {region} }}",
        (In((2, 3, 4, 5)),),
        1,
    )
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = netspec.compile(net).to(torch.float64)(x0=x)["y0"]
    if region == "ACROSS_CHANNELS":
        expected = x / (2 + 3e8 / n * (x * x).sum(1, keepdim=True)) ** 0.75
    else:
        expected = x * (1 + 3e8 / n**2 * (x * x).sum((2, 3), keepdim=True)) ** -0.75
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=0)


# ---- memory: checked before anything is allocated ------------------------------------------------------


def _net(write_spec: Callable[..., str], batch: int, size: int, channels: int) -> str:
    return write_spec(
        f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {batch} '
        f"dim: 1 dim: {size} dim: {size} }} }} }}\n"
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        f"convolution_param {{ num_output: {channels} kernel_size: 5 }} }}\n"
    )


def test_a_net_over_the_memory_limit_is_refused_before_allocation(
    write_spec: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _net(write_spec, 64, 28, 20)
    monkeypatch.setenv("NETSPEC_MEMORY_LIMIT", "1M")
    with pytest.raises(ResourceError) as e:
        netspec.compile(path)
    assert str(e.value) == (
        f"{path}:2:7: layer 'conv' (Convolution): one forward pass needs 6.5 MiB (parameters 2.0 KiB + "
        "activations 3.0 MiB + temporary 3.5 MiB), over the limit of 1.0 MiB; the biggest tensor is this "
        "layer's temporary tensor (64, 25, 576), 3.5 MiB\n"
        "  hint: make the batch or the layers smaller, or raise the limit (NETSPEC_MEMORY_LIMIT=64G)"
    )
    monkeypatch.setenv("NETSPEC_MEMORY_LIMIT", "8M")
    assert netspec.compile(path) is not None


def test_a_blob_over_caffes_limit_is_refused_whatever_the_memory_limit(
    write_spec: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _net(write_spec, 64, 1028, 256)
    monkeypatch.setenv("NETSPEC_MEMORY_LIMIT", "1 TiB")
    with pytest.raises(ResourceError) as e:
        netspec.compile(path)
    assert e.value.msg == (
        "its top 'conv' has shape (64, 256, 1024, 1024), 17,179,869,184 values; a blob holds "
        "at most 2,147,483,647 (2^31 - 1, as in Caffe)"
    )


def test_check_reports_the_size_of_a_huge_net_and_time_refuses_it(write_spec: Callable[..., str]) -> None:
    path = _net(write_spec, 64, 1028, 256)
    result = CliRunner().invoke(main, ["check", path])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "memory (float32): parameters 26.0 KiB + activations 64.3 GiB + "
        "temporary 6.2 GiB per forward pass; biggest tensor: top 'conv' of "
        "layer 'conv' (64, 256, 1024, 1024)"
    )
    report = json.loads(CliRunner().invoke(main, ["check", path, "--json"]).output)
    assert (report["param_bytes"], report["activation_bytes"], report["temporary_bytes"]) == (
        4 * (256 * 25 + 256),
        4 * (64 * 1028 * 1028 + 64 * 256 * 1024 * 1024),
        4 * 64 * 25 * 1024 * 1024,
    )  # unfolded: (N, C*k*k, H*W)
    assert report["biggest_tensor"] == {"layer": "conv", "tensor": "top 'conv'", "shape": [64, 256, 1024, 1024]}
    result = CliRunner().invoke(main, ["time", path, "--iterations", "1"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{path}:2:7: layer 'conv' (Convolution): its top 'conv' has shape (64, "
        "256, 1024, 1024), 17,179,869,184 values; a blob holds at most "
        "2,147,483,647 (2^31 - 1, as in Caffe)",
        "  hint: make the batch or the layer smaller",
    ]


@pytest.mark.parametrize(
    ("value", "limit"),
    [("", 16 * 2**30), ("2000000", 2_000_000), ("64G", 64 * 2**30), ("512 MiB", 512 * 2**20), ("1tb", 2**40)],
)
def test_memory_limit_spellings(value: str, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETSPEC_MEMORY_LIMIT", value)
    assert memory_limit() == limit


def test_a_memory_limit_that_is_not_a_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETSPEC_MEMORY_LIMIT", "lots")
    with pytest.raises(NetspecError) as e:
        memory_limit()
    assert str(e.value) == "NETSPEC_MEMORY_LIMIT='lots' is not a size\n  hint: write e.g. 64G or 2000000000"


def test_a_layer_whose_temporary_tensor_is_too_big_is_refused(
    write_spec: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stochastic pooling unfolds every window: 1001x1001 windows of 1000x1000 cells need 3.6 TiB."""
    monkeypatch.delenv("NETSPEC_MEMORY_LIMIT", raising=False)
    path = write_spec(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 '
        "dim: 2000 dim: 2000 } } }\n"
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        "pooling_param { pool: STOCHASTIC kernel_size: 1000 stride: 1 } }\n"
    )
    with pytest.raises(ResourceError) as e:
        netspec.compile(path)
    assert e.value.msg == (
        "one forward pass needs 3.6 TiB (parameters 0 B + activations 19.1 MiB + temporary 3.6 TiB), "
        "over the limit of 16.0 GiB; the biggest tensor is this layer's temporary tensor "
        "(1, 1, 1000000, 1002001), 3.6 TiB"
    )


@pytest.mark.parametrize(
    ("type_name", "fields", "message"),
    [
        (
            "Scale",
            "scale_param { axis: 0 num_axes: 0 filler { type: 'positive_unitball' } }",
            "the positive_unitball filler needs a blob with at least one axis, got a 0-axis blob (a shared PReLU slope, or Scale/Bias with num_axes 0)",
        ),
        (
            "Scale",
            "scale_param { axis: 0 num_axes: 0 filler { type: 'orthogonal' } }",
            "the orthogonal filler needs a blob with at least one axis, got a 0-axis blob (a shared PReLU slope, or Scale/Bias with num_axes 0)",
        ),
        (
            "DummyData",
            "dummy_data_param { shape { } data_filler { type: 'gaussian' sparse: 1 } }",
            "the sparse filler needs a blob with at least one axis, got a 0-axis blob (a shared PReLU slope, or Scale/Bias with num_axes 0)",
        ),
        (
            "DummyData",
            "dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'bilinear' } }",
            "the bilinear filler needs a 4-axis blob with square kernels, got shape (2, 3)",
        ),
    ],
)
def test_fillers_that_need_rows_are_refused_for_scalar_blobs_before_compiling(
    type_name: str, fields: str, message: str
) -> None:
    inputs = (In((2, 3)),) if type_name == "Scale" else ()
    with pytest.raises(ParamError) as e:
        load_layer(type_name, fields, inputs, 1)
    assert e.value.msg == message
