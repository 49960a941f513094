"""Shared fixtures: paths, a spec writer, and a seeded torch."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

# One intra-op thread for torch, here and in the processes the tests start (set before torch is imported).
# The suite's nets are tiny, so a second thread only adds synchronisation, and on a busy machine threads
# that spin waiting for a descheduled partner make training twenty times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MODELS = ROOT / "models"
CAFFE = DATA / "caffe"


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[str, str], str]:
    """Writes a spec text to a file in a temporary folder and returns its path."""

    def write(text: str, name: str = "net.prototxt") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
