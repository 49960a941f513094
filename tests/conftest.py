"""Shared fixtures: paths, a spec writer, a seeded torch, and torch set up for a fast suite."""

from __future__ import annotations

import functools
import inspect
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

# CI replays the same examples on every run (a red build then always means a change broke something);
# a developer's runs keep exploring new ones. NETSPEC_FUZZ_CASES and the fuzzer's own seed are separate.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# One intra-op thread for torch, here and in the processes the tests start (set before torch is imported).
# The suite's nets are tiny, so a second thread only adds synchronisation, and on a busy machine threads
# that spin waiting for a descheduled partner make training twenty times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MODELS = ROOT / "models"
CAFFE = DATA / "caffe"


DIGIT_LABELS = [f"digit {i}" for i in range(10)]


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/digits_cnn.yaml with its fillers' weights exported with DIGIT_LABELS, once for every test that
    only reads the file."""
    import netspec

    path = tmp_path_factory.mktemp("digits_onnx") / "digits.onnx"
    netspec.export_onnx(netspec.compile(str(MODELS / "digits_cnn.yaml")), path, labels=DIGIT_LABELS, verify=False)
    return path


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[str, str], str]:
    """Writes a spec text to a file in a temporary folder and returns its path."""

    def write(text: str, name: str = "net.prototxt") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """pyproject's `-n auto`: the whole suite (`python -m pytest`, no arguments) runs in a worker per CPU this
    process may use (pytest-xdist's count); a run of named files or tests stays in one process, where
    starting workers (each imports torch and builds the session's fixtures again) costs more than it saves."""
    return 0 if config.args_source == pytest.Config.ArgsSource.ARGS else None


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _onnx_function_table_built_once() -> None:
    """torch's ONNX exporter rebuilds its table of ONNX functions for every export (about 1 s of CPU,
    half of exporting a small net); the suite exports dozens of nets, so once the exporter is loaded each
    opset's table is built once. The exporter only reads the table.

    Likewise torch.export looks up every operator the dispatcher knows, twice per export and once per
    operator namespace (about 0.25 s), to find the composite ones it may keep: torch does not cache the
    list because a custom operator registered later would be missed, and no test registers any."""
    registration = sys.modules.get("torch.onnx._internal.exporter._registration")
    registry = getattr(registration, "ONNXRegistry", None)
    if isinstance(inspect.getattr_static(registry, "from_torchlib", None), classmethod):  # not yet replaced
        registry.from_torchlib = staticmethod(functools.cache(registry.from_torchlib))  # type: ignore[union-attr]
    exported, decomp = (sys.modules.get(f"torch.export.{m}") for m in ("exported_program", "decomp_utils"))
    collect = getattr(exported, "_collect_all_valid_cia_ops", None)
    if collect is not None and decomp is not None and not hasattr(collect, "cache_info"):  # not yet replaced
        exported._collect_all_valid_cia_ops = decomp._collect_all_valid_cia_ops = functools.cache(collect)  # type: ignore[union-attr]
