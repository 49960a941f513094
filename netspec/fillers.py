"""Weight initialisation with torch: Caffe's fillers, computed as Caffe computes them, and netspec's
additions. Values come from torch's generator, so they differ from Caffe's own draws but follow the same
distributions (and the bilinear and constant fillers are exact).
"""

from __future__ import annotations

import math

import torch

from netspec._proto import netspec_pb2 as pb
from netspec.fillerspec import check_filler, gain, variance_n


def fill(f: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new tensor of `shape` filled as `f` says."""
    check_filler(f, shape)
    t = f.type
    out = torch.empty(shape, dtype=dtype)
    if out.numel() == 0:
        return out
    if t == "constant":
        return out.fill_(f.value)
    if t == "uniform":
        return out.uniform_(f.min, f.max)
    if t == "gaussian":
        out.normal_(f.mean, f.std)
        if f.sparse >= 0:
            keep = min(1.0, f.sparse / shape[0])
            out.mul_(torch.bernoulli(torch.full(shape, keep, dtype=dtype)))
        return out
    if t == "positive_unitball":
        out.uniform_(0, 1)
        rows = out.reshape(shape[0], -1)
        rows.div_(rows.sum(1, keepdim=True))
        return out
    if t == "xavier":
        bound = math.sqrt(3.0 / variance_n(f, shape))
        return out.uniform_(-bound, bound)
    if t == "msra":
        return out.normal_(0, math.sqrt(2.0 / variance_n(f, shape)))
    if t == "bilinear":
        return _bilinear(shape, dtype)
    if t in ("glorot_normal", "xavier_normal"):
        return out.normal_(0, gain(f, None) * math.sqrt(1.0 / variance_n(f, shape, average=True)))
    if t == "glorot_uniform":
        return out.uniform_(-1, 1).mul_(gain(f, None) * math.sqrt(3.0 / variance_n(f, shape, average=True)))
    if t in ("kaiming_normal", "he_normal"):
        return out.normal_(0, gain(f, "relu") / math.sqrt(variance_n(f, shape)))
    if t in ("kaiming_uniform", "he_uniform"):
        return out.uniform_(-1, 1).mul_(gain(f, "relu") * math.sqrt(3.0 / variance_n(f, shape)))
    # orthogonal: the rows (or columns) of the blob flattened to (shape[0], rest) are orthonormal
    flat = out.reshape(shape[0], -1)
    torch.nn.init.orthogonal_(flat, gain(f, None))
    return out


def _bilinear(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Caffe's bilinear upsampling kernel, the same for every (output, input) channel pair."""
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    axis = 1 - torch.abs(torch.arange(k, dtype=torch.float64) / f - c)
    kernel = (axis[:, None] * axis[None, :]).to(dtype)
    return kernel.expand(shape).contiguous()
