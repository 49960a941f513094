"""tools/convert_imageset.py writes the databases Caffe's convert_imageset writes (keys, Datum records of
BGR C x H x W bytes or encoded files, OpenCV's bilinear resize), refuses what Caffe refuses with one line
and exit status 1, and a Data layer trains from what it writes."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import netspec
from netspec._proto import netspec_pb2 as pb
from netspec.data.probe import lmdb_env
from tests.conftest import DATA, ROOT

TOOL = ROOT / "tools" / "convert_imageset.py"
SCALE = 1 / 255


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("convert_imageset", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TOOL_MAIN = _tool().main


def run_all(*calls: Sequence[object]) -> list[subprocess.CompletedProcess[str]]:
    """Runs the tool's main once per argument list, in this process (a run of its own would be mostly Python
    starting up), with its exit status and what it printed."""
    results = []
    for args in calls:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = TOOL_MAIN([str(a) for a in args])
            except SystemExit as e:  # argparse's refusals
                code = e.code
        results.append(subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue()))
    return results


def raw_items(path: Path) -> list[tuple[str, bytes]]:
    # py-lmdb opens an environment once per process: share netspec's, which the Data layer also reads
    with lmdb_env(path).begin() as txn:
        return [(bytes(k).decode(), bytes(v)) for k, v in txn.cursor()]


def read_db(path: Path) -> list[tuple[str, pb.Datum]]:
    return [(k, pb.Datum.FromString(v)) for k, v in raw_items(path)]


def raw_values(path: Path) -> list[bytes]:
    return [v for _, v in raw_items(path)]


def pixels(d: pb.Datum) -> np.ndarray:
    """A record's image as (C, H, W) uint8, decoding encoded records."""
    if d.encoded:
        with Image.open(io.BytesIO(d.data)) as im:
            arr = np.asarray(im)
        return arr[..., ::-1].transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
    return np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)


def bgr(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., ::-1].transpose(2, 0, 1)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder of PNG images with known pixels, their lists, and the arrays they were made from."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    arrays = {
        "colour.png": (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 4).astype(np.uint8),  # (H, W, RGB)
        "grey.png": (np.arange(20).reshape(4, 5) * 12).astype(np.uint8),
        "sub dir/with space.png": rng.integers(0, 256, (4, 5, 4), dtype=np.uint8),  # RGBA: alpha is dropped
        "up.png": np.repeat(np.array([[0, 100], [0, 100]], np.uint8)[..., None], 3, axis=2),
        "down.png": np.repeat(np.tile(np.arange(0, 80, 10, dtype=np.uint8), (2, 1))[..., None], 3, axis=2),
        "big.png": rng.integers(0, 256, (400, 400, 3), dtype=np.uint8),  # 480 KB a record: the map must grow
    }
    (root / "sub dir").mkdir()
    for name, arr in arrays.items():
        Image.fromarray(arr).save(root / name)
    (root / "notes.png").write_text("not an image")
    lists = {
        "list": "colour.png 0\ngrey.png 1\nsub dir/with space.png 2\n",
        "ramps": "up.png 3\ndown.png 4\n",
        "eight": "".join(f"colour.png {i}\n" for i in range(8)),
        "skips": "colour.png 0\nnope.png 1\r\n\nnotes.png 2\ngrey.png 3\n",
        "many": "grey.png 7\n" * 1001 + "big.png 1\n" * 5,
        "sizes": "colour.png 0\nup.png 1\n",
        "malformed": "colour.png 0\nno_label.png\n",
        "bad_label": "colour.png zero\n",
        "none": "nope.png 0\n",
    }
    for name, text in lists.items():
        (root / f"{name}.txt").write_text(text)
    # to train on: 32 noisy 6x6 colour images, dark (label 0) or bright (label 1)
    (root / "bd").mkdir()
    for i in range(32):
        low = 150 if i % 2 else 0
        Image.fromarray(rng.integers(low, low + 106, (6, 6, 3), dtype=np.uint8)).save(root / "bd" / f"{i}.png")
    (root / "bright_dark.txt").write_text("".join(f"{i}.png {i % 2}\n" for i in range(32)))
    return {"root": root, "arrays": arrays}


