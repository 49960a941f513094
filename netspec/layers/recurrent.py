"""Recurrent layers: RNN, LSTM and LSTMUnit, with Caffe's sequence-major layout.

Bottoms are x (T, N, ...), cont (T, N) where 0 marks the start of a sequence, an optional static input
x_static (N, ...) seen at every step, and with expose_hidden the initial hidden state(s). The initial
state is zero on every call unless exposed (Caffe carries it across calls, which makes no difference
for sequences that begin with cont = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from netspec.errors import ShapeError
from netspec.layers.base import (
    Arity,
    BlobDef,
    Example,
    Forward,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    count,
    filled,
    fmt,
    require,
)
from netspec.layers.registry import register

if TYPE_CHECKING:
    import torch


class _Recurrent(LayerDef):
    param_field = "recurrent_param"
    category = "recurrent"
    batch_axis = 1  # (T, N, ...): time first
    bottoms = Arity(2, 5)
    tops = Arity(1, 3)
    states = 1  # hidden state blobs: h for RNN; h and c for LSTM
    gates = 1  # rows of the input transform per output unit

    def check(self, s: LayerSpec) -> None:
        require(s.p.num_output > 0, "num_output must be set to a positive number", "num_output")
        exposed = self.states if s.p.expose_hidden else 0
        require(
            s.num_tops == 1 + exposed,
            f"{self.type} has {1 + exposed} top(s) here (the output"
            + (f" and the final state{'s' if exposed > 1 else ''})" if exposed else ")")
            + f", got {s.num_tops}",
            "top",
        )
        require(
            s.num_bottoms in (2 + exposed, 3 + exposed),
            f"{self.type} takes x, cont, an optional x_static"
            + (f" and {exposed} initial state(s)" if exposed else "")
            + f"; got {s.num_bottoms} bottoms",
            "bottom",
        )

    def _static(self, s: LayerSpec) -> bool:
        exposed = self.states if s.p.expose_hidden else 0
        return s.num_bottoms > 2 + exposed

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        x, cont = bottoms[0], bottoms[1]
        if len(x) < 2:
            raise ShapeError(f"x must be (T, N, ...), got {fmt(x)}")
        if cont != x[:2]:
            raise ShapeError(f"cont must be (T, N) = {fmt(x[:2])} to match x {fmt(x)}, got {fmt(cont)}")
        n, h = x[1], s.p.num_output
        rest = bottoms[2:]
        if self._static(s):
            if rest[0][:1] != (n,):
                raise ShapeError(f"x_static must have N = {n} items on axis 0, got {fmt(rest[0])}")
            rest = rest[1:]
        for i, state in enumerate(rest):
            if state != (1, n, h):
                raise ShapeError(f"initial state {i} must be (1, N, num_output) = (1, {n}, {h}), got {fmt(state)}")
        return [(x[0], n, h)] + [(1, n, h)] * (s.num_tops - 1)

    def _input_blobs(self, s: LayerSpec, bottoms: Sequence[Shape], name: str) -> list[BlobDef]:
        h, p = s.p.num_output, s.p
        out = [
            filled(f"W_x{name}", (self.gates * h, count(bottoms[0], 2)), p, "weight_filler"),
            filled(f"b_{name}", (self.gates * h,), p, "bias_filler"),
        ]
        if self._static(s):
            out.append(filled(f"W_x{name}_static", (self.gates * h, count(bottoms[2], 1)), p, "weight_filler"))
        return out

    def macs(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> int:
        return sum(count(b.shape) for b in self.blobs(s, bottoms) if len(b.shape) == 2) * bottoms[0][0] * bottoms[0][1]


@register
class RNN(_Recurrent):
    """An Elman network: h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h), o_t = tanh(W_ho h_t + b_o).
    Blobs, in Caffe's order: W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o.

    layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "o" recurrent_param { num_output: 16 } }
    """

    type = "RNN"
    onnx_ops = frozenset(
        {"Add", "Concat", "ConstantOfShape", "Gather", "Gemm", "MatMul", "Mul", "Reshape", "Tanh", "Unsqueeze"}
    )
    examples = (
        Example(
            "recurrent_param { num_output: 3 weight_filler { type: 'uniform' min: -0.5 max: 0.5 } }",
            (In((4, 2, 5)), In((4, 2), "binary")),
        ),
        Example(
            "recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: 'gaussian' std: 0.3 } }",
            (In((3, 2, 4)), In((3, 2), "binary"), In((2, 3)), In((1, 2, 3))),
            tops=2,
        ),
    )

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        h, p = s.p.num_output, s.p
        return [
            *self._input_blobs(s, bottoms, "h"),
            filled("W_hh", (h, h), p, "weight_filler"),
            filled("W_ho", (h, h), p, "weight_filler"),
            filled("b_o", (h,), p, "bias_filler"),
        ]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch
        import torch.nn.functional as F

        static, exposed, h = self._static(s), s.p.expose_hidden, s.p.num_output

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x, cont = xs[0], xs[1]
            w_xh, b_h = params[0], params[1]
            w_hh, w_ho, b_o = params[-3], params[-2], params[-1]
            steps, n = x.shape[0], x.shape[1]
            pre = F.linear(x.reshape(steps, n, -1), w_xh, b_h)  # (T, N, H)
            if static:
                pre = pre + F.linear(xs[2].reshape(n, -1), params[2]).unsqueeze(0)
            state = xs[-1][0] if exposed else x.new_zeros(n, h)
            outs = []
            for t in range(steps):
                state = torch.tanh(pre[t] + F.linear(state * cont[t].unsqueeze(1), w_hh))
                outs.append(torch.tanh(F.linear(state, w_ho, b_o)))
            out = [torch.stack(outs)]
            return [*out, state.unsqueeze(0)] if exposed else out

        return forward


@register
class LSTM(_Recurrent):
    """Long short-term memory with Caffe's gate order (input, forget, output, cell input):
    gates = W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c, c_t = cont_t * f * c_{t-1} + i * g, h_t = o * tanh(c_t).
    Blobs, in Caffe's order: W_xc, b_c, [W_xc_static], W_hc.

    layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h" recurrent_param { num_output: 16 } }
    """

    type = "LSTM"
    onnx_ops = frozenset(
        {
            "Add",
            "Concat",
            "ConstantOfShape",
            "Gather",
            "Gemm",
            "MatMul",
            "Mul",
            "Reshape",
            "Sigmoid",
            "Slice",
            "Tanh",
            "Unsqueeze",
        }
    )
    states = 2
    gates = 4
    examples = (
        Example(
            "recurrent_param { num_output: 3 weight_filler { type: 'uniform' min: -0.5 max: 0.5 } "
            "bias_filler { type: 'uniform' min: -0.5 max: 0.5 } }",
            (In((4, 2, 5)), In((4, 2), "binary")),
        ),
        Example(
            "recurrent_param { num_output: 2 expose_hidden: true weight_filler { type: 'gaussian' std: 0.3 } }",
            (In((3, 2, 4)), In((3, 2), "binary"), In((1, 2, 2)), In((1, 2, 2))),
            tops=3,
        ),
    )

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        h, p = s.p.num_output, s.p
        return [*self._input_blobs(s, bottoms, "c"), filled("W_hc", (4 * h, h), p, "weight_filler")]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch
        import torch.nn.functional as F

        static, exposed, h = self._static(s), s.p.expose_hidden, s.p.num_output

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x, cont = xs[0], xs[1]
            steps, n = x.shape[0], x.shape[1]
            pre = F.linear(x.reshape(steps, n, -1), params[0], params[1])  # (T, N, 4H)
            if static:
                pre = pre + F.linear(xs[2].reshape(n, -1), params[2]).unsqueeze(0)
            w_hc = params[-1]
            if exposed:
                hidden, cell = xs[-2][0], xs[-1][0]
            else:
                hidden = cell = x.new_zeros(n, h)
            outs = []
            for t in range(steps):
                keep = cont[t].unsqueeze(1)
                gates = pre[t] + F.linear(hidden * keep, w_hc)
                cell, hidden = lstm_unit(cell, gates, keep, h)
                outs.append(hidden)
            out = [torch.stack(outs)]
            return [*out, hidden.unsqueeze(0), cell.unsqueeze(0)] if exposed else out

        return forward


def lstm_unit(cell: torch.Tensor, gates: torch.Tensor, keep: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step from the gate pre-activations (..., 4H): returns the new cell and hidden states."""
    import torch

    i = torch.sigmoid(gates[..., :h])
    f = torch.sigmoid(gates[..., h : 2 * h]) * keep
    o = torch.sigmoid(gates[..., 2 * h : 3 * h])
    g = torch.tanh(gates[..., 3 * h :])
    cell = f * cell + i * g
    return cell, o * torch.tanh(cell)


