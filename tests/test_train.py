"""`netspec train` end to end: the main job, snapshots and exact resumption (also after kill -9),
signals, non-finite detection, early stopping, the overfit check, and bad data or settings."""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspec import snapshot
from netspec.cli import main
from netspec.errors import WeightsError
from netspec.train.solver import Solver
from tests.conftest import MODELS

SMALL = """
name: small
layer:
  - {name: digits, type: Dataset, top: [data, label], transform_param: {scale: 0.0625},
     dataset_param: {source: digits, batch_size: 32}}
  - {name: fc1, type: InnerProduct, bottom: data, inner_product_param: {num_output: 32, weight_filler: xavier}}
  - {name: relu, type: ReLU, bottom: fc1, top: fc1}
  - {name: drop, type: Dropout, bottom: fc1, top: fc1, dropout_param: {dropout_ratio: 0.2}}
  - {name: fc2, type: InnerProduct, inner_product_param: {num_output: 10, weight_filler: xavier}}
  - {name: accuracy, type: Accuracy, bottom: [fc2, label], include: {phase: TEST}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [fc2, label]}
solver: {type: SGD, base_lr: 0.1, momentum: 0.9, lr_policy: step, gamma: 0.5, stepsize: 40, max_iter: MAX,
         test_interval: 50, snapshot: 20, display: 10, random_seed: 7}
"""


def small_spec(tmp_path: Path, max_iter: int = 120, extra: str = "", **replace: str) -> str:
    text = SMALL.replace("MAX", str(max_iter)).replace("random_seed: 7}", f"random_seed: 7{extra}}}")
    for old, new in replace.items():
        text = text.replace(old.replace("_", " ") + ",", new + ",")
    path = tmp_path / "small.yaml"
    path.write_text(text)
    return str(path)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_main_job_trains_the_digits_cnn_past_97_percent(tmp_path: Path) -> None:
    code, out = cli("train", str(MODELS / "digits_cnn.yaml"), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, out
    accuracy = float(out.split("accuracy = ")[1].split(",")[0])
    assert accuracy >= 0.97
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert "snapshot: " in out and (tmp_path / "run" / "digits_cnn_iter_899.pt").is_file()
    code, out = cli(
        "test", str(MODELS / "digits_cnn.yaml"), "--weights", str(tmp_path / "run" / "digits_cnn_iter_899.pt")
    )
    assert (
        code == 0
        and f"accuracy = {accuracy:.4f}"[:16] in f"accuracy = {float(out.split('accuracy = ')[1].split()[0]):.4f}"
    )
    code, out = cli("plot", str(tmp_path / "run" / "metrics.csv"), "-o", str(tmp_path / "curves.png"))
    assert code == 0 and (tmp_path / "curves.png").stat().st_size > 1000


def final_weights(path: Path) -> dict[str, list[torch.Tensor]]:
    return snapshot.load(path)["blobs"]


FULL = 200  # iterations of the runs that are interrupted and resumed


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[torch.Tensor]]:
    """The final weights of the small net trained for FULL iterations without a break (shared: both tests of
    resumption compare with it)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    Solver(small_spec(folder, max_iter=FULL), out_dir=folder / "full", quiet=True).solve()
    return final_weights(folder / "full" / f"small_iter_{FULL}.pt")


def test_resume_gives_exactly_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, uninterrupted: dict[str, list[torch.Tensor]]
) -> None:
    spec = small_spec(tmp_path, max_iter=FULL)
    half = Solver(spec, out_dir=tmp_path / "half", quiet=True)
    half.max_iter = 60  # stop early, as an interruption would
    half.solve()
    Solver(spec, out_dir=tmp_path / "half", quiet=True).solve(resume=tmp_path / "half" / "small_iter_60.pt")
    resumed = final_weights(tmp_path / "half" / f"small_iter_{FULL}.pt")
    for layer in uninterrupted:
        for a, b in zip(uninterrupted[layer], resumed[layer], strict=True):
            assert torch.equal(a, b), layer


TrainProcess = Callable[[str, Path], "subprocess.Popen[bytes]"]


@pytest.fixture
def train_process() -> Iterator[TrainProcess]:
    """Starts `netspec train SPEC --out DIR` in a process; one a failed test left running is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(spec: str, out: Path) -> subprocess.Popen[bytes]:
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "netspec", "train", spec, "--out", str(out)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        return started[-1]

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()


