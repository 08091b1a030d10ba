"""The self-contained token heatmap page of `amygdala readout --html`.

One HTML file, no network: the readout is embedded as JSON in a
`<script type="application/json">` tag (with `<` escaped, so no text can close the
tag) and a small script colors each token by the chosen concept, layer and raw/z.
"combined" (the manifest's combined score over all layers) is one of the layers, and the
one shown first when the readout has it. The initial choice can come from the URL hash:
`#concept=fear&layer=3&mode=raw` or `#layer=combined`.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from amygdala.readout import LayerChoice, Readout


def page_data(ro: Readout, *, layer: LayerChoice | None = None, title: str = "") -> dict[str, Any]:
    """The JSON the page renders (values rounded to 4 decimals); `combined` and
    `combined_z` are `[T][C]` (null without a combined score)."""

    def rounded(t: torch.Tensor | None) -> Any:
        return None if t is None else torch.round(t.double(), decimals=4).tolist()

    return {
        "title": title,
        "tokens": list(ro.tokens),
        "keep": list(ro.keep),
        "concepts": list(ro.concepts),
        "layers": list(ro.layers),
        "layer": ro.default_layer if layer is None else layer,
        "raw": rounded(ro.raw),
        "z": rounded(ro.z),
        "combined": rounded(ro.combined),
        "combined_z": rounded(ro.combined_z),
    }


def html_page(ro: Readout, *, title: str = "", layer: LayerChoice | None = None) -> str:
    """The whole page as a string."""
    data = json.dumps(page_data(ro, layer=layer, title=title), separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _TEMPLATE.replace("__TITLE__", html.escape(title or "amygdala readout")).replace(
        "__DATA__", data
    )


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem; color: #1f2328; }
  header { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
  h1 { font-size: 1.1rem; margin: 0 1rem 0 0; }
  label { font-size: .9rem; }
  #text { margin-top: 1.5rem; white-space: pre-wrap; font-family: ui-monospace, monospace;
          line-height: 2; max-width: 70rem; }
  .tok { padding: 2px 0; border-radius: 3px; cursor: default; }
  .tok.special { color: #8c959f; font-size: .8em; }
  #legend { font-size: .85rem; color: #57606a; margin-top: .5rem; }
  #top { margin-top: 1.5rem; font-size: .9rem; }
  #top button { margin: 0 .3rem .3rem 0; border: 1px solid #d0d7de; background: #f6f8fa;
                border-radius: 4px; padding: 2px 8px; cursor: pointer; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <label>concept <select id="concept"></select></label>
  <label>layer <select id="layer"></select></label>
  <label>values <select id="mode"></select></label>
</header>
<div id="legend"></div>
<div id="text"></div>
<div id="top"></div>
<script type="application/json" id="readout-data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("readout-data").textContent);
const $ = (id) => document.getElementById(id);
function option(sel, value, label) {
  const o = document.createElement("option"); o.value = value; o.textContent = label;
  sel.appendChild(o);
}
D.concepts.forEach((c) => option($("concept"), c, c));
const COMBINED = "combined";
if (D.combined) option($("layer"), COMBINED, "combined (all layers)");
D.layers.forEach((l) => option($("layer"), String(l), String(l)));
if (D.z || D.combined_z) option($("mode"), "z", "z-score");
option($("mode"), "raw", "raw dot product");
function validLayer(l) {
  return (l === COMBINED && D.combined) || D.layers.map(String).includes(l);
}
function series(mode, layer) {
  // per token, the values of every concept: [T][C]
  if (layer === COMBINED) return mode === "z" && D.combined_z ? D.combined_z : D.combined;
  const li = D.layers.indexOf(Number(layer));
  return (mode === "z" && D.z ? D.z : D.raw).map((row) => row[li]);
}
function layerName(layer) {
  return layer === COMBINED ? "the combined score (all layers)" : `layer ${layer}`;
}
function fromHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get("concept") && D.concepts.includes(h.get("concept"))) $("concept").value = h.get("concept");
  $("layer").value = validLayer(h.get("layer")) ? h.get("layer") : String(D.layer);
  if (h.get("mode") === "raw" || (h.get("mode") === "z" && (D.z || D.combined_z))) $("mode").value = h.get("mode");
}
function color(v, scale) {
  const a = Math.min(Math.abs(v) / (scale || 1), 1) * 0.85;
  return v >= 0 ? `rgba(220, 38, 38, ${a.toFixed(3)})` : `rgba(37, 99, 235, ${a.toFixed(3)})`;
}
function render() {
  const c = D.concepts.indexOf($("concept").value);
  const layer = $("layer").value;
  const mode = $("mode").value;
  const vals = series(mode, layer).map((row) => row[c]);
  const kept = vals.filter((_, t) => D.keep[t]);
  const scale = mode === "z" ? 3 : Math.max(1e-9, ...kept.map(Math.abs));
  const box = $("text"); box.textContent = "";
  D.tokens.forEach((tok, t) => {
    const s = document.createElement("span");
    s.className = "tok" + (D.keep[t] ? "" : " special");
    s.textContent = D.keep[t] ? tok : `[${tok}]`;
    s.dataset.value = String(vals[t]);
    s.dataset.index = String(t);
    if (D.keep[t]) s.style.backgroundColor = color(vals[t], scale);
    s.title = `${tok} · ${D.concepts[c]} @ ${layerName(layer)}: ${vals[t].toFixed(3)} (${mode})`;
    box.appendChild(s);
  });
  const mean = kept.length ? kept.reduce((a, b) => a + b, 0) / kept.length : NaN;
  $("legend").textContent = `${D.concepts[c]} at ${layerName(layer)} (${mode}); mean over ` +
    `real tokens ${mean.toFixed(3)}; red = positive, blue = negative, full color at ` +
    (mode === "z" ? "|z| = 3" : `|raw| = ${scale.toFixed(3)}`);
  renderTop(layer, mode);
  document.body.dataset.concept = D.concepts[c];
  document.body.dataset.layer = layer;
  document.body.dataset.mode = mode;
  document.body.dataset.ready = "1";
}
function means(rows) {
  return D.concepts.map((_, c) =>
    rows.length ? rows.reduce((a, r) => a + r[c], 0) / rows.length : NaN);
}
function renderTop(layer, mode) {
  const rows = series(mode, layer).filter((_, t) => D.keep[t]);
  const order = means(rows).map((m, c) => [m, c]).sort((a, b) => b[0] - a[0]).slice(0, 10);
  const top = $("top"); top.textContent = `text's top concepts at ${layerName(layer)}: `;
  order.forEach(([m, c]) => {
    const b = document.createElement("button");
    b.textContent = `${D.concepts[c]} ${m.toFixed(2)}`;
    b.onclick = () => { $("concept").value = D.concepts[c]; render(); };
    top.appendChild(b);
  });
}
["concept", "layer", "mode"].forEach((id) => $(id).addEventListener("change", render));
window.addEventListener("hashchange", () => { fromHash(); render(); });
fromHash();
if (!location.hash.includes("concept=")) {
  const rows = series($("mode").value, $("layer").value).filter((_, t) => D.keep[t]);
  if (rows.length) {
    const m = means(rows);
    $("concept").value = D.concepts[m.indexOf(Math.max(...m))];
  }
}
render();
</script>
</body>
</html>
"""
