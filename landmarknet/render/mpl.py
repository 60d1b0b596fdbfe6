"""PNG and PDF of the drawing through matplotlib: the same boxes, edges and labels as the SVG,
from the same layout, with no Graphviz or browser needed.

Box sizes were estimated for Helvetica-like fonts; when matplotlib only has a wider font
(DejaVu Sans) the text is scaled down by the measured ratio so that it stays inside the boxes.
"""
from __future__ import annotations

import io

from landmarknet.render.model import (DETAIL_H, DETAIL_PX, FAMILY_LABELS, LABEL_PX, PAD_TOP,
                                      PAD_X, SUBROW_H, SUBROW_PX, TITLE_H, TITLE_PX,
                                      family_color, fit_text, text_width, totals_line)
from landmarknet.render.svg import (ARROW_LEN, EDGE_COLOR, HEADER_H, LABEL_COLOR, arrow_points,
                                    label_positions, trimmed)

MAX_PIXELS = 30000  # longest side of a PNG
_FONTS = ["Liberation Sans", "Arial", "Helvetica", "Nimbus Sans",
          "DejaVu Sans"]


def _font():
    """(family name, scale) for matplotlib text so that it fits the estimated widths."""
    from matplotlib import font_manager
    from matplotlib.textpath import TextPath

    available = {f.name for f in font_manager.fontManager.ttflist}
    family = next((f for f in _FONTS if f in available), "DejaVu Sans")
    sample = "inception_3a/3x3_reduce Convolution 128x28x28"
    prop = font_manager.FontProperties(family=family, size=100)
    actual = TextPath((0, 0), sample, prop=prop).get_extents().width
    estimate = text_width(sample, 100)
    return family, min(1.0, estimate / actual * 0.98) if actual > 0 else 1.0


def render_image(drawing, fmt: str, *, dpi: float | None = None) -> bytes:
    """The drawing as PNG or PDF bytes."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
    from matplotlib.path import Path

    diagram, lay = drawing.diagram, drawing.layout
    family, scale = _font()
    top = HEADER_H
    width = max(lay.width, 600.0)
    height = lay.height + top
    if dpi is None:
        dpi = 144.0 if fmt == "png" else 72.0
        dpi = min(dpi, MAX_PIXELS / max(width, height) * 72.0)
    fig = Figure(figsize=(width / 72.0, height / 72.0), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    fig.patch.set_facecolor("white")

    def text(x, y, s, size, **kw):
        ax.text(x, y, s, fontsize=size * scale, family=family, **kw)

    # Header: name, totals, legend.
    s = diagram.stats
    text(20, 22, f"{s.name or 'net'} ({s.phase})", 15, weight="bold", va="baseline")
    text(20, 38, totals_line(s), 11, color="#39424b", va="baseline")
    x = 20.0
    for fam in diagram.families:
        if fam == "output":
            continue
        fill, stroke = family_color(fam)
        ax.add_patch(FancyBboxPatch((x, 45), 14, 10, boxstyle="round,pad=0,rounding_size=2",
                                    fc=fill, ec=stroke, lw=0.8))
        label = FAMILY_LABELS.get(fam, fam)
        text(x + 19, 54, label, 10.5, color="#39424b", va="baseline")
        x += 22 + text_width(label, 10.5) + 14

    def shifted(pts):
        return [(px, py + top) for px, py in pts]

    for e in diagram.edges:
        pts = lay.paths.get(e.id)
        if not pts:
            continue
        pts = shifted(pts)
        line = trimmed(pts)
        codes = [Path.MOVETO] + [Path.CURVE4] * (len(line) - 1)
        ax.add_patch(PathPatch(Path(line, codes), fc="none", ec=EDGE_COLOR, lw=1.3 * 0.75))
        ax.add_patch(Polygon(arrow_points(pts), closed=True, fc=EDGE_COLOR, ec="none"))
    halo = [patheffects.withStroke(linewidth=2.2, foreground="white")]
    for e, (lx, ly) in label_positions(diagram, lay):
        text(lx, ly + top, e.label, LABEL_PX, color=LABEL_COLOR, va="baseline",
             path_effects=halo)
    for n in diagram.nodes:
        cx, cy = lay.centers[n.id]
        cy += top
        x0, y0 = cx - n.width / 2, cy - n.height / 2
        fill, stroke = family_color(n.family)
        if n.kind == "output":
            ax.add_patch(FancyBboxPatch((x0, y0), n.width, n.height,
                                        boxstyle=f"round,pad=0,rounding_size={n.height / 2}",
                                        fc="white", ec="#555555", lw=0.9, ls=(0, (3, 2))))
            text(cx, cy + 3.5, fit_text(n.title, n.width - 16, DETAIL_PX, True), DETAIL_PX,
                 weight="bold", ha="center", va="baseline")
            continue
        ax.add_patch(FancyBboxPatch((x0, y0), n.width, n.height,
                                    boxstyle="round,pad=0,rounding_size=7", fc=fill, ec=stroke,
                                    lw=0.9))
        inner = n.width - 2 * PAD_X
        ty = y0 + PAD_TOP + TITLE_H - 3.5
        text(x0 + PAD_X, ty, fit_text(n.title, inner, TITLE_PX, True), TITLE_PX,
             weight="bold", va="baseline", color="#1d2329")
        text(x0 + PAD_X, ty + DETAIL_H, fit_text(n.detail, inner, DETAIL_PX), DETAIL_PX,
             va="baseline", color="#39424b")
        sy = y0 + PAD_TOP + TITLE_H + DETAIL_H + 4
        for sub in n.subrows:
            ax.add_patch(FancyBboxPatch((x0 + 4, sy), n.width - 8, SUBROW_H - 2,
                                        boxstyle="round,pad=0,rounding_size=4", fc="white",
                                        alpha=0.55, ec="none"))
            sf, ss = family_color(sub.family)
            ax.add_patch(FancyBboxPatch((x0 + 8, sy + 3), 8, 8,
                                        boxstyle="round,pad=0,rounding_size=2", fc=sf, ec=ss,
                                        lw=0.7))
            room = n.width - 28 - text_width(sub.type + "  ", SUBROW_PX)
            name = fit_text(sub.name, room, SUBROW_PX) if room > 20 else ""
            text(x0 + 20, sy + SUBROW_H - 5.5, sub.type, SUBROW_PX, va="baseline",
                 color="#2a3138")
            text(x0 + 20 + text_width(sub.type, SUBROW_PX) + 5, sy + SUBROW_H - 5.5, name,
                 SUBROW_PX, va="baseline", color="#6a747e")
            sy += SUBROW_H
    buf = io.BytesIO()
    meta = {"Creator": "landmarknet"} if fmt == "pdf" else {"Software": "landmarknet"}
    fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white", metadata=meta)
    return buf.getvalue()


__all__ = ["render_image", "ARROW_LEN"]
