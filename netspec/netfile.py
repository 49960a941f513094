"""Net spec files, read and written with YAML's conveniences for layer wiring: `top` defaults to the
layer's name and `bottom` to the first top of the previous layer that has one.

Reading applies them; writing (netspec convert) leaves out exactly what reading would put back, so a
round trip gives an equal message. Which layers take bottoms or give tops is their type's arity, so this
sits above both the syntax (`spec`) and the layer types (`layers`), which do not import each other.
"""

from __future__ import annotations

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SourceLoc, SpecSyntaxError
from netspec.layers import all_types
from netspec.spec.build import SourceMap
from netspec.spec.emit import Wiring, yaml_text
from netspec.spec.load import PROTOTXT, YAML, SpecFile, is_solver, parse_net, parse_tree, read_tree
from netspec.spec.tree import Mapping


def net_from_tree(tree: Mapping, path: str, fmt: str) -> SpecFile:
    """A net spec from its syntax tree, with YAML's wiring defaults filled in; `path` names it in messages."""
    spec = parse_net(tree, path, fmt)
    if fmt == YAML:
        fill_yaml_defaults(spec.message, spec.smap)
    return spec


def load_net_text(text: str, path: str, fmt: str) -> SpecFile:
    """A net spec from text; `path` names it in messages."""
    return net_from_tree(parse_tree(text, path, fmt), path, fmt)


def read_net(path: str) -> SpecFile:
    """A net spec from a file."""
    fmt, tree = read_tree(path)
    if fmt == PROTOTXT and is_solver(tree):
        raise SpecSyntaxError(
            f"'{path}' is a solver, not a net",
            loc=SourceLoc(path, 1),
            hint="give the net file it names (net: ...), or use `netspec train`",
        )
    return net_from_tree(tree, path, fmt)


def to_yaml(net: pb.NetParameter) -> str:
    """A net as YAML text, without the tops and bottoms reading it would fill in."""
    return yaml_text(net, wiring_defaults(net))


def _layer_defaults(layer: pb.LayerParameter, previous: str | None) -> tuple[Wiring, Wiring]:
    """The top and bottom YAML would fill in for this layer (None: it fills in nothing)."""
    d = all_types().get(layer.type)
    if d is None:  # an unknown type is reported later; guessing its wiring would only confuse that
        return None, None
    top = [layer.name] if d.tops.max != 0 and layer.name else None
    bottom = [previous] if d.bottoms.min > 0 and previous is not None else None
    return top, bottom


def fill_yaml_defaults(net: pb.NetParameter, smap: SourceMap) -> None:
    """Adds the default top and bottom to YAML layers that do not give them."""
    previous: str | None = None
    for i, layer in enumerate(net.layer):
        top, bottom = _layer_defaults(layer, previous)
        if top is not None and ("layer", i, "top") not in smap.locs:
            layer.top.extend(top)
        if bottom is not None and ("layer", i, "bottom") not in smap.locs:
            layer.bottom.extend(bottom)
        if layer.top:
            previous = layer.top[0]


def wiring_defaults(net: pb.NetParameter) -> list[tuple[Wiring, Wiring]]:
    """For each layer of a complete net, the (top, bottom) that reading YAML would fill in."""
    out = []
    previous: str | None = None
    for layer in net.layer:
        out.append(_layer_defaults(layer, previous))
        if layer.top:
            previous = layer.top[0]
    return out
