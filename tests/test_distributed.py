"""Distributed training on the CPU with Gloo, 2 processes: B records per rank for K iterations train as one
process with 2B records does (the same records: the feeder deals record k to rank k mod 2), tests are
reduced to one process's results exactly, a resumed distributed run continues as an uninterrupted one,
both entry points (torchrun and --nproc-per-node) train the quick-start spec, and a killed rank ends the
job with a message naming it.

Ranks are forked from the test process (torch already imported: they start in milliseconds) and run all
the scenarios of one test in one process group; the entry-point tests start real torchrun jobs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from netspec.errors import NetspecError
from netspec.lower.weights import apply_weights, read_weights
from netspec.train import commands, distributed
from netspec.train.commands import evaluate
from netspec.train.solver import Solver

ROOT = Path(__file__).resolve().parent.parent
B = 8  # records per rank; one process takes 2B
K = 4  # iterations

# The weights of 2 ranks x B and of one process x 2B differ only by float32 rounding (the gradient is a
# mean over 2B records either way, summed in another order): relative 1e-5, absolute 1e-6.
RTOL, ATOL = 1e-5, 1e-6

LENET = """
name: SmallLeNet
layer:
  - {{name: digits, type: Dataset, top: [data, label], transform_param: {{scale: 0.0625}},
     dataset_param: {{source: digits, batch_size: {batch}, record_shape: [1, 8, 8]}}}}
  - {{name: conv1, type: Convolution, bottom: data,
     convolution_param: {{num_output: 4, kernel_size: 3, weight_filler: xavier}}}}
  - {{name: pool1, type: Pooling, pooling_param: {{pool: MAX, kernel_size: 2, stride: 2}}}}
  {extra}
  - {{name: ip1, type: InnerProduct, inner_product_param: {{num_output: 10, weight_filler: xavier}}}}
  - {{name: accuracy, type: Accuracy, bottom: [ip1, label], include: {{phase: TEST}},
     accuracy_param: {{ignore_label: 3}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip1, label], include: {{phase: TRAIN}}}}
  - {{name: test_loss, type: SoftmaxWithLoss, bottom: [ip1, label], top: loss, include: {{phase: TEST}},
     loss_param: {{ignore_label: 3}}}}
solver: {{max_iter: {iters}, random_seed: 5, test_interval: 1000, {test_iter}{solver}}}
"""
BATCH_NORM = """
  - {name: bn1, type: BatchNorm, bottom: pool1, top: pool1}
  - {name: scale1, type: Scale, bottom: pool1, top: pool1, scale_param: {bias_term: true}}
  - {name: relu1, type: ReLU, bottom: pool1, top: pool1}
