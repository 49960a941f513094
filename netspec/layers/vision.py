"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, Crop, LRN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netspec._proto import netspec_pb2 as pb
from netspec.errors import ParamError, ShapeError
from netspec.layers.base import (
    ONE,
    Arity,
    BlobDef,
    Example,
    Forward,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    canonical_axis,
    count,
    expect_axes,
    fmt,
    require,
    weight_and_bias,
)
from netspec.layers.registry import register

if TYPE_CHECKING:
    import torch

# ---- convolution geometry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    """Per spatial axis: kernel, stride, pad, dilation; and the channel axis."""

    axis: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]


def _per_axis(values: Sequence[int], n: int, default: int, name: str) -> tuple[int, ...]:
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (values[0],) * n
    if len(values) != n:
        raise ParamError(f"{name} has {len(values)} values; give 1 or one per spatial axis ({n})", field=name)
    return tuple(values)


def conv_geometry(p: pb.ConvolutionParameter, bottom: Shape) -> ConvGeometry:
    """Reads Caffe's kernel/stride/pad/dilation forms (repeated or *_h/*_w) for this bottom's rank."""
    axis = canonical_axis(p.axis, len(bottom))
    n = len(bottom) - axis - 1
    if n < 1:
        raise ShapeError(f"bottom {fmt(bottom)} has no spatial axes after channel axis {axis}")
    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        require(n == 2, "kernel_h/kernel_w need exactly 2 spatial axes", "kernel_h")
        require(not p.kernel_size, "give either kernel_size or kernel_h and kernel_w, not both", "kernel_size")
        require(p.HasField("kernel_h") and p.HasField("kernel_w"), "kernel_h and kernel_w go together", "kernel_h")
        kernel: tuple[int, ...] = (p.kernel_h, p.kernel_w)
    else:
        require(bool(p.kernel_size), "kernel_size is required (or kernel_h and kernel_w)", "kernel_size")
        kernel = _per_axis(p.kernel_size, n, 0, "kernel_size")
    if p.HasField("stride_h") or p.HasField("stride_w"):
        require(n == 2, "stride_h/stride_w need exactly 2 spatial axes", "stride_h")
        require(not p.stride, "give either stride or stride_h and stride_w, not both", "stride")
        stride: tuple[int, ...] = (p.stride_h, p.stride_w)
    else:
        stride = _per_axis(p.stride, n, 1, "stride")
    if p.HasField("pad_h") or p.HasField("pad_w"):
        require(n == 2, "pad_h/pad_w need exactly 2 spatial axes", "pad_h")
        require(not p.pad, "give either pad or pad_h and pad_w, not both", "pad")
        pad: tuple[int, ...] = (p.pad_h, p.pad_w)
    else:
        pad = _per_axis(p.pad, n, 0, "pad")
    dilation = _per_axis(p.dilation, n, 1, "dilation")
    require(all(k > 0 for k in kernel), f"kernel size must be positive, got {kernel}", "kernel_size")
    require(all(s > 0 for s in stride), f"stride must be positive, got {stride}", "stride")
    require(all(d > 0 for d in dilation), f"dilation must be positive, got {dilation}", "dilation")
    return ConvGeometry(axis, kernel, stride, pad, dilation)


def _x(values: Sequence[int]) -> str:
    return "x".join(str(v) for v in values)


def _conv_common_checks(p: pb.ConvolutionParameter) -> None:
    require(p.num_output > 0, "num_output must be set to a positive number", "num_output")
    require(p.group > 0, "group must be positive", "group")
    require(
        p.num_output % p.group == 0, f"num_output ({p.num_output}) must be divisible by group ({p.group})", "num_output"
    )


def _check_bottoms_alike(bottoms: Sequence[Shape]) -> None:
    for i, b in enumerate(bottoms[1:], 1):
        if b != bottoms[0]:
            raise ShapeError(
                f"all bottoms must have the same shape; bottom 0 is {fmt(bottoms[0])}, bottom {i} is {fmt(b)}"
            )


def _spatial_lowering_limit(n: int, what: str) -> None:
    if n > 3:
        raise ShapeError(f"{what} over {n} spatial axes: netspec runs 1 to 3")


