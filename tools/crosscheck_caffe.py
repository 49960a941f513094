"""Compares netspec with a real Caffe binary, both ways:

1. Caffe's weights in netspec: for the nets shipped with BVLC Caffe, Caffe itself initialises random
   weights from the train/val net's fillers and saves them (`caffe train` with max_iter 0); Caffe and
   netspec then run the deploy net on the same random input, and every blob is compared, as are the outputs
   of the ONNX file netspec exports.
2. netspec's weights in Caffe: each ready spec in models/ that uses only Caffe's layers is exported with
   `export_caffemodel` (a .caffemodel and its deploy prototxt); Caffe loads both and must compute what
   netspec computes.
3. Training ('solvers'): Caffe and netspec train LeNet (with average pooling) from the same Caffe-made
   weights on the same data for 10 iterations with each of Caffe's solver types (and L1 decay, gradient
   clipping, iter_size, lr_mult from the net), and the final weights are compared.
4. LMDB data ('lmdb'): Caffe's convert_imageset and tools/convert_imageset.py convert the same images
   (plain, --gray, resized, --encoded) and their records are compared; Caffe's Data layer and netspec's
   read Caffe's databases with a transform_param (scale, a mean file from Caffe's compute_image_mean,
   crop) and must give the same batch; and Caffe's Data layer reads the databases netspec's tool wrote.
5. Parameter blobs ('held_out'): small nets of each layer type whose blobs converters get wrong
   (channel-shared PReLU and Scale/Bias with num_axes 0, whose blobs have no axes; BatchNorm + Scale,
   grouped Deconvolution, transposed InnerProduct, LSTM (also with a static input), RNN, Embed, 1-D and
   3-D Convolution, Parameter, Scale by a bottom with a learned bias): netspec writes a
   .caffemodel that Caffe loads and runs, and netspec loads the one Caffe's fillers made; outputs compared.
6. Images ('imagedata'): Caffe's ImageData layer and netspec's read JPEGs and PNGs, resized (shrunk,
   halved, enlarged), in colour and grey, and must give the same batch.
7. MVN's gradient ('mvn') with a large eps, where Caffe's formula is not the true gradient.

    python tools/crosscheck_caffe.py --caffe PATH/TO/caffe --caffe-root CAFFE_CHECKOUT [CASE ...]

The case 'fixture' (not run by default) remakes what the test suite keeps of Caffe's: in
tests/data/caffe_made, weights that real Caffe's fillers made for net.prototxt and zero_axis.prototxt with
every blob of Caffe's forward pass, and MVN's gradient (mvn_eps); in tests/data/opencv_resize, Caffe's
ImageData batches.

Caffe itself: Debian bullseye's `caffe` package (CPU, with OpenCV 4.5) runs on a current Debian unpacked
beside its libraries, with apt pointed at bullseye through a private configuration (APT_CONFIG naming a
sources list with `deb http://deb.debian.org/debian bullseye main`, and its own Dir::State and Dir::Cache
folders): `apt-get update`, `apt-get install -d --no-install-recommends caffe`, `dpkg -x` of every
downloaded .deb into one folder, and LD_LIBRARY_PATH set to the folders in it that hold .so files.

Caffe reads the input from an HDF5Data layer put in place of the deploy net's inputs and writes every blob
with HDF5Output layers appended to the net, so only the `caffe` command-line tool is needed, not pycaffe.
A blob's difference is reported relative to its largest magnitude: max|netspec - caffe| / max|caffe|.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import netspec  # noqa: E402 (after the path setup)
from netspec._proto import netspec_pb2 as pb  # noqa: E402
from netspec.deploy.caffe import export_caffemodel  # noqa: E402
from netspec.lower.module import NetModule  # noqa: E402

BATCH = 2
OUTPUT_RTOL = 1e-5  # the bar for output probabilities
BLOB_RTOL = 1e-4  # and for intermediate blobs
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "DummyData", "MemoryData", "WindowData", "Input"}


@dataclass(frozen=True)
class ZooCase:
    train: str  # the train/val net, whose fillers Caffe uses to make the weights
    deploy: str
    train_tops: dict[str, tuple[int, ...]]  # data-layer tops of the TRAIN net, without the batch axis


ZOO = {
    "lenet": ZooCase(
        "examples/mnist/lenet_train_test.prototxt", "examples/mnist/lenet.prototxt", {"data": (1, 28, 28), "label": ()}
    ),
    "cifar10_quick": ZooCase(
        "examples/cifar10/cifar10_quick_train_test.prototxt",
        "examples/cifar10/cifar10_quick.prototxt",
        {"data": (3, 32, 32), "label": ()},
    ),
    "cifar10_full": ZooCase(
        "examples/cifar10/cifar10_full_train_test.prototxt",
        "examples/cifar10/cifar10_full.prototxt",
        {"data": (3, 32, 32), "label": ()},
    ),
    "siamese": ZooCase(
        "examples/siamese/mnist_siamese_train_test.prototxt",
        "examples/siamese/mnist_siamese.prototxt",
        {"pair_data": (2, 28, 28), "sim": ()},
    ),
    "caffenet": ZooCase(
        "models/bvlc_reference_caffenet/train_val.prototxt",
        "models/bvlc_reference_caffenet/deploy.prototxt",
        {"data": (3, 227, 227), "label": ()},
    ),
    "alexnet": ZooCase(
        "models/bvlc_alexnet/train_val.prototxt",
        "models/bvlc_alexnet/deploy.prototxt",
        {"data": (3, 227, 227), "label": ()},
    ),
    "googlenet": ZooCase(
        "models/bvlc_googlenet/train_val.prototxt",
        "models/bvlc_googlenet/deploy.prototxt",
        {"data": (3, 224, 224), "label": ()},
    ),
}


def read_prototxt(path: Path) -> pb.NetParameter:
    return text_format.Parse(path.read_text(encoding="utf-8"), pb.NetParameter())


def write_h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value)
    listing = path.with_suffix(".txt")
    listing.write_text(f"{path}\n", encoding="utf-8")
    return listing


def with_hdf5_inputs(
    net: pb.NetParameter, sources: list[tuple[Path, Iterable[str], int]], phase: int | None
) -> pb.NetParameter:
    """The net with its inputs (Input layers, legacy `input` fields, data layers of `phase`) replaced by
    HDF5Data layers, each reading (listing, tops, batch size); layers of the other phase are dropped."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.input[:], out.input_shape[:], out.input_dim[:], out.layer[:]
    for n, (listing, tops, batch) in enumerate(sources):
        source = out.layer.add(name=f"crosscheck_input_{n}", type="HDF5Data", top=list(tops))
        source.hdf5_data_param.source, source.hdf5_data_param.batch_size = str(listing), batch
    for layer in net.layer:
        phases = {rule.phase for rule in layer.include if rule.HasField("phase")}
        if layer.type in DATA_TYPES or (phase is not None and phases and phase not in phases):
            continue
        out.layer.add().CopyFrom(layer)
    return out


