"""Property test: for every layer type and many random parameter choices, the shapes inferred before
anything runs are the shapes the lowered module produces (or the spec is refused with a NetspecError)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspec._proto import netspec_pb2 as pb
from netspec.errors import (
    DataError,
    GraphError,
    NetspecError,
    ParamError,
    ResourceError,
    ShapeError,
    SpecFieldError,
)
from netspec.layers import all_types
from netspec.layers.base import In
from netspec.shapes import check_fits, footprint
from tests.fuzz_specs import time_limit
from tests.layer_harness import load_layer, run
from tests.test_layers import NOT_RUN

Case = tuple[str, tuple[In, ...], int]  # fields, inputs, number of tops
dims = st.integers(1, 6)
small = st.integers(1, 4)


def shape(min_rank: int = 1, max_rank: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(dims, min_size=min_rank, max_size=max_rank).map(tuple)


def floats_in(rank: tuple[int, int] = (1, 4)) -> st.SearchStrategy[tuple[In, ...]]:
    return shape(*rank).map(lambda s: (In(s),))


@st.composite
def conv(draw: st.DrawFn, deconv: bool = False) -> Case:
    spatial = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2]))
    channels = group * draw(small)
    x = (draw(small), channels, *draw(st.lists(st.integers(1, 9), min_size=spatial, max_size=spatial)))
    k = draw(st.lists(st.integers(1, 4), min_size=1, max_size=1 if spatial != 2 else 2))
    fields = (
        f"convolution_param {{ num_output: {group * draw(small)} group: {group} "
        + " ".join(f"kernel_size: {v}" for v in k)
        + f" stride: {draw(st.integers(1, 3))} pad: {draw(st.integers(0, 2))} dilation: {draw(st.integers(1, 2))}"
        + f" bias_term: {str(draw(st.booleans())).lower()} }}"
    )
    return fields, (In(x),), 1


@st.composite
def pooling(draw: st.DrawFn) -> Case:
    x = (draw(small), draw(small), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    pool = draw(st.sampled_from(["MAX", "AVE"]))
    if draw(st.integers(0, 5)) == 0:
        return f"pooling_param {{ pool: {pool} global_pooling: true }}", (In(x),), 1
    k = draw(st.integers(1, 5))
    fields = (
        f"pooling_param {{ pool: {pool} kernel_size: {k} stride: {draw(st.integers(1, 4))} "
        f"pad: {draw(st.integers(0, k - 1))} round_mode: {draw(st.sampled_from(['CEIL', 'FLOOR']))} }}"
    )
    return fields, (In(x),), 2 if pool == "MAX" and draw(st.booleans()) else 1


@st.composite
def reshape(draw: st.DrawFn) -> Case:
    x = draw(shape(1, 4))
    new = draw(st.lists(st.sampled_from([-1, 0, 1, 2, 3, 4, 6]), min_size=0, max_size=3))
    fields = (
        "reshape_param { shape { " + " ".join(f"dim: {d}" for d in new) + " } "
        f"axis: {draw(st.integers(-len(x) - 1, len(x)))} num_axes: {draw(st.integers(-1, len(x)))} }}"
    )
    return fields, (In(x),), 1


@st.composite
def with_axis(draw: st.DrawFn, block: str, extra: str = "") -> Case:
    x = draw(shape(1, 4))
    return f"{block} {{ axis: {draw(st.integers(-len(x), len(x) - 1))} {extra} }}", (In(x),), 1


@st.composite
def scale_or_bias(draw: st.DrawFn, type_name: str) -> Case:
    x = draw(shape(1, 4))
    axis = draw(st.integers(0, len(x) - 1))
    block = "scale_param" if type_name == "Scale" else "bias_param"
    if draw(st.booleans()):
        operand = x[axis : axis + draw(st.integers(0, len(x) - axis))]
        return f"{block} {{ axis: {axis} }}", (In(x), In(operand or (1,))), 1
    return f"{block} {{ axis: {axis} num_axes: {draw(st.integers(-1, len(x) - axis))} }}", (In(x),), 1


@st.composite
def concat(draw: st.DrawFn) -> Case:
    x = draw(shape(1, 4))
    axis = draw(st.integers(0, len(x) - 1))
    others = [tuple(draw(dims) if i == axis else d for i, d in enumerate(x)) for _ in range(draw(st.integers(0, 2)))]
    return f"concat_param {{ axis: {axis} }}", tuple(In(s) for s in [x, *others]), 1


@st.composite
def slice_(draw: st.DrawFn) -> Case:
    x = draw(shape(1, 4))
    axis = draw(st.integers(0, len(x) - 1))
    points = sorted(draw(st.sets(st.integers(1, max(1, x[axis] - 1)), max_size=3)))
    points = [p for p in points if p < x[axis]]
    tops = len(points) + 1 if points else draw(st.integers(1, 3))
    return f"slice_param {{ axis: {axis} " + " ".join(f"slice_point: {p}" for p in points) + " }", (In(x),), tops


@st.composite
def crop(draw: st.DrawFn) -> Case:
    a = draw(shape(2, 4))
    axis = draw(st.integers(0, len(a) - 1))
    b = tuple(d if i < axis else draw(st.integers(1, d)) for i, d in enumerate(a))
    offsets = [draw(st.integers(0, a[i] - b[i])) for i in range(axis, len(a))]
    return f"crop_param {{ axis: {axis} " + " ".join(f"offset: {o}" for o in offsets) + " }", (In(a), In(b)), 1


@st.composite
def im2col(draw: st.DrawFn) -> Case:
    x = (draw(small), draw(small), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    return (
        f"convolution_param {{ kernel_size: {draw(st.integers(1, 4))} stride: {draw(st.integers(1, 3))} "
        f"pad: {draw(st.integers(0, 2))} }}",
        (In(x),),
        1,
    )


@st.composite
def neuron(draw: st.DrawFn, fields: str, kind: str = "float") -> Case:
    return fields, (In(draw(shape(1, 4)), kind),), 1


@st.composite
def recurrent(draw: st.DrawFn) -> Case:
    t, n, f = draw(small), draw(small), draw(shape(1, 2))
    static = draw(st.booleans())
    inputs = [In((t, n, *f)), In((t, n), "binary")] + ([In((n, draw(small)))] if static else [])
    return f"recurrent_param {{ num_output: {draw(small)} }}", tuple(inputs), 1


@st.composite
def label_loss(draw: st.DrawFn, fields: str = "") -> Case:
    n, c = draw(small), draw(st.integers(2, 5))
    spatial = draw(st.lists(small, max_size=2))
    return fields, (In((n, c, *spatial)), In((n, *spatial), "label", c)), 1


@st.composite
def paired(draw: st.DrawFn, kind: str = "float") -> Case:
    x = draw(shape(1, 3))
    return "", (In(x), In(x, kind)), 1


@st.composite
def argmax(draw: st.DrawFn) -> Case:
    x = draw(shape(2, 4))
    k = draw(st.integers(1, 3))
    axis = f"axis: {draw(st.integers(-len(x), len(x) - 1))}" if draw(st.booleans()) else ""
    return (f"argmax_param {{ top_k: {k} out_max_val: {str(draw(st.booleans())).lower()} {axis} }}", (In(x),), 1)


@st.composite
def spp(draw: st.DrawFn) -> Case:
    x = (draw(small), draw(small), draw(st.integers(1, 14)), draw(st.integers(1, 14)))
    return (
        f"spp_param {{ pyramid_height: {draw(st.integers(1, 4))} pool: {draw(st.sampled_from(['MAX', 'AVE']))} }}",
        (In(x),),
        1,
    )


STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "Convolution": conv,
    "Deconvolution": lambda: conv(deconv=True),
    "Pooling": pooling,
    "Im2col": im2col,
    "SPP": spp,
    "Crop": crop,
    "Reshape": reshape,
    "Concat": concat,
    "Slice": slice_,
    "Scale": lambda: scale_or_bias("Scale"),
    "Bias": lambda: scale_or_bias("Bias"),
    "InnerProduct": lambda: with_axis("inner_product_param", "num_output: 3 transpose: true"),
    "Maxout": lambda: with_axis("maxout_param", "num_output: 2 num_pieces: 3"),
    "Softmax": lambda: with_axis("softmax_param"),
    "Tile": lambda: with_axis("tile_param", "tiles: 2"),
    "Reduction": lambda: with_axis("reduction_param", "operation: SUMSQ"),
    "Flatten": lambda: with_axis("flatten_param"),
    "LayerNorm": lambda: with_axis("layer_norm_param"),
    "ArgMax": argmax,
    "RNN": recurrent,
    "LSTM": recurrent,
    "SoftmaxWithLoss": label_loss,
    "Accuracy": lambda: label_loss("accuracy_param { top_k: 2 }"),
    "EuclideanLoss": paired,
    "L1Loss": paired,
    "SigmoidCrossEntropyLoss": lambda: paired("binary"),
    "CrossEntropyLoss": lambda: paired("prob"),
    "Eltwise": lambda: paired(),
    "Log": lambda: neuron("", "positive"),
    "Power": lambda: neuron("power_param { power: 2 shift: 1 }"),
}


def strategy_for(type_name: str) -> st.SearchStrategy[Case]:
    if type_name in STRATEGIES:
        return STRATEGIES[type_name]()
    # the rest vary the input shape around their own examples
    examples = all_types()[type_name].examples
    return st.sampled_from(examples).flatmap(
        lambda ex: st.builds(
            lambda scale: (
                ex.fields,
                tuple(
                    In(tuple(max(1, d * scale) if i == 0 else d for i, d in enumerate(s.shape)), s.kind, s.high)
                    for s in ex.inputs
                ),
                ex.tops,
            ),
            st.integers(1, 3),
        )
    )


TYPES = sorted(t for t, d in all_types().items() if not (d.feeds or d.opaque or t in NOT_RUN))


@pytest.mark.parametrize("type_name", TYPES)
def test_inferred_shapes_hold_for_random_parameters(type_name: str) -> None:
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy_for(type_name))
    def check(case: Case) -> None:
        fields, inputs, tops = case
        try:
            net = load_layer(type_name, fields, inputs, tops)
        except NetspecError:
            return  # a refused spec is a valid outcome; the property is about accepted ones
        _, _, blobs = run(net, inputs)
        info = net.layer("under_test")
        for top, inferred in zip(info.node.tops, info.top_shapes, strict=True):
            got = tuple(blobs[top].shape)
            if info.node.definition.data_dependent:
                assert got[1:] == inferred[1:] and got[0] <= inferred[0]
            else:
                assert got == inferred, (fields, [i.shape for i in inputs])

    check()


# ---- degenerate inputs: every shape rule answers, fast, with a shape or a located refusal ---------------

# Values that break careless rules: zero, negative, one past int32, and far beyond memory. A rule doing
# O(values) work (a list per output position) on 2^40 runs out the hang guard instead of finishing.
HUGE = (2**31, 2**40)
GROWTH = 2**20  # an example's shapes this much larger still relate as they did, with 2^40 values or more
DEGENERATE_INTS = {
    FD.TYPE_INT32: [0, 1, 2, 3, -1, -(2**31), 2**31 - 1],
    FD.TYPE_UINT32: [0, 1, 2, 3, 2**31, 2**32 - 1],
    FD.TYPE_INT64: [0, 1, 2, -1, -2, *HUGE],
    FD.TYPE_UINT64: [0, 1, 2, *HUGE],
}
DEGENERATE_FLOATS = [0.0, 1.0, -1.0, 0.5, 2.0, 1e-30, 1e30, -1e30, 3e38]
# SpecFieldError: a required field left out; DataError: a data layer's source is missing
REFUSALS = (ShapeError, ParamError, GraphError, DataError, SpecFieldError)
HANG_GUARD_S = 5  # a thousand times a real rule's time; short enough that an O(values) rule stays within memory


def hang_guard() -> AbstractContextManager[None]:
    """Interrupts a shape rule doing O(values) work instead of O(axes), with the fuzzer's SIGALRM limit (its
    CaseTimeout is a BaseException, so no `except Exception` in the code under test stops it)."""
    return time_limit(HANG_GUARD_S)


def degenerate_dims() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, 4), st.sampled_from([0, *HUGE]))


def degenerate_shape() -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(degenerate_dims(), min_size=0, max_size=5).map(tuple)


@st.composite
def mutated_shape(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that works for the layer, made degenerate: no axes, one axis zero or huge, every axis
    2^20 times larger, one axis dropped or added."""
    edit = draw(st.sampled_from(["scalar", "dim", "grow", "drop", "add", "keep"]))
    if edit == "scalar":
        return ()
    if edit == "grow":
        return tuple(d * GROWTH for d in shape)
    if edit == "keep" or not shape:
        return shape
    i = draw(st.integers(0, len(shape) - 1))
    if edit == "dim":
        return (*shape[:i], draw(st.sampled_from([0, *HUGE])), *shape[i + 1 :])
    if edit == "drop":
        return shape[:i] + shape[i + 1 :]
    return (*shape[:i], draw(degenerate_dims()), *shape[i:])