def _each_bottom(axis: int, op: Callable[..., torch.Tensor]) -> Forward:
    """Applies a torch convolution op(x, weight, bias) to every bottom with the shared weights, folding
    the axes before the channel axis into the one batch axis torch expects."""

    def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        bias = params[1] if len(params) > 1 else None
        outs = []
        for x in xs:
            if axis == 1:
                outs.append(op(x, params[0], bias))
                continue
            y = op(x.reshape((-1, *x.shape[axis:])), params[0], bias)
            outs.append(y.reshape((*x.shape[:axis], *y.shape[1:])))
        return outs

    return forward


class _ConvBase(LayerDef):
    param_field = "convolution_param"
    category = "vision"
    bottoms = Arity(1, None)
    tops = Arity(1, None)

    def check(self, s: LayerSpec) -> None:
        _conv_common_checks(s.p)
        require(
            s.num_tops == s.num_bottoms,
            f"a {self.type} layer has one top per bottom; got {s.num_bottoms} bottoms and {s.num_tops} tops",
            "top",
        )

    def _geometry(self, s: LayerSpec, bottoms: Sequence[Shape]) -> tuple[ConvGeometry, int]:
        _check_bottoms_alike(bottoms)
        g = conv_geometry(s.p, bottoms[0])
        channels = bottoms[0][g.axis]
        if channels % s.p.group:
            raise ShapeError(f"input channels ({channels}) must be divisible by group ({s.p.group})", field="group")
        _spatial_lowering_limit(len(g.kernel), self.type)
        return g, channels


class _FilterConv(_ConvBase):
    """Convolution and Deconvolution: a learned filter bank and bias; only the weight's axes differ."""

    draw_colour = "#FF8A80"

    def _weight_axes(self, p: pb.ConvolutionParameter, channels: int) -> tuple[int, int]:
        """The weight's first two axes (Caffe's order), before the kernel's."""
        raise NotImplementedError

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        g, channels = self._geometry(s, bottoms)
        return weight_and_bias(s.p, (*self._weight_axes(s.p, channels), *g.kernel), (s.p.num_output,))

    def summary(self, s: LayerSpec, bottoms: Sequence[Shape]) -> str:
        g = conv_geometry(s.p, bottoms[0])
        return _window(f"{s.p.num_output} out, {'x'.join(map(str, g.kernel))}", g.stride, g.pad)


