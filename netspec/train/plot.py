"""`netspec plot`: training curves from a metrics CSV, drawn as SVG (text) or PNG (with Pillow).

One panel per quantity: the training loss and every test output against the iteration, and the
learning rate, as Caffe's log plotter drew them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

from netspec.errors import DataError
from netspec.files import checked

if TYPE_CHECKING:
    from PIL import Image

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def read_metrics(path: str) -> dict[str, list[tuple[float, float]]]:
    """series name -> [(iteration, value)] from a netspec metrics CSV."""
    p = checked(path, "metrics file")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read '{path}' as a CSV file: {e}") from None
    if not rows or "iteration" not in rows[0]:
        raise DataError(f"'{path}' is not a netspec metrics file (no 'iteration' column)")
    series: dict[str, list[tuple[float, float]]] = {}
    for n, row in enumerate(rows, 2):
        try:
            it = float(row["iteration"])
        except (TypeError, ValueError):
            raise DataError(f"{path}:{n}: iteration '{row['iteration']}' is not a number") from None
        for key, value in row.items():
            if key in ("iteration", "epoch", "seconds") or value in (None, ""):
                continue
            try:
                series.setdefault(key, []).append((it, float(value)))
            except ValueError:
                raise DataError(f"{path}:{n}: {key} '{value}' is not a number") from None
    return series


def _panels(series: dict[str, list[tuple[float, float]]]) -> list[tuple[str, list[str]]]:
    losses = [k for k in series if k == "loss" or k.endswith("/loss")]
    rates = [k for k in series if k == "lr"]
    others = [k for k in series if k not in losses and k not in rates]
    return [
        (title, keys) for title, keys in (("loss", losses), ("test outputs", others), ("learning rate", rates)) if keys
    ]


def _ticks(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def plot(path: str, out: str, log: bool = False) -> None:
    """Draws a run's metrics CSV, or a sweep folder's trials (the metric of each trial and the best so far);
    `log` puts the loss panel on a logarithmic axis (values <= 0 are left out)."""
    if Path(path).is_dir():
        from netspec.train.sweep import read_trials

        metric, points, best = read_trials(path)
        series = {metric: points, "best so far": best}
        panels = [(f"{metric} per trial", [metric, "best so far"])] if points else []
    else:
        series = read_metrics(path)
        panels = _panels(series)
    if not panels:
        raise DataError(f"'{path}' has no values to plot yet")
    _draw(series, panels, out, log=log)


def _draw(
    series: dict[str, list[tuple[float, float]]],
    panels: list[tuple[str, list[str]]],
    out: str,
    width: int = 900,
    panel_height: int = 260,
    log: bool = False,
) -> None:
    suffix = Path(out).suffix.lower()
    if suffix not in (".svg", ".png"):
        raise DataError(f"cannot draw '{out}': name the output *.svg or *.png")
    shapes = _layout(series, panels, width, panel_height, log)
    if suffix == ".svg":
        Path(out).write_text(_svg(shapes, width, panel_height * len(panels)), encoding="utf-8")
    else:
        _png(shapes, width, panel_height * len(panels)).save(out)


def _range(values: list[float]) -> tuple[float, float]:
    """The axis of a panel. A flat curve gets a band of 10% around its value (or 1 around 0), so that it is
    drawn mid-panel with ticks near the value rather than at 0 on a -0.5..0.5 axis."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):
        pad = 0.1 * abs(lo) if lo else 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _layout(
    series: dict[str, list[tuple[float, float]]],
    panels: list[tuple[str, list[str]]],
    width: int,
    height: int,
    log: bool = False,
) -> list[tuple[str, ...]]:
    """Drawing commands: ("line", color, x1, y1, x2, y2), ("text", color, x, y, text), ("poly", color, pts)."""
    cmds: list[tuple[str, ...]] = []
    left, right, top_pad, bottom_pad = 70, 20, 28, 30
    xs = [x for keys in panels for k in keys[1] for x, _ in series[k]]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    for p, (title, keys) in enumerate(panels):
        y0 = p * height
        scaled = log and title == "loss"

        def y_of(v: float, scaled: bool = scaled) -> float:
            return (math.log10(v) if v > 0 else math.nan) if scaled else v

        values = [y_of(v) for k in keys for _, v in series[k] if math.isfinite(y_of(v))]
        lo, hi = _range(values)
        plot_w, plot_h = width - left - right, height - top_pad - bottom_pad

        def px(
            x: float, y: float, lo: float = lo, hi: float = hi, y0: int = y0, w: int = plot_w, h: int = plot_h
        ) -> tuple[float, float]:
            return left + (x - x_lo) / (x_hi - x_lo) * w, y0 + top_pad + (1 - (y - lo) / (hi - lo)) * h

        cmds.append(("text", "#000000", str(left), str(y0 + 18), title + (" (log scale)" if scaled else "")))
        decades = [float(d) for d in range(math.ceil(lo), math.floor(hi) + 1)] if scaled else []
        for t in decades if len(decades) >= 2 else _ticks(lo, hi):  # a log axis ticks at powers of 10
            _, y = px(x_lo, t)
            cmds.append(("line", "#dddddd", str(left), str(y), str(left + plot_w), str(y)))
            cmds.append(("text", "#444444", "4", str(y + 4), f"{10**t if scaled else t:.4g}"))
        for t in _ticks(x_lo, x_hi):
            x, _ = px(t, lo)
            cmds.append(("text", "#444444", str(x - 10), str(y0 + height - 10), f"{t:.0f}"))
        cmds.append(
            ("line", "#000000", str(left), str(y0 + top_pad + plot_h), str(left + plot_w), str(y0 + top_pad + plot_h))
        )
        for i, key in enumerate(keys):
            color = COLORS[i % len(COLORS)]
            pts = [px(x, y_of(v)) for x, v in series[key] if math.isfinite(y_of(v))]
            cmds.append(("poly", color, " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
            cmds.append(("text", color, str(left + plot_w - 180), str(y0 + 18 + 14 * i), key))
    return cmds


def _svg(cmds: list[tuple[str, ...]], width: int, height: int) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for c in cmds:
        if c[0] == "line":
            parts.append(f'<line x1="{c[2]}" y1="{c[3]}" x2="{c[4]}" y2="{c[5]}" stroke="{c[1]}"/>')
        elif c[0] == "text":
            text = c[4].replace("&", "&amp;").replace("<", "&lt;")
            parts.append(f'<text x="{c[2]}" y="{c[3]}" fill="{c[1]}">{text}</text>')
        elif c[2]:
            parts.append(f'<polyline points="{c[2]}" fill="none" stroke="{c[1]}" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _png(cmds: list[tuple[str, ...]], width: int, height: int) -> Image.Image:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for c in cmds:
        if c[0] == "line":
            draw.line([(float(c[2]), float(c[3])), (float(c[4]), float(c[5]))], fill=c[1])
        elif c[0] == "text":
            draw.text((float(c[2]), float(c[3]) - 10), c[4], fill=c[1])
        elif c[2]:
            pts = [tuple(float(v) for v in p.split(",")) for p in c[2].split()]
            if len(pts) > 1:
                draw.line(pts, fill=c[1], width=2)
    return image
