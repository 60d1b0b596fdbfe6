"""One self-contained HTML page for a net: works offline from ``file://``, no CDN, no server.

The page holds the SVG drawing (inline), a side panel, a sortable per-layer table with totals and
per-prefix subtotals, search, wheel zoom and drag pan, and CSV/JSON downloads (data URLs). The
data the script needs is embedded as JSON in ``<script type="application/json">`` with every
``<``, ``>`` and ``&`` written as a ``\\u`` escape, so no prototxt text can close the script; the
script only ever writes prototxt text through ``textContent``.
"""
from __future__ import annotations

import json
import re

from landmarknet import __version__
from landmarknet.analyze import NetStats, human, human_bytes, shape_text
from landmarknet.render.model import FAMILY_LABELS, family_color
from landmarknet.render.svg import esc, render_svg


def json_for_script(data: object) -> str:
    """JSON safe inside a <script> element: '<', '>', '&' and line separators escaped."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def safe_filename(name: str) -> str:
    """A file name stem made of [A-Za-z0-9._-]."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "net"
    return stem[:80]


def page_data(drawing) -> dict:
    """What the page script reads: rows, boxes, totals, download payloads."""
    stats: NetStats = drawing.stats
    diagram = drawing.diagram
    node_of_row: dict[int, str] = {}
    for n in diagram.nodes:
        for r in n.rows:
            node_of_row[r] = n.id
    rows = []
    for r in stats.rows:
        rows.append({
            "i": r.index, "name": r.name, "type": r.type, "family": r.family,
            "bottoms": r.bottoms, "tops": r.tops,
            "in": [shape_text(s) for s in r.in_shapes],
            "out": [shape_text(s) for s in r.out_shapes],
            "params": r.params, "stats": r.stats, "blobs": r.blobs, "macs": r.macs,
            "flops": r.flops, "ops": r.ops, "memory": r.memory, "counted": r.counted,
            "inPlace": r.in_place, "node": node_of_row.get(r.index), "prefix": r.prefix,
            "source": r.source, "proto": r.prototxt, "detail": r.detail, "input": r.is_input,
            "folded": [s.row for n in diagram.nodes if n.row == r.index and n.kind != "output"
                       for s in n.subrows],
            "lossWeights": r.loss_weights,
        })
    t = stats.totals
    stem = safe_filename(stats.name or "net")
    return {
        "name": stats.name, "phase": stats.phase, "batch": stats.batch,
        "totals": t.as_dict(), "prefixes": {k: v.as_dict() for k, v in stats.prefixes.items()},
        "uncounted": stats.uncounted_types, "rows": rows,
        "outputs": {blob: shape_text(s) for blob, s in stats.outputs.items()},
        "csv": stats.to_csv(), "json": stats.to_json(), "stem": stem,
    }


def render_html(drawing, *, title: str | None = None) -> str:
    """The page (see the module docstring)."""
    stats = drawing.stats
    svg = render_svg(drawing.diagram, drawing.layout, interactive=True, header=False)
    name = title or stats.name or "net"
    t = stats.totals
    per_sample = ""
    if stats.batch and stats.batch > 1:
        per_sample = (f" · per sample {human(stats.per_sample(t.macs))} MACs")
    summary = (f"{t.layers} layers · {human(t.params)} params · {human(t.macs)} MACs · "
               f"{human(t.flops)} FLOPs · {human(t.ops)} other ops · "
               f"{human_bytes(t.memory)} activations"
               + (f" · batch {stats.batch}" if stats.batch else "") + per_sample)
    legend = "".join(
        f'<span class="lg"><span class="sw" style="background:{family_color(f)[0]};'
        f'border-color:{family_color(f)[1]}"></span>{esc(FAMILY_LABELS.get(f, f))}</span>'
        for f in drawing.diagram.families if f != "output")
    fam_css = "\n".join(
        f".pchip-{f}{{background:{family_color(f)[0]};border-color:{family_color(f)[1]}}}"
        for f in list(FAMILY_LABELS))
    source = esc(stats.path or "")
    uncounted = ""
    if stats.uncounted_types:
        uncounted = (f'<p class="warn">Cost not counted for: '
                     f'{esc(", ".join(stats.uncounted_types))}.</p>')
    return _TEMPLATE.format(
        title=esc(name), phase=esc(stats.phase), summary=esc(summary), legend=legend,
        svg=svg, data=json_for_script(page_data(drawing)), css=_CSS + fam_css, js=_JS,
        version=esc(__version__), source=source, engine=esc(drawing.layout.engine),
        uncounted=uncounted)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="landmarknet {version}">
