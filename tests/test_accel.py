"""Beyond eager PyTorch: training channels-last or through torch.compile keeps eager's numbers, `netspec
time` compares them with eager, --compile without a C++ compiler fails with one message; and the training
log says when streamed data, not the model, holds the steps up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from netspec.cli import main
from netspec.data import prefetch
from netspec.data.feeder import Source
from netspec.errors import DataError
from netspec.train.solver import Solver

TINY = """
name: tiny
layer:
  - {name: data, type: Input, input_param: {shape: [4, 3, 8, 8]}}
  - {name: label, type: Input, input_param: {shape: [4]}}
  - {name: conv, type: Convolution, bottom: data,
     convolution_param: {num_output: 5, kernel_size: 3, pad: 1, weight_filler: xavier, bias_filler: {type: constant, value: 0.1}}}
  - {name: pool, type: Pooling, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: relu, type: ReLU, bottom: pool, top: pool}
  - {name: ip, type: InnerProduct, inner_product_param: {num_output: 3, weight_filler: xavier}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label]}
solver: {type: SGD, base_lr: 0.1, momentum: 0.9, weight_decay: 0.001, max_iter: 10, random_seed: 3}
"""


DROPOUT = "  - {name: drop, type: Dropout, bottom: pool, top: pool, dropout_param: {dropout_ratio: 0.3}}\n"


def tiny_spec(tmp_path: Path, dropout: bool = False) -> str:
    """TINY, with a Dropout on the pooled images when asked for (channels-last draws other masks for
    images: the same distribution in another order, so only compiling is held to eager's masks)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("  - {name: ip,", DROPOUT + "  - {name: ip,") if dropout else TINY)
    return str(path)


Trained = tuple[list[float], dict[str, list[torch.Tensor]]]  # the losses and the final weights


def trained(spec: str, steps: int = 3, **options: object) -> Trained:
    solver = Solver(spec, **options)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    losses = [
        solver.step({"data": rng.standard_normal((4, 3, 8, 8)).astype(np.float32), "label": np.array([0, 1, 2, 1.0])})
        for _ in range(steps)
    ]
    return losses, {k: [t.detach().clone() for t in v] for k, v in solver.net.caffe_params().items()}


def assert_same_training(a: Trained, b: Trained) -> None:
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert a[1].keys() == b[1].keys()
    for layer in a[1]:
        for x, y in zip(a[1][layer], b[1][layer], strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_channels_last_trains_to_eagers_numbers(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    eager = trained(spec)
    laid_out = trained(spec, channels_last=True)
    assert laid_out[1]["conv"][0].is_contiguous(memory_format=torch.channels_last)
    assert_same_training(eager, laid_out)


SHARED = """
name: shared
layer:
  - {name: data, type: Input, input_param: {shape: [4, 3, 8, 8]}}
  - {name: flat, type: Input, input_param: {shape: [4, 27]}}
  - {name: label, type: Input, input_param: {shape: [4]}}
  - {name: conv, type: Convolution, bottom: data, param: [{name: w, share_mode: PERMISSIVE}],
     convolution_param: {num_output: 5, kernel_size: 3, bias_term: false, weight_filler: xavier}}
  - {name: ipc, type: InnerProduct, bottom: conv, inner_product_param: {num_output: 3, weight_filler: xavier}}
  - {name: ip, type: InnerProduct, bottom: flat, param: [{name: w, share_mode: PERMISSIVE}],
     inner_product_param: {num_output: 5, bias_term: false}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ipc, label]}
solver: {type: SGD, base_lr: 0.1, max_iter: 10, random_seed: 3}
"""


def test_channels_last_leaves_a_weight_shared_under_another_shape_alone(tmp_path: Path) -> None:
    """The InnerProduct views the convolution's (5, 3, 3, 3) weight as (5, 27), which a channels-last
    tensor cannot be viewed as: that weight keeps its layout, and the net trains as it does eager."""
    path = tmp_path / "shared.yaml"
    path.write_text(SHARED)
    rng = np.random.default_rng(0)
    batch = {
        "data": rng.standard_normal((4, 3, 8, 8)).astype(np.float32),
        "flat": rng.standard_normal((4, 27)).astype(np.float32),
        "label": np.array([0, 1, 2, 1.0]),
    }
    runs = []
    for channels_last in (False, True):
        solver = Solver(str(path), channels_last=channels_last)
        runs.append([solver.step(batch) for _ in range(2)])
        assert solver.net.caffe_params()["conv"][0].is_contiguous()
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, from inside inductor's imports
@pytest.mark.skipif(
    not os.environ.get("NETSPEC_SLOW_TESTS"),
    reason="importing and running inductor takes about a minute on two shared cores; NETSPEC_SLOW_TESTS=1 runs it",
)
def test_compiled_training_keeps_eagers_numbers(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    spec = tiny_spec(tmp_path, dropout=True)
    counters.clear()
    assert_same_training(trained(spec), trained(spec, compile=True))
    # compiled whole and once: no graph break or fallback to eager, and no recompiling at a later step
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_compile_without_a_cpp_compiler_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import cpp_builder, exc

    def missing() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    for command in ("train", "time"):
        result = CliRunner().invoke(main, [command, tiny_spec(tmp_path), "--compile", "--device", "cpu"])
        assert result.exit_code == 1
        assert result.output.splitlines() == [
            "error: --compile needs a C++ compiler on the CPU (torch.compile's inductor builds C++ kernels), and "
            "none was found (g++, or the compiler CXX names)",
            "  hint: install g++ (Debian: apt-get install g++), or leave out --compile",
        ]


def test_time_compares_the_ways_asked_for_with_eager(tmp_path: Path) -> None:
    args = ["time", tiny_spec(tmp_path), "--iterations", "5", "--channels-last", "--amp", "bf16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("whole step (forward + backward, no per-layer timing), median of 5 rounds taking turns:")
    rows = [line.split("  ")[1].strip() for line in lines[at + 1 :]]
    assert rows == ["eager", "amp bf16", "channels-last + amp bf16"]
    eager = float(lines[at + 1].split()[-2])
    for line in lines[at + 2 :]:
        ms, ratio = line.split(" ms  ")
        assert ratio == f"{float(ms.split()[-1]) / eager:.2f}x eager"


def test_time_refuses_fp16_on_the_cpu_before_timing(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["time", tiny_spec(tmp_path), "--amp", "fp16", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.splitlines() == ["error: --amp fp16 needs a CUDA device; on the CPU use --amp bf16"]


def test_waiting_for_streamed_data_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamed batches that come slower than the steps use them: the log says so, and what to change."""
    import lmdb

    from netspec._proto import netspec_pb2 as pb

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(8):
            datum = pb.Datum(channels=1, height=4, width=4, data=bytes([i] * 16), label=i % 3)
            txn.put(f"{i:04d}".encode(), datum.SerializeToString())
    env.close()
    (tmp_path / "net.prototxt").write_text(
        f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{tmp_path / "db"}" '
        "batch_size: 4 backend: LMDB } }\n"
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n'
    )
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.01 max_iter: 4 random_seed: 1\n')
    monkeypatch.setenv("NETSPEC_MAX_MEMORY_MB", "0")  # the records stream instead of being held in memory
    monkeypatch.setenv(prefetch.WORKERS_VARIABLE, "1")
    read = Source._read

    def slow(self: Source) -> dict[str, torch.Tensor]:
        time.sleep(0.25)
        return read(self)

    monkeypatch.setattr(Source, "_read", slow)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "solver.prototxt"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("waiting for data: ")]
    assert len(notes) == 1, result.output
    assert notes[0].endswith(
        "the data, not the model, is the bottleneck: raise NETSPEC_DATA_WORKERS (now 1) if cores are free, "
        "or hold the data in memory (raise NETSPEC_MAX_MEMORY_MB)"
    )
    assert notes[0] in (tmp_path / "run" / "train.log").read_text()


def test_waiting_note_only_past_its_share() -> None:
    assert prefetch.waiting_note(1.0, 10.0) is None
    assert prefetch.waiting_note(0.0, 0.0) is None
    note = prefetch.waiting_note(6.3, 10.0)
    assert note is not None and note.startswith("waiting for data: 63% of the training step time (6.3 s of 10.0 s);")


def test_workers_variable_must_be_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("two", "0"):
        monkeypatch.setenv(prefetch.WORKERS_VARIABLE, text)
        with pytest.raises(DataError) as e:
            prefetch.workers()
        assert (
            str(e.value) == f"NETSPEC_DATA_WORKERS must be a whole number of worker processes, 1 or more, got '{text}'"
        )
