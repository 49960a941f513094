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
from click.testing import CliRunner

import netspec
from netspec._proto import netspec_pb2 as pb
from netspec.cli import main
from netspec.data.datasets import load_arrays, standardization
from netspec.data.feeder import Feeder
from netspec.deploy.commands import predict, spec_batch
from netspec.deploy.export import deploy_module
from netspec.snapshot import save_weights
from netspec.train.solver import Solver
from tests.conftest import MODELS


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


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


def _wine_csv(path: Path, scale: float = 1.0) -> None:
    """The wine set as a CSV file with the label last (a source that can change or disappear)."""
    wine = sklearn.datasets.load_wine()
    rows = np.column_stack([wine.data * scale, wine.target])
    np.savetxt(path, rows, delimiter=",", fmt="%.6g")


def test_the_statistics_are_stored_with_the_model_and_exported_without_the_data(tmp_path: Path) -> None:
    """A snapshot holds the statistics training used; `export`, `predict` and `test` take them from it, so a
    changed or missing source changes nothing in the exported model."""
    _wine_csv(tmp_path / "wine.csv")
    spec = tmp_path / "mlp.yaml"
    spec.write_text(
        (MODELS / "wine_mlp.yaml")
        .read_text()
        .replace("source: wine", "source: wine.csv")
        .replace("max_epoch: 60", "max_iter: 20")
    )
    snap = Solver(str(spec), out_dir=tmp_path / "run", quiet=True).solve()["snapshot"]
    layer = pb.DatasetParameter(source=str(tmp_path / "wine.csv"), standardize=True)
    mean, std = standardization(layer, ".")
    stored = torch.load(snap, weights_only=True)["statistics"]["data"]
    np.testing.assert_array_equal(np.float32(stored["mean"]), mean)
    np.testing.assert_array_equal(np.float32(stored["std"]), std)

    _wine_csv(tmp_path / "wine.csv", scale=3.0)  # the source changed since training
    raw, labels = load_arrays(pb.DatasetParameter(source=str(tmp_path / "wine.csv")), ".", pb.TEST)
    module = netspec.compile(str(spec), "TEST", snap)
    with Feeder(module.net, torch.device("cpu"), seed=0) as feeder:  # what `netspec test` feeds
        np.testing.assert_allclose(feeder.sources[0].arrays["data"].numpy(), (raw - mean) / std, rtol=1e-5, atol=1e-5)
    assert spec_batch(module.net) is not None
    np.testing.assert_allclose(spec_batch(module.net, limit=None)["data"].numpy(), raw, rtol=1e-4)

    (tmp_path / "wine.csv").unlink()  # and then it is gone
    code, out = _cli("export", str(spec), "--weights", snap, "--onnx", str(tmp_path / "mlp.onnx"))
    assert code == 0, out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "mlp.onnx")).metadata_props}
    assert json.loads(meta["netspec.preprocessing"])["data"]["standardize"] == stored
    session = ort.InferenceSession(str(tmp_path / "mlp.onnx"), providers=["CPUExecutionProvider"])
    onnx_prob = session.run(["prob"], {"data": raw})[0]
    module = netspec.compile(str(spec), "TEST", snap)
    scaled = torch.from_numpy((raw - mean) / std)
    with torch.no_grad():
        torch_prob = module.blobs(data=scaled, label=torch.from_numpy(labels))["prob"].numpy()
    np.testing.assert_allclose(onnx_prob, torch_prob, rtol=1e-4, atol=1e-6)

    np.savetxt(tmp_path / "rows.csv", raw[:4], delimiter=",")
    prediction = predict(str(spec), snap, str(tmp_path / "rows.csv"), 1, None)  # predict with the spec, too
    assert [row[0][0] for row in prediction.classes or []] == list(torch_prob[:4].argmax(1))


def test_a_snapshot_without_statistics_still_loads(tmp_path: Path) -> None:
    """Snapshots written before the statistics were stored: the source gives them, as before."""
    module = netspec.compile(str(MODELS / "wine_mlp.yaml"))
    save_weights(module.caffe_params(), tmp_path / "old.pt")
    loaded = netspec.compile(str(MODELS / "wine_mlp.yaml"), "TEST", str(tmp_path / "old.pt"))
    expected = standardization(pb.DatasetParameter(source="wine", standardize=True), ".")
    plan = deploy_module(loaded).plan.preprocessing["data"].standardize
    assert plan is not None
    np.testing.assert_allclose(np.float32(plan[0]), expected[0])
    np.testing.assert_allclose(np.float32(plan[1]), expected[1])
