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

    python tools/crosscheck_caffe.py --caffe PATH/TO/caffe --caffe-root CAFFE_CHECKOUT [CASE ...]

The case 'fixture' (not run by default) remakes tests/data/caffe_made: weights that real Caffe's fillers
made for net.prototxt there, and every blob of Caffe's forward pass, which a test compares in CI.

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
    "lenet": ZooCase("examples/mnist/lenet_train_test.prototxt", "examples/mnist/lenet.prototxt",
                     {"data": (1, 28, 28), "label": ()}),
    "cifar10_quick": ZooCase("examples/cifar10/cifar10_quick_train_test.prototxt",
                             "examples/cifar10/cifar10_quick.prototxt", {"data": (3, 32, 32), "label": ()}),
    "cifar10_full": ZooCase("examples/cifar10/cifar10_full_train_test.prototxt",
                            "examples/cifar10/cifar10_full.prototxt", {"data": (3, 32, 32), "label": ()}),
    "siamese": ZooCase("examples/siamese/mnist_siamese_train_test.prototxt",
                       "examples/siamese/mnist_siamese.prototxt", {"pair_data": (2, 28, 28), "sim": ()}),
    "caffenet": ZooCase("models/bvlc_reference_caffenet/train_val.prototxt",
                        "models/bvlc_reference_caffenet/deploy.prototxt", {"data": (3, 227, 227), "label": ()}),
    "alexnet": ZooCase("models/bvlc_alexnet/train_val.prototxt", "models/bvlc_alexnet/deploy.prototxt",
                       {"data": (3, 227, 227), "label": ()}),
    "googlenet": ZooCase("models/bvlc_googlenet/train_val.prototxt", "models/bvlc_googlenet/deploy.prototxt",
                         {"data": (3, 224, 224), "label": ()}),
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


def with_hdf5_inputs(net: pb.NetParameter, listing: Path, tops: Iterable[str], batch: int,
                     phase: int | None) -> pb.NetParameter:
    """The net with its inputs (Input layers, legacy `input` fields, data layers of `phase`) replaced by
    one HDF5Data layer reading `listing`; layers of the other phase are dropped."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.input[:], out.input_shape[:], out.input_dim[:], out.layer[:]
    source = out.layer.add(name="crosscheck_input", type="HDF5Data", top=list(tops))
    source.hdf5_data_param.source, source.hdf5_data_param.batch_size = str(listing), batch
    for layer in net.layer:
        phases = {rule.phase for rule in layer.include if rule.HasField("phase")}
        if layer.type in DATA_TYPES or (phase is not None and phases and phase not in phases):
            continue
        out.layer.add().CopyFrom(layer)
    return out


def with_hdf5_outputs(net: pb.NetParameter, blobs: list[str], folder: Path) -> list[tuple[Path, str, str]]:
    """Appends HDF5Output layers (each writes two blobs, as 'data' and 'label') that save `blobs`."""
    pairs = [(blobs[i], blobs[i + 1] if i + 1 < len(blobs) else blobs[0]) for i in range(0, len(blobs), 2)]
    files = []
    for n, (first, second) in enumerate(pairs):
        path = folder / f"blobs_{n}.h5"
        layer = net.layer.add(name=f"crosscheck_output_{n}", type="HDF5Output", bottom=[first, second])
        layer.hdf5_output_param.file_name = str(path)
        files.append((path, first, second))
    return files


def run_caffe(tool: str, args: list[str], cwd: Path) -> None:
    """Runs one of Caffe's command-line tools (caffe, convert_imageset, compute_image_mean)."""
    run = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "GLOG_minloglevel": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"{Path(tool).name} {' '.join(args)} failed:\n{run.stderr[-4000:]}")


def caffe_blobs(caffe: str, deploy: pb.NetParameter, weights: Path, inputs: dict[str, np.ndarray],
                blobs: list[str], folder: Path) -> dict[str, np.ndarray]:
    """Every blob in `blobs` after Caffe's TEST-phase forward pass of `deploy` with `weights`."""
    listing = write_h5(folder / "input.h5", inputs)
    net = with_hdf5_inputs(deploy, listing, inputs, BATCH, None)
    files = with_hdf5_outputs(net, blobs, folder)
    model = folder / "crosscheck.prototxt"
    model.write_text(text_format.MessageToString(net), encoding="utf-8")
    run_caffe(caffe, ["test", f"-model={model}", f"-weights={weights}", "-iterations=1"], folder)
    out = {}
    for path, first, second in files:
        with h5py.File(path, "r") as f:
            out[first], out[second] = np.asarray(f["data"]), np.asarray(f["label"])
    return out


