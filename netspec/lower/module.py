"""The compiled net: a torch.nn.Module that runs a checked Net layer by layer.

Parameters are stored as Caffe stores them (one list of blobs per layer, in Caffe's order and shapes),
so `caffe_params()` maps one to one onto a .caffemodel. BatchNorm's statistics are buffers; shared
blobs (`param { name }`) are the same tensor in every layer that names them. Forward walks a plan
made once at construction: for each layer, its function and the names of its bottoms and tops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netspec.errors import NetspecError
from netspec.graph import stale_reads
from netspec.layers.base import Forward, Shape, fmt
from netspec.lower.fillers import fill
from netspec.net import Net
from netspec.shapes import check_fits


def _key(layer: str, index: int) -> str:
    """A parameter name torch accepts (no '.'), from which the layer name can be read back."""
    return layer.replace("%", "%25").replace(".", "%2E") + f":{index}"


@dataclass(frozen=True)
class _Step:
    name: str
    forward: Forward
    params: tuple[tuple[str, bool, Shape | None], ...]  # (key, is_buffer, view shape when shared permissively)
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    caffe_grad: Any = None  # set when Caffe's backward reads blob values that change after this layer


class _BlobsAtBackward:
    """The values the bottom and top blob hold once the forward pass is over, which is what Caffe's
    backward pass reads."""

    bottom: torch.Tensor
    top: torch.Tensor


class _CaffeStaleBackward(torch.autograd.Function):
    """A neuron whose gradient is Caffe's formula applied to the blob values at backward time."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, blobs: _BlobsAtBackward, forward: Forward, grad: Any) -> torch.Tensor:
        ctx.blobs, ctx.grad = blobs, grad
        ctx.save_for_backward(x)
        return forward([], [x])[0]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return ctx.grad(x, ctx.blobs.bottom.detach(), ctx.blobs.top.detach(), g), None, None, None


class NetModule(nn.Module):
    """A Net as a torch module: `module(**inputs)` returns the output blobs as a dict."""

    def __init__(self, net: Net) -> None:
        check_fits(net.graph, net.layers)  # before any parameter is allocated
        super().__init__()
        self.net = net
        self.phase = net.phase
        self.train(net.phase == "TRAIN")
        self.blob_params = nn.ParameterDict()
        self._param_lists: dict[str, list[tuple[str, bool, Shape | None]]] = {}
        steps = []
        stale = stale_reads(net.graph)
        for info in net.layers:
            node = info.node
            refs = []
            for blob in info.blobs:
                if blob.owner is not None:
                    owner_key = _key(*blob.owner)
                    is_buffer = owner_key not in self.blob_params
                    owner_shape = net.layer(blob.owner[0]).blobs[blob.owner[1]].shape
                    refs.append((owner_key, is_buffer, blob.shape if blob.shape != owner_shape else None))
                    continue
                key = _key(node.name, blob.index)
                value = fill(blob.filler, blob.shape)
                if blob.learnable:
                    self.blob_params[key] = nn.Parameter(value, requires_grad=blob.lr_mult != 0)
                else:
                    self.register_buffer(key, value)
                refs.append((key, not blob.learnable, None))
            self._param_lists[node.name] = refs
            if node.definition.feeds:
                continue
            try:
                forward = node.definition.lower(node.spec, info.bottom_shapes, info.top_shapes)
            except NetspecError as e:
                raise node.error_context(e, net.graph.smap) from None
            caffe_grad = node.definition.caffe_backward(node.spec) if node.name in stale else None  # type: ignore[attr-defined]
            steps.append(_Step(node.name, forward, tuple(refs), node.bottoms, node.tops, caffe_grad))
        self._steps = steps
        self._input_shapes = dict(net.inputs)

    def _tensor(self, ref: tuple[str, bool, Shape | None]) -> torch.Tensor:
        key, is_buffer, view = ref
        t = self._buffers[key] if is_buffer else self.blob_params[key]
        return t if view is None else t.view(view)

    def caffe_params(self) -> dict[str, list[torch.Tensor]]:
        """Each layer's parameter blobs in Caffe's order and shapes; writing into them (in place) changes
        the module's weights. A shared blob appears, as the same tensor, under every layer using it."""
        return {name: [self._tensor(ref) for ref in refs] for name, refs in self._param_lists.items() if refs}

    def _check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        missing = [b for b in self._input_shapes if b not in inputs]
        extra = [b for b in inputs if b not in self._input_shapes]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing input blob(s) " + ", ".join(f"'{b}'" for b in missing))
            if extra:
                parts.append("unknown input blob(s) " + ", ".join(f"'{b}'" for b in extra))
            expected = ", ".join(f"{b} {fmt(s)}" for b, s in self._input_shapes.items()) or "none"
            raise NetspecError("; ".join(parts), hint=f"the net takes: {expected}")
        out = {}
        for name, value in inputs.items():
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            want = self._input_shapes[name]
            if t.dim() != len(want) or tuple(t.shape[1:]) != want[1:]:
                raise NetspecError(f"input '{name}' has shape {fmt(tuple(t.shape))}; the net expects "
                                   f"{fmt(('N', *want[1:]))} (spec: {fmt(want)})")  # type: ignore[arg-type]
            out[name] = t
        return out

    def run(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Runs every layer; returns all blobs (an in-place blob holds its last value)."""
        env = self._check_inputs(inputs)
        late_reads: list[tuple[_BlobsAtBackward, str, str]] = []
        for step in self._steps:
            xs = [env[b] for b in step.bottoms]
            if step.caffe_grad is not None and torch.is_grad_enabled():
                blobs = _BlobsAtBackward()
                late_reads.append((blobs, step.bottoms[0], step.tops[0]))
                ys = [_CaffeStaleBackward.apply(xs[0], blobs, step.forward, step.caffe_grad)]
            else:
                ys = step.forward([self._tensor(ref) for ref in step.params], xs)
            for name, y in zip(step.tops, ys, strict=True):
                env[name] = y
        for blobs, bottom, top in late_reads:
            blobs.bottom, blobs.top = env[bottom], env[top]
        return env

    def forward(self, **inputs: Any) -> dict[str, torch.Tensor]:
        env = self.run(inputs)
        return {name: env[name] for name in self.net.outputs}

    def blobs(self, **inputs: Any) -> dict[str, torch.Tensor]:
        """Every blob after a forward pass."""
        return self.run(inputs)

    def extra_repr(self) -> str:
        return f"name={self.net.name!r}, phase={self.phase}, layers={len(self.net.layers)}"


def compile_net(net_or_path: Net | str, phase: str | None = None, weights: str | None = None) -> NetModule:
    """A Net (or the spec at a path) as a torch module, with the weights of a file; see netspec.compile."""
    from netspec.lower.weights import apply_weights, read_weights
    from netspec.net import build_net, load

    if isinstance(net_or_path, Net):
        net = net_or_path
        if phase is not None and phase.upper() != net.phase:
            net = build_net(net.spec, phase, net.state.stages, net.state.level)
    else:
        net = load(str(net_or_path), phase or "TEST")
    module = NetModule(net)
    if weights is not None:
        apply_weights(module.caffe_params(), read_weights(weights), str(weights))
    return module
