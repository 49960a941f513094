"""Training-step time of a netspec-compiled LeNet against a hand-written PyTorch LeNet, in one run.

Both train Caffe's MNIST LeNet (batch 64, 1x28x28) with Caffe's MNIST solver: SGD with momentum 0.9,
weight decay 5e-4, bias learning rate x2, the `inv` learning-rate policy. netspec runs the spec through
netspec.Solver (Caffe's exact update rule); the baseline is an nn.Module with torch.optim.SGD and a
LambdaLR schedule. Both read the loss value every step (as a training loop displaying it does). The
ratio is netspec's step time over the baseline's in the same trial; the two run in a shuffled order in
each trial, so that a drift in the machine's speed favours neither. The same work measures several percent
faster or slower from one process to the next on a shared machine (memory placement), so the measurement
is repeated in fresh processes and the reported ratio is the median over processes of each process's
median trial ratio.

    python tools/bench/train_step.py [--processes 5] [--trials 7] [--steps 50] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SOLVER = """base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75
max_iter: 1000000 random_seed: 1 net: "{net}"
"""


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.ip1 = nn.Linear(800, 500)
        self.ip2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2, 2, ceil_mode=True)
        x = F.max_pool2d(self.conv2(x), 2, 2, ceil_mode=True)
        return self.ip2(F.relu(self.ip1(x.flatten(1))))


def baseline(data: torch.Tensor, label: torch.Tensor):  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    model = LeNet()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights}, {"params": biases, "lr": 0.02}], lr=0.01, momentum=0.9, weight_decay=0.0005
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 + 0.0001 * it) ** -0.75)
    target = label.long()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.detach())

    return step


def netspec_step(data: torch.Tensor, label: torch.Tensor, workdir: Path):  # type: ignore[no-untyped-def]
    from netspec.train.solver import Solver

    solver_file = workdir / "solver.prototxt"
    solver_file.write_text(SOLVER.format(net=ROOT / "models" / "lenet.prototxt"))
    solver = Solver(str(solver_file), device="cpu", quiet=True)
    inputs = {"data": data, "label": label}
    return lambda: solver.step(inputs)


def timed(step, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def measure(steps_per_trial: int, trials: int) -> dict[str, list[float]]:
    """Seconds per step of each side, per trial, in this process."""
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(64, 1, 28, 28, generator=gen)
    label = torch.randint(0, 10, (64,), generator=gen).float()
    with tempfile.TemporaryDirectory() as tmp:
        steps = {"netspec": netspec_step(data, label, Path(tmp)), "pytorch": baseline(data, label)}
        for step in steps.values():
            timed(step, 20)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in steps}
        order = random.Random(0)
        for _ in range(trials):
            names = list(steps)
            order.shuffle(names)  # neither always runs first: a machine's speed drifts between runs
            for name in names:
                times[name].append(timed(steps[name], steps_per_trial))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="steps per trial")
    parser.add_argument("--trials", type=int, default=7, help="trials per process")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes to measure in")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.steps, args.trials)))
        return
    command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--trials", str(args.trials)]
    command += ["--threads", str(args.threads)] if args.threads else []
    ratios, all_times = [], {"netspec": [], "pytorch": []}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, LeNet batch 64, {args.processes} processes "
        f"x {args.trials} trials x {args.steps} steps"
    )
    for i in range(args.processes):
        times = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        ratio = statistics.median(a / b for a, b in zip(times["netspec"], times["pytorch"], strict=True))
        ratios.append(ratio)
        for name in all_times:
            all_times[name] += times[name]
        print(
            f"  process {i + 1}: netspec {1000 * statistics.median(times['netspec']):7.3f} ms/step, pytorch "
            f"{1000 * statistics.median(times['pytorch']):7.3f} ms/step, ratio {ratio:.3f}"
        )
    for name, t in all_times.items():
        med = statistics.median(t)
        print(f"  {name:8s} {1000 * med:7.3f} ms/step  ({64 / med:,.0f} samples/s)")
    print(
        f"ratio netspec / pytorch = {statistics.median(ratios):.3f} (median over processes; each is the median "
        f"of its trials' ratios; range {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
