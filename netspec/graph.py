"""The static graph: the layers kept for a phase, in file order, joined by named blobs.

Building it applies Caffe's include/exclude rules, resolves every bottom to an earlier top (in-place
layers rewrite a blob under the same name), and decides the net's inputs and outputs as Caffe does.
Errors name the file, line and layer, with the closest blob or field as a hint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netspec._proto import netspec_pb2 as pb
from netspec.errors import GraphError, NetspecError, ParamError, SourceLoc, did_you_mean
from netspec.layers import get as get_layer
from netspec.layers.base import LayerDef, LayerSpec
from netspec.spec.build import Path, SourceMap
from netspec.spec.upgrade import SourcedLayer

if TYPE_CHECKING:
    from netspec.data.datasets import Statistics

_LAYER_FIELDS = set(pb.LayerParameter.DESCRIPTOR.fields_by_name)


@dataclass(frozen=True)
class NetState:
    """Where the net is instantiated: Caffe's NetState."""

    phase: int = pb.TEST
    level: int = 0
    stages: tuple[str, ...] = ()

    @property
    def phase_name(self) -> str:
        return pb.Phase.Name(self.phase)


@dataclass(frozen=True)
class Node:
    """One layer of the graph, with its definition and where it was written."""

    name: str
    type: str
    definition: LayerDef
    spec: LayerSpec
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    loss_weights: tuple[float, ...]
    loc: SourceLoc
    path: Path

    @property
    def lp(self) -> pb.LayerParameter:
        return self.spec.lp

    def field_loc(self, smap: SourceMap, field: str | None) -> SourceLoc:
        """Where a field of this layer was written: `field` is relative to the layer's own parameter
        message (kernel_size), or to the layer when it is a layer field or a dotted path (top,
        transform_param.mean_value)."""
        if not field:
            return self.loc
        parts = field.split(".")
        if parts[0] not in _LAYER_FIELDS and self.definition.param_field:
            parts.insert(0, self.definition.param_field)
        for n in range(len(parts), 0, -1):  # the field, else the nearest enclosing field written
            loc = smap.locs.get((*self.path, *parts[:n]))
            if loc is not None:
                return loc
        return self.loc

    def error_context(self, e: NetspecError, smap: SourceMap) -> NetspecError:
        """Adds this layer's name, type and the location of the offending field to an error."""
        return e.at(self.field_loc(smap, e.field), self.name, self.type)


@dataclass
class Graph:
    """The layers of one phase in execution order, and the net's inputs and outputs."""

    name: str
    state: NetState
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    smap: SourceMap


def stale_reads(graph: Graph) -> dict[str, str]:
    """Neuron layers whose Caffe backward pass reads a blob that has changed by then in a way that
    changes the gradient: a later layer overwrote it in place (a Dropout after a ReLU does not matter),
    or the layer ran in place and its own output changes its gradient. Maps the layer to the one that
    overwrote the blob (itself in the second case)."""
    out = {}
    for i, node in enumerate(graph.nodes):
        d = node.definition
        if not d.reads_blobs_in_backward():
            continue
        read = {node.bottoms[0], node.tops[0]}
        writers = [n for n in graph.nodes[i + 1 :] if read.intersection(n.tops)]
        if writers:
            harmless = all(
                w.definition.keeps_values(w.spec) or (d.reads_only_sign(node.spec) and w.definition.keeps_sign(w.spec))
                for w in writers
            )
            if not harmless:
                out[node.name] = writers[0].name
        elif node.bottoms[0] == node.tops[0] and not d.inplace_exact(node.spec):
            out[node.name] = node.name
    return out


def meets_rule(state: NetState, rule: pb.NetStateRule) -> bool:
    """Caffe's StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    return all(s in state.stages for s in rule.stage) and not any(s in state.stages for s in rule.not_stage)


def included(layer: pb.LayerParameter, state: NetState) -> bool:
    """Caffe's FilterNet for one layer: include rules keep it when one is met, exclude rules drop it."""
    if layer.include:
        return any(meets_rule(state, r) for r in layer.include)
    return not any(meets_rule(state, r) for r in layer.exclude)


