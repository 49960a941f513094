"""Caffe's weight files in and out. The files under test are encoded here with protobuf's own message API,
the way Caffe's C++ serializer writes them (current `layer` and V1 `layers` entries, `shape` or the
legacy num/channels/height/width, float or double data), independently of netspec's reader and writer.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

import netspec
from netspec._proto import netspec_pb2 as pb
from netspec.caffemodel import read_caffemodel, write_caffemodel
from netspec.cli import main
from netspec.deploy.caffe import export_caffemodel
from netspec.errors import DataError, WeightsError
from netspec.lower.weights import apply_weights, read_weights
from tests.conftest import DATA, MODELS
from tests.zoo import cifar10_quick

LENET = str(MODELS / "lenet.prototxt")
LENET_SHAPES = {
    "conv1": [(20, 1, 5, 5), (20,)],
    "conv2": [(50, 20, 5, 5), (50,)],
    "ip1": [(500, 800), (500,)],
    "ip2": [(10, 500), (10,)],
}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def random_blobs(shapes: dict[str, list[tuple[int, ...]]], seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {layer: [rng.standard_normal(s).astype(np.float32) for s in blobs] for layer, blobs in shapes.items()}


def encode(
    blobs: dict[str, list[np.ndarray]],
    path: Path,
    v1: bool = False,
    legacy: bool = False,
    double: bool = False,
    extra_layers: tuple[str, ...] = (),
) -> Path:
    """A .caffemodel as Caffe writes one, through protobuf's message API."""
    net = pb.NetParameter(name="encoded")
    for name in extra_layers:  # layers without blobs, as Caffe writes every layer
        (net.layers.add(name=name, type=pb.V1LayerParameter.RELU) if v1 else net.layer.add(name=name, type="ReLU"))
    for name, arrays in blobs.items():
        layer = net.layers.add(name=name) if v1 else net.layer.add(name=name, type="Convolution")
        for a in arrays:
            blob = layer.blobs.add()
            if legacy:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - a.ndim) + a.shape
            else:
                blob.shape.dim.extend(a.shape)
            (blob.double_data if double else blob.data).extend(a.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("v1", "legacy", "double"),
    [(False, False, False), (True, True, False), (False, True, False), (False, False, True)],
    ids=["current", "v1-legacy-shapes", "legacy-shapes", "double"],
)
def test_caffemodel_weights_load_into_the_net(tmp_path: Path, v1: bool, legacy: bool, double: bool) -> None:
    blobs = random_blobs(LENET_SHAPES)
    path = encode(blobs, tmp_path / "lenet.caffemodel", v1, legacy, double, extra_layers=("relu1",))
    module = netspec.compile(LENET, weights=str(path))
    for layer, arrays in blobs.items():
        for got, want in zip(module.caffe_params()[layer], arrays, strict=True):
            np.testing.assert_array_equal(got.detach().numpy(), want)


def test_hdf5_weights_load(tmp_path: Path) -> None:
    blobs = random_blobs(LENET_SHAPES, seed=1)
    path = tmp_path / "lenet.caffemodel.h5"
    with h5py.File(path, "w") as f:
        for layer, arrays in blobs.items():
            for i, a in enumerate(arrays):
                f.create_dataset(f"data/{layer}/{i}", data=a)
    module = netspec.compile(LENET, weights=str(path))
    np.testing.assert_array_equal(module.caffe_params()["ip1"][0].detach().numpy(), blobs["ip1"][0])


