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

from netspec.train import distributed
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
    "iter-size-2": "type: SGD, base_lr: 0.1, momentum: 0.9, iter_size: 2, lr_policy: fixed",
    "clip-l1": "type: SGD, base_lr: 0.5, clip_gradients: 0.05, weight_decay: 0.01, regularization_type: L1, "
    "lr_policy: fixed",
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
    except BaseException:  # noqa: BLE001  # the test process shows it
        out.put((rank, traceback.format_exc()))
    finally:
        distributed.close()


def on_ranks(fn: Callable[..., Any], *args: Any, world: int = 2) -> list[Any]:
    """fn(*args) on `world` forked ranks of one Gloo process group; their results by rank."""
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
    """SGD with momentum, a step policy and L2 decay; Adam; iter_size 2; clip_gradients with L1 decay;
    and a BatchNorm net: weights after K iterations and the test results (Accuracy and a
    SoftmaxWithLoss that ignore label 3, over an uneven last batch) match one process."""
    nets = {name: (solver, "") for name, solver in SOLVERS.items()}
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
