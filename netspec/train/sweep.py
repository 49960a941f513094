"""`netspec sweep`: a hyperparameter search that runs ordinary training runs, one per trial.

A trial is `netspec train SPEC --set PATH=VALUE ...` with the values Optuna's sampler picked, in its own
folder; the sweep itself adds only the loop around it. The study lives in an Optuna journal file in the
sweep's folder, so a sweep that was killed continues with `--resume` without repeating finished trials,
and several processes (`parallel`) share it without a database. Each trial runs in `_run_trial`, the one
place that would launch a trial differently (e.g. as a multi-process training job) later.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netspec._proto import netspec_pb2 as pb
from netspec.errors import NetspecError, SourceLoc, SweepError, did_you_mean
from netspec.netfile import read_net, to_yaml
from netspec.spec.build import SourceMap
from netspec.spec.load import parse_message, parse_tree, read_text, spec_format

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median")
GOALS = ("maximize", "minimize")
RANGE_TYPES = ("uniform", "loguniform", "int", "choice")
STUDY = "netspec-sweep"
JOURNAL = "study.journal"
# Net-naming solver fields: a trial's spec.yaml holds its net itself.
_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param")


@dataclass(frozen=True)
class Range:
    """One field the sweep varies."""

    path: str
    type: str
    low: float
    high: float
    step: float | None
    log: bool
    values: tuple[str, ...]
    loc: SourceLoc

    def grid(self) -> list[Any]:
        if self.type == "choice":
            return list(self.values)
        step = int(self.step or 1)
        return list(range(int(self.low), int(self.high) + 1, step))

    def shown(self, value: str) -> str:
        """A value as the table of trials shows it (floats to 4 digits; the trial used all of them)."""
        return f"{float(value):.4g}" if self.type in ("uniform", "loguniform") else value

    def suggest(self, trial: optuna.Trial) -> str:
        """Asks the trial for a value and returns it as `--set` takes it."""
        if self.type == "choice":
            return str(trial.suggest_categorical(self.path, list(self.values)))
        if self.type == "int":
            return str(
                trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
            )
        return repr(trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.type == "loguniform"))


@dataclass(frozen=True)
class Sweep:
    """A checked sweep section."""

    metric: str
    maximize: bool
    trials: int
    sampler: str
    seed: int
    pruner: str
    parallel: int
    ranges: tuple[Range, ...]

    @property
    def varies_seed(self) -> bool:
        return any(r.path == "solver.random_seed" for r in self.ranges)


# ---- reading and checking ---------------------------------------------------------------------------


def read_sweep(spec: str, sweep_file: str | None = None) -> Sweep:
    """The sweep section of a YAML spec, or of a separate file (YAML or prototxt) for any net."""
    if sweep_file is not None:
        fmt = spec_format(sweep_file)
        param = pb.SweepParameter()
        smap = parse_message(parse_tree(read_text(sweep_file, "sweep file"), sweep_file, fmt), param, sweep_file, fmt)
        return _checked(param, smap, (), sweep_file)
    fmt = spec_format(spec)
    if fmt == "prototxt" and _is_solver_file(spec):
        raise SweepError(
            f"'{spec}' is a solver file; give the sweep in its own file with --sweep", loc=SourceLoc(spec, 1)
        )
    source = read_net(spec)
    if not source.message.HasField("sweep"):
        raise SweepError(
            f"'{spec}' has no sweep section",
            loc=SourceLoc(spec, 1),
            hint="add `sweep: {metric: accuracy, trials: 12, parameters: {solver.base_lr: "
            "{type: loguniform, low: 0.0001, high: 0.1}}}` or give --sweep FILE",
        )
    return _checked(source.message.sweep, source.smap, ("sweep",), spec)


def _is_solver_file(path: str) -> bool:
    from netspec.spec.load import is_solver

    return is_solver(parse_tree(read_text(path), path, "prototxt"))


def _checked(p: pb.SweepParameter, smap: SourceMap, prefix: tuple[str | int, ...], path: str) -> Sweep:
    def loc(*field: str | int) -> SourceLoc:
        return smap.find((*prefix, *field)) if smap.locs else SourceLoc(path, 1)

    def one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
        low = value.lower()
        if low not in allowed:
            raise SweepError(
                f"sweep {name} must be one of {', '.join(allowed)}; got '{value}'",
                loc=loc(name),
                hint=did_you_mean(low, allowed),
            )
        return low

    if not p.metric:
        raise SweepError(
            "the sweep needs a metric: the test output to optimise (e.g. accuracy or loss)", loc=loc("metric")
        )
    goal = one_of("goal", p.goal, GOALS) if p.goal else ("maximize" if "acc" in p.metric.lower() else "minimize")
    if p.trials < 1:
        raise SweepError(f"sweep trials must be at least 1, got {p.trials}", loc=loc("trials"))
    if p.parallel < 1:
        raise SweepError(f"sweep parallel must be at least 1, got {p.parallel}", loc=loc("parallel"))
    if not p.parameters:
        raise SweepError(
            "the sweep varies nothing: give parameters (dotted paths as --set takes them)", loc=loc("parameters")
        )
    ranges = tuple(_range(r, lambda *f, i=i: loc("parameters", i, *f)) for i, r in enumerate(p.parameters))
    seen: set[str] = set()
    for r in ranges:
        if r.path in seen:
            raise SweepError(f"sweep parameter '{r.path}' is given twice", loc=r.loc)
        seen.add(r.path)
    sampler = one_of("sampler", p.sampler, SAMPLERS)
    trials = p.trials
    if sampler == "grid":
        for r in ranges:
            if r.type not in ("choice", "int"):
                raise SweepError(
                    f"the grid sampler needs choice or int parameters; '{r.path}' is {r.type}",
                    loc=r.loc,
                    hint="give it as {type: choice, values: [...]}",
                )
        trials = min(trials, math.prod(len(r.grid()) for r in ranges))
    return Sweep(
        p.metric, goal == "maximize", trials, sampler, p.seed, one_of("pruner", p.pruner, PRUNERS), p.parallel, ranges
    )


def _range(r: pb.SweepRange, loc: Callable[..., SourceLoc]) -> Range:
    where = loc("path")
    if "." not in r.path:
        raise SweepError(
            f"sweep parameter '{r.path}' is not a dotted path such as solver.base_lr or "
            "fc1.inner_product_param.num_output",
            loc=where,
        )
    kind = r.type.lower()
    if kind not in RANGE_TYPES:
        raise SweepError(
            f"sweep parameter '{r.path}' has type '{r.type}'; give one of {', '.join(RANGE_TYPES)}",
            loc=loc("type") if r.type else where,
            hint=did_you_mean(kind, RANGE_TYPES),
        )
    step = r.step if r.HasField("step") else None
    if kind == "choice":
        if not r.values:
            raise SweepError(
                f"sweep parameter '{r.path}' is a choice without values", loc=where, hint="values: [64, 128, 256]"
            )
        if r.HasField("low") or r.HasField("high"):
            raise SweepError(f"sweep parameter '{r.path}' is a choice: give values, not low/high", loc=where)
        return Range(r.path, kind, 0.0, 0.0, None, False, tuple(r.values), where)
    if r.values:
        raise SweepError(f"sweep parameter '{r.path}' is {kind}: give low and high, not values", loc=where)
    if not (r.HasField("low") and r.HasField("high")):
        raise SweepError(f"sweep parameter '{r.path}' needs low and high", loc=where)
    if not (math.isfinite(r.low) and math.isfinite(r.high)) or r.low > r.high:
        raise SweepError(
            f"sweep parameter '{r.path}' needs finite low <= high; got {r.low:g} and {r.high:g}", loc=where
        )
    if kind == "loguniform" and r.low <= 0:
        raise SweepError(f"sweep parameter '{r.path}' is loguniform, so low must be positive; got {r.low:g}", loc=where)
    if step is not None and (step <= 0 or kind == "loguniform"):
        raise SweepError(
            f"sweep parameter '{r.path}': step must be positive and is not used with loguniform", loc=where
        )
    if kind == "int":
        for name, value in (("low", r.low), ("high", r.high), ("step", step or 1)):
            if value != int(value):
                raise SweepError(
                    f"sweep parameter '{r.path}' is int, so {name} must be a whole number; got {value:g}", loc=where
                )
        if r.log and (r.low < 1 or step not in (None, 1)):
            raise SweepError(
                f"sweep parameter '{r.path}': an int range on a log scale needs low >= 1 and no step", loc=where
            )
    elif r.log:
        raise SweepError(f"sweep parameter '{r.path}': log applies to int ranges; use type loguniform", loc=where)
    return Range(r.path, kind, r.low, r.high, step, r.log, (), where)


# ---- the study ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What every trial of a sweep shares."""

    spec: str
    sweep: Sweep
    out: Path
    solver_file: str | None = None
    overrides: tuple[str, ...] = ()
    device: str | None = None


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SweepError(
            "netspec sweep needs Optuna, which is not installed",
            hint="pip install 'netspec[sweep]' (or pip install optuna)",
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _study(job: Job, create: bool, worker: int = 0) -> optuna.Study:
    """The sweep's study in its journal. Parallel workers seed their samplers apart, or they would all
    propose the same first values."""
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    s = job.sweep
    seed = s.seed + worker
    if s.sampler == "grid":
        sampler = optuna.samplers.GridSampler({r.path: r.grid() for r in s.ranges}, seed=seed)
    elif s.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner() if s.pruner == "median" else optuna.pruners.NopPruner()
    storage = JournalStorage(JournalFileBackend(str(job.out / JOURNAL)))
    direction = "maximize" if s.maximize else "minimize"
    if create:
        return optuna.create_study(
            storage=storage, study_name=STUDY, direction=direction, sampler=sampler, pruner=pruner
        )
    return optuna.load_study(storage=storage, study_name=STUDY, sampler=sampler, pruner=pruner)


def _finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Done for good: completed, pruned, or failed by its own settings. A trial that failed without an
    error of its own was interrupted (Ctrl-C, or the sweep was killed) and runs again."""
    return trial.state.is_finished() and (trial.state.name != "FAIL" or "error" in trial.user_attrs)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One process at a time asks for a new trial, so that `parallel` workers start exactly `trials`."""
    with open(out / ".ask.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _next_trial(study: optuna.Study, job: Job) -> optuna.Trial | None:
    with _locked(job.out):
        trials = study.get_trials(deepcopy=False)
        started = sum(1 for t in trials if _finished(t) or t.state.name == "RUNNING")
        return study.ask() if started < job.sweep.trials else None


def _recover(study: optuna.Study) -> int:
    """Trials left running by a sweep that was killed are marked as interrupted and run again with the
    same values."""
    optuna = _optuna()
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
    return len(stale)


def sweep(
    spec: str,
    *,
    out: str | None = None,
    trials: int | None = None,
    resume: bool = False,
    solver_file: str | None = None,
    sweep_file: str | None = None,
    overrides: tuple[str, ...] = (),
    device: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs a sweep to its number of finished trials; returns the best trial (what `netspec sweep`
    prints). Every range is checked against the spec before the first trial starts."""
    s = read_sweep(spec, sweep_file)
    if trials is not None:
        if trials < 1:
            raise SweepError(f"--trials must be at least 1, got {trials}")
        s = Sweep(s.metric, s.maximize, trials, s.sampler, s.seed, s.pruner, s.parallel, s.ranges)
    out_dir = Path(out) if out else Path("runs") / f"{Path(spec).stem}-sweep"
    job = Job(spec, s, out_dir, solver_file, tuple(overrides), device)
    _check_job(job)
    journal = out_dir / JOURNAL
    if resume and not journal.is_file():
        raise SweepError(
            f"there is no sweep to resume in '{out_dir}' (no {JOURNAL})", hint="run without --resume to start one"
        )
    if not resume and journal.exists():
        raise SweepError(
            f"'{out_dir}' already holds a sweep", hint="pass --resume to continue it, or choose another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    study = _study(job, create=not resume)
    if resume:
        n = _recover(study)
        done = sum(1 for t in study.get_trials(deepcopy=False) if _finished(t))
        echo(
            f"resuming the sweep in {out_dir}: {done} trial(s) finished"
            + (f", {n} interrupted one(s) to run again" if n else "")
        )
    names = [r.path for r in s.ranges]
    echo(_row("trial", "state", s.metric, names, widths := _widths(s)))
    if s.parallel == 1:
        _work(job, widths, echo)
    else:
        _work_in_parallel(job, widths, echo)
    return _finish(study, job)


def _check_job(job: Job) -> None:
    """Every path of the sweep must name a field of the spec; the metric must be a test output. Checked
    with each range's first value, located at the range in the sweep."""
    from netspec.net import build_net

    probe = []
    for r in job.sweep.ranges:
        value = r.values[0] if r.type == "choice" else (str(int(r.low)) if r.type == "int" else repr(r.low))
        probe.append(f"{r.path}={value}")
    for i, item in enumerate(probe):
        try:
            _config(job, (item,))
        except NetspecError as e:
            r = job.sweep.ranges[i]
            msg = e.msg.removeprefix("--set ")  # the path was written in the sweep, not given to --set
            raise SweepError(
                f"sweep parameter '{r.path}' {msg}"
                if msg.startswith("names ")
                else f"sweep parameter '{r.path}': {msg}",
                loc=r.loc,
                hint=e.hint,
            ) from None
    config = _config(job, ())
    if not config.tests:
        raise SweepError(
            "a sweep needs testing to measure its metric: the solver has no test_interval",
            hint="set solver.test_interval (and test_iter), or pass --set solver.test_interval=N",
        )
    test = config.tests[0]
    outputs = build_net(test.spec, "TEST", test.stages, test.level).outputs
    if job.sweep.metric not in outputs:
        raise SweepError(
            f"the sweep's metric '{job.sweep.metric}' is not an output of the test net",
            hint=did_you_mean(job.sweep.metric, outputs) or "test outputs: " + ", ".join(outputs),
        )


def _config(job: Job, overrides: tuple[str, ...]) -> Any:
    from netspec.train.config import load_config, with_solver_file

    items = (*job.overrides, *overrides)
    return with_solver_file(job.spec, job.solver_file, items) if job.solver_file else load_config(job.spec, items)


def _work(job: Job, widths: list[int], echo: Callable[[str], None], worker: int = 0) -> None:
    study = _study(job, create=False, worker=worker)
    while (trial := _next_trial(study, job)) is not None:
        row = _run_trial(study, trial, job)
        echo(
            _row(
                str(trial.number),
                row["state"],
                row["value"],
                [r.shown(row["params"][r.path]) for r in job.sweep.ranges],
                widths,
            )
        )
        if row["state"] == "interrupted":
            raise KeyboardInterrupt


def _worker(job: Job, widths: list[int], threads: int, worker: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _work(job, widths, lambda line: print(line, flush=True), worker)


def _work_in_parallel(job: Job, widths: list[int], echo: Callable[[str], None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // job.sweep.parallel)
    procs = [ctx.Process(target=_worker, args=(job, widths, threads, i)) for i in range(job.sweep.parallel)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join()
        raise
    if any(p.exitcode for p in procs):
        echo("warning: a sweep worker ended early; --resume runs its trial again")


def _run_trial(study: optuna.Study, trial: optuna.Trial, job: Job) -> dict[str, Any]:
    """One training run with the trial's values, in `OUT/trial_NNN/`; tells the study how it ended."""
    optuna = _optuna()
    from netspec.train.solver import Solver

    s = job.sweep
    folder = job.out / f"trial_{trial.number:03d}"
    if folder.exists():
        shutil.rmtree(folder)  # a run that was interrupted: start it afresh
    params = {r.path: r.suggest(trial) for r in s.ranges}
    items = tuple(f"{k}={v}" for k, v in params.items())
    if not s.varies_seed:
        items = (f"solver.random_seed={s.seed + trial.number}", *items)
    trial.set_user_attr("folder", folder.name)
    row: dict[str, Any] = {"params": params, "value": "", "state": "failed"}
    start = time.monotonic()
    try:
        config = _config(job, items)
        folder.mkdir(parents=True)
        _write_spec(config, folder / "spec.yaml")
        solver = Solver(config, device=job.device, out_dir=folder, quiet=True)

        def report(iteration: int, outputs: dict[str, float]) -> bool:
            value = outputs.get(s.metric)
            if iteration == 0 or value is None or not math.isfinite(value):
                return False  # the test before training says nothing about the trial's settings
            trial.report(value, iteration)
            return trial.should_prune()

        solver.on_test = report
        summary = solver.solve()
    except NetspecError as e:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(str(e) + "\n", encoding="utf-8")
        trial.set_user_attr("error", str(e).splitlines()[0])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        row["value"] = "error: " + str(e).splitlines()[0]
        return row
    trial.set_user_attr("seconds", round(time.monotonic() - start, 2))
    if summary["stopped"] == "interrupted":
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        row["state"] = "interrupted"
        return row
    tests = summary["test"]
    value = tests[0].get(s.metric) if tests else None
    if summary["stopped"] == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        row.update(state="pruned", value=f"{value:.5g}" if value is not None else "")
    elif value is None or not math.isfinite(value):
        trial.set_user_attr("error", f"{s.metric} was {value}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        row["value"] = f"{s.metric} = {value}"
    else:
        study.tell(trial, value)
        row.update(state="complete", value=f"{value:.5g}")
    return row


def _write_spec(config: Any, path: Path) -> None:
    """The trial's net with its solver settings as one YAML spec, trainable as it is."""
    net = pb.NetParameter()
    net.CopyFrom(config.train.spec.message)
    net.ClearField("sweep")
    if all(t.spec is config.train.spec for t in config.tests):
        solver = net.solver
        solver.CopyFrom(config.param)
        for name in _NET_FIELDS:
            solver.ClearField(name)
    path.write_text(to_yaml(net), encoding="utf-8")


# ---- output -------------------------------------------------------------------------------------------


def _widths(s: Sweep) -> list[int]:
    return [5, 11, max(10, len(s.metric)), *(max(12, len(r.path)) for r in s.ranges)]


def _row(number: str, state: str, value: str, params: list[str], widths: list[int]) -> str:
    cells = [number, state, value, *params]
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _finish(study: optuna.Study, job: Job) -> dict[str, Any]:
    """Writes trials.csv and best.yaml; returns the best trial's summary."""
    optuna = _optuna()
    s = job.sweep
    trials = study.get_trials(deepcopy=False)
    pick = max if s.maximize else min
    best: float | None = None
    with open(job.out / "trials.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", s.metric, "best", *[r.path for r in s.ranges], "seconds", "folder", "error"])
        for t in trials:
            if not _finished(t):
                continue
            value: Any = ""
            if t.state == optuna.trial.TrialState.COMPLETE:
                value = t.value
                best = value if best is None else pick(best, value)
            elif t.intermediate_values:  # a pruned trial: its last test
                value = t.intermediate_values[max(t.intermediate_values)]
            w.writerow(
                [
                    t.number,
                    t.state.name.lower(),
                    value,
                    "" if best is None else best,
                    *[t.params.get(r.path, "") for r in s.ranges],
                    t.user_attrs.get("seconds", ""),
                    t.user_attrs.get("folder", ""),
                    t.user_attrs.get("error", ""),
                ]
            )
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "out": str(job.out),
        "trials": sum(1 for t in trials if _finished(t)),
        "complete": len(complete),
        "best": None,
    }
    if not complete:
        return summary
    winner = study.best_trial
    spec = job.out / winner.user_attrs["folder"] / "spec.yaml"
    best_yaml = job.out / "best.yaml"
    shutil.copyfile(spec, best_yaml)
    summary["best"] = {
        "trial": winner.number,
        "value": winner.value,
        "params": dict(winner.params),
        "spec": str(best_yaml),
        "metric": s.metric,
    }
    return summary


def read_trials(path: str) -> tuple[str, list[tuple[float, float]], list[tuple[float, float]]]:
    """From a sweep folder's trials.csv: the metric's name, its value for each completed trial, and the
    best value so far at each of them, as (trial, value) points."""
    from netspec.errors import DataError

    p = Path(path) / "trials.csv"
    if not p.is_file():
        raise DataError(f"'{path}' is not a sweep folder (no trials.csv)")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[:2] != ["trial", "state"] or len(header) < 4 or header[3] != "best":
            raise DataError(f"'{p}' is not a netspec trials file")
        points, best = [], []
        for n, row in enumerate(reader, 2):
            if len(row) < 4 or row[1] != "complete":
                continue
            try:
                x, value, so_far = float(row[0]), float(row[2]), float(row[3])
            except ValueError:
                raise DataError(f"{p}:{n}: the values '{row[2]}', '{row[3]}' are not numbers") from None
            points.append((x, value))
            best.append((x, so_far))
    return header[2], points, best
