"""Learning-rate policies: Caffe's formulas (iter = updates done so far), netspec's cosine, and warm-up."""

from __future__ import annotations

import math

from netspec._proto import netspec_pb2 as pb


class Schedule:
    """The learning rate at each iteration. Keeps multistep's current step as Caffe does (it advances
    by at most one step per iteration), so it is saved in snapshots."""

    def __init__(self, p: pb.SolverParameter, max_iter: int) -> None:
        self.p = p
        self.max_iter = max_iter
        self.current_step = 0

    def rate(self, it: int) -> float:
        p = self.p
        policy, base = p.lr_policy, p.base_lr
        if policy == "fixed":
            rate = base
        elif policy == "step":
            rate = base * p.gamma ** (it // p.stepsize)
        elif policy == "exp":
            rate = base * p.gamma**it
        elif policy == "inv":
            rate = base * (1 + p.gamma * it) ** (-p.power)
        elif policy == "multistep":
            if self.current_step < len(p.stepvalue) and it >= p.stepvalue[self.current_step]:
                self.current_step += 1
            rate = base * p.gamma**self.current_step
        elif policy == "poly":
            rate = base * (1 - it / self.max_iter) ** p.power
        elif policy == "sigmoid":
            rate = base / (1 + math.exp(-p.gamma * (it - p.stepsize)))
        else:  # cosine
            rate = p.min_lr + (base - p.min_lr) * (1 + math.cos(math.pi * min(it, self.max_iter) / self.max_iter)) / 2
        if it < p.warmup_iter:
            rate *= p.warmup_start + (1 - p.warmup_start) * it / p.warmup_iter
        return rate
