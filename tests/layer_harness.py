"""Runs one layer on its own: builds a tiny net around it, feeds inputs of a kind, compiles it."""

from __future__ import annotations

import torch

import netspec
from netspec.layers.base import In
from netspec.lower.module import NetModule
from netspec.net import build_net
from netspec.netfile import load_net_text
from netspec.spec.load import PROTOTXT


def net_text(type_name: str, fields: str, inputs: tuple[In, ...], tops: int, prefix: str = "") -> str:
    """The layer fed by one Input layer per input: blobs x0, x1, ... in, y0, y1, ... out (names prefixed, so
    that several such nets can share one file)."""
    lines = []
    for i, spec in enumerate(inputs):
        dims = " ".join(f"dim: {d}" for d in spec.shape)
        lines.append(
            f'layer {{ name: "{prefix}in{i}" type: "Input" top: "{prefix}x{i}" input_param {{ shape {{ {dims} }} }} }}'
        )
    bottoms = " ".join(f'bottom: "{prefix}x{i}"' for i in range(len(inputs)))
    top_names = " ".join(f'top: "{prefix}y{i}"' for i in range(tops))
    lines.append(f'layer {{ name: "{prefix}under_test" type: "{type_name}" {bottoms} {top_names} {fields} }}')
    return "\n".join(lines) + "\n"


def load_layer(type_name: str, fields: str, inputs: tuple[In, ...], tops: int, phase: str = "TEST") -> netspec.Net:
    spec = load_net_text(net_text(type_name, fields, inputs, tops), "layer.prototxt", PROTOTXT)
    return build_net(spec, phase)


def make_input(spec: In, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    shape = spec.shape
    if spec.kind == "label":
        return torch.randint(0, spec.high, shape).to(dtype)
    if spec.kind == "binary":
        return torch.randint(0, 2, shape).to(dtype)
    if spec.kind in ("positive", "constant"):
        return (torch.rand(shape) + 0.1).to(dtype)
    if spec.kind == "prob":
        return torch.softmax(torch.randn(shape), dim=1 if len(shape) > 1 else 0).to(dtype)
    # distinct values, away from the kinks of ReLU-like functions and pooling ties
    n = max(1, torch.Size(shape).numel())
    values = (torch.randperm(n).to(torch.float64) - n / 2 + 0.37) / max(1, n / 4)
    return values.reshape(shape).to(dtype)


def run(
    net: netspec.Net, inputs: tuple[In, ...], dtype: torch.dtype = torch.float32
) -> tuple[NetModule, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    module = netspec.compile(net).to(dtype)
    feeds = {f"x{i}": make_input(spec, dtype) for i, spec in enumerate(inputs)}
    return module, feeds, module.blobs(**feeds)