def test_fine_tuning_report_and_mismatches(tmp_path: Path) -> None:
    blobs = random_blobs({**LENET_SHAPES, "ip2": [(7, 500), (7,)], "extra": [(3,)]})
    del blobs["conv2"]
    path = str(encode(blobs, tmp_path / "w.caffemodel"))
    module = netspec.compile(LENET)
    with pytest.raises(WeightsError) as e:
        apply_weights(module.caffe_params(), read_weights(path), path)
    assert str(e.value) == (
        f"error: weights in '{path}' do not fit the net: 2 layer(s) loaded; no weights for: conv2; unused weights: "
        "extra; shape mismatch: ip2 blob 0: (7, 500) in the file, (10, 500) in the net; ip2 blob 1: (7,) in the file, "
        "(10,) in the net".removeprefix("error: ")
        + "\n  hint: layers are matched by name and blobs by shape; pass --allow-missing to start the mismatched "
        "layers from their fillers"
    )
    before = module.caffe_params()["ip2"][0].clone()
    report = apply_weights(module.caffe_params(), read_weights(path), path, allow_missing=True)
    assert (report.loaded, report.missing, report.unused) == (["conv1", "ip1"], ["conv2"], ["extra"])
    assert torch.equal(module.caffe_params()["ip2"][0], before)  # left as the fillers made it


def test_fine_tuning_from_a_caffemodel_on_the_command_line(tmp_path: Path) -> None:
    # a model pretrained for 5 classes: its last layer does not fit the 10-class net
    blobs = random_blobs(
        {
            "conv1": [(32, 1, 3, 3), (32,)],
            "conv2": [(64, 32, 3, 3), (64,)],
            "fc1": [(128, 256), (128,)],
            "fc2": [(5, 128), (5,)],
        }
    )
    path = encode(blobs, tmp_path / "pre.caffemodel")
    args = [
        "train",
        str(MODELS / "digits_cnn.yaml"),
        "--weights",
        str(path),
        "--set",
        "solver.max_epoch=0.1",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
    ]
    code, out = run(*args)
    assert code == 1
    assert "shape mismatch: fc2 blob 0: (5, 128) in the file, (10, 128) in the net" in out
    code, out = run(*args, "--allow-missing")
    assert code == 0, out
    assert "weights: 3 layer(s) loaded; shape mismatch: fc2 blob 0" in out


def test_unreadable_weights_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff\xff\xff not a protobuf")
    with pytest.raises(WeightsError, match=r"^'.*bad\.caffemodel' is not a readable \.caffemodel \("):
        read_caffemodel(bad)
    with pytest.raises(WeightsError, match=r"weights file '.*none\.caffemodel' does not exist"):
        read_caffemodel(tmp_path / "none.caffemodel")
    short = pb.NetParameter()
    short.layer.add(name="ip").blobs.add(shape=pb.BlobShape(dim=[2, 3]), data=[1.0, 2.0])
    (tmp_path / "short.caffemodel").write_bytes(short.SerializeToString())
    with pytest.raises(WeightsError, match=r"layer 'ip' blob 0 has shape \(2, 3\) but 2 values"):
        read_caffemodel(tmp_path / "short.caffemodel")
    with pytest.raises(WeightsError, match="cannot tell the format of weights file"):
        read_weights(tmp_path / "weights.bin")


def test_written_caffemodel_decodes_with_protobuf(tmp_path: Path) -> None:
    blobs = random_blobs({"conv": [(4, 3, 2, 2), (4,)], "scale": [()]})
    lp = pb.LayerParameter(name="conv", type="Convolution", bottom=["x"], top=["y"])
    lp.convolution_param.num_output = 4
    path = tmp_path / "w.caffemodel"
    size = write_caffemodel(
        path,
        "net",
        [
            (lp, blobs["conv"]),
            (pb.LayerParameter(name="relu", type="ReLU"), []),
            (pb.LayerParameter(name="scale", type="Scale"), blobs["scale"]),
        ],
    )
    net = pb.NetParameter.FromString(path.read_bytes())
    assert size == path.stat().st_size and net.name == "net"
    assert [layer.name for layer in net.layer] == ["conv", "relu", "scale"]
    assert net.layer[0].convolution_param.num_output == 4 and list(net.layer[0].bottom) == ["x"]
    assert list(net.layer[0].blobs[0].shape.dim) == [4, 3, 2, 2]
    np.testing.assert_array_equal(
        np.array(net.layer[0].blobs[0].data, dtype=np.float32).reshape(4, 3, 2, 2), blobs["conv"][0]
    )
    assert list(net.layer[2].blobs[0].shape.dim) == [] and len(net.layer[2].blobs[0].data) == 1