@pytest.fixture(scope="module")
def converted(images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tool's runs that succeed, done at once: name -> (result, database)."""
    root, out = images["root"], tmp_path_factory.mktemp("dbs")
    runs = {
        "raw": ("list",),
        "gray": ("list", "--gray"),
        "encoded": ("list", "--encoded"),
        "jpg": ("list", "-gray", "--encode_type=jpg"),  # Caffe's flag spellings
        "resized": ("ramps", "--resize_height", 2, "--resize_width", 4),
        "resized_encoded": ("ramps", "--resize_height", 2, "--resize_width", 4, "--encoded"),
        "shuffled": ("eight", "--shuffle=true"),
        "skips": ("skips",),
        "many": ("many",),
        "leveldb": ("list", "--backend", "leveldb"),
        "bd_raw": ("bright_dark",),
        "bd_png": ("bright_dark", "--encoded"),
    }
    results = run_all(
        *[
            (root / "bd" if name.startswith("bd") else root, root / f"{a[0]}.txt", out / name, *a[1:])
            for name, a in runs.items()
        ]
    )
    return {name: (r, out / name) for name, r in zip(runs, results, strict=True)}


def test_records_are_caffe_datums_of_bgr_pixels_under_caffes_keys(
    images: dict[str, Any], converted: dict[str, Any]
) -> None:
    result, db = converted["raw"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["A total of 3 images.", "Processed 3 files.", f"Wrote 3 records to '{db}'"]
    records = read_db(db)
    assert [k for k, _ in records] == ["00000000_colour.png", "00000001_grey.png", "00000002_sub dir/with space.png"]
    arrays = images["arrays"]
    expected = [
        bgr(arrays["colour.png"]),
        np.repeat(arrays["grey.png"][None], 3, axis=0),
        bgr(arrays["sub dir/with space.png"][..., :3]),
    ]
    for (_, d), want, label in zip(records, expected, range(3), strict=True):
        assert (d.channels, d.height, d.width, d.label) == (3, 4, 5, label)
        assert d.data == np.ascontiguousarray(want).tobytes() and not d.float_data
        assert d.HasField("encoded") and not d.encoded  # CVMatToDatum sets encoded: false explicitly
    colour = records[0][1].data
    assert colour[:3] == bytes(arrays["colour.png"][0, :3, 2])  # the blue plane comes first
    assert colour[20:23] == bytes(arrays["colour.png"][0, :3, 1])
    # byte for byte what Caffe's C++ serializer writes: fields in number order, label and encoded present
    first = raw_values(db)[0]
    assert first == bytes([0x08, 3, 0x10, 4, 0x18, 5, 0x22, 60]) + colour + bytes([0x28, 0, 0x38, 0])


def test_gray_stores_one_channel_as_opencv_reads_it(images: dict[str, Any], converted: dict[str, Any]) -> None:
    result, db = converted["gray"]
    assert result.returncode == 0, result.stderr
    records = read_db(db)
    arrays = images["arrays"]
    rgba = arrays["sub dir/with space.png"][..., :3].astype(np.int64)  # libpng's weights: 15-bit, truncated
    want = [
        np.asarray(Image.fromarray(arrays["colour.png"]).convert("L")),
        arrays["grey.png"],
        (rgba @ np.array([9797, 19234, 3737])) >> 15,
    ]
    for (_, d), w in zip(records, want, strict=True):
        assert (d.channels, d.height, d.width) == (1, 4, 5)
        assert d.data == w.astype(np.uint8).tobytes()


def test_gray_pixels_are_real_caffes(tmp_path: Path) -> None:
    """The bytes real Caffe's convert_imageset --gray stored for these files (Debian's caffe 1.0 with
    OpenCV 4.5): Pillow's own grey conversion differs in 23 of the PNG's 42 pixels."""
    folder = DATA / "opencv_gray"
    (tmp_path / "list.txt").write_text("colour.png 0\ncolour.jpg 1\n")
    [result] = run_all(["--gray", f"{folder}/", tmp_path / "list.txt", tmp_path / "db"])
    assert result.returncode == 0, result.stderr
    caffe = json.loads((folder / "caffe_gray.json").read_text())
    for (key, d), name in zip(read_db(tmp_path / "db"), ["colour.png", "colour.jpg"], strict=True):
        assert key.endswith(name) and (d.channels, d.height, d.width) == (1, 6, 7)
        assert list(d.data) == caffe[name], name


def test_resize_is_opencvs_bilinear_without_antialiasing(converted: dict[str, Any]) -> None:
    result, db = converted["resized"]
    assert result.returncode == 0, result.stderr
    (_, up), (_, down) = read_db(db)
    assert (up.channels, up.height, up.width) == (3, 2, 4) == (down.channels, down.height, down.width)
    # cv2.resize to width 4: [0, 100] -> [0, 25, 75, 100]; [0, 10, ..., 70] -> pairs averaged (Pillow's
    # antialiasing filter would blend four neighbours when shrinking)
    assert pixels(up)[0].tolist() == [[0, 25, 75, 100]] * 2
    assert pixels(down)[0].tolist() == [[5, 25, 45, 65]] * 2
    enc_result, enc_db = converted["resized_encoded"]
    assert enc_result.returncode == 0, enc_result.stderr
    for (_, raw), (_, enc) in zip(read_db(db), read_db(enc_db), strict=True):
        assert enc.encoded and np.array_equal(pixels(enc), pixels(raw))  # re-encoded PNG of the resized image


def test_encoded_records_keep_the_file_or_re_encode_its_pixels(
    images: dict[str, Any], converted: dict[str, Any]
) -> None:
    result, db = converted["encoded"]
    assert result.returncode == 0, result.stderr
    records, raw = read_db(db), read_db(converted["raw"][1])
    assert [k for k, _ in records] == [k for k, _ in raw]
    for (_, d), (_, r) in zip(records, raw, strict=True):
        assert d.encoded and d.label == r.label
        assert not d.HasField("channels") and not d.HasField("height") and not d.HasField("width")  # as Caffe
        assert np.array_equal(pixels(d), pixels(r))  # decodes to the raw record
    root = images["root"]
    assert records[0][1].data == (root / "colour.png").read_bytes()  # an RGB PNG is stored as it is
    assert records[1][1].data != (root / "grey.png").read_bytes()  # grey file, colour records: re-encoded
    assert records[2][1].data != (root / "sub dir/with space.png").read_bytes()  # RGBA: alpha dropped

    result, db = converted["jpg"]
    assert result.returncode == 0, result.stderr
    assert "encode_type specified, assuming encoded=true." in result.stdout
    for _, d in read_db(db):
        assert d.encoded and d.data[:3] == b"\xff\xd8\xff"
        with Image.open(io.BytesIO(d.data)) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "L", (5, 4))


def test_shuffle_is_a_fixed_permutation(converted: dict[str, Any]) -> None:
    result, db = converted["shuffled"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Shuffling data\n")
    records = read_db(db)
    order = list(range(8))
    random.Random(0).shuffle(order)  # documented: random.Random(SEED).shuffle, SEED 0 by default
    assert order != sorted(order)
    assert [d.label for _, d in records] == order  # the same order on every run
    assert [k for k, _ in records] == [f"{i:08d}_colour.png" for i in range(8)]  # keys number the shuffled list


def test_unreadable_images_are_skipped_and_counted(images: dict[str, Any], converted: dict[str, Any]) -> None:
    result, db = converted["skips"]
    root = images["root"]
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"skipped '{root / 'nope.png'}' (line 2): No such file or directory",
        f"skipped '{root / 'notes.png'}' (line 4): not an image file Pillow can read",
    ]
    assert result.stdout.splitlines()[-1] == f"Wrote 2 records to '{db}'; skipped 2 unreadable image(s)"
    # a key numbers the image's place in the list, as Caffe's does: skipped images leave gaps
    assert [(k, d.label) for k, d in read_db(db)] == [("00000000_colour.png", 0), ("00000003_grey.png", 3)]


def test_commits_every_1000_records_and_grows_the_map(images: dict[str, Any], converted: dict[str, Any]) -> None:
    result, db = converted["many"]
    assert result.returncode == 0, result.stderr
    assert [ln for ln in result.stdout.splitlines() if ln.startswith("Processed")] == [
        "Processed 1000 files.",
        "Processed 1006 files.",
    ]
    records = read_db(db)
    assert len(records) == 1006 and records[-1][0] == "00001005_big.png"
    assert np.array_equal(pixels(records[-1][1]), bgr(images["arrays"]["big.png"]))  # 2.4 MB > the first 1 MiB map


def test_leveldb_backend(converted: dict[str, Any], write_spec: Any) -> None:
    import plyvel

    result, db = converted["leveldb"]
    assert result.returncode == 0, result.stderr
    ldb = plyvel.DB(str(db), create_if_missing=False)
    try:
        items = [(bytes(k).decode(), bytes(v)) for k, v in ldb.iterator()]
    finally:
        ldb.close()
    assert items == raw_items(converted["raw"][1])
    net = netspec.load(
        write_spec(
            f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{db}" backend: LEVELDB batch_size: 2 }} }}'
        )
    )
    assert net.shapes["data"] == (2, 3, 4, 5)


def test_mistakes_are_one_line_and_exit_status_1(images: dict[str, Any], tmp_path: Path) -> None:
    root = images["root"]
    (tmp_path / "exists").mkdir()
    lst = {name: root / f"{name}.txt" for name in ("list", "malformed", "bad_label", "none", "sizes")}
    cases = {
        "missing list": (
            (root, tmp_path / "missing.txt", tmp_path / "a"),
            f"cannot read list file '{tmp_path / 'missing.txt'}': No such file or directory",
        ),
        "malformed": (
            (root, lst["malformed"], tmp_path / "b"),
            f"{lst['malformed']}:2: expected 'PATH LABEL', got 'no_label.png'",
        ),
        "bad label": (
            (root, lst["bad_label"], tmp_path / "c"),
            f"{lst['bad_label']}:1: label 'zero' is not a whole number",
        ),
        "db exists": (
            (root, lst["list"], tmp_path / "exists"),
            f"database '{tmp_path / 'exists'}' already exists; convert_imageset never overwrites one "
            "(remove it, or choose another DB_NAME)",
        ),
        "nothing read": (
            (root, lst["none"], tmp_path / "d"),
            "none of the 1 images could be read; no database written",
        ),
        "one size": (
            (root, lst["list"], tmp_path / "e", "--resize_height", 8),
            "--resize_height and --resize_width go together: give both, or neither",
        ),
        "check_size": (
            (root, lst["sizes"], tmp_path / "f", "--check_size"),
            f"--check_size: '{root / 'up.png'}' (line 2) is 3x2x2 (C x H x W), but the first image is 3x4x5",
        ),
    }
    results = run_all(*[args for args, _ in cases.values()])
    for (name, (args, message)), result in zip(cases.items(), results, strict=True):
        assert result.returncode == 1, name
        assert result.stderr.splitlines()[-1] == message, name
        if name != "nothing read":
            assert len(result.stderr.splitlines()) == 1, name
        if name != "db exists":
            assert not Path(args[2]).exists(), name  # nothing, not even a partial database, is left behind


# ---- training from the database ------------------------------------------------------------------------

SPEC = """
name: bright
layer:
  - name: data
    type: Data
    top: [data, label]
    transform_param: {scale: 0.00392156862745098}
    data_param: {source: "SOURCE", backend: LMDB, batch_size: 8}
  - {name: conv1, type: Convolution, bottom: data, convolution_param: {num_output: 4, kernel_size: 3, weight_filler: xavier}}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}
  - {name: pool1, type: Pooling, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: ip1, type: InnerProduct, inner_product_param: {num_output: 2, weight_filler: xavier}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip1, label]}
solver: {type: SGD, base_lr: 0.05, momentum: 0.9, lr_policy: fixed, max_iter: 40, random_seed: 1}
"""


@pytest.fixture(scope="module")
def bright_dark(converted: dict[str, Any]) -> dict[str, Path]:
    """Specs training on the dark and bright images, from raw records and from PNG-encoded ones."""
    specs = {}
    for name in ("raw", "png"):
        result, db = converted[f"bd_{name}"]
        assert result.returncode == 0, result.stderr
        specs[name] = db.parent / f"{name}.yaml"
        specs[name].write_text(SPEC.replace("SOURCE", str(db)))
    return specs


def train(spec: Path, steps: int) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """The losses of the first steps, and the batches the net was given."""
    solver = netspec.Solver(str(spec), quiet=True)
    seen: list[dict[str, torch.Tensor]] = []
    solver.net.register_forward_pre_hook(lambda module, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    return [solver.step() for _ in range(steps)], seen


def test_netspec_check_reads_the_shape_from_the_first_record(bright_dark: dict[str, Path]) -> None:
    for spec in bright_dark.values():
        net = netspec.load(str(spec))
        assert net.shapes["data"] == (8, 3, 6, 6) and net.shapes["label"] == (8,)


def test_a_data_layer_trains_on_the_converted_lmdb(bright_dark: dict[str, Path]) -> None:
    losses, seen = train(bright_dark["raw"], 20)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    records = read_db(bright_dark["raw"].parent / "bd_raw")
    stored = torch.from_numpy(np.stack([pixels(d) for _, d in records[:8]])).float()
    first = seen[0]
    assert torch.allclose(first["data"], stored * SCALE, rtol=0, atol=1e-6)  # the stored pixels x scale, in order
    assert first["label"].tolist() == [float(d.label) for _, d in records[:8]] == [0, 1] * 4
    assert torch.allclose(seen[4]["data"], first["data"], rtol=0, atol=0)  # 32 records: batch 5 starts over


def test_encoded_records_train_as_raw_ones(bright_dark: dict[str, Path]) -> None:
    raw_losses, raw_seen = train(bright_dark["raw"], 6)
    png_losses, png_seen = train(bright_dark["png"], 6)
    assert png_losses == raw_losses
    assert all(torch.equal(a["data"], b["data"]) for a, b in zip(raw_seen, png_seen, strict=True))
