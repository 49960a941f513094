"""Training-step time of netspec against hand-written PyTorch (and real Caffe) on every net that trains.

The nets: LeNet with Caffe's MNIST solver (SGD, momentum 0.9, weight decay 5e-4, bias lr x2, `inv`),
CIFAR-10 quick with its solver, and every spec in models/ with a solver section. Each is timed four ways,
each in its own fresh process (so that no side shares an allocator, caches or thread pools with another),
the processes in a shuffled order:

  hand   a hand-written nn.Module and torch.optim (SGD or Adam, same hyperparameters, same schedule,
         lr x2 for biases where the spec says so) stepping on tensors made once; it reads the loss each
         step, as a loop that displays it does.
  step   netspec.Solver(solver).step({"data": x, "label": y}) with numpy arrays, the API path.
  train  `netspec train`'s loop (Solver.solve) on in-memory data: the data layer is a Dataset reading an
         .npz file, and the time per step is the time between the starts of successive steps, so it
         includes the loop's own work (data batches, progress, metrics) but not start-up or tests.
  caffe  real Caffe's `caffe train` on the same net (its data layer replaced by DummyData; netspec-only
         fillers and the cosine policy replaced by Caffe's xavier and fixed): the time between successive
         "Iteration N" lines of its log. Only with --caffe (see tools/crosscheck_caffe.py for unpacking
         Debian's caffe package; LD_LIBRARY_PATH must name its libraries). That package's libblas.so.3 is
         the slow reference BLAS: unpack libopenblas0-pthread too and put its openblas-pthread folder
         first in LD_LIBRARY_PATH, to time Caffe as it is built to run.

Each process warms up, then times blocks of steps; its figure is the median block. The table gives the
median over processes and the ratios of the medians; `noise` is the largest spread (max - min over
processes, relative to the median) of the figures that enter a row's ratios. On a busy machine, run
with --threads 1 and read the CPU-time ratios (process CPU time per step), which preemption by other
processes does not inflate; wall time is what Caffe can be compared on.

    python tools/bench/train_step.py [--cases lenet,cifar10_quick] [--processes 3] [--threads 1]
        [--caffe PATH/TO/caffe]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import text_format
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netspec._proto import netspec_pb2 as pb  # noqa: E402 (after the path setup)

MNIST_SOLVER = 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75'
CIFAR_QUICK_SOLVER = 'base_lr: 0.001 momentum: 0.9 weight_decay: 0.004 lr_policy: "fixed"'


def _conv(name: str, bottom: str, n: int, k: int, pad: int, std: float) -> str:
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" param {{ lr_mult: 1 }} '
        f"param {{ lr_mult: 2 }} convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} stride: 1 "
        f'weight_filler {{ type: "gaussian" std: {std} }} bias_filler {{ type: "constant" }} }} }}\n'
    )


def _pool(name: str, bottom: str, method: str) -> str:
    return (
        f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
        f"pooling_param {{ pool: {method} kernel_size: 3 stride: 2 }} }}\n"
    )


def _relu(blob: str) -> str:
    return f'layer {{ name: "relu_{blob}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def _ip(name: str, bottom: str, n: int, std: float) -> str:
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" param {{ lr_mult: 1 }} '
        f"param {{ lr_mult: 2 }} inner_product_param {{ num_output: {n} "
        f'weight_filler {{ type: "gaussian" std: {std} }} bias_filler {{ type: "constant" }} }} }}\n'
    )


# BVLC Caffe's examples/cifar10/cifar10_quick_train_test.prototxt, its TRAIN net fed by Input layers
CIFAR10_QUICK = (
    'name: "CIFAR10_quick"\n'
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 100 dim: 3 dim: 32 dim: 32 } } }\n'
    'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 100 } } }\n'
    + _conv("conv1", "data", 32, 5, 2, 0.0001)
    + _pool("pool1", "conv1", "MAX")
    + _relu("pool1")
    + _conv("conv2", "pool1", 32, 5, 2, 0.01)
    + _relu("conv2")
    + _pool("pool2", "conv2", "AVE")
    + _conv("conv3", "pool2", 64, 5, 2, 0.01)
    + _relu("conv3")
    + _pool("pool3", "conv3", "AVE")
    + _ip("ip1", "pool3", 64, 0.1)
    + _ip("ip2", "ip1", 10, 0.1)
    + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }\n'
)


# ---- the hand-written PyTorch nets ----------------------------------------------------------------------


def _mlp(*sizes: int, act: type[nn.Module] = nn.ReLU, drop: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [act()] + ([nn.Dropout(drop)] if drop else [])
    return nn.Sequential(*layers)


class _Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 5, padding=2), nn.ReLU())
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(16, 6, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1))


class _ResNetSmall(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def conv_bn() -> list[nn.Module]:
            return [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, momentum=0.001)]

        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, momentum=0.001))
        self.blocks = nn.ModuleList(nn.Sequential(*conv_bn(), nn.ReLU(), *conv_bn()) for _ in range(2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(x.mean((2, 3)))


class _LinearRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pred = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(x)


def _lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )  # fmt: skip


def _cifar10_quick() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10),
    )  # fmt: skip


def _digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10),
    )  # fmt: skip


def _keras_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Dropout(0.25), nn.Flatten(), nn.Linear(4608, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
    )  # fmt: skip


@dataclass(frozen=True)
class Case:
    source: str  # a YAML spec with a solver section, or a net prototxt (then `solver` gives the settings)
    hand: Callable[[], nn.Module]
    classes: int  # 0: a regression target
    solver: str = ""
    bias_lr2: bool = False  # the spec gives biases lr_mult 2 (Caffe's examples)


CASES = {
    "lenet": Case("models/lenet.prototxt", _lenet, 10, MNIST_SOLVER, True),
    "cifar10_quick": Case(CIFAR10_QUICK, _cifar10_quick, 10, CIFAR_QUICK_SOLVER, True),
    "digits_cnn": Case("models/digits_cnn.yaml", _digits_cnn, 10),
    "inception_small": Case("models/inception_small.yaml", _Inception, 10),
    "iris_mlp": Case("models/iris_mlp.yaml", lambda: _mlp(4, 16, 3), 3),
    "keras_cnn": Case("models/keras_cnn.yaml", _keras_cnn, 10),
    "linear_regression": Case("models/linear_regression.yaml", _LinearRegression, 0),
    "logistic_regression": Case("models/logistic_regression.yaml", lambda: _mlp(4, 3), 3),
    "mlp_text": Case("models/mlp_text.yaml", lambda: _mlp(300, 2048, 256, 20, drop=0.4), 20),
    "resnet_small": Case("models/resnet_small.yaml", _ResNetSmall, 10),
    "wine_mlp": Case("models/wine_mlp.yaml", lambda: _mlp(13, 32, 3), 3),
    "xor_train": Case("models/xor_train.yaml", lambda: _mlp(2, 4, 2, act=nn.Tanh), 2),
}
SIDES = ("hand", "step", "train", "caffe")


# ---- the nets and solvers each side runs -------------------------------------------------------------------


def _config(case: Case, work: Path) -> tuple[pb.NetParameter, pb.SolverParameter, dict[str, tuple[int, ...]]]:
    """The case's TRAIN net as a message, its solver settings, and the shapes of the blobs its data layer or
    Input layers give (the batch's)."""
    from netspec.net import build_net
    from netspec.train.config import load_config

    if case.solver:
        net_file = ROOT / case.source if case.source.endswith(".prototxt") else work / "net.prototxt"
        if not net_file.is_file():
            net_file.write_text(case.source)
        (work / "base_solver.prototxt").write_text(f'{case.solver} max_iter: 1000 net: "{net_file}"\n')
        config = load_config(str(work / "base_solver.prototxt"))
    else:
        config = load_config(str(ROOT / case.source))
    train = config.train
    net = build_net(train.spec, "TRAIN", train.stages, train.level)
    message = pb.NetParameter()
    message.CopyFrom(train.spec.message)
    for name in ("solver", "sweep"):
        if message.DESCRIPTOR.fields_by_name.get(name) is not None:
            message.ClearField(name)
    return message, config.param, dict(net.inputs)


def _with_data(net: pb.NetParameter, layers: list[pb.LayerParameter]) -> pb.NetParameter:
    """The net with its data and Input layers replaced by `layers`."""
    from netspec.layers import get as get_layer

    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.layer.extend(layers)
    out.layer.extend(layer for layer in net.layer if not get_layer(layer.type).feeds)
    return out


def _arrays(case: Case, shapes: dict[str, tuple[int, ...]], records: int | None = None) -> dict[str, np.ndarray]:
    """Random data of the batch's shapes (or `records` of them): values in [0, 1), labels class indices."""
    rng = np.random.default_rng(0)
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        shape = (records, *shape[1:]) if records else shape
        if i == 1 and case.classes:
            out[name] = rng.integers(0, case.classes, shape).astype(np.float32)
        else:
            out[name] = rng.random(shape, dtype=np.float32)
    return out


def _solver_text(param: pb.SolverParameter, net: pb.NetParameter, max_iter: int, caffe: bool) -> str:
    p = pb.SolverParameter()
    p.CopyFrom(param)
    for name in ("net", "train_net", "max_epoch", "test_interval", "test_iter", "snapshot", "display"):
        p.ClearField(name)
    if caffe:  # Caffe 1.0 has no cosine policy (the time is the same) and none of netspec's solver fields
        keep = pb.SolverParameter()
        for name in ("type", "base_lr", "momentum", "momentum2", "delta", "weight_decay", "lr_policy", "gamma",
                     "power", "stepsize", "regularization_type", "random_seed"):  # fmt: skip
            if p.HasField(name):
                setattr(keep, name, getattr(p, name))
        if keep.lr_policy == "cosine":
            keep.lr_policy = "fixed"
        keep.solver_mode = pb.SolverParameter.CPU
        keep.display = 1
        keep.snapshot_after_train = False
        p = keep
    p.max_iter = max_iter
    p.net_param.CopyFrom(net)
    return text_format.MessageToString(p)


def _caffe_net(net: pb.NetParameter, shapes: dict[str, tuple[int, ...]]) -> pb.NetParameter:
    dummy = pb.LayerParameter(name="dummy", type="DummyData", top=list(shapes))
    for shape in shapes.values():
        dummy.dummy_data_param.shape.add(dim=list(shape))
        dummy.dummy_data_param.data_filler.add(type="uniform")
    out = _with_data(net, [dummy])
    for layer in out.layer:  # netspec's filler names; the values play no part in the time
        for field in ("convolution_param", "inner_product_param"):
            if layer.HasField(field):
                for filler in (getattr(layer, field).weight_filler, getattr(layer, field).bias_filler):
                    if filler.type not in ("constant", "gaussian", "uniform", "xavier", "msra", "positive_unitball"):
                        filler.type = "xavier"
    return out


# ---- one side of one case, in this process -------------------------------------------------------------------


def _hand_step(case: Case, param: pb.SolverParameter, arrays: dict[str, np.ndarray]) -> Callable[[], float]:
    torch.manual_seed(1)
    model = case.hand()
    model.train()
    data, target = (torch.from_numpy(a) for a in arrays.values())
    target = target.long() if case.classes else target
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")] if case.bias_lr2 else []
    others = [p for p in model.parameters() if all(p is not b for b in biases)]
    groups: list[dict[str, Any]] = [{"params": others}] + (
        [{"params": biases, "lr": 2 * param.base_lr}] if biases else []
    )
    if param.type == "Adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            groups, lr=param.base_lr, betas=(param.momentum, param.momentum2), eps=param.delta,
            weight_decay=param.weight_decay,
        )  # fmt: skip
    else:
        opt = torch.optim.SGD(groups, lr=param.base_lr, momentum=param.momentum, weight_decay=param.weight_decay)
    policy = param.lr_policy
    factor: Callable[[int], float] | None = None
    if policy == "inv":
        factor = lambda it: (1 + param.gamma * it) ** -param.power  # noqa: E731
    elif policy == "cosine":
        factor = lambda it: (1 + math.cos(math.pi * min(it, 1000) / 1000)) / 2  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor) if factor else None
    # Caffe's linear_regression scales its target with a Power layer and takes half the mean squared error
    scale, shift = 0.012987013, -1.974026

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = model(data)
        if case.classes:
            loss = F.cross_entropy(out, target)
        else:
            loss = ((out.flatten() - (target * scale + shift)) ** 2).sum() / (2 * len(out))
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        return loss.item()

    return step


