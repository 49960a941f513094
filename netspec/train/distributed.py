"""Distributed training on torch.distributed: one process per GPU (or several on the CPU), on one machine
or many, started by torchrun (`netspec train --nproc-per-node N` runs torchrun's own launcher).

Caffe's multi-GPU semantics: batch_size is per process, so N processes train as one process with a batch
of N x batch_size. DistributedDataParallel averages the gradients (Caffe's NCCL solver summed them and
divided by the solver count) before the solver's update, which every rank then applies to identical
weights; iter_size's passes but the last skip that synchronisation (DDP's no_sync). Each rank reads its own
interleaved part of the data (netspec.data.feeder), tests over its part of the TEST data, and the sums
and counts of the test outputs are added up over the ranks, so a test means what it means in one process.
Decisions that end or divert the loop (a NaN, Ctrl-C, SIGHUP, early stopping) are all-reduced, so no rank
is left waiting in a collective; only rank 0 writes files and shows progress. Solver.solve() is the
distributed loop: a program calling step() itself gets the averaged gradients, but neither the averaged
loss nor BatchNorm's averaged running statistics.

The process group: NCCL on CUDA, one device per local rank; Gloo on the CPU; NETSPEC_DIST_TIMEOUT seconds
(default 600) before a collective that a rank never joins fails. This module imports torch.distributed
only for a distributed run: one process pays nothing for it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from netspec.errors import NetspecError, RankStopped, SolverError
from netspec.train.accel import compiled

TIMEOUT_S = 600
# How long a rank that did not cause a failure waits before saying so: torchrun stops it first when the
# rank that did has reported and exited, so a failure reads as one message.
LINGER_S = 5.0
LINGER_OTHER_S = 2.0  # a rank other than 0 with an error of its own lets rank 0 speak first


@dataclass(frozen=True)
class World:
    """This process's place among the ranks, as torchrun's environment gives it."""

    rank: int
    size: int
    local_rank: int


def from_env() -> World | None:
    """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); None for one process."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def timeout_s() -> float:
    value = os.environ.get("NETSPEC_DIST_TIMEOUT", "")
    try:
        return float(value) if value else TIMEOUT_S
    except ValueError:
        raise SolverError(f"NETSPEC_DIST_TIMEOUT must be a number of seconds, not '{value}'") from None


def start(world: World, device: str | None) -> torch.device:
    """Joins the process group and returns this rank's device: the GPU of its local rank when CUDA is
    asked for or present (choose the GPUs with CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch.distributed as dist

    wants_cuda = (device in (None, "auto") and torch.cuda.is_available()) or (device or "").startswith("cuda")
    if wants_cuda:
        if not torch.cuda.is_available():
            raise SolverError(f"device '{device}' was asked for, but this machine has no usable CUDA device")
        if world.local_rank >= torch.cuda.device_count():
            raise SolverError(
                f"local rank {world.local_rank} has no GPU: this machine shows {torch.cuda.device_count()}",
                hint="start at most one process per GPU (--nproc-per-node)",
            )
        chosen = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(chosen)
    elif device not in (None, "auto", "cpu"):
        raise SolverError(f"unknown device '{device}' for distributed training", hint="use cpu or cuda")
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s()))
    if dist.get_world_size() != world.size:
        raise SolverError(f"the process group has {dist.get_world_size()} ranks, WORLD_SIZE says {world.size}")
    return chosen


def same_seed(seed: int, device: torch.device) -> int:
    """Rank 0's seed on every rank (a seed drawn at random differs between processes)."""
    t = torch.tensor([seed], dtype=torch.int64, device=device)
    _dist().broadcast(t, 0)
    return int(t.item())


class _Forward(nn.Module):
    """What DDP wraps: the train net, returning its outputs or, when a loss top is read by a later layer,
    all its blobs."""

    def __init__(self, net: nn.Module, all_blobs: bool) -> None:
        super().__init__()
        self.net, self.all_blobs = net, all_blobs

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.run(batch) if self.all_blobs else self.net(**batch)  # type: ignore[operator]


