"""Tabular data that works: a `standardize` Dataset scales each feature with the training part's statistics,
a first MLP then fits wine and breast_cancer, and the exported ONNX model takes the raw features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import sklearn.datasets
import torch

import netspec
from netspec._proto import netspec_pb2 as pb
from netspec.data.datasets import load_arrays, standardization
from netspec.deploy.commands import spec_batch
from netspec.train.solver import Solver
from tests.conftest import MODELS


def test_statistics_come_from_the_training_part_only() -> None:
    p = pb.DatasetParameter(source="wine", standardize=True)
    train, _ = load_arrays(p, ".", pb.TRAIN)
    test, _ = load_arrays(p, ".", pb.TEST)
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
    assert np.abs(test.mean(0)).max() > 0.05  # the test part is scaled with the training part's numbers
    raw, _ = load_arrays(pb.DatasetParameter(source="wine"), ".", pb.TRAIN)
    mean, std = standardization(p, ".")
    np.testing.assert_allclose(mean, raw.mean(0), rtol=1e-5)
    np.testing.assert_allclose(train, (raw - mean) / std, rtol=1e-5, atol=1e-5)


def test_a_constant_feature_keeps_scale_one(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("".join(f"{i},5,{i % 2}\n" for i in range(20)))
    data, _ = load_arrays(
        pb.DatasetParameter(source=str(path), standardize=True, split=pb.DatasetParameter.ALL), ".", pb.TRAIN
    )
    np.testing.assert_allclose(data[:, 1], 0)
    np.testing.assert_allclose(data[:, 0].std(), 1, rtol=1e-5)


@pytest.mark.parametrize(("source", "classes", "epochs"), [("wine", 3, 15), ("breast_cancer", 2, 8)])
def test_first_mlp_reaches_95_percent_and_the_onnx_model_takes_raw_features(
    tmp_path: Path, source: str, classes: int, epochs: int
) -> None:
    spec = tmp_path / "mlp.yaml"
    spec.write_text(
        (MODELS / "wine_mlp.yaml")
        .read_text()
        .replace("source: wine", f"source: {source}")
        .replace("num_output: 3,", f"num_output: {classes},")
        .replace("max_epoch: 60", f"max_epoch: {epochs}")
    )
    summary = Solver(str(spec), out_dir=tmp_path / "run", quiet=True).solve()
    assert summary["test"][0]["accuracy"] >= 0.95, summary["test"]

    module = netspec.compile(str(spec), "TEST", summary["snapshot"])
    report = netspec.export_onnx(module, tmp_path / "mlp.onnx", data=spec_batch(module.net))
    assert report.verified
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "mlp.onnx")).metadata_props}
    assert json.loads(meta["netspec.preprocessing"])["data"]["standardize"]["std"][0] > 0

    p = pb.DatasetParameter(source=source)
    raw, labels = load_arrays(p, ".", pb.TEST)  # the test part, unscaled
    scaled, _ = load_arrays(pb.DatasetParameter(source=source, standardize=True), ".", pb.TEST)
    session = ort.InferenceSession(str(tmp_path / "mlp.onnx"), providers=["CPUExecutionProvider"])
    onnx_prob = session.run(["prob"], {"data": raw})[0]
    with torch.no_grad():
        torch_prob = module.blobs(data=torch.from_numpy(scaled), label=torch.from_numpy(labels))["prob"].numpy()
    np.testing.assert_array_equal(onnx_prob.argmax(1), torch_prob.argmax(1))
    assert (onnx_prob.argmax(1) == labels).mean() >= 0.95
    assert len(raw) == round(len(getattr(sklearn.datasets, f"load_{source}")().target) * 0.2)
