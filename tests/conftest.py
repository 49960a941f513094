"""Shared fixtures: paths, a spec writer, and a seeded torch."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

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
