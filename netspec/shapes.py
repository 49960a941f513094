"""Shape inference: runs every layer's shape rule in order, before anything is computed.

This is the driver that adds context: a layer's rule raises an error with only the message, and the
driver attaches the file, line, layer and field. It also resolves parameter sharing (`param { name }`)
and counts parameters and multiply-accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass

from netspec._proto import netspec_pb2 as pb
from netspec.errors import NetspecError, ParamError, ShapeError
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
                    raise ShapeError(f"the shape of bottom '{b}' is unknown: it comes from {src.type} layer "
                                     f"'{src.name}' (line {src.loc.line}), whose code netspec never runs",
                                     field="bottom", hint="replace that layer with built-in ones")
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
        raise ParamError(f"another layer with parameters is also named '{node.name}' (line {owner.loc.line}); "
                         "weights are matched to layers by name", hint="rename one of them")
    raise ParamError(f"another layer is also named '{node.name}' (line {first.loc.line}), and this one has "
                     "parameters; weights are matched to layers by name", hint="rename one of them")


def _fed_tops(node: Node, fed: dict[str, Shape]) -> tuple[Shape, ...] | None:
    if all(t in fed for t in node.tops):
        return tuple(fed[t] for t in node.tops)
    has_label = node.definition.label_top and len(node.tops) == 2
    if has_label and node.tops[0] in fed and fed[node.tops[0]]:
        data = fed[node.tops[0]]
        return data, (data[0],)
    return None


def _infer_node(node: Node, shapes: dict[str, Shape], shared: dict[str, ParamBlob],
                fed: dict[str, Shape]) -> LayerInfo:
    d, s = node.definition, node.spec
    bottoms = tuple(shapes[b] for b in node.bottoms)
    given = _fed_tops(node, fed) if d.feeds else None
    tops = given if given is not None else tuple(d.infer(s, bottoms))
    for i, top in enumerate(node.tops):
        if i < len(bottoms) and node.bottoms[i] == top and tops[i] != bottoms[i]:
            raise ShapeError(f"in place, top '{top}' must keep its shape {fmt(bottoms[i])}, but {node.type} makes "
                             f"it {fmt(tops[i])}", field="top", hint="give the top a new name")
        shapes[top] = tops[i]
    defs = d.blobs(s, bottoms)
    lp = node.lp
    if len(lp.param) > len(defs):
        raise ParamError(f"{len(lp.param)} param entries, but {node.type} has {len(defs)} parameter blob(s) here",
                         field="param")
    blobs = []
    for j, bd in enumerate(defs):
        try:
            check_filler(bd.filler, bd.shape)
        except NetspecError as e:
            e.field = f"{bd.filler_field}.{e.field}"
            raise
        spec = lp.param[j] if j < len(lp.param) else pb.ParamSpec()
        blob = ParamBlob(node.name, j, bd.role, bd.shape, bd.filler, bd.learnable,
                         spec.lr_mult if bd.learnable else 0.0, spec.decay_mult if bd.learnable else 0.0)
        if spec.name:
            blob = _share(blob, spec, shared)
        blobs.append(blob)
    return LayerInfo(node, bottoms, tops, tuple(blobs), d.macs(s, bottoms, tops))


def _share(blob: ParamBlob, spec: pb.ParamSpec, shared: dict[str, ParamBlob]) -> ParamBlob:
    owner = shared.get(spec.name)
    if owner is None:
        shared[spec.name] = blob
        return blob
    permissive = spec.share_mode == pb.ParamSpec.PERMISSIVE
    if permissive and owner.count != blob.count:
        raise ShapeError(f"shared param '{spec.name}' has {blob.count} values here {fmt(blob.shape)} but "
                         f"{owner.count} in layer '{owner.layer}' {fmt(owner.shape)}", field="param")
    if not permissive and owner.shape != blob.shape:
        raise ShapeError(f"shared param '{spec.name}' has shape {fmt(blob.shape)} here but {fmt(owner.shape)} in "
                         f"layer '{owner.layer}'", field="param",
                         hint="shared blobs need equal shapes (or share_mode: PERMISSIVE for equal counts)")
    if spec.HasField("lr_mult") and spec.lr_mult != owner.lr_mult:
        raise ParamError(f"shared param '{spec.name}' has lr_mult {spec.lr_mult} here but {owner.lr_mult} in layer "
                         f"'{owner.layer}'", field="param")
    if spec.HasField("decay_mult") and spec.decay_mult != owner.decay_mult:
        raise ParamError(f"shared param '{spec.name}' has decay_mult {spec.decay_mult} here but "
                         f"{owner.decay_mult} in layer '{owner.layer}'", field="param")
    return ParamBlob(blob.layer, blob.index, blob.role, blob.shape, owner.filler, owner.learnable, owner.lr_mult,
                     owner.decay_mult, (owner.layer, owner.index))
