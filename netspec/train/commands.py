"""What `netspec train`, `test` and `time` do, as library calls the command line wraps."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from netspec.data.feeder import Feeder, Transform
from netspec.errors import NetspecError, SolverError
from netspec.files import output_folder
from netspec.lower.module import NetModule, compile_net
from netspec.lower.weights import apply_weights, read_weights
from netspec.net import Net, build_net
from netspec.netfile import read_net
from netspec.train.accel import check_compile, compare
from netspec.train.solver import Solver, amp_dtype, counted_outputs, pick_device
from netspec.train.timing import time_net


def default_out_dir(spec: str) -> Path:
    """runs/<spec name>, or runs/<spec name>-2, -3, ... so that no earlier run is overwritten."""
    base = Path("runs") / Path(spec).stem
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def train(
    spec: str,
    *,
    solver_file: str | None = None,
    weights: str | None = None,
    resume: str | None = None,
    overrides: tuple[str, ...] = (),
    out: str | None = None,
    device: str | None = None,
    amp: str | None = None,
    compile: bool = False,
    channels_last: bool = False,
    overfit: int | None = None,
    allow_missing: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Trains a spec to the end and returns a summary (what `netspec train` prints)."""
    if resume is not None and weights is not None:
        raise SolverError("give --weights or --resume, not both (a snapshot holds its own weights)")
    out_dir = Path(out) if out else (Path(resume).parent if resume else default_out_dir(spec))
    solver = Solver(
        spec,
        solver_file=solver_file,
        overrides=overrides,
        device=device,
        amp=amp,
        compile=compile,
        channels_last=channels_last,
        out_dir=out_dir,
        quiet=quiet,
    )
    report = None
    if weights is not None:
        report = apply_weights(solver.net.caffe_params(), read_weights(weights), weights, allow_missing)
    if overfit is not None:
        if solver.world is not None:
            raise SolverError("--overfit trains in one process, not in a distributed run")
        return _overfit(solver, overfit)
    summary = solver.solve(resume=resume)
    summary["out"] = str(out_dir)
    summary["weights"] = report.summary() if report else None
    summary["name"] = solver.train_net.name
    return summary


OVERFIT_PASSES = 300  # passes over the examples after which a net that has not fitted them is said not to


def _overfit(solver: Solver, n: int) -> dict[str, Any]:
    """Trains on the first n examples only, measuring the training accuracy on them after every pass, and
    stops as soon as they are all classified right, at max_iter, or after OVERFIT_PASSES passes."""
    if n <= 0:
        raise SolverError("--overfit takes a positive number of examples")
    feeder = solver.feeder
    if not feeder.sources:
        raise SolverError("--overfit needs a data layer to take the examples from")
    feeder.limit_to(n)
    accuracy = _training_accuracy(solver, feeder)
    examples = min(n, feeder.records)
    per_pass = max(1, math.ceil(examples / (feeder.batch * solver.param.iter_size)))
    limit = min(solver.max_iter, OVERFIT_PASSES * per_pass)
    fitted = False
    with solver._signals():
        while solver.iter < limit and "stop" not in solver._requests:
            solver.step()
            if solver.iter % per_pass == 0 or solver.iter == limit:
                fitted = accuracy() >= 1.0
                if fitted:
                    break
    stopped = (
        "fitted"
        if fitted
        else "interrupted"
        if "stop" in solver._requests
        else "max_iter"
        if limit == solver.max_iter
        else "passes"
    )
    return {
        "overfit": {
            "examples": examples,
            "accuracy": accuracy(),
            "iterations": solver.iter,
            "passes": solver.iter / per_pass,
            "stopped": stopped,
        },
        "out": str(solver.out_dir),
        "name": solver.train_net.name,
    }


def _training_accuracy(solver: Solver, feeder: Feeder) -> Callable[[], float]:
    """A measure of the fraction of the kept training examples the net classifies right (TEST-phase
    behaviour), built once and run after every pass."""
    source = feeder.sources[0]
    if source.arrays is None or len(source.tops) < 2:
        raise SolverError("--overfit needs labelled data held in memory")
    net = build_net(solver.config.train.spec, "TEST", solver.config.train.stages, solver.config.train.level)
    module = NetModule(net).to(solver.device)
    module.share_weights(solver.net)
    data_top, label_top = source.tops[0], source.tops[1]
    scores_blob = _scores_for(net, label_top)
    test_node = next(i.node for i in net.layers if data_top in i.node.tops)
    transform = Transform.of(test_node, solver.device)
    data = transform.apply(source.arrays[data_top], None)
    labels = source.arrays[label_top]

    @torch.no_grad()
    def measure() -> float:
        module.eval()
        blobs = module.blobs(**{data_top: data, label_top: labels})
        predicted = blobs[scores_blob].flatten(1).argmax(1).float()
        return float((predicted == labels.flatten()).float().mean())

    return measure


