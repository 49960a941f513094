"""Utility layers: joining, splitting and reshaping blobs, reductions, Softmax and ArgMax."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from netspec._proto import netspec_pb2 as pb
from netspec.errors import ParamError, ShapeError
from netspec.layers.base import (
    NONE,
    ONE,
    Arity,
    BlobDef,
    Example,
    Forward,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    as_ids,
    at_least_axes,
    canonical_axis,
    count,
    describe_bottoms,
    fmt,
    require,
    shape_of,
)
from netspec.layers.registry import register

if TYPE_CHECKING:
    import torch

_X = (In((2, 6, 3, 2)),)


def _legacy_axis(s: LayerSpec, legacy: str) -> int:
    """`axis`, or the deprecated non-negative spelling (concat_dim, slice_dim); not both."""
    p = s.p
    if p.HasField(legacy):
        require(not p.HasField("axis"), f"give axis or the deprecated {legacy}, not both", legacy)
        return int(getattr(p, legacy))
    return int(p.axis)


@register
class Concat(LayerDef):
    """Joins its bottoms along `axis`; every other axis must agree.

    layer { name: "concat" type: "Concat" bottom: "a" bottom: "b" top: "ab" concat_param { axis: 1 } }
    """

    type = "Concat"
    onnx_ops = frozenset({"Concat", "Identity"})
    param_field = "concat_param"
    bottoms = Arity(1, None)
    examples = (
        Example("", (In((2, 3, 4)), In((2, 5, 4)))),
        Example("concat_param { axis: 0 }", (In((2, 3)), In((1, 3)), In((4, 3)))),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        first = bottoms[0]
        axis = canonical_axis(_legacy_axis(s, "concat_dim"), len(first))
        total = 0
        for i, b in enumerate(bottoms):
            if len(b) != len(first) or b[:axis] != first[:axis] or b[axis + 1 :] != first[axis + 1 :]:
                raise ShapeError(
                    f"bottom {i} {fmt(b)} does not match bottom 0 {fmt(first)} on the axes other than {axis}",
                    hint=describe_bottoms(s, bottoms),
                )
            total += b[axis]
        return [(*first[:axis], total, *first[axis + 1 :])]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        axis = canonical_axis(_legacy_axis(s, "concat_dim"), len(bottoms[0]))
        if len(bottoms) == 1:
            return lambda params, xs: [xs[0]]
        return lambda params, xs: [torch.cat(list(xs), axis)]


@register
class Slice(LayerDef):
    """Splits its bottom along `axis` at the slice points (or into equal parts) into its tops.

    layer { name: "slice" type: "Slice" bottom: "pair" top: "a" top: "b"
            slice_param { axis: 1 slice_point: 1 } }
    """

    type = "Slice"
    onnx_ops = frozenset({"Slice", "Split"})
    param_field = "slice_param"
    tops = Arity(1, None)
    examples = (
        Example("slice_param { axis: 1 slice_point: 1 slice_point: 4 }", _X, tops=3),
        Example("slice_param { axis: -1 }", _X, tops=2),
    )

    def _sizes(self, s: LayerSpec, b: Shape) -> tuple[int, list[int]]:
        axis = canonical_axis(_legacy_axis(s, "slice_dim"), len(b))
        dim, n, points = b[axis], s.num_tops, list(s.p.slice_point)
        if points:
            if len(points) != n - 1:
                raise ParamError(f"{len(points)} slice_point values for {n} tops; give {n - 1}", field="slice_point")
            edges = [0, *points, dim]
            if any(a >= c for a, c in itertools.pairwise(edges)):
                raise ShapeError(
                    f"slice points {points} must increase strictly within the axis size {dim}", field="slice_point"
                )
            return axis, [c - a for a, c in itertools.pairwise(edges)]
        if dim % n:
            raise ShapeError(
                f"axis {axis} of size {dim} cannot be split evenly into {n} tops", hint="give slice_point values"
            )
        return axis, [dim // n] * n

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        axis, sizes = self._sizes(s, b)
        return [(*b[:axis], size, *b[axis + 1 :]) for size in sizes]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        axis, sizes = self._sizes(s, bottoms[0])
        return lambda params, xs: list(torch.split(xs[0], sizes, axis))


@register
class Split(LayerDef):
    """Copies its bottom to every top (Caffe inserts these itself where a blob feeds several layers).

    layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" }
    """

    type = "Split"
    onnx_ops = frozenset({"Identity"})
    no_in_place = True
    tops = Arity(1, None)
    examples = (Example("", _X, tops=2),)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return [bottoms[0]] * s.num_tops

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        n = s.num_tops
        return lambda params, xs: [xs[0]] * n


@register
class Eltwise(LayerDef):
    """Elementwise product, (weighted) sum or maximum of bottoms of one shape.

    layer { name: "res" type: "Eltwise" bottom: "a" bottom: "b" top: "res" eltwise_param { operation: SUM } }
    """

    type = "Eltwise"
    onnx_ops = frozenset({"Add", "Max", "Mul", "Sub"})
    param_field = "eltwise_param"
    bottoms = Arity(2, None)
    examples = (
        Example("eltwise_param { operation: PROD }", (In((2, 3, 4)), In((2, 3, 4)), In((2, 3, 4)))),
        Example("eltwise_param { operation: SUM coeff: 1 coeff: -0.5 }", (In((2, 3)), In((2, 3)))),
        Example("eltwise_param { operation: MAX }", (In((2, 3)), In((2, 3)))),
    )

    def check(self, s: LayerSpec) -> None:
        p = s.p
        if p.coeff:
            require(p.operation == p.SUM, "coeff applies only to operation SUM", "coeff")
            require(
                len(p.coeff) == s.num_bottoms,
                f"{len(p.coeff)} coeff values for {s.num_bottoms} bottoms; give one per bottom",
                "coeff",
            )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        for i, b in enumerate(bottoms[1:], 1):
            if b != bottoms[0]:
                raise ShapeError(
                    f"bottom {i} {fmt(b)} differs from bottom 0 {fmt(bottoms[0])}; Eltwise needs equal shapes",
                    hint=describe_bottoms(s, bottoms),
                )
        return [bottoms[0]]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        p = s.p
        if p.operation == p.PROD:

            def prod(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
                y = xs[0]
                for x in xs[1:]:
                    y = y * x
                return [y]

            return prod
        if p.operation == p.MAX:

            def maximum(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
                y = xs[0]
                for x in xs[1:]:
                    y = torch.maximum(y, x)
                return [y]

            return maximum
        coeffs = list(p.coeff) or [1.0] * len(bottoms)

        def total(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            y = xs[0] if coeffs[0] == 1 else xs[0] * coeffs[0]
            for c, x in zip(coeffs[1:], xs[1:], strict=True):
                y = y + (x if c == 1 else x * c)
            return [y]

        return total


@register
class Flatten(LayerDef):
    """Flattens the axes axis..end_axis into one.

    layer { name: "flat" type: "Flatten" bottom: "pool2" top: "flat" }
    """

    type = "Flatten"
    onnx_ops = frozenset({"Reshape"})
    param_field = "flatten_param"
    no_in_place = True
    examples = (Example("", _X), Example("flatten_param { axis: 1 end_axis: 2 }", _X))

    def _axes(self, s: LayerSpec, b: Shape) -> tuple[int, int]:
        start = canonical_axis(s.p.axis, len(b))
        end = canonical_axis(s.p.end_axis, len(b), "end_axis")
        if end < start:
            raise ShapeError(f"end_axis {end} comes before axis {start}", field="end_axis")
        return start, end

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        start, end = self._axes(s, b)
        return [(*b[:start], count(b, start, end + 1), *b[end + 1 :])]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        start, end = self._axes(s, bottoms[0])
        return lambda params, xs: [xs[0].flatten(start, end)]


def reshape_dims(s: LayerSpec, b: Shape) -> tuple[int, int, list[int]]:
    """Caffe's Reshape rule: the replaced axis range [start, end) and the new dims (0 copies, -1 infers)."""
    p = s.p
    ndim = len(b)
    if p.axis < 0:
        start = ndim + p.axis + 1
        require(start >= 0, f"axis {p.axis} is out of range for a {ndim}-axis bottom", "axis")
    else:
        start = p.axis
        require(start <= ndim, f"axis {p.axis} is out of range for a {ndim}-axis bottom", "axis")
    require(p.num_axes >= -1, "num_axes must be -1 (to the end) or non-negative", "num_axes")
    end = ndim if p.num_axes == -1 else start + p.num_axes
    require(end <= ndim, f"axis {start} with num_axes {p.num_axes} reaches past the {ndim}-axis bottom", "num_axes")
    dims = [int(d) for d in p.shape.dim]
    require(dims.count(-1) <= 1, "at most one dim may be -1", "shape")
    require(all(d >= -1 for d in dims), f"dims must be -1, 0 or positive, got {dims}", "shape")
    return start, end, dims


