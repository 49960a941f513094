"""ONNX export: every ready model exports and agrees with PyTorch in an independent onnxruntime run; the
Caffe reference nets exported with their reference weights compute what real Caffe computed; the deploy
graph keeps what a served model needs; failures are reported, not written."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import netspec
from netspec.deploy.commands import spec_batch
from netspec.deploy.export import ATOL, RTOL, ExportReport
from netspec.deploy.graph import plan
from netspec.errors import ExportError
from tests.conftest import CAFFE, DIGIT_LABELS, MODELS
from tests.test_caffe_reference import SUMMATION_ORDER, load_case

MODEL_FILES = sorted(glob.glob(str(MODELS / "*.yaml")) + glob.glob(str(MODELS / "*.prototxt")))
REFERENCE = sorted(glob.glob(str(CAFFE / "nets" / "*.prototxt")) + glob.glob(str(CAFFE / "layers" / "*.prototxt")))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _preprocessed(net: netspec.Net, name: str, x: torch.Tensor) -> torch.Tensor:
    """What the spec's data layer does to a record, written out from its transform_param."""
    layer = next(i.node for i in net.layers if name in i.node.tops)
    tp = layer.lp.transform_param
    if layer.lp.dataset_param.standardize:
        from netspec.data.datasets import standardization

        mean, std = standardization(layer.lp.dataset_param, layer.spec.base_dir)
        x = (x - torch.from_numpy(mean)) / torch.from_numpy(std)
    if tp.mean_value:
        x = x - torch.tensor(list(tp.mean_value)).reshape(1, -1, *([1] * (x.dim() - 2)))
    return x * tp.scale


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: Path(p).name)
def test_ready_model_exports_and_matches_pytorch(path: str, tmp_path: Path) -> None:
    module = netspec.compile(path)
    out = tmp_path / "model.onnx"
    report = netspec.export_onnx(module, out, data=spec_batch(module.net))
    assert report.verified
    assert [c.batch for c in report.comparisons][:2] == [1, 3]
    onnx.checker.check_model(str(out), full_check=True)

    # independently of the exporter's own check: the full TEST net in PyTorch (data tops fed, labels zero,
    # preprocessing applied by hand) against the file in a fresh onnxruntime session
    net, session = module.net, _session(out)
    gen = torch.Generator().manual_seed(7)
    for batch in (1, 4):
        feeds = {}
        for value in session.get_inputs():
            shape = (batch, *net.shapes[value.name][1:])
            feeds[value.name] = torch.randn(shape, generator=gen) * 4 + 2
        fed = {
            n: _preprocessed(net, n, x) if n in feeds else torch.zeros((batch, *net.shapes[n][1:]))
            for n, x in {**{n: None for n in net.inputs}, **feeds}.items()
        }
        with torch.no_grad():
            blobs = module.blobs(**fed)
        names = [o.name for o in session.get_outputs()]
        got = session.run(names, {n: x.numpy() for n, x in feeds.items()})
        for name, value in zip(names, got, strict=True):
            want = blobs[name].numpy()
            assert value.shape == want.shape, name
            np.testing.assert_allclose(value, want, rtol=RTOL, atol=ATOL, err_msg=f"{path} {name}")


def _deployable(path: str) -> bool:
    net = netspec.load(path)
    if net.phase == "TRAIN":
        return False  # batch statistics: a deployed model computes the TEST phase
    try:
        plan(net)
    except ExportError:
        return False  # a loss on its own: nothing to deploy
    return True


@pytest.mark.parametrize("path", [p for p in REFERENCE if _deployable(p)], ids=lambda p: Path(p).stem)
def test_exported_reference_net_computes_what_caffe_computed(path: str, tmp_path: Path) -> None:
    ref, _, module = load_case(path)
    out = tmp_path / "case.onnx"
    netspec.export_onnx(module, out, verify=False)  # checked against Caffe itself below
    session = _session(out)
    feeds = {v.name: ref[f"input:{v.name}"] for v in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    checked = 0
    for name, got in zip(names, session.run(names, feeds), strict=True):
        want = ref.get(f"output:{name}")
        if want is None:
            continue
        got = got.reshape(want.shape)
        if (Path(path).stem, name) in SUMMATION_ORDER:  # see test_caffe_reference
            assert np.max(np.abs(got - want)) <= 1e-5 * max(1.0, np.abs(want).max()), name
        else:
            assert np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))) <= 1e-5, name
        checked += 1
    assert checked, "no output of the exported model has a Caffe reference value"


