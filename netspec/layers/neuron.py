"""Neuron layers: elementwise functions of one bottom, shape preserved, computable in place."""

from __future__ import annotations

import math
from collections.abc import Sequence

from netspec._proto import netspec_pb2 as pb
from netspec.errors import ParamError, ShapeError
from netspec.layers.base import (
    BlobDef,
    Example,
    Forward,
    Grad,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    filled,
    fmt,
    require,
)
from netspec.layers.registry import register

_X = (In((2, 3, 4, 5)),)


class Neuron(LayerDef):
    """One bottom, one top of the same shape.

    Caffe's backward pass of most neurons reads the blob values (bottom or top) as they are when
    backward runs. When a later layer overwrites the blob in place, Caffe computes the gradient from the
    overwritten values (BVLC/caffe#2015). netspec reproduces that, so training matches Caffe: a neuron
    with a `caffe_backward` formula is run with it whenever the blob it reads has changed by then.
    """

    category = "neuron"

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return [bottoms[0]]


@register
class ReLU(Neuron):
    """max(x, 0), or a leaky ReLU with negative_slope * x for x <= 0.

    layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
    """

    type = "ReLU"
    onnx_ops = frozenset({"LeakyRelu", "Relu"})
    param_field = "relu_param"
    examples = (Example("", _X), Example("relu_param { negative_slope: 0.1 }", _X))

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        slope = s.p.negative_slope
        if slope == 0:
            return lambda params, xs: [F.relu(xs[0])]
        return lambda params, xs: [F.leaky_relu(xs[0], slope)]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        slope = s.p.negative_slope
        return lambda x, b, t, g: g * ((b > 0).to(g.dtype) + slope * (b <= 0).to(g.dtype))

    def inplace_exact(self, s: LayerSpec) -> bool:
        return s.p.negative_slope >= 0

    def reads_only_sign(self, s: LayerSpec) -> bool:
        return True

    def keeps_sign(self, s: LayerSpec) -> bool:
        return s.p.negative_slope >= 0


@register
class PReLU(Neuron):
    """A leaky ReLU whose slopes are learned, one per channel (axis 1) or one shared.

    layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
    """

    type = "PReLU"
    onnx_ops = frozenset({"PRelu"})
    param_field = "prelu_param"
    examples = (Example("", _X), Example("prelu_param { channel_shared: true }", _X))

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        b = bottoms[0]
        if len(b) < 2:
            raise ShapeError(f"PReLU needs a bottom with at least 2 axes (N, C, ...), got {fmt(b)}")
        shape = () if s.p.channel_shared else (b[1],)  # Caffe's shared slope is a 0-axis blob
        return [filled("slope", shape, s.p, "filler", value=0.25)]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        return lambda params, xs: [F.prelu(xs[0], params[0])]


@register
class ELU(Neuron):
    """x for x > 0, alpha * (exp(x) - 1) otherwise.

    layer { name: "elu1" type: "ELU" bottom: "ip1" top: "ip1" elu_param { alpha: 1 } }
    """

    type = "ELU"
    onnx_ops = frozenset({"Elu"})
    param_field = "elu_param"
    examples = (Example("elu_param { alpha: 0.5 }", _X),)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        alpha = s.p.alpha
        return lambda params, xs: [F.elu(xs[0], alpha)]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        alpha = s.p.alpha
        return lambda x, b, t, g: g * ((b > 0).to(g.dtype) + (alpha + t) * (b <= 0).to(g.dtype))

    def inplace_exact(self, s: LayerSpec) -> bool:
        return s.p.alpha >= 0


@register
class Sigmoid(Neuron):
    """1 / (1 + exp(-x)).

    layer { name: "sig" type: "Sigmoid" bottom: "ip1" top: "ip1" }
    """

    type = "Sigmoid"
    onnx_ops = frozenset({"Sigmoid"})
    param_field = "sigmoid_param"
    examples = (Example("", _X),)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        return lambda params, xs: [torch.sigmoid(xs[0])]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        return lambda x, b, t, g: g * t * (1 - t)


@register
class TanH(Neuron):
    """tanh(x).

    layer { name: "tanh" type: "TanH" bottom: "ip1" top: "ip1" }
    """

    type = "TanH"
    onnx_ops = frozenset({"Tanh"})
    param_field = "tanh_param"
    examples = (Example("", _X),)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        return lambda params, xs: [torch.tanh(xs[0])]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        return lambda x, b, t, g: g * (1 - t * t)


@register
class AbsVal(Neuron):
    """|x|.

    layer { name: "abs" type: "AbsVal" bottom: "x" top: "y" }
    """

    type = "AbsVal"
    onnx_ops = frozenset({"Abs"})
    no_in_place = True
    examples = (Example("", _X),)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        return lambda params, xs: [torch.abs(xs[0])]


