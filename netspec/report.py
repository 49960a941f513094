"""What `netspec check` prints: a table of layers with shapes, parameters and MACs, or one JSON object."""

from __future__ import annotations

from typing import Any

from netspec.layers.base import fmt
from netspec.net import Net
from netspec.shapes import footprint, memory_text


def summary(net: Net) -> dict[str, Any]:
    """The net as plain data (the --json output)."""
    return {
        "name": net.name,
        "file": net.spec.path,
        "phase": net.phase,
        "stages": list(net.state.stages),
        "inputs": {b: list(s) for b, s in net.inputs.items()},
        "outputs": list(net.outputs),
        "blobs": {b: list(s) for b, s in net.shapes.items()},
        "layers": [
            {
                "name": info.node.name,
                "type": info.node.type,
                "bottom": list(info.node.bottoms),
                "top": list(info.node.tops),
                "top_shapes": [None if s is None else list(s) for s in info.top_shapes],
                "params": info.num_params,
                "param_blobs": [
                    {
                        "shape": list(b.shape),
                        "lr_mult": b.lr_mult,
                        "decay_mult": b.decay_mult,
                        "shared_with": list(b.owner) if b.owner else None,
                    }
                    for b in info.blobs
                ],
                "macs": info.macs,
                "line": info.node.loc.line,
            }
            for info in net.layers
        ],
        "total_params": net.num_params,
        "trainable_params": sum(
            b.count for info in net.layers for b in info.blobs if b.owner is None and b.lr_mult != 0
        ),
        "total_macs": net.num_macs,
        **_memory(net),
        "warnings": [str(w) for w in net.warnings],
    }


def _memory(net: Net) -> dict[str, Any]:
    fp = footprint(net.layers)
    if fp is None:
        return {"param_bytes": 0, "activation_bytes": 0, "temporary_bytes": 0, "biggest_tensor": None}
    info, what, shape = fp.biggest
    return {
        "param_bytes": fp.param_bytes,
        "activation_bytes": fp.activation_bytes,
        "temporary_bytes": fp.scratch_bytes,
        "biggest_tensor": {"layer": info.node.name, "tensor": what, "shape": list(shape)},
    }


def _count(n: int) -> str:
    return f"{n:,}" if n else "-"


def table(net: Net) -> str:
    """The net as an aligned text table, with totals."""
    rows = [("layer", "type", "bottom -> top", "top shape", "params", "MACs")]
    for info in net.layers:
        n = info.node
        wiring = f"{', '.join(n.bottoms) or '-'} -> {', '.join(n.tops) or '-'}"
        shapes = ", ".join("?" if s is None else fmt(s) for s in info.top_shapes) or "-"
        if n.definition.data_dependent:
            shapes += " (at most)"
        rows.append((n.name, n.type, wiring, shapes, _count(info.num_params), _count(info.macs)))
    widths = [min(max(len(r[i]) for r in rows), 48) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    inputs = ", ".join(f"{b} {fmt(s)}" for b, s in net.inputs.items()) or "none"
    trainable = sum(b.count for info in net.layers for b in info.blobs if b.owner is None and b.lr_mult != 0)
    lines += [
        "",
        f"net '{net.name}' ({net.spec.path}), phase {net.phase}"
        + (f", stages {', '.join(net.state.stages)}" if net.state.stages else ""),
        f"inputs:  {inputs}",
        f"outputs: {', '.join(net.outputs) or 'none'}",
        f"layers: {len(net.layers)}   parameters: {net.num_params:,} ({trainable:,} trainable)   "
        f"MACs per forward pass: {net.num_macs:,}",
    ]
    fp = footprint(net.layers)
    if fp is not None:
        lines.append(memory_text(fp))
    return "\n".join(lines)