def test_caffemodel_round_trip_is_exact(tmp_path: Path) -> None:
    blobs = random_blobs(LENET_SHAPES, seed=3)
    source = encode(blobs, tmp_path / "in.caffemodel", v1=True, legacy=True)
    code, out = run("export", LENET, "--weights", str(source), "--caffemodel", str(tmp_path / "out.caffemodel"))
    assert code == 0, out
    assert out.splitlines()[:2] == [
        f"wrote {tmp_path / 'out.caffemodel'} (4 layers with weights, {(tmp_path / 'out.caffemodel').stat().st_size:,}"
        " bytes)",
        f"wrote {tmp_path / 'out_deploy.prototxt'} (the deploy net for it)",
    ]
    again = read_caffemodel(tmp_path / "out.caffemodel")
    assert again.blobs.keys() == blobs.keys() and not again.legacy and not again.v1
    for layer, arrays in blobs.items():
        for got, want in zip(again.blobs[layer], arrays, strict=True):
            assert got.dtype == np.float32 and np.array_equal(got, want)
    written = pb.NetParameter.FromString((tmp_path / "out.caffemodel").read_bytes())
    assert [layer.name for layer in written.layer] == [i.node.name for i in netspec.load(LENET).layers]


def test_deploy_prototxt_computes_what_the_spec_did(tmp_path: Path) -> None:
    source = encode(random_blobs(LENET_SHAPES, seed=4), tmp_path / "in.caffemodel")
    out = tmp_path / "lenet.caffemodel"
    assert run("export", LENET, "--weights", str(source), "--caffemodel", str(out))[0] == 0
    deploy = netspec.load(str(tmp_path / "lenet_deploy.prototxt"))
    assert [i.node.type for i in deploy.layers] == [
        "Input",
        "Convolution",
        "Pooling",
        "Convolution",
        "Pooling",
        "InnerProduct",
        "ReLU",
        "InnerProduct",
    ]
    assert deploy.inputs == {"data": (64, 1, 28, 28)} and deploy.outputs == ["ip2"]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = netspec.compile(LENET, weights=str(source)).blobs(data=x, label=torch.zeros(2))["ip2"]
        got = netspec.compile(deploy, weights=str(out))(data=x)["ip2"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_deploy_prototxt_keeps_only_fillers_caffe_knows(tmp_path: Path) -> None:
    """Caffe builds every filler when it sets a net up and stops at a type it does not know, even though
    the weights come from the .caffemodel (found by running real Caffe on the files netspec writes)."""
    spec = tmp_path / "fillers.yaml"
    spec.write_text(
        "layer:\n- {name: x, type: Input, input_param: {shape: [2, 3]}}\n"
        "- {name: a, type: InnerProduct, inner_product_param: {num_output: 2, weight_filler: "
        "{type: glorot_uniform}, bias_filler: {type: constant, value: 0.5}}}\n"
        "- {name: b, type: InnerProduct, inner_product_param: {num_output: 2, weight_filler: "
        "{type: msra, gain: 2}, bias_filler: {type: gaussian, std: 0.1}}}\n"
    )
    code, out = run("export", str(spec), "--caffemodel", str(tmp_path / "f.caffemodel"))
    assert code == 0 and "netspec's additions" not in out
    deploy = pb.NetParameter()
    text_format.Parse((tmp_path / "f_deploy.prototxt").read_text(), deploy)
    a, b = (layer.inner_product_param for layer in deploy.layer[1:])
    assert not a.HasField("weight_filler") and a.bias_filler == pb.FillerParameter(type="constant", value=0.5)
    assert not b.HasField("weight_filler") and b.bias_filler == pb.FillerParameter(type="gaussian", std=0.1)


def test_export_names_preprocessing_and_netspec_only_layers(tmp_path: Path) -> None:
    code, out = run("export", str(MODELS / "digits_cnn.yaml"), "--caffemodel", str(tmp_path / "d.caffemodel"))
    assert code == 0
    assert (
        out.splitlines()[2] == "note: the deploy net takes 'data' preprocessed, as the data layer did: multiply "
        "by 0.0625"
    )
    spec = tmp_path / "gelu.yaml"
    spec.write_text(
        "layer:\n- {name: x, type: Input, input_param: {shape: [2, 3]}}\n"
        "- {name: ip, type: InnerProduct, inner_product_param: {num_output: 2}}\n- {name: g, type: GELU}\n"
    )
    code, out = run("export", str(spec), "--caffemodel", str(tmp_path / "g.caffemodel"))
    assert (
        code == 0 and out.splitlines()[-2] == "note: these layers use netspec's additions, which Caffe cannot read: g"
    )
    assert run("export", str(spec)) == (
        1,
        "error: say what to write: --onnx FILE.onnx and/or --caffemodel FILE.caffemodel\n",
    )
    assert run("export", str(spec), "--caffemodel", str(tmp_path / "g.bin"))[1].startswith(
        "error: --caffemodel names the file to write and must end in .caffemodel"
    )


def test_import_writes_spec_weights_and_verified_onnx(tmp_path: Path) -> None:
    proto = tmp_path / "cifar10_quick.prototxt"
    proto.write_text(cifar10_quick())
    net = netspec.load(str(proto))
    shapes = {i.node.name: [b.shape for b in i.blobs] for i in net.layers if i.blobs}
    weights = encode(random_blobs(shapes, seed=5), tmp_path / "quick.caffemodel", v1=True, legacy=True)
    out = tmp_path / "imported"
    code, text = run("import", str(proto), str(weights), "-o", str(out))
    assert code == 0, text
    lines = text.splitlines()
    assert lines[:3] == [
        f"imported {proto} with {weights} (net '{net.name}', TEST phase)",
        f"spec:    {out / 'cifar10_quick.yaml'} ({len(net.layers)} layers)",
        f"weights: {out / 'cifar10_quick.pt'} (5 layer(s) loaded; 145,578 parameters)",
    ]
    assert lines[3].startswith(
        f"onnx:    {out / 'cifar10_quick.onnx'} (input data ['batch', 3, 32, 32]; verified "
        "against PyTorch: max |onnx - torch| "
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = netspec.compile(str(proto), weights=str(weights))(data=torch.from_numpy(x))
        again = netspec.compile(str(out / "cifar10_quick.yaml"), weights=str(out / "cifar10_quick.pt"))(
            data=torch.from_numpy(x)
        )
    assert want.keys() == again.keys()
    for name in want:
        torch.testing.assert_close(again[name], want[name], rtol=0, atol=0)
    session = ort.InferenceSession(str(out / "cifar10_quick.onnx"), providers=["CPUExecutionProvider"])
    [output] = session.get_outputs()
    np.testing.assert_allclose(session.run(None, {"data": x})[0], want[output.name].numpy(), rtol=1e-4, atol=1e-5)


def test_import_of_a_v1_prototxt_says_it_was_upgraded(tmp_path: Path) -> None:
    proto = tmp_path / "old.prototxt"
    proto.write_text(
        'name: "old"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n'
        'layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" '
        "inner_product_param { num_output: 2 } }\n"
        'layers { name: "prob" type: SOFTMAX bottom: "ip" top: "prob" }\n'
    )
    weights = encode(random_blobs({"ip": [(2, 48), (2,)]}), tmp_path / "old.caffemodel", v1=True, legacy=True)
    code, text = run("import", str(proto), str(weights), "-o", str(tmp_path / "new"))
    assert code == 0, text
    assert (
        text.splitlines()[1] == f"spec:    {tmp_path / 'new' / 'old.yaml'} (3 layers, upgraded from Caffe's V1 "
        "layer format)"
    )
    assert "layers:" not in (tmp_path / "new" / "old.yaml").read_text()


def test_import_errors_come_before_anything_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff")
    code, text = run("import", LENET, str(bad), "-o", str(tmp_path / "out"))
    assert code == 1 and text.startswith(f"error: '{bad}' is not a readable .caffemodel")
    assert not (tmp_path / "out").exists()


def test_weights_only_snapshot_cannot_be_resumed(tmp_path: Path) -> None:
    from netspec import snapshot

    module = netspec.compile(str(MODELS / "xor_train.yaml"))
    snapshot.save_weights(module.caffe_params(), tmp_path / "w.pt")
    solver = netspec.Solver(str(MODELS / "xor_train.yaml"), quiet=True)
    with pytest.raises(WeightsError, match=r"holds weights only, not a training state to resume"):
        solver.restore(tmp_path / "w.pt")
    loaded = netspec.compile(str(MODELS / "xor_train.yaml"), weights=str(tmp_path / "w.pt"))
    for a, b in zip(loaded.caffe_params()["hidden"], module.caffe_params()["hidden"], strict=True):
        assert torch.equal(a, b)


def _blobproto(array: np.ndarray, legacy: bool = True) -> bytes:
    blob = pb.BlobProto()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = array.shape
    else:
        blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())
    return blob.SerializeToString()


def test_mean_file_moves_into_the_exported_graph(tmp_path: Path) -> None:
    mean = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) / 8
    (tmp_path / "mean.binaryproto").write_bytes(_blobproto(mean))
    text = (
        (MODELS / "digits_cnn.yaml")
        .read_text()
        .replace("transform_param: {scale: 0.0625}", "transform_param: {scale: 0.0625, mean_file: mean.binaryproto}")
    )
    assert "mean_file" in text
    spec = tmp_path / "digits.yaml"
    spec.write_text(text)
    module = netspec.compile(str(spec))
    report = netspec.export_onnx(module, tmp_path / "d.onnx")
    assert report.verified
    x = np.random.default_rng(0).uniform(0, 16, (3, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module.blobs(data=torch.from_numpy((x - mean) * 0.0625), label=torch.zeros(3))["prob"].numpy()
    np.testing.assert_allclose(session.run(None, {"data": x})[0], want, rtol=1e-4, atol=1e-6)


def test_mean_file_is_read_for_training(tmp_path: Path) -> None:
    from netspec.caffemodel import read_mean_file

    mean = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    (tmp_path / "m.binaryproto").write_bytes(_blobproto(mean, legacy=False))
    np.testing.assert_array_equal(read_mean_file(tmp_path / "m.binaryproto"), mean[0])
    (tmp_path / "bad.binaryproto").write_bytes(b"\xff\xff\xff")
    with pytest.raises(DataError, match=r"is not a Caffe \.binaryproto mean file"):
        read_mean_file(tmp_path / "bad.binaryproto")


def test_infogain_matrix_from_a_binaryproto(write_spec, tmp_path: Path) -> None:
    h = np.random.default_rng(1).uniform(0, 1, (4, 4)).astype(np.float32)
    (tmp_path / "H.binaryproto").write_bytes(_blobproto(h.reshape(1, 1, 4, 4)))
    body = (
        'layer { name: "in" type: "Input" top: "p" top: "y" top: "H" input_param { shape { dim: 3 dim: 4 } '
        "shape { dim: 3 } shape { dim: 4 dim: 4 } } }\n"
    )
    from_file = write_spec(
        body.replace(' top: "H"', "").replace(" shape { dim: 4 dim: 4 }", "")
        + 'layer { name: "loss" type: "InfogainLoss" bottom: "p" bottom: "y" top: "loss" '
        'infogain_loss_param { source: "H.binaryproto" } }\n',
        "file.prototxt",
    )
    as_input = write_spec(
        body + 'layer { name: "loss" type: "InfogainLoss" bottom: "p" bottom: "y" bottom: "H" top: "loss" }\n',
        "input.prototxt",
    )
    p = torch.softmax(torch.randn(3, 4), 1)
    y = torch.tensor([0.0, 3.0, 1.0])
    want = netspec.compile(as_input)(p=p, y=y, H=torch.from_numpy(h))["loss"]
    got = netspec.compile(from_file)(p=p, y=y)["loss"]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("net", "weights", "blobs"),
    [("net", "weights.caffemodel", "caffe_blobs.npz"), ("zero_axis", "zero_axis.caffemodel", "zero_axis_blobs.npz")],
)
def test_weights_made_by_real_caffe_give_real_caffes_blobs(tmp_path: Path, net: str, weights: str, blobs: str) -> None:
    """tests/data/caffe_made: .caffemodels that real Caffe's fillers made (LRN, grouped convolution,
    BatchNorm with Caffe's zero scale factor, Scale, PReLU, ceil and padded average pooling; 0-axis blobs)
    and every blob of Caffe's forward pass (`python tools/crosscheck_caffe.py ... fixture` remakes them)."""
    folder = DATA / "caffe_made"
    caffe = np.load(folder / blobs)
    module = netspec.compile(str(folder / f"{net}.prototxt"), weights=str(folder / weights))
    with torch.no_grad():
        ours = module.blobs(data=torch.from_numpy(caffe["data"]))
    assert sorted(ours) == sorted(caffe.files)
    for blob, value in ours.items():
        want = caffe[blob]
        assert value.shape == want.shape, blob
        assert np.abs(value.numpy() - want).max() <= 1e-5 * np.abs(want).max(), blob
    report = netspec.export_onnx(module, tmp_path / "m.onnx")
    assert report.verified
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    last = module.net.outputs[-1]
    [out] = session.run([last], {"data": caffe["data"]})
    np.testing.assert_allclose(out, caffe[last], rtol=1e-5, atol=1e-7)


def _blob_bytes(path: Path) -> dict[str, list[bytes]]:
    net = pb.NetParameter.FromString(path.read_bytes())
    return {layer.name: [b.SerializeToString() for b in layer.blobs] for layer in net.layer if layer.blobs}


def test_zero_axis_blobs_are_read_and_written_as_caffe_writes_them(tmp_path: Path) -> None:
    # Caffe writes a 0-axis blob (shared PReLU slope, Scale/Bias with num_axes 0) with neither `shape`
    # nor num/channels/height/width; a blob of shape [1] is one Caffe refuses to load into it
    made = DATA / "caffe_made" / "zero_axis.caffemodel"
    weights = read_caffemodel(made)
    assert {k: [a.shape for a in v] for k, v in weights.blobs.items()} == {
        "prelu": [()],
        "scale": [(), ()],
        "bias": [()],
    } and not weights.legacy
    module = netspec.compile(str(DATA / "caffe_made" / "zero_axis.prototxt"), weights=str(made))
    assert {k: [tuple(t.shape) for t in v] for k, v in module.caffe_params().items()} == {
        "prelu": [()],
        "scale": [(), ()],
        "bias": [()],
    }
    written = export_caffemodel(module, tmp_path / "again.caffemodel").caffemodel
    assert _blob_bytes(written) == _blob_bytes(made)


def test_a_one_value_blob_still_loads_into_a_zero_axis_parameter(tmp_path: Path) -> None:
    # netspec wrote a shared PReLU slope as (1,) before it used Caffe's 0-axis shape
    path = encode(
        {
            "prelu": [np.array([0.3], np.float32)],
            "scale": [np.ones(1, np.float32)] * 2,
            "bias": [np.zeros(1, np.float32)],
        },
        tmp_path / "old.caffemodel",
    )
    module = netspec.compile(str(DATA / "caffe_made" / "zero_axis.prototxt"), weights=str(path))
    assert module.caffe_params()["prelu"][0].item() == pytest.approx(0.3)