def measure(name: str, side: str, warmup: int, blocks: int, steps: int, caffe: str | None) -> dict[str, list[float]]:
    """Seconds per step (wall and this process's CPU time) of each timed block."""
    case = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        net, param, shapes = _config(case, work)
        if side == "caffe":
            return _caffe_times(case, net, param, shapes, work, warmup + blocks * steps, warmup, steps, caffe)
        if side == "train":
            return _train_times(case, net, param, shapes, work, warmup, blocks, steps)
        arrays = _arrays(case, shapes)
        if side == "hand":
            run = _hand_step(case, param, arrays)
        else:
            from netspec.train.solver import Solver

            inputs = [pb.LayerParameter(name=n, type="Input", top=[n]) for n in shapes]
            for layer, shape in zip(inputs, shapes.values(), strict=True):
                layer.input_param.shape.add(dim=list(shape))
            solver_file = work / "solver.prototxt"
            solver_file.write_text(_solver_text(param, _with_data(net, inputs), 10**9, caffe=False))
            solver = Solver(str(solver_file), device="cpu", quiet=True)
            run = lambda: solver.step(arrays)  # noqa: E731
        for _ in range(warmup):
            run()
        wall, cpu = [], []
        for _ in range(blocks):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                run()
            wall.append((time.perf_counter() - t) / steps)
            cpu.append((time.process_time() - c) / steps)
        return {"wall": wall, "cpu": cpu}


