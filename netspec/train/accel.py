"""Running a net's training step faster than eager PyTorch: torch.compile (inductor) and the channels-last
memory format. Neither is on by default, because neither paid on every net measured (on two busy CPU
cores: compiled LeNet 0.65-0.97x eager, compiled CIFAR-10 quick 1.00-1.31x, after up to 3 minutes of
compiling; channels-last mostly 0.96-1.29x on LeNet, 0.76-0.95x on CIFAR-10 quick). So `netspec time --compile
--channels-last` measures them on the user's own net and machine, side by side with eager, before they
are asked for with `netspec train --compile --channels-last`. Both leave the numbers eager's within float
rounding: the same operations run, fused or laid out differently in memory. (A Dropout on channels-last
images draws its mask in memory order, so its masks differ from eager's; compiled Dropout draws eager's.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from netspec.errors import SolverError
from netspec.lower.module import NetModule

Forward = Callable[..., dict[str, torch.Tensor]]


def check_compile(device: torch.device) -> None:
    """Refuses --compile, with the reason, where inductor cannot work: on the CPU it compiles C++ kernels
    and needs a C++ compiler (g++, or the one CXX names). Without this check the first step would fail
    deep inside torch with a long traceback."""
    if device.type != "cpu":
        return
    from torch._inductor import cpp_builder, exc  # private, but the search inductor itself runs

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise SolverError(
            "--compile needs a C++ compiler on the CPU (torch.compile's inductor builds C++ kernels), and "
            "none was found (g++, or the compiler CXX names)",
            hint="install g++ (Debian: apt-get install g++), or leave out --compile",
        ) from None


def prepare(module: NetModule, *, compile: bool | str = False, channels_last: bool = False) -> Forward:
    """The forward pass to train with: `module` itself, or through torch.compile, and/or with its 4-D
    weights and inputs in channels-last layout. `compile` may name a torch.compile mode ("reduce-overhead"
    adds CUDA graphs on a GPU, for nets whose shapes never change)."""
    if channels_last:
        _weights_channels_last(module)
    forward: Forward = compiled(module, compile) if compile else module
    if not channels_last and not compile:
        return module
    return _Forward(forward, channels_last, bool(compile))


def compiled(module: torch.nn.Module, compile: bool | str) -> Forward:
    """`module` through torch.compile: with a mode when `compile` names one, else inductor's defaults."""
    check_compile(next((p.device for p in module.parameters()), torch.device("cpu")))
    # Dropout's masks drawn as eager draws them (inductor's own generator gives other ones); a mode
    # string is passed as it is (torch.compile takes a mode or options, not both)
    how = {"mode": compile} if isinstance(compile, str) else {"options": {"fallback_random": True}}
    return torch.compile(module, **how)


class _Forward:
    """Calls a prepared forward pass: 4-D inputs turned channels-last, and a failure of torch.compile
    told as one error instead of inductor's traceback."""

    def __init__(self, forward: Forward, channels_last: bool, compiled: bool) -> None:
        self.forward, self.channels_last = forward, channels_last
        self.failed: type[Exception] = _NeverRaised
        if compiled:  # importing dynamo takes seconds: only for --compile
            from torch._dynamo.exc import BackendCompilerFailed

            self.failed = BackendCompilerFailed

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            inputs = {k: _channels_last(v) for k, v in inputs.items()}
        try:
            return self.forward(**inputs)
        except self.failed as e:
            inner = getattr(e, "inner_exception", e)
            reason = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
            raise SolverError(f"torch.compile failed: {reason}", hint="train without --compile") from None


class _NeverRaised(Exception):
    pass


def _weights_channels_last(module: NetModule) -> None:
    """Lays the 4-D weights out channels-last in place (the Parameter objects stay, so the test nets and
    the solver that share them follow). A weight that another layer shares under another shape is left
    as it is: that layer views it, and a view needs the plain layout."""
    params, net = module.caffe_params(), module.net
    viewed = {
        id(params[b.owner[0]][b.owner[1]])
        for info in net.layers
        for b in info.blobs
        if b.owner is not None and b.shape != net.layer(b.owner[0]).blobs[b.owner[1]].shape
    }
    for p in module.parameters():
        if p.dim() == 4 and id(p) not in viewed:
            p.data = p.data.contiguous(memory_format=torch.channels_last)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


# ---- measuring them: `netspec time --compile --channels-last` ----------------------------------------


def compare(
    module_for: Callable[[], NetModule],
    inputs: dict[str, torch.Tensor],
    iterations: int,
    backward: bool,
    *,
    compile: bool,
    channels_last: bool,
    amp: torch.dtype | None = None,
    rounds: int = 5,
) -> list[tuple[str, float, float | None]]:
    """(variant, median ms per step, seconds spent compiling or None) for eager and each way asked for
    (with `amp`, every way but eager runs in that autocast dtype). A step is the forward pass and, with
    `backward`, the backward pass of the summed outputs. Each variant runs on a fresh module; the variants
    take turns in `rounds` rounds of the iterations, so that a change in the machine's speed (a shared
    machine) favours none of them; the median round counts. The first call of each, which compiles, is
    timed apart and left out."""
    ways = [(comp, cl) for comp in {False, compile} for cl in {False, channels_last}]
    variants = [("eager", False, False, None)] + [
        (_name(comp, cl, amp), comp, cl, amp) for comp, cl in sorted(ways) if amp or comp or cl
    ]
    runs: list[tuple[str, Callable[[], None], float | None]] = []
    for name, comp, cl, dtype in variants:
        run = _stepper(prepare(module_for(), compile=comp, channels_last=cl), inputs, backward, dtype)
        t0 = time.perf_counter()
        run()  # warms up; compiles
        first = time.perf_counter() - t0
        run()
        runs.append((name, run, first if comp else None))
    per_round = max(1, iterations // rounds)
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(rounds):
        for name, run, _ in runs:
            t0 = time.perf_counter()
            for _ in range(per_round):
                run()
            times[name].append(1000 * (time.perf_counter() - t0) / per_round)
    return [(name, statistics.median(times[name]), first) for name, _, first in runs]


def _name(compiled: bool, channels_last: bool, amp: torch.dtype | None) -> str:
    parts = ["channels-last"] if channels_last else []
    if compiled:
        parts.insert(0, "compiled")
    if amp is not None:
        parts.append(f"amp {_AMP_NAMES[amp]}")
    return " + ".join(parts)


_AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _stepper(
    forward: Forward, inputs: dict[str, torch.Tensor], backward: bool, amp: torch.dtype | None
) -> Callable[[], None]:
    device = next(iter(inputs.values())).device.type if inputs else "cpu"

    def run() -> None:
        with torch.set_grad_enabled(backward), torch.autocast(device, amp, enabled=amp is not None):
            out = forward(**inputs)
            total = sum(v.float().sum() for v in out.values() if v.is_floating_point())
        if isinstance(total, torch.Tensor):
            if backward and total.requires_grad:
                total.backward()
            float(total.detach())  # waits for the device, as reading the loss does

    return run
