"""Loading weights into a compiled net by layer name: from netspec snapshots (and, later, .caffemodel).

Layers are matched by name and blobs by position, as Caffe's CopyTrainedLayersFrom does. What did not
match is reported: layers of the net that found no weights, weights that found no layer, and shape
mismatches, which are errors unless allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from netspec.errors import WeightsError
from netspec.layers.base import fmt


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


def read_weights(path: str | Path) -> dict[str, list[torch.Tensor]]:
    """Each layer's blobs from a weights file: a netspec snapshot (.pt)."""
    path = Path(path)
    if path.suffix == ".caffemodel":
        raise WeightsError(f"'{path}': reading .caffemodel weights is not available in this version",
                           hint="give a netspec snapshot (*.pt)")
    from netspec.train import snapshot

    return snapshot.load(path)["blobs"]  # type: ignore[no-any-return]


def apply_weights(params: dict[str, list[torch.Tensor]], weights: dict[str, list[torch.Tensor]], source: str,
                  allow_missing: bool = False) -> WeightsReport:
    """Copies weights into a module's caffe_params() in place; raises on mismatches unless allowed."""
    report = WeightsReport()
    for layer, blobs in params.items():
        given = weights.get(layer)
        if given is None:
            report.missing.append(layer)
            continue
        problems = []
        if len(given) != len(blobs):
            problems.append(f"{layer}: {len(given)} blob(s) in the file, {len(blobs)} in the net")
        for i, (target, value) in enumerate(zip(blobs, given, strict=False)):
            if tuple(target.shape) != tuple(value.shape):
                problems.append(f"{layer} blob {i}: {fmt(tuple(value.shape))} in the file, {fmt(tuple(target.shape))} "
                                "in the net")
        if problems:
            report.mismatched.extend(problems)
            continue
        with torch.no_grad():
            for target, value in zip(blobs, given, strict=True):
                target.copy_(value.to(target.device, target.dtype))
        report.loaded.append(layer)
    report.unused = [layer for layer in weights if layer not in params]
    if (report.mismatched and not allow_missing) or (params and not report.loaded):
        raise WeightsError(f"weights in '{source}' do not fit the net: {report.summary()}",
                           hint="layers are matched by name and blobs by shape; pass --allow-missing to start the "
                                "mismatched layers from their fillers")
    return report