def _train_times(
    case: Case, net: pb.NetParameter, param: pb.SolverParameter, shapes: dict[str, tuple[int, ...]], work: Path,
    warmup: int, blocks: int, steps: int,
) -> dict[str, list[float]]:  # fmt: skip
    from netspec.train.solver import Solver

    batch = next(iter(shapes.values()))[0]
    arrays = _arrays(case, shapes, records=batch * 8)
    np.savez(work / "records.npz", data=arrays[next(iter(shapes))], label=list(arrays.values())[1])
    records = pb.LayerParameter(name="records", type="Dataset", top=list(shapes))
    records.dataset_param.source = str(work / "records.npz")
    records.dataset_param.batch_size = batch
    solver_file = work / "solver.prototxt"
    total = warmup + blocks * steps + 1
    solver_file.write_text(_solver_text(param, _with_data(net, [records]), total, caffe=False))
    solver = Solver(str(solver_file), device="cpu", quiet=True)
    stamps: list[tuple[float, float]] = []
    step = solver.step

    def stamped(inputs: dict[str, Any] | None = None) -> float:
        stamps.append((time.perf_counter(), time.process_time()))
        return step(inputs)

    solver.step = stamped  # type: ignore[method-assign]
    solver.solve()
    wall, cpu = [], []
    for b in range(blocks):
        (t0, c0), (t1, c1) = stamps[warmup + b * steps], stamps[warmup + (b + 1) * steps]
        wall.append((t1 - t0) / steps)
        cpu.append((c1 - c0) / steps)
    return {"wall": wall, "cpu": cpu}


