"""The converters in tools/ read the formats users already have; generated docs stay current."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from netspec.layers import all_types
from tests.conftest import ROOT


def test_mnist_idx_to_npz(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    labels = np.array([7, 2, 1], np.uint8)
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(
            b"\0\0\x08\x03" + struct.pack(">3I", 3, 28, 28) + images.tobytes()
        )
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(
            b"\0\0\x08\x01" + struct.pack(">I", 3) + labels.tobytes()
        )
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mnist_to_npz.py"), str(tmp_path), str(tmp_path / "out")],
        check=True,
        capture_output=True,
    )
    with np.load(tmp_path / "out" / "mnist_train.npz") as z:
        assert z["data"].shape == (3, 1, 28, 28) and np.array_equal(z["data"][:, 0], images)
        assert z["label"].tolist() == [7, 2, 1]


def test_cifar10_binary_to_npz(tmp_path: Path) -> None:
    record = np.zeros(1 + 3072, np.uint8)
    record[0] = 4
    record[1:1025] = 10  # red plane
    record[2049:] = 30  # blue plane
    for i in range(1, 6):
        record.tofile(tmp_path / f"data_batch_{i}.bin")
    record.tofile(tmp_path / "test_batch.bin")
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cifar10_to_npz.py"), str(tmp_path), str(tmp_path / "out")],
        check=True,
        capture_output=True,
    )
    with np.load(tmp_path / "out" / "cifar10_train.npz") as z:
        assert z["data"].shape == (5, 3, 32, 32) and z["label"].tolist() == [4] * 5
        assert z["data"][0, 0, 0, 0] == 30 and z["data"][0, 2, 0, 0] == 10  # BGR, as Caffe


def test_layer_docs_are_generated_from_the_registry_and_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_layer_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + "\nrun: python tools/gen_layer_docs.py"
    text = (ROOT / "docs" / "layers.md").read_text()
    for name, definition in all_types().items():
        assert f"\n### {name}\n" in text
        if definition.param_field:
            assert f"`{definition.param_field}` (" in text
    assert "| `round_mode` | CEIL \\| FLOOR | `CEIL` |" in text


def test_fuzz_tool_writes_a_folder_per_distinct_defect(tmp_path: Path) -> None:
    out = tmp_path / "fuzz"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fuzz.py"), "--cases", "30", "--out", str(out), "--time-fraction", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[0].startswith("30 cases, ")
    rows = [line for line in summary[4:] if line.startswith("| ")]
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == len(rows) == int(summary[0].split(", ")[-1].split()[0])
    for folder in folders:
        assert (folder / "traceback.txt").read_text().startswith("netspec ")
        assert len(list(folder.glob("spec.*"))) == 1
