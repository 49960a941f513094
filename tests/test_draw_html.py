"""`netspec draw -o net.html` in a real headless browser: every layer and shape is drawn, a click shows a
layer's panel, search finds layers and blobs, and both phases have a view."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from netspec.draw import draw
from netspec.layers.base import fmt
from netspec.net import load

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")

# The closed network here refuses Chromium's background connections; these flags keep it from trying.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def open_page(browser: object, path: Path) -> object:
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"request to {r.url}") if not r.url.startswith("file:") else None)
    page.goto(path.as_uri())
    page.errors = errors
    return page


def test_lenet_shows_every_layer_and_shape_and_a_clicked_layer(browser: object, tmp_path: Path) -> None:
    spec = ROOT / "models" / "lenet.prototxt"
    out = tmp_path / "lenet.html"
    draw(str(spec), str(out))
    net = load(str(spec))
    page = open_page(browser, out)
    rendered = page.locator("div.view:not([hidden]) g.layer title").all_text_contents()
    in_place = {i.node.name for i in net.layers if i.node.tops == i.node.bottoms}
    assert sorted(rendered) == sorted(i.node.name for i in net.layers if i.node.name not in in_place)
    labels = page.locator("div.view:not([hidden]) text.label").all_text_contents()
    expected = {f"{b} {fmt(net.shapes[b])}" for i in net.layers for b in i.node.bottoms}
    assert set(labels) == expected  # each blob's shape, as `netspec check` infers it
    header = page.locator("#totals").text_content()
    assert header == f"TEST · {len(net.layers)} layers · {net.num_params:,} parameters · {net.num_macs / 1e6:.2f}M MACs"
    page.locator("div.view:not([hidden]) g.layer", has_text="conv1").first.click()
    panel = page.locator("#panel section.layer-info")
    assert panel.locator("h2").text_content() == "conv1 (Convolution)"
    assert re.fullmatch(r".*lenet\.prototxt:\d+", panel.locator(".loc").text_content())
    assert panel.locator("table.tops").text_content() == f"conv1({net.shapes['conv1'][0]}, 20, 24, 24)"
    assert "num_output: 20" in panel.locator("pre").text_content()
    page.locator("#search").fill("pool")
    assert page.locator("#found").text_content() == "4 found"  # pool1, pool2, and conv2, ip1 that read them
    page.locator("#search").press("Enter")
    assert page.locator("g.picked title").text_content() in {"pool1", "pool2", "conv2", "ip1"}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "draw_lenet.png"))
    assert page.errors == []


def test_in_place_layers_fold_into_their_producer_and_phases_switch(browser: object, tmp_path: Path) -> None:
    out = tmp_path / "digits.html"
    draw(str(ROOT / "models" / "digits_cnn.yaml"), str(out))
    page = open_page(browser, out)
    assert page.locator("button.phase").all_text_contents() == ["TEST", "TRAIN"]
    box = page.locator("div.view:not([hidden]) g.layer", has_text="conv1").first
    assert "+ ReLU relu1" in box.text_content()
    box.click()
    assert page.locator("#panel section.layer-info h2").all_text_contents() == ["conv1 (Convolution)", "relu1 (ReLU)"]
    assert "prob" in page.locator("div.view:not([hidden]) g.layer title").all_text_contents()
    page.locator("button.phase", has_text="TRAIN").click()
    assert page.locator("#totals").text_content().startswith("TRAIN · ")
    assert "prob" not in page.locator("div.view:not([hidden]) g.layer title").all_text_contents()
    assert page.errors == []
