"""Common layers: InnerProduct (fully connected) and Embed (a lookup table). Dropout is a neuron layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from netspec.layers.base import (
    BlobDef,
    Example,
    Forward,
    In,
    LayerDef,
    LayerSpec,
    Shape,
    as_ids,
    canonical_axis,
    count,
    require,
    weight_and_bias,
)
from netspec.layers.registry import register

if TYPE_CHECKING:
    import torch


@register
class InnerProduct(LayerDef):
    """A fully connected layer: the axes from `axis` on are flattened into one input vector of size K,
    and y = W x + b with W of shape (num_output, K) (or (K, num_output) with transpose).

    layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
            inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
    """

    type = "InnerProduct"
    onnx_ops = frozenset({"Add", "Gemm", "MatMul", "Reshape"})
    param_field = "inner_product_param"
    category = "common"
    draw_colour = "#CE93D8"
    examples = (
        Example("inner_product_param { num_output: 5 }", (In((3, 4)),)),
        Example("inner_product_param { num_output: 4 }", (In((2, 3, 2, 2)),)),
        Example("inner_product_param { num_output: 3 axis: 2 transpose: true bias_term: false }", (In((2, 3, 4)),)),
    )

    def check(self, s: LayerSpec) -> None:
        require(s.p.num_output > 0, "num_output must be set to a positive number", "num_output")

    def _k(self, s: LayerSpec, b: Shape) -> tuple[int, int]:
        axis = canonical_axis(s.p.axis, len(b))
        return axis, count(b, axis)

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        axis, _ = self._k(s, bottoms[0])
        return [(*bottoms[0][:axis], s.p.num_output)]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        p = s.p
        _, k = self._k(s, bottoms[0])
        shape = (k, p.num_output) if p.transpose else (p.num_output, k)
        return weight_and_bias(p, shape, (p.num_output,))

    def macs(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> int:
        return count(bottoms[0]) * s.p.num_output

    def summary(self, s: LayerSpec, bottoms: Sequence[Shape]) -> str:
        return f"{s.p.num_output} out"

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        axis, k = self._k(s, bottoms[0])
        transpose, flat = s.p.transpose, len(bottoms[0]) != axis + 1

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0]
            if flat:
                x = x.reshape((*x.shape[:axis], k))  # (..., d_axis, ...) -> (..., K)
            w = params[0].t() if transpose else params[0]
            return [F.linear(x, w, params[1] if len(params) > 1 else None)]

        return forward


@register
class Embed(LayerDef):
    """Looks up integer ids in [0, input_dim) in a (input_dim, num_output) table; the top has the
    bottom's shape plus a last axis of num_output. No gradient reaches the ids.

    layer { name: "embed" type: "Embed" bottom: "words" top: "vectors"
            embed_param { input_dim: 10000 num_output: 128 } }
    """

    type = "Embed"
    onnx_ops = frozenset({"Add", "Cast", "Gather"})
    param_field = "embed_param"
    category = "common"
    examples = (Example("embed_param { input_dim: 7 num_output: 3 }", (In((2, 4), "label", 7),)),)

    def check(self, s: LayerSpec) -> None:
        require(s.p.num_output > 0, "num_output must be set to a positive number", "num_output")
        require(s.p.input_dim > 0, "input_dim (the number of ids) must be set to a positive number", "input_dim")

    def infer(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[Shape]:
        return [(*bottoms[0], s.p.num_output)]

    def blobs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> list[BlobDef]:
        p = s.p
        return weight_and_bias(p, (p.input_dim, p.num_output), (p.num_output,))

    def int_inputs(self, s: LayerSpec, bottoms: Sequence[Shape]) -> dict[int, int]:
        return {0: s.p.input_dim}

    def lower(self, s: LayerSpec, bottoms: Sequence[Shape], tops: Sequence[Shape]) -> Forward:
        import torch.nn.functional as F

        bound, what = s.p.input_dim, f"bottom '{s.lp.bottom[0]}'"

        def forward(params: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            y = F.embedding(as_ids(xs[0], bound, what, "input_dim"), params[0])
            return [y + params[1] if len(params) > 1 else y]

        return forward
