"""Shape inference: runs every layer's shape rule in order, before anything is computed.

This is the driver that adds context: a layer's rule raises an error with only the message, and the
driver attaches the file, line, layer and field. It also resolves parameter sharing (`param { name }`)
and counts parameters and multiply-accumulates.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from netspec._proto import netspec_pb2 as pb
from netspec.errors import NetspecError, ParamError, ResourceError, ShapeError
from netspec.fillerspec import check_filler
from netspec.graph import Graph, Node
from netspec.layers.base import Shape, count, fmt


@dataclass(frozen=True)
class ParamBlob:
    """One parameter blob of one layer, with its solver settings and, when shared, its owner."""

    layer: str
    index: int
    role: str
    shape: Shape
    filler: pb.FillerParameter
    learnable: bool
    lr_mult: float
    decay_mult: float
    owner: tuple[str, int] | None = None  # (layer, index) of the blob this one shares

    @property
    def count(self) -> int:
        return count(self.shape)


@dataclass(frozen=True)
class LayerInfo:
    """A graph node with everything inference learned about it."""

    node: Node
    bottom_shapes: tuple[Shape | None, ...]
    top_shapes: tuple[Shape | None, ...]  # None: unknown (the tops of an opaque Python layer)
    blobs: tuple[ParamBlob, ...]
    macs: int
    scratch: Shape | None = None  # the largest temporary tensor of the lowering

    @property
    def num_params(self) -> int:
        """Elements of the blobs this layer owns (a shared blob counts once, at its owner)."""
        return sum(b.count for b in self.blobs if b.owner is None)


def infer_shapes(graph: Graph, fed: dict[str, Shape] | None = None) -> tuple[list[LayerInfo], dict[str, Shape]]:
    """Every layer's shapes, blobs and cost, and the shape of every blob (the last value of an in-place
    blob). `fed` gives the shapes of data-layer tops instead of reading them from the sources (the
    label top of Data, ImageData and MemoryData then follows the data's batch size)."""
    shapes: dict[str, Shape] = {}
    unknown: dict[str, Node] = {}  # blobs whose shape cannot be known -> the opaque layer they came from
    shared: dict[str, ParamBlob] = {}
    owners: dict[str, Node] = {}
    named: dict[str, Node] = {}
    infos = []
    for node in graph.nodes:
        try:
            if node.definition.opaque:
                info = LayerInfo(node, tuple(shapes.get(b) for b in node.bottoms), (None,) * len(node.tops), (), 0)
                for top in node.tops:
                    shapes.pop(top, None)
                    unknown[top] = node
                infos.append(info)
                continue
            for b in node.bottoms:
                if b in unknown:
                    src = unknown[b]
                    raise ShapeError(
                        f"the shape of bottom '{b}' is unknown: it comes from {src.type} layer "
                        f"'{src.name}' (line {src.loc.line}), whose code netspec never runs",
                        field="bottom",
                        hint="replace that layer with built-in ones",
                    )
            info = _infer_node(node, shapes, shared, fed or {})
            _unique_owner(node, bool(info.blobs), owners, named)
        except NetspecError as e:
            raise node.error_context(e, graph.smap) from None
        infos.append(info)
    return infos, shapes


def _unique_owner(node: Node, has_blobs: bool, owners: dict[str, Node], named: dict[str, Node]) -> None:
    """Weights are matched to layers by name, so a layer with parameters needs a name no other layer has.
    Caffe allows duplicate names, and shipped nets use them for parameter-free layers; but its
    CopyTrainedLayersFrom finds a layer by name (the last one so named), so weights meant for a layer
    with parameters would go to its namesake."""
    first = named.setdefault(node.name, node)
    owner = owners.setdefault(node.name, node) if has_blobs else owners.get(node.name)
    if first is node or owner is None:
        return
    if owner is not node:
        raise ParamError(
            f"another layer with parameters is also named '{node.name}' (line {owner.loc.line}); "
            "weights are matched to layers by name",
            hint="rename one of them",
        )
    raise ParamError(
        f"another layer is also named '{node.name}' (line {first.loc.line}), and this one has "
        "parameters; weights are matched to layers by name",
        hint="rename one of them",
    )


def _fed_tops(node: Node, fed: dict[str, Shape]) -> tuple[Shape, ...] | None:
    if all(t in fed for t in node.tops):
        return tuple(fed[t] for t in node.tops)
    has_label = node.definition.label_top and len(node.tops) == 2
    if has_label and node.tops[0] in fed and fed[node.tops[0]]:
        data = fed[node.tops[0]]
        return data, (data[0],)
    return None


def _infer_node(node: Node, shapes: dict[str, Shape], shared: dict[str, ParamBlob], fed: dict[str, Shape]) -> LayerInfo:
    d, s = node.definition, node.spec
    bottoms = tuple(shapes[b] for b in node.bottoms)
    given = _fed_tops(node, fed) if d.feeds else None
    tops = given if given is not None else tuple(d.infer(s, bottoms))
    for top, shape in zip(node.tops, tops, strict=True):
        if 0 in shape:  # nothing downstream can compute on it, and no layer rule needs to consider it
            raise ShapeError(
                f"top '{top}' would have shape {fmt(shape)}, which holds no values",
                hint="every axis of a blob needs a size of at least 1",
            )
    for i, top in enumerate(node.tops):
        if i < len(bottoms) and node.bottoms[i] == top and tops[i] != bottoms[i]:
            raise ShapeError(
                f"in place, top '{top}' must keep its shape {fmt(bottoms[i])}, but {node.type} makes it {fmt(tops[i])}",
                field="top",
                hint="give the top a new name",
            )
        shapes[top] = tops[i]
    defs = d.blobs(s, bottoms)
    lp = node.lp
    if len(lp.param) > len(defs):
        raise ParamError(
            f"{len(lp.param)} param entries, but {node.type} has {len(defs)} parameter blob(s) here", field="param"
        )
    blobs = []
    for j, bd in enumerate(defs):
        try:
            check_filler(bd.filler, bd.shape)
        except NetspecError as e:
            e.field = f"{bd.filler_field}.{e.field}"
            raise
        spec = lp.param[j] if j < len(lp.param) else pb.ParamSpec()
        blob = ParamBlob(
            node.name,
            j,
            bd.role,
            bd.shape,
            bd.filler,
            bd.learnable,
            spec.lr_mult if bd.learnable else 0.0,
            spec.decay_mult if bd.learnable else 0.0,
        )
        if spec.name:
            blob = _share(blob, spec, shared)
        blobs.append(blob)
    return LayerInfo(node, bottoms, tops, tuple(blobs), d.macs(s, bottoms, tops), d.scratch(s, bottoms, tops))


def _share(blob: ParamBlob, spec: pb.ParamSpec, shared: dict[str, ParamBlob]) -> ParamBlob:
    owner = shared.get(spec.name)
    if owner is None:
        shared[spec.name] = blob
        return blob
    permissive = spec.share_mode == pb.ParamSpec.PERMISSIVE
    if permissive and owner.count != blob.count:
        raise ShapeError(
            f"shared param '{spec.name}' has {blob.count} values here {fmt(blob.shape)} but "
            f"{owner.count} in layer '{owner.layer}' {fmt(owner.shape)}",
            field="param",
        )
    if not permissive and owner.shape != blob.shape:
        raise ShapeError(
            f"shared param '{spec.name}' has shape {fmt(blob.shape)} here but {fmt(owner.shape)} in "
            f"layer '{owner.layer}'",
            field="param",
            hint="shared blobs need equal shapes (or share_mode: PERMISSIVE for equal counts)",
        )
    if spec.HasField("lr_mult") and spec.lr_mult != owner.lr_mult:
        raise ParamError(
            f"shared param '{spec.name}' has lr_mult {spec.lr_mult} here but {owner.lr_mult} in layer '{owner.layer}'",
            field="param",
        )
    if spec.HasField("decay_mult") and spec.decay_mult != owner.decay_mult:
        raise ParamError(
            f"shared param '{spec.name}' has decay_mult {spec.decay_mult} here but "
            f"{owner.decay_mult} in layer '{owner.layer}'",
            field="param",
        )
    return ParamBlob(
        blob.layer,
        blob.index,
        blob.role,
        blob.shape,
        owner.filler,
        owner.learnable,
        owner.lr_mult,
        owner.decay_mult,
        (owner.layer, owner.index),
    )


# ---- memory: checked before a net is allocated ------------------------------------------------------

ELEMENT_BYTES = 4  # float32, what compiled nets hold
MAX_BLOB_VALUES = 2**31 - 1  # Caffe's limit on one blob (INT_MAX values); torch's 32-bit index kernels agree
LIMIT_VARIABLE = "NETSPEC_MEMORY_LIMIT"
DEFAULT_LIMIT = 16 * 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class Footprint:
    """The memory one forward pass of a compiled net holds: its own parameter blobs, every layer's tops
    (each layer makes new tensors, in place or not, and training keeps them for backward), and the
    largest temporary tensor of any layer (they live one at a time)."""

    param_bytes: int
    activation_bytes: int
    scratch_bytes: int
    biggest: tuple[LayerInfo, str, Shape]  # the layer, which tensor of it ("top 'x'", "weight blob"), its shape

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.activation_bytes + self.scratch_bytes


def _tensors(info: LayerInfo) -> list[tuple[str, Shape, str]]:
    """What a layer holds in memory, as (which, shape, kind): its tops of known shape ("activation"), its
    own parameter blobs ("parameter") and its largest temporary tensor ("temporary")."""
    out = [
        (f"top '{t}'", shape, "activation")
        for t, shape in zip(info.node.tops, info.top_shapes, strict=True)
        if shape is not None
    ]
    out += [(f"{b.role} blob", b.shape, "parameter") for b in info.blobs if b.owner is None]
    if info.scratch is not None:
        out.append(("temporary tensor", info.scratch, "temporary"))
    return out


def footprint(infos: list[LayerInfo]) -> Footprint | None:
    """Sums the sizes of every tensor from the shapes alone (O(layers), never O(values)); None for a net
    without any."""
    total = {"activation": 0, "parameter": 0, "temporary": 0}
    biggest: tuple[LayerInfo, str, Shape] | None = None
    for info in infos:
        for what, shape, kind in _tensors(info):
            n = count(shape)
            total[kind] = max(total[kind], n) if kind == "temporary" else total[kind] + n
            if biggest is None or n > count(biggest[2]):
                biggest = (info, what, shape)
    if biggest is None:
        return None
    return Footprint(
        total["parameter"] * ELEMENT_BYTES,
        total["activation"] * ELEMENT_BYTES,
        total["temporary"] * ELEMENT_BYTES,
        biggest,
    )


def size_text(n_bytes: int) -> str:
    """Bytes as people read them, in the units of the limit: 512 B, 3.2 MiB, 34.4 GiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def _parts(fp: Footprint) -> str:
    scratch = f" + temporary {size_text(fp.scratch_bytes)}" if fp.scratch_bytes else ""
    return f"parameters {size_text(fp.param_bytes)} + activations {size_text(fp.activation_bytes)}{scratch}"


def memory_text(fp: Footprint) -> str:
    """The footprint as `netspec check` reports it."""
    info, what, shape = fp.biggest
    return (
        f"memory (float32): {_parts(fp)} per forward pass; biggest tensor: {what} of layer "
        f"'{info.node.name}' {fmt(shape)}"
    )


def memory_limit() -> int:
    """The most bytes a compiled net may hold: NETSPEC_MEMORY_LIMIT (bytes, or with K, M, G or T, powers
    of 1024), else 16 GiB."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LIMIT
    m = re.fullmatch(r"(\d{1,15})\s*([KMGT]?)(?:i?B)?", text, re.IGNORECASE)
    if not m:
        raise ResourceError(f"{LIMIT_VARIABLE}={text!r} is not a size", hint="write e.g. 64G or 2000000000")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def check_fits(graph: Graph, infos: list[LayerInfo]) -> None:
    """Refuses, before anything is allocated, a net with a blob of more than 2^31 - 1 values or whose
    footprint exceeds the memory limit; the error names the biggest tensor."""
    for info in infos:
        for what, shape, kind in _tensors(info):
            if kind != "temporary" and count(shape) > MAX_BLOB_VALUES:
                e = ResourceError(
                    f"its {what} has shape {fmt(shape)}, {count(shape):,} values; a blob holds at "
                    f"most {MAX_BLOB_VALUES:,} (2^31 - 1, as in Caffe)",
                    hint="make the batch or the layer smaller",
                )
                raise info.node.error_context(e, graph.smap)
    fp = footprint(infos)
    limit = memory_limit()
    if fp is None or fp.total_bytes <= limit:
        return
    info, what, shape = fp.biggest
    e = ResourceError(
        f"one forward pass needs {size_text(fp.total_bytes)} ({_parts(fp)}), over the limit of "
        f"{size_text(limit)}; the biggest tensor is this layer's {what} {fmt(shape)}, "
        f"{size_text(count(shape) * ELEMENT_BYTES)}",
        hint=f"make the batch or the layers smaller, or raise the limit ({LIMIT_VARIABLE}=64G)",
    )
    raise info.node.error_context(e, graph.smap)
