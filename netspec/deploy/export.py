"""ONNX export with checks: the deploy graph through torch's dynamo exporter, then onnx.checker, ONNX
shape inference held to netspec's shapes, metadata, and a parity check against PyTorch in
onnxruntime (on by default).

Tolerance: outputs must agree within |onnx - torch| <= ATOL + RTOL * |torch| elementwise, with
RTOL = 1e-4 and ATOL = 1e-5 for float32 on the CPU (measured differences are around 1e-7).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from netspec import __version__
from netspec.deploy.graph import DeployModule, plan
from netspec.errors import ExportError, NetspecError
from netspec.lower.module import NetModule
from netspec.net import build_net

RTOL, ATOL = 1e-4, 1e-5
EXTERNAL_DATA_BYTES = 1_800_000_000  # above this the weights go to a .data file beside the model


@dataclass
class Comparison:
    """ONNX Runtime against PyTorch on one batch."""

    what: str
    batch: int
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class ExportReport:
    path: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    opset: int
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    def lines(self) -> list[str]:
        out = [
            f"exported {self.path} (opset {self.opset})",
            "inputs:  " + ", ".join(f"{k} {v}" for k, v in self.inputs.items()),
            "outputs: " + ", ".join(f"{k} {v}" for k, v in self.outputs.items()),
        ]
        for c in self.comparisons:
            out.append(
                f"verified on {c.what} (batch {c.batch}): max |onnx - torch| {c.max_abs:.3g}, max relative "
                f"{c.max_rel:.3g} ({'ok' if c.ok else 'FAILED'}; tolerance rtol {RTOL:g}, atol {ATOL:g})"
            )
        return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter logs and warns about things that are not the user's concern (torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def deploy_module(module: NetModule) -> DeployModule:
    """The deploy graph of a compiled net (its TEST phase, sharing the module's weights)."""
    net = module.net
    if net.phase != "TEST":
        test = NetModule(build_net(net.spec, "TEST", net.state.stages, net.state.level))
        source = module.caffe_params()
        with torch.no_grad():
            for layer, blobs in test.caffe_params().items():
                for target, value in zip(blobs, source.get(layer, []), strict=False):
                    if target.shape == value.shape:
                        target.copy_(value)
        module = test
    return DeployModule(module.to("cpu").eval(), plan(module.net))


def _example(
    shape: tuple[int, ...], batch: int, ints: int | None, gen: torch.Generator, axis: int | None = 0
) -> torch.Tensor:
    full = tuple(batch if i == axis else d for i, d in enumerate(shape))  # axis None: as the spec has it
    if ints:
        return torch.randint(0, ints, full, generator=gen).float()
    return torch.randn(full, generator=gen)


def export_onnx(
    module: NetModule,
    path: str | Path,
    *,
    opset: int = 18,
    batch: str | int = "dynamic",
    labels: list[str] | None = None,
    verify: bool = True,
    optimize: bool = True,
    data: dict[str, torch.Tensor] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> ExportReport:
    """Exports a compiled net's deploy graph to ONNX and checks it.

    Args:
        module: a module from `netspec.compile`, with whatever weights it holds.
        path: the .onnx file to write.
        opset: the ONNX opset.
        batch: "dynamic" for a free batch axis, or a fixed batch size.
        labels: class names recorded in the model's metadata.
        verify: compare onnxruntime with PyTorch at batch 1, an odd batch and on `data`.
        data: a batch of the spec's own data (input blob -> tensor) to verify on.
        ranges: each input's lowest and highest value in the training data, recorded in the metadata
            (`netspec predict` scales images to them).

    Returns:
        What was exported and how it compared.

    Raises:
        ExportError: the export failed or the model does not agree with PyTorch (the file is then
            renamed to PATH.failed).
    """
    import onnx

    path = Path(path)
    deploy = deploy_module(module)
    names, shapes = deploy.input_names, list(deploy.plan.inputs.values())
    dynamic = batch == "dynamic"
    if not dynamic and (not isinstance(batch, int) or batch <= 0):
        raise ExportError(f"--batch takes 'dynamic' or a positive number, got '{batch}'")
    ids = {blob: bound for blob, bound in deploy.net.net.id_bounds().items() if blob in deploy.plan.inputs}
    gen = torch.Generator().manual_seed(0)
    axes = deploy.plan.batch_axes
    example = tuple(
        _example(s, 2 if dynamic else int(batch), ids.get(n), gen, axes[n]) for n, s in zip(names, shapes, strict=True)
    )
    weight_bytes = sum(t.numel() * t.element_size() for t in deploy.state_dict().values())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    try:
        with _quiet(), torch.no_grad():
            program = cast(
                torch.onnx.ONNXProgram,
                torch.onnx.export(  # dynamo=True always returns one
                    deploy,
                    example,
                    dynamo=True,
                    opset_version=opset,
                    input_names=names,
                    output_names=deploy.output_names,
                    optimize=optimize,
                    verbose=False,
                    dynamic_shapes=(tuple(None if axes[n] is None else {axes[n]: "batch"} for n in names),)
                    if dynamic
                    else None,
                ),
            )
            program.save(str(path), external_data=external)
    except NetspecError:
        raise
    except Exception as e:  # the exporter raises many kinds; the user needs its summary
        raise ExportError(
            f"the PyTorch exporter failed: {_summary(str(e))}", hint="run with --debug for the exporter's full report"
        ) from None
    model = onnx.load(str(path), load_external_data=True)
    _check(model, path, deploy, dynamic, batch)
    report = ExportReport(str(path), _io(model.graph.input), _io(model.graph.output), opset)
    _write_metadata(model, path, module, deploy, labels, external, ranges)
    if verify:
        _verify(path, deploy, report, ids, data)
        if not report.verified:
            failed = path.with_name(path.name + ".failed")
            path.replace(failed)
            worst = max(report.comparisons, key=lambda c: c.max_abs)
            raise ExportError(
                f"the exported model does not compute what PyTorch does: on {worst.what} (batch "
                f"{worst.batch}) they differ by up to {worst.max_abs:.3g} (relative "
                f"{worst.max_rel:.3g}); the file was renamed to {failed}",
                hint="export with --no-verify to keep it anyway, or report the layers involved",
            )
    return report


def _summary(text: str) -> str:
    """The line of the exporter's report that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        rest = lines[lines.index("## Exception summary") + 1 :]
        return " ".join(rest[:2])[:400]
    return (lines[0] if lines else "unknown error")[:400]


def _io(values: Any) -> dict[str, list[int | str]]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _check(model: Any, path: Path, deploy: DeployModule, dynamic: bool, batch: str | int) -> None:
    """onnx.checker, and ONNX's own shape inference agreeing with netspec's shapes."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported model is not valid ONNX: {str(e).splitlines()[0][:300]}") from None
    shapes = deploy.net.net.shapes
    for value in inferred.graph.output:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        want = list(shapes[value.name])
        agree = len(dims) == len(want) and all(
            isinstance(d, str) or d == w or (not dynamic and d == batch) for d, w in zip(dims, want, strict=True)
        )
        if not agree:
            raise ExportError(
                f"ONNX shape inference gives output '{value.name}' the shape {dims}; netspec infers "
                f"{want} (the batch axis aside)"
            )


def _write_metadata(
    model: Any,
    path: Path,
    module: NetModule,
    deploy: DeployModule,
    labels: list[str] | None,
    external: bool,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> None:
    import onnx

    spec_path = Path(module.net.spec.path)
    spec_hash = hashlib.sha256(spec_path.read_bytes()).hexdigest() if spec_path.is_file() else ""
    meta = {
        "netspec.version": __version__,
        "netspec.spec": spec_path.name,
        "netspec.spec_sha256": spec_hash,
        "netspec.net": module.net.name,
        "netspec.inputs": json.dumps({k: list(v) for k, v in deploy.plan.inputs.items()}),
        "netspec.outputs": json.dumps(deploy.output_names),
        "netspec.preprocessing": json.dumps({k: p.describe() for k, p in deploy.plan.preprocessing.items()}),
        "netspec.channel_order": deploy.plan.channel_order,
    }
    if labels:
        meta["netspec.labels"] = json.dumps(labels)
    if ranges:  # the training data's values per input, before preprocessing: what predict scales images to
        meta["netspec.input_ranges"] = json.dumps({k: list(v) for k, v in ranges.items()})
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "netspec", __version__
    onnx.save(model, str(path), save_as_external_data=external)


def _verify(
    path: Path, deploy: DeployModule, report: ExportReport, ids: dict[str, int], data: dict[str, torch.Tensor] | None
) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fixed = [d for d in report.inputs[deploy.input_names[0]][:1] if isinstance(d, int) and d]
    batches: list[tuple[str, dict[str, torch.Tensor]]] = []
    gen = torch.Generator().manual_seed(1)
    axes = deploy.plan.batch_axes
    for b in [fixed[0]] if fixed else [1, 3]:
        batches.append(
            ("random inputs", {n: _example(s, b, ids.get(n), gen, axes[n]) for n, s in deploy.plan.inputs.items()})
        )
    if data is not None:
        feed = {n: data[n] for n in deploy.input_names if n in data}
        if len(feed) == len(deploy.input_names):
            batches.append(("a batch of the spec's data", feed))
    for what, feed in batches:
        with torch.no_grad():
            expected = deploy(*(feed[n] for n in deploy.input_names))
        got = session.run(deploy.output_names, {n: feed[n].numpy().astype(np.float32) for n in deploy.input_names})
        max_abs = max_rel = 0.0
        ok = True
        for e, g in zip(expected, got, strict=True):
            e = e.detach().numpy()  # an output may be a parameter itself (a Parameter layer's)
            if e.shape != g.shape:
                ok = False
                max_abs = max_rel = float("inf")
                continue
            ok = ok and bool(np.allclose(g, e, rtol=RTOL, atol=ATOL, equal_nan=True))
            both = np.isfinite(g) & np.isfinite(e)  # NaN where both are NaN (log of a negative) is agreement
            diff = np.abs(g - e)[both]
            if diff.size:
                max_abs = max(max_abs, float(diff.max()))
                max_rel = max(max_rel, float((diff / np.maximum(np.abs(e[both]), 1e-12)).max()))
        first = next(iter(feed))
        rows = int(feed[first].shape[axes[first] or 0])  # the first input has the batch axis, when any has
        report.comparisons.append(Comparison(what, rows, max_abs, max_rel, ok))
