"""`netspec draw`: a picture of a net's layers and the blobs between them, with every blob's shape.

DOT text is for those who have Graphviz. SVG and PNG are laid out here, with Sugiyama's layered method
(ranks by longest path, bend points on edges that span ranks, barycenter ordering against crossings,
Brandes-Köpf coordinates), so that drawing needs no program beyond Pillow. HTML is that SVG in a page to
explore in a browser.
"""

from __future__ import annotations

import bisect
import html
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netspec.errors import NetspecError
from netspec.layers.base import Shape, fmt
from netspec.net import Net, has_phase_rules, load
from netspec.netfile import read_net
from netspec.shapes import LayerInfo
from netspec.spec.emit import to_prototxt

if TYPE_CHECKING:
    from PIL import Image

RANKDIRS = ("TB", "LR", "BT", "RL")

# Caffe's draw_net colours (a LayerDef's draw_colour: convolution red, pooling orange, inner product purple;
# other layers blue), lightened so that black text stays legible; data layers green, losses yellow, net
# outputs grey.
_LAYER_FILL, _DATA_FILL, _LOSS_FILL, _OUTPUT_FILL = "#9FBFF5", "#A5D6A7", "#FFE082", "#E0E0E0"
_INK, _EDGE_INK, _LABEL_INK = "#000000", "#505050", "#303030"

_FONT_SIZE = 12
_LINE = 15  # line height in pixels, for the SVG's sans-serif and for Pillow's default font alike
_PAD_X, _PAD_Y = 10, 6  # text to box border
_NODE_GAP, _BEND_GAP = 18, 8  # least room between neighbours on a rank; between two bend points
_MIN_RANK_GAP, _MAX_RANK_GAP = 22, 90  # room between ranks, more where edges run far sideways
_STUB = 6  # edges leave and enter boxes straight for this long, so arrowheads point along the rank
_ARROW = 8
_MARGIN = 16
_SWEEPS = 8  # barycenter sweeps down and up, to order the ranks

