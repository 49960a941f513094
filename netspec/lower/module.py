"""The compiled net: a torch.nn.Module that runs a checked Net layer by layer.

Parameters are stored as Caffe stores them (one list of blobs per layer, in Caffe's order and shapes),
so `caffe_params()` maps one to one onto a .caffemodel. BatchNorm's statistics are buffers; shared
blobs (`param { name }`) are the same tensor in every layer that names them. Forward walks a plan
made once at construction: for each layer, its function and the names of its bottoms and tops. `run` is
the one loop over that plan; training, `netspec time` and the deploy graph all go through it.

A layer that fails while running is named in the error, as torch.fx's interpreter names the node it was
executing: when the layer's bottoms are not the shapes (or dtype) the spec infers for them, the tensors
given to the net were wrong and the error is a ShapeError at the layer's line; otherwise the layer was
fed what the spec promised and failed anyway (a bug in netspec), and the original exception goes on with
a note naming the layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from netspec.errors import DataError, NetspecError, ShapeError, did_you_mean
from netspec.fillers import fill
from netspec.graph import stale_reads
from netspec.layers.base import Forward, Shape, fmt
from netspec.net import Net
from netspec.shapes import check_fits

if TYPE_CHECKING:
    from netspec.lower.weights import Weights
    from netspec.spec.load import SpecFile


def _key(layer: str, index: int) -> str:
    """A parameter name torch accepts (no '.'), from which the layer name can be read back."""
    return layer.replace("%", "%25").replace(".", "%2E") + f":{index}"


@dataclass(frozen=True)
class Step:
    """One layer of the plan: its function, parameter references, and the blobs it reads and writes."""

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


Call = Callable[[list[torch.Tensor]], list[torch.Tensor]]
StepHook = Callable[[Step, list[torch.Tensor], Call], list[torch.Tensor]]
"""`hook(step, bottoms, call) -> tops`, run around every step in place of `call(bottoms)`: it may time the
call, wrap the bottoms and tops, or record them, and returns the tops."""


@dataclass(frozen=True)
class _Plan:
    steps: tuple[Step, ...]
    reads: frozenset[str] | None  # blobs a partial run must be given; None: the net's inputs, checked in full


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
                # A shape is unknown only past an opaque Python layer, whose lower() refuses first.
                bottoms, tops = cast(tuple[Shape, ...], info.bottom_shapes), cast(tuple[Shape, ...], info.top_shapes)
                forward = node.definition.lower(node.spec, bottoms, tops)
            except NetspecError as e:
                raise node.error_context(e, net.graph.smap) from None
            caffe_grad = node.definition.caffe_backward(node.spec) if node.name in stale else None
            steps.append(Step(node.name, forward, tuple(refs), node.bottoms, node.tops, caffe_grad))
        self._steps = tuple(steps)
        self._plans: dict[tuple[tuple[str, ...] | None, str | None], _Plan] = {}
        self._plan(None, None)  # the whole run's now: torch.compile guards on this cache; a later fill recompiles
        self._input_shapes = dict(net.inputs)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The layers that compute, in execution order (data and Input layers have no step)."""
        return self._steps

    def _tensor(self, ref: tuple[str, bool, Shape | None]) -> torch.Tensor:
        key, is_buffer, view = ref
        t = cast(torch.Tensor, self._buffers[key]) if is_buffer else self.blob_params[key]  # never a None buffer
        return t if view is None else t.view(view)

    def caffe_params(self) -> dict[str, list[torch.Tensor]]:
        """Each layer's parameter blobs in Caffe's order and shapes; writing into them (in place) changes
        the module's weights. A shared blob appears, as the same tensor, under every layer using it."""
        return {name: [self._tensor(ref) for ref in refs] for name, refs in self._param_lists.items() if refs}

    def _check_inputs(self, inputs: Mapping[str, Any], reads: frozenset[str] | None) -> dict[str, torch.Tensor]:
        """The inputs as tensors: the net's inputs at the spec's shapes (but for the batch size), or for a run
        of some layers (`reads` given) the blobs those read."""
        wanted: Collection[str] = self._input_shapes if reads is None else reads
        missing = [b for b in wanted if b not in inputs]
        extra = [b for b in inputs if b not in wanted]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing input blob(s) " + ", ".join(f"'{b}'" for b in missing))
            if extra:
                parts.append("unknown input blob(s) " + ", ".join(f"'{b}'" for b in extra))
            if reads is None:
                expected = ", ".join(f"{b} {fmt(s)}" for b, s in self._input_shapes.items()) or "none"
                raise NetspecError("; ".join(parts), hint=f"the net takes: {expected}")
            raise NetspecError("; ".join(parts), hint="the layers run read: " + (", ".join(sorted(reads)) or "nothing"))
        out = {}
        for name, value in inputs.items():
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            want = self._input_shapes.get(name) if reads is None else None
            if want is not None and (t.dim() != len(want) or tuple(t.shape[1:]) != want[1:]):
                raise NetspecError(
                    f"input '{name}' has shape {fmt(tuple(t.shape))}; the net expects "
                    f"{fmt(('N', *want[1:]))} (spec: {fmt(want)})"
                )
            out[name] = t
        return out

    def share_weights(self, source: NetModule) -> None:
        """Uses `source`'s tensors for every blob of a layer of the same name and shape, as Caffe's test nets
        share the train net's blobs: a TEST module then follows its TRAIN module's training."""
        given = source.caffe_params()
        for layer, refs in self._param_lists.items():
            if layer not in given:
                continue
            for (key, is_buffer, _), tensor in zip(refs, given[layer], strict=False):
                if is_buffer and tensor.shape == cast(torch.Tensor, self._buffers[key]).shape:
                    self._buffers[key] = tensor
                elif not is_buffer and tensor.shape == self.blob_params[key].shape:
                    self.blob_params[key] = tensor

    def _plan(self, layers: Collection[str] | None, until: str | None) -> _Plan:
        key = (None if layers is None else tuple(layers), until)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(layers, until)
        return plan

    def _make_plan(self, layers: Collection[str] | None, until: str | None) -> _Plan:
        steps = [s for s in self._steps if layers is None or s.name in layers]
        names = [s.name for s in steps]
        for name in ([] if layers is None else list(layers)) + ([] if until is None else [until]):
            if name not in names:
                every = [s.name for s in self._steps]
                raise NetspecError(
                    f"no layer '{name}' computes in this run",
                    hint=did_you_mean(name, every) or "the layers that compute: " + ", ".join(every),
                )
        if until is not None:
            steps = steps[: names.index(until) + 1]
        if layers is None:
            return _Plan(tuple(steps), None)
        made: set[str] = set()
        reads: set[str] = set()
        for step in steps:
            reads |= set(step.bottoms) - made
            made |= set(step.tops)
        return _Plan(tuple(steps), frozenset(reads))

    def run(
        self,
        inputs: Mapping[str, Any],
        *,
        layers: Collection[str] | None = None,
        until: str | None = None,
        hook: StepHook | None = None,
    ) -> dict[str, torch.Tensor]:
        """Runs the net's layers and returns every blob computed (an in-place blob holds its last value).

        Args:
            inputs: the input blobs. A full run takes exactly the net's inputs, with the spec's shapes but for
                the batch size; a run of some `layers` takes the blobs they read and no earlier one of them
                computes (their shapes unchecked).
            layers: run only these layers, in the net's order (e.g. the deploy graph's).
            until: stop after this layer.
            hook: called around every step instead of the step alone (see StepHook), e.g. to time it.

        Raises:
            ShapeError: a layer failed on bottoms other than the spec's shapes or dtype: the inputs given
                do not fit the net. It names the layer, its line, the shapes it got and those it expects.
        """
        plan = self._plan(layers, until)
        env = self._check_inputs(inputs, plan.reads)
        late_reads: list[tuple[_BlobsAtBackward, str, str]] = []
        try:
            for step in plan.steps:
                xs = [env[b] for b in step.bottoms]
                if hook is None:
                    ys = self._call(step, xs, late_reads)
                else:
                    ys = hook(step, xs, functools.partial(self._call, step, late_reads=late_reads))
                for name, y in zip(step.tops, ys, strict=True):
                    env[name] = y
        except NetspecError as e:
            node = self.net.layer(step.name).node
            raise e.at(node.loc, node.name, node.type) from None
        except Exception as e:
            error = self._input_error(step, env, e)
            if error is None:
                node = self.net.layer(step.name).node
                e.add_note(f"while running layer '{node.name}' ({node.type}) at {node.loc}")
                raise
            raise error from None
        for blobs, bottom, top in late_reads:
            blobs.bottom, blobs.top = env[bottom], env[top]
        return env

    def _input_error(self, step: Step, env: dict[str, torch.Tensor], e: Exception) -> ShapeError | None:
        """The user's error when the failed step got bottoms other than the spec's shapes or dtype (so the
        inputs given were not what the net takes); None when it got what the spec promised (a bug)."""
        info = self.net.layer(step.name)
        dtype = next(
            (t.dtype for t in (*self.blob_params.values(), *self.buffers()) if t.is_floating_point()),
            torch.get_default_dtype(),
        )
        got = [env[b] for b in step.bottoms]

        def unexpected(t: torch.Tensor, shape: Shape | None) -> bool:
            autocast = torch.is_autocast_enabled(t.device.type)
            return (
                not t.is_floating_point()
                or (t.dtype != dtype and not autocast)
                or (shape is not None and tuple(t.shape) != shape)
            )

        if not any(unexpected(t, shape) for t, shape in zip(got, info.bottom_shapes, strict=True)):
            return None
        actual = ", ".join(
            f"{b} {fmt(tuple(t.shape))}" + ("" if t.dtype == dtype else f" {str(t.dtype)[6:]}")
            for b, t in zip(step.bottoms, got, strict=True)
        )
        expected = ", ".join(
            f"{b} {'(?)' if shape is None else fmt(shape)}"
            for b, shape in zip(step.bottoms, info.bottom_shapes, strict=True)
        )
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        node = info.node
        return ShapeError(
            f"cannot run on bottoms {actual}: {reason}",
            loc=node.loc,
            layer=node.name,
            layer_type=node.type,
            hint=f"the spec infers {expected}; give the net {str(dtype)[6:]} inputs of the spec's "
            "shapes, with one batch size for all",
        )

    def _call(
        self, step: Step, xs: list[torch.Tensor], late_reads: list[tuple[_BlobsAtBackward, str, str]]
    ) -> list[torch.Tensor]:
        if step.caffe_grad is not None and torch.is_grad_enabled():
            blobs = _BlobsAtBackward()
            late_reads.append((blobs, step.bottoms[0], step.tops[0]))
            return [_CaffeStaleBackward.apply(xs[0], blobs, step.forward, step.caffe_grad)]
        return step.forward([self._tensor(ref) for ref in step.params], xs)

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
    from netspec.netfile import read_net

    given = read_weights(weights) if weights is not None else None
    if isinstance(net_or_path, Net):
        net = net_or_path
        if (phase is not None and phase.upper() != net.phase) or (given is not None and given.stored):
            net = _built(net.spec, phase or net.phase, net.state.stages, net.state.level, given)
    else:
        net = _built(read_net(str(net_or_path)), phase or "TEST", (), None, given)
    module = NetModule(net)
    if given is not None:
        apply_weights(module.caffe_params(), given, str(weights))
    return module


def _built(spec: SpecFile, phase: str, stages: tuple[str, ...], level: int | None, given: Weights | None) -> Net:
    """The net of a spec with what a snapshot stored beside the weights: its data layers use the model's
    statistics, and where a data source cannot be read, the data tops take the shapes the model was
    trained with (so that a trained model exports without its training data)."""
    from netspec.net import build_net

    if given is None or not (given.stored or given.inputs):
        return build_net(spec, phase, stages, level)
    spec = replace(spec, stored=given.stored)
    try:
        return build_net(spec, phase, stages, level)
    except DataError:
        if not given.inputs:
            raise
        return build_net(spec, phase, stages, level, shapes=given.inputs)
