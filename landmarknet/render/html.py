"""One self-contained HTML page for a net: works offline from ``file://``, no CDN, no server.

The page holds the SVG drawing (inline), a side panel, a sortable per-layer table with totals and
per-prefix subtotals, search, wheel zoom and drag pan, and CSV/JSON downloads (data URLs). The
data the script needs is embedded as JSON in ``<script type="application/json">`` with every
``<``, ``>`` and ``&`` written as a ``\\u`` escape, so no prototxt text can close the script; the
script only ever writes prototxt text through ``textContent``. The page's template, stylesheet
and script are files of their own in ``render/page/`` (HTML, CSS and JS, not Python strings).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

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
    return _asset("page.html").format(
        title=esc(name), phase=esc(stats.phase), summary=esc(summary), legend=legend,
        svg=svg, data=json_for_script(page_data(drawing)), css=_asset("page.css") + fam_css,
        js=_asset("page.js"),
        version=esc(__version__), source=source, engine=esc(drawing.layout.engine),
        uncounted=uncounted)


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    """One of the page's files (render/page/: the HTML template with ``{field}`` slots, its
    stylesheet and its script), shipped as package data."""
    return resources.files("landmarknet.render").joinpath("page", name).read_text(encoding="utf-8")
