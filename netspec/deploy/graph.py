"""The deploy graph: the TEST net without what only training needs.

Losses, Accuracy, Silence and HDF5Output are dropped, and so is what only fed their targets: the labels,
layers computing from labels (a Power scaling regression targets), and blobs a loss read only as its
target (the flattened input of an autoencoder). The outputs are the blobs left that no layer reads; the
layers they do not need go too. The data layers' tops become the graph's inputs, named after their blobs. What a
data layer does to every record the same way, mean subtraction and scaling, moves into the graph, so the
deployed model takes records as the source stores them (cropped to the net's input size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from netspec.caffemodel import read_mean_file
from netspec.data import probe
from netspec.errors import ExportError
from netspec.graph import final_blobs
from netspec.layers.base import Shape
from netspec.lower.module import NetModule
from netspec.net import Net
from netspec.shapes import LayerInfo


@dataclass(frozen=True)
class Preprocess:
    """What a data layer does to every record alike, (x - mean) * scale, moved into the deployed graph: the
    mean is one value per channel (mean_value) or an image (mean_file, centre-cropped to the input as
    Caffe crops it at test time)."""

    scale: float
    mean: tuple[float, ...] | None = None
    mean_file: Path | None = None
    # a `standardize` Dataset's (x - mean) / std per feature, flattened, done before the above
    standardize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def describe(self) -> dict[str, object]:
        return {
            "scale": self.scale,
            "mean": list(self.mean) if self.mean else None,
            "mean_file": self.mean_file.name if self.mean_file else None,
            "standardize": {"mean": list(self.standardize[0]), "std": list(self.standardize[1])}
            if self.standardize
            else None,
        }


@dataclass(frozen=True)
class DeployPlan:
    """Which layers run, the inputs (with shapes and the axis that holds the batch) and outputs, and the
    preprocessing moved into the graph."""

    layers: tuple[str, ...]
    inputs: dict[str, Shape]
    outputs: tuple[str, ...]
    preprocessing: dict[str, Preprocess]  # by data top
    channel_order: str
    batch_axes: dict[str, int | None]  # None: the input has no batch axis


def plan(net: Net) -> DeployPlan:
    dropped = [info for info in net.layers if info.node.definition.train_only]
    origin = _origins(net)
    labels = _label_blobs(dropped, origin)
    kept = [
        info
        for info in net.layers
        if not (info in dropped or info.node.definition.feeds or any(labels & origin[b] for b in info.node.bottoms))
    ]
    targets = {b for info in dropped for b in info.node.bottoms[1:]} - {info.node.bottoms[0] for info in dropped}
    outputs = tuple(b for b in final_blobs([info.node for info in kept]) if b not in targets)
    kept = _needed(kept, outputs)
    consumed = {b for info in kept for b in info.node.bottoms}
    fed = [(info, top) for info in net.layers if info.node.definition.feeds for top in info.node.tops]
    inputs = {top: net.shapes[top] for _, top in fed if top in consumed}
    if not outputs:
        raise ExportError(
            "the net has nothing left to compute once its losses and accuracy are dropped",
            hint="a deploy net needs layers whose outputs are not losses (e.g. a Softmax 'prob')",
        )
    preprocessing, order = {}, "RGB"
    for info, top in fed:
        node = info.node
        if node.definition.channel_order != "RGB":
            order = node.definition.channel_order
        if top != node.tops[0] or top not in inputs:
            continue
        tp = node.lp.transform_param
        mean_file = (
            probe.resolve(tp.mean_file, node.spec.base_dir, "transform_param.mean_file") if tp.mean_file else None
        )
        standardize = _standardization(node, inputs[top])
        if tp.scale != 1 or tp.mean_value or mean_file or standardize:
            preprocessing[top] = Preprocess(
                float(tp.scale), tuple(float(v) for v in tp.mean_value) or None, mean_file, standardize
            )
    # a layer's batch_axis: recurrent layers take (T, N, ...), so their inputs' batch axis is 1
    read_at: dict[str, int] = {}
    for info in kept:
        for b in info.node.bottoms:
            read_at[b] = max(read_at.get(b, 0), info.node.definition.batch_axis)
    found = {name: read_at.get(name, 0) if len(shape) > 1 else 0 for name, shape in inputs.items()}
    # an input whose size there differs from the first input's batch is no batch (a Scale's scale, say)
    lead = next(((shape[found[n]] if shape else None) for n, shape in inputs.items()), None)
    axes: dict[str, int | None] = {
        name: found[name] if shape and shape[found[name]] == lead else None for name, shape in inputs.items()
    }
    return DeployPlan(tuple(i.node.name for i in kept), inputs, outputs, preprocessing, order, axes)


def _standardization(node: Any, shape: Shape) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The statistics a data layer applies to every record (a `standardize` Dataset's): the ones a snapshot
    stored with the model, else its training part's, read from the source again (the split is seeded, so
    they are the ones training used)."""
    found = node.definition.statistics(node.spec)
    if found is None:
        return None
    if len(found[0]) != math.prod(shape[1:]):
        raise ExportError(
            f"'{node.name}' standardizes records of {len(found[0])} values, but the net's input "
            f"'{node.tops[0]}' has {math.prod(shape[1:])} (resized or cropped records)",
            hint="standardize tabular records; scale images with transform_param instead",
        )
    return found


