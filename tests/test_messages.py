"""Messages a newcomer meets first: hints that ignore case, unknown data sources, weights files that are
not weights, and --json errors as JSON on stdout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from netspec.cli import main
from netspec.errors import WeightsError
from netspec.lower.weights import read_weights
from tests.conftest import MODELS

ACCEPTED = "a netspec snapshot (*.pt, written by netspec train or import) or a Caffe .caffemodel / .caffemodel.h5"
WINE = """name: w
layer:
  - {name: data, type: Dataset, top: [data, label], dataset_param: {source: SOURCE, batch_size: 16}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 3}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_layer_type_hint_ignores_case() -> None:
    assert run("layers", "convolution") == (
        1,
        "",
        "error: unknown layer type 'convolution'\n  hint: did you mean 'Convolution'?\n",
    )
    assert run("layers", "innerprodcut")[2] == (
        "error: unknown layer type 'innerprodcut'\n  hint: did you mean 'InnerProduct'?\n"
    )


def test_field_hint_ignores_case(write_spec: Callable[..., str]) -> None:
    spec = write_spec(WINE.replace("SOURCE", "wine").replace("num_output", "Num_Outptu"), "net.yaml")
    assert run("check", spec)[2] == (
        f"{spec}:4:81: layer 'ip' (InnerProduct): unknown field 'Num_Outptu' in "
        "InnerProductParameter\n  hint: did you mean 'num_output'?\n"
    )


def test_unknown_source_suggests_sets_and_near_files(write_spec: Callable[..., str], tmp_path: Path) -> None:
    spec = write_spec(WINE.replace("SOURCE", "wines"), "net.yaml")
    code, out, err = run("check", spec)
    assert code == 1 and out == ""
    assert err == (
        f"{spec}:3:69: layer 'data' (Dataset): dataset_param.source 'wines' is neither a bundled or "
        "generated set nor an existing file or folder\n  hint: did you mean 'wine'? bundled sets: digits, "
        "iris, wine, breast_cancer, diabetes; generated: xor, spirals, blobs; files are read from the "
        "working directory, then from the spec's folder\n"
    )
    (tmp_path / "train.csv").write_text("1,2,0\n")
    spec = write_spec(WINE.replace("SOURCE", str(tmp_path / "trian.csv")), "net2.yaml")
    assert f"hint: files with near names: {tmp_path / 'train.csv'}; bundled sets: " in run("check", spec)[2]


@pytest.mark.parametrize("content", [b"hello\n", None])
def test_weights_that_are_not_a_snapshot(tmp_path: Path, content: bytes | None) -> None:
    import torch

    path = tmp_path / "model.pt"
    if content is None:
        torch.save(torch.nn.Linear(2, 2), path)  # a pickled module: PyTorch's own message is long and cut off
    else:
        path.write_bytes(content)
    code, _, err = run("test", str(MODELS / "logistic_regression.yaml"), "--weights", str(path))
    assert (code, err) == (1, f"error: '{path}' is not a netspec snapshot; --weights takes {ACCEPTED}\n")


def test_a_missing_weights_file_is_not_called_a_snapshot(tmp_path: Path) -> None:
    code, _, err = run("test", str(MODELS / "logistic_regression.yaml"), "--weights", str(tmp_path / "w.pt"))
    assert (code, err) == (1, f"error: --weights '{tmp_path / 'w.pt'}' does not exist\n")
    with pytest.raises(WeightsError) as e:
        read_weights(tmp_path / "w.pt")  # the library call, without the command line's check
    assert (e.value.msg, e.value.hint) == (
        f"weights file '{tmp_path / 'w.pt'}' does not exist",
        f"--weights takes {ACCEPTED}",
    )


def test_check_json_prints_errors_as_json(write_spec: Callable[..., str]) -> None:
    spec = write_spec(WINE.replace("SOURCE", "wines"), "net.yaml")
    code, out, err = run("check", spec, "--json")
    assert code == 1
    error = json.loads(out)["error"]
    assert {k: error[k] for k in ("file", "line", "column", "layer", "type", "field")} == {
        "file": spec,
        "line": 3,
        "column": 69,
        "layer": "data",
        "type": "Dataset",
        "field": "source",
    }
    assert error["message"] == (
        "dataset_param.source 'wines' is neither a bundled or generated set nor an existing file or folder"
    )
    assert error["hint"].startswith("did you mean 'wine'? ")
    assert err.startswith(error["text"])
    code, out, _ = run("check", str(Path(spec).with_name("none.yaml")), "--json")
    assert code == 1 and json.loads(out)["error"]["file"] is None
