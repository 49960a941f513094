"""Normalisation and affine layers: BatchNorm, Scale, Bias, MVN (LRN is with the vision layers)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from netspec._proto import netspec_pb2 as pb
from netspec.errors import ParamError, ShapeError
from netspec.layers.base import (
    Arity,
    BlobDef,
    Example,
    Forward,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    at_least_axes,
    canonical_axis,
    filled,
    fmt,
)
from netspec.layers.registry import register

if TYPE_CHECKING:
    import torch


def _zeros() -> pb.FillerParameter:
    return pb.FillerParameter(type="constant", value=0)


# The solver's sync_bn, for this process: [enabled, process group (None: the default one)].
_SYNC: list[Any] = [False, None]


def sync_batch_norm(enabled: bool, group: Any = None) -> None:
    """Makes every BatchNorm of this process (lowered before or after) compute its TRAIN statistics over
    the batches of all the ranks of `group` (default: the whole job), as one process with their union
    would: the solver's `sync_bn: true`. Off (the default), each rank normalises with its own batch's
    statistics, as Caffe's multi-GPU training did. It applies only while torch.distributed is
    initialised, so one process is unaffected, and only to passes autograd records (training steps: a
    test net with use_global_stats: false keeps each rank's statistics, as the ranks' numbers of test
    batches may differ by one). Every rank must switch it alike."""
    _SYNC[:] = [enabled, group]


def _sync_group() -> tuple[bool, Any]:
    """(whether statistics are synchronised now, the group)."""
    import torch.distributed as dist

    return bool(_SYNC[0]) and dist.is_available() and dist.is_initialized(), _SYNC[1]


def average_statistics(buffers: Iterable[torch.Tensor]) -> None:
    """Makes BatchNorm's running statistics (a net's buffers) the same on every rank after a training
    step: each rank's running sums become the mean of all ranks' (the scale factor is the same
    everywhere, so the running means and variances are the ranks' averages). With sync_bn the training
    steps keep them equal already; averaging anyway also covers test nets that update them with their
    rank's batches, for one small all-reduce. Nothing to do in one process."""
    import torch
    import torch.distributed as dist

    tensors = [b for b in buffers if b.is_floating_point()]
    if not tensors or not (dist.is_available() and dist.is_initialized()):
        return
    group = _SYNC[1]
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.reshape(t.shape))


@functools.cache
def _all_reduce_sum() -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """A sum over the ranks that autograd differentiates: every rank's input reaches every rank's output,
    so its gradient is the sum of the ranks' output gradients. (torch.distributed.nn.functional's is
    deprecated, and its successor private.) Built on first use: this module must not import torch."""
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
            ctx.group = group
            y = x.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(y, group=group)
            return y

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
            g = g.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(g, group=ctx.group)
            return g, None

    return AllReduceSum.apply