Point = tuple[float, float]
Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def draw(
    spec: str,
    output: str,
    phase: str | None = None,
    stages: tuple[str, ...] = (),
    rankdir: str = "TB",
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Draws a net's layer graph to `output` (.svg, .png, .dot or .html), each edge labelled with its blob's shape.

    Reviewing a net means following its blobs through branches, in-place layers and losses while checking
    their sizes; a picture shows both at once, and one without Graphviz can be drawn anywhere netspec runs.

    Args:
        spec: a .prototxt or .yaml net.
        output: the file to write; its suffix picks the format.
        phase, stages: which of the spec's layers to draw, as `netspec.load` takes them.
        rankdir: the direction the data flows: TB (top to bottom), LR, BT or RL.
        shapes: shapes for data-layer tops whose sources are not at hand.

    Raises:
        NetspecError: for an unknown suffix or rankdir, a missing output folder, or a spec with an error
            (that error itself).
    """
    suffix, rankdir = _check_output(output, rankdir)
    if suffix == ".html":
        _write(output, html_page(spec, phase, stages, rankdir, shapes))
        return
    net = load(spec, phase=phase, stages=stages, shapes=shapes)
    boxes, edges, _ = _diagram(net)
    if suffix == ".dot":
        _write(output, _dot(net.name, boxes, edges, rankdir))
    elif suffix == ".svg":
        _write(output, _svg(net.name, _layout(boxes, edges, rankdir, _svg_text_width)))
    else:
        try:
            _png(boxes, edges, rankdir).save(output, format="PNG")
        except OSError as e:
            raise NetspecError(f"cannot write '{output}': {e.strerror}") from None


def _write(output: str, text: str) -> None:
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise NetspecError(f"cannot write '{output}': {e.strerror}") from None


def _check_output(output: str, rankdir: str) -> tuple[str, str]:
    suffix = Path(output).suffix.lower()
    if suffix not in (".svg", ".png", ".dot", ".html"):
        raise NetspecError(f"cannot draw to '{output}': give a .svg, .png, .dot or .html file")
    if rankdir.upper() not in RANKDIRS:
        raise NetspecError(f"unknown rankdir '{rankdir}': use TB (top to bottom), LR, BT or RL")
    folder = Path(output).parent
    if not folder.is_dir():
        raise NetspecError(f"cannot write '{output}': the folder '{folder}' does not exist")
    return suffix, rankdir.upper()


# --- what is drawn ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Box:
    """A layer, or a net output (drawn as an ellipse)."""

    id: str  # unique, unlike layer names
    lines: tuple[str, ...]
    fill: str
    output: bool = False


@dataclass(frozen=True)
class _Edge:
    """A blob from the layer that last wrote it to a layer that reads it, or to a net output (unlabelled:
    the output's ellipse names the blob)."""

    src: int
    dst: int
    blob: str
    label: str


def _diagram(net: Net, fold: bool = False) -> tuple[list[_Box], list[_Edge], list[list[LayerInfo]]]:
    """The boxes and edges, boxes in execution order: every edge goes from an earlier box to a later one;
    and the layers each box stands for. With `fold`, a layer that works in place (a ReLU after a
    convolution) is drawn inside the box of the layer whose top it rewrites, as Netron draws activations."""
    boxes: list[_Box] = []
    edges: list[_Edge] = []
    members: list[list[LayerInfo]] = []
    ids: set[str] = set()
    writer: dict[str, tuple[int, Shape | None]] = {}  # blob -> (box of the layer that last wrote it, shape)
    for info in net.layers:
        node, here = info.node, len(boxes)
        if fold and node.tops and node.tops == node.bottoms and len({writer[b][0] for b in node.bottoms}) == 1:
            host = writer[node.bottoms[0]][0]
            old = boxes[host]
            boxes[host] = _Box(old.id, (*old.lines, f"+ {node.type} {node.name}"), old.fill)
            members[host].append(info)
            for top, shape in zip(node.tops, info.top_shapes, strict=True):
                writer[top] = (host, shape)
            continue
        boxes.append(_Box(_unique(node.name, ids), (node.name, node.type, *_summary(info)), _fill(info)))
        members.append([info])
        for blob in dict.fromkeys(node.bottoms):  # a blob read twice is one connection
            src, shape = writer[blob]
            edges.append(_Edge(src, here, blob, f"{blob} {_shape_text(shape)}"))
        for top, shape in zip(node.tops, info.top_shapes, strict=True):
            writer[top] = (here, shape)
    for blob in net.outputs:
        src, shape = writer[blob]
        boxes.append(_Box(_unique(f"output:{blob}", ids), (blob, _shape_text(shape)), _OUTPUT_FILL, output=True))
        members.append([])
        edges.append(_Edge(src, len(boxes) - 1, blob, ""))
    return boxes, edges, members


def _unique(name: str, taken: set[str]) -> str:
    """Caffe lets parameter-free layers share a name; their boxes still need distinct ids."""
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}#{n}"
    taken.add(unique)
    return unique


def _shape_text(shape: Shape | None) -> str:
    return "(?)" if shape is None else fmt(shape)  # None: the top of a layer netspec never runs


def _fill(info: LayerInfo) -> str:
    d = info.node.definition
    if d.loss:
        return _LOSS_FILL
    if d.feeds:
        return _DATA_FILL
    return d.draw_colour or _LAYER_FILL


def _summary(info: LayerInfo) -> tuple[str, ...]:
    """A line with the parameters that decide the output's size, for the layer types that have one."""
    bottoms = info.bottom_shapes
    if any(b is None for b in bottoms):
        return ()
    line = info.node.definition.summary(info.node.spec, bottoms)  # type: ignore[arg-type]  # None ruled out above
    return (line,) if line else ()


# --- a page to explore in a browser -----------------------------------------------------------------------------
# Viewers such as Netron show no intermediate shapes for Caffe models, nor what each layer costs; netspec knows
# both statically. The page is self-contained (the SVG laid out below, and draw_page.html's inline script and
# style, written for netspec; nothing is fetched), so it can be mailed, archived with a model or opened offline.


def html_page(
    spec: str,
    phase: str | None = None,
    stages: tuple[str, ...] = (),
    rankdir: str = "TB",
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> str:
    """The page for a spec: one view for `phase`, or for both phases when none is given and the spec has
    phase rules (its own phase first, as `netspec check` picks it)."""
    first = load(spec, phase=phase, stages=stages, shapes=shapes)
    nets = [first]
    if phase is None and has_phase_rules(read_net(spec).message):  # the spec's own phase first, as check
        nets.append(load(spec, phase="TRAIN" if first.phase == "TEST" else "TEST", stages=stages, shapes=shapes))
    views = [_view(net, rankdir) for net in nets]
    data = json.dumps([v["data"] for v in views]).replace("</", "<\\/")
    name = html.escape(views[0]["name"] or "net")
    tabs = (
        "".join(
            f'<button class="phase" data-view="{i}">{html.escape(v["data"]["phase"])}</button>'
            for i, v in enumerate(views)
        )
        if len(views) > 1
        else ""
    )
    svgs = "".join(
        f'<div class="view" data-view="{i}"{"" if i == 0 else " hidden"}>{v["svg"]}</div>' for i, v in enumerate(views)
    )
    page = resources.files("netspec").joinpath("draw_page.html").read_text(encoding="utf-8")
    return page.replace("{{name}}", name).replace("{{tabs}}", tabs).replace("{{svgs}}", svgs).replace("{{data}}", data)


def _view(net: Net, rankdir: str) -> dict[str, Any]:
    boxes, edges, members = _diagram(net, fold=True)
    svg = _svg(net.name, _layout(boxes, edges, rankdir, _svg_text_width))
    svg = svg.replace("<svg ", '<svg class="net" ', 1)
    entries = []
    for box, infos in zip(boxes, members, strict=True):
        if box.output:
            entries.append({"id": box.id, "output": True, "blob": box.lines[0], "shape": box.lines[1]})
            continue
        entries.append({"id": box.id, "layers": [_layer(info) for info in infos]})
    data = {
        "name": net.name,
        "phase": net.phase,
        "layers": len(net.layers),
        "params": net.num_params,
        "macs": net.num_macs,
        "boxes": entries,
    }
    return {"name": net.name, "svg": svg, "data": data}


def _layer(info: LayerInfo) -> dict[str, Any]:
    node = info.node
    return {
        "name": node.name,
        "type": node.type,
        "loc": f"{node.loc.file}:{node.loc.line}",
        "bottoms": [[b, _shape_text(s)] for b, s in zip(node.bottoms, info.bottom_shapes, strict=True)],
        "tops": [[t, _shape_text(s)] for t, s in zip(node.tops, info.top_shapes, strict=True)],
        "params": info.num_params,
        "macs": info.macs,
        "spec": to_prototxt(node.lp).strip(),
    }


# --- Graphviz DOT ----------------------------------------------------------------------------------------------


def _dot(name: str, boxes: list[_Box], edges: list[_Edge], rankdir: str) -> str:
    lines = [
        f"digraph {_quote(name or 'net')} {{",
        f"  rankdir={rankdir};",
        '  node [shape=box, style="filled,rounded", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for box in boxes:
        label = "\\n".join(_escape(line) for line in box.lines)
        shape = ", shape=ellipse, style=filled" if box.output else ""
        lines.append(f'  {_quote(box.id)} [label="{label}", fillcolor="{box.fill}"{shape}];')
    for e in edges:
        label = f" [label={_quote(e.label)}]" if e.label else ""
        lines.append(f"  {_quote(boxes[e.src].id)} -> {_quote(boxes[e.dst].id)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _quote(text: str) -> str:
    return f'"{_escape(text)}"'


# --- layered layout --------------------------------------------------------------------------------------------


@dataclass
class _Vertex:
    """A point of the layered layout: a box, an edge label, or a bend of an edge that spans several ranks.

    Edges pass through a vertex at its anchor `pos` on the order axis (the axis across the ranks); it
    extends `before` and `after` the anchor on that axis, and `depth` along the rank axis."""

    rank: int
    before: float = 0.0
    after: float = 0.0
    depth: float = 0.0
    box: int | None = None
    label: str = ""
    pos: float = 0.0


@dataclass
class _Picture:
    """A laid-out net in pixels, for the SVG and PNG writers."""

    width: float
    height: float
    boxes: list[tuple[_Box, Rect]]
    labels: list[tuple[str, Rect]]
    edges: list[tuple[_Edge, list[Point]]]


def _layout(boxes: list[_Box], edges: list[_Edge], rankdir: str, text_width: Callable[[str], float]) -> _Picture:
    """Places the boxes on ranks (box ranks even, edge labels on the odd rank after their layer), orders
    every rank to cut crossings, then gives every vertex its coordinates and every edge its path."""
    across = rankdir in ("TB", "BT")  # ranks are rows; else columns
    vertices = [_box_vertex(i, box, across, text_width) for i, box in enumerate(boxes)]
    for e in edges:  # longest path from the sources; edges come in the order of their consumer
        vertices[e.dst].rank = max(vertices[e.dst].rank, vertices[e.src].rank + 2)
    chains = _chains(vertices, edges, across, text_width)
    up: dict[int, list[int]] = defaultdict(list)
    down: dict[int, list[int]] = defaultdict(list)
    for a, b in dict.fromkeys((a, b) for chain in chains for a, b in itertools.pairwise(chain)):
        down[a].append(b)
        up[b].append(a)
    ranks = _order(vertices, up, down)
    _place(vertices, ranks, up, down)
    centres, depths = _rank_positions(vertices, ranks, down)
    extent = centres[-1] + depths[-1] / 2 if centres else 0.0

    def xy(o: float, r: float) -> Point:
        if rankdir in ("BT", "RL"):
            r = extent - r
        return (o + _MARGIN, r + _MARGIN) if across else (r + _MARGIN, o + _MARGIN)

    def rect(o0: float, o1: float, r0: float, r1: float) -> Rect:
        (xa, ya), (xb, yb) = xy(o0, r0), xy(o1, r1)
        return min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)

    placed = []
    labels = []
    for v in vertices:
        c = centres[v.rank]
        if v.box is not None:
            placed.append((boxes[v.box], rect(v.pos - v.before, v.pos + v.after, c - v.depth / 2, c + v.depth / 2)))
        elif v.label:
            inset = 4 if across else 2  # the text sits beside the edge that passes the anchor
            labels.append((v.label, rect(v.pos + inset, v.pos + v.after, c - v.depth / 2, c + v.depth / 2)))
    ports = _ports(vertices, up, down)
    paths = [
        (e, [xy(o, r) for o, r in _route(chain, vertices, centres, depths, ports)])
        for e, chain in zip(edges, chains, strict=True)
    ]
    breadth = max((v.pos + v.after for v in vertices), default=0.0)
    width, height = (breadth, extent) if across else (extent, breadth)
    return _Picture(width + 2 * _MARGIN, height + 2 * _MARGIN, placed, labels, paths)


def _box_vertex(index: int, box: _Box, across: bool, text_width: Callable[[str], float]) -> _Vertex:
    w = max(text_width(line) for line in box.lines) + 2 * _PAD_X
    h: float = len(box.lines) * _LINE + 2 * _PAD_Y
    if box.output:  # the ellipse around a w x h text block
        w, h = w * 1.2, h * 1.3
    size, depth = (w, h) if across else (h, w)
    return _Vertex(0, size / 2, size / 2, depth, box=index)


def _label_vertex(text: str, rank: int, across: bool, text_width: Callable[[str], float]) -> _Vertex:
    w = text_width(text)
    return _Vertex(rank, 0.0, w + 6, _LINE, label=text) if across else _Vertex(rank, 0.0, _LINE + 2, w + 8, label=text)


def _chains(
    vertices: list[_Vertex], edges: list[_Edge], across: bool, text_width: Callable[[str], float]
) -> list[list[int]]:
    """Each edge's vertices, one per rank: its layer, its label on the next rank, bend points, its reader.

    The edges of one blob from one layer share its label, and their bends for as long as they run together:
    a blob read far down by several layers is drawn as one line that branches."""
    labels: dict[tuple[int, str], int] = {}
    bends: dict[tuple[int, str, int], int] = {}  # (layer, blob, rank) -> the bend there
    chains = []
    for e in edges:
        chain = [e.src]
        if e.label:
            if (e.src, e.blob) not in labels:
                labels[e.src, e.blob] = len(vertices)
                vertices.append(_label_vertex(e.label, vertices[e.src].rank + 1, across, text_width))
            chain.append(labels[e.src, e.blob])
        for rank in range(vertices[chain[-1]].rank + 1, vertices[e.dst].rank):
            if (e.src, e.blob, rank) not in bends:
                bends[e.src, e.blob, rank] = len(vertices)
                vertices.append(_Vertex(rank))
            chain.append(bends[e.src, e.blob, rank])
        chain.append(e.dst)
        chains.append(chain)
    return chains


def _order(vertices: list[_Vertex], up: dict[int, list[int]], down: dict[int, list[int]]) -> list[list[int]]:
    """The vertices of each rank in their order on the order axis: barycenter sweeps down and up, keeping
    the order with the fewest crossings."""
    ranks: list[list[int]] = [[] for _ in range(max((v.rank for v in vertices), default=-1) + 1)]
    for i, v in enumerate(vertices):
        ranks[v.rank].append(i)
    best, fewest = [list(r) for r in ranks], _crossings(ranks, down)
    for _ in range(_SWEEPS):
        if fewest == 0:
            break
        for r in range(1, len(ranks)):
            _sort_by_barycenter(ranks[r], ranks[r - 1], up)
        for r in range(len(ranks) - 2, -1, -1):
            _sort_by_barycenter(ranks[r], ranks[r + 1], down)
        crossings = _crossings(ranks, down)
        if crossings < fewest:
            best, fewest = [list(r) for r in ranks], crossings
    return best


def _sort_by_barycenter(free: list[int], fixed: list[int], neighbours: dict[int, list[int]]) -> None:
    index = {v: i for i, v in enumerate(fixed)}

    def barycenter(item: tuple[int, int]) -> float:
        here, v = item
        ends = [index[u] for u in neighbours[v]]
        return sum(ends) / len(ends) if ends else here  # a vertex without neighbours there stays put

    free[:] = [v for _, v in sorted(enumerate(free), key=barycenter)]


def _crossings(ranks: list[list[int]], down: dict[int, list[int]]) -> int:
    total = 0
    for upper, lower in itertools.pairwise(ranks):
        index = {v: i for i, v in enumerate(lower)}
        ends: list[int] = []  # lower ends of the edges from vertices further left, sorted
        for u in upper:
            mine = [index[w] for w in down[u]]
            total += sum(len(ends) - bisect.bisect_right(ends, i) for i in mine)
            for i in mine:
                bisect.insort(ends, i)
    return total


def _place(
    vertices: list[_Vertex], ranks: list[list[int]], up: dict[int, list[int]], down: dict[int, list[int]]
) -> None:
    """Positions on the order axis, after Brandes and Köpf: four packings, each lining vertices up with their
    median neighbour above or below and pushing them to the left or the right, balanced by taking the mean
    of the middle two positions of every vertex. Lined-up vertices share one position: chains run straight."""
    if not vertices:
        return
    # Bends, and labels of blobs whose edges all run on as bends: a layer lined up with one of these rather
    # than with its short edges would sit far from the layers it feeds (a data layer's label, say).
    far = {
        v
        for v, vertex in enumerate(vertices)
        if vertex.box is None and (not vertex.label or all(vertices[w].box is None for w in down[v]))
    }
    packings = []
    for neighbours, sweep in ((up, ranks), (down, ranks[::-1])):
        for mirror in (False, True):
            root = _align([order[::-1] if mirror else order for order in sweep], neighbours, far)
            packed = _pack([order[::-1] if mirror else order for order in ranks], root, vertices, mirror)
            packings.append({v: -x for v, x in packed.items()} if mirror else packed)
    narrowest = min(packings, key=lambda xs: max(xs.values()) - min(xs.values()))
    for i, xs in enumerate(packings):  # left packings share the narrowest one's left end, right ones its right
        ends = min if i % 2 == 0 else max
        shift = ends(narrowest.values()) - ends(xs.values())
        packings[i] = {v: x + shift for v, x in xs.items()}
    for v, vertex in enumerate(vertices):
        middle = sorted(xs[v] for xs in packings)[1:3]
        vertex.pos = sum(middle) / 2  # keeps vertices apart, as each packing does
    left = min((v.pos - v.before for v in vertices), default=0.0)
    for vertex in vertices:
        vertex.pos -= left


def _align(sweep: list[list[int]], neighbours: dict[int, list[int]], far: set[int]) -> dict[int, int]:
    """The first vertex (root) of the block each vertex is lined up in: each vertex joins the block of a
    median neighbour in the rank before, unless that would cross a line already made. Short edges go first:
    of two medians, one not in `far`; and a vertex in `far` leaves alone a median that another one wants."""
    root = {v: v for order in sweep for v in order}
    for before, order in itertools.pairwise(sweep):
        index = {u: i for i, u in enumerate(before)}
        medians = {}
        for v in order:
            ends = sorted(neighbours[v], key=index.__getitem__)
            medians[v] = sorted(ends[(len(ends) - 1) // 2 : len(ends) // 2 + 1], key=far.__contains__)
        wanted = {u for v in order if v not in far for u in medians[v]}
        last = -1  # the rank before's last vertex lined up so far
        for v in order:
            for u in medians[v]:
                if index[u] > last and not (v in far and u in wanted):
                    root[v], last = root[u], index[u]
                    break
    return root


def _pack(ranks: list[list[int]], root: dict[int, int], vertices: list[_Vertex], mirror: bool) -> dict[int, float]:
    """Each block as far left (in `ranks`' order) as the blocks before it allow."""
    after: dict[int, list[tuple[int, float]]] = defaultdict(list)  # block -> (a block after it, least distance)
    waiting = dict.fromkeys(root.values(), 0)  # block -> blocks before it not yet placed
    for order in ranks:
        for a, b in itertools.pairwise(order):
            first, second = (vertices[b], vertices[a]) if mirror else (vertices[a], vertices[b])
            after[root[a]].append((root[b], _gap(first, second)))
            waiting[root[b]] += 1
    x = dict.fromkeys(waiting, 0.0)
    ready = [block for block, n in waiting.items() if n == 0]
    while ready:
        block = ready.pop()
        for nxt, distance in after[block]:
            x[nxt] = max(x[nxt], x[block] + distance)
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    return {v: x[r] for v, r in root.items()}


def _gap(a: _Vertex, b: _Vertex) -> float:
    """The least distance from the anchor of `a` to that of `b`, its neighbour after it on a rank."""
    bends = a.box is None and not a.label and b.box is None and not b.label
    return a.after + b.before + (_BEND_GAP if bends else _NODE_GAP)


def _rank_positions(
    vertices: list[_Vertex], ranks: list[list[int]], down: dict[int, list[int]]
) -> tuple[list[float], list[float]]:
    """Each rank's centre and depth on the rank axis. Ranks lie further apart where edges between them run
    far sideways, so that those edges do not lie flat."""
    depths = [max((vertices[v].depth for v in order), default=0.0) for order in ranks]
    centres: list[float] = []
    for r in range(len(ranks)):
        if r == 0:
            centres.append(depths[0] / 2)
            continue
        sideways = max((abs(vertices[v].pos - vertices[w].pos) for v in ranks[r - 1] for w in down[v]), default=0.0)
        gap = min(max(_MIN_RANK_GAP, 0.25 * sideways), _MAX_RANK_GAP)
        centres.append(centres[-1] + depths[r - 1] / 2 + gap + depths[r] / 2)
    return centres, depths


def _ports(
    vertices: list[_Vertex], up: dict[int, list[int]], down: dict[int, list[int]]
) -> dict[tuple[int, int], float]:
    """Where each edge leaves or enters a box on the order axis: spread along the box's side in the order of
    the other ends, so that edges into one box do not meet in a point."""
    ports = {}
    for v, vertex in enumerate(vertices):
        if vertex.box is None:
            continue
        size = vertex.before + vertex.after
        for ends in (down[v], up[v]):
            for i, u in enumerate(sorted(ends, key=lambda u: vertices[u].pos)):
                ports[v, u] = vertex.pos - vertex.before + size * (i + 1) / (len(ends) + 1)
    return ports


def _route(
    chain: list[int],
    vertices: list[_Vertex],
    centres: list[float],
    depths: list[float],
    ports: dict[tuple[int, int], float],
) -> list[Point]:
    """An edge's polyline as (order, rank) points: straight through every rank it crosses (where the boxes
    are), and from rank to rank in the gaps between them."""
    first, last = vertices[chain[0]], vertices[chain[-1]]
    o = ports[chain[0], chain[1]]
    c, d = centres[first.rank], depths[first.rank]
    points = [(o, c + first.depth / 2), (o, c + d / 2 + _STUB)]
    for v in chain[1:-1]:
        vertex = vertices[v]
        c, d = centres[vertex.rank], depths[vertex.rank]
        points += [(vertex.pos, c - d / 2), (vertex.pos, c + d / 2)]
    o = ports[chain[-1], chain[-2]]
    c, d = centres[last.rank], depths[last.rank]
    points += [(o, c - d / 2 - _STUB), (o, c - last.depth / 2)]
    points = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    return [
        p
        for i, p in enumerate(points)  # without the inner points of straight runs
        if not 0 < i < len(points) - 1 or not points[i - 1][0] == p[0] == points[i + 1][0]
    ]


def _arrowhead(path: list[Point]) -> list[Point]:
    (x0, y0), (x1, y1) = path[-2], path[-1]
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    bx, by = x1 - _ARROW * ux, y1 - _ARROW * uy
    return [(x1, y1), (bx - _ARROW / 2 * uy, by + _ARROW / 2 * ux), (bx + _ARROW / 2 * uy, by - _ARROW / 2 * ux)]


# --- SVG and PNG -----------------------------------------------------------------------------------------------


def _svg_text_width(text: str) -> float:
    """A generous estimate for 12px sans-serif (the viewer picks the font, so it cannot be measured here)."""
    return 7.2 * len(text)


def _svg(name: str, pic: _Picture) -> str:
    w, h = math.ceil(pic.width), math.ceil(pic.height)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'font-family="sans-serif" font-size="{_FONT_SIZE}">',
        f"<title>{html.escape(name)}</title>",
        f'<rect width="{w}" height="{h}" fill="white"/>',
    ]
    for edge, path in pic.edges:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in path)
        arrow = " ".join(f"{x:.1f},{y:.1f}" for x, y in _arrowhead(path))
        out.append(
            f'<g class="edge"><title>{html.escape(edge.label or edge.blob)}</title><polyline points="{points}" '
            f'fill="none" stroke="{_EDGE_INK}" stroke-linejoin="round"/>'
            f'<polygon points="{arrow}" fill="{_EDGE_INK}"/></g>'
        )
    for text, (x0, y0, _, _) in pic.labels:
        out.append(
            f'<text class="label" x="{x0:.1f}" y="{y0 + _FONT_SIZE:.1f}" fill="{_LABEL_INK}">{html.escape(text)}</text>'
        )
    for i, (box, (x0, y0, x1, y1)) in enumerate(pic.boxes):
        if box.output:
            shape = (
                f'<ellipse cx="{(x0 + x1) / 2:.1f}" cy="{(y0 + y1) / 2:.1f}" rx="{(x1 - x0) / 2:.1f}" '
                f'ry="{(y1 - y0) / 2:.1f}"'
            )
        else:
            shape = f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" rx="4"'
        kind = "output" if box.output else "layer"
        out.append(
            f'<g class="{kind}" data-box="{i}"><title>{html.escape(box.id)}</title>'
            f'{shape} fill="{box.fill}" stroke="{_INK}"/>'
        )
        top = (y0 + y1) / 2 - len(box.lines) * _LINE / 2
        for i, line in enumerate(box.lines):
            out.append(
                f'<text x="{(x0 + x1) / 2:.1f}" y="{top + i * _LINE + _FONT_SIZE:.1f}" text-anchor="middle"'
                f">{html.escape(line)}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _png(boxes: list[_Box], edges: list[_Edge], rankdir: str) -> Image.Image:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=_FONT_SIZE)
    pic = _layout(boxes, edges, rankdir, font.getlength)
    image = Image.new("RGB", (math.ceil(pic.width), math.ceil(pic.height)), "white")
    canvas = ImageDraw.Draw(image)
    for _, path in pic.edges:
        canvas.line(path, fill=_EDGE_INK, width=1, joint="curve")
        canvas.polygon(_arrowhead(path), fill=_EDGE_INK)
    for text, (x0, y0, _, _) in pic.labels:
        canvas.text((x0, y0), text, fill=_LABEL_INK, font=font)
    for box, rect in pic.boxes:
        if box.output:
            canvas.ellipse(rect, fill=box.fill, outline=_INK)
        else:
            canvas.rounded_rectangle(rect, radius=4, fill=box.fill, outline=_INK)
        x0, y0, x1, y1 = rect
        top = (y0 + y1) / 2 - len(box.lines) * _LINE / 2
        for i, line in enumerate(box.lines):
            canvas.text(((x0 + x1 - font.getlength(line)) / 2, top + i * _LINE), line, fill=_INK, font=font)
    return image
