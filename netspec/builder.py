"""The NetSpec builder: writing a net in Python the way pycaffe's `caffe.NetSpec` did.

    from netspec import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64])], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label)
    print(n.to_yaml())          # or n.to_proto() (a NetParameter), n.to_prototxt()

Keyword arguments go where pycaffe sent them: names ending in `param` and LayerParameter's own fields
(loss_weight, include, propagate_down, ...) to the layer; the rest to the layer type's parameter message
(`convolution_param` for Convolution). Unlike pycaffe, each call is checked at once against the schema,
through the same code that reads spec files, so a misspelt keyword or a bad enum name fails on the line
that wrote it, with the valid names. Names follow pycaffe: a layer is named after its first top, the
attribute it was assigned to; unassigned tops are named after their type (Convolution1, ...).
"""

from __future__ import annotations

import numbers
import sys
from collections import Counter
from types import FrameType
from typing import Any

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SourceLoc, SpecFieldError, did_you_mean
from netspec.layers import get
from netspec.spec.build import BuildOptions, SourceMap, build_message
from netspec.spec.tree import Mapping, Node, Scalar, Sequence

_LAYER_FIELDS = pb.LayerParameter.DESCRIPTOR.fields_by_name
_SET_BY_BUILDER = {"bottom", "top", "type"}
_GENERAL_PARAMS = {"transform_param", "loss_param"}  # LayerParameter's messages for every layer type
_OPTIONS = BuildOptions(quotes_mark_strings=False)


class Top:
    """One output of a layer call. Assigning it to a NetSpec attribute names it."""

    def __init__(self, fn: Function, index: int) -> None:
        self.fn, self.index = fn, index

    def to_proto(self) -> pb.NetParameter:
        """The net of every layer this top is computed from."""
        return to_proto(self)

    def __repr__(self) -> str:
        return f"<Top {self.index} of {self.fn.type_name}>"


class Function:
    """A layer call: its type, its inputs, and its parameters, checked when the call is made."""

    def __init__(self, type_name: str, inputs: tuple[object, ...], params: dict[str, Any]) -> None:
        loc = _caller()
        self.type_name = type_name
        tops = []
        for i, x in enumerate(inputs):
            if not isinstance(x, Top):  # a TypeError, as in pycaffe
                unpack = (
                    f"; pass the tops of a call with ntop > 1 one by one: L.{type_name}(*tops)"
                    if isinstance(x, tuple)
                    else ""
                )
                raise TypeError(
                    f"{loc}: L.{type_name} input {i} is a {type(x).__name__}, not a layer's output (a Top){unpack}"
                )
            tops.append(x)
        self.inputs = tuple(tops)
        ntop = params.pop("ntop", 1)
        self.in_place = bool(params.pop("in_place", False))
        if not isinstance(ntop, int) or isinstance(ntop, bool) or ntop < 0:
            raise SpecFieldError(f"L.{type_name}: ntop must be a non-negative integer, got {ntop!r}", loc=loc)
        if self.in_place and ntop != len(inputs):
            raise SpecFieldError(
                f"L.{type_name}: in_place=True writes the {len(inputs)} input(s) in place, so "
                f"ntop must be {len(inputs)}, not {ntop}",
                loc=loc,
            )
        self.layer = _layer_message(type_name, params, loc)
        self.tops = tuple(Top(self, i) for i in range(ntop))

    def to_proto(
        self, layers: dict[Function, pb.LayerParameter], names: dict[object, str], autonames: Counter[str]
    ) -> None:
        """Adds this layer (after the layers it reads from) to `layers`."""
        if self in layers:
            return
        bottoms = []
        for x in self.inputs:
            x.fn.to_proto(layers, names, autonames)
            bottoms.append(layers[x.fn].top[x.index])
        layer = pb.LayerParameter()
        layer.CopyFrom(self.layer)
        layer.bottom.extend(bottoms)
        layer.top.extend(bottoms if self.in_place else [_top_name(t, names, autonames) for t in self.tops])
        if not layer.name:
            if self not in names:
                if self.tops:
                    names[self] = _top_name(self.tops[0], names, autonames)
                else:
                    autonames[self.type_name] += 1
                    names[self] = f"{self.type_name}{autonames[self.type_name]}"
            layer.name = names[self]
        layers[self] = layer


def _top_name(top: Top, names: dict[object, str], autonames: Counter[str]) -> str:
    if top not in names:
        autonames[top.fn.type_name] += 1
        names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
    return names[top]


def to_proto(*tops: Top | Function) -> pb.NetParameter:
    """The net of every layer the given tops are computed from (pycaffe's `caffe.to_proto`)."""
    layers: dict[Function, pb.LayerParameter] = {}
    autonames: Counter[str] = Counter()
    for t in tops:
        (t.fn if isinstance(t, Top) else t).to_proto(layers, {}, autonames)
    return _net(layers)