@register
class LSTMUnit(LayerDef):
    """One LSTM step: bottoms c_prev (1, N, H), gate inputs (1, N, 4H), cont (1, N); tops c and h.

    layer { name: "unit" type: "LSTMUnit" bottom: "c_0" bottom: "gates" bottom: "cont" top: "c_1" top: "h_1" }
    """

    type = "LSTMUnit"
    onnx_ops = frozenset({"Add", "Mul", "Sigmoid", "Slice", "Tanh", "Unsqueeze"})
    category = "recurrent"
    batch_axis = 1  # (T, N, ...): time first
    bottoms = Arity(3, 3)
    tops = Arity(2, 2)
    examples = (Example("", (In((1, 2, 3)), In((1, 2, 12)), In((1, 2), "binary")), tops=2),)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        c, gates, cont = bottoms
        if len(c) != 3 or gates != (*c[:2], 4 * c[2]) or cont != c[:2]:
            raise ShapeError(
                f"LSTMUnit needs c_prev (1, N, H), gates (1, N, 4H) and cont (1, N); got {fmt(c)}, "
                f"{fmt(gates)} and {fmt(cont)}"
            )
        return [c, c]

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        h = bottoms[0][2]

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            cell, hidden = lstm_unit(xs[0], xs[1], xs[2].unsqueeze(-1), h)
            return [cell, hidden]

        return forward