def test_reference_nets_are_all_covered() -> None:
    nets = [p for p in REFERENCE if "/nets/" in p]
    assert nets and all(_deployable(p) for p in nets)


def test_deploy_graph_drops_what_only_training_needs(write_spec) -> None:
    # the regression targets are scaled by a Power layer that only the loss reads: it goes with the label
    path = write_spec("""
layer { name: "d" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 3 } } }
layer { name: "t" type: "Power" bottom: "target" top: "t" power_param { scale: 2 } }
layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
layer { name: "pred" type: "InnerProduct" bottom: "data" top: "pred" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "t" top: "loss" }
layer { name: "recon" type: "EuclideanLoss" bottom: "pred" bottom: "flat" top: "recon" }
""")
    p = plan(netspec.load(path))
    assert p.layers == ("pred",)
    assert dict(p.inputs) == {"data": (8, 3)}
    assert p.outputs == ("pred",)


def test_metadata_records_the_spec_io_and_labels(digits_onnx: Path) -> None:
    spec = MODELS / "digits_cnn.yaml"
    model = onnx.load(str(digits_onnx))
    meta = {p.key: p.value for p in model.metadata_props}
    import hashlib

    assert meta["netspec.version"] == netspec.__version__
    assert meta["netspec.spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert json.loads(meta["netspec.inputs"]) == {"data": [64, 1, 8, 8]}
    assert json.loads(meta["netspec.outputs"]) == ["prob"]
    assert json.loads(meta["netspec.labels"]) == DIGIT_LABELS
    assert json.loads(meta["netspec.preprocessing"]) == {
        "data": {"scale": 0.0625, "mean": None, "mean_file": None, "standardize": None}
    }
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 1, 8, 8]
    assert model.producer_name == "netspec"


def test_fixed_batch_export(tmp_path: Path) -> None:
    out = tmp_path / "fixed.onnx"
    report = netspec.export_onnx(netspec.compile(str(MODELS / "xor.yaml")), out, batch=5)
    assert report.inputs == {"data": [5, 2]}
    assert [c.batch for c in report.comparisons] == [5]
    with pytest.raises(ExportError, match="--batch takes 'dynamic' or a positive number, got '0'"):
        netspec.export_onnx(netspec.compile(str(MODELS / "xor.yaml")), out, batch=0)


def test_trained_weights_are_what_gets_exported(tmp_path: Path) -> None:
    module = netspec.compile(str(MODELS / "xor.yaml"))
    with torch.no_grad():
        for blobs in module.caffe_params().values():
            for b in blobs:
                b.fill_(0.25)
    out = tmp_path / "xor.onnx"
    netspec.export_onnx(module, out, verify=False)
    x = np.array([[0, 0], [1, 1]], dtype=np.float32)
    with torch.no_grad():
        want = module.blobs(data=torch.from_numpy(x))["xor"].numpy()
    np.testing.assert_allclose(_session(out).run(None, {"data": x})[0], want, rtol=1e-6)


def test_a_training_phase_module_exports_its_test_net(tmp_path: Path) -> None:
    train = netspec.compile(str(MODELS / "digits_cnn.yaml"), phase="TRAIN")
    report = netspec.export_onnx(train, tmp_path / "m.onnx")
    assert report.verified and list(report.outputs) == ["prob"]


def test_failed_verification_renames_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import netspec.deploy.export as export

    monkeypatch.setattr(export, "ATOL", -1.0)  # nothing can agree within a negative tolerance
    out = tmp_path / "xor.onnx"
    with pytest.raises(
        ExportError,
        match=r"the exported model does not compute what PyTorch does: on random "
        r"inputs \(batch \d\) they differ by up to .*; the file was renamed to ",
    ):
        export.export_onnx(netspec.compile(str(MODELS / "xor.yaml")), out)
    assert not out.exists() and (tmp_path / "xor.onnx.failed").exists()


def test_report_lines_state_the_tolerance() -> None:
    report = ExportReport("m.onnx", {"data": ["batch", 2]}, {"prob": ["batch", 2]}, 18)
    assert not report.verified  # nothing compared is nothing verified
    assert report.lines() == ["exported m.onnx (opset 18)", "inputs:  data ['batch', 2]", "outputs: prob ['batch', 2]"]


def test_net_without_deploy_outputs_is_refused(write_spec) -> None:
    path = write_spec("""
layer { name: "d" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "loss" }
""")
    with pytest.raises(
        ExportError, match="the net has nothing left to compute once its losses and accuracy are dropped"
    ):
        netspec.export_onnx(netspec.compile(path), Path(path).with_suffix(".onnx"))
