"""Shape inference follows Caffe's rules exactly; parameter counts match Caffe's for well-known nets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import netspec
from netspec.errors import ShapeError
from tests import zoo


def test_alexnet(write_spec: Callable[..., str]) -> None:
    net = netspec.load(write_spec(zoo.alexnet()))
    assert net.num_params == 60_965_224
    assert [net.shapes[b] for b in ("conv1", "pool1", "conv2", "pool2", "pool5", "fc6", "prob")] == [
        (10, 96, 55, 55),
        (10, 96, 27, 27),
        (10, 256, 27, 27),
        (10, 256, 13, 13),
        (10, 256, 6, 6),
        (10, 4096),
        (10, 1000),
    ]


def test_googlenet_pools_round_up(write_spec: Callable[..., str]) -> None:
    net = netspec.load(write_spec(zoo.googlenet()))
    assert net.num_params == 6_998_552
    assert net.shapes["pool1"] == (10, 64, 56, 56)
    assert net.shapes["inception_3b/output"] == (10, 480, 28, 28)
    assert net.shapes["inception_4e/output"] == (10, 832, 14, 14)
    assert net.shapes["inception_5b/output"] == (10, 1024, 7, 7)
    assert net.shapes["pool5"] == (10, 1024, 1, 1)


def test_googlenet_with_floor_rounding_breaks_where_caffe_says(write_spec: Callable[..., str]) -> None:
    with pytest.raises(ShapeError) as e:
        netspec.load(write_spec(zoo.googlenet(round_mode="FLOOR")))
    assert e.value.layer == "pool5"
    assert e.value.msg == "kernel 7x7 is larger than the padded input 6x6"


def test_cifar10_quick(write_spec: Callable[..., str]) -> None:
    net = netspec.load(write_spec(zoo.cifar10_quick()))
    assert net.num_params == 145_578
    assert [net.shapes[b][2] for b in ("pool1", "pool2", "pool3")] == [16, 8, 4]


def one_layer(write_spec: Callable[..., str], bottom: tuple[int, ...], layer: str, tops: int = 1) -> tuple:
    dims = " ".join(f"dim: {d}" for d in bottom)
    top = " ".join(f'top: "t{i}"' for i in range(tops))
    net = netspec.load(
        write_spec(
            f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'
            f'layer {{ name: "l" bottom: "x" {top} {layer} }}'
        )
    )
    return tuple(net.shapes[f"t{i}"] for i in range(tops))


@pytest.mark.parametrize(
    ("bottom", "layer", "top"),
    [
        # pooling: rounds up; with padding the last window must start inside the input and its left pad
        ((1, 1, 13, 13), 'type: "Pooling" pooling_param { kernel_size: 3 stride: 2 }', (1, 1, 6, 6)),
        ((1, 1, 6, 6), 'type: "Pooling" pooling_param { kernel_size: 2 stride: 2 pad: 1 }', (1, 1, 4, 4)),
        ((1, 1, 5, 5), 'type: "Pooling" pooling_param { kernel_size: 3 stride: 2 pad: 1 }', (1, 1, 3, 3)),
        ((1, 1, 7, 7), 'type: "Pooling" pooling_param { kernel_size: 2 stride: 2 round_mode: FLOOR }', (1, 1, 3, 3)),
        ((1, 1, 7, 7), 'type: "Pooling" pooling_param { kernel_size: 2 stride: 2 ceil_mode: false }', (1, 1, 3, 3)),
        ((1, 1, 7, 7), 'type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }', (1, 1, 4, 4)),
        ((1, 1, 5, 5), 'type: "Pooling" pooling_param { kernel_size: 1 stride: 3 }', (1, 1, 3, 3)),
        ((2, 3, 5, 7), 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }', (2, 3, 1, 1)),
        (
            (1, 1, 6, 9),
            'type: "Pooling" pooling_param { kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2 }',
            (1, 1, 2, 5),
        ),
        # convolution and deconvolution
        (
            (1, 3, 10, 10),
            'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 dilation: 2 stride: 2 pad: 1 }',
            (1, 4, 4, 4),
        ),
        (
            (1, 4, 5, 6),
            'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 }',
            (1, 2, 10, 12),
        ),
        (
            (1, 21, 7, 7),
            'type: "Deconvolution" convolution_param { num_output: 21 group: 21 kernel_size: 4 stride: 2 '
            "bias_term: false }",
            (1, 21, 16, 16),
        ),
        ((2, 3, 8), 'type: "Convolution" convolution_param { num_output: 5 kernel_size: 3 }', (2, 5, 6)),
        # InnerProduct flattens the axes from `axis` on
        ((2, 3, 4, 5), 'type: "InnerProduct" inner_product_param { num_output: 7 }', (2, 7)),
        ((2, 3, 4, 5), 'type: "InnerProduct" inner_product_param { num_output: 7 axis: 2 }', (2, 3, 7)),
        # Reshape: 0 copies, -1 infers; the examples of Caffe's own documentation
        ((2, 8), 'type: "Reshape" reshape_param { shape { dim: 0 dim: 2 dim: -1 } }', (2, 2, 4)),
        ((2, 8), 'type: "Reshape" reshape_param { shape { dim: 1 } num_axes: 0 }', (1, 2, 8)),
        ((2, 8), 'type: "Reshape" reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 }', (2, 1, 8)),
        ((2, 3, 4, 5), 'type: "Reshape" reshape_param { shape { dim: -1 } axis: -3 }', (2, 3, 20)),
        ((2, 3, 4, 5), 'type: "Reshape" reshape_param { shape { dim: 1 } axis: -1 }', (2, 3, 4, 5, 1)),
        # Flatten, Crop, Tile, Reduction, ArgMax, SPP, Embed, Im2col
        ((2, 3, 4, 5), 'type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', (2, 12, 5)),
        ((2, 3, 4, 5), 'type: "Tile" tile_param { axis: -1 tiles: 3 }', (2, 3, 4, 15)),
        ((2, 3, 4, 5), 'type: "Reduction" reduction_param { axis: 2 }', (2, 3)),
        ((2, 3, 4, 5), 'type: "Reduction"', ()),
        ((2, 3, 4, 5), 'type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', (2, 2, 2, 1)),
        ((2, 10), 'type: "ArgMax"', (2, 1, 1)),
        ((2, 3, 4, 5), 'type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', (2, 2, 4, 5)),
        ((2, 3, 13, 13), 'type: "SPP" spp_param { pyramid_height: 3 }', (2, 63)),
        ((2, 7), 'type: "Embed" embed_param { input_dim: 10 num_output: 4 }', (2, 7, 4)),
        ((2, 3, 6, 6), 'type: "Im2col" convolution_param { kernel_size: 3 stride: 1 }', (2, 27, 4, 4)),
    ],
)
def test_caffe_shape_rules(write_spec: Callable[..., str], bottom: tuple, layer: str, top: tuple) -> None:
    assert one_layer(write_spec, bottom, layer) == (top,)


def test_slices_and_concat(write_spec: Callable[..., str]) -> None:
    assert one_layer(
        write_spec, (2, 6, 3), 'type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 4 }', tops=3
    ) == ((2, 1, 3), (2, 3, 3), (2, 2, 3))
    assert one_layer(write_spec, (2, 6), 'type: "Slice" slice_param { slice_dim: 1 }', tops=2) == ((2, 3), (2, 3))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            'type: "Convolution" convolution_param { num_output: 2 kernel_size: 7 }',
            "kernel 7x7 (dilation 1x1, pad 0x0) does not fit the input's spatial size 5x5 on spatial axis 0",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 group: 2 }',
            "input channels (3) must be divisible by group (2)",
        ),
        ('type: "Pooling" pooling_param { kernel_size: 3 pad: 3 }', "pad 3x3 must be smaller than the kernel 3x3"),
        (
            'type: "Pooling" pooling_param { kernel_size: 3 kernel_h: 2 kernel_w: 2 }',
            "give either kernel_size or kernel_h and kernel_w, not both",
        ),
        (
            'type: "Reshape" reshape_param { shape { dim: 7 dim: -1 } }',
            "cannot reshape (2, 3, 5, 5) with dims [7, -1]: 150 elements do not divide evenly",
        ),
        ('type: "Slice" slice_param { axis: 1 }', "axis 1 of size 3 cannot be split evenly into 2 tops"),
        (
            'type: "InnerProduct" inner_product_param { num_output: 2 axis: 4 }',
            "axis 4 is out of range for a 4-axis bottom (valid: -4 to 3)",
        ),
        ('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', "end_axis 1 comes before axis 2"),
    ],
)
def test_shape_errors(write_spec: Callable[..., str], layer: str, message: str) -> None:
    with pytest.raises(netspec.NetspecError) as e:
        one_layer(write_spec, (2, 3, 5, 5), layer, tops=2 if "Slice" in layer else 1)
    assert e.value.msg == message
    assert e.value.layer == "l"
