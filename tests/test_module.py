"""The compiled net's one forward loop: partial runs, hooks, weight sharing, and errors that name the layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import netspec
from netspec.cli import main
from netspec.errors import DataError, NetspecError, ShapeError
from netspec.layers import get
from netspec.lower.module import Call, NetModule, Step
from tests.conftest import MODELS

NET = """name: "t"
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip" inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "out" }
"""


@pytest.fixture
def module(write_spec) -> NetModule:
    return netspec.compile(write_spec(NET))


def test_steps_are_the_layers_that_compute_in_order(module: NetModule) -> None:
    assert [(s.name, s.bottoms, s.tops) for s in module.steps] == [
        ("sum", ("a", "b"), ("sum",)),
        ("ip", ("sum",), ("ip",)),
        ("relu", ("ip",), ("out",)),
    ]


def test_until_stops_after_the_layer_and_layers_runs_a_part(module: NetModule) -> None:
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    full = module.blobs(a=a, b=b)
    assert sorted(module.run({"a": a, "b": b}, until="sum")) == ["a", "b", "sum"]
    part = module.run({"sum": full["sum"]}, layers=["ip", "relu"])
    assert sorted(part) == ["ip", "out", "sum"]
    assert torch.equal(part["out"], full["out"])
    # a part may take another batch size: its inputs are the blobs it reads, not the net's
    assert module.run({"sum": torch.randn(5, 3)}, layers=["ip", "relu"])["out"].shape == (5, 4)


def test_partial_runs_name_what_they_lack(module: NetModule) -> None:
    with pytest.raises(NetspecError) as e:
        module.run({"sum": torch.zeros(2, 3)}, layers=["ip", "rel"])
    assert str(e.value) == "no layer 'rel' computes in this run\n  hint: did you mean 'relu'?"
    with pytest.raises(NetspecError) as e:
        module.run({"a": torch.zeros(2, 3)}, layers=["ip", "relu"])
    assert str(e.value) == "missing input blob(s) 'sum'; unknown input blob(s) 'a'\n  hint: the layers run read: sum"


def test_a_hook_runs_around_every_step_and_may_replace_its_tops(module: NetModule) -> None:
    seen = []

    def hook(step: Step, xs: list[torch.Tensor], call: Call) -> list[torch.Tensor]:
        seen.append((step.name, [tuple(x.shape) for x in xs]))
        ys = call(xs)
        return [y * 0 for y in ys] if step.name == "ip" else ys

    out = module.run({"a": torch.randn(2, 3), "b": torch.randn(2, 3)}, hook=hook)
    assert seen == [("sum", [(2, 3), (2, 3)]), ("ip", [(2, 3)]), ("relu", [(2, 4)])]
    assert torch.equal(out["out"], torch.zeros(2, 4))


def test_share_weights_makes_the_test_net_use_the_train_nets_tensors() -> None:
    train = netspec.compile(str(MODELS / "xor_train.yaml"), "TRAIN")
    test = netspec.compile(str(MODELS / "xor_train.yaml"), "TEST")
    test.share_weights(train)
    for layer, blobs in train.caffe_params().items():
        assert all(t is s for t, s in zip(test.caffe_params()[layer], blobs, strict=True))
    with torch.no_grad():
        train.caffe_params()["out"][0].add_(1.0)
    assert torch.equal(test.caffe_params()["out"][0], train.caffe_params()["out"][0])


def test_bottoms_of_mismatched_batch_sizes_are_the_users_error(module: NetModule, tmp_path: Path) -> None:
    with pytest.raises(ShapeError) as e:
        module(a=torch.ones(2, 3), b=torch.ones(4, 3))
    assert str(e.value) == (
        f"{tmp_path / 'net.prototxt'}:4:7: layer 'sum' (Eltwise): cannot run on bottoms a (2, 3), b (4, 3): "
        "The size of tensor a (2) must match the size of tensor b (4) at non-singleton dimension 0\n"
        "  hint: the spec infers a (2, 3), b (2, 3); give the net float32 inputs of the spec's shapes, with one "
        "batch size for all"
    )


def test_bottoms_of_another_dtype_are_the_users_error(module: NetModule, tmp_path: Path) -> None:
    with pytest.raises(ShapeError) as e:
        module(a=torch.ones(2, 3, dtype=torch.long), b=torch.ones(2, 3, dtype=torch.long))
    assert str(e.value) == (
        f"{tmp_path / 'net.prototxt'}:5:7: layer 'ip' (InnerProduct): cannot run on bottoms sum (2, 3) int64: "
        "mat1 and mat2 must have the same dtype, but got Long and Float\n"
        "  hint: the spec infers sum (2, 3); give the net float32 inputs of the spec's shapes, with one batch "
        "size for all"
    )


def test_a_layer_failing_on_the_specs_shapes_is_a_bug_with_a_note(write_spec, monkeypatch) -> None:
    def boom(params: list[torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(type(get("ReLU")), "lower", lambda self, spec, bottoms, tops: boom)
    path = write_spec(NET)
    module = netspec.compile(path)
    with pytest.raises(ZeroDivisionError) as e:
        module(a=torch.ones(2, 3), b=torch.ones(2, 3))
    assert e.value.__notes__ == [f"while running layer 'relu' (ReLU) at {path}:6:7"]
    assert e.traceback[-1].name == "boom"  # the traceback still reaches the failing code


def test_the_cli_prints_a_runtime_layer_error_as_one_located_line(tmp_path: Path, monkeypatch) -> None:
    from netspec.data.feeder import Feeder

    fed = Feeder.next

    def short_labels(self: Feeder, count: int | None = None) -> dict[str, torch.Tensor]:
        batch = fed(self, count)
        return {**batch, "label": batch["label"][:-1]}

    monkeypatch.setattr(Feeder, "next", short_labels)
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(MODELS / "xor_train.yaml"),
            "--set",
            "solver.max_iter=1",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
    )
    assert result.exit_code == 1
    assert result.output == (
        f"{MODELS / 'xor_train.yaml'}:18:5: layer 'accuracy' (Accuracy): cannot run on bottoms out (32, 2), "
        "label (31,): shape '[32, 1]' is invalid for input of size 31\n"
        "  hint: the spec infers out (32, 2), label (32,); give the net float32 inputs of the spec's shapes, with "
        "one batch size for all\n"
    )


@pytest.mark.parametrize(("ids", "bad"), [([0, 9, 10], "10"), ([-1, 0, 3], "-1"), ([0, float("nan"), 1], "nan")])
def test_an_embed_id_out_of_range_is_named_with_the_valid_range(write_spec, ids: list[float], bad: str) -> None:
    path = write_spec(
        'layer { name: "words" type: "Input" top: "words" input_param { shape { dim: 3 } } }\n'
        'layer { name: "embed" type: "Embed" bottom: "words" top: "v" '
        "embed_param { input_dim: 10 num_output: 2 } }\n"
    )
    module = netspec.compile(path)
    with pytest.raises(DataError) as e:
        module(words=torch.tensor(ids))
    assert (
        str(e.value)
        == f"{path}:2:7: layer 'embed' (Embed): bottom 'words' holds {bad}, outside the valid range [0, 10) "
        "of input_dim"
    )


def test_embed_truncates_fractional_ids_as_caffe_does(write_spec) -> None:
    path = write_spec(
        'layer { name: "words" type: "Input" top: "words" input_param { shape { dim: 2 } } }\n'
        'layer { name: "embed" type: "Embed" bottom: "words" top: "v" '
        "embed_param { input_dim: 10 num_output: 2 bias_term: false } }\n"
    )
    module = netspec.compile(path)
    table = module.caffe_params()["embed"][0]
    assert torch.equal(module(words=torch.tensor([9.75, 0.5]))["v"], table[[9, 0]])


def test_a_batch_reindex_index_out_of_range_is_named_with_the_valid_range(write_spec) -> None:
    path = write_spec(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }\n'
        'layer { name: "i" type: "Input" top: "i" input_param { shape { dim: 2 } } }\n'
        'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" }\n'
    )
    module = netspec.compile(path)
    with pytest.raises(DataError) as e:
        module(x=torch.ones(4, 3), i=torch.tensor([1.0, 4.0]))
    assert (
        str(e.value) == f"{path}:3:7: layer 'r' (BatchReindex): index bottom 'i' holds 4, outside the valid range "
        "[0, 4) of the items of bottom 0"
    )