def _needed(layers: list[LayerInfo], outputs: tuple[str, ...]) -> list[LayerInfo]:
    """The layers the outputs are computed by (a Flatten of the input that only a loss's target read goes)."""
    needed, out = set(outputs), []
    for info in reversed(layers):
        if needed & set(info.node.tops):
            out.append(info)
            needed |= set(info.node.bottoms)
    return out[::-1]


def _origins(net: Net) -> dict[str, set[str]]:
    """For every blob, the data-layer tops it is computed from."""
    origin: dict[str, set[str]] = {}
    for info in net.layers:
        node = info.node
        found = set().union(*(origin.get(b, set()) for b in node.bottoms))
        for top in node.tops:
            origin[top] = {top} if node.definition.feeds else found
    return origin


def _label_blobs(dropped: list[LayerInfo], origin: dict[str, set[str]]) -> set[str]:
    """Data tops that only the targets of losses and Accuracy come from (the labels): a loss compares its
    first bottom, the prediction, with the rest, so what only the rest are computed from is a label, and
    the layers computing from it (a Power scaling the targets) have no place in the deployed model."""
    out: set[str] = set()
    for info in dropped:
        first, rest = info.node.bottoms[:1], info.node.bottoms[1:]
        out |= set().union(*(origin[b] for b in rest)) - set().union(*(origin[b] for b in first))
    return out


class DeployModule(nn.Module):
    """A compiled net as a deploy graph: positional inputs (in DeployPlan order), a tuple of outputs."""

    def __init__(self, module: NetModule, deploy: DeployPlan) -> None:
        super().__init__()
        self.net = module
        self.plan = deploy
        self.input_names = list(deploy.inputs)
        self.output_names = list(deploy.outputs)
        self._means: dict[str, str] = {}
        for name, pre in deploy.preprocessing.items():
            if pre.standardize is not None:
                record = (1, *deploy.inputs[name][1:])
                self.register_buffer(f"center_{name}", torch.tensor(pre.standardize[0]).reshape(record))
                self.register_buffer(f"spread_{name}", torch.tensor(pre.standardize[1]).reshape(record))
            mean = _mean_tensor(name, pre, deploy.inputs[name])
            if mean is not None:
                self._means[name] = f"mean_{len(self._means)}"
                self.register_buffer(self._means[name], mean)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = dict(zip(self.input_names, inputs, strict=True))
        for name, pre in self.plan.preprocessing.items():
            x = env[name]
            if pre.standardize is not None:
                x = (x - cast(torch.Tensor, self._buffers[f"center_{name}"])) / cast(
                    torch.Tensor, self._buffers[f"spread_{name}"]
                )
            if name in self._means:
                x = x - cast(torch.Tensor, self._buffers[self._means[name]])
            env[name] = x * pre.scale if pre.scale != 1 else x
        env = self.net.run(env, layers=self.plan.layers)
        return tuple(env[name] for name in self.output_names)


def _mean_tensor(name: str, pre: Preprocess, shape: Shape) -> torch.Tensor | None:
    """The mean to subtract from input `name`, shaped to broadcast over a batch."""
    if pre.mean_file is not None:
        image = torch.from_numpy(read_mean_file(pre.mean_file))
        height, width = shape[-2:]
        c, h, w = image.shape
        if len(shape) != 4 or c != shape[1] or h < height or w < width:
            raise ExportError(f"the mean image in '{pre.mean_file}' is {c}x{h}x{w}; input '{name}' is {shape}")
        top, left = (h - height) // 2, (w - width) // 2
        return image[None, :, top : top + height, left : left + width].clone()
    if pre.mean is None:
        return None
    view = (1, -1) + (1,) * (len(shape) - 2) if len(shape) > 2 else (1, -1) if len(pre.mean) > 1 else (1,)
    return torch.tensor(pre.mean).reshape(view)
