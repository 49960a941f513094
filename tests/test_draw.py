"""`netspec.draw`: DOT text, and SVG and PNG pictures laid out by netspec itself, of a net's layers with the
shape of every blob on its edges."""

from __future__ import annotations

import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from netspec.draw import draw
from netspec.errors import NetspecError
from netspec.layers.base import fmt
from netspec.net import Net, load
from tests import zoo
from tests.conftest import MODELS

SVG = "{http://www.w3.org/2000/svg}"
LENET = str(MODELS / "lenet.prototxt")
BRANCHED = [str(MODELS / "inception_small.yaml"), str(MODELS / "resnet_small.yaml")]

Rect = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass
class Picture:
    """What an SVG shows: boxes by id, edge polylines with their arrowheads, and edge label texts."""

    boxes: dict[str, Rect]
    fills: dict[str, str]
    outputs: set[str]
    edges: list[tuple[str, list[Point], list[Point]]]  # title, polyline, arrowhead
    labels: list[tuple[str, Point]]
    size: tuple[float, float]


def points(text: str) -> list[Point]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in text.split())]


def read_svg(path: Path) -> Picture:
    root = ET.parse(path).getroot()  # raises on XML that is not well-formed
    assert root.tag == f"{SVG}svg"
    pic = Picture({}, {}, set(), [], [], (float(root.get("width", 0)), float(root.get("height", 0))))
    for g in root.iter(f"{SVG}g"):
        title = g.findtext(f"{SVG}title")
        if g.get("class") == "edge":
            pic.edges.append(
                (title, points(g.find(f"{SVG}polyline").get("points")), points(g.find(f"{SVG}polygon").get("points")))
            )
            continue
        rect, ellipse = g.find(f"{SVG}rect"), g.find(f"{SVG}ellipse")
        if rect is not None:
            x, y = float(rect.get("x")), float(rect.get("y"))
            pic.boxes[title] = (x, y, x + float(rect.get("width")), y + float(rect.get("height")))
            pic.fills[title] = rect.get("fill")
        else:
            cx, cy, rx, ry = (float(ellipse.get(k)) for k in ("cx", "cy", "rx", "ry"))
            pic.boxes[title] = (cx - rx, cy - ry, cx + rx, cy + ry)
            pic.outputs.add(title)
    pic.labels = [
        (t.text, (float(t.get("x")), float(t.get("y")))) for t in root.iter(f"{SVG}text") if t.get("class") == "label"
    ]
    return pic


def svg(spec: str, tmp_path: Path, **kwargs: object) -> tuple[Picture, Net]:
    out = tmp_path / "net.svg"
    draw(spec, str(out), **kwargs)  # type: ignore[arg-type]
    return read_svg(out), load(spec)


def dot(spec: str, tmp_path: Path, **kwargs: object) -> list[str]:
    out = tmp_path / "net.dot"
    draw(spec, str(out), **kwargs)  # type: ignore[arg-type]
    return out.read_text().splitlines()


def connections(net: Net) -> list[tuple[str, str, str]]:
    """(producer, consumer, label) for every blob a layer reads, from the layer that last wrote it."""
    writer: dict[str, str] = {}
    out = []
    for info in net.layers:
        for blob, shape in dict(zip(info.node.bottoms, info.bottom_shapes, strict=True)).items():
            out.append((writer[blob], info.node.name, f"{blob} {fmt(shape)}"))
        writer.update(dict.fromkeys(info.node.tops, info.node.name))
    return out


def ranks(net: Net) -> dict[str, int]:
    """Longest path from the sources, by layer."""
    rank: dict[str, int] = {}
    for producer, consumer, _ in connections(net):
        rank[consumer] = max(rank.get(consumer, 0), rank.setdefault(producer, 0) + 1)
    for info in net.layers:
        rank.setdefault(info.node.name, 0)
    return rank


def overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def crosses(p: Point, q: Point, r: Rect) -> bool:
    """Whether segment pq passes through the inside of r (Liang-Barsky clipping)."""
    lo, hi = 0.0, 1.0
    for d, start, low, high in ((q[0] - p[0], p[0], r[0], r[2]), (q[1] - p[1], p[1], r[1], r[3])):
        if d == 0:
            if not low < start < high:
                return False
            continue
        t0, t1 = sorted(((low - start) / d, (high - start) / d))
        lo, hi = max(lo, t0), min(hi, t1)
    return lo < hi


# --- DOT -------------------------------------------------------------------------------------------------------


def test_dot_has_an_edge_per_blob_connection_labelled_with_its_shape(tmp_path: Path) -> None:
    lines = dot(LENET, tmp_path)
    edges = [line for line in lines if " -> " in line]
    assert '  "conv1" -> "pool1" [label="conv1 (64, 20, 24, 24)"];' in edges
    assert '  "data" -> "conv1" [label="data (64, 1, 28, 28)"];' in edges
    assert '  "label" -> "loss" [label="label (64,)"];' in edges
    # the in-place ReLU sits in the chain: ip2 reads ip1 from relu1, the layer that last wrote it
    assert '  "ip1" -> "relu1" [label="ip1 (64, 500)"];' in edges
    assert '  "relu1" -> "ip2" [label="ip1 (64, 500)"];' in edges
    assert not any(e.startswith('  "ip1" -> "ip2"') for e in edges)
    # net outputs end in their own node
    assert '  "loss" -> "output:loss";' in edges and '  "accuracy" -> "output:accuracy";' in edges
    net = load(LENET)
    expected = [f'  "{a}" -> "{b}" [label="{label}"];' for a, b, label in connections(net)]
    assert sorted(edges) == sorted(expected + [f'  "{o}" -> "output:{o}";' for o in net.outputs])


def test_dot_has_every_layer_once_with_its_type_and_geometry(tmp_path: Path) -> None:
    lines = dot(LENET, tmp_path)
    for info in load(LENET).layers:
        assert sum(line.startswith(f'  "{info.node.name}" [label="') for line in lines) == 1
    assert '  "conv1" [label="conv1\\nConvolution\\n20 out, 5x5", fillcolor="#FF8A80"];' in lines
    assert any(line.startswith('  "pool1" [label="pool1\\nPooling\\nMAX 2x2, stride 2"') for line in lines)
    assert any(line.startswith('  "ip1" [label="ip1\\nInnerProduct\\n500 out"') for line in lines)
    assert any(line.startswith('  "output:loss" [label="loss\\n()"') and "shape=ellipse" in line for line in lines)
    assert lines[0] == 'digraph "LeNet" {' and lines[-1] == "}"


def test_dot_summarises_strided_padded_and_global_windows(tmp_path: Path) -> None:
    spec = tmp_path / "googlenet.prototxt"
    spec.write_text(zoo.googlenet())
    text = "\n".join(dot(str(spec), tmp_path))
    assert '"conv1" [label="conv1\\nConvolution\\n64 out, 7x7, stride 2, pad 3"' in text
    assert '"pool1" [label="pool1\\nPooling\\nMAX 3x3, stride 2"' in text
    assert '"inception_3a/pool" [label="inception_3a/pool\\nPooling\\nMAX 3x3, pad 1"' in text


@pytest.mark.parametrize("rankdir", ["TB", "LR", "BT", "RL"])
def test_dot_honours_rankdir(tmp_path: Path, rankdir: str) -> None:
    lines = dot(LENET, tmp_path, rankdir=rankdir)
    assert f"  rankdir={rankdir};" in lines
    assert sum("rankdir" in line for line in lines) == 1


