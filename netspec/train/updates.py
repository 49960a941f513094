"""Parameter updates: Caffe's solvers exactly as Caffe computes them, and netspec's additions.

Caffe keeps the learning rate inside its momentum buffer (v = m v + lr g; w -= v), adds weight decay to
the gradient before the solver sees it, clips the summed gradient of all blobs before dividing it by
iter_size, and does not bias-correct Adam's epsilon. AdamW, Adamax and NAdam follow their papers (and
torch.optim). Every rule works in place on the parameter tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch

from netspec._proto import netspec_pb2 as pb


@dataclass
class Learnable:
    """One learnable blob with its multipliers and the solver's history for it."""

    key: str
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    history: list[torch.Tensor] = field(default_factory=list)

    @property
    def grad(self) -> torch.Tensor:
        """The accumulated gradient; Updater.step() gives each blob one before reading it."""
        return cast(torch.Tensor, self.tensor.grad)


Groups = dict[tuple[float, float], tuple[list[torch.Tensor], list[list[torch.Tensor]]]]
"""Blobs by (lr_mult, decay_mult): their weights and, per history slot, their histories."""
Rule = Callable[["Updater", Learnable, torch.Tensor, float, int], torch.Tensor]


class Updater:
    """Applies one solver update to every learnable blob from their accumulated gradients."""

    def __init__(self, p: pb.SolverParameter, blobs: list[Learnable]) -> None:
        self.p = p
        self.blobs = blobs
        self.rule = RULES[p.type]
        self.slots = SLOTS[p.type]
        self.decoupled = p.decoupled_weight_decay or p.type == "AdamW"
        for b in blobs:
            b.history = [torch.zeros_like(b.tensor) for _ in range(self.slots)]
        # The common cases, Caffe's SGD with momentum and Adam with L2 decay, run on torch's fused kernels,
        # per group of equal multipliers (the kernel's SGD keeps no history without momentum, which snapshots
        # hold: that case runs per blob, as the others do)
        self._groups: Groups | None = None
        fused = p.type == "Adam" or (p.type == "SGD" and p.momentum)
        if fused and p.regularization_type == "L2" and not self.decoupled:
            self._groups = {}
            for b in blobs:
                weights, history = self._groups.setdefault((b.lr_mult, b.decay_mult), ([], [[] for _ in b.history]))
                weights.append(b.tensor)
                for slot, h in zip(history, b.history, strict=True):
                    slot.append(h)

    def grad_norm(self) -> float:
        grads = [b.tensor.grad for b in self.blobs if b.tensor.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))

    def gradients_finite(self) -> bool:
        """Whether every accumulated gradient is finite (one reduction per blob, one sync)."""
        grads = [b.tensor.grad for b in self.blobs if b.tensor.grad is not None]
        return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    @torch.no_grad()
    def apply(self, rate: float, it: int) -> None:
        """One update with learning rate `rate`; `it` is the number of updates done so far. The
        gradients are scaled and regularised in place (they are cleared before the next iteration)."""
        p = self.p
        scale = 1.0 / p.iter_size
        if p.clip_gradients >= 0:
            norm = self.grad_norm()
            if norm > p.clip_gradients:
                scale *= p.clip_gradients / norm
        for b in self.blobs:
            if b.tensor.grad is None:
                b.tensor.grad = torch.zeros_like(b.tensor)
        if self._groups is not None:
            self._fused(self._groups, rate, scale, it)
            return
        grads = [b.grad for b in self.blobs]
        if scale != 1.0:
            torch._foreach_mul_(grads, scale)
        for b in self.blobs:
            w, g = b.tensor, b.grad
            decay = p.weight_decay * b.decay_mult
            local_rate = rate * b.lr_mult
            if decay and not self.decoupled:
                if p.regularization_type == "L2":
                    g.add_(w, alpha=decay)
                else:
                    g.add_(torch.sign(w), alpha=decay)
            elif decay and local_rate:
                w.mul_(1 - local_rate * decay)  # decoupled: shrink the weights directly
            w.sub_(self.rule(self, b, g, local_rate, it))

    def _fused(self, groups: Groups, rate: float, scale: float, it: int) -> None:
        """Caffe's SGD or Adam with L2 decay for each group of blobs in one pass of torch's fused kernel,
        which reads each weight, gradient and history once where separate ops read them several times.

        SGD: the kernel computes buf = m buf + (g / grad_scale + wd w); w -= lr buf, so Caffe's v = m v +
        rate (scale g + decay w); w -= v is lr 1, wd = rate * decay and grad_scale = 1 / (rate * scale).
        Adam: the kernel divides by sqrt(v / c2) + eps, Caffe by (sqrt(v) + delta) / sqrt(c2) (its epsilon
        is not bias-corrected), so eps = delta / sqrt(c2), with c2 = 1 - momentum2^t. The sums are Caffe's,
        rounded differently by a unit in the last place."""
        p = self.p
        for (lr_mult, decay_mult), (weights, history) in groups.items():
            local = rate * lr_mult
            grads = [cast(torch.Tensor, w.grad) for w in weights]  # apply() gave each one
            decay = p.weight_decay * decay_mult
            if p.type == "SGD":
                inverse = 1.0 / (local * scale) if local * scale else math.inf  # g / inf = 0: no step from g
                torch._fused_sgd_(
                    weights,
                    grads,
                    history[0],
                    weight_decay=local * decay,
                    momentum=p.momentum,
                    lr=1.0,
                    dampening=0.0,
                    nesterov=False,
                    maximize=False,
                    is_first_step=False,
                    grad_scale=_scalar(inverse, weights[0]),
                )
                continue
            t = it + 1
            torch._fused_adam_(
                weights,
                grads,
                history[0],
                history[1],
                [],
                [_scalar(float(t), weights[0])] * len(weights),
                lr=local,
                beta1=p.momentum,
                beta2=p.momentum2,
                weight_decay=decay,
                eps=p.delta / math.sqrt(1 - p.momentum2**t),
                amsgrad=False,
                maximize=False,
                grad_scale=_scalar(1.0 / scale, weights[0]) if scale != 1.0 else None,
            )


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _sgd(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    (v,) = b.history
    v.mul_(u.p.momentum).add_(g, alpha=rate)
    return v


def _nesterov(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    (v,) = b.history
    previous = v.clone()
    v.mul_(u.p.momentum).add_(g, alpha=rate)
    return v * (1 + u.p.momentum) - previous * u.p.momentum


def _adagrad(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    (h,) = b.history
    h.add_(g * g)
    return rate * g / (h.sqrt() + u.p.delta)


def _rmsprop(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    (h,) = b.history
    d = u.p.rms_decay
    h.mul_(d).add_(g * g, alpha=1 - d)
    return rate * g / (h.sqrt() + u.p.delta)


def _adadelta(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    grad_sq, update_sq = b.history
    m, delta = u.p.momentum, u.p.delta
    grad_sq.mul_(m).add_(g * g, alpha=1 - m)
    step = g * torch.sqrt((update_sq + delta) / (grad_sq + delta))
    update_sq.mul_(m).add_(step * step, alpha=1 - m)
    return rate * step


def _moments(u: Updater, b: Learnable, g: torch.Tensor, it: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Adam's running first and second moments, updated with g, and their bias corrections at step it."""
    m, v = b.history
    b1, b2, t = u.p.momentum, u.p.momentum2, it + 1
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).add_(g * g, alpha=1 - b2)
    return m, v, 1 - b1**t, 1 - b2**t


def _adam(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    m, v, c1, c2 = _moments(u, b, g, it)
    correction = math.sqrt(c2) / c1
    return rate * correction * m / (v.sqrt() + u.p.delta)  # Caffe: epsilon is not bias-corrected


def _adamw(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    m, v, c1, c2 = _moments(u, b, g, it)
    return rate / c1 * m / ((v / c2).sqrt() + u.p.delta)


def _adamax(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    m, peak = b.history
    b1, b2, t = u.p.momentum, u.p.momentum2, it + 1
    m.mul_(b1).add_(g, alpha=1 - b1)
    torch.maximum(peak * b2, g.abs() + u.p.delta, out=peak)
    return rate / (1 - b1**t) * m / peak


def _nadam(u: Updater, b: Learnable, g: torch.Tensor, rate: float, it: int) -> torch.Tensor:
    """NAdam with torch.optim.NAdam's momentum schedule (momentum_decay 0.004)."""
    m, v, mu_product = b.history
    b1, b2, t = u.p.momentum, u.p.momentum2, it + 1
    mu = b1 * (1 - 0.5 * 0.96 ** (t * 0.004))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * 0.004))
    if t == 1:
        mu_product.fill_(1.0)
    mu_product.mul_(mu)
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).add_(g * g, alpha=1 - b2)
    denom = (v / (1 - b2**t)).sqrt() + u.p.delta
    first = g * (rate * (1 - mu) / (1 - mu_product))
    second = m * (rate * mu_next / (1 - mu_product * mu_next))
    return (first + second) / denom


RULES: dict[str, Rule] = {
    "SGD": _sgd,
    "Nesterov": _nesterov,
    "AdaGrad": _adagrad,
    "RMSProp": _rmsprop,
    "AdaDelta": _adadelta,
    "Adam": _adam,
    "AdamW": _adamw,
    "Adamax": _adamax,
    "NAdam": _nadam,
}
SLOTS = {
    "SGD": 1,
    "Nesterov": 1,
    "AdaGrad": 1,
    "RMSProp": 1,
    "AdaDelta": 2,
    "Adam": 2,
    "AdamW": 2,
    "Adamax": 2,
    "NAdam": 3,
}
