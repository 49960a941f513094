"""The solver runner: Caffe's training loop around a compiled net.

Each iteration runs iter_size forward/backward passes, then one update: the learning rate from the
lr_policy, gradient clipping, normalisation by iter_size, weight decay and the solver's rule, in
Caffe's order (see netspec.train.updates). The TRAIN net and the TEST nets share their parameters.
`solve()` adds what `netspec train` shows and keeps: tests every test_interval iterations, progress,
metrics, snapshots (also on Ctrl-C and SIGHUP), non-finite detection and early stopping.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from netspec import snapshot
from netspec.data.feeder import Feeder
from netspec.data.prefetch import waiting_note
from netspec.errors import DataError, NetspecError, RankStopped, SolverError, WeightsError
from netspec.files import output_folder
from netspec.layers import all_types, average_statistics, sync_batch_norm
from netspec.lower.module import NetModule
from netspec.lower.weights import stored_with_weights
from netspec.net import Net, build_net
from netspec.train import distributed
from netspec.train.accel import prepare
from netspec.train.config import SolverConfig, load_config, with_solver_file
from netspec.train.progress import Metrics, Progress
from netspec.train.schedule import Schedule
from netspec.train.updates import Learnable, Updater


class TrainingError(NetspecError):
    """Training cannot go on: a loss or gradient became NaN or infinite."""


def pick_device(name: str | None) -> torch.device:
    """The device to train on: the one asked for, else CUDA when present, else the CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SolverError(f"unknown device '{name}'", hint="use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SolverError(
            f"device '{name}' was asked for, but this machine has no usable CUDA device", hint="use --device cpu"
        )
    return device


@dataclass
class EarlyStop:
    metric: str
    maximize: bool
    patience: int
    min_delta: float
    best: float | None = None
    best_iter: int = 0
    waited: int = 0
    best_blobs: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.maximize else value < self.best - self.min_delta