def test_dot_follows_phase_and_fed_shapes(tmp_path: Path, write_spec: Callable[[str, str], str]) -> None:
    assert not any(line.startswith('  "accuracy"') for line in dot(LENET, tmp_path, phase="TRAIN"))
    assert any(line.startswith('  "accuracy"') for line in dot(LENET, tmp_path, phase="TEST"))
    spec = write_spec(
        'name: "fed"\n'
        'layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "nowhere" '
        "batch_size: 10 } }\n"
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        "inner_product_param { num_output: 5 } }\n"
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n',
        "fed.prototxt",
    )
    lines = dot(spec, tmp_path, shapes={"data": (10, 3, 32, 32)})
    assert '  "data" -> "ip" [label="data (10, 3, 32, 32)"];' in lines
    assert '  "data" -> "loss" [label="label (10,)"];' in lines
    assert '  "data" [label="data\\nData", fillcolor="#A5D6A7"];' in lines


def test_dot_quotes_odd_names_and_keeps_same_named_layers_apart(
    tmp_path: Path, write_spec: Callable[[str, str], str]
) -> None:
    spec = write_spec(
        "name: odd\nlayer:\n"
        "  - {name: 'in\"<&>\\x', type: Input, top: x, input_param: {shape: [2, 3]}}\n"
        "  - {name: act, type: ReLU, bottom: x, top: a}\n"
        "  - {name: act, type: Sigmoid, bottom: x, top: b}\n"
        "  - {name: sum, type: Eltwise, bottom: [a, a, b]}\n",
        "odd.yaml",
    )
    lines = dot(spec, tmp_path)
    assert '  "in\\"<&>\\\\x" [label="in\\"<&>\\\\x\\nInput", fillcolor="#A5D6A7"];' in lines
    assert '  "in\\"<&>\\\\x" -> "act#2" [label="x (2, 3)"];' in lines
    # a blob read twice is one connection
    assert [line for line in lines if " -> " in line and '"sum"' in line] == [
        '  "act" -> "sum" [label="a (2, 3)"];',
        '  "act#2" -> "sum" [label="b (2, 3)"];',
        '  "sum" -> "output:sum";',
    ]
    pic = read_svg(draw_to(spec, tmp_path / "odd.svg"))  # the same names in XML
    assert set(pic.boxes) == {'in"<&>\\x', "act", "act#2", "sum", "output:sum"}


def test_a_net_without_layers_is_an_empty_picture(tmp_path: Path, write_spec: Callable[[str, str], str]) -> None:
    spec = write_spec('name: "empty"\n', "empty.prototxt")
    lines = dot(spec, tmp_path)
    assert lines[:2] == ['digraph "empty" {', "  rankdir=TB;"] and lines[-1] == "}"
    assert not any("label=" in line or " -> " in line for line in lines)
    pic = read_svg(draw_to(spec, tmp_path / "empty.svg"))
    assert not pic.boxes and not pic.edges
    with Image.open(draw_to(spec, tmp_path / "empty.png")) as image:
        assert image.size[0] > 0 and image.size[1] > 0


def draw_to(spec: str, out: Path, **kwargs: object) -> Path:
    draw(spec, str(out), **kwargs)  # type: ignore[arg-type]
    return out


# --- SVG -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [LENET, *BRANCHED])
def test_svg_has_a_box_per_layer_and_every_edge_label(tmp_path: Path, spec: str) -> None:
    pic, net = svg(spec, tmp_path)
    assert set(pic.boxes) - pic.outputs == {info.node.name for info in net.layers}
    assert pic.outputs == {f"output:{blob}" for blob in net.outputs}
    assert {text for text, _ in pic.labels} == {label for _, _, label in connections(net)}
    assert len(pic.edges) == len(connections(net)) + len(net.outputs)


def test_svg_colours_data_loss_and_common_layers(tmp_path: Path) -> None:
    pic, _ = svg(LENET, tmp_path)
    fills = pic.fills
    assert len({fills["data"], fills["loss"], fills["conv1"], fills["pool1"], fills["ip1"], fills["relu1"]}) == 6
    assert fills["data"] == fills["label"] and fills["conv1"] == fills["conv2"] and fills["relu1"] == fills["accuracy"]


