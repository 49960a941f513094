"""Keeping the step fed: how streamed sources read ahead, and telling the user when they do not keep up.

Data held in memory is already on the training device and a batch is one indexing there plus the
transform: under 1% of a LeNet or CIFAR-10 quick step on the CPU (measured), and on a GPU queued behind
the step rather than waited for, so reading it ahead would gain nothing. Streamed sources (LMDB,
LevelDB, image lists too big for memory) decode records in DataLoader worker processes that run ahead of
the step (two batches each), into pinned memory on CUDA so that the copy to the device overlaps the step.
When the workers still fall behind, the time the steps spend waiting for their batches says so.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from netspec.errors import DataError

WORKERS_VARIABLE = "NETSPEC_DATA_WORKERS"
NOTE_FRACTION = 0.2  # waiting longer than this share of the step time is reported


def workers(ranks: int = 1) -> int:
    """DataLoader workers for a streamed source: NETSPEC_DATA_WORKERS, else one per core up to 4, the
    cores shared among the `ranks` training processes of this machine."""
    text = os.environ.get(WORKERS_VARIABLE)
    if text is None:
        return min(4, max(1, (os.cpu_count() or 1) // ranks))
    if not text.strip().isdigit() or int(text) < 1:
        raise DataError(f"{WORKERS_VARIABLE} must be a whole number of worker processes, 1 or more, got '{text}'")
    return int(text)


def loader_options(device: torch.device, ranks: int = 1) -> dict[str, Any]:
    """The DataLoader settings of a streamed source that trains on `device`, one of `ranks` processes."""
    n = workers(ranks)
    return {
        "num_workers": n,
        "pin_memory": device.type == "cuda",
        "persistent_workers": False,
    }


def waiting_note(waited: float, stepped: float) -> str | None:
    """A line for the training log when the steps spent more than NOTE_FRACTION of their time (`stepped`
    seconds, reading included) waiting for streamed batches (`waited` seconds), with what to change; else
    None. (Batches held in memory cost too little to be worth a note: on a tiny net they may be a large
    share of a tiny step, and nothing would be gained by reading ahead.)"""
    if stepped <= 0 or waited / stepped <= NOTE_FRACTION:
        return None
    return (
        f"waiting for data: {100 * waited / stepped:.0f}% of the training step time ({waited:.1f} s of "
        f"{stepped:.1f} s); the data, not the model, is the bottleneck: raise {WORKERS_VARIABLE} (now "
        f"{workers()}) if cores are free, or hold the data in memory (raise NETSPEC_MAX_MEMORY_MB)"
    )
