"""Feeding a net's data layers during training: batches from their sources, preprocessed as Caffe does.

Data that fits in memory (the default limit is 2 GiB; NETSPEC_MAX_MEMORY_MB changes it) is loaded once,
moved to the training device, and batched by indexing there, with no per-record Python loop. Larger
Caffe sources (LMDB, LevelDB, image lists) stream through a torch DataLoader with workers. The order of
the records is a function of (seed, epoch) and the augmentation of (seed, batch number), so a run
resumed from a snapshot sees exactly the batches an uninterrupted run would have seen.

Distributed training (rank r of N processes, each with batch_size B) reads the records as Caffe's
DataLayer did, interleaved: every rank walks the same record stream (the epochs' permutations one after
the other, shuffled with the same seed on every rank) in steps of N*B, and takes the positions p of each
step with p % N == r. The ranks' batches at a step are therefore exactly the batch of N*B that one process
reads at that step, wherever the epochs end: like one process, the stream runs on into the next epoch's
order mid-step, so no record is dropped or padded. The position saved in snapshots is the stream's, the
same on every rank. Rank r's crops and mirrors come from its own generator stream, seeded with
seed*7919 + batch number + 1 + r*0x9E3779B1 (torch's CPU generator keeps the low 32 bits of a seed, so the
ranks' offsets lie far apart within them); rank 0 draws exactly what one process draws.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from netspec._proto import netspec_pb2 as pb
from netspec.caffemodel import read_mean_file
from netspec.data import prefetch, probe
from netspec.data.records import Records
from netspec.errors import DataError, NetspecError
from netspec.graph import Node
from netspec.net import Net

# ---- preprocessing ---------------------------------------------------------------------------------


@dataclass
class Transform:
    """Caffe's DataTransformer on whole batches: mean subtraction, then scale; crop (random in TRAIN,
    centred in TEST) and random mirroring."""

    scale: float
    mean: torch.Tensor | None  # (C, 1, 1) values or a (C, H, W) mean image
    crop: int
    mirror: bool
    train: bool

    @staticmethod
    def of(node: Node, device: torch.device) -> Transform:
        tp = node.lp.transform_param
        mean = None
        if tp.mean_value:
            mean = torch.tensor(list(tp.mean_value), dtype=torch.float32).reshape(-1, 1, 1)
        elif tp.mean_file:
            path = probe.resolve(tp.mean_file, node.spec.base_dir, "transform_param.mean_file")
            mean = torch.from_numpy(read_mean_file(path))
        return Transform(tp.scale, None if mean is None else mean.to(device), tp.crop_size, tp.mirror, node.spec.train)

    def apply(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        x = x.float()
        if self.mean is not None:
            x = x - (self.mean if self.mean.dim() == 3 or x.dim() == 4 else self.mean.reshape(-1))
        if self.scale != 1:
            x = x * self.scale
        if self.crop and x.dim() == 4:
            x = self._crop(x, gen)
        if self.mirror and x.dim() == 4:
            flip = torch.rand(x.shape[0], generator=gen).to(x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def _crop(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        k = self.crop
        if not self.train:
            top, left = (h - k) // 2, (w - k) // 2
            return x[:, :, top : top + k, left : left + k]
        tops = torch.randint(0, h - k + 1, (n,), generator=gen).to(x.device)
        lefts = torch.randint(0, w - k + 1, (n,), generator=gen).to(x.device)
        steps = torch.arange(k, device=x.device)
        rows = (tops[:, None] + steps)[:, None, :, None].expand(n, c, k, w)
        x = x.gather(2, rows)
        cols = (lefts[:, None] + steps)[:, None, None, :].expand(n, c, k, k)
        return x.gather(3, cols)


# ---- batches -------------------------------------------------------------------------------------


class Source:
    """The batches of one data layer: records in a seeded order that wraps around epochs, as Caffe's
    data layers do; its position is saved in snapshots."""

    def __init__(
        self,
        node: Node,
        batch: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        records: Records | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.node, self.batch, self.shuffle, self.seed, self.device = node, batch, shuffle, seed, device
        self.rank, self.world_size = rank, world_size
        self.tops = node.tops
        self.transform = Transform.of(node, device)
        self.records = records
        self.arrays: dict[str, torch.Tensor] | None = None
        if arrays is not None:
            self.arrays = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
            self.size = len(next(iter(self.arrays.values())))
        else:
            self.size = len(records) if records is not None else 0
        if self.size == 0:
            raise DataError(f"data layer '{node.name}' has no records for the {pb.Phase.Name(node.spec.phase)} phase")
        self.epoch, self.cursor, self.batches = 0, 0, 0
        self._order = self._permutation(0)
        self._stream: Iterator[list[torch.Tensor]] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=gen)

    def _indices(self, count: int | None) -> torch.Tensor:
        idx, self.epoch, self.cursor, self._order = _rank_indices(self, self.epoch, self.cursor, self._order, count)
        return idx

    def next(self, count: int | None = None) -> dict[str, torch.Tensor]:
        """The next batch (of `count` records instead of batch_size when given; distributed, this rank's
        part of the next world_size*count records)."""
        streaming = self.arrays is None and count in (None, self.batch)
        if streaming and self._stream is None:
            self._stream = self._open_stream()  # from the position before this batch
        idx = self._indices(count)
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.batches + 1 + self.rank * 0x9E3779B1)
        self.batches += 1
        if self.arrays is not None:
            picked = {top: a[idx.to(self.device)] for top, a in self.arrays.items()}
        elif count is not None and count != self.batch:
            picked = _stack([self.records.read(int(i)) for i in idx], self.tops, self.device)  # type: ignore[union-attr]  # no arrays: records
        else:
            picked = self._read()
        out = {}
        for i, top in enumerate(self.tops):
            if top in picked:
                out[top] = self.transform.apply(picked[top], gen) if i == 0 else picked[top].float()
        return out

    def _open_stream(self) -> Iterator[list[torch.Tensor]]:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _RecordSet(self.records),
            batch_sampler=_Batches(self),
            **prefetch.loader_options(self.device, self.world_size),
        )
        return iter(loader)

    def _read(self) -> dict[str, torch.Tensor]:
        """The next batch from the DataLoader, which reads ahead in the same order with its workers."""
        data, labels = next(self._stream)  # type: ignore[arg-type]  # next() opened it when streaming
        out = {self.tops[0]: data.to(self.device, non_blocking=True)}  # from pinned memory on CUDA
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.to(self.device, non_blocking=True).float()
        return out

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.cursor / self.size

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "batches": self.batches}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor, self.batches = int(state["epoch"]), int(state["cursor"]), int(state["batches"])
        self._order = self._permutation(self.epoch)
        self.close()  # a DataLoader restarts from here

    def rewind(self) -> None:
        self.load_state({"epoch": 0, "cursor": 0, "batches": 0})

    def close(self) -> None:
        """Stops the DataLoader's worker processes now. Left to the garbage collector (the loader and this
        source refer to each other), they stop later, inside whatever code runs then, and slowly (about 5 s
        a worker). The next batch starts new workers from the current position."""
        if self._stream is not None:
            self._stream._shutdown_workers()  # type: ignore[attr-defined]  # what the loader's __del__ calls
            self._stream = None


def _next_indices(
    s: Source, epoch: int, cursor: int, order: torch.Tensor, count: int | None = None
) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    """The indices of the batch at (epoch, cursor), wrapping into the next epoch, and the position after."""
    parts, need = [], count or s.batch
    while need:
        take = min(need, s.size - cursor)
        parts.append(order[cursor : cursor + take])
        cursor += take
        need -= take
        if cursor == s.size:
            epoch, cursor = epoch + 1, 0
            order = s._permutation(epoch)
    return torch.cat(parts), epoch, cursor, order


def _rank_indices(
    s: Source, epoch: int, cursor: int, order: torch.Tensor, count: int | None = None
) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    """This rank's `count` (default: batch) records: its interleaved part of the next world_size*count
    positions of the stream (the module docstring explains why), and the stream's position after them."""
    idx, epoch, cursor, order = _next_indices(s, epoch, cursor, order, (count or s.batch) * s.world_size)
    return idx[s.rank :: s.world_size], epoch, cursor, order


