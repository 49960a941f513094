"""What training and testing say about themselves is true: the summary after Ctrl-C, what went non-finite,
which weights a snapshot holds, one loss line, one learning rate per iteration, the progress line."""

from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path

import pytest
import torch

from netspec import snapshot
from netspec.train.progress import Progress
from netspec.train.solver import Solver
from tests.conftest import MODELS
from tests.test_train import cli, small_spec


def _stop_at(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """Ctrl-C as the signal handler records it, after the update that reaches `iteration`."""
    step = Solver.step

    def stepped(self: Solver, inputs: object = None) -> float:
        loss = step(self, inputs)  # type: ignore[arg-type]
        if self.iter == iteration:
            self._requests.add("stop")
        return loss

    monkeypatch.setattr(Solver, "step", stepped)


def test_ctrl_c_summary_names_the_last_test_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = small_spec(tmp_path, max_iter=200)
    _stop_at(monkeypatch, 59)
    code, out = cli("train", spec, "--out", str(tmp_path / "run"), "--quiet")
    assert code == 130
    lines = out.splitlines()
    assert lines[0] == "stopped at iteration 59"
    assert lines[1].startswith("test (the last one, at iteration 50): accuracy = ")
    assert lines[2:] == [
        f"snapshot: {tmp_path / 'run' / 'small_iter_59.pt'}",
        f"metrics:  {tmp_path / 'run' / 'metrics.csv'}  (netspec plot "
        f"{tmp_path / 'run' / 'metrics.csv'} -o curves.png)",
    ]
    assert snapshot.load(tmp_path / "run" / "small_iter_59.pt")["iter"] == 59
    log = (tmp_path / "run" / "train.log").read_text()
    assert "small_iter_59.pt" not in log  # named once, by the summary


def test_ctrl_c_before_any_test_says_none_was_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = small_spec(tmp_path, max_iter=200, extra=", test_initialization: false")
    _stop_at(monkeypatch, 3)
    code, out = cli("train", spec, "--out", str(tmp_path / "run"), "--quiet")
    assert code == 130
    assert out.splitlines()[:3] == [
        "stopped at iteration 3",
        "test: none was run",
        f"snapshot: {tmp_path / 'run' / 'small_iter_3.pt'}",
    ]


def test_gradients_too_large_are_named_not_the_loss(tmp_path: Path) -> None:
    code, out = cli(
        "train",
        str(MODELS / "digits_cnn.yaml"),
        "--set",
        "solver.base_lr=1e6",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert code == 1
    first = out.splitlines()[0]
    assert (
        ": layer 'fc2' (InnerProduct): iteration 1: the gradient of this layer's parameter blob 0 grew too "
        "large (largest value " in first
    )
    assert first.endswith("; its L2 norm overflows), with the loss at 0; training stopped before updating the weights")
    assert "the loss became" not in out


def test_early_stopping_snapshots_hold_their_iterations_weights(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=3000, extra=", early_stopping: {metric: loss, patience: 2, min_delta: 10}")
    Path(spec).write_text(Path(spec).read_text().replace("test_interval: 50,", "test_interval: 10,"))
    code, out = cli("train", spec, "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("test (the best weights, from iteration 0): accuracy = ")
    assert lines[1:3] == [
        f"snapshot: {tmp_path / 'run' / 'small_iter_20.pt'}",
        f"best:     {tmp_path / 'run' / 'small_best.pt'}",
    ]
    last, best = snapshot.load(tmp_path / "run" / "small_iter_20.pt"), snapshot.load(tmp_path / "run" / "small_best.pt")
    assert (last["iter"], best["iter"]) == (20, 0)
    assert not torch.equal(last["blobs"]["fc1"][0], best["blobs"]["fc1"][0])


def test_test_prints_the_loss_once(tmp_path: Path) -> None:
    code, out = cli("test", str(MODELS / "logistic_regression.yaml"))
    assert code == 0
    assert out == "accuracy = 0\nloss = 1.09861\n(1 batch)\n"  # constant fillers: every class equally likely
    spec = tmp_path / "weighted.yaml"
    spec.write_text(
        (MODELS / "logistic_regression.yaml")
        .read_text()
        .replace("bottom: [logits, label]}", "bottom: [logits, label], loss_weight: 2}")
    )
    code, out = cli("test", str(spec))
    assert out == (
        "accuracy = 0\nloss = 1.09861\ntotal loss = 2.19722 (the weighted sum of the loss outputs)\n(1 batch)\n"
    )


def test_one_learning_rate_per_iteration_in_the_metrics(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=100)
    Solver(spec, out_dir=tmp_path / "run", quiet=True).solve()
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rates: dict[str, set[str]] = {}
    for row in rows:
        if row["lr"]:
            rates.setdefault(row["iteration"], set()).add(row["lr"])
    assert rates and all(len(r) == 1 for r in rates.values())
    assert rates["40"] == {"0.05"} and rates["30"] == {"0.1"}  # step policy: gamma 0.5 every 40


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("columns", [80, 40])
def test_the_progress_line_fits_the_terminal_and_counts_agree(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    stream = _Terminal()
    progress = Progress(1798, 50, None, stream=stream)
    progress.iteration(51, 1.234, 0.123456, 0.01, 12345.6)
    drawn = stream.getvalue().split("\r\033[K")[-1]
    assert len(drawn) < columns
    assert drawn.startswith("[") and " 52/1798 " in drawn and "iteration" not in drawn


def _svg_panel(svg: str, title: str) -> tuple[list[str], list[float]]:
    """The tick labels and the polyline's y values of one panel of a drawn SVG."""
    texts = re.findall(r'<text x="4" y="([\d.]+)" fill="#444444">([^<]+)</text>', svg)
    top = float(re.search(rf'y="([\d.]+)" fill="#000000">{re.escape(title)}<', svg).group(1))  # type: ignore[union-attr]
    labels = [t for y, t in texts if top < float(y) < top + 260]
    lines = re.findall(r'<polyline points="([^"]+)"', svg)
    ys = [float(p.split(",")[1]) for line in lines for p in line.split()]
    return labels, [y for y in ys if top < y < top + 260]


def test_plot_flat_curves_and_log_axis(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "iteration,epoch,lr,loss,seconds\n"
        + "".join(f"{i},0,0.01,{10 ** (1 - i / 50):.6g},0\n" for i in range(0, 101, 10))
    )
    code, _ = cli("plot", str(metrics), "-o", str(tmp_path / "c.svg"))
    assert code == 0
    labels, ys = _svg_panel((tmp_path / "c.svg").read_text(), "learning rate")
    assert "0.01" in labels and all(0.009 <= float(t) <= 0.011 for t in labels)
    assert len(set(ys)) == 1 and 260 + 28 + 40 < ys[0] < 2 * 260 - 30 - 40  # mid-panel, not at an edge
    code, _ = cli("plot", str(metrics), "-o", str(tmp_path / "log.svg"), "--log")
    assert code == 0
    labels, ys = _svg_panel((tmp_path / "log.svg").read_text(), "loss (log scale)")
    assert labels == ["0.1", "1", "10"]
    steps = [b - a for a, b in itertools.pairwise(ys)]
    assert max(steps) - min(steps) < 0.2  # a geometric decay is a straight line on a log axis


def test_overfit_stops_after_a_bounded_number_of_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from netspec.train import commands

    monkeypatch.setattr(commands, "OVERFIT_PASSES", 5)
    spec = small_spec(tmp_path, max_iter=1000)
    code, out = cli(
        "train", spec, "--overfit", "20", "--set", "solver.base_lr=0", "--out", str(tmp_path / "o"), "--quiet"
    )
    assert code == 1
    assert " on 20 examples after 5 iterations (5 passes; stopped after the limit of 5 passes) - a net that " in out
