"""Distributed training throughput: samples/s of `netspec train` with 1 and N processes, and the scaling
efficiency (samples/s with N over N times samples/s with 1). Each process keeps its spec's batch_size
(Caffe's semantics: the effective batch grows with N), so a perfect scaling is 100%.

Each count of processes is one torchrun job (--standalone) running this file; every rank builds the
spec's Solver, takes --warmup steps, then times --steps steps of the distributed loop (the step with its
gradient all-reduce and the per-iteration agreement on the loss and signals), between barriers. On the
CPU every process gets --threads threads (default 1), so N processes use N times the cores of one; on
GPUs each rank takes the GPU of its local rank.

    python tools/bench/train_dist.py models/digits_cnn.yaml --processes 1 2 [--steps 50] [--warmup 5]
        [--threads 1] [--device cpu] [--set solver.base_lr=0.01 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    return ap.parse_args()


def rank_main(args: argparse.Namespace) -> None:
    import torch

    from netspec.train.solver import Solver

    torch.set_num_threads(args.threads)
    overrides = ("solver.max_epoch=0", "solver.max_iter=1000000", *args.overrides)
    solver = Solver(args.spec, overrides=tuple(overrides), device=args.device, quiet=True)
    ranks = solver.world.size if solver.world else 1

    def steps(n: int) -> None:
        for _ in range(n):
            solver.step()
            if solver.world is not None:
                solver._agree()

    def barrier() -> None:
        if solver.world is not None:
            import torch.distributed as dist

            dist.barrier()
        if solver.device.type == "cuda":
            torch.cuda.synchronize()

    steps(args.warmup)
    barrier()
    start = time.perf_counter()
    steps(args.steps)
    barrier()
    elapsed = time.perf_counter() - start
    if solver.world is None or solver.world.rank == 0:
        batch = solver._batch_size() * solver.param.iter_size * ranks
        speed = batch * args.steps / elapsed
        result = {"nproc": ranks, "batch": batch, "device": solver.device.type, "samples_per_s": speed}
        print("RESULT " + json.dumps(result), flush=True)
    solver.close()
    if solver.world is not None:
        from netspec.train import distributed

        distributed.close()


def main() -> None:
    args = parse()
    if "LOCAL_RANK" in os.environ:  # a rank of one of the jobs below
        rank_main(args)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    results = []
    for n in args.processes:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
        job = subprocess.run(
            [*torchrun, __file__, *sys.argv[1:]],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in job.stdout.splitlines() if line.startswith("RESULT ")]
        if job.returncode or not lines:
            sys.exit(f"{n} processes failed:\n{job.stderr[-3000:]}")
        results.append(json.loads(lines[0][len("RESULT ") :]))
    one = next((r["samples_per_s"] for r in results if r["nproc"] == 1), None)
    print(f"{'processes':>9}  {'batch':>6}  {'samples/s':>10}  {'efficiency':>10}")
    for r in results:
        eff = f"{100 * r['samples_per_s'] / (r['nproc'] * one):.0f}%" if one else "-"
        print(f"{r['nproc']:>9}  {r['batch']:>6}  {r['samples_per_s']:>10,.0f}  {eff:>10}   ({r['device']})")


if __name__ == "__main__":
    main()