def field_value(f: Any) -> st.SearchStrategy[Any] | None:
    """Degenerate values for one field of a parameter message (None: a field left alone)."""
    if f.type in DEGENERATE_INTS:
        return st.sampled_from(DEGENERATE_INTS[f.type])
    if f.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return st.sampled_from(DEGENERATE_FLOATS)
    if f.type == FD.TYPE_BOOL:
        return st.booleans()
    if f.type == FD.TYPE_ENUM:
        return st.sampled_from([v.number for v in list(f.enum_type.values)])
    return None  # strings (paths) and sub-messages: their rules live elsewhere


def _set(message: Any, f: Any, values: list[Any]) -> None:
    if f.type == FD.TYPE_MESSAGE and f.message_type.name == "BlobShape":
        message.ClearField(f.name)
        for dims in values:
            (getattr(message, f.name).add() if f.is_repeated else getattr(message, f.name)).dim[:] = dims
    elif f.is_repeated:
        getattr(message, f.name)[:] = values
    else:
        setattr(message, f.name, values[0])


@st.composite
def degenerate_case(draw: st.DrawFn, type_name: str) -> Case:
    """A layer's own example (or random bottoms) with degenerate bottoms and up to three parameters set
    to degenerate values."""
    d = all_types()[type_name]
    if d.examples and draw(st.booleans()):
        ex = draw(st.sampled_from(d.examples))
        lp = text_format.Parse(ex.fields, pb.LayerParameter())
        shapes = [draw(mutated_shape(i.shape)) for i in ex.inputs]
        tops = ex.tops
    else:
        lp = pb.LayerParameter()
        most = d.bottoms.max if d.bottoms.max is not None else d.bottoms.min + 2
        shapes = draw(st.lists(degenerate_shape(), min_size=d.bottoms.min, max_size=min(most, d.bottoms.min + 2)))
        most = d.tops.max if d.tops.max is not None else d.tops.min + 2
        tops = draw(st.integers(d.tops.min, min(most, d.tops.min + 2)))
    if d.param_field:
        p = getattr(lp, d.param_field)
        for f in draw(st.lists(st.sampled_from(list(p.DESCRIPTOR.fields)), max_size=3, unique_by=lambda f: f.name)):
            if f.type == FD.TYPE_MESSAGE and f.message_type.name == "BlobShape":
                _set(p, f, draw(st.lists(degenerate_shape(), min_size=1, max_size=2 if f.is_repeated else 1)))
            elif (values := field_value(f)) is not None:
                _set(p, f, draw(st.lists(values, min_size=int(not f.is_repeated), max_size=3 if f.is_repeated else 1)))
    return text_format.MessageToString(lp, as_one_line=True), tuple(In(s) for s in shapes), tops


