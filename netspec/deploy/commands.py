"""What `netspec export` and `netspec predict` do, as library calls the command line wraps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from netspec.deploy.export import ExportReport, export_onnx
from netspec.errors import DataError
from netspec.files import checked
from netspec.lower.module import NetModule, compile_net
from netspec.net import Net


def read_labels(path: str) -> list[str]:
    try:
        lines = checked(path, "labels file").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labels file '{path}': {e}") from None
    labels = [ln.strip() for ln in lines if ln.strip()]
    if not labels:
        raise DataError(f"labels file '{path}' is empty")
    return labels


def compiled(spec: str, weights: str | None) -> NetModule:
    """The TEST net of a spec with the given weights (or its fillers' when none)."""
    return compile_net(spec, "TEST", weights)


def spec_batch(net: Net, limit: int | None = 5) -> dict[str, torch.Tensor] | None:
    """A few records of the spec's own TEST data, as the deploy graph takes them (before mean and scale,
    centre-cropped), or None when the net has no readable data."""
    from netspec.data.feeder import Feeder

    if not any(i.node.definition.reads_records for i in net.layers):
        return None
    try:
        feeder = Feeder(net, torch.device("cpu"), seed=0)
    except DataError:
        return None
    out = {}
    for source in feeder.sources:
        if source.arrays is None:
            return None
        top = source.tops[0]
        x = source.arrays[top][:limit].float()
        stats = source.node.definition.statistics(source.node.spec)
        if stats is not None:  # the graph takes records unscaled
            mean, std = (torch.tensor(v).reshape(x.shape[1:]) for v in stats)
            x = x * std + mean
        k = source.transform.crop
        if k and x.dim() == 4:
            h, w = x.shape[2], x.shape[3]
            x = x[:, :, (h - k) // 2 : (h - k) // 2 + k, (w - k) // 2 : (w - k) // 2 + k]
        out[top] = x
    return out


def export(
    spec: str, weights: str | None, out: str, opset: int, batch: str, labels: str | None, verify: bool
) -> ExportReport:
    module = compiled(spec, weights)
    size: str | int = batch if batch == "dynamic" else _batch(batch)
    return export_onnx(
        module,
        out,
        opset=opset,
        batch=size,
        labels=read_labels(labels) if labels else None,
        verify=verify,
        data=spec_batch(module.net) if verify else None,
        ranges=input_ranges(module.net),
    )


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        from netspec.errors import ExportError

        raise ExportError(f"--batch takes 'dynamic' or a positive number, got '{text}'")
    return value


@dataclass
class Prediction:
    """What `netspec predict` prints: per input record, the top classes, or the output values when the
    output is not class scores; and notes on what was guessed."""

    output: str
    classes: list[list[tuple[int, str, float]]] | None
    values: np.ndarray | None
    notes: list[str] = field(default_factory=list)


def predict(model: str, weights: str | None, input_path: str, k: int, labels: str | None) -> Prediction:
    """Every record of an input file through an ONNX model (onnxruntime) or a spec (PyTorch)."""
    from netspec.deploy.predict import IMAGES, class_scores, read_input, top_k

    names = read_labels(labels) if labels else None
    if k <= 0:
        raise DataError("--top-k must be positive")
    notes: list[str] = []
    if model.endswith(".onnx"):
        from netspec.deploy.runtime import Runtime

        if weights is not None:
            raise DataError("an ONNX model holds its own weights; --weights is for specs")
        runtime = Runtime(model)
        if len(runtime.inputs) != 1:
            raise DataError(f"the model takes {len(runtime.inputs)} inputs; predict feeds one")
        value_range = runtime.input_ranges.get(runtime.inputs[0].name)
        x = read_input(input_path, runtime.inputs[0].shape, runtime.channel_order, value_range, notes)
        if (
            not runtime.channel_order_recorded
            and Path(input_path).suffix.lower() in IMAGES
            and runtime.inputs[0].shape[1:2] == (3,)
        ):  # a colour image for a model netspec did not export
            notes.append("the model records no channel order; the image was fed as BGR, as Caffe's models take it")
        output = next((o for o in runtime.outputs if o.name == "prob"), runtime.outputs[0])
        scores, name = runtime.run({runtime.inputs[0].name: x}, [output.name])[0], output.name
        names = names or runtime.labels
    else:
        from netspec.deploy.export import deploy_module

        deploy = deploy_module(compiled(model, weights))
        if len(deploy.input_names) != 1:
            raise DataError(f"the net takes {len(deploy.input_names)} inputs; predict feeds one")
        top = deploy.input_names[0]
        x = read_input(
            input_path,
            (-1, *deploy.plan.inputs[top][1:]),
            deploy.plan.channel_order,
            input_ranges(deploy.net.net).get(top),
            notes,
        )
        with torch.no_grad():
            outputs = deploy(torch.from_numpy(x))
        index = deploy.output_names.index("prob") if "prob" in deploy.output_names else 0
        scores, name = outputs[index].numpy(), deploy.output_names[index]
    if not class_scores(scores, names):
        return Prediction(name, None, scores, notes)
    return Prediction(name, [top_k(scores, k, names, row) for row in range(scores.shape[0])], None, notes)


def input_ranges(net: Net) -> dict[str, tuple[float, float]]:
    """The lowest and highest value of each input in the spec's own data, as the deploy graph takes it (what
    predict scales an image to); empty when the data cannot be read."""
    batch = spec_batch(net, limit=None)
    return {k: (float(v.min()), float(v.max())) for k, v in (batch or {}).items() if v.numel()}