def _wait_for(out: Path, pattern: str, timeout: float = 60) -> list[Path]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(out.glob(pattern))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} in {out}")


def test_kill_9_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, train_process: TrainProcess, uninterrupted: dict[str, list[torch.Tensor]]
) -> None:
    spec = small_spec(tmp_path, max_iter=FULL)
    proc = train_process(spec, tmp_path / "killed")
    _wait_for(tmp_path / "killed", "small_iter_40.pt")  # the second snapshot: killed while training goes on
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    snaps = sorted((tmp_path / "killed").glob("small_iter_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    for snap in snaps:
        snapshot.load(snap)  # every snapshot on disk is whole, whenever the kill came
    last = snaps[-1]
    assert last.name != f"small_iter_{FULL}.pt"  # it did not finish before the kill
    code, out = cli("train", spec, "--resume", str(last), "--quiet")
    assert code == 0, out
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # a temporary file a kill left behind is cleared
    resumed = final_weights(tmp_path / "killed" / f"small_iter_{FULL}.pt")
    for layer in uninterrupted:
        for a, b in zip(uninterrupted[layer], resumed[layer], strict=True):
            assert torch.equal(a, b), layer


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sighup_snapshots_and_goes_on_and_sigint_snapshots_and_stops(
    tmp_path: Path, train_process: TrainProcess
) -> None:
    spec = small_spec(tmp_path, max_iter=100000)
    Path(spec).write_text(Path(spec).read_text().replace("snapshot: 20,", "snapshot: 0,"))
    proc = train_process(spec, tmp_path / "run")
    metrics = _wait_for(tmp_path / "run", "metrics.csv")[0]
    deadline = time.time() + 60
    while len(metrics.read_text().splitlines()) < 3 and time.time() < deadline:  # a header and two displays
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    first = _wait_for(tmp_path / "run", "small_iter_*.pt")
    assert proc.poll() is None  # still training
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"stopped at iteration" in stdout
    assert len(list((tmp_path / "run").glob("small_iter_*.pt"))) >= len(first) + 1


def test_corrupt_and_mismatched_snapshots_are_refused(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=20)
    Solver(spec, out_dir=tmp_path / "a", quiet=True).solve()
    good = tmp_path / "a" / "small_iter_20.pt"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:1000])
    code, out = cli("train", spec, "--resume", str(broken))
    assert code == 1 and out.startswith(f"error: '{broken}' is not a readable netspec snapshot")
    other = tmp_path / "other.yaml"
    other.write_text(Path(spec).read_text().replace("num_output: 32", "num_output: 16"))
    code, out = cli("train", str(other), "--resume", str(good))
    assert code == 1
    assert "does not match the net (shapes differ: fc1:0: (32, 64) in the snapshot, (16, 64) in the net" in out
    pickle = tmp_path / "evil.pt"
    torch.save({"format": "netspec-snapshot", "x": argparse.Namespace(code="would run on load")}, pickle)
    with pytest.raises(WeightsError, match="is not a readable netspec snapshot"):
        snapshot.load(pickle)


TINY = """
name: tiny
layer:
  - {name: data, type: Dataset, top: [data, label], dataset_param: {source: blobs, num_samples: 40, batch_size: 8}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [data, label]}
  - {name: save, type: HDF5Output, bottom: [data, label], hdf5_output_param: {file_name: preds/out.h5},
     include: {phase: TEST}}
solver: {type: SGD, base_lr: 0.1, max_iter: 2, random_seed: 1}
"""


