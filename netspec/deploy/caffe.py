"""Caffe's formats on the way out and in: `netspec export --caffemodel` writes a .caffemodel with a deploy
prototxt for tools that read Caffe, and `netspec import` turns a Caffe prototxt and .caffemodel into a
netspec spec, weights and a verified ONNX model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from netspec import snapshot
from netspec._proto import netspec_pb2 as pb
from netspec.caffemodel import write_caffemodel
from netspec.deploy.export import deploy_module, export_onnx
from netspec.deploy.graph import Preprocess
from netspec.errors import NetspecError
from netspec.fillerspec import CAFFE_TYPES
from netspec.layers.data import Input
from netspec.lower.module import NetModule
from netspec.lower.weights import apply_weights, read_weights
from netspec.net import build_net
from netspec.netfile import read_net, to_yaml
from netspec.spec.emit import to_prototxt
from netspec.spec.upgrade import upgrade_net

FIRST_NETSPEC_FIELD = 7001  # schemas/netspec.proto numbers netspec's own fields from here


@dataclass
class CaffeExport:
    caffemodel: Path
    prototxt: Path
    layers: int
    size: int
    not_caffe: list[str]  # layers Caffe itself cannot read
    preprocessing: dict[str, Preprocess]

    def lines(self) -> list[str]:
        out = [
            f"wrote {self.caffemodel} ({self.layers} layers with weights, {self.size:,} bytes)",
            f"wrote {self.prototxt} (the deploy net for it)",
        ]
        for blob, pre in self.preprocessing.items():
            mean = f"the mean image in {pre.mean_file}" if pre.mean_file else f"the mean {list(pre.mean or [])}"
            steps = ([f"subtract {mean}"] if pre.mean_file or pre.mean else []) + (
                [f"multiply by {pre.scale:g}"] if pre.scale != 1 else []
            )
            out.append(
                f"note: the deploy net takes '{blob}' preprocessed, as the data layer did: " + ", then ".join(steps)
            )
        if self.not_caffe:
            out.append(
                "note: these layers use netspec's additions, which Caffe cannot read: " + ", ".join(self.not_caffe)
            )
        return out


def export_caffemodel(module: NetModule, path: str | Path) -> CaffeExport:
    """Writes the TEST net's weights as a .caffemodel and its deploy net (Input layers, no losses) as
    PATH_deploy.prototxt beside it."""
    path = Path(path)
    if not path.name.endswith(".caffemodel"):
        raise NetspecError(f"--caffemodel names the file to write and must end in .caffemodel, got '{path}'")
    deploy = deploy_module(module)
    test = deploy.net
    params = test.caffe_params()
    prototxt = path.with_name(path.name[: -len(".caffemodel")] + "_deploy.prototxt")
    source = Path(module.net.spec.path).resolve()
    if prototxt.resolve() == source or path.resolve() == source:
        raise NetspecError(
            f"writing '{prototxt}' would overwrite the spec being exported",
            hint="give --caffemodel a different name or folder",
        )
    layers = [
        (info.node.lp, [t.detach().cpu().numpy() for t in params.get(info.node.name, [])]) for info in test.net.layers
    ]
    size = write_caffemodel(path, test.net.name, layers)
    net = pb.NetParameter(name=test.net.name)
    for blob, shape in deploy.plan.inputs.items():
        net.layer.add(name=blob, type=Input.type, top=[blob]).input_param.shape.add(dim=list(shape))
    kept = set(deploy.plan.layers)
    not_caffe = []  # layers Caffe itself cannot read
    for info in test.net.layers:
        if info.node.name in kept:
            lp = net.layer.add()
            lp.CopyFrom(info.node.lp)
            del lp.include[:], lp.exclude[:], lp.blobs[:]
            _drop_netspec_fillers(lp)
            if info.node.definition.origin == "netspec" or _uses_netspec_fields(lp):
                not_caffe.append(lp.name)
    try:
        prototxt.write_text(to_prototxt(net), encoding="utf-8")
    except OSError as e:
        raise NetspecError(f"cannot write '{prototxt}': {e.strerror}") from None
    return CaffeExport(
        path, prototxt, sum(1 for _, blobs in layers if blobs), size, not_caffe, dict(deploy.plan.preprocessing)
    )


def _drop_netspec_fillers(message: Message) -> None:
    """Removes the fillers Caffe does not know (netspec's types or fields): Caffe builds every layer's
    filler when it sets the net up, even though the weights then come from the .caffemodel, and stops at
    one it does not know."""
    for fd, value in message.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type is pb.FillerParameter.DESCRIPTOR and not fd.is_repeated:  # (DummyData's are)
            if value.type not in CAFFE_TYPES or _uses_netspec_fields(value):
                message.ClearField(fd.name)
            continue
        for item in value if fd.is_repeated else [value]:
            _drop_netspec_fillers(item)


def _uses_netspec_fields(message: Message) -> bool:
    for fd, value in message.ListFields():
        if fd.number >= FIRST_NETSPEC_FIELD:
            return True
        if fd.message_type is not None:
            items = value if fd.is_repeated else [value]
            if any(_uses_netspec_fields(v) for v in items):
                return True
    return False


def import_caffe(
    prototxt: str,
    caffemodel: str,
    out_dir: str,
    phase: str = "TEST",
    shapes: dict[str, tuple[int, ...]] | None = None,
    verify: bool = True,
) -> Iterator[str]:
    """A Caffe model as netspec files in `out_dir`: NAME.yaml (the spec, in the current layer format),
    NAME.pt (its weights) and NAME.onnx (verified against PyTorch). Yields a summary line per file as it
    is written, so that what was done is reported even when a later step fails."""
    spec = read_net(prototxt)
    original = build_net(spec, phase, shapes=shapes)
    weights = read_weights(caffemodel)  # the inputs' errors come before anything is written
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NetspecError(f"cannot create '{out}': {e.strerror}") from None
    stem = Path(prototxt).stem
    upgraded, _ = upgrade_net(spec.message, spec.smap)
    yaml_path, pt_path, onnx_path = out / f"{stem}.yaml", out / f"{stem}.pt", out / f"{stem}.onnx"
    yaml_path.write_text(to_yaml(upgraded), encoding="utf-8")
    net = build_net(read_net(str(yaml_path)), phase, shapes=shapes)
    if net.shapes != original.shapes or net.num_params != original.num_params:
        raise NetspecError(
            f"the YAML written to '{yaml_path}' does not describe the same net as '{prototxt}'",
            hint="this is a bug in netspec; please report it with the prototxt",
        )
    yield f"imported {prototxt} with {caffemodel} (net '{net.name}', {net.phase} phase)"
    yield (
        f"spec:    {yaml_path} ({len(net.layers)} layers"
        + (", upgraded from Caffe's V1 layer format" if spec.message.layers else "")
        + ")"
    )
    module = NetModule(net)
    report = apply_weights(module.caffe_params(), weights, caffemodel)
    snapshot.save_weights(module.caffe_params(), pt_path)
    yield f"weights: {pt_path} ({report.summary()}; {net.num_params:,} parameters)"
    exported = export_onnx(module, onnx_path, verify=verify)
    inputs = ", ".join(f"{k} {v}" for k, v in exported.inputs.items())
    worst = max((c.max_abs for c in exported.comparisons), default=None)
    yield (
        f"onnx:    {onnx_path} (input {inputs}; "
        + ("not verified)" if worst is None else f"verified against PyTorch: max |onnx - torch| {worst:.3g})")
    )