class Solver:
    """Trains a net as Caffe's solvers do.

    Args:
        source: a YAML spec with a `solver:` section, a Caffe solver prototxt, or a SolverConfig.
        solver_file: train `source` (a net) with the settings of this solver file instead.
        overrides: `--set` items (solver.base_lr=0.01, conv1.convolution_param.num_output=32).
        device: cpu, cuda, cuda:N, or None for CUDA when present.
        amp: None, "bf16" or "fp16": mixed precision for the forward pass.
        compile: run the forward pass through torch.compile (True), or with this torch.compile mode.
        channels_last: hold 4-D weights and inputs in the channels-last memory format.
        out_dir: where snapshots, metrics and the log go (None: nothing is written but explicit snapshots).
    """

    def __init__(
        self,
        source: str | SolverConfig,
        *,
        solver_file: str | None = None,
        overrides: tuple[str, ...] = (),
        device: str | None = None,
        amp: str | None = None,
        compile: bool | str = False,
        channels_last: bool = False,
        out_dir: str | Path | None = None,
        quiet: bool = False,
    ) -> None:
        if isinstance(source, SolverConfig):
            config = source
        elif solver_file is not None:
            config = with_solver_file(source, solver_file, overrides)
        else:
            config = load_config(source, overrides)
        self.config, self.param = config, config.param
        p = self.param
        if device is None and p.HasField("solver_mode"):  # Caffe's own device settings, unless --device says
            device = "cpu" if p.solver_mode == p.CPU else (f"cuda:{p.device_id}" if torch.cuda.is_available() else None)
        self.world = distributed.from_env()  # started by torchrun with several processes
        self.device = pick_device(device) if self.world is None else distributed.start(self.world, device)
        self.seed = int(p.random_seed) if p.random_seed >= 0 else secrets.randbelow(2**31)
        if self.world is not None:
            self.seed = distributed.same_seed(self.seed, self.device)
        torch.manual_seed(self.seed)
        self.amp = amp_dtype(amp, self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.quiet = quiet

        self.train_net: Net = build_net(config.train.spec, "TRAIN", config.train.stages, config.train.level)
        self.net = NetModule(self.train_net).to(self.device)
        self.test_defs = [build_net(t.spec, "TEST", t.stages, t.level) for t in config.tests]
        self.test_nets = [NetModule(d).to(self.device) for d in self.test_defs]
        for test in self.test_nets:
            test.share_weights(self.net)
        self._forward = prepare(self.net, compile=compile, channels_last=channels_last)
        self._loss_tops = [
            (t, w)
            for info in self.train_net.layers
            for t, w in zip(info.node.tops, info.node.loss_weights, strict=True)
            if w
        ]
        # a loss top that a later layer consumes is not a net output: read it from all the blobs
        self._all_blobs = any(t not in self.train_net.outputs for t, _ in self._loss_tops)
        if self.world is not None:  # DDP's forward, which returns all the blobs when _all_blobs says so
            sync_batch_norm(p.sync_bn)
            unused = distributed.unused_parameters(self.train_net, [t for t, _ in self._loss_tops])
            self._forward = distributed.wrap(self.net, self._all_blobs, self.device, p.iter_size, compile, unused)
            self._all_blobs = False
            torch.manual_seed(self.seed + self.world.rank)  # dropout: a random stream per rank
        self._reporter = 0  # in distributed training, the rank that reports a NaN
        self.updater = Updater(p, self._learnables())
        self._feeder: Feeder | None = None
        self._test_feeders: list[Feeder | None] = [None] * len(self.test_nets)
        self.iter = 0
        self.max_iter = p.max_iter if p.max_iter > 0 else self._iterations_from_epochs()
        self.schedule = Schedule(p, self.max_iter)
        self.lr = self.schedule.p.base_lr
        self._losses: deque[float] = deque(maxlen=p.average_loss)
        self._loss_scale = 2.0**16 if self.amp == torch.float16 else 1.0
        self._good_steps = 0
        self._requests: set[str] = set()
        self.early = self._early_stopping()
        self.last_test: list[dict[str, float]] = []
        self.tested_at: int | None = None  # the iteration whose weights last_test measured
        # Called after each test during solve() with the iteration and the first test net's outputs; a
        # true answer stops training there (a sweep prunes a trial this way).
        self.on_test: Callable[[int, dict[str, float]], bool] | None = None
        for path in p.weights:  # the solver's own `weights`, as Caffe's --weights
            from netspec.lower.weights import apply_weights, read_weights

            apply_weights(self.net.caffe_params(), read_weights(path), path)

    # ---- construction ---------------------------------------------------------------------------

    def _learnables(self) -> list[Learnable]:
        params = self.net.caffe_params()
        out = []
        for info in self.train_net.layers:
            for blob in info.blobs:
                if blob.owner is None and blob.learnable:
                    tensor = params[info.node.name][blob.index]
                    out.append(Learnable(f"{info.node.name}:{blob.index}", tensor, blob.lr_mult, blob.decay_mult))
        return out

    @property
    def feeder(self) -> Feeder:
        """The TRAIN net's data, loaded on first use."""
        if self._feeder is None:
            self._feeder = Feeder(self.train_net, self.device, self.seed, **self._ranks())
            self._check_labels(self._feeder, self.train_net)
        return self._feeder

    def _ranks(self) -> dict[str, int]:
        return {} if self.world is None else {"rank": self.world.rank, "world_size": self.world.size}

    def _iterations_from_epochs(self) -> int:
        feeder = self.feeder
        if not feeder.sources:
            raise SolverError(
                "max_epoch needs a data layer (Dataset, Data, ImageData, HDF5Data) to count epochs",
                loc=self.config.loc("max_epoch"),
                hint="give max_iter instead",
            )
        per_iter = feeder.batch * self.param.iter_size * (self.world.size if self.world else 1)
        return max(1, math.ceil(self.param.max_epoch * feeder.records / per_iter))

    def _early_stopping(self) -> EarlyStop | None:
        if not self.param.HasField("early_stopping"):
            return None
        es = self.param.early_stopping
        outputs = [o for d in self.test_defs[:1] for o in d.outputs]
        if es.metric not in outputs:
            raise SolverError(
                f"early_stopping.metric '{es.metric}' is not an output of the test net",
                loc=self.config.loc("early_stopping"),
                hint="test outputs: " + (", ".join(outputs) or "none"),
            )
        maximize = es.mode == es.MAX or (es.mode == es.AUTO and "acc" in es.metric.lower())
        return EarlyStop(es.metric, maximize, es.patience, es.min_delta)

    def _check_labels(self, feeder: Feeder, net: Net) -> None:
        """Labels must be whole numbers within the classes of every classifier that reads them."""
        labels = feeder.labels()
        for info in net.layers:
            node, d = info.node, info.node.definition
            axis = d.class_axis(node.spec)
            if axis is None or len(node.bottoms) < 2 or node.bottoms[1] not in labels:
                continue
            values = labels[node.bottoms[1]]
            scores = info.bottom_shapes[0]
            if scores is None:  # past an opaque Python layer, which never trains
                continue
            classes = scores[axis if axis >= 0 else axis + len(scores)] if len(scores) > 1 else 1
            ignore = d.ignore_label(node.spec)
            valid = values if ignore is None else values[values != ignore]
            if valid.numel() and bool((valid != valid.round()).any()):
                bad = float(valid[valid != valid.round()][0])
                raise DataError(
                    f"label {bad:g} in '{node.bottoms[1]}' is not a whole number, but layer "
                    f"'{node.name}' ({node.type}) takes class indices"
                )
            if valid.numel() and (valid.min() < 0 or valid.max() >= classes):
                bad = float(valid.max() if valid.max() >= classes else valid.min())
                raise DataError(
                    f"label {bad:g} in '{node.bottoms[1]}' is out of range: layer '{node.name}' "
                    f"({node.type}) has {classes} classes (labels 0 to {classes - 1})",
                    hint="check num_output of the last InnerProduct, or the labels of the data",
                )

    # ---- one iteration ----------------------------------------------------------------------------

    def _inputs(self, given: dict[str, Any] | None) -> dict[str, torch.Tensor]:
        if given is None:
            if self.feeder.needs_inputs:
                raise SolverError(
                    f"the net's blobs {', '.join(self.feeder.needs_inputs)} come from Input (or "
                    "MemoryData) layers, so their values must be given",
                    hint="call solver.step(inputs={...}), or feed the net from a data layer "
                    f"({', '.join(t for t, d in all_types().items() if d.reads_records)})",
                )
            return self.feeder.next()
        out = {}
        for name, value in given.items():
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            out[name] = t.to(self.device, torch.float32 if t.is_floating_point() or t.dtype != torch.bool else t.dtype)
        return out

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx = torch.autocast(self.device.type, self.amp) if self.amp else contextlib.nullcontext()
        with ctx:
            out = self.net.run(batch) if self._all_blobs else self._forward(**batch)
        total = None
        for top, weight in self._loss_tops:
            term = out[top]  # a scalar float loss with weight 1 (the usual case) is taken as it is: no extra ops
            term = term.float() if term.dtype != torch.float32 else term
            term = term.sum() if term.dim() else term
            term = term * weight if weight != 1 else term
            total = term if total is None else total + term
        if total is None:
            raise SolverError(
                "the TRAIN net has no loss (no top with a loss_weight)", hint="add a loss layer such as SoftmaxWithLoss"
            )
        return total

    def step(self, inputs: dict[str, Any] | None = None) -> float:
        """One iteration: iter_size forward/backward passes and one update. `inputs` are the input blobs
        (arrays or tensors) used for every pass; without them the net's data layers give the batches.
        Returns the loss, averaged over the passes."""
        for b in self.updater.blobs:
            b.tensor.grad = None
        total = 0.0
        batches = []
        for _ in range(self.param.iter_size):
            batch = self._inputs(inputs)
            batches.append(batch)
            loss = self._loss(batch)
            if loss.requires_grad:  # else nothing learnable feeds the loss: Caffe runs the passes all the same
                (loss * self._loss_scale if self._loss_scale != 1.0 else loss).backward()
            total += float(loss.detach())
        if self._loss_scale != 1.0:
            for b in self.updater.blobs:
                if b.tensor.grad is not None:
                    b.tensor.grad.div_(self._loss_scale)
        loss_value = total / self.param.iter_size
        if not self._finite(loss_value):
            if self.amp == torch.float16 and math.isfinite(loss_value):
                self._loss_scale /= 2  # an fp16 overflow: skip this update with a smaller scale
                self._good_steps = 0
                return loss_value
            self._diverged(loss_value, batches[-1])
        self.lr = self.schedule.rate(self.iter)
        self.updater.apply(self.lr, self.iter)
        self.iter += 1
        self._losses.append(loss_value)
        if self.amp == torch.float16:
            self._good_steps += 1
            if self._good_steps % 2000 == 0:
                self._loss_scale *= 2
        return loss_value

    def _finite(self, loss: float) -> bool:
        if self.world is None:
            return math.isfinite(loss) and self.updater.gradients_finite()
        # decided on all ranks together (the gradients are averaged already): the lowest rank whose own
        # loss is not finite reports it, else rank 0
        bad_loss, bad_grad = distributed.first_failing(
            self.world, [math.isfinite(loss), self.updater.gradients_finite()], self.device
        )
        self._reporter = bad_loss or 0
        return bad_loss is None and bad_grad is None

    def _diverged(self, loss: float, batch: dict[str, torch.Tensor]) -> None:
        """Stops with the first layer whose output (or, failing that, gradient) is not finite."""
        saved = self._snapshot_path("diverged")
        where = None
        with torch.no_grad():
            blobs = self.net.blobs(**batch)
        for info in self.train_net.layers:
            bad = [t for t in info.node.tops if t in blobs and not bool(torch.isfinite(blobs[t]).all())]
            if bad:
                where = (info.node, f"the output '{bad[0]}' of this layer became NaN or infinite")
                break
        if where is None:  # the layer nearest the loss whose gradient is not finite is where it started
            nodes = {info.node.name: info.node for info in self.train_net.layers}
            for b in reversed(self.updater.blobs):
                grad = b.tensor.grad
                if grad is None or bool(torch.isfinite(torch.linalg.vector_norm(grad.float()))):
                    continue
                layer, _, index = b.key.rpartition(":")
                what = (
                    "became NaN or infinite"
                    if not bool(torch.isfinite(grad).all())
                    else f"grew too large (largest value {float(grad.abs().max()):.3g}; its L2 norm overflows)"
                )
                where = (
                    nodes[layer],
                    f"the gradient of this layer's parameter blob {index} {what}, with the loss at {loss:.6g}",
                )
                break
        if saved is not None:
            self.snapshot(saved)
        node, what = where if where else (None, f"the loss became {loss:.6g}")
        error = TrainingError(
            f"iteration {self.iter}: {what}; training stopped before updating the weights",
            hint="lower base_lr, set clip_gradients, or check the data for extreme values"
            + (f"; the weights so far are in {saved}" if saved else ""),
        )
        if node is not None:
            error.at(node.loc, node.name, node.type)
        if self.world is not None and self.world.rank != self._reporter:
            raise RankStopped(f"stopped: rank {self._reporter} found a NaN or infinity")
        raise error

    # ---- testing -----------------------------------------------------------------------------------

    def _test_feeder(self, i: int) -> Feeder:
        feeder = self._test_feeders[i]
        if feeder is None:
            feeder = Feeder(self.test_defs[i], self.device, self.seed + 1000 * (i + 1), **self._ranks())
            self._check_labels(feeder, self.test_defs[i])
            self._test_feeders[i] = feeder
        return feeder

    @torch.no_grad()
    def test(self, inputs: dict[str, Any] | None = None) -> list[dict[str, float]]:
        """Runs every test net for its test_iter batches (by default, one pass over its test data) and
        returns the mean of each output over the records, as Caffe's TestAll does. An output that skips
        ignore_label (Accuracy, a loss normalised by the VALID predictions) is the mean over the
        predictions that count, not over batches. Distributed, each rank tests its part of the records
        and the sums and counts are added up over the ranks: the results are one process's."""
        results = []
        for i, net in enumerate(self.test_nets):
            net.eval()
            feeder = self._test_feeder(i)
            if inputs is None and feeder.needs_inputs:
                raise SolverError(
                    f"the test net's blobs {', '.join(feeder.needs_inputs)} come from Input layers; "
                    "give them with solver.test(inputs={...})"
                )
            feeder.rewind()
            iters = self.config.test_iters[i] if i < len(self.config.test_iters) else None
            sizes: Sequence[int | None] = [None] * iters if iters else (feeder.one_pass() if feeder.sources else [None])
            if self.world is not None and iters and feeder.sources:  # this rank's part of those records
                sizes = distributed.share(iters * feeder.batch, feeder.batch, self.world)
            counts = counted_outputs(self.test_defs[i])
            sums = dict.fromkeys(counts, 0.0)
            seen = dict.fromkeys(counts, 0.0)
            for size in sizes:
                batch = self._inputs(inputs) if inputs is not None else feeder.next(size)
                ctx = torch.autocast(self.device.type, self.amp) if self.amp else contextlib.nullcontext()
                with ctx:
                    out = net(**batch)
                for name, count in counts.items():
                    weight = count(batch, size or 1)
                    sums[name] += float(out[name].float()) * weight
                    seen[name] += weight
            feeder.close()  # its workers would read ahead and idle until the next test
            if self.world is not None:
                totals = distributed.sum_up([*sums.values(), *seen.values()], self.device)
                sums, seen = dict(zip(sums, totals, strict=False)), dict(zip(seen, totals[len(sums) :], strict=True))
            results.append({name: sums[name] / seen[name] if seen[name] else math.nan for name in sums})
        self.last_test, self.tested_at = results, self.iter
        return results

    # ---- snapshots ---------------------------------------------------------------------------------

    def _prefix(self) -> Path:
        name = Path(self.param.snapshot_prefix or Path(self.config.path).stem).name
        return (self.out_dir or Path(".")) / name

    def _snapshot_path(self, tag: str | None = None) -> Path | None:
        if self.out_dir is None:
            return None
        return Path(f"{self._prefix()}_{tag}.pt") if tag else Path(f"{self._prefix()}_iter_{self.iter}.pt")

    def _owned_blobs(self) -> dict[str, list[torch.Tensor]]:
        params = self.net.caffe_params()
        owned: dict[str, list[torch.Tensor]] = {}
        for info in self.train_net.layers:
            blobs = [params[info.node.name][b.index] for b in info.blobs if b.owner is None]
            if blobs:
                owned[info.node.name] = blobs
        return owned

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs, as plain data."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        world = {} if self.world is None else {"world_size": self.world.size, "rank_rng": distributed.gather(rng)}
        return {
            **world,
            "format": snapshot.FORMAT,
            "version": snapshot.VERSION,
            "iter": self.iter,
            "seed": self.seed,
            "spec": str(self.config.path),
            "solver_type": self.param.type,
            "blobs": {k: [t.detach().cpu().clone() for t in v] for k, v in self._owned_blobs().items()},
            "history": {b.key: [h.detach().cpu().clone() for h in b.history] for b in self.updater.blobs},
            "current_step": self.schedule.current_step,
            "rng": rng,
            "data": self._feeder.state() if self._feeder is not None else [],
            "losses": list(self._losses),
            "loss_scale": self._loss_scale,
            "early": None
            if self.early is None
            else {"best": self.early.best, "best_iter": self.early.best_iter, "waited": self.early.waited},
            **stored_with_weights(self.train_net),  # preprocessing statistics, data shapes
        }

    def snapshot(self, path: str | Path | None = None) -> Path:
        """Writes a snapshot (atomically) and returns its path. Distributed, every rank calls it (each
        gives its random state) and rank 0 writes it."""
        target = Path(path) if path is not None else Path(f"{self._prefix()}_iter_{self.iter}.pt")
        state = self.state()
        if self.world is None or self.world.rank == 0:
            snapshot.save_atomic(state, target)
        return target

    def restore(self, path: str | Path) -> None:
        """Continues from a snapshot: weights, solver history, iteration, random states and data position."""
        state = snapshot.load(path)
        if "history" not in state:
            raise WeightsError(
                f"'{path}' holds weights only, not a training state to resume",
                hint="start from it with --weights instead of --resume",
            )
        expected = {f"{k}:{i}": tuple(t.shape) for k, v in self._owned_blobs().items() for i, t in enumerate(v)}
        saved = {f"{k}:{i}": list(t.shape) for k, v in state["blobs"].items() for i, t in enumerate(v)}
        snapshot.check_layout(path, saved, expected)
        saved_world, world = int(state.get("world_size", 1)), self.world.size if self.world else 1
        if saved_world != world:
            raise NetspecError(
                f"snapshot '{path}' was written by a run of {_processes(saved_world)}; this one has "
                f"{_processes(world)}, whose batches would not continue that run's",
                hint=f"resume it with {_processes(saved_world)} (--nproc-per-node {saved_world}), or start "
                "from its weights with --weights",
            )
        if state.get("solver_type") != self.param.type:
            raise NetspecError(
                f"snapshot '{path}' was written by a {state.get('solver_type')} solver; this one is {self.param.type}",
                hint="resume with the solver settings it was trained with",
            )
        with torch.no_grad():
            for layer, blobs in self._owned_blobs().items():
                for target, value in zip(blobs, state["blobs"][layer], strict=True):
                    target.copy_(value.to(target.device))
            for b in self.updater.blobs:
                for target, value in zip(b.history, state["history"].get(b.key, []), strict=False):
                    if target.shape == value.shape:
                        target.copy_(value.to(target.device))
        self.iter = int(state["iter"])
        self.schedule.current_step = int(state["current_step"])
        rng = state["rank_rng"][self.world.rank] if self.world is not None else state["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if state["data"]:
            self.feeder.load_state(state["data"])
        self._losses = deque(state["losses"], maxlen=self.param.average_loss)
        self._loss_scale = float(state.get("loss_scale", self._loss_scale))
        if self.early is not None and state.get("early"):
            self.early.best = state["early"]["best"]
            self.early.best_iter = int(state["early"]["best_iter"])
            self.early.waited = int(state["early"]["waited"])

    # ---- the whole run -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Ctrl-C: snapshot and stop; SIGHUP: snapshot and go on (Caffe's defaults)."""
        handlers: dict[int, Any] = {}

        def request(action: str) -> Any:
            return lambda signum, frame: self._requests.add(action)

        try:
            handlers[signal.SIGINT] = signal.signal(signal.SIGINT, request("stop"))
            if hasattr(signal, "SIGHUP"):
                handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, request("snapshot"))
        except ValueError:  # not the main thread: no signal handling
            pass
        try:
            yield
        finally:
            for signum, old in handlers.items():
                signal.signal(signum, old)

    def _test_due(self) -> bool:
        p = self.param
        return (
            bool(self.test_nets)
            and p.test_interval > 0
            and self.iter % p.test_interval == 0
            and (self.iter > 0 or p.test_initialization)
        )

    def solve(self, resume: str | Path | None = None) -> dict[str, Any]:
        """Trains to max_iter (or until stopped), as `netspec train` does; returns a summary."""
        with self._signals(), output_folder(self.out_dir or "."):
            return self._solve(resume)

    def _solve(self, resume: str | Path | None) -> dict[str, Any]:
        if resume is not None:
            self.restore(resume)
        p = self.param
        out = self.out_dir
        ranks = self.world.size if self.world is not None else 1
        samples = self._batch_size() * p.iter_size * ranks  # loads the data first: its errors come before any file
        writes = out if self.world is None or self.world.rank == 0 else None  # only rank 0 writes and shows
        if writes is not None:
            writes.mkdir(parents=True, exist_ok=True)
            snapshot.remove_leftovers(writes)
        columns = [
            _column(i, name, len(self.test_defs))
            for i, d in enumerate(self.test_defs)
            for name in d.outputs
            if math.prod(d.shapes[name]) == 1
        ]
        metrics = Metrics(writes / "metrics.csv", columns, append=resume is not None) if writes is not None else None
        progress = Progress(
            self.max_iter,
            p.display or max(1, self.max_iter // 20),
            writes / "train.log" if writes is not None else None,
            quiet=self.quiet or (self.world is not None and self.world.rank > 0),
        )
        progress.line(
            f"training '{self.train_net.name}' on {self.device.type} for {self.max_iter} iterations "
            f"(seed {self.seed})" + (f", from iteration {self.iter}" if self.iter else "")
        )
        if self.world is not None:
            progress.line(
                f"{ranks} processes ({'NCCL' if self.device.type == 'cuda' else 'Gloo'}) x batch_size "
                f"{self._batch_size()}"
                + (f" x iter_size {p.iter_size}" if p.iter_size > 1 else "")
                + f": an effective batch of {samples}"
            )
        if not any(b.tensor.requires_grad for b in self.updater.blobs):
            progress.line(
                "note: the TRAIN net has no parameters to learn (none, or all with lr_mult 0): the "
                "iterations run forward passes only, as Caffe's do, and change no weights"
            )
        last_snapshot, stopped = None, None
        tested_at = -1
        window_start, window_iter = _now(), self.iter
        stepped, waited = 0.0, self._feeder.waited if self._feeder is not None else 0.0
        try:
            while self.iter < self.max_iter:
                if self._test_due():
                    stopped = self._run_test(progress, metrics)
                    tested_at = self.iter
                    if stopped:
                        break
                started = _now()
                self.step()
                stepped += _now() - started
                if self.world is not None:
                    self._agree()
                smoothed = sum(self._losses) / len(self._losses)
                elapsed = _now() - window_start
                speed = samples * (self.iter - window_iter) / elapsed if elapsed > 0 else 0.0
                if elapsed > 5:
                    window_start, window_iter = _now(), self.iter
                epoch = self.feeder.epochs_done if self._feeder is not None and self._feeder.sources else 0.0
                index = self.iter - 1  # Caffe's number for the iteration just done
                progress.iteration(index, epoch, smoothed, self.lr, speed)
                if metrics is not None and (index % max(1, p.display) == 0 or self.iter == self.max_iter):
                    metrics.write(iteration=index, epoch=epoch, lr=self.lr, loss=smoothed)
                due = p.snapshot and self.iter % p.snapshot == 0 and self.iter < self.max_iter
                if (due or self._requests) and out is not None:
                    last_snapshot = self.snapshot()
                    if "stop" not in self._requests:  # a stopped run's summary names it
                        progress.line(f"snapshot: {last_snapshot}")
                    self._requests.discard("snapshot")
                if "stop" in self._requests:
                    stopped = "interrupted"
                    break
            if self._feeder is not None and (note := waiting_note(self._feeder.waited - waited, stepped)):
                progress.line(note)
            if stopped is None and self.test_nets and tested_at != self.iter:
                self._run_test(progress, metrics)
            if (
                out is not None
                and p.snapshot_after_train
                and (last_snapshot is None or last_snapshot != self._snapshot_path())
            ):
                last_snapshot = self.snapshot()  # before the best weights come back: _iter_N holds N's
            if self.early is not None and self.early.best_blobs:
                self._restore_best(progress)
        finally:
            progress.close()
            if metrics is not None:
                metrics.close()
            self.close()
        best = self.early.best_iter if self.early is not None and self.early.best_blobs else None
        return {
            "iterations": self.iter,
            "stopped": stopped,
            "test": self.last_test,
            "tested_at": self.tested_at,
            "best_iteration": best,
            "snapshot": str(last_snapshot) if last_snapshot else None,
            "best": f"{self._prefix()}_best.pt" if best is not None and out is not None else None,
            "metrics": str(out / "metrics.csv") if out is not None else None,
        }

    def _agree(self) -> None:
        """After a distributed step: BatchNorm's running statistics, the loss of the whole batch (the
        mean over the ranks) and the signals that any rank received, so that every rank snapshots and
        stops at the same iteration."""
        average_statistics(self.net.buffers())  # BatchNorm's running statistics: the same on every rank
        asked = [float(r in self._requests) for r in ("stop", "snapshot")]
        loss, *flags = distributed.sum_up([self._losses[-1] if self._losses else 0.0, *asked], self.device)
        if self._losses:
            self._losses[-1] = loss / (self.world.size if self.world else 1)
        self._requests.update(r for r, f in zip(("stop", "snapshot"), flags, strict=True) if f)

    def close(self) -> None:
        """Stops the worker processes that read streamed data (solve() does it when it ends); stepping or
        testing again starts them anew."""
        for feeder in (self._feeder, *self._test_feeders):
            if feeder is not None:
                feeder.close()

    def _batch_size(self) -> int:
        return self.feeder.batch if self.feeder.sources else 1

    def _run_test(self, progress: Progress, metrics: Metrics | None) -> str | None:
        results = self.test()
        for i, outputs in enumerate(results):
            shown = ", ".join(f"{k} = {v:.5g}" for k, v in outputs.items())
            progress.line(f"test{'' if len(results) == 1 else f' #{i}'} at iteration {self.iter}: {shown}")
        if metrics is not None:
            values: dict[str, float | int] = {"iteration": self.iter}  # the training row has its rate
            for i, outputs in enumerate(results):
                for name, value in outputs.items():
                    values[_column(i, name, len(results))] = value
            metrics.write(**values)
        stop = self._early_check(results[0], progress) if self.early is not None and results else None
        if stop is None and self.on_test is not None and results and self.on_test(self.iter, results[0]):
            progress.line(f"stopped at iteration {self.iter}: pruned")
            stop = "pruned"
        return stop

    def _early_check(self, outputs: dict[str, float], progress: Progress) -> str | None:
        es = self.early
        if es is None:
            return None
        value = outputs[es.metric]
        if es.improved(value):
            es.best, es.best_iter, es.waited = value, self.iter, 0
            es.best_blobs = {k: [t.detach().clone() for t in v] for k, v in self._owned_blobs().items()}
            if self.out_dir is not None:
                self.snapshot(f"{self._prefix()}_best.pt")
            return None
        es.waited += 1
        if es.waited >= es.patience:
            progress.line(
                f"early stopping: {es.metric} has not improved for {es.patience} tests "
                f"(best {es.best:.5g} at iteration {es.best_iter})"
            )
            return "early stopping"
        return None

    def _restore_best(self, progress: Progress) -> None:
        es = self.early
        if es is None:
            return
        with torch.no_grad():
            for layer, blobs in self._owned_blobs().items():
                for target, value in zip(blobs, es.best_blobs[layer], strict=True):
                    target.copy_(value)
        progress.line(f"kept the best weights ({es.metric} {es.best:.5g} at iteration {es.best_iter})")
        if self.test_nets:
            self.test()
            self.tested_at = es.best_iter


Count = Callable[[dict[str, torch.Tensor], int], float]


def counted_outputs(net: Net) -> dict[str, Count]:
    """The scalar outputs of a net (losses, accuracies), each with what a batch's value is a mean over:
    the predictions whose label is not ignored, when its layer says so and the label is an input, else
    the batch's records."""
    makers = {top: info.node for info in net.layers for top in info.node.tops}
    out: dict[str, Count] = {}
    for name in net.outputs:
        if math.prod(net.shapes[name]) != 1:
            continue
        node = makers[name]
        label = node.bottoms[1] if len(node.bottoms) > 1 else None

        def count(batch: dict[str, torch.Tensor], size: int, node: Any = node, label: str | None = label) -> float:
            n = node.definition.counted(node.spec, batch[label]) if label in batch else None
            return size if n is None else float(n)

        out[name] = count
    return out


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _column(i: int, name: str, n: int) -> str:
    return f"test/{name}" if n == 1 else f"test{i}/{name}"


def _now() -> float:
    import time

    return time.perf_counter()


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast type an --amp value names, or None; refused where the device cannot run it, before
    any work (train and time both ask)."""
    if amp in (None, "none", "off"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise SolverError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16")
        return torch.float16
    raise SolverError(f"--amp takes bf16 or fp16, got '{amp}'")