def _net(layers: dict[Function, pb.LayerParameter]) -> pb.NetParameter:
    net = pb.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops, in the order they were assigned; `to_proto()` makes the net of them."""

    tops: dict[str, Top | Function]

    def __init__(self) -> None:
        super().__setattr__("tops", {})

    def __setattr__(self, name: str, value: Top | Function) -> None:
        if not isinstance(value, (Top, Function)):
            raise TypeError(f"NetSpec.{name} takes a layer's output (L.<Type>(...)), not a {type(value).__name__}")
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top | Function:
        try:
            return self.tops[name]
        except KeyError:
            hint = did_you_mean(name, self.tops)
            raise AttributeError(f"the NetSpec has no top '{name}'" + (f"; {hint}" if hint else "")) from None

    __setitem__ = __setattr__
    __getitem__ = __getattr__

    def to_proto(self) -> pb.NetParameter:
        names: dict[object, str] = {v: k for k, v in self.tops.items()}
        layers: dict[Function, pb.LayerParameter] = {}
        autonames: Counter[str] = Counter()
        for value in self.tops.values():
            (value.fn if isinstance(value, Top) else value).to_proto(layers, names, autonames)
        return _net(layers)

    def to_prototxt(self) -> str:
        from netspec.spec.emit import to_prototxt

        return to_prototxt(self.to_proto())

    def to_yaml(self) -> str:
        from netspec.netfile import to_yaml

        return to_yaml(self.to_proto())


def layer_function(type_name: str) -> Any:
    """`L.<type_name>`: a function making a layer call of that type."""
    definition = get(type_name)

    def call(*inputs: Top, **params: Any) -> Top | tuple[Top, ...] | Function:
        fn = Function(definition.type, inputs, params)
        if not fn.tops:
            return fn
        return fn.tops[0] if len(fn.tops) == 1 else fn.tops

    call.__name__ = call.__qualname__ = type_name
    call.__doc__ = (
        f"A {type_name} layer reading the given tops; keywords are its parameters (see `netspec layers "
        f"{type_name}`), plus ntop= and in_place=."
    )
    return call


def _layer_message(type_name: str, params: dict[str, Any], loc: SourceLoc) -> pb.LayerParameter:
    """The LayerParameter of a call, with each keyword sent where pycaffe sent it, checked by the spec reader."""
    definition = get(type_name)
    own = _LAYER_FIELDS[definition.param_field].message_type.fields_by_name if definition.param_field else {}
    layer_items: list[tuple[str, SourceLoc, Node]] = [("type", loc, Scalar(type_name, True, loc))]
    own_items: list[tuple[str, SourceLoc, Node]] = []
    for key, value in params.items():
        node = _node(value, key, loc, type_name)
        if key in _SET_BY_BUILDER:
            raise SpecFieldError(
                f"L.{type_name}: '{key}' is set by the builder: pass the input tops as arguments "
                "and assign the result to the NetSpec",
                loc=loc,
            )
        if key.endswith("param") or (key not in own and key in _LAYER_FIELDS):
            layer_items.append((key, loc, node))
        elif key in own:
            own_items.append((key, loc, node))
        else:
            general = {f for f in _LAYER_FIELDS if not f.endswith("_param") or f in _GENERAL_PARAMS}
            valid = sorted(own) + sorted(general - _SET_BY_BUILDER - {"blobs"})
            hint = did_you_mean(key, [*own, *_LAYER_FIELDS])
            raise SpecFieldError(
                f"L.{type_name}: unknown keyword '{key}'",
                loc=loc,
                hint=(hint + " " if hint else "") + "valid keywords: " + ", ".join(valid),
            )
    if own_items and definition.param_field:
        given = next((n for k, _, n in layer_items if k == definition.param_field and isinstance(n, Mapping)), None)
        if given is not None:  # convolution_param=dict(...) and kernel_size=... together make one message
            given.items.extend(own_items)
        else:
            layer_items.append((definition.param_field, loc, Mapping(loc, own_items)))
    layer = pb.LayerParameter()
    try:
        build_message(Mapping(loc, layer_items), layer, SourceMap(loc.file), _OPTIONS)
    except SpecFieldError as e:
        e.msg = f"L.{type_name}: {e.msg}"
        raise e from None
    return layer


def _node(value: Any, key: str, loc: SourceLoc, type_name: str) -> Node:
    """A keyword's Python value as a spec tree node, so that the spec reader checks it."""
    if isinstance(value, bool):
        return Scalar("true" if value else "false", False, loc)
    if isinstance(value, numbers.Integral):
        return Scalar(str(int(value)), False, loc)
    if isinstance(value, numbers.Real):
        return Scalar(repr(float(value)), False, loc)
    if isinstance(value, str):
        return Scalar(value, True, loc)
    if isinstance(value, dict):
        return Mapping(loc, [(str(k), loc, _node(v, k, loc, type_name)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return Sequence(loc, [_node(v, key, loc, type_name) for v in value])
    raise SpecFieldError(
        f"L.{type_name}: keyword '{key}' takes numbers, strings, booleans, dicts or lists, not a "
        f"{type(value).__name__}",
        loc=loc,
    )


def _caller() -> SourceLoc:
    """The user's line that made the layer call (the first frame outside netspec's builder)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return SourceLoc(frame.f_code.co_filename, frame.f_lineno) if frame is not None else SourceLoc("<python>", 1)