def test_a_flipped_tensor_byte_is_refused_at_resume(tmp_path: Path) -> None:
    spec = tmp_path / "fc.yaml"
    spec.write_text(
        TINY.replace(
            "{name: loss, type: SoftmaxWithLoss, bottom: [data, label]}",
            "{name: fc, type: InnerProduct, bottom: data, top: fc, inner_product_param: "
            "{num_output: 2}}\n  - {name: loss, type: SoftmaxWithLoss, bottom: [fc, label]}",
        )
    )
    Solver(str(spec), out_dir=tmp_path / "a", quiet=True).solve()
    good = tmp_path / "a" / "fc_iter_2.pt"
    raw = bytearray(good.read_bytes())
    weights = snapshot.load(good)["blobs"]["fc"][0]
    at = bytes(raw).find(weights.numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0x01  # one bit of one weight: torch.load alone would load it as a slightly different value
    bad = tmp_path / "bad.pt"
    bad.write_bytes(raw)
    code, out = cli("train", str(spec), "--resume", str(bad))
    assert (code, out) == (
        1,
        f"error: snapshot '{bad}' is damaged: its contents do not match their checksum\n"
        "  hint: it changed after netspec wrote it; use an earlier snapshot\n",
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


_SMALL_STATE = {
    "format": snapshot.FORMAT,
    "version": snapshot.VERSION,
    "iter": 7,
    "solver_type": "SGD",
    "blobs": {"fc": [torch.arange(12, dtype=torch.float32).reshape(3, 4), torch.full((3,), 0.5)]},
    "history": {"fc:0": [torch.ones(3, 4)]},
    "rng": {"torch": torch.arange(16, dtype=torch.uint8)},
    "losses": [0.25, 0.125],
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_flipped_byte_is_refused_or_harmless(tmp_path: Path, where: float, xor: int) -> None:
    """A flipped byte anywhere (tensor data, pickle, zip headers) is refused with one line naming the file,
    or, where it lands in bytes nothing reads, loads exactly what was saved: never a traceback, never
    different values."""
    good = tmp_path / "good.pt"
    if not good.exists():
        snapshot.save_atomic(_SMALL_STATE, good)
    raw = bytearray(good.read_bytes())
    raw[int(where * len(raw))] ^= xor
    bad = tmp_path / "bad.pt"
    bad.write_bytes(raw)
    try:
        loaded = snapshot.load(bad)
    except WeightsError as e:
        assert "\n" not in e.msg
        assert re.fullmatch(
            rf"snapshot '{re.escape(str(bad))}' is damaged: its contents do not match their checksum"
            rf"|'{re.escape(str(bad))}' is not a (readable )?netspec snapshot( \(.+\))?",
            e.msg,
        ), e.msg
    else:
        assert _same(loaded, _SMALL_STATE)


def test_snapshots_without_a_checksum_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.pt"
    torch.save({"format": snapshot.FORMAT, "version": 1, "blobs": {"fc": [torch.ones(2)]}}, old)
    with pytest.raises(WeightsError) as e:
        snapshot.load(old)
    assert e.value.msg == (
        f"snapshot '{old}' has no checksum (format version 1, written by an older netspec); this "
        "netspec reads version 2"
    )


def test_named_inputs_must_be_regular_files(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=1)
    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)
    code, out = cli("train", spec, "--resume", str(pipe))
    assert (code, out) == (1, f"error: --resume '{pipe}' is a FIFO (named pipe); netspec opens only regular files\n")
    code, out = cli("train", spec, "--weights", "/dev/zero")
    assert (code, out) == (1, "error: --weights '/dev/zero' is a character device; netspec opens only regular files\n")
    link = tmp_path / "w.caffemodel"
    link.symlink_to("/dev/zero")
    code, out = cli("test", spec, "--weights", str(link))
    assert (code, out) == (1, f"error: --weights '{link}' is a character device; netspec opens only regular files\n")
    with pytest.raises(WeightsError) as e:
        snapshot.load(pipe)
    assert e.value.msg == f"snapshot '{pipe}' is a FIFO (named pipe); netspec opens only regular files"


def test_an_interrupted_write_leaves_the_old_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "s.pt"
    snapshot.save_atomic({"format": snapshot.FORMAT, "version": snapshot.VERSION, "n": torch.ones(3)}, target)

    def crash(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        snapshot.save_atomic({"format": snapshot.FORMAT, "version": snapshot.VERSION, "n": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(snapshot.load(target)["n"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]


def test_divergence_stops_with_the_layer_that_went_non_finite(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=200)
    Path(spec).write_text(Path(spec).read_text().replace("base_lr: 0.1", "base_lr: 1e30"))
    code, out = cli("train", spec, "--out", str(tmp_path / "run"))
    assert code == 1
    assert "layer '" in out and "became NaN or infinite; training stopped before updating the weights" in out
    assert "Traceback" not in out
    assert (tmp_path / "run" / "small_diverged.pt").is_file()


def test_early_stopping_keeps_the_best_weights(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=3000, extra=", early_stopping: {metric: loss, patience: 2, min_delta: 10}")
    Path(spec).write_text(Path(spec).read_text().replace("test_interval: 50,", "test_interval: 10,"))
    solver = Solver(spec, out_dir=tmp_path / "run", quiet=True)
    summary = solver.solve()
    assert summary["stopped"] == "early stopping"
    assert solver.iter == 20  # the first test sets the best; two more without a 10-point gain stop it
    assert (tmp_path / "run" / "small_best.pt").is_file()


def test_overfit_check(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=150)
    code, out = cli("train", spec, "--overfit", "20", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 0, out
    iterations = int(out.split(" after ")[1].split()[0])
    assert out == (
        f"overfit check: 100.0% training accuracy on 20 examples after {iterations} iterations "
        f"({iterations} passes; stopped as soon as they were fitted) - the net can fit them\n"
    )
    assert iterations < 150  # it stopped before max_iter
    code, out = cli(
        "train", spec, "--overfit", "200", "--set", "solver.max_iter=1", "--out", str(tmp_path / "p"), "--quiet"
    )
    assert code == 1 and "after 1 iterations (0.143 passes; stopped at max_iter) - a net that cannot fit" in out
    code, out = cli(
        "train", spec, "--overfit", "20", "--set", "solver.base_lr=0", "--out", str(tmp_path / "q"), "--quiet"
    )
    assert code == 1 and "after 150 iterations (150 passes; stopped at max_iter)" in out


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"data": np.zeros((10, 64), np.float32), "label": np.full(10, 12.0)},
            "label 12 in 'label' is out of range: layer 'loss' (SoftmaxWithLoss) has 10 classes (labels 0 to 9)",
        ),
        (
            {"data": np.zeros((10, 64), np.float32), "label": np.full(10, 1.5)},
            "label 1.5 in 'label' is not a whole number, but layer 'loss' (SoftmaxWithLoss) takes class indices",
        ),
    ],
)
def test_bad_labels(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "set.npz", **arrays)
    spec = small_spec(tmp_path)
    Path(spec).write_text(Path(spec).read_text().replace("source: digits", f"source: {tmp_path / 'set.npz'}"))
    code, out = cli("train", spec, "--out", str(tmp_path / "run"))
    assert code == 1 and message in out and "Traceback" not in out


def test_data_that_does_not_fit_the_net(tmp_path: Path) -> None:
    np.savez(tmp_path / "set.npz", data=np.zeros((10, 50), np.float32), label=np.zeros(10))
    spec = small_spec(tmp_path)
    Path(spec).write_text(
        Path(spec)
        .read_text()
        .replace("source: digits", f"source: {tmp_path / 'set.npz'}")
        .replace("batch_size: 32", "batch_size: 4, record_shape: [1, 8, 8]")
    )
    code, out = cli("train", spec, "--out", str(tmp_path / "run"))
    assert code == 1 and "record_shape (1, 8, 8) does not hold the 50 values of a record (50,)" in out


def test_missing_data_file_and_nonnumeric_csv(tmp_path: Path) -> None:
    spec = small_spec(tmp_path)
    Path(spec).write_text(Path(spec).read_text().replace("source: digits", "source: nowhere.csv"))
    code, out = cli("train", spec, "--out", str(tmp_path / "run"))
    assert code == 1 and "dataset_param.source 'nowhere.csv' does not exist" in out
    (tmp_path / "bad.csv").write_text("1,2,3\n4,five,6\n")
    Path(spec).write_text(Path(spec).read_text().replace("nowhere.csv", str(tmp_path / "bad.csv")))
    code, out = cli("train", spec, "--out", str(tmp_path / "run2"))
    assert code == 1 and f"{tmp_path / 'bad.csv'}:2: 'five' is not a number" in out


def test_xor_learns_xor_from_random_weights(tmp_path: Path) -> None:
    code, out = cli("train", str(MODELS / "xor_train.yaml"), "--out", str(tmp_path / "xor"), "--quiet")
    assert code == 0, out
    assert "accuracy = 1.0000" in out


@pytest.mark.parametrize(
    "name",
    [
        "mlp_text.yaml",
        "keras_cnn.yaml",
        "resnet_small.yaml",
        "inception_small.yaml",
        "logistic_regression.yaml",
        "linear_regression.yaml",
    ],
)
def test_ready_models_train_on_their_data(tmp_path: Path, name: str) -> None:
    code, out = cli(
        "train", str(MODELS / name), "--set", "solver.max_epoch=0.1", "--out", str(tmp_path / "r"), "--quiet"
    )  # a few iterations, then a test pass over all the test data
    assert code == 0, out
    assert "test: " in out and "loss = " in out


def test_time_reports_every_layer(tmp_path: Path) -> None:
    code, out = cli("time", str(MODELS / "lenet.prototxt"), "--iterations", "2")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "type", "forward", "ms", "backward", "ms"]
    assert any(line.startswith("conv1 ") for line in lines) and lines[-1].startswith("total")


def test_train_a_net_with_only_input_layers_explains(tmp_path: Path) -> None:
    spec = tmp_path / "s.prototxt"
    spec.write_text('base_lr: 0.1 max_iter: 3\nnet: "' + str(MODELS / "lenet.prototxt") + '"\n')
    code, out = cli("train", str(spec), "--out", str(tmp_path / "r"))
    assert code == 1 and "come from Input (or MemoryData) layers, so their values must be given" in out


def test_out_dir_is_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from netspec.train.commands import default_out_dir

    monkeypatch.chdir(tmp_path)
    assert default_out_dir("models/x.yaml") == Path("runs/x")
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "metrics.csv").write_text("")
    assert default_out_dir("models/x.yaml") == Path("runs/x-2")


def test_python_api(tmp_path: Path) -> None:
    import netspec

    solver = netspec.Solver(small_spec(tmp_path, max_iter=30), quiet=True)
    assert solver.iter == 0 and solver.lr == pytest.approx(0.1)
    loss = solver.step()
    assert solver.iter == 1 and math.isfinite(loss)
    assert set(solver.net.caffe_params()) == {"fc1", "fc2"}
    results = solver.test()
    assert set(results[0]) == {"accuracy", "loss"}
    summary = solver.solve()
    assert summary["iterations"] == 30 and summary["snapshot"] is None  # no out_dir: nothing written


def test_weights_initialise_by_layer_name(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, max_iter=20)
    Solver(spec, out_dir=tmp_path / "a", quiet=True).solve()
    trained = tmp_path / "a" / "small_iter_20.pt"
    code, out = cli(
        "train", spec, "--weights", str(trained), "--set", "solver.max_iter=1", "--out", str(tmp_path / "b")
    )
    assert code == 0 and "weights: 2 layer(s) loaded" in out
    more = ("--set", "fc2.inner_product_param.num_output=11")  # another output layer: fc1 still fits
    code, out = cli("train", spec, "--weights", str(trained), *more, "--out", str(tmp_path / "c"))
    assert code == 1 and "shape mismatch: fc2 blob 0: (10, 32) in the file, (11, 32) in the net" in out
    code, out = cli(
        "train",
        spec,
        "--weights",
        str(trained),
        "--allow-missing",
        *more,
        "--set",
        "solver.max_iter=1",
        "--out",
        str(tmp_path / "d"),
    )
    assert code == 0 and "weights: 1 layer(s) loaded; shape mismatch: fc2 blob 0" in out


def test_large_sources_stream_through_a_dataloader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lmdb

    from netspec._proto import netspec_pb2 as pb
    from netspec.data.feeder import Feeder
    from netspec.net import load

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(10):
            datum = pb.Datum(channels=1, height=4, width=4, data=bytes([i] * 16), label=i % 3)
            txn.put(f"{i:04d}".encode(), datum.SerializeToString())
    env.close()
    spec = tmp_path / "net.prototxt"
    spec.write_text(
        f'layer {{ name: "d" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }} '
        f'data_param {{ source: "{tmp_path / "db"}" batch_size: 4 backend: LMDB }} }}\n'
    )
    net = load(str(spec), "TRAIN")
    streamed = Feeder(net, torch.device("cpu"), seed=0, limit=1)  # 1 byte: nothing fits in memory
    held = Feeder(net, torch.device("cpu"), seed=0)
    assert streamed.sources[0].arrays is None and held.sources[0].arrays is not None
    for _ in range(4):  # wraps around the 10 records
        a, b = streamed.next(), held.next()
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])
    state = streamed.state()
    after = streamed.next()
    streamed.load_state(state)
    assert not multiprocessing.active_children()  # the loader that read ahead stopped its workers
    assert torch.equal(streamed.next()["data"], after["data"])
    assert multiprocessing.active_children()
    with streamed:  # its workers stop on leaving, not whenever the garbage collector finds them
        held.load_state(streamed.state())
        assert torch.equal(streamed.next()["data"], held.next()["data"])
    assert not multiprocessing.active_children()
    assert torch.equal(streamed.next()["data"], held.next()["data"])  # reading on after closing starts new ones
    streamed.close()
    assert not multiprocessing.active_children()

    monkeypatch.setenv("NETSPEC_MAX_MEMORY_MB", "0")  # the solver's TRAIN and TEST data stream too
    (tmp_path / "train.prototxt").write_text(
        spec.read_text().replace(" include { phase: TRAIN }", "")
        + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }\n'
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n'
    )
    (tmp_path / "solver.prototxt").write_text(
        'net: "train.prototxt" base_lr: 0.01 max_iter: 3 test_iter: 2 test_interval: 2 random_seed: 1\n'
    )
    solver = Solver(str(tmp_path / "solver.prototxt"), quiet=True)
    assert solver.solve()["iterations"] == 3 and solver.feeder.sources[0].arrays is None
    assert not multiprocessing.active_children()  # solve() stopped the workers of both nets' data


