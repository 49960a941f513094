"""Brings legacy forms of a net up to the current one, as Caffe's upgrade_proto does on load.

The message a user wrote is kept as written (so `netspec convert` is lossless); this module makes the
normalised copy that the graph is built from: V1 `layers` become `layer`, the deprecated `input:`
declarations become an Input layer, the forks' `ceil_mode` becomes `round_mode`, and transformation
fields given in a data layer's own parameters move to `transform_param`.
"""

from __future__ import annotations

from dataclasses import dataclass

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SpecFieldError
from netspec.spec.build import Path, SourceMap

_V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}
# Parameter messages a V1 layer may carry; they have the same names in the current form.
_V1_PARAMS = [f.name for f in pb.V1LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param") and f.name != "layer"]
_DATA_PARAMS = ("data_param", "image_data_param", "window_data_param")


@dataclass(frozen=True)
class SourcedLayer:
    """A layer of the normalised net and the path of what the user wrote for it (for locations)."""

    param: pb.LayerParameter
    path: Path


def upgrade_net(net: pb.NetParameter, smap: SourceMap) -> tuple[pb.NetParameter, list[SourcedLayer]]:
    """The current-form copy of `net`, and each of its layers with the path it came from."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    del out.layers[:]
    del out.input[:]
    del out.input_dim[:]
    del out.input_shape[:]
    out.ClearField("solver")
    layers: list[SourcedLayer] = []
    if net.input:
        layers.append(SourcedLayer(_input_layer(net, smap), ("input",)))
    elif net.input_dim or net.input_shape:
        field = "input_dim" if net.input_dim else "input_shape"
        raise SpecFieldError(f"'{field}' is given but no 'input' names the blobs it shapes", loc=smap.find((field,)))
    if net.layer and net.layers:
        raise SpecFieldError(
            "the net mixes 'layer' and the legacy 'layers'; use one of them",
            loc=smap.find(("layers",)),
            hint="write every layer as layer { ... }",
        )
    for i, v1 in enumerate(net.layers):
        layers.append(SourcedLayer(_from_v1(v1, ("layers", i), smap), ("layers", i)))
    for i, layer in enumerate(net.layer):
        copy = pb.LayerParameter()
        copy.CopyFrom(layer)
        layers.append(SourcedLayer(copy, ("layer", i)))
    for sl in layers:
        _upgrade_layer(sl.param, sl.path, smap)
        out.layer.append(sl.param)
    return out, [SourcedLayer(out.layer[i], sl.path) for i, sl in enumerate(layers)]


def _input_layer(net: pb.NetParameter, smap: SourceMap) -> pb.LayerParameter:
    layer = pb.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    n = len(net.input)
    if net.input_shape:
        if len(net.input_shape) != n:
            raise SpecFieldError(
                f"{n} 'input' blob(s) but {len(net.input_shape)} 'input_shape'; give one shape per input",
                loc=smap.find(("input_shape",)),
            )
        layer.input_param.shape.extend(net.input_shape)
    elif net.input_dim:
        if len(net.input_dim) != 4 * n:
            raise SpecFieldError(
                f"{n} 'input' blob(s) need {4 * n} 'input_dim' values (N, C, H, W each), got {len(net.input_dim)}",
                loc=smap.find(("input_dim",)),
            )
        for i in range(n):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i : 4 * i + 4])
    else:
        raise SpecFieldError(
            "'input' is given without 'input_shape' or 'input_dim'",
            loc=smap.find(("input",)),
            hint="or declare the input with an Input layer",
        )
    return layer


def _from_v1(v1: pb.V1LayerParameter, path: Path, smap: SourceMap) -> pb.LayerParameter:
    if v1.HasField("layer"):
        raise SpecFieldError(
            "this is the V0 layer format (layers { layer { ... } }), which netspec does not read",
            loc=smap.find((*path, "layer")),
            hint="upgrade the file to the current format with Caffe's upgrade_net_proto_text",
        )
    layer = pb.LayerParameter(name=v1.name)
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    layer.loss_weight.extend(v1.loss_weight)
    if v1.HasField("type"):
        enum_name = pb.V1LayerParameter.LayerType.Name(v1.type)
        if enum_name == "NONE":
            raise SpecFieldError("layer type NONE", loc=smap.find((*path, "type")))
        layer.type = _V1_TYPES[enum_name]
    per_blob = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(per_blob):
        spec = layer.param.add()
        if i < len(v1.param) and v1.param[i]:
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for name in _V1_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    return layer


def _upgrade_layer(layer: pb.LayerParameter, path: Path, smap: SourceMap) -> None:
    if layer.HasField("pooling_param") and layer.pooling_param.HasField("ceil_mode"):
        p = layer.pooling_param
        mode = p.CEIL if p.ceil_mode else p.FLOOR
        if p.HasField("round_mode") and p.round_mode != mode:
            raise SpecFieldError(
                "ceil_mode and round_mode disagree; give only one of them",
                loc=smap.find((*path, "pooling_param", "ceil_mode")),
                layer=layer.name,
                layer_type=layer.type,
            )
        p.ClearField("ceil_mode")
        p.round_mode = mode
    for name in _DATA_PARAMS:
        if not layer.HasField(name):
            continue
        old = getattr(layer, name)
        moved = {f: getattr(old, f) for f in ("scale", "mean_file", "crop_size", "mirror") if old.HasField(f)}
        for f, value in moved.items():
            tp = layer.transform_param
            if tp.HasField(f) and getattr(tp, f) != value:
                raise SpecFieldError(
                    f"'{f}' is set both in {name} and in transform_param",
                    loc=smap.find((*path, name, f)),
                    hint="keep it in transform_param only",
                )
            setattr(tp, f, value)
            old.ClearField(f)