def random_weights(caffe: str, case: ZooCase, root: Path, folder: Path) -> Path:
    """Caffe's own random initialisation of the case's train/val net, saved by Caffe."""
    rng = np.random.default_rng(0)
    arrays = {top: rng.standard_normal((BATCH, *shape)).astype(np.float32) if shape else
              np.zeros(BATCH, np.float32) for top, shape in case.train_tops.items()}
    listing = write_h5(folder / "train.h5", arrays)
    train = with_hdf5_inputs(read_prototxt(root / case.train), listing, case.train_tops, BATCH, pb.TRAIN)
    (folder / "train.prototxt").write_text(text_format.MessageToString(train), encoding="utf-8")
    solver = pb.SolverParameter(net="train.prototxt", base_lr=0.01, lr_policy="fixed", max_iter=0, display=0,
                                random_seed=1, snapshot_prefix="caffe", solver_mode=pb.SolverParameter.CPU)
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


def check(name: str, deploy_path: Path, deploy: pb.NetParameter, weights: Path, caffe: str,
          folder: Path) -> bool:
    """Runs Caffe and netspec (PyTorch and ONNX) on one random batch and prints the comparison."""
    module = netspec.compile(str(deploy_path), phase="TEST", weights=str(weights))
    rng = np.random.default_rng(1)
    inputs = {blob: rng.standard_normal((BATCH, *shape[1:])).astype(np.float32)
              for blob, shape in module.net.inputs.items()}
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in module.blobs(**{k: torch.from_numpy(v) for k, v in inputs.items()}).items()}
    theirs = caffe_blobs(caffe, deploy, weights, inputs, [b for b in ours if b not in inputs], folder)
    outputs = set(module.net.outputs)
    results = compare(ours, theirs, outputs)
    onnx = compare(onnx_outputs(module, inputs, folder), theirs, outputs)
    worst = max(results, key=lambda r: r.relative)
    print(f"{name}: {len(results)} blobs; largest relative difference {worst.relative:.2e} "
          f"({worst.blob} {worst.shape}, tolerance {worst.tolerance:g})")
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
    ok = check(f"{name} (weights from Caffe)", root / case.deploy, read_prototxt(root / case.deploy), weights,
               caffe, folder)
    written = folder / "netspec.caffemodel"  # and back: netspec writes the weights Caffe made
    module = netspec.compile(str(root / case.deploy), phase="TEST", weights=str(weights))
    export = export_caffemodel(module, written)
    return check(f"{name} (weights as netspec writes them)", export.prototxt, read_prototxt(export.prototxt),
                 written, caffe, folder) and ok


def model_case(spec: Path, caffe: str, folder: Path) -> bool:
    torch.manual_seed(0)
    module = netspec.compile(str(spec), phase="TEST")
    export = export_caffemodel(module, folder / f"{spec.stem}.caffemodel")
    if export.not_caffe:
        print(f"{spec.name}: skipped, Caffe cannot read {', '.join(export.not_caffe)}")
        return True
    return check(f"{spec.name} (written by netspec)", export.prototxt, read_prototxt(export.prototxt),
                 export.caffemodel, caffe, folder)


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
    "SGD L1, clipped, iter_size 2": dict(type="SGD", base_lr=0.05, momentum=0.9, lr_policy="multistep",
                                         gamma=0.1, stepvalue=[3, 6], regularization_type="L1",
                                         clip_gradients=0.5, iter_size=2),
}


def solvers_case(caffe: str, root: Path, folder: Path) -> bool:
    from netspec.caffemodel import read_caffemodel

    weights = random_weights(caffe, ZOO["lenet"], root, folder)  # also writes train.prototxt and its data
    rng = np.random.default_rng(3)
    write_h5(folder / "train.h5", {"data": rng.standard_normal((40, 1, 28, 28)).astype(np.float32),
                                   "label": rng.integers(0, 10, 40).astype(np.float32)})
    train = read_prototxt(folder / "train.prototxt")
    train.layer[0].hdf5_data_param.batch_size = 16  # 40 records: the batches wrap around, as Caffe's do
    for layer in train.layer:  # max pooling routes the gradient to one input; a near-tie (1e-7 apart)
        if layer.type == "Pooling":  # flips on float noise and sends two trainings apart: average instead
            layer.pooling_param.pool = pb.PoolingParameter.AVE
    (folder / "train.prototxt").write_text(text_format.MessageToString(train), encoding="utf-8")
    ok = True
    for name, settings in SOLVERS.items():
        solver = pb.SolverParameter(net="train.prototxt", type=name.split()[0], max_iter=10, display=0,
                                    weight_decay=5e-4, random_seed=1, snapshot_prefix="trained",
                                    weights=[str(weights)], solver_mode=pb.SolverParameter.CPU)
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


