"""netspec sweep: trials are ordinary training runs; the study resumes; ranges are checked up front."""

from __future__ import annotations

import csv
import re
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from netspec.cli import main
from netspec.errors import SweepError
from netspec.netfile import load_net_text, to_yaml
from netspec.spec.emit import to_prototxt
from netspec.train.sweep import read_sweep, sweep

optuna = pytest.importorskip("optuna")

NET = """\
name: IrisMLP
layer:
  - {name: iris, type: Dataset, top: [data, label], dataset_param: {source: iris, batch_size: 30}}
  - {name: fc1, type: InnerProduct, inner_product_param: {num_output: 16, weight_filler: xavier}}
  - {name: relu1, type: ReLU, bottom: fc1, top: fc1}
  - {name: fc2, type: InnerProduct, inner_product_param: {num_output: 3, weight_filler: xavier}}
  - {name: accuracy, type: Accuracy, bottom: [fc2, label], include: {phase: TEST}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [fc2, label]}
solver: {type: Adam, base_lr: 0.01, max_iter: 12, test_interval: 6, random_seed: 1}
"""
SWEEP = """\
sweep:
  metric: accuracy
  trials: 3
  seed: 3
  parameters:
    solver.base_lr: {type: loguniform, low: 0.001, high: 0.1}
    fc1.inner_product_param.num_output: {type: choice, values: [4, 8]}
"""


def write(tmp_path: Path, text: str, name: str = "iris.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """A finished three-trial sweep, shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("sweep")
    lines: list[str] = []
    summary = sweep(write(tmp, NET + SWEEP), out=str(tmp / "sweep"), echo=lines.append)
    return tmp / "sweep", summary, lines


def test_a_sweep_trains_each_trial_and_its_best_spec_trains_to_the_same_result(
    finished: tuple[Path, dict, list[str]], tmp_path: Path
) -> None:
    out, summary, lines = finished
    table = rows(out)
    assert [r["trial"] for r in table] == ["0", "1", "2"]
    assert all(r["state"] == "complete" for r in table)
    assert {r["fc1.inner_product_param.num_output"] for r in table} <= {"4", "8"}
    assert all(0.001 <= float(r["solver.base_lr"]) <= 0.1 for r in table)
    values = [float(r["accuracy"]) for r in table]
    assert [float(r["best"]) for r in table] == [max(values[: i + 1]) for i in range(3)]
    assert lines[0].split() == ["trial", "state", "accuracy", "solver.base_lr", "fc1.inner_product_param.num_output"]
    assert len(lines) == 4
    best = summary["best"]
    assert best["value"] == max(values) and best["trial"] == values.index(max(values))
    for r in table:  # each trial is a run of its own, seeded from the sweep's seed
        folder = out / r["folder"]
        assert (folder / "metrics.csv").is_file() and (folder / "spec.yaml").is_file()
        assert f"random_seed: {3 + int(r['trial'])}" in (folder / "spec.yaml").read_text()
    retrained = CliRunner().invoke(main, ["train", str(out / "best.yaml"), "--out", str(tmp_path / "again"), "--quiet"])
    assert retrained.exit_code == 0, retrained.output
    assert f"accuracy = {best['value']:.4f}" in retrained.output


def test_a_killed_sweep_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    spec, out = write(tmp_path, NET + SWEEP), tmp_path / "sweep"
    sweep(spec, out=str(out), trials=2, echo=lambda _: None)
    first = {r["trial"]: r for r in rows(out)}
    stamps = {t: (out / r["folder"] / "metrics.csv").stat().st_mtime_ns for t, r in first.items()}
    # what a SIGKILL leaves: a trial the study saw start and never end, and its half-written folder
    study = optuna.load_study(
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))),
        study_name="netspec-sweep",
    )
    killed = study.ask()
    killed.suggest_float("solver.base_lr", 0.001, 0.1, log=True)
    killed.suggest_categorical("fc1.inner_product_param.num_output", ["4", "8"])
    (out / "trial_002").mkdir()
    lines: list[str] = []
    summary = sweep(spec, out=str(out), trials=3, resume=True, echo=lines.append)
    assert lines[0] == "resuming the sweep in " + str(out) + ": 2 trial(s) finished, 1 interrupted one(s) to run again"
    table = rows(out)
    assert [r["trial"] for r in table] == ["0", "1", "3"]  # 2 was the killed one, run again as 3
    assert {k: table[2][k] for k in ("solver.base_lr", "fc1.inner_product_param.num_output")} == {
        "solver.base_lr": repr(killed.params["solver.base_lr"]),
        "fc1.inner_product_param.num_output": killed.params["fc1.inner_product_param.num_output"],
    }
    assert {t: (out / first[t]["folder"] / "metrics.csv").stat().st_mtime_ns for t in first} == stamps
    assert summary["trials"] == 3


def test_a_sweep_folder_is_not_overwritten_nor_resumed_from_nothing(tmp_path: Path) -> None:
    spec, out = write(tmp_path, NET + SWEEP), tmp_path / "sweep"
    with pytest.raises(SweepError, match="there is no sweep to resume"):
        sweep(spec, out=str(out), resume=True, echo=lambda _: None)
    sweep(spec, out=str(out), trials=1, echo=lambda _: None)
    with pytest.raises(SweepError) as e:
        sweep(spec, out=str(out), echo=lambda _: None)
    assert str(e.value) == (
        f"'{out}' already holds a sweep\n  hint: pass --resume to continue it, or choose another --out"
    )