LOG_LINE = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*\] Iteration (\d+)")


def _caffe_times(
    case: Case, net: pb.NetParameter, param: pb.SolverParameter, shapes: dict[str, tuple[int, ...]], work: Path,
    total: int, warmup: int, steps: int, caffe: str | None,
) -> dict[str, list[float]]:  # fmt: skip
    if caffe is None:
        raise SystemExit("the caffe side needs --caffe")
    solver_file = work / "solver.prototxt"
    solver_file.write_text(_solver_text(param, _caffe_net(net, shapes), total, caffe=True))
    threads = str(torch.get_num_threads())
    env = {**os.environ, "GLOG_logtostderr": "1", "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
    run = subprocess.run([caffe, "train", "-solver", str(solver_file)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}")
    seen: dict[int, float] = {}
    for line in run.stderr.splitlines():
        m = LOG_LINE.match(line)
        if m and int(m[4]) not in seen:
            seen[int(m[4])] = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    stamps = [seen[i] for i in sorted(seen) if i >= warmup]
    wall = [(stamps[i + steps] - stamps[i]) / steps for i in range(0, len(stamps) - steps, steps)]
    return {"wall": wall, "cpu": []}


# ---- the parent: fresh processes in a shuffled order, the table --------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--sides", default="hand,step,train,caffe", help="comma-separated: " + ", ".join(SIDES))
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per case and side")
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per process")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--threads", type=int, default=None, help="torch (and Caffe's OpenBLAS) threads")
    parser.add_argument("--caffe", help="Caffe's command-line tool; without it there is no Caffe column")
    parser.add_argument("--seed", type=int, default=0, help="of the shuffled order")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        name, side = args.child
        try:
            print(json.dumps(measure(name, side, args.warmup, args.blocks, args.steps, args.caffe)))
        except RuntimeError as e:  # Caffe refused the net: the table says so
            print(json.dumps({"error": str(e)[:120]}))
        return
    cases = args.cases.split(",")
    sides = [s for s in args.sides.split(",") if s != "caffe" or args.caffe]
    jobs = [(c, s) for c in cases for s in sides] * args.processes
    random.Random(args.seed).shuffle(jobs)
    common = ["--warmup", str(args.warmup), "--blocks", str(args.blocks), "--steps", str(args.steps)]
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--caffe", args.caffe] if args.caffe else []
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    errors: dict[tuple[str, str], str] = {}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(jobs)} fresh processes in a shuffled "
        f"order, each {args.warmup} warm-up steps then the median of {args.blocks} blocks of {args.steps} steps",
        flush=True,
    )
    for i, (case, side) in enumerate(jobs):
        command = [sys.executable, __file__, "--child", case, side, *common]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{case} {side} failed:\n{run.stderr[-3000:]}")
        out = json.loads(run.stdout.strip().splitlines()[-1])
        if "error" in out:
            errors[(case, side)] = out["error"]
            continue
        results.setdefault((case, side), []).append({k: statistics.median(v) for k, v in out.items() if v})
        print(f"  [{i + 1}/{len(jobs)}] {case} {side}", file=sys.stderr, flush=True)
    table(cases, sides, results, errors)


