"""One SVG renderer for both layout engines: rounded boxes coloured by family, folded in-place
layers as sub-rows, edges as Bézier curves with arrowheads, blob shapes on the edges, a legend.

Every string that comes from a prototxt (layer names, types, blob names) goes through ``esc``:
the SVG is safe to inline in HTML.
"""
from __future__ import annotations

import html
import math

from landmarknet.render.layout import LayoutResult, Point
from landmarknet.render.model import (DETAIL_PX, DETAIL_H, FAMILY_LABELS, FONT_FAMILY, LABEL_PX,
                                      PAD_TOP, PAD_X, SUBROW_H, SUBROW_PX, TITLE_H, TITLE_PX,
                                      DEdge, Diagram, DNode, family_color, fit_text, text_width,
                                      totals_line)

HEADER_H = 58.0
ARROW_LEN = 7.0
ARROW_HALF = 3.6
EDGE_COLOR = "#6b7480"
LABEL_COLOR = "#3c4650"


def esc(text: object) -> str:
    """Escape for XML/HTML text and attribute values (quotes included)."""
    return html.escape(str(text), quote=True)


def css() -> str:
    """The SVG's own styles (family classes, edges, labels); the HTML adds interaction styles."""
    rules = [
        f".lnet text{{font-family:{FONT_FAMILY};fill:#1d2329}}",
        f".lnet .t{{font-size:{TITLE_PX}px;font-weight:700}}",
        f".lnet .d{{font-size:{DETAIL_PX}px;fill:#39424b}}",
        f".lnet .s{{font-size:{SUBROW_PX}px;fill:#2a3138}}",
        ".lnet .sn{fill:#6a747e}",
        f".lnet .lbl{{font-size:{LABEL_PX}px;fill:{LABEL_COLOR};paint-order:stroke;"
        "stroke:#ffffff;stroke-width:3px;stroke-linejoin:round}",
        f".lnet .edge{{fill:none;stroke:{EDGE_COLOR};stroke-width:1.3}}",
        f".lnet .arrow{{fill:{EDGE_COLOR}}}",
        ".lnet .box{stroke-width:1.2}",
        ".lnet .subbg{fill:#ffffff;fill-opacity:.55}",
        ".lnet .out .box{stroke-dasharray:3 2}",
        ".lnet .hdr{font-size:15px;font-weight:700}",
        ".lnet .sum{font-size:11px;fill:#39424b}",
        ".lnet .leg{font-size:10.5px;fill:#39424b}",
    ]
    for fam in list(FAMILY_LABELS) + ["custom"]:
        fill, stroke = family_color(fam)
        rules.append(f".lnet .fam-{fam}>.box{{fill:{fill};stroke:{stroke}}}")
        rules.append(f".lnet .chip.fam-{fam}{{fill:{fill};stroke:{stroke}}}")
    return "\n".join(rules)


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if abs(v - round(v)) > 1e-6 else str(int(round(v)))


def path_d(pts: list[Point]) -> str:
    """SVG path data of a cubic Bézier chain."""
    d = [f"M{_f(pts[0][0])},{_f(pts[0][1])}"]
    for i in range(1, len(pts) - 2, 3):
        (a, b), (c, e), (g, h) = pts[i], pts[i + 1], pts[i + 2]
        d.append(f"C{_f(a)},{_f(b)} {_f(c)},{_f(e)} {_f(g)},{_f(h)}")
    return "".join(d)


def arrow_points(pts: list[Point]) -> list[Point]:
    """Triangle of the arrowhead at the end of a path, along its last tangent."""
    tip = pts[-1]
    prev = next((p for p in reversed(pts[:-1]) if math.dist(p, tip) > 0.5), (tip[0], tip[1] - 1))
    dx, dy = tip[0] - prev[0], tip[1] - prev[1]
    n = math.hypot(dx, dy) or 1.0
    dx, dy = dx / n, dy / n
    bx, by = tip[0] - ARROW_LEN * dx, tip[1] - ARROW_LEN * dy
    return [tip, (bx + ARROW_HALF * -dy, by + ARROW_HALF * dx),
            (bx - ARROW_HALF * -dy, by - ARROW_HALF * dx)]