def test_a_pruned_trial_stops_at_its_test_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, out = write(tmp_path, NET + SWEEP.replace("trials: 3", "trials: 2")), tmp_path / "sweep"
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    summary = sweep(spec, out=str(out), echo=lambda _: None)
    table = rows(out)
    assert [r["state"] for r in table] == ["pruned", "pruned"]
    assert summary["best"] is None
    for r in table:  # stopped at the first test, at iteration 6 of 12, with the test's value recorded
        log = (out / r["folder"] / "train.log").read_text()
        assert "stopped at iteration 6: pruned" in log
        assert float(r["accuracy"]) >= 0


def test_a_path_the_net_does_not_have_is_refused_before_any_trial(tmp_path: Path) -> None:
    bad = SWEEP.replace("fc1.inner_product_param.num_output", "fc1.inner_product_param.num_ouput")
    spec, out = write(tmp_path, NET + bad), tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", spec, "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == (
        f"{spec}:16:5: sweep parameter 'fc1.inner_product_param.num_ouput': unknown field "
        "'num_ouput' in InnerProductParameter\n  hint: did you mean 'num_output'?\n"
    )
    assert not out.exists()
    bad = SWEEP.replace("fc1.inner", "fc9.inner")
    result = CliRunner().invoke(main, ["sweep", write(tmp_path, NET + bad), "--out", str(out)])
    assert (
        "sweep parameter 'fc9.inner_product_param.num_output' names layer 'fc9', which the net does not have\n"
        "  hint: did you mean 'fc2'?" in result.output
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "metric: accuracy",
            "error: the sweep's metric 'acuracy' is not an output of the test net\n  hint: did you mean 'accuracy'?",
        ),
        (
            "type: loguniform, low: 0.001",
            ":15:5: sweep parameter 'solver.base_lr' is loguniform, so low must be positive; got 0",
        ),
        (
            "type: loguniform",
            ":15:22: sweep parameter 'solver.base_lr' has type 'logunifrom'; give one of uniform, "
            "loguniform, int, choice\n  hint: did you mean 'loguniform'?",
        ),
        ("trials: 3", ":13:3: sweep sampler must be one of tpe, random, grid; got 'grd'\n  hint: did you mean 'grid'?"),
    ],
)
def test_sweep_settings_are_checked_with_their_place(tmp_path: Path, change: str, message: str) -> None:
    edited = {
        "metric: accuracy": "metric: acuracy",
        "type: loguniform, low: 0.001": "type: loguniform, low: 0",
        "type: loguniform": "type: logunifrom",
        "trials: 3": "trials: 3\n  sampler: grd",
    }[change]
    spec = write(tmp_path, NET + SWEEP.replace(change, edited))
    result = CliRunner().invoke(main, ["sweep", spec, "--out", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert result.output.rstrip("\n").endswith(message)
    assert "Traceback" not in result.output


def test_the_grid_sampler_takes_finite_ranges_and_caps_the_trials(tmp_path: Path) -> None:
    grid = SWEEP.replace("trials: 3", "trials: 10\n  sampler: grid").replace(
        "{type: loguniform, low: 0.001, high: 0.1}", "{type: choice, values: [0.01, 0.03]}"
    )
    assert read_sweep(write(tmp_path, NET + grid)).trials == 4
    bad = SWEEP.replace("trials: 3", "trials: 3\n  sampler: grid")
    with pytest.raises(
        SweepError, match=re.escape("the grid sampler needs choice or int parameters; 'solver.base_lr' is loguniform")
    ):
        read_sweep(write(tmp_path, NET + bad))


def test_a_sweep_file_serves_nets_without_a_sweep_section(tmp_path: Path) -> None:
    spec = write(tmp_path, NET)
    with pytest.raises(SweepError, match="has no sweep section"):
        read_sweep(spec)
    sweep_file = write(tmp_path, SWEEP.replace("sweep:\n", "").replace("\n  ", "\n").lstrip(), "sweep.yaml")
    s = read_sweep(spec, sweep_file)
    assert [r.path for r in s.ranges] == ["solver.base_lr", "fc1.inner_product_param.num_output"]
    assert s.maximize and s.trials == 3


def test_the_sweep_section_converts_between_yaml_and_prototxt_without_loss(tmp_path: Path) -> None:
    net = load_net_text(NET + SWEEP, "iris.yaml", "yaml").message
    again = load_net_text(to_prototxt(net), "iris.prototxt", "prototxt").message
    assert again == net
    assert load_net_text(to_yaml(net), "again.yaml", "yaml").message == net
    assert [p.path for p in net.sweep.parameters] == ["solver.base_lr", "fc1.inner_product_param.num_output"]


def test_plot_draws_a_sweep_folder(finished: tuple[Path, dict, list[str]], tmp_path: Path) -> None:
    out = finished[0]
    result = CliRunner().invoke(main, ["plot", str(out), "-o", str(tmp_path / "sweep.svg")])
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "sweep.svg").read_text()
    assert "accuracy per trial" in svg and "best so far" in svg


def test_without_optuna_the_message_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(SweepError) as e:
        sweep(write(tmp_path, NET + SWEEP), out=str(tmp_path / "s"), echo=lambda _: None)
    assert str(e.value) == (
        "error: netspec sweep needs Optuna, which is not installed".removeprefix("error: ")
        + "\n  hint: pip install 'netspec[sweep]' (or pip install optuna)"
    )