def _moments(x: torch.Tensor, dims: list[int], group: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean and (biased) variance over `dims` of the union of every rank's x, and the variance's
    unbiasing factor m/(m-1) for its m values per channel: the ranks' sums (accumulated as x.mean does,
    in at least float32, so no copy of x) and counts all-reduced in float64, where counts stay exact,
    then the squared deviations from the common mean. The all-reduces are differentiable, so each rank's
    input gradient includes what the other ranks' losses owe it through the shared statistics. Tensors
    throughout: no wait for the device."""
    import torch

    all_reduce, acc = _all_reduce_sum(), torch.promote_types(x.dtype, torch.float32)
    local = x.sum(dims, keepdim=True, dtype=acc).to(torch.float64)
    count = torch.full((1,), x.numel() // local.numel(), dtype=torch.float64, device=x.device)
    total = all_reduce(torch.cat([local.reshape(-1), count]), group)
    m = total[-1]
    mean = (total[:-1] / m).reshape(local.shape).to(x.dtype)
    squares = ((x - mean) ** 2).sum(dims, keepdim=True, dtype=acc).to(torch.float64)
    var = all_reduce(squares, group) / m
    return mean, var.to(x.dtype), (m / (m - 1).clamp(min=1)).detach()


@register
class BatchNorm(LayerDef):
    """Normalises each channel (axis 1) to zero mean and unit variance, with batch statistics in TRAIN
    and the stored running ones in TEST (or always, with use_global_stats). Its three blobs are Caffe's:
    the running mean sum, the running variance sum and their scale factor (mean = blob0 / blob2); the
    solver never updates them. It has no scale or shift: follow it with Scale { bias_term: true }.

    layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
    """

    type = "BatchNorm"
    onnx_ops = frozenset({"Add", "Div", "Mul", "ReduceMean", "Reshape", "Sqrt", "Sub"})
    param_field = "batch_norm_param"
    category = "normalization"
    examples = (
        Example("", (In((2, 3, 2, 2)),)),
        Example("batch_norm_param { use_global_stats: false }", (In((5, 3)),)),
        Example("", (In((4, 2, 3)),), phase="TRAIN"),
    )

    def check(self, s: LayerSpec) -> None:
        for i, spec in enumerate(s.lp.param):
            if spec.lr_mult != 0:
                raise ParamError(
                    f"param {i} has lr_mult {spec.lr_mult}: BatchNorm's statistics are not "
                    "learned, so every lr_mult must be 0",
                    field="param",
                    hint="remove the param entries, or set lr_mult: 0",
                )

    def global_stats(self, s: LayerSpec) -> bool:
        return s.p.use_global_stats if s.p.HasField("use_global_stats") else not s.train

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return [at_least_axes(bottoms[0], 1, "(N, C, ...)")]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        c = bottoms[0][1] if len(bottoms[0]) > 1 else 1
        return [
            BlobDef("mean", (c,), _zeros(), learnable=False),
            BlobDef("variance", (c,), _zeros(), learnable=False),
            BlobDef("scale_factor", (1,), _zeros(), learnable=False),
        ]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        eps, maf = s.p.eps, s.p.moving_average_fraction
        ndim = len(bottoms[0])
        view = (1, -1) + (1,) * (ndim - 2) if ndim > 1 else (-1,)
        reduce_dims = [0, *range(2, ndim)]

        if self.global_stats(s):

            def inference(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
                mean_sum, var_sum, factor = params
                scale = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
                mean, var = (mean_sum * scale).reshape(view), (var_sum * scale).reshape(view)
                return [(xs[0] - mean) / torch.sqrt(var + eps)]

            return inference

        def training(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0]
            synced, group = _sync_group()
            correction: torch.Tensor | float
            if synced and torch.is_grad_enabled():  # test passes keep to their rank: their batch counts differ
                mean, var, correction = _moments(x, reduce_dims, group)
            else:
                mean = x.mean(reduce_dims, keepdim=True)
                var = ((x - mean) ** 2).mean(reduce_dims, keepdim=True)
                m = x.numel() // x.shape[1] if ndim > 1 else x.numel()
                correction = m / (m - 1) if m > 1 else 1.0
            with torch.no_grad():  # Caffe's running sums: blob = batch_stat + maf * blob
                params[0].mul_(maf).add_(mean.reshape(-1))
                params[1].mul_(maf).add_(var.reshape(-1) * correction)
                params[2].mul_(maf).add_(1)
            return [(x - mean) / torch.sqrt(var + eps)]

        return training


def _broadcast_axis(s: LayerSpec, x: Shape, operand: Shape) -> int:
    """Where an operand (a learned blob or bottom 1) of Scale/Bias lines up with bottom 0."""
    axis = 0 if len(operand) == 0 else canonical_axis(s.p.axis, len(x))
    if x[axis : axis + len(operand)] != operand:
        raise ShapeError(
            f"{'bottom 1' if s.num_bottoms > 1 else 'the learned blob'} has shape {fmt(operand)}, "
            f"which does not match bottom 0 {fmt(x)} from axis {axis}"
        )
    return axis


def _learned_shape(s: LayerSpec, x: Shape) -> Shape:
    axis = canonical_axis(s.p.axis, len(x))
    num_axes = s.p.num_axes
    if num_axes < -1:
        raise ParamError("num_axes must be -1 (to the last axis) or non-negative", field="num_axes")
    end = len(x) if num_axes == -1 else axis + num_axes
    if end > len(x):
        raise ShapeError(f"axis {axis} with num_axes {num_axes} reaches past bottom {fmt(x)}", field="num_axes")
    return x[axis:end]


def _view(axis: int, operand: Shape, ndim: int) -> tuple[int, ...]:
    return (1,) * axis + operand + (1,) * (ndim - axis - len(operand))


def _operand(s: LayerSpec, bottoms: Sequence[Shape]) -> Shape:
    """The shape Scale or Bias applies: bottom 1's, or its learned blob's."""
    return bottoms[1] if len(bottoms) > 1 else _learned_shape(s, bottoms[0])


@register
class Scale(LayerDef):
    """Multiplies bottom 0 by a learned blob (shape bottom0[axis:axis+num_axes]) or by bottom 1,
    broadcast from `axis`; with bias_term, adds a learned bias of the same shape.

    layer { name: "scale1" type: "Scale" bottom: "bn1" top: "bn1" scale_param { bias_term: true } }
    """

    type = "Scale"
    onnx_ops = frozenset({"Add", "Mul", "Reshape"})
    param_field = "scale_param"
    category = "normalization"
    bottoms = Arity(1, 2)
    examples = (
        Example("scale_param { bias_term: true }", (In((2, 3, 4, 4)),)),
        Example("scale_param { axis: 1 num_axes: 2 }", (In((2, 3, 4)),)),
        Example("scale_param { axis: 0 num_axes: 0 }", (In((2, 3)),)),
        Example("scale_param { axis: 1 bias_term: true }", (In((2, 3, 4, 5)), In((3, 4)))),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _broadcast_axis(s, bottoms[0], _operand(s, bottoms))
        return [bottoms[0]]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        operand = _operand(s, bottoms)
        p = s.p
        out = []
        if len(bottoms) == 1:
            out.append(filled("scale", operand, p, "filler", value=1.0))
        if p.bias_term:
            out.append(filled("bias", operand, p, "bias_filler"))
        return out

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        operand = _operand(s, bottoms)
        view = _view(_broadcast_axis(s, bottoms[0], operand), operand, len(bottoms[0]))
        learned, bias = len(bottoms) == 1, s.p.bias_term

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            factor = params[0] if learned else xs[1]
            y = xs[0] * factor.reshape(view)
            if bias:
                y = y + params[-1].reshape(view)
            return [y]

        return forward


@register
class Bias(LayerDef):
    """Adds a learned blob (shape bottom0[axis:axis+num_axes]) or bottom 1 to bottom 0, broadcast from
    `axis`.

    layer { name: "bias1" type: "Bias" bottom: "x" top: "x" bias_param { axis: 1 num_axes: 1 } }
    """

    type = "Bias"
    onnx_ops = frozenset({"Add", "Reshape"})
    param_field = "bias_param"
    category = "normalization"
    bottoms = Arity(1, 2)
    examples = (Example("", (In((2, 3, 4, 4)),)), Example("bias_param { axis: 1 }", (In((2, 3, 4)), In((3, 4)))))

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _broadcast_axis(s, bottoms[0], _operand(s, bottoms))
        return [bottoms[0]]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        if len(bottoms) > 1:
            return []
        return [filled("bias", _operand(s, bottoms), s.p, "filler")]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        operand = _operand(s, bottoms)
        view = _view(_broadcast_axis(s, bottoms[0], operand), operand, len(bottoms[0]))
        learned = len(bottoms) == 1
        return lambda params, xs: [xs[0] + (params[0] if learned else xs[1]).reshape(view)]


@register
class MVN(LayerDef):
    """Mean-variance normalisation of each item (per channel unless across_channels):
    y = (x - mean) / (std + eps), or only the mean removed when normalize_variance is false. The gradient
    is Caffe's, which leaves out eps's part (the true gradient when eps is 0).

    layer { name: "mvn" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true } }
    """

    type = "MVN"
    onnx_ops = frozenset({"Add", "Div", "Mul", "ReduceMean", "Reshape", "Sqrt", "Sub"})
    param_field = "mvn_param"
    category = "normalization"
    examples = (
        Example("", (In((2, 3, 4, 5)),)),
        Example("mvn_param { across_channels: true normalize_variance: false }", (In((2, 3, 4)),)),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) < 2:
            raise ShapeError(f"MVN needs a bottom with at least 2 axes, got {fmt(b)}")
        return [b]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        start = 1 if s.p.across_channels else 2
        eps, normalize = s.p.eps, s.p.normalize_variance

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0]
            flat = x.flatten(start) if start < x.dim() else x.unsqueeze(-1)
            centred = flat - flat.mean(-1, keepdim=True)
            if normalize:
                std = torch.sqrt((centred * centred).mean(-1, keepdim=True))
                # Caffe's backward pass, dx = (dy - mean(dy) - y * mean(y * dy)) / (std + eps), is the true
                # gradient only for eps = 0: it leaves out a factor std / (std + eps) on the path through
                # std. netspec computes Caffe's: the divisor has the value std + eps and the gradient of
                # std * std / (std + eps)
                shrink = (std / (std + eps)).detach()
                divisor = std * shrink + (std + eps - std * shrink).detach()
                centred = centred / divisor
            return [centred.reshape(x.shape)]

        return forward