def with_hdf5_outputs(net: pb.NetParameter, blobs: list[str], folder: Path) -> list[tuple[Path, str]]:
    """Appends an HDF5Output layer per blob that saves it flattened: HDF5Output takes two bottoms of equal
    first axis and of at most four axes (a 3-D convolution's are five), so each blob goes in twice."""
    files = []
    for n, blob in enumerate(blobs):
        path, flat = folder / f"blobs_{n}.h5", f"crosscheck_flat_{n}"
        net.layer.add(name=flat, type="Flatten", bottom=[blob], top=[flat]).flatten_param.axis = 0
        layer = net.layer.add(name=f"crosscheck_output_{n}", type="HDF5Output", bottom=[flat, flat])
        layer.hdf5_output_param.file_name = str(path)
        files.append((path, blob))
    return files


def run_caffe(tool: str, args: list[str], cwd: Path) -> None:
    """Runs one of Caffe's command-line tools (caffe, convert_imageset, compute_image_mean)."""
    run = subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "GLOG_minloglevel": "1"}
    )
    if run.returncode != 0:
        raise RuntimeError(f"{Path(tool).name} {' '.join(args)} failed:\n{run.stderr[-4000:]}")


def caffe_blobs(
    caffe: str, deploy: pb.NetParameter, weights: Path, inputs: dict[str, np.ndarray], blobs: list[str], folder: Path
) -> dict[str, np.ndarray]:
    """Every blob in `blobs` (flattened) after Caffe's TEST-phase forward pass of `deploy` with `weights`."""
    # a layer per input, each reading all of it: HDF5Data's tops share their first axis, and a recurrent
    # net's x is (T, N, ...) where its static input is (N, ...)
    net = with_hdf5_inputs(
        deploy,
        [
            (write_h5(folder / f"input_{n}.h5", {blob: value}), [blob], len(value))
            for n, (blob, value) in enumerate(inputs.items())
        ],
        None,
    )
    files = with_hdf5_outputs(net, blobs, folder)
    model = folder / "crosscheck.prototxt"
    model.write_text(text_format.MessageToString(net), encoding="utf-8")
    run_caffe(caffe, ["test", f"-model={model}", f"-weights={weights}", "-iterations=1"], folder)
    out = {}
    for path, blob in files:
        with h5py.File(path, "r") as f:
            out[blob] = np.asarray(f["data"])
    return out


def random_weights(caffe: str, case: ZooCase, root: Path, folder: Path) -> Path:
    """Caffe's own random initialisation of the case's train/val net, saved by Caffe."""
    rng = np.random.default_rng(0)
    arrays = {
        top: rng.standard_normal((BATCH, *shape)).astype(np.float32) if shape else np.zeros(BATCH, np.float32)
        for top, shape in case.train_tops.items()
    }
    listing = write_h5(folder / "train.h5", arrays)
    train = with_hdf5_inputs(read_prototxt(root / case.train), [(listing, case.train_tops, BATCH)], pb.TRAIN)
    (folder / "train.prototxt").write_text(text_format.MessageToString(train), encoding="utf-8")
    solver = pb.SolverParameter(
        net="train.prototxt",
        base_lr=0.01,
        lr_policy="fixed",
        max_iter=0,
        display=0,
        random_seed=1,
        snapshot_prefix="caffe",
        solver_mode=pb.SolverParameter.CPU,
    )
    (folder / "solver.prototxt").write_text(text_format.MessageToString(solver), encoding="utf-8")
    run_caffe(caffe, ["train", "-solver=solver.prototxt"], folder)
    return folder / "caffe_iter_0.caffemodel"


