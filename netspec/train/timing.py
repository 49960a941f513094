"""`netspec time`: forward and backward milliseconds per layer and in total, as Caffe's `time` reports.

Forward time is measured around each layer's function by a hook on the module's own loop. Backward time
per layer is the time between the gradient reaching the layer's tops and its bottoms' gradients being
ready, observed with identity autograd functions placed around every layer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from netspec.lower.module import Call, NetModule, Step


class _Stamp(torch.autograd.Function):
    """Identity whose backward records when a gradient passes."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, record: list[float]) -> torch.Tensor:
        ctx.record = record
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.record.append(time.perf_counter())
        return g, None


def time_net(
    module: NetModule, inputs: dict[str, torch.Tensor], iterations: int, backward: bool
) -> list[tuple[str, str, float, float]]:
    """(layer, type, forward ms, backward ms) per layer, averaged over the iterations (after one warm-up)."""
    fwd: dict[str, float] = defaultdict(float)
    bwd: dict[str, float] = defaultdict(float)
    marks: dict[str, tuple[list[float], list[float]]] = {}  # this iteration's backward stamps per layer

    def timed(step: Step, xs: list[torch.Tensor], call: Call) -> list[torch.Tensor]:
        ends: list[float] = []
        starts: list[float] = []
        if backward:
            xs = [_Stamp.apply(x, ends) if x.requires_grad else x for x in xs]
        t0 = time.perf_counter()
        ys = call(xs)
        if it:  # iteration 0 warms up
            fwd[step.name] += time.perf_counter() - t0
        if backward:
            ys = [_Stamp.apply(y, starts) if y.requires_grad else y for y in ys]
        marks[step.name] = (starts, ends)
        return ys

    for it in range(iterations + 1):
        marks.clear()
        env = module.run(inputs, hook=timed)
        if backward:
            loss = sum(env[t].float().sum() for t in module.net.outputs if env[t].requires_grad)
            if isinstance(loss, torch.Tensor):
                loss.backward()
            if it:
                for name, (starts, ends) in marks.items():
                    if starts and ends:
                        bwd[name] += max(0.0, max(ends) - min(starts))
    rows = []
    for info in module.net.layers:
        name = info.node.name
        rows.append((name, info.node.type, 1000 * fwd[name] / iterations, 1000 * bwd[name] / iterations))
    return rows
