"""The NetSpec builder: Caffe's own NetSpec tests (LeNet with DummyData, anonymous tops, top-less layers),
keyword routing, naming, and errors raised at the call that made them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netspec
from netspec import NetSpec
from netspec import layers as L
from netspec import params as P
from netspec._proto import netspec_pb2 as pb
from netspec.errors import SpecFieldError
from netspec.netfile import read_net

HERE = Path(__file__).name


def lenet(batch_size: int) -> NetSpec:
    """Caffe's python/caffe/test/test_net_spec.py, as written there."""
    n = NetSpec()
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
        transform_param=dict(scale=1.0 / 255),
        ntop=2,
    )
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n


def anon_lenet(batch_size: int) -> pb.NetParameter:
    data, label = L.DummyData(
        shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
        transform_param=dict(scale=1.0 / 255),
        ntop=2,
    )
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def _load(proto: pb.NetParameter, tmp_path: Path, name: str = "net.prototxt") -> netspec.Net:
    path = tmp_path / name
    path.write_text(str(proto))  # what pycaffe users write: str() of the message
    return netspec.load(str(path))


def test_caffes_lenet_builds_and_loads(tmp_path: Path) -> None:
    proto = lenet(50).to_proto()
    assert proto.layer[6].bottom == proto.layer[6].top == ["ip1"]  # relu1 is in place
    net = _load(proto, tmp_path)
    assert [i.node.name for i in net.layers] == [
        "data",
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "ip1",
        "relu1",
        "ip2",
        "loss",
    ]
    assert net.shapes["data"] == (50, 1, 28, 28) and net.shapes["ip2"] == (50, 10)
    assert net.num_params == 431_080
    assert proto.layer[0].transform_param.scale == pytest.approx(1 / 255)
    assert proto.layer[2].pooling_param.pool == pb.PoolingParameter.MAX
    assert proto.layer[1].convolution_param.weight_filler.type == "xavier"


def test_anonymous_tops_are_named_after_their_types(tmp_path: Path) -> None:
    proto = anon_lenet(50)
    assert [layer.name for layer in proto.layer] == [
        "DummyData1",
        "Convolution1",
        "Pooling1",
        "Convolution2",
        "Pooling2",
        "InnerProduct1",
        "ReLU1",
        "InnerProduct2",
        "SoftmaxWithLoss1",
    ]
    assert list(proto.layer[0].top) == ["DummyData1", "DummyData2"]
    assert proto.layer[6].bottom == proto.layer[6].top == ["InnerProduct1"]
    assert list(proto.layer[7].bottom) == ["InnerProduct1"]  # reads the blob ReLU wrote in place
    assert len(_load(proto, tmp_path).layers) == 9


def test_top_less_layers(tmp_path: Path) -> None:
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    proto = n.to_proto()
    assert [(layer.name, list(layer.top)) for layer in proto.layer] == [
        ("data", ["data", "data2"]),
        ("silence_data", []),
        ("silence_data2", []),
    ]
    assert _load(proto, tmp_path).outputs == []


def test_a_tuple_input_is_a_type_error() -> None:
    data = L.DummyData(ntop=2)
    with pytest.raises(
        TypeError,
        match=r"L\.Silence input 0 is a tuple, not a layer's output \(a Top\); pass the "
        r"tops of a call with ntop > 1 one by one: L\.Silence\(\*tops\)$",
    ):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)


def test_yaml_and_prototxt_output_load_to_the_same_net(tmp_path: Path) -> None:
    n = lenet(8)
    (tmp_path / "a.yaml").write_text(n.to_yaml())
    (tmp_path / "a.prototxt").write_text(n.to_prototxt())
    assert read_net(str(tmp_path / "a.yaml")).message == read_net(str(tmp_path / "a.prototxt")).message == n.to_proto()


def test_keywords_go_where_pycaffe_sent_them() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 8, 8]))
    n.conv = L.Convolution(
        n.data,
        num_output=4,
        kernel_size=3,
        bias_term=False,
        loss_weight=0.5,
        param=[dict(lr_mult=1, decay_mult=0)],
        include=dict(phase=netspec.TRAIN),
        propagate_down=[True],
        name="first_conv",
        convolution_param=dict(stride=2),
    )
    n.pool = L.Pooling(n.conv, pool="AVE", kernel_size=2, round_mode="FLOOR")
    n.prelu = L.PReLU(n.pool, filler=dict(type="constant", value=0.25), channel_shared=True)
    layer = n.to_proto().layer[1]
    assert layer.name == "first_conv" and list(layer.top) == ["conv"]
    assert (
        layer.convolution_param.num_output,
        list(layer.convolution_param.kernel_size),
        list(layer.convolution_param.stride),
        layer.convolution_param.bias_term,
    ) == (4, [3], [2], False)
    assert list(layer.loss_weight) == [0.5] and layer.param[0].decay_mult == 0
    assert layer.include[0].phase == pb.TRAIN and list(layer.propagate_down) == [True]
    pool, prelu = n.to_proto().layer[2], n.to_proto().layer[3]
    assert pool.pooling_param.pool == P.Pooling.AVE and pool.pooling_param.round_mode == P.Pooling.FLOOR
    assert prelu.prelu_param.filler.value == pytest.approx(0.25) and prelu.prelu_param.channel_shared


