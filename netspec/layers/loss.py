"""Loss layers and Accuracy, with Caffe's normalisations and ignore_label.

Each loss's first top is a scalar whose loss_weight defaults to 1. Where Caffe's gradient is not the
exact derivative of its loss (ContrastiveLoss's 1e-4, the clamped logarithms), the lowering keeps
Caffe's gradient, so training matches Caffe step for step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netspec._proto import netspec_pb2 as pb
from netspec.data import probe
from netspec.errors import DataError, ShapeError
from netspec.layers.base import (
    Arity,
    Example,
    Forward,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    at_least_axes,
    canonical_axis,
    count,
    describe_bottoms,
    fmt,
    require,
)
from netspec.layers.registry import register

if TYPE_CHECKING:
    import torch

FLT_MIN = 1.1754943508222875e-38  # Caffe clamps probabilities before log() to these
LOG_THRESHOLD = 1e-20
SCALAR: Shape = ()
L = pb.LossParameter


def normalization(s: LayerSpec, default: int = L.VALID) -> int:
    """The normalisation mode, honouring the deprecated `normalize` flag as Caffe does."""
    lp = s.lp.loss_param
    if lp.HasField("normalization"):
        return int(lp.normalization)
    if lp.HasField("normalize"):
        return L.VALID if lp.normalize else L.BATCH_SIZE
    return default


def _kept(label: torch.Tensor, ignore: int | None) -> torch.Tensor | None:
    """The number of labels that are not ignore_label (None without one: every prediction counts)."""
    return None if ignore is None else (label != ignore).sum()


def normalizer(mode: int, outer: int, inner: int, valid: torch.Tensor | None) -> torch.Tensor | float:
    """What Caffe divides a summed loss by (never less than 1)."""
    if mode == L.FULL or (mode == L.VALID and valid is None):
        return float(max(1, outer * inner))
    if mode == L.VALID and valid is not None:
        return valid.clamp_min(1)
    if mode == L.BATCH_SIZE:
        return float(max(1, outer))
    return 1.0


def caffe_grad_clamp(x: torch.Tensor, lo: float) -> torch.Tensor:
    """max(x, lo) in value, but with the gradient of x everywhere (Caffe differentiates the clamped
    log as if it were not clamped)."""
    return x + (x.clamp_min(lo) - x).detach()


def _label_axis(s: LayerSpec, scores: Shape, labels: Shape, axis_value: int) -> tuple[int, int, int]:
    axis = canonical_axis(axis_value, len(scores))
    outer, inner = count(scores, 0, axis), count(scores, axis + 1)
    if count(labels) != outer * inner:
        flat, spatial = fmt((outer * inner,)), fmt((*scores[:axis], *scores[axis + 1 :]))
        raise ShapeError(
            f"{count(labels)} labels for {outer * inner} predictions: scores {fmt(scores)} with "
            f"classes on axis {axis} need {outer * inner} labels, got {fmt(labels)}",
            hint=f"bottom '{s.lp.bottom[1]}' should have shape {flat}" + (f" or {spatial}" if spatial != flat else ""),
        )
    return axis, outer, inner


def _batched(bottoms: Sequence[Shape]) -> None:
    """Caffe's LossLayer reads every bottom's first axis as the batch: a 0-axis bottom has none."""
    for i, b in enumerate(bottoms):
        at_least_axes(b, 1, "(N, ...)", f"bottom {i}")


def _labels_moved(labels: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    return labels.reshape(outer, inner).long()


def outer_inner(x: torch.Tensor, axis: int) -> tuple[int, int]:
    """The number of items before `axis` and of positions after it, from the runtime shape (so that a
    compiled net takes any batch size)."""
    return math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1 :])


class _Loss(LayerDef):
    category = "loss"
    loss = True
    train_only = True
    bottoms = Arity(2, 2)


class _Classifier(_Loss):
    """A loss whose second bottom holds class indices into axis 1 of its first."""

    def class_axis(self, s: LayerSpec) -> int | None:
        return 1


@register
class SoftmaxWithLoss(_Classifier):
    """Softmax over `softmax_param.axis` followed by the multinomial logistic loss of the labels;
    the optional second top is the probabilities.

    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
    """

    type = "SoftmaxWithLoss"
    param_field = "softmax_param"
    tops = Arity(1, 2)
    examples = (
        Example("", (In((4, 5)), In((4,), "label", 5))),
        Example("loss_param { ignore_label: 1 normalization: FULL }", (In((2, 3, 2, 2)), In((2, 2, 2), "label", 3))),
        Example(
            "loss_param { normalization: BATCH_SIZE } loss_weight: 2 loss_weight: 0",
            (In((3, 4)), In((3,), "label", 4)),
            tops=2,
        ),
    )

    def class_axis(self, s: LayerSpec) -> int | None:
        return s.p.axis

    def counted(self, s: LayerSpec, label: torch.Tensor) -> torch.Tensor | None:
        return _kept(label, self.ignore_label(s)) if normalization(s) == L.VALID else None

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _label_axis(s, bottoms[0], bottoms[1], s.p.axis)
        return [SCALAR, bottoms[0]][: s.num_tops]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        axis, _, _ = _label_axis(s, bottoms[0], bottoms[1], s.p.axis)
        mode = normalization(s)
        ignore = self.ignore_label(s)
        with_prob = s.num_tops == 2
        classes = bottoms[0][axis]
        log_min = math.log(FLT_MIN)

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            scores, labels = xs[0], xs[1]
            outer, inner = outer_inner(scores, axis)
            logp = torch.log_softmax(scores, axis).reshape(outer, classes, inner)
            y = _labels_moved(labels.detach(), outer, inner)
            valid = None
            if ignore is not None:
                keep = y != ignore
                y = torch.where(keep, y, torch.zeros_like(y))
            # Caffe's log(max(p, FLT_MIN)) on the picked entries only: the clamp needs no pass over all classes
            picked = caffe_grad_clamp(logp.gather(1, y.unsqueeze(1)).squeeze(1), log_min)
            if ignore is not None:
                picked = picked * keep
                valid = keep.sum().to(scores.dtype)
            loss = -picked.sum() / normalizer(mode, outer, inner, valid)
            if not with_prob:
                return [loss]
            return [loss, torch.exp(caffe_grad_clamp(logp, log_min)).reshape(scores.shape)]

        return forward


@register
class MultinomialLogisticLoss(_Classifier):
    """-log(p[label]) averaged over the batch, for bottoms that are already probabilities.

    layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label" top: "loss" }
    """

    type = "MultinomialLogisticLoss"
    examples = (Example("", (In((4, 5), "prob"), In((4,), "label", 5))),)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _batched(bottoms)
        probs, labels = bottoms
        if count(labels) != probs[0]:
            raise ShapeError(f"{count(labels)} labels for a batch of {probs[0]}: one label per item ({fmt(probs)})")
        return [SCALAR]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            num = xs[0].shape[0]
            p = xs[0].reshape(num, -1)
            y = xs[1].detach().reshape(num, 1).long()
            picked = caffe_grad_clamp(p.gather(1, y), LOG_THRESHOLD)
            return [-torch.log(picked).sum() / num]

        return forward


@register
class InfogainLoss(_Classifier):
    """The multinomial logistic loss weighted by an infogain matrix H: -sum_k H[label, k] log p_k
    averaged over the batch, for bottoms that are probabilities (one row of classes per item). H comes
    from `source` (a .binaryproto) or a third bottom; with H the identity this is
    MultinomialLogisticLoss. (The reference Caffe takes probabilities here; later BVLC sources apply a
    softmax first, so feed them Softmax's output to get the same loss.)

    layer { name: "loss" type: "InfogainLoss" bottom: "prob" bottom: "label" top: "loss"
            infogain_loss_param { source: "H.binaryproto" } }
    """

    type = "InfogainLoss"
    param_field = "infogain_loss_param"
    bottoms = Arity(2, 3)
    examples = (Example("", (In((4, 3), "prob"), In((4,), "label", 3), In((3, 3), "constant"))),)

    def check(self, s: LayerSpec) -> None:
        if s.num_bottoms == 2:
            require(
                bool(s.p.source), "give the infogain matrix: infogain_loss_param.source or a third bottom", "source"
            )
        require(s.p.axis == 1, "InfogainLoss takes one row of class probabilities per item (axis 1)", "axis")

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _batched(bottoms[:2])
        probs, labels = bottoms[0], bottoms[1]
        if count(labels) != probs[0]:
            raise ShapeError(f"{count(labels)} labels for a batch of {probs[0]}: one label per item ({fmt(probs)})")
        classes = count(probs, 1)
        h = bottoms[2] if len(bottoms) == 3 else self._matrix_shape(s)
        if count(h) != classes * classes:
            raise ShapeError(f"the infogain matrix has {count(h)} values; {classes} classes need {classes}x{classes}")
        return [SCALAR]

    def _read_matrix(self, s: LayerSpec) -> Any:
        from netspec.caffemodel import read_binaryproto

        path = probe.resolve(s.p.source, s.base_dir, "infogain_loss_param.source")
        try:
            return read_binaryproto(path)
        except DataError as e:
            e.field = "source"  # the error points at the field that names the file
            raise

    def _matrix_shape(self, s: LayerSpec) -> Shape:
        return (self._read_matrix(s).size,)

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        classes = count(bottoms[0], 1)
        fixed = None
        if len(bottoms) == 2:
            fixed = torch.tensor(self._read_matrix(s).ravel(), dtype=torch.float32)

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            num = xs[0].shape[0]
            p = xs[0].reshape(num, classes)
            h = (xs[2].detach() if fixed is None else fixed.to(p.device, p.dtype)).reshape(classes, classes)
            rows = h[xs[1].detach().reshape(num).long()]  # H[label, k]
            return [-(rows * torch.log(caffe_grad_clamp(p, LOG_THRESHOLD))).sum() / num]

        return forward


@register
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / (2N), N the size of axis 0.

    layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "target" top: "loss" }
    """

    type = "EuclideanLoss"
    examples = (Example("", (In((4, 3)), In((4, 3)))),)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _batched(bottoms)
        a, b = bottoms
        if count(a, 1) != count(b, 1) or a[:1] != b[:1]:
            raise ShapeError(
                f"the two bottoms need the same shape, got {fmt(a)} and {fmt(b)}", hint=describe_bottoms(s, bottoms)
            )
        return [SCALAR]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            diff = xs[0] - xs[1].reshape(xs[0].shape)
            return [(diff * diff).sum() / (2 * xs[0].shape[0])]

        return forward


@register
class HingeLoss(_Classifier):
    """One-versus-all hinge loss: for each class, max(0, 1 - s) for the label's score and max(0, 1 + s)
    for every other score, summed (L1) or squared and summed (L2), divided by the batch size.

    layer { name: "loss" type: "HingeLoss" bottom: "ip2" bottom: "label" top: "loss"
            hinge_loss_param { norm: L2 } }
    """

    type = "HingeLoss"
    param_field = "hinge_loss_param"
    examples = (
        Example("", (In((4, 5)), In((4,), "label", 5))),
        Example("hinge_loss_param { norm: L2 }", (In((4, 5)), In((4,), "label", 5))),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _batched(bottoms)
        scores, labels = bottoms
        if count(labels) != scores[0]:
            raise ShapeError(f"{count(labels)} labels for a batch of {scores[0]} ({fmt(scores)})")
        return [SCALAR]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch
        import torch.nn.functional as F

        squared = s.p.norm == s.p.L2

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            num = xs[0].shape[0]
            scores = xs[0].reshape(num, -1)
            y = xs[1].detach().reshape(num).long()
            sign = 1 - 2 * F.one_hot(y, scores.shape[1]).to(scores.dtype)
            margin = torch.relu(1 + scores * sign)
            return [((margin * margin) if squared else margin).sum() / num]

        return forward


@register
class SigmoidCrossEntropyLoss(_Loss):
    """Binary cross-entropy of sigmoid(x) against targets in [0, 1], computed stably; divided by the
    batch size unless loss_param says otherwise.

    layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "logits" bottom: "targets" top: "loss" }
    """

    type = "SigmoidCrossEntropyLoss"
    examples = (
        Example("", (In((4, 3)), In((4, 3), "binary"))),
        Example("loss_param { ignore_label: -1 normalization: VALID }", (In((4, 3)), In((4, 3), "binary"))),
    )

    def counted(self, s: LayerSpec, label: torch.Tensor) -> torch.Tensor | None:
        return _kept(label.long(), self.ignore_label(s)) if normalization(s, L.BATCH_SIZE) == L.VALID else None

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _batched(bottoms)
        a, b = bottoms
        if count(a) != count(b):
            raise ShapeError(f"scores {fmt(a)} and targets {fmt(b)} need the same number of values")
        return [SCALAR]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch
        import torch.nn.functional as F

        mode = normalization(s, L.BATCH_SIZE)
        ignore = self.ignore_label(s)

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x, t = xs[0], xs[1].reshape(xs[0].shape)
            outer = x.shape[0]
            inner = x.numel() // outer if outer else 0
            if ignore is None:
                total = F.binary_cross_entropy_with_logits(x, t, reduction="sum")
                return [total / normalizer(mode, outer, inner, None)]
            keep = t.detach().to(torch.int64) != ignore
            per = F.binary_cross_entropy_with_logits(x, torch.where(keep, t, torch.zeros_like(t)), reduction="none")
            valid = keep.sum().to(x.dtype)
            return [(per * keep).sum() / normalizer(mode, outer, inner, valid)]

        return forward


@register
class ContrastiveLoss(_Loss):
    """For pairs (a, b) with a similarity label y: d^2 for similar pairs (y != 0) and
    max(margin - d, 0)^2 for dissimilar ones (max(margin - d^2, 0) with legacy_version), over 2N.

    layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p" bottom: "sim"
            top: "loss" contrastive_loss_param { margin: 1 } }
    """

    type = "ContrastiveLoss"
    param_field = "contrastive_loss_param"
    bottoms = Arity(3, 3)
    examples = (
        Example("contrastive_loss_param { margin: 2 }", (In((4, 3)), In((4, 3)), In((4,), "binary"))),
        Example(
            "contrastive_loss_param { margin: 2 legacy_version: true }", (In((4, 3)), In((4, 3)), In((4,), "binary"))
        ),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        _batched(bottoms)
        a, b, y = bottoms
        if a != b:
            raise ShapeError(f"the two feature bottoms differ: {fmt(a)} and {fmt(b)}")
        if count(y) != a[0]:
            raise ShapeError(f"{count(y)} similarity labels for {a[0]} pairs")
        return [SCALAR]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        margin, legacy = s.p.margin, s.p.legacy_version

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            num = xs[0].shape[0]
            diff = (xs[0] - xs[1]).reshape(num, -1)
            dist_sq = (diff * diff).sum(1)
            similar = xs[2].detach().reshape(num).to(torch.int64) != 0
            if legacy:
                dissimilar = torch.relu(margin - dist_sq)
            else:
                # Caffe's gradient of max(margin - d, 0)^2 with respect to d^2 is -(margin - d)/(d + 1e-4)
                dist = torch.sqrt(dist_sq.detach())
                gap = torch.relu(margin - dist)
                slope = -gap / (dist + 1e-4)
                dissimilar = gap * gap + slope * (dist_sq - dist_sq.detach())
            per_pair = torch.where(similar, dist_sq, dissimilar)
            return [per_pair.sum() / (2 * num)]

        return forward


@register
class Accuracy(LayerDef):
    """The fraction of predictions whose label is among the top_k scores (ties count against it);
    the optional second top holds the accuracy of each class. No gradient.

    layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
            include { phase: TEST } }
    """

    type = "Accuracy"
    param_field = "accuracy_param"
    category = "loss"
    train_only = True
    bottoms = Arity(2, 2)
    tops = Arity(1, 2)
    examples = (
        Example("accuracy_param { top_k: 2 }", (In((6, 4)), In((6,), "label", 4)), gradcheck=False),
        Example("accuracy_param { ignore_label: 0 }", (In((2, 3, 2)), In((2, 2), "label", 3)), tops=2, gradcheck=False),
    )

    def class_axis(self, s: LayerSpec) -> int | None:
        return s.p.axis

    def ignore_label(self, s: LayerSpec) -> int | None:
        return s.p.ignore_label if s.p.HasField("ignore_label") else None

    def counted(self, s: LayerSpec, label: torch.Tensor) -> torch.Tensor | None:
        return _kept(label, self.ignore_label(s))

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        axis, _, _ = _label_axis(s, bottoms[0], bottoms[1], s.p.axis)
        classes = bottoms[0][axis]
        require(s.p.top_k <= classes, f"top_k {s.p.top_k} exceeds the {classes} classes", "top_k")
        return [SCALAR, (classes,)][: s.num_tops]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        axis, _, _ = _label_axis(s, bottoms[0], bottoms[1], s.p.axis)
        classes, top_k = bottoms[0][axis], s.p.top_k
        ignore = self.ignore_label(s)
        per_class = s.num_tops == 2

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            outer, inner = outer_inner(xs[0], axis)
            scores = xs[0].detach().reshape(outer, classes, inner)
            y = _labels_moved(xs[1].detach(), outer, inner)
            keep = y != ignore if ignore is not None else torch.ones_like(y, dtype=torch.bool)
            safe = torch.where(keep, y, torch.zeros_like(y))
            true_score = scores.gather(1, safe.unsqueeze(1))
            right = ((scores >= true_score).sum(1) <= top_k) & keep
            total = keep.sum().clamp_min(1).to(scores.dtype)
            out = [right.sum().to(scores.dtype) / total]  # 0 when every label is ignored, as Caffe
            if per_class:
                hits = torch.zeros(classes, dtype=scores.dtype, device=scores.device)
                seen = torch.zeros(classes, dtype=scores.dtype, device=scores.device)
                hits.index_add_(0, safe[keep], right[keep].to(scores.dtype))
                seen.index_add_(0, safe[keep], torch.ones_like(safe[keep], dtype=scores.dtype))
                out.append(torch.where(seen > 0, hits / seen.clamp_min(1), torch.zeros_like(seen)))
            return out

        return forward
