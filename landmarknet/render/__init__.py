"""Drawing a net: analysis -> diagram (boxes, edges) -> layout (dot or built-in) -> a format.

``render(net, fmt)`` returns the bytes of one of FORMATS:

* ``html``: one self-contained offline page (SVG graph, side panel, sortable table, downloads);
* ``svg``: the drawing with a header (name, totals, legend);
* ``png``/``pdf``: the same drawing through matplotlib (no Graphviz or browser needed);
* ``dot``: a Graphviz source file with labels and colours, to render or edit elsewhere;
* ``json``/``csv``/``md``: the per-layer analysis (shapes, params, MACs, memory).
"""
from __future__ import annotations

from dataclasses import dataclass

from landmarknet.analyze import NetStats, analyze
from landmarknet.render import layout as _layout
from landmarknet.render.layout import LayoutResult, LEdge, LNode, dot_available
from landmarknet.render.model import Diagram, build_diagram

FORMATS = ("html", "svg", "png", "pdf", "dot", "json", "csv", "md")
TEXT_FORMATS = ("html", "svg", "dot", "json", "csv", "md")


@dataclass
class Drawing:
    """A diagram and its layout."""

    diagram: Diagram
    layout: LayoutResult

    @property
    def stats(self) -> NetStats:
        """The analysis behind the drawing."""
        return self.diagram.stats


def layout_diagram(diagram: Diagram, engine: str = "auto") -> LayoutResult:
    """Lay out a diagram's boxes and edges."""
    nodes = [LNode(n.id, n.width, n.height) for n in diagram.nodes]
    edges = [LEdge(e.id, e.src, e.dst, e.port, e.n_ports) for e in diagram.edges]
    return _layout.layout(nodes, edges, engine)


def draw(net_or_stats, engine: str = "auto") -> Drawing:
    """Analyse (if given a net), build the diagram and lay it out."""
    stats = net_or_stats if isinstance(net_or_stats, NetStats) else analyze(net_or_stats)
    diagram = build_diagram(stats)
    return Drawing(diagram, layout_diagram(diagram, engine))


def render(net_or_stats, fmt: str = "html", *, engine: str = "auto") -> bytes:
    """The net in format ``fmt`` (one of FORMATS), as bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    stats = net_or_stats if isinstance(net_or_stats, NetStats) else analyze(net_or_stats)
    if fmt == "json":
        return stats.to_json().encode()
    if fmt == "csv":
        return stats.to_csv().encode()
    if fmt == "md":
        return stats.to_markdown().encode()
    diagram = build_diagram(stats)
    if fmt == "dot":
        from landmarknet.render.dotfile import dot_source
        return dot_source(diagram).encode()
    drawing = Drawing(diagram, layout_diagram(diagram, engine))
    if fmt == "svg":
        from landmarknet.render.svg import render_svg
        return render_svg(drawing.diagram, drawing.layout).encode()
    if fmt == "html":
        from landmarknet.render.html import render_html
        return render_html(drawing).encode()
    from landmarknet.render.mpl import render_image
    return render_image(drawing, fmt)


__all__ = ["FORMATS", "Drawing", "draw", "render", "layout_diagram", "dot_available"]
