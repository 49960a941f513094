"""Loading weights into a compiled net by layer name: from netspec snapshots (.pt) and Caffe's .caffemodel
(and .caffemodel.h5) files.

Layers are matched by name and blobs by position, as Caffe's CopyTrainedLayersFrom does. What did not
match is reported: layers of the net that found no weights, weights that found no layer, and shape
mismatches, which are errors unless allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from netspec.caffemodel import is_caffe_weights, legacy_fits, read_caffemodel
from netspec.errors import WeightsError
from netspec.layers.base import Shape, fmt

if TYPE_CHECKING:
    from netspec.data.datasets import Statistics
    from netspec.net import Net

ACCEPTED = "a netspec snapshot (*.pt, written by netspec train or import) or a Caffe .caffemodel / .caffemodel.h5"


@dataclass(frozen=True)
class Weights:
    """Each layer's blobs from a file; `legacy` marks Caffe blobs with num/channels/height/width shapes."""

    blobs: dict[str, list[torch.Tensor]]
    legacy: frozenset[tuple[str, int]] = frozenset()
    # a netspec snapshot's: the data layers' preprocessing statistics and the data tops' shapes, by top
    stored: dict[str, Statistics] = field(default_factory=dict)
    inputs: dict[str, Shape] = field(default_factory=dict)


@dataclass
class WeightsReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # net layers with blobs that found no weights
    unused: list[str] = field(default_factory=list)  # weights that found no layer
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} layer(s) loaded"]
        if self.missing:
            parts.append("no weights for: " + ", ".join(self.missing))
        if self.unused:
            parts.append("unused weights: " + ", ".join(self.unused))
        if self.mismatched:
            parts.append("shape mismatch: " + "; ".join(self.mismatched))
        return "; ".join(parts)


def read_weights(path: str | Path) -> Weights:
    """Each layer's blobs from a weights file: a netspec snapshot (.pt) or a Caffe .caffemodel(.h5)."""
    if is_caffe_weights(path):
        caffe = read_caffemodel(path)
        return Weights({k: [torch.from_numpy(a) for a in v] for k, v in caffe.blobs.items()}, caffe.legacy)
    if not str(path).endswith(".pt"):
        raise WeightsError(
            f"cannot tell the format of weights file '{path}' from its name", hint=f"--weights takes {ACCEPTED}"
        )
    if not Path(path).exists():
        raise WeightsError(f"weights file '{path}' does not exist", hint=f"--weights takes {ACCEPTED}")
    from netspec import snapshot

    try:
        state = snapshot.load(path)
    except WeightsError as e:  # a PyTorch checkpoint or any other file: what it is matters less than what is taken
        if "is not a readable netspec snapshot" not in e.msg and "is not a netspec snapshot" not in e.msg:
            raise  # a netspec snapshot that is damaged or of another version says so
        raise WeightsError(f"'{path}' is not a netspec snapshot; --weights takes {ACCEPTED}") from None
    stored = {top: (tuple(v["mean"]), tuple(v["std"])) for top, v in state.get("statistics", {}).items()}
    inputs = {top: tuple(int(d) for d in shape) for top, shape in state.get("inputs", {}).items()}
    return Weights(state["blobs"], stored=stored, inputs=inputs)


def stored_with_weights(net: Net) -> dict[str, Any]:
    """What a snapshot holds beside the weights so that the model can be tested, exported and served as it
    was trained, even where its data source is not at hand: the preprocessing statistics its data layers
    computed from their sources (a `standardize` Dataset's), and the shapes of the data tops."""
    statistics = {}
    for info in net.layers:
        node = info.node
        if node.definition.feeds and (found := node.definition.statistics(node.spec)) is not None:
            statistics[node.tops[0]] = {"mean": list(found[0]), "std": list(found[1])}
    return {"statistics": statistics, "inputs": {top: list(shape) for top, shape in net.inputs.items()}}


def apply_weights(
    params: dict[str, list[torch.Tensor]], weights: Weights, source: str, allow_missing: bool = False
) -> WeightsReport:
    """Copies weights into a module's caffe_params() in place; raises on mismatches unless allowed."""
    report = WeightsReport()
    for layer, blobs in params.items():
        given = weights.blobs.get(layer)
        if given is None:
            report.missing.append(layer)
            continue
        problems = []
        if len(given) != len(blobs):
            problems.append(f"{layer}: {len(given)} blob(s) in the file, {len(blobs)} in the net")
        given = [
            v.reshape(t.shape) if _fits(t, v, (layer, i) in weights.legacy) else v
            for i, (t, v) in enumerate(zip(blobs, given, strict=False))
        ] + given[len(blobs) :]
        for i, (target, value) in enumerate(zip(blobs, given, strict=False)):
            if tuple(target.shape) != tuple(value.shape):
                problems.append(
                    f"{layer} blob {i}: {fmt(tuple(value.shape))} in the file, {fmt(tuple(target.shape))} in the net"
                )
        if problems:
            report.mismatched.extend(problems)
            continue
        with torch.no_grad():
            for target, value in zip(blobs, given, strict=True):
                target.copy_(value.to(target.device, target.dtype))
        report.loaded.append(layer)
    report.unused = [layer for layer in weights.blobs if layer not in params]
    if (report.mismatched and not allow_missing) or (params and not report.loaded):
        raise WeightsError(
            f"weights in '{source}' do not fit the net: {report.summary()}",
            hint="layers are matched by name and blobs by shape; pass --allow-missing to start the "
            "mismatched layers from their fillers",
        )
    return report


def _fits(target: torch.Tensor, value: torch.Tensor, legacy: bool) -> bool:
    """Whether a blob of another shape still fits: Caffe's legacy 4-D shapes, and a one-value blob for a
    0-axis parameter, which netspec wrote as (1,) before it used Caffe's 0-axis shape."""
    if legacy:
        return legacy_fits(tuple(target.shape), tuple(value.shape))
    return target.dim() == 0 and tuple(value.shape) == (1,)
