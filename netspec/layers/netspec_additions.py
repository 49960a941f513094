"""netspec's additions to Caffe's layers: the building blocks modern courses teach and Caffe lacks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from netspec.errors import ShapeError
from netspec.layers.base import (
    Arity,
    BlobDef,
    Example,
    Forward,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    canonical_axis,
    count,
    filled,
    fmt,
    require,
    weight_and_bias,
)
from netspec.layers.loss import SCALAR, normalization, normalizer, outer_inner
from netspec.layers.registry import register

if TYPE_CHECKING:
    import torch


@register
class LayerNorm(LayerDef):
    """Normalises each item over the axes from `axis` on (the last axis by default) to zero mean and unit
    variance, then applies a learned elementwise scale and shift of those axes' shape.

    layer { name: "ln" type: "LayerNorm" bottom: "x" top: "x" layer_norm_param { axis: -1 } }
    """

    type = "LayerNorm"
    onnx_ops = frozenset({"LayerNormalization"})
    param_field = "layer_norm_param"
    category = "normalization"
    origin = "netspec"
    examples = (
        Example("", (In((2, 3, 5)),)),
        Example("layer_norm_param { axis: 1 elementwise_affine: false }", (In((2, 3, 2, 2)),)),
    )

    def _normalized(self, s: LayerSpec, b: Shape) -> Shape:
        return b[canonical_axis(s.p.axis, len(b)) :]

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        self._normalized(s, bottoms[0])
        return [bottoms[0]]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        p = s.p
        if not p.elementwise_affine:
            return []
        shape = self._normalized(s, bottoms[0])
        return [filled("scale", shape, p, "scale_filler", value=1.0), filled("bias", shape, p, "bias_filler")]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        shape, eps = self._normalized(s, bottoms[0]), s.p.eps
        affine = s.p.elementwise_affine

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return [F.layer_norm(xs[0], shape, params[0] if affine else None, params[1] if affine else None, eps)]

        return forward


@register
class GELU(LayerDef):
    """The Gaussian error linear unit x * Phi(x) (exact, or its tanh approximation).

    layer { name: "gelu" type: "GELU" bottom: "x" top: "x" }
    """

    type = "GELU"
    onnx_ops = frozenset({"Add", "Div", "Erf", "Mul", "Pow", "Tanh"})
    param_field = "gelu_param"
    category = "neuron"
    origin = "netspec"
    examples = (Example("", (In((2, 3, 4)),)), Example("gelu_param { approximate: TANH }", (In((2, 3)),)))

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return [bottoms[0]]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        approximate = "tanh" if s.p.approximate == s.p.TANH else "none"
        return lambda params, xs: [F.gelu(xs[0], approximate=approximate)]


@register
class Maxout(LayerDef):
    """The maximum over num_pieces linear pieces for each of num_output units: an InnerProduct of
    num_output * num_pieces units whose rows are grouped by unit, then the max within each group.

    layer { name: "maxout1" type: "Maxout" bottom: "x" top: "h" maxout_param { num_output: 64 num_pieces: 3 } }
    """

    type = "Maxout"
    onnx_ops = frozenset({"Add", "Gemm", "MatMul", "ReduceMax", "Reshape"})
    param_field = "maxout_param"
    category = "common"
    origin = "netspec"
    examples = (
        Example("maxout_param { num_output: 3 num_pieces: 2 }", (In((4, 5)),)),
        Example("maxout_param { num_output: 2 num_pieces: 3 bias_term: false }", (In((2, 3, 2)),)),
    )

    def check(self, s: LayerSpec) -> None:
        require(s.p.num_output > 0, "num_output must be set to a positive number", "num_output")
        require(s.p.num_pieces > 0, "num_pieces must be positive", "num_pieces")

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        axis = canonical_axis(s.p.axis, len(bottoms[0]))
        return [(*bottoms[0][:axis], s.p.num_output)]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        p = s.p
        k = count(bottoms[0], canonical_axis(p.axis, len(bottoms[0])))
        units = p.num_output * p.num_pieces
        return weight_and_bias(p, (units, k), (units,))

    def macs(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> int:
        return count(bottoms[0]) * s.p.num_output * s.p.num_pieces

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        axis = canonical_axis(s.p.axis, len(bottoms[0]))
        units, pieces = s.p.num_output, s.p.num_pieces

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0].flatten(axis) if axis < xs[0].dim() - 1 else xs[0]
            y = F.linear(x, params[0], params[1] if len(params) > 1 else None)
            return [y.reshape((*y.shape[:-1], units, pieces)).amax(-1)]  # (..., units * pieces) -> (..., units)

        return forward


def _same_values(s: LayerSpec, bottoms: Sequence[Shape]) -> None:
    a, b = bottoms
    if count(a) != count(b):
        raise ShapeError(f"the two bottoms need the same number of values, got {fmt(a)} and {fmt(b)}")


@register
class L1Loss(LayerDef):
    """The mean absolute error: sum(|a - b|) divided by the number of values.

    layer { name: "loss" type: "L1Loss" bottom: "pred" bottom: "target" top: "loss" }
    """

    type = "L1Loss"
    category = "loss"
    origin = "netspec"
    loss = True
    train_only = True
    bottoms = Arity(2, 2)
    examples = (Example("", (In((4, 3)), In((4, 3)))),)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _same_values(s, bottoms)
        return [SCALAR]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        return lambda params, xs: [(xs[0] - xs[1].reshape(xs[0].shape)).abs().sum() / xs[0].numel()]


@register
class CrossEntropyLoss(LayerDef):
    """Softmax cross-entropy against soft targets (a probability distribution per prediction, of the
    scores' shape): -sum(t * log softmax(x)) along softmax_param.axis, divided as loss_param says
    (VALID and FULL: by the number of predictions). For label smoothing and distillation.

    layer { name: "loss" type: "CrossEntropyLoss" bottom: "logits" bottom: "soft_targets" top: "loss" }
    """

    type = "CrossEntropyLoss"
    param_field = "softmax_param"
    category = "loss"
    origin = "netspec"
    loss = True
    train_only = True
    bottoms = Arity(2, 2)
    examples = (
        Example("", (In((4, 3)), In((4, 3), "prob"))),
        Example("loss_param { normalization: BATCH_SIZE }", (In((2, 3, 4)), In((2, 3, 4), "prob"))),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        if bottoms[0] != bottoms[1]:
            raise ShapeError(f"soft targets {fmt(bottoms[1])} must have the scores' shape {fmt(bottoms[0])}")
        canonical_axis(s.p.axis, len(bottoms[0]))
        return [SCALAR]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        axis = canonical_axis(s.p.axis, len(bottoms[0]))
        mode = normalization(s)

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            outer, inner = outer_inner(xs[0], axis)
            return [-(xs[1] * torch.log_softmax(xs[0], axis)).sum() / normalizer(mode, outer, inner, None)]

        return forward
