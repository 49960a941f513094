"""`netspec.load`: a spec file to a checked, shape-inferred net, in pure Python (no torch)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from netspec._proto import netspec_pb2 as pb
from netspec.errors import NetspecError, SpecFieldError
from netspec.graph import Graph, NetState, build_graph, stale_reads
from netspec.layers.base import Shape
from netspec.netfile import read_net
from netspec.shapes import LayerInfo, infer_shapes
from netspec.spec.load import SpecFile
from netspec.spec.upgrade import SourcedLayer, upgrade_net


@dataclass
class Net:
    """A checked net for one phase: its layers with their shapes, and every blob's shape.

    Attributes:
        shapes: every blob's shape (an in-place blob's last value).
        inputs: the blobs fed from outside, with their shapes: Input tops, and the tops of data layers
            (which the solver fills from their sources).
        outputs: the blobs no later layer consumes, sorted by name (Caffe's net outputs).
        num_params: elements in all parameter blobs (shared blobs counted once).
        warnings: problems that do not stop the net from running (e.g. weights that all start equal).
    """

    name: str
    state: NetState
    spec: SpecFile
    layers: list[LayerInfo]
    shapes: dict[str, Shape]
    inputs: dict[str, Shape]
    outputs: list[str]
    graph: Graph
    warnings: list[NetspecError] = field(default_factory=list)

    @property
    def phase(self) -> str:
        return self.state.phase_name

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    @property
    def num_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def id_bounds(self) -> dict[str, int]:
        """Blobs that a layer reads as integer ids (an Embed's), with the bound their values stay below, so
        that made-up inputs (for timing, for export) hold valid ids rather than random floats."""
        out: dict[str, int] = {}
        for info in self.layers:
            node = info.node
            for i, bound in node.definition.int_inputs(node.spec, info.bottom_shapes).items():  # type: ignore[arg-type]
                out[node.bottoms[i]] = min(bound, out.get(node.bottoms[i], bound))
        return out

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.node.name == name:
                return info
        raise KeyError(name)


def _phase(phase: str | int | None, spec: SpecFile) -> int:
    if phase is None:
        net = spec.message
        return int(net.state.phase) if net.HasField("state") else pb.TEST
    if isinstance(phase, int):
        return phase
    try:
        return int(pb.Phase.Value(phase.upper()))
    except ValueError:
        raise SpecFieldError(f"unknown phase '{phase}'; use TRAIN or TEST") from None


def net_state(spec: SpecFile, phase: str | int | None, stages: Iterable[str], level: int | None) -> NetState:
    """The state to instantiate a net in: the arguments, else the spec's own `state`, else TEST."""
    own = spec.message.state
    return NetState(
        _phase(phase, spec), own.level if level is None else level, tuple(stages) if stages else tuple(own.stage)
    )


def load(
    path: str,
    phase: str | int | None = None,
    stages: Iterable[str] = (),
    level: int | None = None,
    shapes: dict[str, Shape] | None = None,
) -> Net:
    """Parses a spec, builds its graph for a phase and infers every blob's shape. Never imports torch.

    Args:
        path: a .prototxt/.pbtxt or .yaml/.yml net.
        phase: TRAIN or TEST; by default the spec's `state { phase }`, else TEST.
        stages: the NetState stages for include/exclude rules.
        level: the NetState level.
        shapes: shapes for data-layer tops, used instead of reading the first record of their sources
            (for checking a net whose data is not at hand).

    Raises:
        NetspecError: with the file, line and layer of the first problem found.
    """
    return build_net(read_net(path), phase, stages, level, shapes)


def build_net(
    spec: SpecFile,
    phase: str | int | None = None,
    stages: Iterable[str] = (),
    level: int | None = None,
    shapes: dict[str, Shape] | None = None,
) -> Net:
    """A Net from an already-read spec."""
    net_param, layers = upgrade_net(spec.message, spec.smap)
    return net_from_layers(spec, net_param.name, layers, net_state(spec, phase, stages, level), shapes)


def net_from_layers(
    spec: SpecFile, name: str, layers: list[SourcedLayer], state: NetState, fed: dict[str, Shape] | None = None
) -> Net:
    graph = build_graph(name, layers, state, spec.smap, spec.base_dir, spec.stored)
    infos, shapes = infer_shapes(graph, fed)
    # the shapes the feeding layers give, not the blobs' last values: an opaque layer in place on an input
    # leaves its last shape unknown
    inputs = {
        top: shape
        for info in infos
        if info.node.definition.feeds
        for top, shape in zip(info.node.tops, info.top_shapes, strict=True)
        if shape is not None
    }
    net = Net(name, state, spec, infos, shapes, inputs, graph.outputs, graph)
    net.warnings.extend(_warnings(net))
    return net


def _warnings(net: Net) -> list[NetspecError]:
    """Layers netspec cannot run, and training hazards (which a TEST net, a deploy net whose weights come
    from a file, does not have)."""
    out: list[NetspecError] = []
    for info in net.layers:
        node = info.node
        if node.definition.opaque:
            out.append(
                NetspecError(
                    "warning: netspec never runs code named in a spec, so this net can be "
                    "checked but not compiled or trained; the shapes of its tops are unknown",
                    loc=node.loc,
                    layer=node.name,
                    layer_type=node.type,
                )
            )
    if net.state.phase != pb.TRAIN:
        return out
    hidden = _hidden_layers(net)
    for name, by in stale_reads(net.graph).items():
        node = next(n for n in net.graph.nodes if n.name == name)
        top = node.tops[0]
        if by == name:
            why = (
                f"it runs in place on '{top}', and its backward pass reads '{top}', which then holds "
                "its output, not its input"
            )
        else:
            why = f"layer '{by}' overwrites '{top}' in place before this layer's backward pass reads it"
        out.append(
            NetspecError(
                f"warning: {why}; like Caffe, netspec then computes a gradient that is not the true one",
                loc=node.loc,
                layer=node.name,
                layer_type=node.type,
                hint=f"give {'this layer' if by == name else repr(by)} a new top blob to get the true gradient",
            )
        )
    for info in net.layers:
        node = info.node
        for blob in info.blobs:
            weights = blob.role == "weight" or blob.role.startswith("W_")
            if (
                weights
                and node.name in hidden
                and blob.owner is None
                and blob.lr_mult != 0
                and blob.filler.type == "constant"
                and len(blob.shape) >= 2
                and blob.shape[0] > 1
            ):
                out.append(
                    NetspecError(
                        f"warning: its {blob.role} blob starts as the constant {blob.filler.value:g} (a constant "
                        f"filler, which is also Caffe's default when none is given), so all {blob.shape[0]} units "
                        "start equal and learn the same thing",
                        loc=node.loc,
                        layer=node.name,
                        layer_type=node.type,
                        hint='set a random filler, e.g. weight_filler { type: "xavier" }',
                    )
                )
    return out


def _hidden_layers(net: Net) -> set[str]:
    """Layers whose output reaches a later layer with learned parameters: hidden layers, whose units
    stay alike if they start alike (an output layer's units do not: each has its own target)."""
    feeds_learning: set[str] = set()  # blobs that reach a layer with learned parameters
    hidden = set()
    for info in reversed(net.layers):
        node = info.node
        if any(t in feeds_learning for t in node.tops):
            hidden.add(node.name)
        if any(t in feeds_learning for t in node.tops) or any(b.lr_mult != 0 for b in info.blobs):
            feeds_learning.update(node.bottoms)
    return hidden


def has_phase_rules(spec: pb.NetParameter) -> bool:
    """Whether some layer is included or excluded by a rule, so that the phases may differ."""
    return any(layer.include or layer.exclude for layer in (*spec.layer, *spec.layers))
