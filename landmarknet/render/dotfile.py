"""A standalone Graphviz source of the drawing (``--format dot``): boxes with the same text and
colours, edges labelled with blob shapes, to render (``dot -Tpdf``) or edit elsewhere."""
from __future__ import annotations

from landmarknet.render.model import Diagram, family_color, subrow_text


def dot_quote(text: str) -> str:
    """A DOT double-quoted string (backslashes and quotes escaped, newlines as \\n)."""
    return '"' + (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                  .replace("\r", "")) + '"'


def dot_source(diagram: Diagram) -> str:
    """The DOT text."""
    s = diagram.stats
    lines = [f"// {s.name or 'net'} ({s.phase}), drawn by landmarknet",
             f"digraph {dot_quote(s.name or 'net')} {{",
             '  graph [rankdir=TB, nodesep=0.35, ranksep=0.45, fontname="Helvetica"];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, '
             'penwidth=1.2];',
             '  edge [fontname="Helvetica", fontsize=9, color="#6b7480", '
             'fontcolor="#3c4650", arrowsize=0.6];']
    for n in diagram.nodes:
        fill, stroke = family_color(n.family)
        if n.kind == "output":
            lines.append(f"  {n.id} [label={dot_quote(n.title)}, shape=box, "
                         'style="rounded,dashed", color="#555555"];')
            continue
        label = n.title + "\n" + n.detail
        for sub in n.subrows:
            label += "\n+ " + subrow_text(sub)
        lines.append(f"  {n.id} [label={dot_quote(label)}, fillcolor={dot_quote(fill)}, "
                     f"color={dot_quote(stroke)}, tooltip={dot_quote(n.title)}];")
    labelled: set[tuple[str, str]] = set()
    for e in diagram.edges:
        first = (e.src, e.ssa) not in labelled
        labelled.add((e.src, e.ssa))
        attrs = f"label={dot_quote(' ' + e.label)}" if first else ""
        lines.append(f"  {e.src} -> {e.dst}" + (f" [{attrs}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"