EXAMPLES = [(t, i) for t, d in sorted(all_types().items()) for i in range(len(d.examples))]


@pytest.mark.parametrize(("type_name", "index"), EXAMPLES, ids=[f"{t}-{i}" for t, i in EXAMPLES])
def test_shape_rules_of_huge_examples_finish(type_name: str, index: int) -> None:
    """Every example with every axis 2^20 times larger: inferred from the axes alone, or refused."""
    ex = all_types()[type_name].examples[index]
    inputs = tuple(In(tuple(d * GROWTH for d in i.shape), i.kind, i.high) for i in ex.inputs)
    with hang_guard():
        try:
            net = load_layer(type_name, ex.fields, inputs, ex.tops)
        except REFUSALS:
            return
    assert all(s is None or _whole(s) for s in net.layer("under_test").top_shapes)


def _whole(shape: tuple[int, ...]) -> bool:
    return all(type(d) is int and d >= 1 for d in shape)


@pytest.mark.parametrize("type_name", sorted(all_types()))
def test_shape_rules_answer_degenerate_inputs(type_name: str) -> None:
    """0-axis, zero-size and huge bottoms, zero/negative/huge parameters: inference gives shapes of
    positive ints (and blobs, MACs and a memory footprint) or refuses with a layer error, and never
    works per value."""

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(degenerate_case(type_name))
    def check(case: Case) -> None:
        fields, inputs, tops = case
        with hang_guard():
            try:
                net = load_layer(type_name, fields, inputs, tops)
            except REFUSALS as e:
                assert e.layer is not None and e.loc is not None, str(e)  # located by the driver
                return
            info = net.layer("under_test")
            assert all(s is None or _whole(s) for s in info.top_shapes), info.top_shapes
            assert all(_whole(b.shape) for b in info.blobs), [b.shape for b in info.blobs]
            assert type(info.macs) is int and info.macs >= 0
            fp = footprint(net.layers)
            assert fp is None or fp.total_bytes > 0
            try:
                check_fits(net.graph, net.layers)
            except ResourceError as e:
                assert e.layer is not None and e.loc is not None, str(e)

    check()
