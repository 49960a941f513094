"""Distributed training's data: rank r of N reads its interleaved part of the record stream (Caffe's
DataLayer: record k to rank k mod N), so the ranks' batches of B at every step are exactly the batch of
N*B one process reads at that step, across epoch ends and reshuffles; each rank resumes exactly."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import netspec
from netspec.data.feeder import Feeder

RECORDS = 40
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("interleave")
    values = np.arange(RECORDS, dtype=np.float32)  # a record's value is its index
    np.savez(path / "set.npz", data=values.reshape(-1, 1), label=values)
    return path


_NETS: dict[tuple[Path, int, bool], netspec.Net] = {}


def feeder(folder: Path, batch: int, shuffle: bool, records: int, rank: int = 0, world_size: int = 1) -> Feeder:
    key = (folder, batch, shuffle)
    if key not in _NETS:
        spec = folder / f"b{batch}{shuffle}.prototxt"
        spec.write_text(
            'layer { name: "d" type: "Dataset" top: "data" top: "label" dataset_param { source: "set.npz" '
            f"batch_size: {batch} split: ALL shuffle: {str(shuffle).lower()} }} }}"
        )
        _NETS[key] = netspec.load(str(spec), "TRAIN")
    f = Feeder(_NETS[key], CPU, seed=5, rank=rank, world_size=world_size)
    f.limit_to(records)
    return f


def stream(records: int, shuffle: bool, seed: int) -> Iterator[int]:
    """The documented record order: each epoch's permutation of (seed, epoch), one after the other."""
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        yield from (torch.randperm(records, generator=gen) if shuffle else torch.arange(records)).tolist()
        epoch += 1


def read(f: Feeder, count: int | None = None) -> list[int]:
    batch = f.next(count)
    values = batch["data"].reshape(len(batch["label"]), -1)[:, 0]
    assert torch.equal(values, batch["label"])  # data and labels stay paired
    return [int(v) for v in batch["label"]]


@settings(max_examples=40, deadline=None)
@given(
    world=st.integers(1, 4),
    batch=st.integers(1, 4),
    records=st.integers(1, RECORDS),
    shuffle=st.booleans(),
    data=st.data(),
)
def test_ranks_read_the_one_process_batch_of_n_times_b_interleaved(
    folder: Path, world: int, batch: int, records: int, shuffle: bool, data: st.DataObject
) -> None:
    steps = -(-3 * records // (world * batch)) + 1  # past the end of three epochs
    resume_at = data.draw(st.integers(0, steps - 1), label="resume_at")
    ranks = [feeder(folder, batch, shuffle, records, r, world) for r in range(world)]
    one = feeder(folder, batch * world, shuffle, records)
    order = stream(records, shuffle, seed=5)
    states = None
    for step in range(steps):
        if step == resume_at:
            states = [f.state() for f in ranks]
            assert all(s == states[0] for s in states)  # one stream position, the same on every rank
            later = [[read(f) for _ in range(steps - step)] for f in ranks]
            ranks = [feeder(folder, batch, shuffle, records, r, world) for r in range(world)]
            for f, s in zip(ranks, states, strict=True):
                f.load_state(s)
        expected = [next(order) for _ in range(world * batch)]
        assert read(one) == expected  # world_size 1: the order one process has always read
        got = [read(f) for f in ranks]
        for r in range(world):
            assert got[r] == expected[r::world]  # position p of the step to rank p mod N
            if step >= resume_at:
                assert got[r] == later[r][step - resume_at]  # resumed exactly
        assert sorted(v for g in got for v in g) == sorted(expected)
    assert ranks[0].epochs_done == one.epochs_done == pytest.approx(steps * world * batch / records)


@settings(max_examples=30, deadline=None)
@given(world=st.integers(1, 4), batch=st.integers(1, 4), records=st.integers(1, RECORDS))
def test_one_pass_reads_every_record_once_over_the_ranks(folder: Path, world: int, batch: int, records: int) -> None:
    """Testing: each rank reads its part of one pass (the shorter last step may leave a rank nothing)."""
    one = feeder(folder, batch * world, False, records)
    expected = [read(one, size) for size in one.one_pass()]
    seen: list[int] = []
    for r in range(world):
        f = feeder(folder, batch, False, records, r, world)
        sizes = f.one_pass()
        assert len(sizes) in (len(expected), len(expected) - 1) and 0 not in sizes
        got = [read(f, size) for size in sizes]
        assert got == [e[r::world] for e in expected][: len(got)]
        seen += [v for g in got for v in g]
    assert sorted(seen) == list(range(records))


def test_ranks_crop_and_mirror_with_their_own_random_streams(tmp_path: Path) -> None:
    """Rank r's generator for batch b is seeded seed*7919 + b + 1 + r*0x9E3779B1: rank 0 flips as one process."""
    image = np.array([[[[0.0, 1.0]]]], np.float32)  # flipped, it reads [1, 0]
    np.savez(tmp_path / "set.npz", data=np.repeat(image, 8, axis=0), label=np.zeros(8, np.float32))
    spec = tmp_path / "net.prototxt"
    spec.write_text(
        'layer { name: "d" type: "Dataset" top: "data" top: "label" transform_param { mirror: true } '
        'dataset_param { source: "set.npz" batch_size: 8 split: ALL } }'
    )
    net = netspec.load(str(spec), "TRAIN")

    def flips(f: Feeder) -> list[list[float]]:
        return [f.next()["data"][:, 0, 0, 0].tolist() for _ in range(3)]

    alone = flips(Feeder(net, CPU, seed=1))
    rank0, rank1 = (flips(Feeder(net, CPU, seed=1, rank=r, world_size=2)) for r in range(2))
    assert rank0 == alone
    assert rank1 != rank0 and {v for b in rank1 for v in b} == {0.0, 1.0}


def test_streamed_ranks_read_what_ranks_held_in_memory_read(tmp_path: Path) -> None:
    import lmdb

    from netspec._proto import netspec_pb2 as pb

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(7):
            datum = pb.Datum(channels=1, height=1, width=1, data=bytes([i]), label=i)
            txn.put(f"{i:04d}".encode(), datum.SerializeToString())
    env.close()
    spec = tmp_path / "net.prototxt"
    spec.write_text(
        'layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN } '
        'data_param { source: "db" batch_size: 2 backend: LMDB } }'
    )
    net = netspec.load(str(spec), "TRAIN")
    streamed = Feeder(net, CPU, seed=0, limit=1, rank=1, world_size=2)  # 1 byte: nothing fits in memory
    held = Feeder(net, CPU, seed=0, rank=1, world_size=2)
    assert streamed.sources[0].arrays is None and held.sources[0].arrays is not None
    with streamed:
        for _ in range(3):  # 12 positions: past the end of the 7 records
            assert read(streamed) == read(held)
        state = streamed.state()
        after = read(streamed)
        streamed.load_state(state)
        assert read(streamed) == after
    assert not multiprocessing.active_children()


def test_a_rank_must_be_one_of_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2 is not one of world_size 2's ranks"):
        Feeder(None, CPU, seed=0, rank=2, world_size=2)  # type: ignore[arg-type]  # refused before reading it