def test_netspec_accepts_names_that_are_not_identifiers(tmp_path: Path) -> None:
    n = NetSpec()
    n["data/input"] = L.Input(shape=dict(dim=[1, 4]))
    n["loss1/fc"] = L.InnerProduct(n["data/input"], num_output=2)
    assert [layer.name for layer in n.to_proto().layer] == ["data/input", "loss1/fc"]
    assert _load(n.to_proto(), tmp_path).shapes["loss1/fc"] == (1, 2)


@pytest.mark.parametrize(
    ("call", "message", "hint"),
    [
        (
            lambda x: L.Convolution(x, kernel_sise=5),
            "L.Convolution: unknown keyword 'kernel_sise'",
            "did you mean 'kernel_size'? valid keywords: axis, bias_filler, bias_term, dilation, engine, force_nd_im2col, "
            "group, kernel_h, kernel_size, kernel_w, num_output, pad, pad_h, pad_w, stride, stride_h, stride_w, "
            "weight_filler, exclude, include, loss_param, loss_weight, name, param, phase, propagate_down, "
            "transform_param",
        ),
        (
            lambda x: L.Pooling(x, pool="MAXX"),
            "L.Pooling: field 'pool' takes one of MAX, AVE, STOCHASTIC; got 'MAXX'",
            "did you mean 'MAX'?",
        ),
        (
            lambda x: L.Convolution(x, num_output=2.5),
            "L.Convolution: field 'num_output' takes a non-negative integer, got '2.5'",
            None,
        ),
        (
            lambda x: L.Convolution(x, num_output=-1),
            "L.Convolution: field 'num_output' takes a non-negative integer (0 to 4294967295); -1 is out of range",
            None,
        ),
        (
            lambda x: L.ReLU(x, negative_slope={"a": 1}),
            "L.ReLU: field 'negative_slope' takes a single value, got a message",
            None,
        ),
        (
            lambda x: L.ReLU(x, top="y"),
            "L.ReLU: 'top' is set by the builder: pass the input tops as arguments and assign "
            "the result to the NetSpec",
            None,
        ),
        (
            lambda x: L.ReLU(x, negative_slope=object()),
            "L.ReLU: keyword 'negative_slope' takes numbers, strings, booleans, dicts or lists, not a object",
            None,
        ),
        (lambda x: L.ReLU(x, ntop=-1), "L.ReLU: ntop must be a non-negative integer, got -1", None),
        (
            lambda x: L.ReLU(x, in_place=True, ntop=2),
            "L.ReLU: in_place=True writes the 1 input(s) in place, so ntop must be 1, not 2",
            None,
        ),
    ],
)
def test_mistakes_raise_at_the_call_that_made_them(call, message: str, hint: str | None) -> None:
    x = L.Input(shape=dict(dim=[1, 3, 4, 4]))
    with pytest.raises(SpecFieldError) as e:
        call(x)
    assert e.value.msg == message
    assert e.value.hint == hint
    assert e.value.loc is not None and Path(e.value.loc.file).name == HERE


def test_unknown_types_and_params() -> None:
    with pytest.raises(
        AttributeError,
        match=r"^netspec.layers has no layer type 'Convolutoin'; did you mean "
        r"'Convolution'\?$",
    ):
        L.Convolutoin  # noqa: B018
    with pytest.raises(AttributeError, match=r"^netspec.params has no 'Poolin'; did you mean 'Pooling'\?$"):
        P.Poolin  # noqa: B018
    assert (P.TRAIN, P.TEST, netspec.TRAIN, netspec.TEST) == (0, 1, 0, 1)
    assert P.Data.LMDB == pb.DataParameter.LMDB
    n = NetSpec()
    with pytest.raises(AttributeError, match="the NetSpec has no top 'dat'"):
        n.dat  # noqa: B018
    with pytest.raises(TypeError, match=r"NetSpec.data takes a layer's output \(L.<Type>\(...\)\), not a int"):
        n.data = 3


def test_building_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom netspec import NetSpec, layers as L\nn = NetSpec()\n"
        "n.x = L.Input(shape=dict(dim=[1, 2]))\nn.y = L.InnerProduct(n.x, num_output=3)\nn.to_yaml()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=40, deadline=None)
@given(
    num_output=st.integers(1, 64),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    group=st.sampled_from([1, 2]),
    bias=st.booleans(),
    slope=st.floats(-2, 2, width=32),
)
def test_builder_equals_the_written_spec(
    num_output: int, kernel: int, stride: int, pad: int, group: int, bias: bool, slope: float
) -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 4, 9, 9]))
    n.conv = L.Convolution(
        n.data, num_output=num_output * group, kernel_size=kernel, stride=stride, pad=pad, group=group, bias_term=bias
    )
    n.act = L.ReLU(n.conv, negative_slope=slope, in_place=True)
    text = (
        f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 4 dim: 9 dim: 9 }} }} }}'
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ '
        f"num_output: {num_output * group} kernel_size: {kernel} stride: {stride} pad: {pad} group: {group} "
        f"bias_term: {str(bias).lower()} }} }}"
        f'layer {{ name: "act" type: "ReLU" bottom: "conv" top: "conv" relu_param {{ negative_slope: {slope!r} }} }}'
    )
    from netspec.netfile import load_net_text

    assert n.to_proto() == load_net_text(text, "written.prototxt", "prototxt").message