@register
class Reshape(LayerDef):
    """Replaces the axes [axis, axis + num_axes) with `shape`; a dim of 0 copies the bottom's dim at that
    place, one dim of -1 takes what is left.

    layer { name: "rs" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } } }
    """

    type = "Reshape"
    onnx_ops = frozenset({"Reshape"})
    param_field = "reshape_param"
    no_in_place = True
    examples = (
        Example("reshape_param { shape { dim: 0 dim: 2 dim: -1 } }", _X),
        Example("reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 }", _X),
        Example("reshape_param { shape { dim: -1 dim: 2 } axis: -2 }", _X),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        start, end, dims = reshape_dims(s, b)
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(b):
                    raise ShapeError(
                        f"dim 0 at position {i} copies axis {start + i}, which the bottom {fmt(b)} does not have",
                        field="shape",
                    )
                new.append(b[start + i])
            else:
                new.append(d)
        if -1 in new:
            known = count(b[:start]) * count(b[end:]) * count([d for d in new if d != -1])
            if known == 0 or count(b) % known:
                raise ShapeError(
                    f"cannot reshape {fmt(b)} with dims {dims}: {count(b)} elements do not divide evenly", field="shape"
                )
            new[new.index(-1)] = count(b) // known
        top = (*b[:start], *new, *b[end:])
        if count(top) != count(b):
            raise ShapeError(
                f"cannot reshape {fmt(b)} ({count(b)} elements) to {fmt(top)} ({count(top)} elements)", field="shape"
            )
        return [top]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        start, end, dims = reshape_dims(s, bottoms[0])

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0]
            new = [x.shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
            return [x.reshape((*x.shape[:start], *new, *x.shape[end:]))]

        return forward


@register
class Tile(LayerDef):
    """Repeats its bottom `tiles` times along `axis` (each block of the axes from `axis` on is copied).

    layer { name: "tile" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 } }
    """

    type = "Tile"
    onnx_ops = frozenset({"Expand", "Tile"})
    param_field = "tile_param"
    examples = (Example("tile_param { axis: 1 tiles: 3 }", _X), Example("tile_param { axis: -1 tiles: 2 }", _X))

    def check(self, s: LayerSpec) -> None:
        require(s.p.tiles > 0, "tiles must be set to a positive number", "tiles")

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        axis = canonical_axis(s.p.axis, len(b))
        return [(*b[:axis], b[axis] * s.p.tiles, *b[axis + 1 :])]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        axis = canonical_axis(s.p.axis, len(bottoms[0]))
        reps = [1] * len(bottoms[0])
        reps[axis] = s.p.tiles
        return lambda params, xs: [xs[0].repeat(reps)]


@register
class Reduction(LayerDef):
    """Reduces the axes from `axis` on by SUM, ASUM (sum of |x|), SUMSQ or MEAN, times coeff; the top
    keeps the axes before `axis` (a scalar for axis 0).

    layer { name: "sum" type: "Reduction" bottom: "x" top: "s" reduction_param { operation: SUM axis: 1 } }
    """

    type = "Reduction"
    onnx_ops = frozenset({"Abs", "Mul", "ReduceMean", "ReduceSum", "Reshape"})
    param_field = "reduction_param"
    examples = tuple(
        Example(f"reduction_param {{ operation: {op} axis: {ax} coeff: 0.5 }}", _X)
        for op, ax in (("SUM", 0), ("ASUM", 1), ("SUMSQ", -1), ("MEAN", 2))
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        return [b[: canonical_axis(s.p.axis, len(b))]]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        p = s.p
        axis = canonical_axis(p.axis, len(bottoms[0]))
        dims = list(range(axis, len(bottoms[0])))
        op, coeff = p.operation, p.coeff

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0]
            if op == p.ASUM:
                x = x.abs()
            elif op == p.SUMSQ:
                x = x * x
            y = x.mean(dims) if op == p.MEAN else x.sum(dims)
            return [y if coeff == 1 else y * coeff]

        return forward


@register
class ArgMax(LayerDef):
    """Indices (and with out_max_val, values) of the top_k largest entries: along `axis`, or, without an
    axis, over each item's flattened values (top (N, 1, top_k), or (N, 2, top_k) with the values).

    layer { name: "argmax" type: "ArgMax" bottom: "prob" top: "pred" argmax_param { axis: 1 } }
    """

    type = "ArgMax"
    onnx_ops = frozenset({"Cast", "Concat", "Reshape", "TopK"})
    param_field = "argmax_param"
    examples = (
        Example("argmax_param { top_k: 2 }", _X, gradcheck=False),
        Example("argmax_param { axis: 1 top_k: 3 out_max_val: true }", _X, gradcheck=False),
        Example("argmax_param { top_k: 2 out_max_val: true }", (In((3, 5)),), gradcheck=False),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b, p = bottoms[0], s.p
        require(p.top_k >= 1, "top_k must be at least 1", "top_k")
        if p.HasField("axis"):
            axis = canonical_axis(p.axis, len(b))
            if p.top_k > b[axis]:
                raise ShapeError(f"top_k {p.top_k} exceeds the size {b[axis]} of axis {axis}", field="top_k")
            return [(*b[:axis], p.top_k, *b[axis + 1 :])]
        at_least_axes(b, 1, "(N, ...) when no axis is given")
        if p.top_k > count(b, 1):
            raise ShapeError(f"top_k {p.top_k} exceeds the {count(b, 1)} values of each item", field="top_k")
        shape = [1] * max(len(b), 3)
        shape[0], shape[1], shape[2] = b[0], 2 if p.out_max_val else 1, p.top_k
        return [tuple(shape)]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        p = s.p
        k, with_values, top = p.top_k, p.out_max_val, tops[0]
        if p.HasField("axis"):
            axis = canonical_axis(p.axis, len(bottoms[0]))

            def along(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
                values, idx = torch.topk(xs[0].detach(), k, axis)
                return [values if with_values else idx.to(xs[0].dtype)]

            return along

        per_item = count(bottoms[0], 1)  # 1 for an (N,) bottom, which flatten(1) would refuse

        def flattened(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            values, idx = torch.topk(xs[0].detach().reshape(xs[0].shape[0], per_item), k, 1)
            out = torch.cat([idx.to(values.dtype), values], 1) if with_values else idx.to(values.dtype)
            return [out.reshape((xs[0].shape[0], *top[1:]))]

        return flattened


@register
class Softmax(LayerDef):
    """exp(x) normalised to sum 1 along `axis`.

    layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
    """

    type = "Softmax"
    onnx_ops = frozenset({"Softmax"})
    param_field = "softmax_param"
    examples = (Example("", _X), Example("softmax_param { axis: 2 }", _X))

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        canonical_axis(s.p.axis, len(bottoms[0]))
        return [bottoms[0]]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        axis = canonical_axis(s.p.axis, len(bottoms[0]))
        return lambda params, xs: [torch.softmax(xs[0], axis)]


@register
class Silence(LayerDef):
    """Consumes blobs so that they are not net outputs; computes nothing.

    layer { name: "silence" type: "Silence" bottom: "label" }
    """

    type = "Silence"
    train_only = True
    bottoms = Arity(1, None)
    tops = NONE
    examples = (Example("", _X, tops=0),)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return []

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        return lambda params, xs: []


@register
class Filter(LayerDef):
    """Keeps the items (along axis 0) whose selector (the last bottom) is non-zero, in every other
    bottom. The number of items kept depends on the data: the inferred size is the upper bound.

    layer { name: "filter" type: "Filter" bottom: "x" bottom: "keep" top: "x_kept" }
    """

    type = "Filter"
    onnx_ops = frozenset(
        {
            "Equal",
            "Expand",
            "GatherND",
            "Max",
            "NonZero",
            "Not",
            "Reshape",
            "Shape",
            "Squeeze",
            "Transpose",
            "Unsqueeze",
        }
    )
    bottoms = Arity(2, None)
    tops = Arity(1, None)
    data_dependent = True
    examples = (Example("", (In((2, 3)), In((2,), "binary")), gradcheck=False),)

    def check(self, s: LayerSpec) -> None:
        require(
            s.num_tops == s.num_bottoms - 1,
            f"Filter has one top per bottom except the selector: {s.num_bottoms - 1} tops, got {s.num_tops}",
            "top",
        )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        for i, b in enumerate(bottoms):
            at_least_axes(b, 1, "(N, ...): Filter keeps items along axis 0", f"bottom {i}")
        selector = bottoms[-1]
        if count(selector, 1) != 1:
            raise ShapeError(f"the selector (last bottom) must hold one value per item, got {fmt(selector)}")
        for i, b in enumerate(bottoms[:-1]):
            if b[:1] != selector[:1]:
                raise ShapeError(f"bottom {i} {fmt(b)} and the selector {fmt(selector)} differ in axis 0")
        return list(bottoms[:-1])

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            keep = xs[-1].reshape(-1) != 0
            return [x[keep] for x in xs[:-1]]

        return forward


@register
class BatchReindex(LayerDef):
    """Gathers items of bottom 0 by the indices in bottom 1: top[i] = bottom0[index[i]].

    layer { name: "reindex" type: "BatchReindex" bottom: "x" bottom: "order" top: "y" }
    """

    type = "BatchReindex"
    onnx_ops = frozenset({"Cast", "GatherND", "Unsqueeze"})
    bottoms = Arity(2, 2)
    examples = (Example("", (In((4, 3)), In((6,), "label", 4))), Example("", (In((2, 3)), In((2,), "label", 2))))

    def int_inputs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> dict[int, int]:
        return {1: bottoms[0][0]}

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        x, index = bottoms
        at_least_axes(x, 1, "(N, ...): items are gathered along axis 0", "bottom 0")
        if len(index) != 1:
            raise ShapeError(f"the index bottom must have one axis, got {fmt(index)}")
        return [(index[0], *x[1:])]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        what = f"index bottom '{s.lp.bottom[1]}'"
        return lambda params, xs: [xs[0][as_ids(xs[1], xs[0].shape[0], what, "the items of bottom 0")]]


@register
class Parameter(LayerDef):
    """A learned blob of the given shape as the layer's only top.

    layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 10 dim: 3 } } }
    """

    type = "Parameter"
    onnx_ops = frozenset({"Constant"})
    param_field = "parameter_param"
    bottoms = NONE
    tops = ONE
    examples = (Example("parameter_param { shape { dim: 3 dim: 2 } }", ()),)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return [shape_of(s.p.shape, "shape")]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        return [BlobDef("value", shape_of(s.p.shape, "shape"), pb.FillerParameter(type="constant", value=0))]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        return lambda params, xs: [params[0]]


@register
class Python(LayerDef):
    """Caffe's Python layer, whose computation is Python code named in the spec. netspec never imports
    or runs such code, so it cannot know what the layer computes: `netspec check` accepts the layer and
    reports its tops' shapes as unknown (an error only where a later layer needs them), and compiling
    the net is an error. Replace the layer with built-in ones to run the net.

    layer { name: "loss" type: "Python" bottom: "pred" bottom: "label" top: "loss"
            python_param { module: "pyloss" layer: "EuclideanLossLayer" } loss_weight: 1 }
    """

    type = "Python"
    param_field = "python_param"
    bottoms = Arity(0, None)
    tops = Arity(0, None)
    opaque = True

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        raise AssertionError("an opaque layer has no shape rule")  # the driver never calls it

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        raise ParamError(
            f"netspec never runs code named in a spec, so it cannot run this Python layer ({s.p.module}.{s.p.layer})",
            field="python_param",
            hint="replace it with built-in layers (`netspec layers` lists them)",
        )