@pytest.mark.parametrize("spec", [LENET, *BRANCHED])
@pytest.mark.parametrize("rankdir", ["TB", "LR", "BT", "RL"])
def test_svg_places_each_rank_beyond_the_one_before(tmp_path: Path, spec: str, rankdir: str) -> None:
    pic, net = svg(spec, tmp_path, rankdir=rankdir)
    by_rank: dict[int, list[Rect]] = {}
    for name, rank in ranks(net).items():
        by_rank.setdefault(rank, []).append(pic.boxes[name])
    axis = 1 if rankdir in ("TB", "BT") else 0
    for r in range(max(by_rank)):
        before, after = by_rank[r], by_rank[r + 1]
        if rankdir in ("TB", "LR"):  # rank r+1 starts below (right of) where rank r ends
            assert min(b[axis] for b in after) > max(b[axis + 2] for b in before)
        else:
            assert max(b[axis + 2] for b in after) < min(b[axis] for b in before)


@pytest.mark.parametrize("spec", [LENET, *BRANCHED])
@pytest.mark.parametrize("rankdir", ["TB", "LR", "BT", "RL"])
def test_svg_edges_run_in_the_rank_direction_from_box_to_box(tmp_path: Path, spec: str, rankdir: str) -> None:
    pic, net = svg(spec, tmp_path, rankdir=rankdir)
    axis = 1 if rankdir in ("TB", "BT") else 0
    sign = 1 if rankdir in ("TB", "LR") else -1
    ends = {(a, b) for a, b, _ in connections(net)} | {(o, f"output:{o}") for o in net.outputs}
    found = set()
    for _, path, arrow in pic.edges:
        steps = [sign * (q[axis] - p[axis]) for p, q in itertools.pairwise(path)]
        assert all(step >= 0 for step in steps) and sum(steps) > 0
        assert arrow[0] == pytest.approx(path[-1], abs=0.11)  # the arrowhead's tip is where the edge ends
        source = [n for n, r in pic.boxes.items() if on_side(path[0], r, axis, sign > 0)]
        target = [n for n, r in pic.boxes.items() if on_side(path[-1], r, axis, sign < 0)]
        assert len(source) == 1 and len(target) == 1
        found.add((source[0], target[0]))
    assert found == ends


def on_side(p: Point, r: Rect, axis: int, far: bool) -> bool:
    """Whether p lies on r's side that faces the later ranks (far) or the earlier ones."""
    across = 1 - axis
    edge = r[axis + 2] if far else r[axis]
    return abs(p[axis] - edge) < 0.2 and r[across] - 0.1 <= p[across] <= r[across + 2] + 0.1


@pytest.mark.parametrize("spec", BRANCHED)
@pytest.mark.parametrize("rankdir", ["TB", "LR", "BT", "RL"])
def test_layout_keeps_boxes_labels_and_edges_apart(tmp_path: Path, spec: str, rankdir: str) -> None:
    pic, _ = svg(spec, tmp_path, rankdir=rankdir)
    assert_apart(pic)


def test_googlenet_is_drawn_legibly(tmp_path: Path) -> None:
    spec = tmp_path / "googlenet.prototxt"
    spec.write_text(zoo.googlenet())
    pic = read_svg(draw_to(str(spec), tmp_path / "googlenet.svg"))
    net = load(str(spec))
    assert len(pic.boxes) == len(net.layers) + len(net.outputs)
    assert_apart(pic)


def test_the_draw_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from netspec.cli import main

    out = tmp_path / "lenet.dot"
    result = CliRunner().invoke(main, ["draw", str(MODELS / "lenet.prototxt"), "-o", str(out), "--rankdir", "lr"])
    assert (result.exit_code, result.output) == (0, f"wrote {out}\n")
    assert "  rankdir=LR;" in out.read_text()
    result = CliRunner().invoke(main, ["draw", str(MODELS / "lenet.prototxt"), "-o", str(tmp_path / "x.jpg")])
    assert (result.exit_code, result.output) == (
        1,
        f"error: cannot draw to '{tmp_path / 'x.jpg'}': give a .svg, .png, .dot or .html file\n",
    )