def table(
    cases: list[str], sides: list[str], results: dict[tuple[str, str], list[dict[str, float]]],
    errors: dict[tuple[str, str], str],
) -> None:  # fmt: skip
    def med(case: str, side: str, kind: str) -> float | None:
        values = [r[kind] for r in results.get((case, side), []) if kind in r]
        return statistics.median(values) if values else None

    def spread(case: str, side: str, kind: str) -> float:
        values = [r[kind] for r in results.get((case, side), []) if kind in r]
        return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:6.3f}" if a is not None and b else "     -"

    def ms(t: float | None) -> str:
        return f"{1000 * t:8.3f}" if t is not None else "       -"

    head = f"{'case':20s} {'hand ms':>8s} {'step ms':>8s} {'train ms':>8s}"
    head += " step/hand train/hand  cpu: step/hand train/hand"
    head += f" {'caffe ms':>8s} step/caffe" if "caffe" in sides else ""
    print(head + "  noise wall/cpu")
    for case in cases:
        w = {side: med(case, side, "wall") for side in sides}
        c = {side: med(case, side, "cpu") for side in sides if side != "caffe"}
        line = f"{case:20s} {ms(w.get('hand'))} {ms(w.get('step'))} {ms(w.get('train'))}"
        line += f"    {ratio(w.get('step'), w.get('hand'))}     {ratio(w.get('train'), w.get('hand'))}"
        line += f"          {ratio(c.get('step'), c.get('hand'))}     {ratio(c.get('train'), c.get('hand'))}"
        if "caffe" in sides:
            if (case, "caffe") in errors:
                line += f"  caffe: {errors[(case, 'caffe')]}"
            else:
                line += f" {ms(w.get('caffe'))}     {ratio(w.get('step'), w.get('caffe'))}"
        noise = [max((spread(case, s, k) for s in sides), default=0.0) for k in ("wall", "cpu")]
        print(f"{line}  {100 * noise[0]:4.0f}% {100 * noise[1]:4.0f}%")
    print(
        "ratios are of the medians over processes; noise (wall, cpu): the largest (max - min) / median over "
        "processes of the row's figures"
    )


if __name__ == "__main__":
    main()