@register
class BNLL(Neuron):
    """The binomial normal log-likelihood log(1 + exp(x)) (softplus).

    layer { name: "bnll" type: "BNLL" bottom: "x" top: "y" }
    """

    type = "BNLL"
    onnx_ops = frozenset({"Greater", "Softplus", "Where"})
    examples = (Example("", _X),)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        return lambda params, xs: [F.softplus(xs[0])]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        import torch

        return lambda x, b, t, g: g * torch.sigmoid(b.clamp_max(50.0))

    def inplace_exact(self, s: LayerSpec) -> bool:
        return False


@register
class Power(Neuron):
    """(shift + scale * x) ^ power.

    layer { name: "pow" type: "Power" bottom: "x" top: "y" power_param { power: 2 scale: 0.5 shift: 1 } }
    """

    type = "Power"
    onnx_ops = frozenset({"Add", "Mul", "Pow"})
    param_field = "power_param"
    examples = (
        Example("power_param { power: 2 scale: 0.5 shift: 1 }", _X),
        Example("power_param { power: 0.5 scale: 2 shift: 0.1 }", (In((2, 3), "positive"),)),
    )

    def check(self, s: LayerSpec) -> None:
        for name in ("power", "scale", "shift"):
            _float32(getattr(s.p, name), name, name)
        if s.train:  # only training computes the gradient
            _float32(s.p.power * s.p.scale, "power * scale, the gradient's factor,", "scale", "gradient")

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        power, scale, shift = s.p.power, s.p.scale, s.p.shift
        if power == 1:
            return lambda params, xs: [xs[0] * scale + shift]
        return lambda params, xs: [torch.pow(xs[0] * scale + shift, power)]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        power, scale, shift = s.p.power, s.p.scale, s.p.shift
        diff_scale = power * scale
        if diff_scale == 0 or power == 1:
            return lambda x, b, t, g: g * diff_scale
        if power == 2:
            return lambda x, b, t, g: g * diff_scale * (b * scale + shift)
        if shift == 0:
            return lambda x, b, t, g: g * power * t / b
        return lambda x, b, t, g: g * diff_scale * t / (b * scale + shift)

    def inplace_exact(self, s: LayerSpec) -> bool:
        return s.p.power == 1 or s.p.power * s.p.scale == 0


FLT_MAX = 3.4028234663852886e38


def _float32(value: float, what: str, field: str, used_by: str = "output") -> float:
    """Refuses a constant of the lowering that float32 (which Caffe and compiled nets compute in) cannot
    hold: it would turn every output (or gradient) into inf or nan."""
    require(
        math.isfinite(value) and abs(value) <= FLT_MAX,
        f"{what} = {value:g} does not fit float32 (largest {FLT_MAX:.4g}): every {used_by} would be inf or nan",
        field,
    )
    return value


def _log_base(base: float, field: str) -> float:
    """ln(base), where Caffe's base -1 means e."""
    if base == -1:
        return 1.0
    require(base > 0 and math.isfinite(base), f"base must be positive and finite (or -1 for e), got {base}", field)
    return math.log(base)


def _exp_constants(p: pb.ExpParameter) -> tuple[float, float]:
    """Caffe's inner scale ln(base) * scale and outer scale base^shift, both within float32."""
    ln_base = _log_base(p.base, "base")
    inner = _float32(ln_base * p.scale, "ln(base) * scale", "scale")
    if ln_base * p.shift > math.log(FLT_MAX) or not math.isfinite(ln_base * p.shift):
        raise ParamError(
            f"base^shift = e^{ln_base * p.shift:g} does not fit float32 (largest {FLT_MAX:.4g}): "
            "every output would be inf or nan",
            field="shift",
        )
    return inner, math.exp(ln_base * p.shift)


def _log_constants(p: pb.LogParameter) -> tuple[float, float]:
    """Caffe's 1 / ln(base) and the gradient's scale / ln(base); base 1 has no logarithm."""
    ln_base = _log_base(p.base, "base")
    require(ln_base != 0, "base 1 has no logarithm (log_1 divides by ln 1 = 0)", "base")
    _float32(p.shift, "shift", "shift")
    return 1.0 / ln_base, p.scale / ln_base


@register
class Exp(Neuron):
    """base ^ (shift + scale * x); base -1 means e.

    layer { name: "exp" type: "Exp" bottom: "x" top: "y" exp_param { base: 2 scale: 0.5 } }
    """

    type = "Exp"
    onnx_ops = frozenset({"Add", "Exp", "Mul"})
    param_field = "exp_param"
    examples = (Example("", _X), Example("exp_param { base: 2 scale: 0.5 shift: 1 }", _X))

    def check(self, s: LayerSpec) -> None:
        _exp_constants(s.p)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        inner, outer = _exp_constants(s.p)
        if outer == 1:
            return lambda params, xs: [torch.exp(xs[0] * inner)]
        return lambda params, xs: [torch.exp(xs[0] * inner) * outer]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        inner, _ = _exp_constants(s.p)
        return lambda x, b, t, g: g * t * inner


