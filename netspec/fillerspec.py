"""Fillers as data: the known types and the rules on their fields, checked without torch.

Caffe's fan-in of a blob is count / shape[0] and its fan-out count / shape[1], which for convolution
and InnerProduct weights are the usual fans.
"""

from __future__ import annotations

import math

from netspec._proto import netspec_pb2 as pb
from netspec.errors import ParamError, did_you_mean

_GAINS = {
    "linear": 1.0,
    "conv": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "selu": 0.75,
    "elu": 1.0,
    "gelu": 1.0,
}
CAFFE_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")
NETSPEC_TYPES = (
    "orthogonal",
    "glorot_normal",
    "xavier_normal",
    "glorot_uniform",
    "kaiming_normal",
    "he_normal",
    "kaiming_uniform",
    "he_uniform",
)
TYPES = CAFFE_TYPES + NETSPEC_TYPES


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's (fan_in, fan_out) of a blob."""
    n = math.prod(shape)
    fan_in = n // shape[0] if shape and shape[0] else n
    fan_out = n // shape[1] if len(shape) > 1 and shape[1] else n
    return fan_in, fan_out


def variance_n(f: pb.FillerParameter, shape: tuple[int, ...], average: bool = False) -> float:
    fan_in, fan_out = fans(shape)
    if average or f.variance_norm == f.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_out if f.variance_norm == f.FAN_OUT else fan_in)


def gain(f: pb.FillerParameter, default_nonlinearity: str | None) -> float:
    """The filler's gain: `gain`, else that of `nonlinearity` (or of the default given here), else 1."""
    if f.HasField("gain"):
        return float(f.gain)
    name = f.nonlinearity if f.HasField("nonlinearity") else default_nonlinearity
    if name is None:
        return 1.0
    if name not in _GAINS:
        raise ParamError(f"unknown nonlinearity '{name}' (known: {', '.join(_GAINS)})", field="nonlinearity")
    return _GAINS[name]


def check_filler(f: pb.FillerParameter, shape: tuple[int, ...]) -> None:
    """Rules a filler must follow for the blob it fills (checked before anything is allocated)."""
    if f.type not in TYPES:
        raise ParamError(
            f"unknown filler type '{f.type}'",
            field="type",
            hint=did_you_mean(f.type, TYPES) or "known: " + ", ".join(TYPES),
        )
    if f.sparse >= 0 and f.type != "gaussian":
        raise ParamError("sparse applies only to the gaussian filler", field="sparse")
    if f.type == "uniform" and f.min > f.max:
        raise ParamError(f"uniform filler: min {f.min} is above max {f.max}", field="min")
    if f.type == "bilinear" and (len(shape) != 4 or shape[2] != shape[3]):
        raise ParamError(
            f"the bilinear filler needs a 4-axis blob with square kernels, got shape {shape}", field="type"
        )
    if not shape and (f.type in ("positive_unitball", "orthogonal") or f.sparse >= 0):  # they work on rows
        what = "sparse" if f.sparse >= 0 else f.type
        raise ParamError(
            f"the {what} filler needs a blob with at least one axis, got a 0-axis blob "
            "(a shared PReLU slope, or Scale/Bias with num_axes 0)",
            field="sparse" if f.sparse >= 0 else "type",
        )
    gain(f, None)  # an unknown nonlinearity is an error for every filler that names one