<title>{title} · landmarknet</title>
<style>
{css}
</style>
</head>
<body>
<header>
  <div class="ttl"><h1>{title}</h1><span class="ph">{phase}</span></div>
  <div class="sum">{summary}</div>
  <div class="tools">
    <input id="search" type="search" placeholder="Search layers, types, blobs (⏎ next)"
           autocomplete="off" spellcheck="false" aria-label="search layers">
    <span id="hits"></span>
    <button id="fit" type="button" title="fit the whole net">Fit</button>
    <button id="fitw" type="button" title="fit the width, back to the top">Width</button>
    <a id="dl-csv" class="btn" download="net.csv" href="#">CSV</a>
    <a id="dl-json" class="btn" download="net.json" href="#">JSON</a>
  </div>
  <div class="legend">{legend}</div>
</header>
<div id="main">
  <div id="canvas" tabindex="0" aria-label="network graph: wheel to zoom, drag to pan">
{svg}
  </div>
  <aside id="panel"><div id="panel-empty"><h2>Layer details</h2>
    <p>Click a box (or a sub-row, or a table row) to see its prototxt parameters, shapes,
    parameters, MACs and activation memory.</p>
    <p class="hint">Wheel: zoom · drag: pan · search box: highlight, ⏎ jumps to the next match ·
    Esc: clear.</p>{uncounted}</div>
    <div id="panel-body" hidden>
      <h2 id="p-name"></h2>
      <div id="p-type"></div>
      <table class="kv" id="p-kv"><tbody></tbody></table>
      <div id="p-folded"></div>
      <h3>Blobs</h3><table class="kv" id="p-blobs"><tbody></tbody></table>
      <h3>prototxt <span id="p-src"></span></h3>
      <pre id="p-proto"></pre>
    </div>
  </aside>
</div>
<section id="tables">
  <table id="layers" class="grid">
    <thead><tr>
      <th data-k="i" class="num">#</th><th data-k="name">layer</th><th data-k="type">type</th>
      <th data-k="in">input</th><th data-k="out">output</th>
      <th data-k="params" class="num">params</th><th data-k="macs" class="num">MACs</th>
      <th data-k="ops" class="num">ops</th><th data-k="memory" class="num">memory</th>
      <th data-k="prefix">prefix</th>
    </tr></thead>
    <tbody></tbody>
    <tfoot></tfoot>
  </table>
  <h3 class="subt">Subtotals by name prefix</h3>
  <table id="prefixes" class="grid">
    <thead><tr><th data-k="prefix">prefix</th><th data-k="layers" class="num">layers</th>
      <th data-k="params" class="num">params</th><th data-k="macs" class="num">MACs</th>
      <th data-k="ops" class="num">ops</th><th data-k="memory" class="num">memory</th>
      <th data-k="share" class="num">MACs share</th></tr></thead>
    <tbody></tbody>
  </table>
  <details class="rules"><summary>How things are counted</summary>
    <p>MACs: multiply-accumulates of Convolution (output elements × C<sub>in</sub>/group × kh ×
    kw), Deconvolution (input elements × C<sub>out</sub>/group × kh × kw), InnerProduct (output
    elements × K), BatchNorm and Scale (one per element), LRN (elements × local_size).
    FLOPs = 2 × MACs. Ops: other single operations — pooling (output elements × window), Eltwise
    (elements × (bottoms − 1)), activations, Bias, Softmax (elements), losses (bottom elements).
    Concat, Slice, Split, Reshape, Crop, Permute: 0. Memory: bytes of the blobs a layer writes
    (float32); in-place layers and views (Split, Flatten, Reshape) count 0. Params: learnable
    blobs, shared ones counted once; BatchNorm statistics are listed apart.</p>
    <p>Generated by landmarknet {version} from <code>{source}</code> (layout: {engine}).</p>
  </details>