def trimmed(pts: list[Point]) -> list[Point]:
    """The path shortened so that the line ends inside the arrowhead, not at its tip."""
    if len(pts) < 4:
        return pts
    tip = pts[-1]
    c2 = pts[-2]
    d = math.dist(tip, c2)
    if d < 1e-6:
        return pts
    k = min(ARROW_LEN * 0.8, d * 0.9) / d
    end = (tip[0] + (c2[0] - tip[0]) * k, tip[1] + (c2[1] - tip[1]) * k)
    return pts[:-1] + [end]


def label_positions(diagram: Diagram, lay: LayoutResult) -> list[tuple[DEdge, Point]]:
    """One shape label per (producer box, blob), just below where the blob leaves the box."""
    out = []
    seen: set[tuple[str, str]] = set()
    for e in diagram.edges:
        key = (e.src, e.ssa)
        if key in seen or e.id not in lay.paths:
            continue
        seen.add(key)
        x, y = lay.paths[e.id][0]
        out.append((e, (x + 5, y + 11)))
    return out


def node_svg(n: DNode, cx: float, cy: float, interactive: bool) -> str:
    """One box: rect, title, detail line, folded sub-rows."""
    x, y = cx - n.width / 2, cy - n.height / 2
    attrs = f' data-node="{esc(n.id)}"'
    if n.row is not None:
        attrs += f' data-row="{n.row}"'
    kind = {"layer": "node", "input": "node inp", "output": "node out"}[n.kind]
    parts = [f'<g class="{kind} fam-{esc(n.family)}" id="{esc(n.id)}"{attrs} '
             f'transform="translate({_f(x)},{_f(y)})">']
    tip = n.title if n.kind == "output" else f"{n.title} ({n.detail})"
    parts.append(f"<title>{esc(tip)}</title>")
    inner = n.width - 2 * PAD_X
    if n.kind == "output":
        parts.append(f'<rect class="box" width="{_f(n.width)}" height="{_f(n.height)}" '
                     f'rx="{_f(n.height / 2)}"/>')
        label = fit_text(n.title, n.width - 16, DETAIL_PX, True)
        parts.append(f'<text class="d" x="{_f(n.width / 2)}" y="{_f(n.height / 2 + 3.5)}" '
                     f'text-anchor="middle" font-weight="700">{esc(label)}</text>')
        parts.append("</g>")
        return "".join(parts)
    parts.append(f'<rect class="box" width="{_f(n.width)}" height="{_f(n.height)}" rx="7"/>')
    ty = PAD_TOP + TITLE_H - 3.5
    parts.append(f'<text class="t" x="{_f(PAD_X)}" y="{_f(ty)}">'
                 f'{esc(fit_text(n.title, inner, TITLE_PX, True))}</text>')
    dy = ty + DETAIL_H
    parts.append(f'<text class="d" x="{_f(PAD_X)}" y="{_f(dy)}">'
                 f'{esc(fit_text(n.detail, inner, DETAIL_PX))}</text>')
    sy = PAD_TOP + TITLE_H + DETAIL_H + 4
    for s in n.subrows:
        tip = f"{s.name} ({s.type}{' · ' + s.detail if s.detail else ''})"
        sub_attrs = f' data-row="{s.row}"' if interactive else ""
        parts.append(f'<g class="sub"{sub_attrs}><title>{esc(tip)}</title>')
        parts.append(f'<rect class="subbg" x="4" y="{_f(sy)}" width="{_f(n.width - 8)}" '
                     f'height="{_f(SUBROW_H - 2)}" rx="4"/>')
        parts.append(f'<rect class="chip fam-{esc(s.family)}" x="8" y="{_f(sy + 3)}" width="7" '
                     f'height="8" rx="2"/>')
        room = n.width - 28 - text_width(s.type + "  ", SUBROW_PX)
        name = fit_text(s.name, room, SUBROW_PX) if room > 20 else ""
        parts.append(f'<text class="s" x="21" y="{_f(sy + SUBROW_H - 5.5)}">{esc(s.type)}'
                     f'<tspan class="sn" dx="5">{esc(name)}</tspan></text></g>')
        sy += SUBROW_H
    parts.append("</g>")
    return "".join(parts)