@dataclass
class Result:
    blob: str
    shape: tuple[int, ...]
    relative: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.relative <= self.tolerance


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], outputs: Iterable[str]) -> list[Result]:
    results = []
    for blob, value in ours.items():
        if blob not in theirs:
            continue
        reference = theirs[blob].reshape(value.shape)
        scale = max(float(np.abs(reference).max()), np.finfo(np.float32).tiny)
        tolerance = OUTPUT_RTOL if blob in outputs else BLOB_RTOL
        results.append(Result(blob, value.shape, float(np.abs(value - reference).max()) / scale, tolerance))
    return results


def onnx_outputs(module: NetModule, inputs: dict[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    path = folder / "model.onnx"
    netspec.export_onnx(module, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = session.run(None, inputs)
    return {o.name: v for o, v in zip(session.get_outputs(), values, strict=True)}


def check(
    name: str,
    deploy_path: Path,
    deploy: pb.NetParameter,
    weights: Path,
    caffe: str,
    folder: Path,
    inputs: dict[str, np.ndarray] | None = None,
    with_onnx: bool = True,
) -> bool:
    """Runs Caffe and netspec (PyTorch and, with `with_onnx`, ONNX) on one batch (`inputs`, or random values
    with BATCH items) and prints the comparison."""
    module = netspec.compile(str(deploy_path), phase="TEST", weights=str(weights))
    if inputs is None:
        rng = np.random.default_rng(1)
        inputs = {
            blob: rng.standard_normal((BATCH, *shape[1:])).astype(np.float32)
            for blob, shape in module.net.inputs.items()
        }
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in module.blobs(**{k: torch.from_numpy(v) for k, v in inputs.items()}).items()}
    theirs = caffe_blobs(caffe, deploy, weights, inputs, [b for b in ours if b not in inputs], folder)
    outputs = set(module.net.outputs)
    results = compare(ours, theirs, outputs)
    onnx = compare(onnx_outputs(module, inputs, folder), theirs, outputs) if with_onnx else []
    worst = max(results, key=lambda r: r.relative)
    print(
        f"{name}: {len(results)} blobs; largest relative difference {worst.relative:.2e} "
        f"({worst.blob} {worst.shape}, tolerance {worst.tolerance:g})"
    )
    for r in results:
        if r.blob in outputs:
            print(f"  output {r.blob} {r.shape}: pytorch relative {r.relative:.2e}")
    for r in onnx:
        print(f"  output {r.blob} {r.shape}: onnx relative {r.relative:.2e}")
    failed = [r for r in results + onnx if not r.ok]
    for r in failed:
        print(f"  FAILED {r.blob} {r.shape}: relative {r.relative:.2e} > {r.tolerance:g}")
    return not failed


def zoo_case(name: str, caffe: str, root: Path, folder: Path) -> bool:
    case = ZOO[name]
    weights = random_weights(caffe, case, root, folder)
    ok = check(
        f"{name} (weights from Caffe)", root / case.deploy, read_prototxt(root / case.deploy), weights, caffe, folder
    )
    written = folder / "netspec.caffemodel"  # and back: netspec writes the weights Caffe made
    module = netspec.compile(str(root / case.deploy), phase="TEST", weights=str(weights))
    export = export_caffemodel(module, written)
    return (
        check(
            f"{name} (weights as netspec writes them)",
            export.prototxt,
            read_prototxt(export.prototxt),
            written,
            caffe,
            folder,
        )
        and ok
    )


def model_case(spec: Path, caffe: str, folder: Path) -> bool:
    torch.manual_seed(0)
    module = netspec.compile(str(spec), phase="TEST")
    export = export_caffemodel(module, folder / f"{spec.stem}.caffemodel")
    if export.not_caffe:
        print(f"{spec.name}: skipped, Caffe cannot read {', '.join(export.not_caffe)}")
        return True
    return check(
        f"{spec.name} (written by netspec)",
        export.prototxt,
        read_prototxt(export.prototxt),
        export.caffemodel,
        caffe,
        folder,
    )


def _input(name: str, *dims: int) -> str:
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {shape} }} }} }}\n'