def assert_apart(pic: Picture) -> None:
    """No two boxes overlap, no label starts inside a box, and no edge passes through a box."""
    rects = list(pic.boxes.items())
    for i, (a, ra) in enumerate(rects):
        for b, rb in rects[i + 1 :]:
            assert not overlap(ra, rb), (a, b)
        inside = (ra[0] + 1, ra[1] + 1, ra[2] - 1, ra[3] - 1)
        for text, (x, y) in pic.labels:
            assert not (ra[0] <= x <= ra[2] and ra[1] <= y <= ra[3]), (text, a)
        for blob, path, _ in pic.edges:
            assert not any(crosses(p, q, inside) for p, q in itertools.pairwise(path)), (blob, a)


# --- PNG -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_png_is_a_drawn_picture(tmp_path: Path, rankdir: str) -> None:
    with Image.open(draw_to(LENET, tmp_path / "net.png", rankdir=rankdir)) as image:
        assert image.format == "PNG"
        width, height = image.size
        rgb = image.convert("RGB")
    long, short = (height, width) if rankdir == "TB" else (width, height)
    assert 150 < short < long < 4000  # eleven layers in a chain, drawn along the ranks
    counts = {colour: n for n, colour in rgb.getcolors(maxcolors=width * height)}
    for fill in ("#FF8A80", "#A5D6A7", "#FFE082"):  # convolution, data, loss boxes
        assert counts.get(tuple(int(fill[i : i + 2], 16) for i in (1, 3, 5)), 0) > 500
    assert width * height - counts[255, 255, 255] > 0.05 * width * height  # not blank


# --- errors ----------------------------------------------------------------------------------------------------


def test_an_unknown_suffix_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "x.jpg"
    with pytest.raises(NetspecError, match=r"cannot draw to '.*x\.jpg': give a \.svg, \.png, \.dot or \.html file"):
        draw(LENET, str(out))
    assert not out.exists()


def test_an_unknown_rankdir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NetspecError, match="unknown rankdir 'UP': use TB"):
        draw(LENET, str(tmp_path / "x.svg"), rankdir="UP")
    draw(LENET, str(tmp_path / "x.dot"), rankdir="lr")  # any case
    assert "  rankdir=LR;" in (tmp_path / "x.dot").read_text().splitlines()


def test_a_missing_output_folder_is_a_message(tmp_path: Path) -> None:
    with pytest.raises(NetspecError, match=r"cannot write '.*net\.png': the folder '.*nope' does not exist"):
        draw(LENET, str(tmp_path / "nope" / "net.png"))
    (tmp_path / "taken.svg").mkdir()
    with pytest.raises(NetspecError, match=r"cannot write '.*taken\.svg': "):
        draw(LENET, str(tmp_path / "taken.svg"))


def test_a_spec_error_is_raised_unchanged(tmp_path: Path, write_spec: Callable[[str, str], str]) -> None:
    spec = write_spec(
        'name: "broken"\n'
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "dat" top: "ip" '
        "inner_product_param { num_output: 2 } }\n",
        "broken.prototxt",
    )
    with pytest.raises(NetspecError) as loading:
        load(spec)
    with pytest.raises(NetspecError) as drawing:
        draw(spec, str(tmp_path / "broken.svg"))
    assert type(drawing.value) is type(loading.value)
    assert str(drawing.value) == str(loading.value)
    assert "unknown bottom blob 'dat'" in str(drawing.value) and "did you mean 'data'?" in str(drawing.value)
    assert not (tmp_path / "broken.svg").exists()


def test_drawing_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from netspec.draw import draw\n"
        "for suffix in ('dot', 'svg', 'png'):\n"
        "    draw(sys.argv[1], sys.argv[2] + '.' + suffix)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, BRANCHED[0], str(tmp_path / "net")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert all((tmp_path / f"net.{suffix}").stat().st_size > 0 for suffix in ("dot", "svg", "png"))
