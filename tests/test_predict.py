"""`netspec predict` and `netspec export` on the command line: one input from a .npy array, an image or a
CSV row, through a spec with a snapshot's weights or through the exported ONNX model, gives the same top
classes; bad inputs are one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import netspec
from netspec.cli import UNTRAINED, main
from netspec.deploy.predict import read_input
from netspec.errors import DataError
from netspec.lower.weights import apply_weights, read_weights
from tests.conftest import MODELS


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """digits_cnn after a few iterations: its snapshot, its verified ONNX export and a labels file."""
    folder = tmp_path_factory.mktemp("predict")
    solver = netspec.Solver(str(MODELS / "digits_cnn.yaml"), quiet=True)
    for _ in range(30):
        solver.step()
    weights = solver.snapshot(folder / "digits.pt")
    labels = folder / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    onnx_path = folder / "digits.onnx"
    code, out = run(
        "export",
        str(MODELS / "digits_cnn.yaml"),
        "--weights",
        str(weights),
        "--onnx",
        str(onnx_path),
        "--labels",
        str(labels),
    )
    assert code == 0, out
    return weights, onnx_path, labels


def _digit() -> np.ndarray:
    """A digit from the bundled set, as the model takes it (0..16)."""
    from sklearn.datasets import load_digits

    return load_digits().images[7].astype(np.float32)


def _scores(weights: Path, x: np.ndarray) -> np.ndarray:
    module = netspec.compile(str(MODELS / "digits_cnn.yaml"))
    apply_weights(module.caffe_params(), read_weights(weights), str(weights))
    with torch.no_grad():
        return module(data=torch.from_numpy(x.reshape(1, 1, 8, 8) * 0.0625), label=torch.zeros(1))["prob"].numpy()[0]


def _ranked(output: str) -> list[tuple[str, float]]:
    rows = [line.split() for line in output.splitlines()[1:]]
    return [(" ".join(r[1:3]), float(r[3])) for r in rows]


def test_export_prints_what_it_verified(trained: tuple[Path, Path, Path]) -> None:
    weights, _, _ = trained
    code, out = run(
        "export",
        str(MODELS / "digits_cnn.yaml"),
        "--weights",
        str(weights),
        "--onnx",
        str(weights.with_suffix(".again.onnx")),
    )
    lines = out.splitlines()
    assert code == 0
    assert lines[:3] == [
        f"exported {weights.with_suffix('.again.onnx')} (opset 18)",
        "inputs:  data ['batch', 1, 8, 8]",
        "outputs: prob ['batch', 10]",
    ]
    assert [ln.split(":")[0] for ln in lines[3:]] == [
        "verified on random inputs (batch 1)",
        "verified on random inputs (batch 3)",
        "verified on a batch of the spec's data (batch 5)",
    ]
    assert all(ln.endswith("(ok; tolerance rtol 0.0001, atol 1e-05)") for ln in lines[3:])


@pytest.mark.parametrize("kind", ["npy", "png", "csv"])
def test_spec_and_onnx_model_predict_the_same(trained: tuple[Path, Path, Path], tmp_path: Path, kind: str) -> None:
    weights, onnx_path, labels = trained
    x = _digit()
    path = tmp_path / f"digit.{kind}"
    if kind == "npy":
        np.save(path, x)
    elif kind == "png":
        Image.fromarray(x.astype(np.uint8), mode="L").save(path)  # 0..16 is exact in 8 bits
    else:
        path.write_text("pixel" + ",p" * 63 + "\n" + ",".join(f"{v:g}" for v in x.ravel()) + "\n")
    scores = _scores(weights, x)
    want = [(f"digit {i}", round(float(scores[i]), 4)) for i in np.argsort(-scores)[:3]]

    code, out = run("predict", str(onnx_path), "--input", str(path), "--top-k", "3")
    assert code == 0, out
    assert out.splitlines()[0] == "prob:"
    assert [(label, round(score, 4)) for label, score in _ranked(out)] == want  # labels from the model

    code, out = run(
        "predict",
        str(MODELS / "digits_cnn.yaml"),
        "--weights",
        str(weights),
        "--input",
        str(path),
        "--top-k",
        "3",
        "--labels",
        str(labels),
    )
    assert code == 0, out
    assert [(label, round(score, 4)) for label, score in _ranked(out)] == want


def test_an_output_that_is_not_class_scores_is_printed_as_values(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n0,0\n0,1\n1,0\n1,1\n")  # a header, then every row is a record
    code, out = run("predict", str(MODELS / "xor.yaml"), "--input", str(path), "--top-k", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == UNTRAINED  # xor.yaml's fillers are what predicts here
    assert lines[1] == "xor:" and [round(float(v)) for v in " ".join(lines[2:]).split()] == [0, 1, 1, 0]


def test_every_row_of_a_csv_is_a_record_and_classes_are_numbered(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    weights, _, _ = trained
    from sklearn.datasets import load_digits

    x = load_digits().images[:3].reshape(3, 64)
    path = tmp_path / "rows.csv"
    path.write_text("".join(",".join(f"{v:g}" for v in row) + "\n" for row in x))
    code, out = run(
        "predict", str(MODELS / "digits_cnn.yaml"), "--weights", str(weights), "--input", str(path), "--top-k", "1"
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0::2] == ["prob (record 1):", "prob (record 2):", "prob (record 3):"]
    for n, line in enumerate(lines[1::2]):
        scores = _scores(weights, x[n].reshape(8, 8).astype(np.float32))
        assert line.split()[:2] == ["1.", str(int(scores.argmax()))]


def test_a_0_255_image_is_scaled_to_the_training_range_with_a_note(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    weights, onnx_path, _ = trained
    x = _digit()
    big = tmp_path / "big.png"  # the digit as a usual image: 0..255, 32x32
    gray = Image.fromarray((x * 255 / 16).round().astype(np.uint8), mode="L").resize((32, 32), Image.NEAREST)
    gray.convert("RGB").save(big)
    code, out = run("predict", str(onnx_path), "--input", str(big), "--top-k", "1")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:3] == [
        "note: the 32x32 image was resized to 8x8, the model's input size",
        "note: the color image was read as grayscale, as the model takes one channel",
        "note: the pixels (0..255) were scaled to 0..16, the range of the training data (a guess: "
        "check that it is what the model takes)",
    ]
    assert lines[4].split()[1:3] == ["digit", str(int(_scores(weights, x).argmax()))]


def test_export_without_weights_warns(tmp_path: Path) -> None:
    code, out = run(
        "export", str(MODELS / "logistic_regression.yaml"), "--onnx", str(tmp_path / "m.onnx"), "--no-verify"
    )
    assert code == 0 and out.splitlines()[-1] == UNTRAINED


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "error: --input '{path}' does not exist\n"),
        ("fifo", "error: --input '{path}' is a FIFO (named pipe); netspec opens only regular files\n"),
        (b"garbage", "error: cannot read '{path}' as a .npy array: "),
        (
            np.zeros(5, dtype=np.float32),
            "error: '{path}' holds 5 values of shape (5,); the model takes records of shape (1, 8, 8)",
        ),
    ],
)
def test_bad_inputs_are_one_clear_line(
    trained: tuple[Path, Path, Path], tmp_path: Path, content: object, message: str
) -> None:
    _, onnx_path, _ = trained
    path = tmp_path / "x.npy"
    if isinstance(content, str):  # "fifo"
        os.mkfifo(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    code, out = run("predict", str(onnx_path), "--input", str(path))
    assert code == 1 and "Traceback" not in out
    assert out.startswith(message.format(path=path))


def test_other_mistakes(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    weights, onnx_path, _ = trained
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((8, 8), dtype=np.float32))
    assert run("predict", str(onnx_path), "--input", str(x), "--weights", str(weights)) == (
        1,
        "error: an ONNX model holds its own weights; --weights is for specs\n",
    )
    assert run("predict", str(onnx_path), "--input", str(x), "--top-k", "0") == (1, "error: --top-k must be positive\n")
    text = tmp_path / "x.txt"
    text.write_text("1 2 3")
    code, out = run("predict", str(onnx_path), "--input", str(text))
    assert (code, out) == (
        1,
        f"error: cannot tell what '{text}' holds from its name\n  hint: give a .npy array, an "
        "image (.png, .jpg, ...) or a .csv of rows\n",
    )
    csv = tmp_path / "x.csv"
    csv.write_text("1,2,x\n")
    assert run("predict", str(onnx_path), "--input", str(csv)) == (
        1,
        f"error: {csv}:1: the row is not all numbers: 1,2,x\n",
    )


def test_images_are_resized_and_put_in_the_models_channel_order(tmp_path: Path) -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    path = tmp_path / "red.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    bgr = read_input(str(path), (-1, 3, 2, 3), "BGR")
    assert bgr.shape == (1, 3, 2, 3) and bgr[0, 2].min() == 200 and bgr[0, :2].max() == 0
    rgb_order = read_input(str(path), (-1, 3, 4, 6), "RGB")
    assert rgb_order[0, 0].min() == 200 and rgb_order[0, 1:].max() == 0
    with pytest.raises(DataError, match=r"the model takes records of shape \(10,\), not images"):
        read_input(str(path), (-1, 10), "RGB")


def test_export_errors_exit_1(tmp_path: Path) -> None:
    code, out = run("export", str(MODELS / "xor.yaml"), "--onnx", str(tmp_path / "x.onnx"), "--batch", "two")
    assert (code, out) == (1, "error: --batch takes 'dynamic' or a positive number, got 'two'\n")
    code, out = run(
        "export", str(MODELS / "xor.yaml"), "--onnx", str(tmp_path / "x.onnx"), "--labels", str(tmp_path / "none.txt")
    )
    assert (code, out) == (1, f"error: --labels '{tmp_path / 'none.txt'}' does not exist\n")
    code, out = run(
        "export", str(MODELS / "xor.yaml"), "--onnx", str(tmp_path / "x.onnx"), "--weights", str(tmp_path / "none.pt")
    )
    assert (code, out) == (1, f"error: --weights '{tmp_path / 'none.pt'}' does not exist\n")


def test_a_model_without_netspec_metadata_gets_notes_for_what_was_guessed(tmp_path: Path) -> None:
    import onnx

    spec = tmp_path / "rgb.yaml"
    spec.write_text(
        "layer:\n- {name: data, type: Input, input_param: {shape: [1, 3, 4, 4]}}\n"
        "- {name: ip, type: InnerProduct, bottom: data, inner_product_param: {num_output: 2}}\n"
        "- {name: prob, type: Softmax, bottom: ip}\n"
    )
    assert run("export", str(spec), "--onnx", str(tmp_path / "m.onnx"), "--no-verify")[0] == 0
    model = onnx.load(str(tmp_path / "m.onnx"))
    del model.metadata_props[:]  # as a model from elsewhere comes
    onnx.save(model, str(tmp_path / "m.onnx"))
    path = tmp_path / "red.png"
    Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8), mode="RGB").save(path)
    code, out = run("predict", str(tmp_path / "m.onnx"), "--input", str(path))
    assert code == 0, out
    assert out.splitlines()[:2] == [
        "note: the model records no range for its input; the pixels are fed as they are (0..255)",
        "note: the model records no channel order; the image was fed as BGR, as Caffe's models take it",
    ]
    assert out.splitlines()[2] == "prob:"
