"""Property test: for every layer type and many random parameter choices, the shapes inferred before
anything runs are the shapes the lowered module produces (or the spec is refused with a NetspecError)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspec.errors import NetspecError
from netspec.layers import all_types
from netspec.layers.base import In
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
    fields = (f"convolution_param {{ num_output: {group * draw(small)} group: {group} "
              + " ".join(f"kernel_size: {v}" for v in k)
              + f" stride: {draw(st.integers(1, 3))} pad: {draw(st.integers(0, 2))} dilation: {draw(st.integers(1, 2))}"
              + f" bias_term: {str(draw(st.booleans())).lower()} }}")
    return fields, (In(x),), 1


@st.composite
def pooling(draw: st.DrawFn) -> Case:
    x = (draw(small), draw(small), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    pool = draw(st.sampled_from(["MAX", "AVE"]))
    if draw(st.integers(0, 5)) == 0:
        return f"pooling_param {{ pool: {pool} global_pooling: true }}", (In(x),), 1
    k = draw(st.integers(1, 5))
    fields = (f"pooling_param {{ pool: {pool} kernel_size: {k} stride: {draw(st.integers(1, 4))} "
              f"pad: {draw(st.integers(0, k - 1))} round_mode: {draw(st.sampled_from(['CEIL', 'FLOOR']))} }}")
    return fields, (In(x),), 2 if pool == "MAX" and draw(st.booleans()) else 1


@st.composite
def reshape(draw: st.DrawFn) -> Case:
    x = draw(shape(1, 4))
    new = draw(st.lists(st.sampled_from([-1, 0, 1, 2, 3, 4, 6]), min_size=0, max_size=3))
    fields = ("reshape_param { shape { " + " ".join(f"dim: {d}" for d in new) + " } "
              f"axis: {draw(st.integers(-len(x) - 1, len(x)))} num_axes: {draw(st.integers(-1, len(x)))} }}")
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
        operand = x[axis:axis + draw(st.integers(0, len(x) - axis))]
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
    return (f"convolution_param {{ kernel_size: {draw(st.integers(1, 4))} stride: {draw(st.integers(1, 3))} "
            f"pad: {draw(st.integers(0, 2))} }}", (In(x),), 1)


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
    return (f"spp_param {{ pyramid_height: {draw(st.integers(1, 4))} pool: {draw(st.sampled_from(['MAX', 'AVE']))} }}",
            (In(x),), 1)


STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "Convolution": conv, "Deconvolution": lambda: conv(deconv=True), "Pooling": pooling, "Im2col": im2col,
    "SPP": spp, "Crop": crop, "Reshape": reshape, "Concat": concat, "Slice": slice_,
    "Scale": lambda: scale_or_bias("Scale"), "Bias": lambda: scale_or_bias("Bias"),
    "InnerProduct": lambda: with_axis("inner_product_param", "num_output: 3 transpose: true"),
    "Maxout": lambda: with_axis("maxout_param", "num_output: 2 num_pieces: 3"),
    "Softmax": lambda: with_axis("softmax_param"), "Tile": lambda: with_axis("tile_param", "tiles: 2"),
    "Reduction": lambda: with_axis("reduction_param", "operation: SUMSQ"),
    "Flatten": lambda: with_axis("flatten_param"), "LayerNorm": lambda: with_axis("layer_norm_param"),
    "ArgMax": argmax, "RNN": recurrent, "LSTM": recurrent,
    "SoftmaxWithLoss": label_loss, "Accuracy": lambda: label_loss("accuracy_param { top_k: 2 }"),
    "EuclideanLoss": paired, "L1Loss": paired, "SigmoidCrossEntropyLoss": lambda: paired("binary"),
    "CrossEntropyLoss": lambda: paired("prob"), "Eltwise": lambda: paired(),
    "Log": lambda: neuron("", "positive"), "Power": lambda: neuron("power_param { power: 2 shift: 1 }"),
}


def strategy_for(type_name: str) -> st.SearchStrategy[Case]:
    if type_name in STRATEGIES:
        return STRATEGIES[type_name]()
    # the rest vary the input shape around their own examples
    examples = all_types()[type_name].examples
    return st.sampled_from(examples).flatmap(lambda ex: st.builds(
        lambda scale: (ex.fields, tuple(In(tuple(max(1, d * scale) if i == 0 else d for i, d in enumerate(s.shape)),
                                           s.kind, s.high) for s in ex.inputs), ex.tops),
        st.integers(1, 3)))


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
