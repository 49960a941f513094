"""`netspec check`, `layers` and friends from the command line; pure-Python checking never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from netspec.cli import main
from tests import zoo
from tests.conftest import MODELS


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_the_caffe_snippet_checks() -> None:
    code, out = run("check", str(MODELS / "convolution.prototxt"), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["blobs"]["conv"] == [1, 3, 96, 96]
    assert report["total_params"] == 78
    assert report["inputs"] == {"data": [1, 1, 100, 100]} and report["outputs"] == ["conv"]
    assert report["phase"] == "TEST" and report["name"] == "convolution"
    conv = report["layers"][1]
    assert (conv["name"], conv["type"], conv["bottom"], conv["top"], conv["params"], conv["macs"]) == (
        "conv",
        "Convolution",
        ["data"],
        ["conv"],
        78,
        1 * 3 * 96 * 96 * 25,
    )


def test_table_shows_layers_shapes_params_and_totals() -> None:
    code, out = run("check", str(MODELS / "lenet.yaml"))
    assert code == 0
    assert "conv1     Convolution      data -> conv1           (64, 20, 24, 24)      520   18,432,000" in out
    assert "parameters: 431,080 (431,080 trainable)" in out


def test_phase_and_stage_options(tmp_path: Path) -> None:
    code, out = run("check", str(MODELS / "lenet.yaml"), "--phase", "TRAIN", "--json")
    assert json.loads(out)["outputs"] == ["loss"]
    code, out = run("check", str(MODELS / "lenet.yaml"), "--phase", "TRIAN")
    assert code == 2 and "'TRIAN' is not one of" in out


def test_shape_option_replaces_reading_the_source(tmp_path: Path) -> None:
    spec = tmp_path / "train.prototxt"
    spec.write_text(
        'layer { name: "mnist" type: "Data" top: "data" top: "label" '
        'data_param { source: "missing_lmdb" batch_size: 64 backend: LMDB } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        "inner_product_param { num_output: 10 } }\n"
    )
    code, out = run("check", str(spec), "--shape", "data=64,1,28,28", "--json")
    assert code == 0, out
    assert json.loads(out)["blobs"]["label"] == [64] and json.loads(out)["total_params"] == 7850
    code, out = run("check", str(spec), "--shape", "data=64x1")
    assert code == 0
    code, out = run("check", str(spec), "--shape", "data")
    assert code == 1 and "--shape takes BLOB=D0,D1,..." in out


def test_layers_lists_and_describes() -> None:
    code, out = run("layers")
    assert code == 0 and "Convolution" in out and "LayerNorm" in out and "(netspec)" in out
    code, out = run("layers", "Pooling")
    assert code == 0 and "round_mode" in out and "CEIL|FLOOR" in out
    code, out = run("layers", "Pooling2")
    assert code == 1 and "did you mean 'Pooling'?" in out


def test_check_never_imports_torch(tmp_path: Path) -> None:
    spec = tmp_path / "googlenet.prototxt"
    spec.write_text(zoo.googlenet())
    code = (
        "import sys; from netspec.cli import main; sys.argv = ['netspec', 'check', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    print(f"netspec check of GoogLeNet: {elapsed:.3f} s wall (measured, not asserted)")


def test_a_spec_that_is_not_a_regular_file_is_refused_unread(tmp_path: Path) -> None:
    import os

    pipe = tmp_path / "net.yaml"
    os.mkfifo(pipe)  # reading it would block until something writes to it
    assert run("check", str(pipe)) == (
        1,
        f"error: spec file '{pipe}' is a FIFO (named pipe); netspec opens only regular files\n",
    )
    zero = tmp_path / "zero.prototxt"
    zero.symlink_to("/dev/zero")  # reading it would never end
    assert run("check", str(zero)) == (
        1,
        f"error: spec file '{zero}' is a character device; netspec opens only regular files\n",
    )


def test_a_message_quoting_control_characters_stays_on_one_line(tmp_path: Path) -> None:
    """Found by the fuzzer: a blob name with a newline split the message (and the hint) over lines."""
    spec = tmp_path / "net.prototxt"
    spec.write_text(
        'layer { name: "x" type: "Input" top: "a\\nb\\033[31m\u202e" '
        "input_param { shape { dim: 1 } } }\n"
        'layer { name: "abs" type: "AbsVal" bottom: "x" top: "y" }\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["check", str(spec)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{spec}:2:36: layer 'abs' (AbsVal): unknown bottom blob 'x'",
        "  hint: blobs defined so far: a\\nb\\x1b[31m\\u202e",
    ]