@register
class Log(Neuron):
    """log_base(shift + scale * x); base -1 means e.

    layer { name: "log" type: "Log" bottom: "x" top: "y" log_param { base: 10 } }
    """

    type = "Log"
    onnx_ops = frozenset({"Add", "Log", "Mul"})
    param_field = "log_param"
    examples = (Example("log_param { base: 10 scale: 2 shift: 0.5 }", (In((2, 3, 4), "positive"),)),)

    def check(self, s: LayerSpec) -> None:
        _, num = _log_constants(s.p)
        if s.train:  # only training computes the gradient
            _float32(num, "scale / ln(base), the gradient's factor,", "scale", "gradient")

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        base_scale, _ = _log_constants(s.p)
        scale, shift = s.p.scale, s.p.shift
        return lambda params, xs: [torch.log(xs[0] * scale + shift) * base_scale]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        _, num = _log_constants(s.p)
        scale, shift = s.p.scale, s.p.shift
        return lambda x, b, t, g: g * num / (b * scale + shift)

    def inplace_exact(self, s: LayerSpec) -> bool:
        return False


@register
class Threshold(Neuron):
    """1 where x > threshold, else 0 (no gradient).

    layer { name: "thr" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.5 } }
    """

    type = "Threshold"
    onnx_ops = frozenset({"Cast", "Greater"})
    param_field = "threshold_param"
    examples = (Example("threshold_param { threshold: 0.1 }", _X, gradcheck=False),)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        t = s.p.threshold
        return lambda params, xs: [(xs[0] > t).to(xs[0].dtype)]


@register
class Clip(Neuron):
    """x clipped to [min, max].

    layer { name: "clip" type: "Clip" bottom: "x" top: "y" clip_param { min: -1 max: 1 } }
    """

    type = "Clip"
    onnx_ops = frozenset({"Clip"})
    param_field = "clip_param"
    examples = (Example("clip_param { min: -0.5 max: 0.7 }", _X),)

    def check(self, s: LayerSpec) -> None:
        require(s.p.min <= s.p.max, f"min ({s.p.min}) must not exceed max ({s.p.max})", "min")

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        lo, hi = s.p.min, s.p.max
        return lambda params, xs: [torch.clamp(xs[0], lo, hi)]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        lo, hi = s.p.min, s.p.max
        return lambda x, b, t, g: g * ((b >= lo) & (b <= hi)).to(g.dtype)

    def inplace_exact(self, s: LayerSpec) -> bool:
        return False


@register
class Swish(Neuron):
    """x * sigmoid(beta * x).

    layer { name: "swish" type: "Swish" bottom: "x" top: "y" swish_param { beta: 1 } }
    """

    type = "Swish"
    onnx_ops = frozenset({"Mul", "Sigmoid"})
    param_field = "swish_param"
    examples = (Example("swish_param { beta: 1.5 }", _X),)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        beta = s.p.beta
        return lambda params, xs: [xs[0] * torch.sigmoid(xs[0] * beta)]

    def caffe_backward(self, s: LayerSpec) -> Grad:
        import torch

        beta = s.p.beta
        return lambda x, b, t, g: g * (beta * t + torch.sigmoid(x * beta) * (1 - beta * t))


@register
class Dropout(Neuron):
    """In TRAIN, zeroes each value with probability dropout_ratio and scales the rest by
    1 / (1 - dropout_ratio) (inverted dropout); in TEST, passes values through.

    layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
    """

    type = "Dropout"
    onnx_ops = frozenset({"Identity"})
    param_field = "dropout_param"
    category = "common"
    examples = (
        Example("dropout_param { dropout_ratio: 0.3 }", _X),
        Example("dropout_param { dropout_ratio: 0.3 }", _X, phase="TRAIN", gradcheck=False),
    )

    def check(self, s: LayerSpec) -> None:
        r = s.p.dropout_ratio
        require(0 <= r < 1, f"dropout_ratio must be in [0, 1), got {r}", "dropout_ratio")

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        if self.keeps_values(s):
            return lambda params, xs: [xs[0]]
        ratio = s.p.dropout_ratio
        return lambda params, xs: [F.dropout(xs[0], ratio, True)]

    def keeps_sign(self, s: LayerSpec) -> bool:
        return True  # a dropped value becomes 0, but its gradient is 0 too

    def keeps_values(self, s: LayerSpec) -> bool:
        return not s.train or s.p.dropout_ratio == 0