def render_svg(diagram: Diagram, lay: LayoutResult, *, interactive: bool = False,
               header: bool = True) -> str:
    """The whole drawing as an SVG document (``interactive`` adds ids for the HTML viewer;
    ``header`` draws the net's name, totals and the family legend above the graph)."""
    top = HEADER_H if header else 0.0
    width = max(lay.width, _legend_width(diagram) + 40 if header else 0)
    height = lay.height + top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lnet" id="lnet-svg" '
           f'viewBox="0 0 {_f(width)} {_f(height)}" width="{_f(width)}" height="{_f(height)}">',
           f"<style>{css()}</style>",
           f'<rect class="bg" width="{_f(width)}" height="{_f(height)}" fill="#ffffff"/>']
    if header:
        out.append(_header_svg(diagram))
    out.append(f'<g id="lnet-graph" transform="translate(0,{_f(top)})">')
    out.append('<g class="edges">')
    for e in diagram.edges:
        pts = lay.paths.get(e.id)
        if not pts:
            continue
        out.append(f'<path class="edge" data-edge="{esc(e.id)}" data-src="{esc(e.src)}" '
                   f'data-dst="{esc(e.dst)}" d="{path_d(trimmed(pts))}"/>')
        tri = arrow_points(pts)
        out.append(f'<polygon class="arrow" data-edge="{esc(e.id)}" points="'
                   + " ".join(f"{_f(x)},{_f(y)}" for x, y in tri) + '"/>')
    out.append("</g><g class=\"labels\">")
    for e, (x, y) in label_positions(diagram, lay):
        out.append(f'<text class="lbl" x="{_f(x)}" y="{_f(y)}">{esc(e.label)}<title>'
                   f'{esc(e.blob)}: {esc("×".join(map(str, e.shape)))}</title></text>')
    out.append('</g><g class="nodes">')
    for n in diagram.nodes:
        cx, cy = lay.centers[n.id]
        out.append(node_svg(n, cx, cy, interactive))
    out.append("</g></g></svg>")
    return "\n".join(out) + "\n"


def _legend_items(diagram: Diagram) -> list[tuple[str, str]]:
    return [(f, FAMILY_LABELS.get(f, f)) for f in diagram.families if f != "output"]


def _legend_width(diagram: Diagram) -> float:
    return sum(22 + text_width(label, 10.5) + 14 for _, label in _legend_items(diagram))


def _header_svg(diagram: Diagram) -> str:
    s = diagram.stats
    name = s.name or "net"
    parts = ['<g class="header">',
             f'<text class="hdr" x="20" y="22">{esc(name)} '
             f'<tspan class="sum" font-weight="400">({esc(s.phase)})</tspan></text>',
             f'<text class="sum" x="20" y="38">{esc(totals_line(s))}</text>']
    x = 20.0
    for fam, label in _legend_items(diagram):
        parts.append(f'<rect class="chip fam-{esc(fam)}" x="{_f(x)}" y="45" width="14" '
                     f'height="10" rx="2"/>')
        parts.append(f'<text class="leg" x="{_f(x + 19)}" y="54">{esc(label)}</text>')
        x += 22 + text_width(label, 10.5) + 14
    parts.append("</g>")
    return "".join(parts)
