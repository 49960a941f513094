"""`netspec draw SPEC -o net.html`: the net as one page to explore in a browser.

Viewers such as Netron show no intermediate shapes for Caffe models, nor what each layer costs; netspec
knows both statically. The page is self-contained (the drawing is the SVG `netspec draw` lays out, the
script is inline and written here, nothing is fetched), so it can be mailed, archived with a model or
opened offline: pan and zoom, search by layer or blob name, and a click on a layer shows its parameters,
top shapes, parameter count, MACs and the line of the spec it was written on. In-place layers are drawn
inside the box of the layer whose top they rewrite, as Netron draws activations. A spec with phase rules
gets one view per phase.
"""

from __future__ import annotations

import html
import json
from typing import Any

from netspec.draw import _diagram, _layout, _shape_text, _svg, _svg_text_width
from netspec.net import Net, has_phase_rules, load
from netspec.shapes import LayerInfo
from netspec.spec.emit import to_prototxt
from netspec.spec.load import read_net


def html_page(spec: str, phase: str | None = None, stages: tuple[str, ...] = (), rankdir: str = "TB",
              shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """The page for a spec: one view for `phase`, or for both phases when none is given and the spec has
    phase rules (its own phase first, as `netspec check` picks it)."""
    first = load(spec, phase=phase, stages=stages, shapes=shapes)
    nets = [first]
    if phase is None and has_phase_rules(read_net(spec).message):  # the spec's own phase first, as check
        nets.append(load(spec, phase="TRAIN" if first.phase == "TEST" else "TEST", stages=stages, shapes=shapes))
    views = [_view(net, rankdir) for net in nets]
    data = json.dumps([v["data"] for v in views]).replace("</", "<\\/")
    name = html.escape(views[0]["name"] or "net")
    tabs = "".join(f'<button class="phase" data-view="{i}">{html.escape(v["data"]["phase"])}</button>'
                   for i, v in enumerate(views)) if len(views) > 1 else ""
    svgs = "".join(f'<div class="view" data-view="{i}"{"" if i == 0 else " hidden"}>{v["svg"]}</div>'
                   for i, v in enumerate(views))
    return (_PAGE.replace("{{name}}", name).replace("{{tabs}}", tabs).replace("{{svgs}}", svgs)
            .replace("{{data}}", data))


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
    data = {"name": net.name, "phase": net.phase, "layers": len(net.layers), "params": net.num_params,
            "macs": net.num_macs, "boxes": entries}
    return {"name": net.name, "svg": svg, "data": data}


def _layer(info: LayerInfo) -> dict[str, Any]:
    node = info.node
    return {
        "name": node.name, "type": node.type, "loc": f"{node.loc.file}:{node.loc.line}",
        "bottoms": [[b, _shape_text(s)] for b, s in zip(node.bottoms, info.bottom_shapes, strict=True)],
        "tops": [[t, _shape_text(s)] for t, s in zip(node.tops, info.top_shapes, strict=True)],
        "params": info.num_params, "macs": info.macs, "spec": to_prototxt(node.lp).strip(),
    }


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{name}} - netspec</title>
<style>
 body{margin:0;font:13px sans-serif;display:flex;flex-direction:column;height:100vh;color:#222}
 header{display:flex;gap:14px;align-items:center;padding:6px 10px;border-bottom:1px solid #ccc;background:#f6f6f6}
 header h1{font-size:15px;margin:0}
 #totals{color:#444}
 #search{width:220px;padding:3px 6px}
 button{font:inherit;padding:2px 8px}
 button.on{background:#333;color:#fff}
 main{flex:1;display:flex;min-height:0}
 #canvas{flex:1;overflow:hidden;cursor:grab;position:relative;background:#fff}
 #canvas.dragging{cursor:grabbing}
 .view{position:absolute;inset:0}
 .view svg{width:100%;height:100%}
 #panel{width:340px;overflow:auto;border-left:1px solid #ccc;padding:8px 12px;background:#fafafa}
 #panel h2{font-size:14px;margin:8px 0 2px}
 #panel table{border-collapse:collapse;margin:4px 0}
 #panel td{padding:1px 6px 1px 0;vertical-align:top}
 #panel pre{background:#fff;border:1px solid #ddd;padding:6px;white-space:pre-wrap;font-size:12px}
 g.layer,g.output{cursor:pointer}
 g.hit rect,g.hit ellipse{stroke:#d00;stroke-width:3}
 g.picked rect,g.picked ellipse{stroke:#06c;stroke-width:3}
 svg.searching g.layer:not(.hit),svg.searching g.output:not(.hit){opacity:.35}
 text.hit{fill:#d00;font-weight:bold}
</style></head>
<body>
<header><h1>{{name}}</h1>{{tabs}}<span id="totals"></span>
<input id="search" type="search" placeholder="search layers and blobs (Enter: next)">
<span id="found"></span><button id="fit">fit</button></header>
<main><div id="canvas">{{svgs}}</div><aside id="panel"><p>Click a layer to see its parameters, shapes and
cost. Drag to pan, scroll to zoom.</p></aside></main>
<script type="application/json" id="netspec-data">{{data}}</script>
<script>
"use strict";
const VIEWS = JSON.parse(document.getElementById("netspec-data").textContent);
const canvas = document.getElementById("canvas"), panel = document.getElementById("panel");
const search = document.getElementById("search"), found = document.getElementById("found");
let current = 0, box = null, hits = [], hitAt = -1;
const num = n => n.toLocaleString("en-US");
function big(n){
  for (const [d, s] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) if (n >= d) return (n / d).toFixed(2) + s;
  return String(n);
}
function svg(){ return document.querySelector(`.view[data-view="${current}"] svg`); }
function full(s){ const [w, h] = [s.width.baseVal.value, s.height.baseVal.value]; return {x:0, y:0, w, h}; }
function apply(){ svg().setAttribute("viewBox", `${box.x} ${box.y} ${box.w} ${box.h}`); }
function fit(){
  const s = svg(), f = full(s), r = canvas.getBoundingClientRect();
  const k = Math.max(f.w / r.width, f.h / r.height);
  box = {x: f.x - (r.width * k - f.w) / 2, y: f.y - (r.height * k - f.h) / 2, w: r.width * k, h: r.height * k};
  apply();
}
function show(i){
  current = i;
  document.querySelectorAll(".view").forEach(v => v.hidden = Number(v.dataset.view) !== i);
  document.querySelectorAll("button.phase").forEach(b => b.classList.toggle("on", Number(b.dataset.view) === i));
  const v = VIEWS[i];
  document.getElementById("totals").textContent =
    `${v.phase} · ${v.layers} layers · ${num(v.params)} parameters · ${big(v.macs)} MACs`;
  fit(); find();
}
function esc(t){ return String(t).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"})[c]); }
function rows(blobs){ return blobs.map(([b, s]) => `<tr><td>${esc(b)}</td><td>${esc(s)}</td></tr>`).join(""); }
function pick(g){
  document.querySelectorAll("g.picked").forEach(x => x.classList.remove("picked"));
  g.classList.add("picked");
  const entry = VIEWS[current].boxes[Number(g.dataset.box)];
  if (entry.output) { panel.innerHTML = `<h2>output ${esc(entry.blob)}</h2><p>shape ${esc(entry.shape)}</p>`; return; }
  panel.innerHTML = entry.layers.map(l => `<section class="layer-info"><h2>${esc(l.name)} (${esc(l.type)})</h2>
    <div class="loc">${esc(l.loc)}</div>
    <table><tr><td>parameters</td><td>${num(l.params)}</td></tr><tr><td>MACs</td><td>${num(l.macs)}</td></tr></table>
    <b>bottoms</b><table>${rows(l.bottoms)}</table><b>tops</b><table class="tops">${rows(l.tops)}</table>
    <pre>${esc(l.spec)}</pre></section>`).join("");
}
function find(){
  const q = search.value.trim().toLowerCase(), s = svg();
  s.querySelectorAll(".hit").forEach(x => x.classList.remove("hit"));
  hits = []; hitAt = -1;
  s.classList.toggle("searching", q !== "");
  if (!q) { found.textContent = ""; return; }
  VIEWS[current].boxes.forEach((e, i) => {
    const words = e.output ? [e.blob] : e.layers.flatMap(l => [l.name, l.type, ...l.bottoms.map(b => b[0]),
                                                                ...l.tops.map(t => t[0])]);
    if (words.some(w => w.toLowerCase().includes(q))) {
      const g = s.querySelector(`g[data-box="${i}"]`); g.classList.add("hit"); hits.push(g);
    }
  });
  s.querySelectorAll("text.label").forEach(t => {
    if (t.textContent.toLowerCase().includes(q)) t.classList.add("hit");
  });
  found.textContent = `${hits.length} found`;
}
function next(){
  if (!hits.length) return;
  hitAt = (hitAt + 1) % hits.length;
  const b = hits[hitAt].getBBox(), r = canvas.getBoundingClientRect();
  const k = Math.min(box.w / r.width, 1);  // zoomed out to see the whole net: come close enough to read
  box = {x: b.x + b.width / 2 - r.width * k / 2, y: b.y + b.height / 2 - r.height * k / 2, w: r.width * k,
         h: r.height * k};
  apply(); pick(hits[hitAt]);
}
canvas.addEventListener("wheel", ev => {
  ev.preventDefault();
  const r = canvas.getBoundingClientRect(), k = Math.exp(ev.deltaY * 0.0015);
  const px = box.x + (ev.clientX - r.left) / r.width * box.w, py = box.y + (ev.clientY - r.top) / r.height * box.h;
  box = {x: px - (px - box.x) * k, y: py - (py - box.y) * k, w: box.w * k, h: box.h * k}; apply();
}, {passive: false});
let drag = null;
canvas.addEventListener("mousedown", ev => { drag = {x: ev.clientX, y: ev.clientY, box: {...box}, moved: false}; });
window.addEventListener("mousemove", ev => {
  if (!drag) return;
  const r = canvas.getBoundingClientRect(), dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
  if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; canvas.classList.add("dragging"); }
  box = {...drag.box, x: drag.box.x - dx / r.width * box.w, y: drag.box.y - dy / r.height * box.h}; apply();
});
window.addEventListener("mouseup", ev => {
  if (drag && !drag.moved) { const g = ev.target.closest("g.layer, g.output"); if (g) pick(g); }
  drag = null; canvas.classList.remove("dragging");
});
search.addEventListener("input", find);
search.addEventListener("keydown", ev => { if (ev.key === "Enter") next(); });
document.getElementById("fit").addEventListener("click", fit);
document.querySelectorAll("button.phase").forEach(b => b.addEventListener("click", () => show(Number(b.dataset.view))));
window.addEventListener("resize", fit);
show(0);
</script></body></html>
"""