_U = 'type: "uniform" min: -0.5 max: 0.5'
_SEQ = (5, 2)  # recurrent nets: T, N
# Nets of the layer types with parameters whose blobs converters get wrong, each with Caffe's fillers
# (so that Caffe can make weights for it too) and inputs: name -> (prototxt, {input: (shape, kind)}),
# kind 'normal', 'index' (Embed's, below 10) or 'cont' (a recurrent net's sequence markers).
HELD_OUT = {
    "prelu_shared": (
        _input("x", 2, 3, 6, 6)
        + f"""
layer {{ name: "conv" type: "Convolution" bottom: "x" top: "c"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} bias_filler {{ {_U} }} }} }}
layer {{ name: "prelu" type: "PReLU" bottom: "c" top: "y"
  prelu_param {{ channel_shared: true filler {{ type: "uniform" min: 0.1 max: 0.4 }} }} }}""",
        {"x": "normal"},
    ),
    "scale_bias_0axis": (
        _input("x", 2, 3, 4, 4)
        + f"""
layer {{ name: "scale" type: "Scale" bottom: "x" top: "s"
  scale_param {{ num_axes: 0 bias_term: true filler {{ {_U} }} bias_filler {{ {_U} }} }} }}
layer {{ name: "bias" type: "Bias" bottom: "s" top: "y" bias_param {{ num_axes: 0 filler {{ {_U} }} }} }}""",
        {"x": "normal"},
    ),
    "batchnorm_scale": (
        _input("x", 2, 3, 6, 6)
        + f"""
layer {{ name: "conv" type: "Convolution" bottom: "x" top: "c"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "c" top: "c" }}
layer {{ name: "scale" type: "Scale" bottom: "c" top: "y"
  scale_param {{ bias_term: true filler {{ {_U} }} bias_filler {{ {_U} }} }} }}""",
        {"x": "normal"},
    ),
    "deconv_grouped": (
        _input("x", 2, 4, 5, 5)
        + f"""
layer {{ name: "deconv" type: "Deconvolution" bottom: "x" top: "y"
  convolution_param {{ num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 weight_filler {{ {_U} }}
                      bias_filler {{ {_U} }} }} }}""",
        {"x": "normal"},
    ),
    "ip_transposed": (
        _input("x", 2, 3, 4)
        + f"""
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param {{ num_output: 5 transpose: true weight_filler {{ {_U} }} bias_filler {{ {_U} }} }} }}""",
        {"x": "normal"},
    ),
    "lstm": (
        _input("x", *_SEQ, 3)
        + _input("cont", *_SEQ)
        + f"""
layer {{ name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param {{ num_output: 4 weight_filler {{ {_U} }} bias_filler {{ {_U} }} }} }}""",
        {"x": "normal", "cont": "cont"},
    ),
    "rnn": (
        _input("x", *_SEQ, 3)
        + _input("cont", *_SEQ)
        + f"""
layer {{ name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "o"
  recurrent_param {{ num_output: 4 weight_filler {{ {_U} }} bias_filler {{ {_U} }} }} }}""",
        {"x": "normal", "cont": "cont"},
    ),
    "lstm_static": (
        _input("x", *_SEQ, 3)
        + _input("cont", *_SEQ)
        + _input("s", _SEQ[1], 2)
        + f"""
layer {{ name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "s" top: "h"
  recurrent_param {{ num_output: 4 weight_filler {{ {_U} }} bias_filler {{ {_U} }} }} }}""",
        {"x": "normal", "cont": "cont", "s": "normal"},
    ),
    "scale_bottom_bias": (
        _input("x", 2, 3, 4, 4)
        + _input("s", 2, 3)
        + f"""
layer {{ name: "scale" type: "Scale" bottom: "x" bottom: "s" top: "y"
  scale_param {{ axis: 0 bias_term: true bias_filler {{ {_U} }} }} }}""",
        {"x": "normal", "s": "normal"},
    ),
    "parameter_conv1d": (
        _input("x", 2, 3, 9)
        + f"""
layer {{ name: "conv" type: "Convolution" bottom: "x" top: "c"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ {_U} }} bias_filler {{ {_U} }} }} }}
layer {{ name: "p" type: "Parameter" top: "p" parameter_param {{ shape {{ dim: 2 dim: 4 dim: 7 }} }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "c" bottom: "p" top: "y" }}""",
        {"x": "normal"},
    ),
    "embed": (
        _input("x", 2, 3)
        + f"""
layer {{ name: "embed" type: "Embed" bottom: "x" top: "y"
  embed_param {{ num_output: 4 input_dim: 10 weight_filler {{ {_U} }} bias_filler {{ {_U} }} }} }}""",
        {"x": "index"},
    ),
    "conv3d": (
        _input("x", 2, 2, 5, 6, 6)
        + f"""
layer {{ name: "conv" type: "Convolution" bottom: "x" top: "y"
  convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 stride: 2 weight_filler {{ {_U} }}
                      bias_filler {{ {_U} }} }} }}""",
        {"x": "normal"},
    ),
}