@pytest.mark.parametrize(
    ("value", "read"),
    [
        ("solver.max_iter=010", ("max_iter", 8)),
        ("solver.max_iter=0x10", ("max_iter", 16)),
        ("solver.base_lr=.5", ("base_lr", 0.5)),
        ("solver.debug_info=yes", ("debug_info", True)),
    ],
)
def test_set_values_are_read_as_yaml_spec_values(value: str, read: tuple[str, object]) -> None:
    from netspec.train.config import load_config

    config = load_config(str(MODELS / "xor_train.yaml"), (value,))
    assert getattr(config.param, read[0]) == read[1]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("solver.max_iter=08", "--set #1:1: field 'max_iter' takes a 32-bit integer, got '08'"),
        (
            "solver.max_iter=" + "9" * 5000,
            "--set #1:1: field 'max_iter' takes a 32-bit integer (-2147483648 to "
            "2147483647); " + "9" * 40 + "...9999999999 (5000 characters) is out of range",
        ),
        (
            "solver.max_iter=2147483648",
            "--set #1:1: field 'max_iter' takes a 32-bit integer (-2147483648 to "
            "2147483647); 2147483648 is out of range",
        ),
        ("solver.base_lr=1e999", "xor_train.yaml:23:3: base_lr must be a finite number, got inf"),
        ("solver.momentum=nan", "xor_train.yaml:24:3: momentum must be a finite number, got nan"),
        (
            "solver.max_iter=&a 1",
            "--set #1:1:1: YAML anchors (&a) are not allowed; specs are plain data: write the value out",
        ),
        (
            "solver.type=!!python/name:os.system",
            "--set #1:1:1: YAML tags (!!python/name:os.system) are not allowed; "
            "specs are plain data: write the value out",
        ),
        ("solver.max_iter=5\nbase_lr: 3", "--set #1:1: --set takes one value after '=', got 5\\nbase_lr: 3"),
        ("solver.type=a\udcff", "--set #1:1:2: U+DCFF is not a Unicode character (an undecodable byte?)"),
        ("solver.stepvalue=" + "[" * 200, "--set #1:1:101: blocks nest more than 100 levels deep here"),
    ],
)
def test_set_values_are_refused_with_one_located_line(value: str, message: str) -> None:
    from netspec.errors import NetspecError
    from netspec.train.config import load_config

    with pytest.raises(NetspecError) as e:
        load_config(str(MODELS / "xor_train.yaml"), (value,))
    assert str(e.value).split("\n")[0].removeprefix(str(MODELS) + "/") == message


def test_a_net_with_nothing_to_learn_runs_its_iterations(tmp_path: Path) -> None:
    """As in Caffe, the passes run (they update BatchNorm statistics, write HDF5Output) and no weight changes."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    code, out = cli("train", str(spec), "--out", str(tmp_path / "r"))
    assert code == 0, out
    assert (
        "note: the TRAIN net has no parameters to learn (none, or all with lr_mult 0): the iterations run forward "
        "passes only, as Caffe's do, and change no weights"
    ) in out.splitlines()
    assert (tmp_path / "r" / "tiny_iter_2.pt").is_file()


def test_hdf5_output_writes_into_the_out_folder_of_test_and_nowhere_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import h5py

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    monkeypatch.chdir(tmp_path)
    code, out = cli("test", str(spec), "--out", "results")
    assert code == 0, out
    with h5py.File(tmp_path / "results" / "preds" / "out.h5") as f:
        assert f["data"].shape == (8, 2) and f["label"].shape == (8,)  # the test part: 8 of 40 records
    code, out = cli("time", str(spec), "--phase", "TEST", "--iterations", "2")
    assert code == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "tiny.yaml"]