class Synced:
    """The train net's forward under DDP: the gradients of the pass are averaged over the ranks during
    its backward, except in the first iter_size - 1 passes of an iteration (no_sync), whose gradients
    accumulate locally until the last pass's backward averages the sum (one all-reduce an iteration)."""

    def __init__(self, ddp: Any, model: Any, passes: int) -> None:
        self.ddp, self.model, self.passes, self.count = ddp, model, passes, 0

    def __call__(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        last = self.count == self.passes - 1
        self.count = (self.count + 1) % self.passes
        with contextlib.nullcontext() if last else self.ddp.no_sync():
            return self.model(**batch)


def wrap(net: Any, all_blobs: bool, device: torch.device, passes: int, compile: bool | str, unused: bool) -> Synced:
    """The train net in DistributedDataParallel (rank 0's weights broadcast to all). Buffers are not
    broadcast at each forward: a rank's BatchNorm statistics are its own unless sync_bn says otherwise."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    # torch renamed the option (2.13); either way buffers are synchronised once, at the start
    no_buffer_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        else {"broadcast_buffers": False}
    )
    ddp = DDP(
        _Forward(net, all_blobs),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
        **no_buffer_sync,
    )
    return Synced(ddp, compiled(ddp, compile) if compile else ddp, passes)


def sum_up(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks (in float64, so every rank gets the same numbers)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    _dist().all_reduce(t)
    return [float(v) for v in t.cpu()]


def first_failing(world: World, checks: list[bool], device: torch.device) -> list[int | None]:
    """For each check, the lowest rank on which it fails, or None when it holds on every rank."""
    t = torch.tensor([world.size if ok else world.rank for ok in checks], dtype=torch.int64, device=device)
    _dist().all_reduce(t, op=_dist().ReduceOp.MIN)
    return [None if int(bad) == world.size else int(bad) for bad in t.cpu()]


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (rank order), on every rank."""
    out: list[Any] = [None] * _dist().get_world_size()
    _dist().all_gather_object(out, obj)
    return out


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def share(total: int, batch: int, world: World) -> list[int]:
    """The batch sizes with which this rank reads its part of `total` records, read world.size x batch
    at a time and dealt out position by position (as the feeder deals a stream's records)."""
    full, rest = divmod(total, batch * world.size)
    last = len(range(world.rank, rest, world.size))
    return [batch] * full + ([last] if last else [])


def unused_parameters(net: Any, loss_tops: list[str]) -> bool:
    """Whether some learnable blob of the train net gets no gradient from the loss (DDP must then look
    for such parameters each iteration): its layer does not lead to a loss, or propagate_down cuts it off."""
    needed = set(loss_tops)
    used: set[str] = set()
    for info in reversed(net.layers):
        node = info.node
        if needed & set(node.tops):
            used.add(node.name)
            needed |= set(node.bottoms)
            if any(not flag for flag in node.lp.propagate_down):
                return True
    return any(b.learnable and b.lr_mult != 0 and info.node.name not in used for info in net.layers for b in info.blobs)


def close() -> None:
    """Leaves the process group (torch warns at exit when a process never does)."""
    dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- failures ------------------------------------------------------------------------------------


@contextlib.contextmanager
def worker(world: World) -> Iterator[None]:
    """Around a rank's training: errors become one message naming the rank (the command line adds
    "rank R:"), and a rank that only saw another rank fail stays quiet long enough for torchrun to stop
    it after that rank has spoken. Warnings are rank 0's to show."""
    if world.rank:
        warnings.filterwarnings("ignore")
    try:
        yield
    except RankStopped:
        time.sleep(LINGER_S)
        raise
    except NetspecError:
        if world.rank:
            time.sleep(LINGER_OTHER_S)
        raise
    except torch.OutOfMemoryError as e:
        first = (str(e).strip().splitlines() or ["out of memory"])[0]
        raise SolverError(f"out of memory: {first}", hint="lower batch_size, or use --amp") from None
    except Exception as e:  # a collective that failed because another rank went away, or a bug
        time.sleep(LINGER_S)  # torchrun stops this rank meanwhile when another one failed first
        text = str(e).strip()
        if isinstance(e, _dist().DistError) or any(w in text for w in ("gloo", "NCCL", "Connection")):
            first = (text.splitlines() or [type(e).__name__])[0]
            raise RankStopped(f"lost contact with the other ranks ({first})") from None
        raise
    finally:
        close()


def launch(nproc: int, args: list[str]) -> int:
    """`netspec train ... --nproc-per-node N`: torchrun's launcher on this machine (--standalone: a
    rendezvous on a free local port) starting `python -m netspec <args>` N times; returns the exit
    status. A failure is the failing rank's own message; one killed by a signal is named here."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if nproc < 1:
        raise SolverError("--nproc-per-node takes a positive number of processes")
    if from_env() is not None:
        raise SolverError("--nproc-per-node starts torchrun, but this process already is one of its ranks")
    # The processes share the machine's cores (torchrun would otherwise set 1 and warn)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name in ("torch.distributed.elastic", "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its reports repeat ours
    config = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "netspec", *args])
    try:
        torchrun.run(config)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:
            raise SolverError(
                f"rank {rank} was killed by {failure.signal_name()}; the other ranks were stopped",
                hint="resume from the last snapshot with --resume",
            ) from None
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:  # Ctrl-C: the ranks snapshot and stop; torchrun waits for them
        return 128 + int(e.sigval)
    return 0
