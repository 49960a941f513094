"""sync_bn: BatchNorm over two Gloo ranks of B records each computes what one process computes over the
2B records (outputs, input gradients, running statistics); without it, each rank keeps its own batch's
statistics and average_statistics makes the running ones the ranks' mean, the same on both ranks."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from netspec.layers import average_statistics, sync_batch_norm
from netspec.lower.module import compile_net

B = 3


def spec(folder: Path, batch: int) -> str:
    path = folder / f"bn{batch}.prototxt"
    if path.exists():
        return str(path)
    path.write_text(
        f'input: "data" input_shape {{ dim: {batch} dim: 2 dim: 3 dim: 2 }}\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
    )
    return str(path)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Records of 2B whose channels have different means and spreads, and the loss's weights."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * B, 2, 3, 2, generator=gen) * torch.tensor([1.0, 5.0]).reshape(1, 2, 1, 1) + 3
    return x, torch.randn(2 * B, 2, 3, 2, generator=gen)


def forward_backward(path: str, x: torch.Tensor, w: torch.Tensor) -> dict[str, object]:
    module = compile_net(path, "TRAIN")
    x = x.clone().requires_grad_()
    out = module(data=x)["bn"]
    (out * w).sum().backward()  # summed over ranks, the one-process loss
    return {"out": out.detach(), "grad": x.grad, "stats": [b.clone() for b in module.buffers()]}


def rank_main(rank: int, folder: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    try:
        x, w = (t[rank * B : (rank + 1) * B] for t in inputs())
        sync_batch_norm(True)
        result = {"synced": forward_backward(spec(folder, B), x, w)}
        with torch.no_grad():  # a test pass: the ranks may run different numbers of them
            result["no_grad"] = compile_net(spec(folder, B), "TRAIN")(data=x)["bn"]
        sync_batch_norm(False)
        own = forward_backward(spec(folder, B), x, w)
        module = compile_net(spec(folder, B), "TRAIN")
        module(data=x)
        average_statistics(module.buffers())
        result |= {"own": own, "averaged": [b.clone() for b in module.buffers()]}
        torch.save(result, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_bn_over_two_ranks_is_one_process_over_their_union(tmp_path: Path) -> None:
    spec(tmp_path, B)  # written before the ranks read it
    ranks = mp.start_processes(rank_main, args=(tmp_path,), nprocs=2, join=False, start_method="fork")  # torch loaded
    deadline = time.monotonic() + 60  # a guard against a deadlock, not a measure of time
    try:
        while not ranks.join(timeout=max(0.0, deadline - time.monotonic())):  # True once all have ended
            assert time.monotonic() < deadline, "the ranks hang"
    finally:
        for p in ranks.processes:
            p.kill()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x, w = inputs()
    one = forward_backward(spec(tmp_path, 2 * B), x, w)
    # float32 against statistics summed in float64: a few units in the last place
    for key in ("out", "grad"):
        got = torch.cat([r["synced"][key] for r in results])
        torch.testing.assert_close(got, one[key], rtol=1e-5, atol=1e-5)
    for a, b, expected in zip(results[0]["synced"]["stats"], results[1]["synced"]["stats"], one["stats"], strict=True):
        assert torch.equal(a, b)  # the same running statistics on both ranks
        torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)
    # per-rank statistics: each rank normalises its own batch; averaged, the running sums agree
    own = forward_backward(spec(tmp_path, B), x[B:], w[B:])
    torch.testing.assert_close(results[1]["own"]["out"], own["out"], rtol=0, atol=0)
    torch.testing.assert_close(results[1]["no_grad"], own["out"], rtol=0, atol=0)  # never waits for another rank
    own0, own1 = (r["own"]["stats"] for r in results)
    assert not torch.equal(own0[0], own1[0])
    for a, b, s0, s1 in zip(results[0]["averaged"], results[1]["averaged"], own0, own1, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, (s0 + s1) / 2, rtol=0, atol=0)


def test_sync_bn_in_one_process_is_the_plain_batch_norm(tmp_path: Path) -> None:
    """No process group: switching it on changes nothing (one process holds the whole batch)."""
    x, w = inputs()
    plain = forward_backward(spec(tmp_path, 2 * B), x, w)
    sync_batch_norm(True)
    try:
        synced = forward_backward(spec(tmp_path, 2 * B), x, w)
    finally:
        sync_batch_norm(False)
    for key in ("out", "grad"):
        assert torch.equal(plain[key], synced[key])
