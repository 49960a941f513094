"""The ONNX contract of every layer type, driven by the registry: an example of each type goes through the
project's export (`netspec.export_onnx`, which checks the model and compares onnxruntime with PyTorch at
rtol 1e-4, atol 1e-5, here also on the example's own inputs); the operators a layer exports to must be
among its LayerDef's `onnx_ops`, and a type that declares none must be left out of the deploy graph.

Exporting is slow (seconds a model), so the examples of one batch size share one net and one export, each
layer with its own inputs and outputs; a layer's operators are the ONNX nodes its outputs are computed from.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import onnx
import pytest
import torch

import netspec
from netspec.deploy.export import ATOL, RTOL, ExportReport
from netspec.deploy.graph import DeployPlan, plan
from netspec.layers import all_types
from netspec.layers.base import Example, In, LayerDef
from netspec.net import build_net
from netspec.netfile import load_net_text
from netspec.spec.load import PROTOTXT
from tests.layer_harness import make_input, net_text

TYPES = all_types()
# Train-only types with no examples (they write files when run), and a layer of each for the drop check.
UNRUN = {"HDF5Output": 'hdf5_output_param { file_name: "never_written.h5" }'}


def _example(d: LayerDef) -> Example | None:
    """A TEST example whose inputs share one batch size on the layer's batch axis (the deploy graph gives
    every input the same batch; a dropped layer's inputs are no inputs of it), of batch 2 where there is
    one: the fewer batch sizes, the fewer exports."""
    fits = [
        ex
        for ex in d.examples
        if ex.phase == "TEST"
        and (
            not d.onnx_ops
            or len({i.shape[d.batch_axis] if len(i.shape) > d.batch_axis else i.shape[0] for i in ex.inputs}) <= 1
        )
    ]
    return next((ex for ex in fits if _batch(d, ex) == 2), fits[0] if fits else None)


def _batch(d: LayerDef, ex: Example) -> int | None:
    return ex.inputs[0].shape[d.batch_axis] if ex.inputs else None


def _prefix(type_name: str) -> str:
    return f"{type_name}_"


# the exported examples grouped by batch size; those without inputs, and those the deploy graph drops
# (their inputs are no inputs of the graph), join the largest group
GROUPS: dict[int, list[tuple[str, Example]]] = defaultdict(list)
_ANY_BATCH = []
for _t, _d in TYPES.items():
    _ex = _example(_d)
    if _ex is None:
        continue
    _b = _batch(_d, _ex)
    if _b is None or not _d.onnx_ops:
        _ANY_BATCH.append((_t, _ex))
    else:
        GROUPS[_b].append((_t, _ex))
max(GROUPS.values(), key=len).extend(_ANY_BATCH)


def _ops_behind(graph: Any, outputs: list[str]) -> set[str]:
    """The operator types of the nodes that the given values are computed from."""
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[int] = set()
    ops: set[str] = set()
    stack = list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        ops.add(node.op_type)
        stack.extend(node.input)
    return ops


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, DeployPlan, ExportReport]]:
    """For every type with an example: its group's ONNX graph, deploy plan and export report."""
    out = {}
    torch.manual_seed(0)
    for batch, members in GROUPS.items():
        text = "".join(net_text(t, ex.fields, ex.inputs, ex.tops, _prefix(t)) for t, ex in members)
        net = build_net(load_net_text(text, f"batch{batch}.prototxt", PROTOTXT), "TEST")
        module = netspec.compile(net)
        data = {f"{_prefix(t)}x{i}": make_input(spec) for t, ex in members for i, spec in enumerate(ex.inputs)}
        path = tmp_path_factory.mktemp("onnx") / f"batch{batch}.onnx"
        report = netspec.export_onnx(module, path, batch=batch, data=data)
        graph = onnx.load(str(path)).graph
        for t, _ in members:
            out[t] = (graph, plan(net), report)
    return out


def test_every_type_is_covered() -> None:
    # a type is exported from an example, or is a data layer (its tops become the deploy graph's inputs),
    # or runs code netspec never sees (Python)
    uncovered = [t for t, d in TYPES.items() if _example(d) is None and not (d.feeds or d.opaque or t in UNRUN)]
    assert uncovered == []


def test_onnx_ops_are_declared_exactly_for_what_is_exported() -> None:
    wrong = [t for t, d in TYPES.items() if bool(d.onnx_ops) == (d.train_only or d.feeds or d.opaque)]
    assert wrong == []
    assert all(d.train_only for d in TYPES.values() if d.loss)


@pytest.mark.parametrize("type_name", [t for t in TYPES if _example(TYPES[t]) is not None])
def test_layer_exports_to_its_onnx_ops(
    type_name: str, exported: dict[str, tuple[Any, DeployPlan, ExportReport]]
) -> None:
    d, ex = TYPES[type_name], _example(TYPES[type_name])
    graph, deploy, report = exported[type_name]
    assert report.verified and (RTOL, ATOL) == (1e-4, 1e-5)
    assert "a batch of the spec's data" in [c.what for c in report.comparisons]
    name = f"{_prefix(type_name)}under_test"
    if not d.onnx_ops:
        assert name not in deploy.layers
        return
    assert name in deploy.layers
    tops = [f"{_prefix(type_name)}y{j}" for j in range(ex.tops)]  # type: ignore[union-attr]
    assert set(tops) <= set(deploy.outputs)
    assert _ops_behind(graph, tops) <= d.onnx_ops


@pytest.mark.parametrize("type_name", UNRUN)
def test_unrun_train_only_layers_are_dropped(type_name: str) -> None:
    assert TYPES[type_name].train_only and not TYPES[type_name].onnx_ops
    text = net_text(type_name, UNRUN[type_name], (In((2, 3)), In((2,))), 0)
    net = build_net(
        load_net_text(
            text + 'layer { name: "relu" type: "ReLU" bottom: "x0" top: "out" }\n', "unrun.prototxt", PROTOTXT
        ),
        "TEST",
    )
    assert plan(net).layers == ("relu",)


def test_data_layers_become_inputs() -> None:
    # a fed layer is no operator of the deploy graph: its top is an input
    net = build_net(
        load_net_text(
            'layer { name: "data" type: "MemoryData" top: "data" memory_data_param { batch_size: 2 channels: 3 '
            'height: 1 width: 1 } }\nlayer { name: "relu" type: "ReLU" bottom: "data" top: "out" }\n',
            "fed.prototxt",
            PROTOTXT,
        ),
        "TEST",
    )
    deploy = plan(net)
    assert deploy.layers == ("relu",) and deploy.inputs == {"data": (2, 3, 1, 1)}