def build_graph(
    name: str,
    layers: Sequence[SourcedLayer],
    state: NetState,
    smap: SourceMap,
    base_dir: str,
    stored: Mapping[str, Statistics] | None = None,
) -> Graph:
    """Filters the layers for `state` and wires them; raises a located NetspecError on any mistake.
    `stored`: a trained model's statistics by data top (SpecFile.stored), handed to the layers feeding them."""
    nodes: list[Node] = []
    producers: dict[str, Node | None] = {}  # blob -> the node that last wrote it
    dropped_tops: dict[str, pb.LayerParameter] = {}  # blobs produced only by layers this phase leaves out
    seen_names: dict[str, SourceLoc] = {}
    for sl in layers:
        lp, path = sl.param, sl.path
        loc = smap.find(path)
        if lp.include and lp.exclude:
            raise GraphError(
                "a layer may have include rules or exclude rules, not both", loc=loc, layer=lp.name, layer_type=lp.type
            )
        if not included(lp, state):
            for top in lp.top:
                dropped_tops.setdefault(top, lp)
            continue
        try:
            definition = get_layer(lp.type)
        except NetspecError as e:
            raise e.at(smap.find((*path, "type")), lp.name, lp.type) from None
        if not lp.name:
            raise GraphError(
                "the layer has no name",
                loc=loc,
                layer_type=lp.type,
                hint="give every layer a unique name (weights are matched to layers by name)",
            )
        seen_names.setdefault(lp.name, loc)
        if definition.loss and not lp.top:  # Caffe gives a loss without tops an anonymous one
            lp.top.append(lp.name if lp.name not in producers else f"{lp.name} (automatic)")
        phase = lp.phase if lp.HasField("phase") else state.phase
        kept = (stored or {}).get(lp.top[0]) if definition.feeds and lp.top else None
        spec = LayerSpec(lp, definition.params(lp), phase, base_dir, kept)
        node = Node(
            lp.name,
            lp.type,
            definition,
            spec,
            tuple(lp.bottom),
            tuple(lp.top),
            _loss_weights(lp, definition),
            loc,
            path,
        )
        try:
            _check_counts(node)
            _wire(node, producers, dropped_tops, state)
            definition.check(spec)
        except NetspecError as e:
            raise node.error_context(e, smap) from None
        nodes.append(node)
    inputs = [t for n in nodes if n.definition.feeds for t in n.tops]
    return Graph(name, state, nodes, inputs, final_blobs(nodes), smap)


def final_blobs(nodes: Sequence[Node]) -> list[str]:
    """Caffe's net outputs: the blobs whose last value no later layer reads (an in-place layer reads its
    blob and writes it again), sorted by name."""
    available: set[str] = set()
    for node in nodes:
        available.difference_update(node.bottoms)
        available.update(node.tops)
    return sorted(available)


def _loss_weights(lp: pb.LayerParameter, d: LayerDef) -> tuple[float, ...]:
    if lp.loss_weight:
        return tuple(lp.loss_weight)
    if d.loss and lp.top:
        return (1.0,) + (0.0,) * (len(lp.top) - 1)
    return (0.0,) * len(lp.top)


def _check_counts(node: Node) -> None:
    d, lp = node.definition, node.lp
    for what, arity, n in (("bottom", d.bottoms, len(node.bottoms)), ("top", d.tops, len(node.tops))):
        if not arity.accepts(n):
            raise GraphError(f"{node.type} takes {arity} {what}{'' if arity.max == 1 else 's'}, got {n}", field=what)
    if lp.loss_weight and len(lp.loss_weight) != len(node.tops):
        raise ParamError(
            f"{len(lp.loss_weight)} loss_weight values for {len(node.tops)} tops; give one per top", field="loss_weight"
        )
    if lp.propagate_down and len(lp.propagate_down) != len(node.bottoms):
        raise ParamError(
            f"{len(lp.propagate_down)} propagate_down values for {len(node.bottoms)} bottoms; give one per bottom",
            field="propagate_down",
        )


def _wire(
    node: Node, producers: dict[str, Node | None], dropped_tops: dict[str, pb.LayerParameter], state: NetState
) -> None:
    for bottom in node.bottoms:
        if bottom not in producers:
            raise GraphError(
                f"unknown bottom blob '{bottom}'",
                field="bottom",
                hint=_unknown_blob_hint(bottom, producers, dropped_tops, state),
            )
    for i, top in enumerate(node.tops):
        in_place = i < len(node.bottoms) and node.bottoms[i] == top
        if in_place:
            if node.definition.no_in_place:
                raise GraphError(
                    f"{node.type} cannot run in place (top '{top}' is also its bottom)",
                    field="top",
                    hint="give the top a new name",
                )
        elif top in node.bottoms:
            raise GraphError(
                f"top '{top}' is bottom {node.bottoms.index(top)} of this layer but top {i}; in-place "
                "tops must sit at the same position as their bottom",
                field="top",
            )
        elif top in producers:
            first = producers[top]
            by = f" by layer '{first.name}' (line {first.loc.line})" if first else ""
            raise GraphError(
                f"top blob '{top}' is already produced{by}",
                field="top",
                hint="to compute in place, give the same blob as bottom and top at the same "
                "position; otherwise rename the top",
            )
        producers[top] = node


def _unknown_blob_hint(
    blob: str, producers: dict[str, Node | None], dropped_tops: dict[str, pb.LayerParameter], state: NetState
) -> str:
    if blob in dropped_tops:
        layer = dropped_tops[blob]
        stages = sorted({st for rule in layer.include for st in rule.stage})
        need = f" (its include rules name the stage(s) {', '.join(stages)}: try --stage)" if stages else ""
        where = f"the {state.phase_name} phase" + (f" with stages {', '.join(state.stages)}" if state.stages else "")
        return f"it is produced by layer '{layer.name}', which the include/exclude rules leave out of {where}{need}"
    known = list(producers)
    hint = did_you_mean(blob, known) or ""
    listing = ", ".join(known[-12:]) if known else "none"
    return (hint + " " if hint else "") + f"blobs defined so far: {listing}"