def _scores_for(net: Net, label: str) -> str:
    for info in net.layers:
        node = info.node
        if node.definition.class_axis(node.spec) is not None and len(node.bottoms) > 1 and node.bottoms[1] == label:
            return node.bottoms[0]
    raise SolverError(
        "--overfit measures classification accuracy, but no classifier (such as SoftmaxWithLoss or "
        f"Accuracy) reads the labels '{label}'"
    )


def evaluate(
    spec: str,
    weights: str | None,
    iterations: int | None,
    device: str | None = None,
    phase: str = "TEST",
    out: str | None = None,
) -> dict[str, float]:
    """Caffe's `test`: runs the TEST net over its data and returns the mean of each output. Files the
    net writes (HDF5Output) go into `out`, by default the working folder (where Caffe writes them)."""
    module = compile_net(spec, phase, weights)
    net = module.net
    dev = pick_device(device)
    module.to(dev)
    feeder = Feeder(net, dev, seed=0)
    if feeder.needs_inputs:
        raise SolverError(
            f"the net's blobs {', '.join(feeder.needs_inputs)} come from Input layers, which have no data to test on",
            hint="test a spec whose data layers read a source",
        )
    if not feeder.sources:
        raise SolverError("the net has no data layers to test on")
    sizes: list[int | None] = [None] * iterations if iterations else list(feeder.one_pass())
    counts = counted_outputs(net)  # means over the records, as the solver's tests take them
    sums, seen = dict.fromkeys(counts, 0.0), dict.fromkeys(counts, 0.0)
    with feeder, torch.no_grad(), output_folder(out or "."):  # the feeder stops its reading workers at the end
        for size in sizes:
            batch = feeder.next(size)
            outputs = module(**batch)
            for name, count in counts.items():
                weight = count(batch, size or feeder.batch)
                sums[name] += float(outputs[name].float()) * weight
                seen[name] += weight
    means = {name: sums[name] / seen[name] if seen[name] else math.nan for name in sums}
    terms = [
        (t, w)
        for info in net.layers
        for t, w in zip(info.node.tops, info.node.loss_weights, strict=True)
        if w and t in means
    ]
    if [w for _, w in terms] != [1.0]:  # one loss top of weight 1 is the total already
        means["(loss)"] = float(sum(means[t] * w for t, w in terms))
    means["(iterations)"] = float(len(sizes))
    return means


def benchmark(spec: str, iterations: int, phase: str, device: str | None = None) -> list[tuple[str, str, float, float]]:
    """Caffe's `time`: per-layer forward and backward milliseconds on inputs of the spec's shapes."""
    net, dev, inputs = _timing_inputs(spec, iterations, phase, device)
    module = NetModule(net).to(dev)
    with tempfile.TemporaryDirectory(prefix="netspec-time-") as scratch, output_folder(scratch):
        return time_net(module, inputs, iterations, backward=phase == "TRAIN")  # what layers write is dropped


def compare_speed(
    spec: str,
    iterations: int,
    phase: str,
    device: str | None,
    *,
    compile: bool,
    channels_last: bool,
    amp: str | None = None,
) -> list[tuple[str, float, float | None]]:
    """`time --compile/--channels-last/--amp`: the whole step's milliseconds eager and in each way asked
    for, and the seconds compiling took (see netspec.train.accel.compare)."""
    net, dev, inputs = _timing_inputs(spec, iterations, phase, device)
    dtype = amp_dtype(amp, dev)
    with tempfile.TemporaryDirectory(prefix="netspec-time-") as scratch, output_folder(scratch):
        return compare(
            lambda: NetModule(net).to(dev),
            inputs,
            iterations,
            backward=phase == "TRAIN",
            compile=compile,
            channels_last=channels_last,
            amp=dtype,
        )


def check_speed_options(device: str | None, compile: bool, amp: str | None) -> None:
    """Refuses a --compile or --amp that cannot run on the device, before anything is timed."""
    dev = pick_device(device)
    amp_dtype(amp, dev)
    if compile:
        check_compile(dev)


def _timing_inputs(
    spec: str, iterations: int, phase: str, device: str | None
) -> tuple[Net, torch.device, dict[str, torch.Tensor]]:
    """The net, the device and inputs of the spec's shapes to time it on."""
    if iterations <= 0:
        raise NetspecError("--iterations must be positive")
    net = build_net(read_net(spec), phase)
    dev = pick_device(device)
    inputs = {}
    ids = net.id_bounds()
    for blob, shape in net.inputs.items():
        labels = any(
            len(i.node.bottoms) > 1 and i.node.bottoms[1] == blob
            for i in net.layers
            if i.node.definition.loss or i.node.definition.class_axis(i.node.spec) is not None
        )
        if blob in ids:  # valid ids, as a layer that looks them up (an Embed) needs
            t = torch.randint(0, max(ids[blob], 1), shape, device=dev).float()
        else:
            t = torch.zeros(shape, device=dev) if labels else torch.randn(shape, device=dev)
        inputs[blob] = t.requires_grad_(not labels and blob not in ids)
    return net, dev, inputs