"""
SOLVERS = {
    "sgd-momentum": "type: SGD, base_lr: 0.1, momentum: 0.9, weight_decay: 0.001, lr_policy: step, stepsize: 2, gamma: 0.5",
    "adam": "type: Adam, base_lr: 0.01, lr_policy: fixed",
    "iter-size-2-clip-l1": "type: SGD, base_lr: 0.5, momentum: 0.9, iter_size: 2, clip_gradients: 0.05, "
    "weight_decay: 0.01, regularization_type: L1, lr_policy: fixed",
}


def spec(tmp: Path, name: str, batch: int, solver: str, extra: str = "", iters: int = K) -> str:
    """The small LeNet with `solver` settings. Tests read 48 records (batches of `batch`), but for
    SGD, which tests one pass over the 360 test records (the last batch shorter)."""
    path = tmp / f"{name}-{batch}.yaml"
    test_iter = "" if name.startswith("sgd") else f"test_iter: {48 // batch}, "
    path.write_text(LENET.format(batch=batch, extra=extra, solver=solver, iters=iters, test_iter=test_iter))
    return str(path)


# ---- running ranks --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...], out: Any) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        out.put((rank, fn(*args)))
    except BaseException:  # the test process shows it
        out.put((rank, traceback.format_exc()))
    finally:
        distributed.close()


def on_ranks(fn: Callable[..., Any], *args: Any, world: int = 2) -> list[Any]:
    """fn(*args) on `world` forked ranks of one Gloo process group; their results by rank."""
    import sklearn.datasets  # noqa: F401  # the digits' reader, imported once before the ranks fork

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, fn, args, out)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    for rank in range(world):
        assert not isinstance(results[rank], str), f"rank {rank} failed:\n{results[rank]}"
    return [results[r] for r in range(world)]


def weights(solver: Solver) -> dict[str, np.ndarray]:
    return {f"{k}:{i}": t.detach().numpy().copy() for k, v in solver._owned_blobs().items() for i, t in enumerate(v)}


def train_all(paths: dict[str, str]) -> dict[str, tuple[dict[str, np.ndarray], list[dict[str, float]]]]:
    """Each spec trained for its max_iter, then tested: the weights and the test results."""
    out = {}
    for name, path in paths.items():
        solver = Solver(path, device="cpu", quiet=True)
        while solver.iter < solver.max_iter:
            solver.step()
        out[name] = (weights(solver), solver.test())
        solver.close()
    return out


def close_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {key}")


# ---- the tests ------------------------------------------------------------------------------------


def test_two_ranks_of_b_train_as_one_process_of_2b(tmp_path: Path) -> None:
    """SGD with momentum, a step policy and L2 decay; Adam; iter_size 2 with clip_gradients (which
    clips: the gradient norm is above 0.05) and L1 decay; and a BatchNorm net with sync_bn: the weights
    after K iterations and the test results (Accuracy and a SoftmaxWithLoss that ignore label 3; for
    SGD over the whole test set, with an uneven last batch) match one process's."""
    nets = {name: (solver, "") for name, solver in SOLVERS.items()}
    nets["batch-norm"] = (SOLVERS["sgd-momentum"] + ", sync_bn: true", BATCH_NORM)
    per_rank = {n: spec(tmp_path, n, B, s, extra) for n, (s, extra) in nets.items()}
    one = {n: spec(tmp_path, n, 2 * B, s, extra) for n, (s, extra) in nets.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = train_all(one)  # first: the ranks inherit the loaded modules
    finally:
        torch.set_num_threads(threads)
    ranks = on_ranks(train_all, per_rank)
    for name in nets:
        got0, test0 = ranks[0][name]
        got1, test1 = ranks[1][name]
        want, want_test = expected[name]
        close_weights(got0, want, name)
        close_weights(got1, got0, f"{name}, rank 1 against rank 0")
        assert test0 == test1  # every rank has the reduced results
        for key, value in want_test[0].items():
            assert test0[0][key] == pytest.approx(value, rel=1e-6), (name, key)


def resume_runs(path: str, out: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """An uninterrupted run (snapshots every 3 iterations) and one resumed from its iteration-3
    snapshot; each rank gives its own output folder, so that what rank 1 writes can be seen."""
    rank = int(os.environ["RANK"])
    whole = Solver(path, device="cpu", quiet=True, out_dir=out / f"whole{rank}")
    whole.solve()
    resumed = Solver(path, device="cpu", quiet=True, out_dir=out / f"resumed{rank}")
    resumed.solve(resume=out / "whole0" / "resume_iter_3.pt")  # rank 0's snapshot, for every rank
    return weights(whole), weights(resumed), sorted(p.name for p in (out / f"whole{rank}").glob("*"))


def diverge(path: str) -> tuple[str, str]:
    """Rank 1's data alone turns the loss into NaN: every rank stops at that iteration (none waits in a
    collective), rank 1 reports where, rank 0 says who reports it."""
    solver = Solver(path, device="cpu", quiet=True)
    if int(os.environ["RANK"]) == 1:
        source = solver.feeder.sources[0]
        assert source.arrays is not None
        source.arrays["data"][:] = float("nan")
    try:
        while True:
            solver.step()
    except NetspecError as e:
        return type(e).__name__, f"{e} (at iteration {solver.iter})"


def resume_and_diverge(path: str, out: Path, nan_path: str) -> Any:
    return resume_runs(path, out), diverge(nan_path)


def test_a_resumed_distributed_run_continues_exactly(tmp_path: Path) -> None:
    """With dropout (a random stream per rank, saved in the snapshot for each rank) and a shuffled
    epoch boundary within the run: bit-identical weights. Rank 1 writes nothing; the snapshot records
    the world size, a one-process run refuses to resume it, and a one-process test reads its weights."""
    dropout = "- {name: drop1, type: Dropout, bottom: pool1, top: pool1, dropout_param: {dropout_ratio: 0.5}}"
    path = tmp_path / "resume.yaml"
    path.write_text(
        LENET.format(
            batch=B, extra=dropout, iters=6, test_iter="test_iter: 2, ", solver="type: Adam, base_lr: 0.01, snapshot: 3"
        )
        .replace("test_interval: 1000", "test_interval: 3")
        .replace("name: SmallLeNet", "name: resume")
    )
    nan_path = spec(tmp_path, "sgd-nan", B, SOLVERS["sgd-momentum"])
    both = on_ranks(resume_and_diverge, str(path), tmp_path, nan_path)
    assert [b[1] for b in both] == [
        ("RankStopped", "stopped: rank 1 found a NaN or infinity (at iteration 0)"),
        (
            "TrainingError",
            f"{nan_path}:4:5: layer 'digits' (Dataset): iteration 0: the output 'data' of this layer became NaN "
            "or infinite; training stopped before updating the weights\n  hint: lower base_lr, set "
            "clip_gradients, or check the data for extreme values (at iteration 0)",
        ),
    ]
    ranks = [b[0] for b in both]
    for rank, (whole, resumed, _) in enumerate(ranks):
        for key in whole:
            np.testing.assert_array_equal(resumed[key], whole[key], err_msg=f"rank {rank}: {key}")
    assert ranks[0][2] == ["metrics.csv", "resume_iter_3.pt", "resume_iter_6.pt", "train.log"]
    assert ranks[1][2] == []
    close_weights(ranks[1][0], ranks[0][0], "rank 1 against rank 0")
    snap = tmp_path / "whole0" / "resume_iter_3.pt"
    with pytest.raises(NetspecError) as e:
        Solver(str(path), device="cpu", quiet=True).restore(snap)
    assert str(e.value) == (
        f"snapshot '{snap}' was written by a run of 2 processes; this one has 1 process, whose batches "
        "would not continue that run's\n  hint: resume it with 2 processes (--nproc-per-node 2), or start from "
        "its weights with --weights"
    )
    final = evaluate(str(path), str(tmp_path / "whole0" / "resume_iter_6.pt"), 2, "cpu")  # test_iter 2
    solver = Solver(str(path), device="cpu", quiet=True)
    apply_weights(solver.net.caffe_params(), read_weights(tmp_path / "whole0" / "resume_iter_6.pt"), "w")
    assert final["accuracy"] == pytest.approx(solver.test()[0]["accuracy"], rel=1e-6)


# ---- real torchrun jobs -----------------------------------------------------------------------------

QUICK = ["models/digits_cnn.yaml", "--set", "solver.max_epoch=0", "--set", "solver.display=1"]


def netspec_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_torchrun_trains_the_quick_start_as_one_process_does(tmp_path: Path) -> None:
    """`torchrun -m netspec train`: 2 x 64 records for 12 iterations reach one process's accuracy with
    128 (dropout's masks differ, so not its exact numbers); only rank 0 prints."""
    settings = ["--set", "solver.max_iter=12", "--set", "solver.test_interval=12"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run(
        [*torchrun, "-m", "netspec", "train", *QUICK, *settings, "--out", str(tmp_path / "two")],
        cwd=ROOT,
        env=netspec_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("training 'DigitsCNN' on cpu for 12 iterations") == 1
    assert "2 processes (Gloo) x batch_size 64: an effective batch of 128" in run.stderr
    two = float(run.stdout.split("accuracy = ")[1].split(",")[0])
    one = commands.train(
        "models/digits_cnn.yaml",
        overrides=(
            "solver.max_epoch=0",
            "solver.max_iter=12",
            "solver.test_interval=12",
            "digits.dataset_param.batch_size=128",
        ),
        out=str(tmp_path / "one"),
        device="cpu",
        quiet=True,
    )
    assert two == pytest.approx(one["test"][0]["accuracy"], abs=0.05)


def test_a_killed_rank_ends_the_job_with_a_message(tmp_path: Path) -> None:
    """`netspec train --nproc-per-node 2`, rank 1 killed with SIGKILL mid-run: the job ends within
    30 s, exit status 1, with one message naming the rank; the last snapshot is there to resume."""
    settings = ["--set", "solver.max_iter=100000000", "--set", "solver.snapshot=50"]
    settings += ["--set", "solver.test_interval=100000000", "--set", "solver.test_initialization=false"]
    settings += ["--nproc-per-node", "2", "--out", str(tmp_path)]
    job = subprocess.Popen(
        [sys.executable, "-m", "netspec", "train", "models/xor_train.yaml", *settings],
        cwd=ROOT,
        env=netspec_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob("*_iter_50.pt")) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        assert list(tmp_path.glob("*_iter_50.pt")), job.communicate()
        os.kill(rank_pid(job.pid, 1), signal.SIGKILL)
        killed = time.monotonic()
        _, err = job.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
    assert took < 30
    assert job.returncode == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-2:] == [
        "error: rank 1 was killed by SIGKILL; the other ranks were stopped",
        "  hint: resume from the last snapshot with --resume",
    ]


def rank_pid(launcher: int, rank: int) -> int:
    """The process of a rank among the launcher's children (by the RANK torchrun gave it)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no rank {rank} among {children}")