</section>
<script type="application/json" id="lnet-data">{data}</script>
<script>
{js}
</script>
</body>
</html>
"""

_CSS = r"""
:root{--line:#dbe1e7;--muted:#5d6873;--sel:#1a73e8;--bg:#f3f5f7}
*{box-sizing:border-box}
html,body{margin:0;height:100%}
body{display:flex;flex-direction:column;font:13px/1.4 Helvetica,Arial,"Liberation Sans",sans-serif;
  color:#1d2329;background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:center;gap:4px 18px;padding:8px 14px;
  background:#fff;border-bottom:1px solid var(--line)}
header h1{font-size:17px;margin:0;display:inline}
.ttl .ph{margin-left:8px;color:var(--muted);font-size:12px;border:1px solid var(--line);
  border-radius:9px;padding:0 7px}
.sum{color:var(--muted);font-size:12px}
.tools{display:flex;align-items:center;gap:6px;margin-left:auto}
#search{width:260px;padding:4px 8px;border:1px solid #c5ced6;border-radius:6px;font:inherit}
#hits{color:var(--muted);font-size:12px;min-width:52px}
button,.btn{font:inherit;font-size:12px;padding:3px 10px;border:1px solid #c5ced6;border-radius:6px;
  background:#f8fafb;color:#1d2329;text-decoration:none;cursor:pointer}
button:hover,.btn:hover{background:#eef2f5}
.legend{width:100%;display:flex;flex-wrap:wrap;gap:2px 14px;font-size:11.5px;color:var(--muted)}
.legend .sw,.pchip{display:inline-block;width:13px;height:10px;border:1px solid;border-radius:2px;
  margin-right:5px;vertical-align:-1px}
#main{flex:1 1 62%;display:flex;min-height:220px}
#canvas{flex:1;position:relative;overflow:hidden;background:#fff;cursor:grab;outline:none}
#canvas.drag{cursor:grabbing}
#canvas svg{position:absolute;left:0;top:0;width:100%;height:100%;user-select:none}
#panel{width:380px;max-width:45vw;overflow:auto;border-left:1px solid var(--line);
  background:#fbfcfd;padding:6px 14px 14px}
#panel h2{font-size:15px;margin:8px 0 2px;word-break:break-all}
#panel h3{font-size:12px;margin:12px 0 4px;color:var(--muted);text-transform:uppercase;
  letter-spacing:.04em}
#p-type{color:var(--muted);margin-bottom:6px}
#p-src{text-transform:none;letter-spacing:0;font-weight:400}
.kv{border-collapse:collapse;width:100%;font-size:12px}
.kv td{padding:2px 6px 2px 0;vertical-align:top;word-break:break-all}
.kv td:first-child{color:var(--muted);white-space:nowrap;width:1%}
#p-proto{background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px;
  font:11.5px/1.35 Menlo,Consolas,"DejaVu Sans Mono",monospace;white-space:pre-wrap;
  word-break:break-all;margin:0}
#p-folded a,.lnk{color:var(--sel);cursor:pointer;text-decoration:none}
.hint{color:var(--muted);font-size:12px}
.warn{color:#9a4a00;font-size:12px}
#tables{flex:1 1 38%;overflow:auto;border-top:1px solid var(--line);background:#fff;
  padding:0 0 12px}
.grid{border-collapse:collapse;width:100%;font-size:12px}
.grid th{position:sticky;top:0;background:#eef2f5;text-align:left;padding:4px 8px;
  border-bottom:1px solid var(--line);cursor:pointer;white-space:nowrap;user-select:none}
.grid th.num,.grid td.num{text-align:right}
.grid th.asc::after{content:" ▲";font-size:9px}
.grid th.desc::after{content:" ▼";font-size:9px}
.grid td{padding:2px 8px;border-bottom:1px solid #f0f2f4;white-space:nowrap;max-width:340px;
  overflow:hidden;text-overflow:ellipsis}
.grid tbody tr{cursor:pointer}
.grid tbody tr:hover{background:#f5f8fb}
.grid tr.sel{background:#e3eefc !important}
.grid tr.folded td.nm{padding-left:22px;color:#37414a}
.grid tr.inp td{color:#2a5d8f}
.grid tfoot td{font-weight:700;border-top:2px solid var(--line);background:#fafbfc}
.subt{font-size:13px;margin:14px 8px 4px}
.rules{margin:10px 8px;color:var(--muted);font-size:12px}
.lnet .node{cursor:pointer}
.lnet .node.sel>.box{stroke:var(--sel);stroke-width:3}
.lnet .sub.sel .subbg{fill:#cfe0fb;fill-opacity:1}
.lnet .node.match>.box{stroke:#e8710a;stroke-width:3}
.lnet .dim{opacity:.22}
.lnet .edge.hl{stroke:var(--sel);stroke-width:2.2}
.lnet .arrow.hl{fill:var(--sel)}
"""

_JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("lnet-data").textContent);
  var rows = DATA.rows;
  var svg = document.getElementById("lnet-svg");
  var graph = document.getElementById("lnet-graph");
  var canvas = document.getElementById("canvas");
  var W = parseFloat(svg.getAttribute("width")), H = parseFloat(svg.getAttribute("height"));
  svg.removeAttribute("viewBox");
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  var nodeEls = {};
  Array.prototype.forEach.call(svg.querySelectorAll("g.node"), function (g) {
    nodeEls[g.getAttribute("data-node")] = g;
  });

  // ---- formatting -----------------------------------------------------------------------
  function trim(t) { return t.indexOf(".") < 0 ? t : t.replace(/0+$/, "").replace(/\.$/, ""); }
  function human(v) {
    var units = [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(v) >= units[i][1]) return trim((v / units[i][1]).toPrecision(3)) + units[i][0];
    }
    return String(v);
  }
  function bytes(v) {
    var units = [["GiB", 1073741824], ["MiB", 1048576], ["KiB", 1024]];
    for (var i = 0; i < units.length; i++) {
      if (v >= units[i][1]) return trim((v / units[i][1]).toPrecision(3)) + " " + units[i][0];
    }
    return v + " B";
  }
  function group(v) { return String(v).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  // ---- pan and zoom ---------------------------------------------------------------------
  var view = {k: 1, x: 0, y: 0};
  function apply() {
    graph.setAttribute("transform", "translate(" + view.x + "," + view.y + ") scale(" + view.k + ")");
  }
  function fitAll() {
    var cw = canvas.clientWidth, ch = canvas.clientHeight;
    view.k = Math.min(cw / W, ch / H, 1.5);
    view.x = (cw - W * view.k) / 2; view.y = (ch - H * view.k) / 2; apply();
  }
  function fitWidth() {
    var cw = canvas.clientWidth;
    view.k = Math.min(cw / W, 1);
    view.x = (cw - W * view.k) / 2; view.y = 0; apply();
  }
  function zoomAt(mx, my, factor) {
    var k = Math.max(0.02, Math.min(8, view.k * factor));
    view.x = mx - (mx - view.x) * k / view.k;
    view.y = my - (my - view.y) * k / view.k;
    view.k = k; apply();
  }
  canvas.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = canvas.getBoundingClientRect();
    var d = ev.deltaMode === 1 ? ev.deltaY * 33 : ev.deltaY;
    zoomAt(ev.clientX - r.left, ev.clientY - r.top, Math.exp(-d * 0.0015));
  }, {passive: false});
  var drag = null;
  canvas.addEventListener("pointerdown", function (ev) {
    if (ev.button !== 0) return;
    drag = {x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, moved: false};
  });
  window.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    if (!drag.moved) { drag.moved = true; canvas.classList.add("drag"); }
    view.x = drag.vx + dx; view.y = drag.vy + dy; apply();
  });
  window.addEventListener("pointerup", function () {
    if (drag && drag.moved) { canvas.dataset.justDragged = "1"; setTimeout(function () { delete canvas.dataset.justDragged; }, 0); }
    drag = null; canvas.classList.remove("drag");
  });
  function centerOn(nodeId) {
    var g = nodeEls[nodeId];
    if (!g) return;
    var b = g.getBBox(), t = g.transform.baseVal.consolidate();
    var ox = t ? t.matrix.e : 0, oy = t ? t.matrix.f : 0;
    var cx = ox + b.x + b.width / 2, cy = oy + b.y + b.height / 2;
    if (view.k < 0.6) view.k = 0.9;
    view.x = canvas.clientWidth / 2 - cx * view.k;
    view.y = canvas.clientHeight / 2 - cy * view.k; apply();
  }
  document.getElementById("fit").addEventListener("click", fitAll);
  document.getElementById("fitw").addEventListener("click", fitWidth);

  // ---- selection and the side panel -----------------------------------------------------
  var selected = null;
  var tableRows = {};
  function kv(tbody, key, value, title) {
    var tr = el("tr"), td = el("td", null, key), tv = el("td", null, value);
    if (title) tv.title = title;
    tr.appendChild(td); tr.appendChild(tv); tbody.appendChild(tr);
  }
  function showPanel(r) {
    document.getElementById("panel-empty").hidden = true;
    document.getElementById("panel-body").hidden = false;
    document.getElementById("p-name").textContent = r.name;
    var pt = document.getElementById("p-type");
    pt.textContent = "";
    var chip = el("span", "pchip pchip-" + r.family); pt.appendChild(chip);
    pt.appendChild(document.createTextNode(r.type + " · " + r.family + (r.inPlace ? " · in place" : "")));
    var kvb = document.querySelector("#p-kv tbody"); kvb.textContent = "";
    r.bottoms.forEach(function (b, i) { kv(kvb, i ? "" : "bottoms", b + "  " + r["in"][i]); });
    r.tops.forEach(function (t, i) { kv(kvb, i ? "" : "tops", t + "  " + r.out[i]); });
    if (r.detail) kv(kvb, "summary", r.detail);
    kv(kvb, "params", group(r.params));
    if (r.stats) kv(kvb, "statistics", group(r.stats));
    kv(kvb, "MACs", r.counted ? group(r.macs) + "  (" + human(r.macs) + ")" : "not counted");
    kv(kvb, "FLOPs", r.counted ? group(r.flops) + "  (" + human(r.flops) + ")" : "not counted");
    kv(kvb, "other ops", r.counted ? group(r.ops) : "not counted");
    kv(kvb, "memory", bytes(r.memory) + (r.inPlace ? " (in place)" : ""));
    if (r.lossWeights && r.lossWeights.some(function (w) { return w; })) kv(kvb, "loss weight", r.lossWeights.join(", "));
    kv(kvb, "prefix", r.prefix);
    var fold = document.getElementById("p-folded"); fold.textContent = "";
    var head = r.node ? rows.filter(function (x) { return x.node === r.node && !x.inPlace; })[0] : null;
    if (r.folded.length) {
      fold.appendChild(el("h3", null, "Folded in-place layers"));
      r.folded.forEach(function (i) {
        var a = el("a", "lnk", rows[i].name + " (" + rows[i].type + ")");
        a.addEventListener("click", function () { select(i, true); });
        fold.appendChild(a); fold.appendChild(el("br"));
      });
    } else if (r.inPlace && head && head.i !== r.i) {
      fold.appendChild(el("h3", null, "Drawn inside"));
      var a = el("a", "lnk", head.name + " (" + head.type + ")");
      a.addEventListener("click", function () { select(head.i, true); });
      fold.appendChild(a);
    }
    var bb = document.querySelector("#p-blobs tbody"); bb.textContent = "";
    if (!r.blobs.length) kv(bb, "", "none");
    r.blobs.forEach(function (b, i) {
      var what = b.learnable ? "learnable" : "statistic";
      if (b.shared_from) what += ", shared from " + b.shared_from;
      kv(bb, i + " " + b.attr, b.shape.join("×") + "  " + what);
    });
    document.getElementById("p-src").textContent = r.source ? "(" + r.source + ")" : "";
    document.getElementById("p-proto").textContent = r.proto;
  }
  function clearHighlight() {
    Array.prototype.forEach.call(svg.querySelectorAll(".sel,.hl"), function (e) {
      e.classList.remove("sel"); e.classList.remove("hl");
    });
    Object.keys(tableRows).forEach(function (k) { tableRows[k].classList.remove("sel"); });
  }
  function select(i, center) {
    var r = rows[i];
    if (!r) return;
    selected = i;
    clearHighlight();
    showPanel(r);
    if (r.node && nodeEls[r.node]) {
      var g = nodeEls[r.node];
      g.classList.add("sel");
      var sub = g.querySelector('.sub[data-row="' + i + '"]');
      if (sub) sub.classList.add("sel");
      Array.prototype.forEach.call(svg.querySelectorAll('[data-src="' + r.node + '"],[data-dst="' + r.node + '"]'), function (p) {
        p.classList.add("hl");
        var a = svg.querySelector('polygon[data-edge="' + p.getAttribute("data-edge") + '"]');
        if (a) a.classList.add("hl");
      });
      if (center) centerOn(r.node);
    }
    var tr = tableRows[i];
    if (tr) {
      tr.classList.add("sel");
      var box = document.getElementById("tables");
      var top = tr.offsetTop - box.clientHeight / 2;
      box.scrollTop = Math.max(0, top);
    }
    history.replaceState(null, "", "#" + encodeURIComponent(r.name));
  }
  svg.addEventListener("click", function (ev) {
    if (canvas.dataset.justDragged) return;
    var t = ev.target.closest ? ev.target.closest("[data-row]") : null;
    if (!t) return;
    select(parseInt(t.getAttribute("data-row"), 10), false);
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") {
      clearHighlight(); selected = null;
      document.getElementById("panel-body").hidden = true;
      document.getElementById("panel-empty").hidden = false;
      search.value = ""; runSearch();
    }
  });

  // ---- the tables -----------------------------------------------------------------------
  var tbody = document.querySelector("#layers tbody");
  rows.forEach(function (r) {
    var tr = el("tr", (r.inPlace ? "folded" : "") + (r.input ? " inp" : ""));
    tr.appendChild(el("td", "num", r.i));
    var nm = el("td", "nm", r.name); nm.title = r.name; tr.appendChild(nm);
    tr.appendChild(el("td", null, r.type));
    var tin = el("td", null, r["in"].join(", ")); tin.title = r.bottoms.join(", "); tr.appendChild(tin);
    var tout = el("td", null, r.out.join(", ")); tout.title = r.tops.join(", "); tr.appendChild(tout);
    var p = el("td", "num", group(r.params)); tr.appendChild(p);
    var m = el("td", "num", r.counted ? human(r.macs) : "?"); m.title = group(r.macs); tr.appendChild(m);
    var o = el("td", "num", r.counted ? human(r.ops) : "?"); o.title = group(r.ops); tr.appendChild(o);
    var me = el("td", "num", bytes(r.memory)); me.title = group(r.memory) + " bytes"; tr.appendChild(me);
    tr.appendChild(el("td", null, r.input ? "" : r.prefix));
    tr.addEventListener("click", function () { select(r.i, true); });
    tableRows[r.i] = tr;
    tbody.appendChild(tr);
  });
  var T = DATA.totals;
  var ft = el("tr");
  [["", ""], ["total", ""], [T.layers + " layers", ""], ["", ""], ["", ""],
   [group(T.params), "num"], [human(T.macs), "num"], [human(T.ops), "num"], [bytes(T.memory), "num"], ["", ""]]
    .forEach(function (c) { ft.appendChild(el("td", c[1], c[0])); });
  ft.children[6].title = group(T.macs) + " MACs, " + group(T.flops) + " FLOPs";
  document.querySelector("#layers tfoot").appendChild(ft);

  function sortable(table, getter) {
    var ths = table.querySelectorAll("th");
    Array.prototype.forEach.call(ths, function (th) {
      th.addEventListener("click", function () {
        var k = th.getAttribute("data-k");
        var asc = !th.classList.contains("asc");
        Array.prototype.forEach.call(ths, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        var body = table.querySelector("tbody");
        var items = Array.prototype.slice.call(body.children);
        items.sort(function (a, b) {
          var x = getter(a, k), y = getter(b, k);
          var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        items.forEach(function (tr) { body.appendChild(tr); });
      });
    });
  }
  var rowOfTr = new Map();
  Object.keys(tableRows).forEach(function (k) { rowOfTr.set(tableRows[k], rows[k]); });
  sortable(document.getElementById("layers"), function (tr, k) {
    var r = rowOfTr.get(tr);
    if (k === "in" || k === "out") return r[k].join(",");
    return r[k];
  });
  var pbody = document.querySelector("#prefixes tbody");
  var prefRows = new Map();
  Object.keys(DATA.prefixes).forEach(function (name) {
    var s = DATA.prefixes[name];
    var tr = el("tr");
    tr.appendChild(el("td", null, name));
    tr.appendChild(el("td", "num", s.layers));
    tr.appendChild(el("td", "num", group(s.params)));
    var m = el("td", "num", human(s.macs)); m.title = group(s.macs); tr.appendChild(m);
    tr.appendChild(el("td", "num", human(s.ops)));
    tr.appendChild(el("td", "num", bytes(s.memory)));
    var share = T.macs ? s.macs / T.macs : 0;
    tr.appendChild(el("td", "num", (100 * share).toFixed(1) + " %"));
    prefRows.set(tr, {prefix: name, layers: s.layers, params: s.params, macs: s.macs, ops: s.ops, memory: s.memory, share: share});
    tr.addEventListener("click", function () { search.value = name; runSearch(true); });
    pbody.appendChild(tr);
  });
  sortable(document.getElementById("prefixes"), function (tr, k) { return prefRows.get(tr)[k]; });

  // ---- search ---------------------------------------------------------------------------
  var search = document.getElementById("search");
  var hits = document.getElementById("hits");
  var matches = [], cursor = -1;
  function runSearch(byPrefix) {
    var q = search.value.trim().toLowerCase();
    matches = []; cursor = -1;
    var matchedNodes = {};
    rows.forEach(function (r) {
      var hit = !q || (byPrefix === true ? r.prefix.toLowerCase() === q :
        (r.name + " " + r.type + " " + r.tops.join(" ") + " " + r.bottoms.join(" ")).toLowerCase().indexOf(q) >= 0);
      tableRows[r.i].style.display = hit ? "" : "none";
      if (hit && q) { matches.push(r.i); if (r.node) matchedNodes[r.node] = true; }
    });
    Object.keys(nodeEls).forEach(function (id) {
      var g = nodeEls[id];
      g.classList.toggle("match", !!q && !!matchedNodes[id]);
      g.classList.toggle("dim", !!q && !matchedNodes[id]);
    });
    Array.prototype.forEach.call(svg.querySelectorAll(".edge,.arrow,.lbl"), function (e) {
      e.classList.toggle("dim", !!q);
    });
    hits.textContent = q ? matches.length + " match" + (matches.length === 1 ? "" : "es") : "";
  }
  search.addEventListener("input", function () { runSearch(false); });
  search.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && matches.length) {
      cursor = (cursor + 1) % matches.length;
      select(matches[cursor], true);
      hits.textContent = (cursor + 1) + " / " + matches.length;
    }
  });

  // ---- downloads (data URLs) -------------------------------------------------------------
  var csv = document.getElementById("dl-csv"), js = document.getElementById("dl-json");
  csv.href = "data:text/csv;charset=utf-8," + encodeURIComponent(DATA.csv);
  csv.setAttribute("download", DATA.stem + ".csv");
  js.href = "data:application/json;charset=utf-8," + encodeURIComponent(DATA.json);
  js.setAttribute("download", DATA.stem + ".json");

  // ---- start ----------------------------------------------------------------------------
  fitWidth();
  window.addEventListener("resize", function () { if (selected === null) fitWidth(); });
  var wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted) {
    var r0 = rows.filter(function (r) { return r.name === wanted; })[0];
    if (r0) select(r0.i, true);
  }
  window.lnet = {select: select, rows: rows, view: view, fitAll: fitAll, centerOn: centerOn};
})();
"""
