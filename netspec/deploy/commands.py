"""What `netspec export` and `netspec predict` do, as library calls the command line wraps."""

from __future__ import annotations

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


def spec_batch(net: Net, limit: int = 5) -> dict[str, torch.Tensor] | None:
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
        k = source.transform.crop
        if k and x.dim() == 4:
            h, w = x.shape[2], x.shape[3]
            x = x[:, :, (h - k) // 2:(h - k) // 2 + k, (w - k) // 2:(w - k) // 2 + k]
        out[top] = x
    return out


def export(spec: str, weights: str | None, out: str, opset: int, batch: str, labels: str | None,
           verify: bool) -> ExportReport:
    module = compiled(spec, weights)
    size: str | int = batch if batch == "dynamic" else _batch(batch)
    return export_onnx(module, out, opset=opset, batch=size, labels=read_labels(labels) if labels else None,
                       verify=verify, data=spec_batch(module.net) if verify else None)


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        from netspec.errors import ExportError

        raise ExportError(f"--batch takes 'dynamic' or a positive number, got '{text}'")
    return value


def predict(model: str, weights: str | None, input_path: str, k: int, labels: str | None
            ) -> tuple[str, list[tuple[int, str, float]]]:
    """The top k classes for one input, from an ONNX model (onnxruntime) or a spec (PyTorch)."""
    from netspec.deploy.predict import read_input, top_k

    names = read_labels(labels) if labels else None
    if k <= 0:
        raise DataError("--top-k must be positive")
    if model.endswith(".onnx"):
        from netspec.deploy.runtime import Runtime

        if weights is not None:
            raise DataError("an ONNX model holds its own weights; --weights is for specs")
        runtime = Runtime(model)
        if len(runtime.inputs) != 1:
            raise DataError(f"the model takes {len(runtime.inputs)} inputs; predict feeds one")
        x = read_input(input_path, runtime.inputs[0].shape, runtime.channel_order)
        output = next((o for o in runtime.outputs if o.name == "prob"), runtime.outputs[0])
        scores = runtime.run({runtime.inputs[0].name: x}, [output.name])[0]
        return output.name, top_k(scores, k, names or runtime.labels)
    from netspec.deploy.export import deploy_module

    deploy = deploy_module(compiled(model, weights))
    if len(deploy.input_names) != 1:
        raise DataError(f"the net takes {len(deploy.input_names)} inputs; predict feeds one")
    name = deploy.input_names[0]
    x = read_input(input_path, (-1, *deploy.plan.inputs[name][1:]), deploy.plan.channel_order)
    with torch.no_grad():
        outputs = deploy(torch.from_numpy(x))
    index = deploy.output_names.index("prob") if "prob" in deploy.output_names else 0
    return deploy.output_names[index], top_k(outputs[index].numpy(), k, names)