def held_out_inputs(spec: Path, kinds: dict[str, str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    shapes = netspec.load(str(spec), phase="TEST").inputs
    made = {
        "normal": lambda shape: rng.standard_normal(shape),
        "index": lambda shape: rng.integers(0, 10, shape),
        "cont": lambda shape: (np.arange(shape[0])[:, None] % 3 != 0) * np.ones(shape),
    }  # restarts at 0, 3
    return {blob: made[kind](shapes[blob]).astype(np.float32) for blob, kind in kinds.items()}


def held_out_case(name: str, caffe: str, folder: Path) -> bool:
    """netspec's weights (its own fillers) in Caffe, then Caffe's weights (Caffe's fillers) in netspec."""
    text, kinds = HELD_OUT[name]
    spec = folder / f"{name}.prototxt"
    spec.write_text(f'name: "{name}"\n{text}\n', encoding="utf-8")
    inputs = held_out_inputs(spec, kinds)
    torch.manual_seed(0)
    export = export_caffemodel(netspec.compile(str(spec), phase="TEST"), folder / "netspec.caffemodel")
    ok = check(
        f"{name} (weights written by netspec, run by Caffe)",
        export.prototxt,
        read_prototxt(export.prototxt),
        export.caffemodel,
        caffe,
        folder,
        inputs,
        with_onnx=False,
    )
    solver = pb.SolverParameter(
        net=str(spec),
        base_lr=0.01,
        lr_policy="fixed",
        max_iter=0,
        display=0,
        random_seed=1,
        snapshot_prefix="caffe",
        solver_mode=pb.SolverParameter.CPU,
    )
    (folder / "solver.prototxt").write_text(text_format.MessageToString(solver), encoding="utf-8")
    run_caffe(caffe, ["train", "-solver=solver.prototxt"], folder)
    return (
        check(
            f"{name} (weights made by Caffe, loaded by netspec)",
            spec,
            read_prototxt(spec),
            folder / "caffe_iter_0.caffemodel",
            caffe,
            folder,
            inputs,
            with_onnx=False,
        )
        and ok
    )


# Solver settings as in Caffe's examples, each with weight decay and a learning-rate policy. AdaGrad,
# RMSProp and Adam divide by sqrt(history) + delta: with Caffe's default delta of 1e-8, a weight whose
# gradient is float rounding noise (a sum that cancels) takes a step of about the learning rate in a
# random direction, in Caffe as in netspec, and the two trainings differ by up to 2e-3 there; a delta of
# 1e-4 keeps the comparison to the update rules themselves.
SOLVERS = {
    "SGD": dict(base_lr=0.01, momentum=0.9, lr_policy="inv", gamma=1e-4, power=0.75),
    "Nesterov": dict(base_lr=0.01, momentum=0.95, lr_policy="step", gamma=0.5, stepsize=4),
    "AdaGrad": dict(base_lr=0.01, delta=1e-4, lr_policy="fixed"),
    "RMSProp": dict(base_lr=0.001, rms_decay=0.98, delta=1e-4, lr_policy="exp", gamma=0.95),
    "AdaDelta": dict(base_lr=1.0, momentum=0.95, delta=1e-6, lr_policy="fixed"),
    "Adam": dict(base_lr=0.001, momentum=0.9, momentum2=0.999, delta=1e-4, lr_policy="poly", power=1.0),
    "SGD L1, clipped, iter_size 2": dict(
        type="SGD",
        base_lr=0.05,
        momentum=0.9,
        lr_policy="multistep",
        gamma=0.1,
        stepvalue=[3, 6],
        regularization_type="L1",
        clip_gradients=0.5,
        iter_size=2,
    ),
}


def solvers_case(caffe: str, root: Path, folder: Path) -> bool:
    from netspec.caffemodel import read_caffemodel

    weights = random_weights(caffe, ZOO["lenet"], root, folder)  # also writes train.prototxt and its data
    rng = np.random.default_rng(3)
    write_h5(
        folder / "train.h5",
        {
            "data": rng.standard_normal((40, 1, 28, 28)).astype(np.float32),
            "label": rng.integers(0, 10, 40).astype(np.float32),
        },
    )
    train = read_prototxt(folder / "train.prototxt")
    train.layer[0].hdf5_data_param.batch_size = 16  # 40 records: the batches wrap around, as Caffe's do
    for layer in train.layer:  # max pooling routes the gradient to one input; a near-tie (1e-7 apart)
        if layer.type == "Pooling":  # flips on float noise and sends two trainings apart: average instead
            layer.pooling_param.pool = pb.PoolingParameter.AVE
    (folder / "train.prototxt").write_text(text_format.MessageToString(train), encoding="utf-8")
    ok = True
    for name, settings in SOLVERS.items():
        solver = pb.SolverParameter(
            net="train.prototxt",
            type=name.split()[0],
            max_iter=10,
            display=0,
            weight_decay=5e-4,
            random_seed=1,
            snapshot_prefix="trained",
            weights=[str(weights)],
            solver_mode=pb.SolverParameter.CPU,
        )
        for key, value in settings.items():
            if isinstance(value, list):
                getattr(solver, key).extend(value)
            else:
                setattr(solver, key, value)
        path = folder / "solver.prototxt"
        path.write_text(text_format.MessageToString(solver), encoding="utf-8")
        run_caffe(caffe, ["train", f"-solver={path}"], folder)
        theirs = read_caffemodel(folder / "trained_iter_10.caffemodel").blobs
        ours = netspec.Solver(str(path), quiet=True)
        ours.solve()
        worst = 0.0
        for layer, blobs in ours.net.caffe_params().items():
            for got, want in zip(blobs, theirs[layer], strict=True):
                scale = max(float(np.abs(want).max()), np.finfo(np.float32).tiny)
                worst = max(worst, float(np.abs(got.detach().numpy() - want.reshape(got.shape)).max()) / scale)
        print(f"training, {name}: weights after 10 iterations, largest relative difference {worst:.2e}")
        ok = ok and worst <= BLOB_RTOL
    return ok


LMDB_OPTIONS = {
    "plain": [],
    "gray": ["--gray"],
    "resized": ["--resize_height=7", "--resize_width=10"],
    "encoded": ["--encoded"],
}


def images(folder: Path) -> Path:
    """A list file of small images: colour and grey PNGs, and JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(2)
    lines = []
    for i in range(10):
        ramp = np.linspace(0, 255, 12)[None, :, None] * np.linspace(0.2, 1, 9)[:, None, None]
        pixels = np.clip(ramp + rng.integers(-40, 40, (9, 12, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels if i % 5 else pixels[..., 0])
        name = f"img {i}.{'jpg' if i % 4 == 3 else 'png'}"
        image.save(folder / name)
        lines.append(f"{name} {i % 3}")
    listing = folder / "list.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listing


def lmdb_records(path: Path) -> list[tuple[bytes, pb.Datum]]:
    import lmdb

    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return [(bytes(k), pb.Datum.FromString(bytes(v))) for k, v in txn.cursor()]


def datum_pixels(d: pb.Datum) -> np.ndarray:
    from PIL import Image

    if not d.encoded:
        return np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
    with Image.open(io.BytesIO(d.data)) as im:
        arr = np.asarray(im.convert("RGB"))
    return arr[..., ::-1].transpose(2, 0, 1)


def caffe_data_batch(caffe: str, source: Path, mean: Path, folder: Path) -> tuple[str, dict[str, np.ndarray]]:
    """The first batch of a Data layer reading `source` in Caffe's TEST phase; also the net's text."""
    net = pb.NetParameter(name="lmdb")
    data = net.layer.add(name="data", type="Data", top=["data", "label"])
    data.data_param.source, data.data_param.batch_size, data.data_param.backend = str(source), 4, pb.DataParameter.LMDB
    data.transform_param.force_color = True  # encoded records: the list mixes grey and colour files
    data.transform_param.scale, data.transform_param.mean_file, data.transform_param.crop_size = 0.5, str(mean), 6
    text = text_format.MessageToString(net)
    files = with_hdf5_outputs(net, ["data", "label"], folder)
    model = folder / "data.prototxt"
    model.write_text(text_format.MessageToString(net), encoding="utf-8")
    weights = folder / "none.caffemodel"  # `caffe test` insists on weights; the net has none
    weights.write_bytes(pb.NetParameter(name="lmdb").SerializeToString())
    run_caffe(caffe, ["test", f"-model={model}", f"-weights={weights}", "-iterations=1"], folder)
    out = {}
    for path, blob in files:
        with h5py.File(path, "r") as f:
            out[blob] = np.asarray(f["data"])
    return text, out


def lmdb_case(caffe: str, folder: Path) -> bool:
    from netspec.data.feeder import Feeder

    listing = images(folder)
    tools = Path(caffe).parent
    ok = True
    for option, flags in LMDB_OPTIONS.items():
        theirs, ours = folder / f"caffe_{option}", folder / f"netspec_{option}"
        run_caffe(str(tools / "convert_imageset"), [*flags, f"{folder}/", str(listing), str(theirs)], folder)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "tools" / "convert_imageset.py"),
                *flags,
                f"{folder}/",
                str(listing),
                str(ours),
            ],
            check=True,
            capture_output=True,
        )
        a, b = lmdb_records(theirs), lmdb_records(ours)
        pairs = [(x, y) for (_, x), (_, y) in zip(a, b, strict=True)]
        same_keys = [k for k, _ in a] == [k for k, _ in b]
        same = sum(x == y for x, y in pairs)
        diffs = [int(np.abs(datum_pixels(x).astype(int) - datum_pixels(y)).max()) for x, y in pairs]
        labels = all(x.label == y.label for x, y in pairs)
        print(
            f"lmdb {option}: {len(a)} records; keys equal: {same_keys}; labels equal: {labels}; "
            f"identical records: {same}; max pixel difference {max(diffs)}"
        )
        ok = ok and same_keys and labels and max(diffs) <= 1
        mean = folder / f"mean_{option}.binaryproto"
        if option != "encoded":  # Caffe's tool decodes grey files to one channel and stops at the mix
            run_caffe(str(tools / "compute_image_mean"), [str(theirs), str(mean)], folder)
        else:
            mean = folder / "mean_plain.binaryproto"
        for db, who in ((theirs, "Caffe's"), (ours, "netspec's")):
            text, batch = caffe_data_batch(caffe, db, mean, folder)
            spec = folder / "data_net.prototxt"
            spec.write_text(text, encoding="utf-8")
            got = Feeder(netspec.load(str(spec), phase="TEST"), torch.device("cpu"), seed=0).next()
            same_label = np.array_equal(got["label"].numpy(), batch["label"].ravel())
            worst = float(np.abs(got["data"].numpy() - batch["data"].reshape(got["data"].shape)).max())
            print(
                f"  netspec's Data layer vs Caffe's on {who} database: max |difference| {worst:.2e}, "
                f"labels equal: {same_label}"
            )
            ok = ok and same_label and worst <= 1e-6
    return ok


# ImageData: (new_height, new_width) -> ... for images of 40 x 50: shrunk by a non-integer factor (where
# Pillow's antialiasing filter differs most), exactly halved (OpenCV then averages 2 x 2 blocks, its
# INTER_AREA path), enlarged
RESIZES = ((7, 9), (20, 25), (61, 73))


def resize_images(folder: Path) -> Path:
    """A list of colour and grey JPEGs and PNGs of 40 x 50 (smooth gradients under noise, as photos)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:40, 0:50]
    lines = []
    for i, name in enumerate(["colour.jpg", "colour.png", "grey.jpg", "grey.png"]):
        base = np.stack([yy * 6, xx * 5, (yy + xx) * 3], axis=-1) + rng.integers(-60, 60, (40, 50, 3))
        pixels = np.clip(base, 0, 255).astype(np.uint8)
        Image.fromarray(pixels if name.startswith("colour") else pixels[..., 1]).save(folder / name)
        lines.append(f"{name} {i}")
    listing = folder / "list.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listing


def caffe_image_batches(caffe: str, folder: Path, listing: Path) -> dict[str, np.ndarray]:
    """Caffe's ImageData batch (every image of the list) for each size in RESIZES, colour and grey:
    'colour_7x9' -> (4, 3, 7, 9)."""
    out = {}
    for (h, w), color in ((size, color) for size in RESIZES for color in (True, False)):
        net = pb.NetParameter(name="images")
        layer = net.layer.add(name="data", type="ImageData", top=["data", "label"])
        p = layer.image_data_param
        p.source, p.root_folder, p.batch_size, p.new_height, p.new_width, p.is_color = (
            str(listing),
            f"{folder}/",
            4,
            h,
            w,
            color,
        )
        files = with_hdf5_outputs(net, ["data"], folder)
        model = folder / "images.prototxt"
        model.write_text(text_format.MessageToString(net), encoding="utf-8")
        weights = folder / "none.caffemodel"
        weights.write_bytes(pb.NetParameter(name="images").SerializeToString())
        run_caffe(caffe, ["test", f"-model={model}", f"-weights={weights}", "-iterations=1"], folder)
        with h5py.File(files[0][0], "r") as f:
            out[f"{'colour' if color else 'grey'}_{h}x{w}"] = np.asarray(f["data"]).reshape(4, 3 if color else 1, h, w)
    return out


def netspec_image_batch(folder: Path, listing: Path, key: str) -> np.ndarray:
    from netspec.data.feeder import Feeder

    color, size = key.split("_")
    h, w = size.split("x")
    spec = folder / "netspec_images.prototxt"
    spec.write_text(
        f'name: "images" layer {{ name: "data" type: "ImageData" top: "data" top: "label" '
        f'image_data_param {{ source: "{listing}" root_folder: "{folder}/" batch_size: 4 new_height: {h} '
        f"new_width: {w} is_color: {str(color == 'colour').lower()} }} }}",
        encoding="utf-8",
    )
    return Feeder(netspec.load(str(spec), phase="TEST"), torch.device("cpu"), seed=0).next()["data"].numpy()


def imagedata_case(caffe: str, folder: Path, record: bool = False) -> bool:
    """netspec's ImageData batches against Caffe's for resized JPEGs and PNGs; with `record`, the images
    and Caffe's batches are stored in tests/data/opencv_resize for the test suite."""
    listing = resize_images(folder)
    theirs = caffe_image_batches(caffe, folder, listing)
    ok = True
    for key, want in theirs.items():
        got = netspec_image_batch(folder, listing, key)
        diff = np.abs(got - want)
        print(
            f"ImageData {key}: max |netspec - caffe| {diff.max():g}, pixels that differ {int((diff > 0).sum())} "
            f"of {diff.size}"
        )
        ok = ok and diff.max() <= 1
    if record:
        out = ROOT / "tests" / "data" / "opencv_resize"
        out.mkdir(exist_ok=True)
        for line in listing.read_text(encoding="utf-8").split():
            if not line.isdigit():
                shutil.copyfile(folder / line, out / line)
        shutil.copyfile(listing, out / "list.txt")
        np.savez_compressed(out / "caffe_batches.npz", **{k: v.astype(np.uint8) for k, v in theirs.items()})
        print(f"wrote {out}")
    return ok


MVN_NET = """name: "mvn_eps"
layer { name: "x" type: "Parameter" top: "x" parameter_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "t" type: "Parameter" top: "t" parameter_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } }
  param { lr_mult: 0 } }
layer { name: "mvn" type: "MVN" bottom: "x" top: "y" mvn_param { eps: 0.3 } }
layer { name: "mvn_across" type: "MVN" bottom: "x" top: "z" mvn_param { across_channels: true eps: 0.3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
layer { name: "loss_across" type: "EuclideanLoss" bottom: "z" bottom: "t" top: "loss_across" }
"""


def mvn_case(caffe: str, folder: Path, record: bool = False) -> bool:
    """MVN's gradient with a large eps, where Caffe's formula is not the true gradient: x is a learned
    blob (a Parameter layer), and one SGD step with learning rate 1 moves it by Caffe's gradient."""
    from netspec.caffemodel import read_caffemodel, write_caffemodel

    spec = folder / "mvn_eps.prototxt"
    spec.write_text(MVN_NET, encoding="utf-8")
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((2, 3, 4, 5)) * rng.uniform(0.2, 3, (2, 3, 1, 1))).astype(np.float32)
    t = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    net = read_prototxt(spec)
    write_caffemodel(
        folder / "init.caffemodel",
        "mvn_eps",
        [(lp, {"x": [x], "t": [t]}[lp.name]) for lp in net.layer if lp.name in ("x", "t")],
    )
    solver = pb.SolverParameter(
        net=str(spec),
        base_lr=1.0,
        lr_policy="fixed",
        max_iter=1,
        display=0,
        snapshot_prefix="mvn",
        solver_mode=pb.SolverParameter.CPU,
    )
    (folder / "solver.prototxt").write_text(text_format.MessageToString(solver), encoding="utf-8")
    run_caffe(caffe, ["train", "-solver=solver.prototxt", "-weights=init.caffemodel"], folder)
    theirs = x - read_caffemodel(folder / "mvn_iter_1.caffemodel").blobs["x"][0]
    module = netspec.compile(str(spec), phase="TRAIN", weights=str(folder / "init.caffemodel"))
    blobs = module.blobs()
    (blobs["loss"] + blobs["loss_across"]).backward()
    ours = module.caffe_params()["x"][0].grad.numpy()
    true = _true_mvn_gradient(x, t)
    scale = float(np.abs(theirs).max())
    worst = float(np.abs(ours - theirs).max()) / scale
    print(
        f"MVN, eps 0.3: netspec's gradient vs Caffe's, relative {worst:.2e}; the true gradient is "
        f"{float(np.abs(true - theirs).max()) / scale:.2e} from Caffe's"
    )
    if record:
        out = ROOT / "tests" / "data" / "caffe_made"
        (out / "mvn_eps.prototxt").write_text(
            "# MVN with a large eps (tools/crosscheck_caffe.py fixture): x_grad is real Caffe's gradient\n" + MVN_NET,
            encoding="utf-8",
        )
        np.savez(out / "mvn_eps.npz", x=x, t=t, x_grad=theirs)
        print(f"wrote {out}: mvn_eps.prototxt and mvn_eps.npz")
    return worst <= BLOB_RTOL