class _Batches:
    """The batch order for a DataLoader: the same sequence the source consumes, from its position."""

    def __init__(self, source: Source) -> None:
        self.source, self.start = source, (source.epoch, source.cursor, source._order)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, cursor, order = self.start
        while True:
            idx, epoch, cursor, order = _rank_indices(self.source, epoch, cursor, order)
            yield idx.tolist()


class _RecordSet(torch.utils.data.Dataset[tuple[np.ndarray, float]]):
    def __init__(self, records: Records | None) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)  # type: ignore[arg-type]  # streamed only from records

    def __getitem__(self, i: int) -> tuple[np.ndarray, float]:
        data, label = self.records.read(i)  # type: ignore[union-attr]  # streamed only from records
        return np.array(data), float(label) if label is not None else 0.0  # a writable copy


class Feeder:
    """Batches for every data layer of a net; the blobs of Input and MemoryData layers must be given.
    In distributed training every rank builds one with the same seed and its own rank (the module
    docstring says which records each rank reads); world_size 1 is one process."""

    def __init__(
        self,
        net: Net,
        device: torch.device,
        seed: int,
        limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world_size {world_size}'s ranks")
        self.rank, self.world_size = rank, world_size
        self.sources: list[Source] = []
        self.waited = 0.0  # seconds next() took for streamed sources: reading that the workers did not hide
        self.needs_inputs = [
            t
            for info in net.layers
            if info.node.definition.feeds and not info.node.definition.reads_records
            for t in info.node.tops
        ]
        train = net.state.phase == pb.TRAIN
        for info in net.layers:
            node, d = info.node, info.node.definition
            if not d.reads_records:
                continue
            try:
                source = d.records(node.spec)
                arrays, records = (source, None) if isinstance(source, dict) else (None, source)
                if records is not None and records.bytes_estimate() <= (limit or probe.memory_limit()):
                    arrays, records = _load_all(node, records), None
                batch, shuffle = node.spec.p.batch_size, train and d.shuffles(node.spec)
                self.sources.append(
                    Source(node, batch, shuffle, seed + len(self.sources), device, records, arrays, rank, world_size)
                )
            except NetspecError as e:
                raise e.at(node.loc, node.name, node.type) from None

    def next(self, count: int | None = None) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        out: dict[str, torch.Tensor] = {}
        for s in self.sources:
            out.update(s.next(count))
        if self.streamed:
            self.waited += time.perf_counter() - start
        return out

    @property
    def streamed(self) -> bool:
        return any(s.arrays is None for s in self.sources)

    def one_pass(self) -> list[int]:
        """Batch sizes that read every record once: full batches and a shorter last one. Distributed, the
        sizes of this rank's part of that pass: the last step of world_size*batch positions may leave a
        rank fewer records than the others, or none (then this rank has one batch fewer)."""
        full, rest = divmod(self.records, self.batch * self.world_size)
        last = len(range(self.rank, rest, self.world_size))
        return [self.batch] * full + ([last] if last else [])

    @property
    def records(self) -> int:
        return self.sources[0].size if self.sources else 0

    @property
    def batch(self) -> int:
        return self.sources[0].batch if self.sources else 0

    @property
    def epochs_done(self) -> float:
        return self.sources[0].epochs_done if self.sources else 0.0

    def state(self) -> list[dict[str, int]]:
        return [s.state() for s in self.sources]

    def load_state(self, states: list[dict[str, int]]) -> None:
        for s, st in zip(self.sources, states, strict=True):
            s.load_state(st)

    def rewind(self) -> None:
        for s in self.sources:
            s.rewind()

    def close(self) -> None:
        """Stops the worker processes of streamed sources (reading on starts them again)."""
        for s in self.sources:
            s.close()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def limit_to(self, n: int) -> None:
        """Keep only the first n records of every source (for --overfit)."""
        for s in self.sources:
            if s.arrays is None:
                raise DataError(f"--overfit needs data that fits in memory; '{s.node.name}' is streamed")
            s.arrays = {k: v[:n] for k, v in s.arrays.items()}
            s.size = min(s.size, n)
            s.rewind()

    def labels(self) -> dict[str, torch.Tensor]:
        """Every label array held in memory, by blob (for checking label ranges before training)."""
        out = {}
        for s in self.sources:
            if s.arrays is not None and len(s.tops) > 1 and s.tops[1] in s.arrays:
                out[s.tops[1]] = s.arrays[s.tops[1]]
        return out


def _stack(
    rows: list[tuple[np.ndarray, object]], tops: tuple[str, ...], device: torch.device
) -> dict[str, torch.Tensor]:
    out = {tops[0]: torch.from_numpy(np.stack([r[0] for r in rows])).to(device)}
    if len(tops) > 1:
        out[tops[1]] = torch.tensor([float(r[1]) for r in rows], device=device)  # type: ignore[arg-type]  # a label top: numbers
    return out


def _load_all(node: Node, records: Records) -> dict[str, np.ndarray]:
    rows = [records.read(i) for i in range(len(records))]
    shapes = {r[0].shape for r in rows}
    if len(shapes) > 1:
        raise DataError(
            f"records of '{node.name}' have different shapes: {sorted(shapes)[:3]}", hint=records.uneven_hint
        )
    arrays = {node.tops[0]: np.stack([r[0] for r in rows])}
    if len(node.tops) > 1:
        arrays[node.tops[1]] = np.asarray([r[1] for r in rows], dtype=np.float32)
    return arrays