LMDB_OPTIONS = {"plain": [], "gray": ["--gray"], "resized": ["--resize_height=7", "--resize_width=10"],
                "encoded": ["--encoded"]}


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
    with h5py.File(files[0][0], "r") as f:
        return text, {"data": np.asarray(f["data"]), "label": np.asarray(f["label"]).ravel()}


def lmdb_case(caffe: str, folder: Path) -> bool:
    from netspec.data.feeder import Feeder

    listing = images(folder)
    tools = Path(caffe).parent
    ok = True
    for option, flags in LMDB_OPTIONS.items():
        theirs, ours = folder / f"caffe_{option}", folder / f"netspec_{option}"
        run_caffe(str(tools / "convert_imageset"), [*flags, f"{folder}/", str(listing), str(theirs)], folder)
        subprocess.run([sys.executable, str(ROOT / "tools" / "convert_imageset.py"), *flags, f"{folder}/",
                        str(listing), str(ours)], check=True, capture_output=True)
        a, b = lmdb_records(theirs), lmdb_records(ours)
        pairs = [(x, y) for (_, x), (_, y) in zip(a, b, strict=True)]
        same_keys = [k for k, _ in a] == [k for k, _ in b]
        same = sum(x == y for x, y in pairs)
        diffs = [int(np.abs(datum_pixels(x).astype(int) - datum_pixels(y)).max()) for x, y in pairs]
        labels = all(x.label == y.label for x, y in pairs)
        print(f"lmdb {option}: {len(a)} records; keys equal: {same_keys}; labels equal: {labels}; "
              f"identical records: {same}; max pixel difference {max(diffs)}")
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
            same_label = np.array_equal(got["label"].numpy(), batch["label"])
            worst = float(np.abs(got["data"].numpy() - batch["data"].reshape(got["data"].shape)).max())
            print(f"  netspec's Data layer vs Caffe's on {who} database: max |difference| {worst:.2e}, "
                  f"labels equal: {same_label}")
            ok = ok and same_label and worst <= 1e-6
    return ok


def fixture_case(caffe: str, folder: Path) -> bool:
    out = ROOT / "tests" / "data" / "caffe_made"
    case = ZooCase("net.prototxt", "net.prototxt", {"data": (3, 14, 14)})
    weights = random_weights(caffe, case, out, folder)
    shutil.copyfile(weights, out / "weights.caffemodel")
    module = netspec.compile(str(out / "net.prototxt"), phase="TEST", weights=str(weights))
    inputs = {"data": np.random.default_rng(4).standard_normal((BATCH, 3, 14, 14)).astype(np.float32)}
    blobs = [b for b in module.net.shapes if b != "data"]
    theirs = caffe_blobs(caffe, read_prototxt(out / "net.prototxt"), weights, inputs, blobs, folder)
    np.savez(out / "caffe_blobs.npz", **inputs, **{k: v.reshape(module.net.shapes[k]) for k, v in theirs.items()})
    print(f"wrote {out}: weights.caffemodel and caffe_blobs.npz ({', '.join(theirs)})")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caffe", required=True, help="the caffe command-line tool")
    parser.add_argument("--caffe-root", required=True, type=Path, help="a BVLC Caffe checkout (for its nets)")
    parser.add_argument("cases", nargs="*",
                        help=f"zoo nets ({', '.join(ZOO)}), 'models', 'solvers' or 'lmdb' (default: all)")
    args = parser.parse_args()
    ok = True
    for name in args.cases or [*ZOO, "models", "solvers", "lmdb"]:
        with tempfile.TemporaryDirectory() as tmp:
            if name == "fixture":
                ok = fixture_case(args.caffe, Path(tmp)) and ok
            elif name == "solvers":
                ok = solvers_case(args.caffe, args.caffe_root, Path(tmp)) and ok
            elif name == "lmdb":
                ok = lmdb_case(args.caffe, Path(tmp)) and ok
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