@register
class Convolution(_FilterConv):
    """Convolution over the axes after `axis` (2-D for NCHW), with groups and dilation.

    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
    """

    type = "Convolution"
    onnx_ops = frozenset({"Conv"})
    examples = (
        Example("convolution_param { num_output: 4 kernel_size: 3 }", (In((2, 3, 8, 8)),)),
        Example(
            "convolution_param { num_output: 6 kernel_size: 3 group: 3 pad: 1 stride: 2 dilation: 2 }",
            (In((1, 3, 9, 9)),),
        ),
        Example("convolution_param { num_output: 2 kernel_h: 3 kernel_w: 1 bias_term: false }", (In((2, 2, 5, 4)),)),
        Example("convolution_param { num_output: 2 kernel_size: 3 }", (In((2, 1, 7)),)),
        Example("convolution_param { num_output: 2 kernel_size: 2 }", (In((1, 2, 4, 4, 4)),)),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        g, _ = self._geometry(s, bottoms)
        b = bottoms[0]
        out = []
        for i, (size, k, st, pd, d) in enumerate(
            zip(b[g.axis + 1 :], g.kernel, g.stride, g.pad, g.dilation, strict=True)
        ):
            extent = d * (k - 1) + 1
            o = (size + 2 * pd - extent) // st + 1
            if o < 1:
                raise ShapeError(
                    f"kernel {_x(g.kernel)} (dilation {_x(g.dilation)}, pad {_x(g.pad)}) does "
                    f"not fit the input's spatial size {_x(b[g.axis + 1 :])} on spatial axis {i}",
                    hint=f"bottom '{s.lp.bottom[0]}' has shape {fmt(b)}",
                )
            out.append(o)
        top = (*b[: g.axis], s.p.num_output, *out)
        return [top] * len(bottoms)

    def _weight_axes(self, p: pb.ConvolutionParameter, channels: int) -> tuple[int, int]:
        return p.num_output, channels // p.group

    def macs(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> int:
        g, channels = self._geometry(s, bottoms)
        per_output = channels // s.p.group * count(g.kernel)
        return sum(count(t) * per_output for t in tops)

    def scratch(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Shape | None:
        g, channels = self._geometry(s, bottoms)  # torch's CPU kernel unfolds the windows of a whole batch
        return (count(bottoms[0][: g.axis]), channels // s.p.group * count(g.kernel), count(tops[0][g.axis + 1 :]))

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        g, _ = self._geometry(s, bottoms)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(g.kernel) - 1]
        groups = s.p.group
        return _each_bottom(g.axis, lambda x, w, b: conv(x, w, b, g.stride, g.pad, g.dilation, groups))


@register
class Deconvolution(_FilterConv):
    """Transposed convolution (Caffe's "deconvolution"); weights are (C_in, num_output / group, k...).

    layer { name: "up" type: "Deconvolution" bottom: "score" top: "up"
            convolution_param { num_output: 21 kernel_size: 4 stride: 2 group: 21 bias_term: false
                                weight_filler { type: "bilinear" } } }
    """

    type = "Deconvolution"
    onnx_ops = frozenset({"ConvTranspose"})
    examples = (
        Example("convolution_param { num_output: 4 kernel_size: 3 stride: 2 }", (In((2, 3, 5, 5)),)),
        Example(
            "convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 dilation: 1 }",
            (In((1, 2, 3, 4)),),
        ),
    )

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        g, _ = self._geometry(s, bottoms)
        b = bottoms[0]
        out = []
        for size, k, st, pd, d in zip(b[g.axis + 1 :], g.kernel, g.stride, g.pad, g.dilation, strict=True):
            o = st * (size - 1) + d * (k - 1) + 1 - 2 * pd
            if o < 1:
                raise ShapeError(
                    f"pad {_x(g.pad)} is too large: the output would have size {o}",
                    field="pad",
                    hint=f"bottom '{s.lp.bottom[0]}' has shape {fmt(b)}",
                )
            out.append(o)
        return [(*b[: g.axis], s.p.num_output, *out)] * len(bottoms)

    def _weight_axes(self, p: pb.ConvolutionParameter, channels: int) -> tuple[int, int]:
        return channels, p.num_output // p.group

    def macs(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> int:
        g, _ = self._geometry(s, bottoms)
        per_input = s.p.num_output // s.p.group * count(g.kernel)
        return sum(count(b) * per_input for b in bottoms)

    def scratch(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Shape | None:
        g, _ = self._geometry(s, bottoms)  # torch's CPU kernel folds columns back one item at a time
        return (s.p.num_output * count(g.kernel), count(bottoms[0][g.axis + 1 :]))

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        g, _ = self._geometry(s, bottoms)
        deconv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(g.kernel) - 1]
        groups = s.p.group
        return _each_bottom(g.axis, lambda x, w, b: deconv(x, w, b, g.stride, g.pad, 0, groups, g.dilation))


@register
class Im2col(_ConvBase):
    """Rearranges each convolution window into a column: (N, C, H, W) -> (N, C*kh*kw, H_out, W_out).

    layer { name: "cols" type: "Im2col" bottom: "data" top: "cols"
            convolution_param { kernel_size: 3 } }
    """

    type = "Im2col"
    onnx_ops = frozenset({"Gather", "Pad", "Reshape", "Transpose"})
    bottoms = ONE
    tops = ONE
    examples = (Example("convolution_param { kernel_size: 3 stride: 2 pad: 1 }", (In((2, 3, 6, 5)),)),)

    def check(self, s: LayerSpec) -> None:
        pass  # num_output and group play no part in im2col

    def _geometry2d(self, s: LayerSpec, b: Shape) -> ConvGeometry:
        g = conv_geometry(s.p, b)
        if g.axis != 1 or len(g.kernel) != 2:
            raise ShapeError(f"Im2col runs on 4-axis (N, C, H, W) bottoms, got {fmt(b)}")
        return g

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = expect_axes(bottoms[0], 4)
        g = self._geometry2d(s, b)
        sizes = [
            (size + 2 * pd - (d * (k - 1) + 1)) // st + 1
            for size, k, st, pd, d in zip(b[2:], g.kernel, g.stride, g.pad, g.dilation, strict=True)
        ]
        if min(sizes) < 1:
            raise ShapeError(f"kernel {_x(g.kernel)} does not fit input {_x(b[2:])}")
        return [(b[0], b[1] * count(g.kernel), *sizes)]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        g = self._geometry2d(s, bottoms[0])
        oh, ow = tops[0][2], tops[0][3]

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            cols = F.unfold(xs[0], g.kernel, g.dilation, g.pad, g.stride)  # (N, C*kh*kw, L)
            return [cols.reshape(cols.shape[0], cols.shape[1], oh, ow)]

        return forward


# ---- pooling ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    global_pooling: bool


def _window(text: str, stride: Sequence[int], pad: Sequence[int]) -> str:
    """A window's summary: text, then its stride and pad where they are not 1 and 0."""

    def dims(values: Sequence[int]) -> str:
        return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))

    if any(st != 1 for st in stride):
        text += f", stride {dims(stride)}"
    if any(pad):
        text += f", pad {dims(pad)}"
    return text


def pool_geometry(p: pb.PoolingParameter, b: Shape) -> PoolGeometry:
    """Caffe's pooling kernel/stride/pad rules, checked as PoolingLayer::LayerSetUp checks them."""
    if p.global_pooling:
        require(
            not (p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")),
            "global_pooling pools over the whole input; remove the kernel size",
            "kernel_size",
        )
        require(
            p.pad == 0
            and p.pad_h == 0
            and p.pad_w == 0
            and p.stride == 1
            and not p.HasField("stride_h")
            and not p.HasField("stride_w"),
            "global_pooling takes no pad and stride",
            "global_pooling",
        )
        return PoolGeometry((b[2], b[3]), (1, 1), (0, 0), True)
    if p.HasField("kernel_size"):
        require(
            not (p.HasField("kernel_h") or p.HasField("kernel_w")),
            "give either kernel_size or kernel_h and kernel_w, not both",
            "kernel_size",
        )
        kernel = (p.kernel_size, p.kernel_size)
    else:
        require(
            p.HasField("kernel_h") and p.HasField("kernel_w"),
            "pooling needs kernel_size (or kernel_h and kernel_w)",
            "kernel_size",
        )
        kernel = (p.kernel_h, p.kernel_w)
    if p.HasField("pad_h") or p.HasField("pad_w"):
        require(not p.HasField("pad"), "give either pad or pad_h and pad_w, not both", "pad")
        pad = (p.pad_h, p.pad_w)
    else:
        pad = (p.pad, p.pad)
    if p.HasField("stride_h") or p.HasField("stride_w"):
        require(not p.HasField("stride"), "give either stride or stride_h and stride_w, not both", "stride")
        stride = (p.stride_h, p.stride_w)
    else:
        stride = (p.stride, p.stride)
    require(min(kernel) > 0, f"kernel size must be positive, got {_x(kernel)}", "kernel_size")
    require(min(stride) > 0, f"stride must be positive, got {_x(stride)}", "stride")
    if pad != (0, 0):
        require(p.pool in (p.MAX, p.AVE), "only MAX and AVE pooling take padding", "pad")
        require(
            pad[0] < kernel[0] and pad[1] < kernel[1],
            f"pad {_x(pad)} must be smaller than the kernel {_x(kernel)}",
            "pad",
        )
    return PoolGeometry(kernel, stride, pad, False)


def pooled_size(size: int, k: int, s: int, pad: int, ceil: bool) -> int:
    """Caffe's output size: rounded up (CEIL) or down, then the last window must start inside the
    input plus its left padding (checked only when padding is used, as Caffe does)."""
    span = size + 2 * pad - k
    out = (-(-span // s) if ceil else span // s) + 1
    if pad and (out - 1) * s >= size + pad:
        out -= 1
    return out


def _torch_pooled_size(size: int, k: int, s: int, pad: int, ceil: bool) -> int:
    span = size + 2 * pad - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + pad:
        out -= 1
    return out


def _native_pooling(
    hw: Sequence[int], g: PoolGeometry, out_hw: Sequence[int], ceil: bool, method: int, train: bool = False
) -> bool:
    """Whether torch's own pooling pools exactly Caffe's windows, and (but for a TRAIN net, which is never
    exported) exports to ONNX pooling that does too.

    It needs the same output size from torch (whose ceil mode drops a last window starting past the
    input and its left padding, even without padding) and from Caffe, and pad <= kernel / 2; torch then
    divides an AVE window that overhangs the input by its size clipped at the padded input's end, as Caffe
    does. ONNX also needs its own formula's size (which drops no window) and, for AVE, no overhanging
    window, where the divisors of torch and ONNX Runtime differ. Otherwise pool2d pads explicitly."""
    for size, k, s, pd, o in zip(hw, g.kernel, g.stride, g.pad, out_hw, strict=True):
        if _torch_pooled_size(size, k, s, pd, ceil) != o or pd > k // 2:
            return False
        if train:
            continue
        span = size + 2 * pd - k
        if (-(-span // s) if ceil else span // s) + 1 != o:
            return False
        if method == pb.PoolingParameter.AVE and (o - 1) * s + k > size + 2 * pd:
            return False
    return True


def _window_extent(size: int, k: int, s: int, pad: int, out: int) -> tuple[int, list[int]]:
    """The right padding that makes exactly `out` windows fit after `pad` cells of left padding (negative:
    cells to drop), and Caffe's AVE divisor per window (the window clipped at size + pad, counting the
    padding cells before that)."""
    right = (out - 1) * s + k - size - pad
    return right, [_ave_divisor(size, k, s, pad, i) for i in range(out)]


def _ave_divisor(size: int, k: int, s: int, pad: int, i: int) -> int:
    """Caffe's AVE divisor of window i: min(start + k, size + pad) - start, with start = i * s - pad. It
    shrinks as i grows, so the last window's is the smallest."""
    return min(k, size + 2 * pad - i * s)


def pool2d(
    x: torch.Tensor,
    method: int,
    g: PoolGeometry,
    out_hw: tuple[int, int],
    ceil: bool,
    train: bool,
    with_mask: bool = False,
) -> list[torch.Tensor]:
    """Caffe's pooling with torch: torch's own ceil_mode/count_include_pad where they pool Caffe's
    windows, else explicit padding (and, for AVE, Caffe's divisors) so that exactly Caffe's windows
    are pooled."""
    import torch
    import torch.nn.functional as F

    P = pb.PoolingParameter
    hw = (x.shape[2], x.shape[3])
    native = _native_pooling(hw, g, out_hw, ceil, method, train)
    if method in (P.MAX, P.AVE) and not native:
        (right_h, div_h), (right_w, div_w) = (
            _window_extent(size, k, s, pd, o)
            for size, k, s, pd, o in zip(hw, g.kernel, g.stride, g.pad, out_hw, strict=True)
        )
        pads = (g.pad[1], right_w, g.pad[0], right_h)  # F.pad drops cells for a negative amount
    if method == P.MAX:
        if native:
            y, idx = F.max_pool2d(x, g.kernel, g.stride, g.pad, 1, ceil, return_indices=True)
        else:  # pad with the lowest value so that only real cells can win; an empty window gives it, as Caffe
            lowest = torch.finfo(x.dtype).min
            xp = F.pad(x, pads, value=lowest)
            y, idx = F.max_pool2d(xp, g.kernel, g.stride, 0, 1, False, return_indices=True)
            if with_mask:  # indices of the padded plane back to the input's plane; -1 for an empty window
                wp = xp.shape[3]
                idx = (idx // wp - g.pad[0]) * hw[1] + (idx % wp - g.pad[1])
                idx = torch.where(y == lowest, torch.full_like(idx, -1), idx)
        return [y, idx.to(x.dtype)] if with_mask else [y]
    if method == P.AVE:
        if native:
            return [F.avg_pool2d(x, g.kernel, g.stride, g.pad, ceil, count_include_pad=True)]
        total = F.avg_pool2d(F.pad(x, pads), g.kernel, g.stride) * (g.kernel[0] * g.kernel[1])
        divisor = (
            torch.tensor(div_h, dtype=x.dtype, device=x.device)[:, None]
            * torch.tensor(div_w, dtype=x.dtype, device=x.device)[None, :]
        )
        return [total / divisor]
    # STOCHASTIC, as Caffe's kernels: TEST takes sum(x^2) / (FLT_MIN + sum(x)); TRAIN draws u in [0, 1) and
    # takes the first cell whose running sum reaches u * sum(x), which samples a cell with probability
    # x / sum(x) when x is non-negative (as after a ReLU). With negative values no cell may reach it; Caffe
    # then leaves the output unwritten, and this takes the cell whose running sum comes closest.
    n, c = x.shape[0], x.shape[1]
    oh, ow = out_hw
    extra = [max(0, (o - 1) * s + k - size) for size, k, s, o in zip(hw, g.kernel, g.stride, out_hw, strict=True)]
    xp = F.pad(x, (0, extra[1], 0, extra[0]))  # zeros after the window's cells leave its running sums alone
    cols = F.unfold(xp, g.kernel, 1, 0, g.stride).reshape(n, c, g.kernel[0] * g.kernel[1], oh * ow)
    total = cols.sum(2)
    if not train:
        y = (cols * cols).sum(2) / (total + torch.finfo(x.dtype).tiny)
    else:
        running = cols.detach().cumsum(2)
        reached = running >= torch.rand_like(total).unsqueeze(2) * total.detach().unsqueeze(2)
        pick = torch.where(
            reached.any(2, keepdim=True), reached.to(x.dtype).argmax(2, keepdim=True), running.argmax(2, keepdim=True)
        )
        y = cols.gather(2, pick).squeeze(2)
    return [y.reshape(n, c, oh, ow)]


@register
class Pooling(LayerDef):
    """Max, average or stochastic pooling over H and W, with Caffe's rounding (up by default).

    layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
            pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    """

    type = "Pooling"
    onnx_ops = frozenset({"AveragePool", "MaxPool", "Pad"})
    param_field = "pooling_param"
    category = "vision"
    tops = Arity(1, 2)
    draw_colour = "#FFB74D"
    examples = (
        Example("pooling_param { pool: MAX kernel_size: 3 stride: 2 }", (In((2, 3, 9, 8)),)),
        Example("pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }", (In((2, 2, 7, 6)),)),
        Example("pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }", (In((1, 2, 5, 5)),), tops=2),
        Example("pooling_param { pool: AVE global_pooling: true }", (In((2, 3, 4, 5)),)),
        Example("pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }", (In((1, 1, 8, 8)),)),
        Example("pooling_param { pool: MAX kernel_size: 1 stride: 3 }", (In((1, 2, 5, 5)),)),
        Example(
            "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }",
            (In((1, 2, 4, 4), "positive"),),
            gradcheck=False,
        ),
    )

    def summary(self, s: LayerSpec, bottoms: Sequence[Shape]) -> str:
        pool = pb.PoolingParameter.PoolMethod.Name(s.p.pool)
        g = pool_geometry(s.p, bottoms[0])
        if g.global_pooling:
            return f"{pool} global"
        return _window(f"{pool} {'x'.join(map(str, g.kernel))}", g.stride, g.pad)

    def check(self, s: LayerSpec) -> None:
        if s.num_tops == 2:
            require(s.p.pool == s.p.MAX, "only MAX pooling has a second top (the argmax mask)", "top")

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) != 4:
            raise ShapeError(f"Pooling takes 4-axis (N, C, H, W) bottoms, got {fmt(b)}")
        g = pool_geometry(s.p, b)
        ceil = s.p.round_mode == s.p.CEIL
        out = tuple(
            pooled_size(size, k, st, pd, ceil) for size, k, st, pd in zip(b[2:], g.kernel, g.stride, g.pad, strict=True)
        )
        if min(out) < 1:
            raise ShapeError(
                f"kernel {_x(g.kernel)} is larger than the padded input {_x(b[2:])}",
                hint=f"bottom '{s.lp.bottom[0]}' has shape {fmt(b)}",
            )
        if s.p.pool == s.p.AVE and any(
            _ave_divisor(size, k, st, pd, o - 1) <= 0
            for size, k, st, pd, o in zip(b[2:], g.kernel, g.stride, g.pad, out, strict=True)
        ):
            raise ShapeError(
                "with this kernel and stride the last average-pooling window would start "
                "past the input, where Caffe's divisor is undefined",
                hint="use a stride no larger than the kernel, or round_mode: FLOOR",
            )
        return [(b[0], b[1], *out)] * s.num_tops

    def scratch(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Shape | None:
        if s.p.pool != s.p.STOCHASTIC:
            return None
        g = pool_geometry(s.p, bottoms[0])  # stochastic pooling unfolds every window
        return (*bottoms[0][:2], count(g.kernel), count(tops[0][2:]))

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        g = pool_geometry(s.p, bottoms[0])
        method, ceil, train = s.p.pool, s.p.round_mode == s.p.CEIL, s.train
        out_hw = (tops[0][2], tops[0][3])
        with_mask = s.num_tops == 2
        return lambda params, xs: pool2d(xs[0], method, g, out_hw, ceil, train, with_mask)


@register
class SPP(LayerDef):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins; the levels are flattened and joined.

    layer { name: "spp" type: "SPP" bottom: "conv5" top: "spp" spp_param { pyramid_height: 3 } }
    """

    type = "SPP"
    onnx_ops = frozenset({"AveragePool", "Concat", "MaxPool", "Pad", "Reshape"})
    param_field = "spp_param"
    category = "vision"
    examples = (
        Example("spp_param { pyramid_height: 3 pool: MAX }", (In((2, 3, 13, 11)),)),
        Example("spp_param { pyramid_height: 2 pool: AVE }", (In((1, 2, 6, 7)),)),
        Example("spp_param { pyramid_height: 1 }", (In((2, 2, 5, 5)),)),
    )

    def check(self, s: LayerSpec) -> None:
        require(s.p.pyramid_height > 0, "pyramid_height must be set to a positive number", "pyramid_height")

    def _levels(self, s: LayerSpec, b: Shape) -> list[tuple[PoolGeometry, tuple[int, int]]]:
        h, w = b[2], b[3]
        levels = []
        for level in range(s.p.pyramid_height):  # ends by level 41 for any input: 2^level bins outgrow it
            bins = 2**level
            kernel = (-(-h // bins), -(-w // bins))
            pad = ((kernel[0] * bins - h + 1) // 2, (kernel[1] * bins - w + 1) // 2)
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:  # Caffe's pooling refuses these windows too
                raise ShapeError(
                    f"pyramid level {level} ({bins}x{bins} bins) does not fit the {h}x{w} input: "
                    f"its windows {_x(kernel)} would need padding {_x(pad)}, which must be smaller",
                    field="pyramid_height",
                    hint=f"use a pyramid_height of at most {level}",
                )
            g = PoolGeometry(kernel, kernel, pad, False)
            out = (
                pooled_size(h, kernel[0], kernel[0], pad[0], True),
                pooled_size(w, kernel[1], kernel[1], pad[1], True),
            )
            levels.append((g, out))
        return levels

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) != 4:
            raise ShapeError(f"SPP takes 4-axis (N, C, H, W) bottoms, got {fmt(b)}")
        levels = self._levels(s, b)
        if len(levels) == 1:
            return [(b[0], b[1], *levels[0][1])]
        return [(b[0], sum(b[1] * out[0] * out[1] for _, out in levels))]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch

        levels = self._levels(s, bottoms[0])
        method, train = s.p.pool, s.train

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            pooled = [pool2d(xs[0], method, g, out, True, train)[0] for g, out in levels]
            if len(pooled) == 1:
                return pooled
            return [torch.cat([y.flatten(1) for y in pooled], 1)]

        return forward


@register
class Crop(LayerDef):
    """Crops bottom 0 to bottom 1's size on the axes from `axis` on, at the given offsets.

    layer { name: "crop" type: "Crop" bottom: "upscore" bottom: "data" top: "score"
            crop_param { axis: 2 offset: 19 } }
    """

    type = "Crop"
    onnx_ops = frozenset({"Slice"})
    param_field = "crop_param"
    category = "vision"
    bottoms = Arity(2, 2)
    examples = (
        Example("crop_param { axis: 2 offset: 1 }", (In((2, 3, 8, 8)), In((2, 3, 5, 6)))),
        Example("crop_param { axis: 1 offset: 0 offset: 1 offset: 2 }", (In((2, 4, 6, 6)), In((2, 3, 4, 3)))),
    )

    def _offsets(self, s: LayerSpec, a: Shape, b: Shape) -> tuple[int, list[int]]:
        if len(a) != len(b):
            raise ShapeError(f"both bottoms need the same number of axes, got {fmt(a)} and {fmt(b)}")
        axis = canonical_axis(s.p.axis, len(a))
        n = len(a) - axis
        if len(s.p.offset) > 1 and len(s.p.offset) != n:
            raise ParamError(f"give one offset, or one per cropped axis ({n}); got {len(s.p.offset)}", field="offset")
        offsets = list(s.p.offset) * n if len(s.p.offset) == 1 else list(s.p.offset) or [0] * n
        for i, off in enumerate(offsets):
            ax = axis + i
            if a[ax] - off < b[ax]:
                raise ShapeError(f"cannot crop axis {ax} of {fmt(a)} to {b[ax]} at offset {off}")
        return axis, offsets

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        a, b = bottoms
        axis, _ = self._offsets(s, a, b)
        return [(*a[:axis], *b[axis:])]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        axis, offsets = self._offsets(s, *bottoms)
        sizes = bottoms[1][axis:]
        index = (slice(None),) * axis + tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))
        return lambda params, xs: [xs[0][index]]


@register
class LRN(LayerDef):
    """Local response normalisation: y = x / (k + alpha/n * sum of x^2 over n neighbours)^beta, across
    channels, or within a channel's n x n window (where k is not used: y = x * (1 + alpha/n^2 *
    sum)^-beta).

    layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
            lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
    """

    type = "LRN"
    onnx_ops = frozenset({"Add", "AveragePool", "Div", "Mul", "Pad", "Pow", "Reshape", "Squeeze"})
    param_field = "lrn_param"
    category = "normalization"
    examples = (
        Example("lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }", (In((2, 5, 3, 3)),)),
        Example("lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }", (In((2, 2, 4, 5)),)),
    )

    def check(self, s: LayerSpec) -> None:
        require(s.p.local_size % 2 == 1, f"local_size must be odd, got {s.p.local_size}", "local_size")

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return [expect_axes(bottoms[0], 4)]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        # The sum of squares runs over the n // 2 neighbours on each side that exist: a window wider than
        # the input sees all of them, so the narrowest such window, with alpha scaled to keep Caffe's
        # alpha / n (alpha / n^2 within a channel), gives the same values without padding by n.
        n, alpha, beta, k = s.p.local_size, s.p.alpha, s.p.beta, s.p.k
        if s.p.norm_region == s.p.ACROSS_CHANNELS:
            size = min(n, 2 * bottoms[0][1] - 1)
            alpha_size = alpha * (size / n)
            return lambda params, xs: [F.local_response_norm(xs[0], size, alpha_size, beta, k)]
        size = min(n, 2 * max(bottoms[0][2:]) - 1)
        pad, alpha_sq = (size - 1) // 2, alpha * (size / n) ** 2

        def within(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0]
            mean_sq = F.avg_pool2d(x * x, size, 1, pad, False, count_include_pad=True)
            return [x * (1 + alpha_sq * mean_sq) ** (-beta)]

        return within