def _true_mvn_gradient(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The exact gradient of the same two losses, by autograd through the plain formula, in float64."""
    xs = torch.from_numpy(x).double().requires_grad_(True)
    loss = 0
    for start in (2, 1):
        flat = xs.flatten(start)
        centred = flat - flat.mean(-1, keepdim=True)
        y = (centred / (centred.pow(2).mean(-1, keepdim=True).sqrt() + 0.3)).reshape(x.shape)
        loss = loss + ((y - torch.from_numpy(t).double()) ** 2).sum() / (2 * x.shape[0])
    loss.backward()
    return xs.grad.numpy()


# tests/data/caffe_made: net -> (its weights, its blobs)
FIXTURES = {
    "net": ("weights.caffemodel", "caffe_blobs.npz"),
    "zero_axis": ("zero_axis.caffemodel", "zero_axis_blobs.npz"),
}


def fixture_case(caffe: str, folder: Path) -> bool:
    out = ROOT / "tests" / "data" / "caffe_made"
    for net, (weights_name, blobs_name) in FIXTURES.items():
        spec = out / f"{net}.prototxt"
        inputs = {
            "data": np.random.default_rng(4).standard_normal(netspec.load(str(spec)).inputs["data"]).astype(np.float32)
        }
        case = ZooCase(spec.name, spec.name, {"data": inputs["data"].shape[1:]})
        weights = random_weights(caffe, case, out, folder)
        shutil.copyfile(weights, out / weights_name)
        module = netspec.compile(str(spec), phase="TEST", weights=str(weights))
        blobs = [b for b in module.net.shapes if b != "data"]
        theirs = caffe_blobs(caffe, read_prototxt(spec), weights, inputs, blobs, folder)
        np.savez(out / blobs_name, **inputs, **{k: v.reshape(module.net.shapes[k]) for k, v in theirs.items()})
        print(f"wrote {out}: {weights_name} and {blobs_name} ({', '.join(theirs)})")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caffe", required=True, help="the caffe command-line tool")
    parser.add_argument("--caffe-root", required=True, type=Path, help="a BVLC Caffe checkout (for its nets)")
    parser.add_argument(
        "cases",
        nargs="*",
        help=f"zoo nets ({', '.join(ZOO)}), 'models', 'held_out', 'solvers', 'lmdb', 'imagedata' or "
        "'mvn' (default: all); 'fixture' remakes the data in tests/data made by Caffe",
    )
    args = parser.parse_args()
    ok = True
    for name in args.cases or [*ZOO, "models", "held_out", "solvers", "lmdb", "imagedata", "mvn"]:
        with tempfile.TemporaryDirectory() as tmp:
            if name == "fixture":
                ok = fixture_case(args.caffe, Path(tmp)) and ok
                ok = imagedata_case(args.caffe, Path(tmp), record=True) and ok
                ok = mvn_case(args.caffe, Path(tmp), record=True) and ok
            elif name == "mvn":
                ok = mvn_case(args.caffe, Path(tmp)) and ok
            elif name == "imagedata":
                ok = imagedata_case(args.caffe, Path(tmp)) and ok
            elif name == "solvers":
                ok = solvers_case(args.caffe, args.caffe_root, Path(tmp)) and ok
            elif name == "lmdb":
                ok = lmdb_case(args.caffe, Path(tmp)) and ok
            elif name == "held_out":
                for net in HELD_OUT:
                    with tempfile.TemporaryDirectory() as sub:
                        ok = held_out_case(net, args.caffe, Path(sub)) and ok
            elif name == "models":
                for spec in sorted((ROOT / "models").glob("*.yaml")):
                    with tempfile.TemporaryDirectory() as sub:
                        ok = model_case(spec, args.caffe, Path(sub)) and ok
            else:
                ok = zoo_case(name, args.caffe, args.caffe_root, Path(tmp)) and ok
    print("all match" if ok else "MISMATCHES")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
