"""The drawing's content, independent of any layout or output format.

A *diagram* has one box per drawn node: every net input, every layer that is not in place (with
the in-place layers that follow it folded in as sub-rows: Caffe's conv -> BatchNorm -> Scale ->
ReLU chain is one box), and one small pill per net output. Edges carry a blob from its producer to
a consumer and are labelled with the blob's shape. Box sizes come from the text they hold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from landmarknet.analyze import NetStats, human

FONT_FAMILY = "Helvetica, Arial, 'Liberation Sans', sans-serif"
TITLE_PX = 12.0
DETAIL_PX = 10.0
SUBROW_PX = 10.0
LABEL_PX = 9.5

PAD_X = 10.0
PAD_TOP = 7.0
TITLE_H = 15.0
DETAIL_H = 13.0
SUBROW_H = 16.0
PAD_BOTTOM = 7.0
MIN_W = 116.0
MAX_W = 250.0
OUTPUT_H = 22.0

#: Family -> (fill, stroke, header text colour); the legend lists them in this order.
FAMILY_COLORS: dict[str, tuple[str, str]] = {
    "data": ("#cfe3f7", "#4a7fb5"),
    "conv": ("#f9c9bd", "#c4553b"),
    "pool": ("#c6e8c9", "#3f8f4a"),
    "norm": ("#fbe2a8", "#b8860b"),
    "activation": ("#e2d6f3", "#7a5aa6"),
    "shape": ("#d9e1e8", "#5f7385"),
    "loss": ("#f8c6da", "#b0426f"),
    "detection": ("#bfe6e3", "#2f8a84"),
    "roi": ("#fde0c5", "#c06a1b"),
    "recurrent": ("#d4ecf9", "#2b6f99"),
    "optical_flow": ("#e6f2c4", "#6b8e23"),
    "landmark": ("#fff0a8", "#a08a12"),
    "custom": ("#e4e4e4", "#777777"),
    "output": ("#ffffff", "#555555"),
}

FAMILY_LABELS = {
    "data": "input / data", "conv": "convolution / fc", "pool": "pooling", "norm": "normalisation",
    "activation": "activation", "shape": "shape / merge", "loss": "loss", "detection": "detection",
    "roi": "region pooling", "recurrent": "recurrent", "optical_flow": "optical flow",
    "landmark": "landmark", "custom": "other", "output": "output",
}

# Approximate Helvetica advance widths (em) for the box-size estimate.
_NARROW = set("ijl.,:;'|!`I ")
_SEMI = set("frt()[]{}-/\\\"*")
_WIDE = set("mwMW@%")
_CAPS = set("ABCDEFGHJKLNOPQRSTUVXYZ&#")


def text_width(text: str, px: float, bold: bool = False) -> float:
    """Estimated rendered width in px of ``text`` at ``px`` font size."""
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.28
        elif ch in _SEMI:
            em += 0.34
        elif ch in _WIDE:
            em += 0.86
        elif ch in _CAPS:
            em += 0.68
        elif ch.isdigit():
            em += 0.556
        elif ord(ch) > 0x2000:
            em += 0.6
        else:
            em += 0.54
    return em * px * (1.07 if bold else 1.0)


def fit_text(text: str, max_px: float, px: float, bold: bool = False) -> str:
    """``text`` shortened with an ellipsis in the middle so that it fits ``max_px``."""
    if text_width(text, px, bold) <= max_px:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        head = (keep + 1) // 2
        tail = keep - head
        cand = text[:head] + "…" + (text[-tail:] if tail else "")
        if text_width(cand, px, bold) <= max_px:
            return cand
    return text[:3] + "…"


def shape_label(shape: list[int] | tuple[int, ...], batch: int | None) -> str:
    """'64×56×56' (the batch dimension dropped when it is the net's batch)."""
    dims = [int(d) for d in shape]
    if batch is not None and len(dims) >= 2 and dims[0] == batch:
        dims = dims[1:]
    return "×".join(map(str, dims)) if dims else "scalar"


@dataclass
class SubRow:
    """A folded in-place layer shown inside its producer's box."""

    row: int  # index into NetStats.rows
    name: str
    type: str
    family: str
    detail: str


@dataclass
class DNode:
    """One drawn box."""

    id: str
    kind: str  # "layer", "input" or "output"
    row: int | None  # NetStats.rows index of the head layer (outputs: of the producer)
    title: str  # full text (the renderer shortens it to the width)
    detail: str
    family: str
    subrows: list[SubRow] = field(default_factory=list)
    out_blobs: list[str] = field(default_factory=list)  # SSA names leaving this box (ports)
    width: float = 0.0
    height: float = 0.0

    @property
    def rows(self) -> list[int]:
        """Rows of every layer in the box (head first); none for output pills."""
        if self.kind == "output" or self.row is None:
            return []
        return [self.row] + [s.row for s in self.subrows]


@dataclass
class DEdge:
    """A blob flowing from one box to another."""

    id: str
    src: str
    dst: str
    ssa: str
    blob: str  # Caffe name
    shape: list[int]
    label: str
    port: int  # index of the blob among src's out_blobs
    n_ports: int


@dataclass
class Diagram:
    """Boxes and edges of a net, ready for a layout engine."""

    stats: NetStats
    nodes: list[DNode]
    edges: list[DEdge]
    families: list[str]  # families present, legend order

    def node(self, node_id: str) -> DNode:
        """A node by id."""
        return self._by_id[node_id]

    def __post_init__(self) -> None:
        self._by_id = {n.id: n for n in self.nodes}


def build_diagram(stats: NetStats) -> Diagram:
    """Boxes and edges from an analysis."""
    nodes: list[DNode] = []
    node_of_group: dict[str, DNode] = {}
    producer: dict[str, str] = {}  # SSA -> node id
    for r in stats.rows:
        if r.is_input:
            n = DNode(f"n{len(nodes)}", "input", r.index, r.tops[0],
                      f"{r.type} · {shape_label(r.out_shapes[0], None)}", "data")
            nodes.append(n)
            node_of_group[r.module] = n
            producer[r.top_ssa[0]] = n.id
            n.out_blobs.append(r.top_ssa[0])
            continue
        if r.group != r.module and r.group in node_of_group:
            n = node_of_group[r.group]
            n.subrows.append(SubRow(r.index, r.name, r.type, r.family, r.detail))
        else:
            n = DNode(f"n{len(nodes)}", "layer", r.index, r.name,
                      _join(r.type, r.detail), r.family)
            nodes.append(n)
            node_of_group[r.module] = n
        for t in r.top_ssa:
            producer[t] = n.id
    # Edges: every bottom of every layer, from the box that produced that version.
    raw: list[tuple[str, str, str]] = []  # (src, dst, ssa)
    seen: set[tuple[str, str, str]] = set()
    box_of_row = {row: n for n in nodes for row in n.rows}
    for r in stats.rows:
        if r.is_input:
            continue
        dst = box_of_row[r.index]
        for b in r.bottom_ssa:
            src = producer.get(b)
            if src is None or src == dst.id:
                continue
            key = (src, dst.id, b)
            if key not in seen:
                seen.add(key)
                raw.append(key)
    # Output pills.
    blob_of_ssa = {}
    shape_of_ssa = {}
    row_of_ssa = {}
    for r in stats.rows:
        for ssa, blob, shape in zip(r.top_ssa, r.tops, r.out_shapes):
            blob_of_ssa[ssa] = blob
            shape_of_ssa[ssa] = shape
            row_of_ssa[ssa] = r.index
    for blob, ssa in stats.output_ssa.items():
        src = producer.get(ssa)
        if src is None:
            continue
        o = DNode(f"n{len(nodes)}", "output", row_of_ssa.get(ssa), blob, "output", "output")
        nodes.append(o)
        raw.append((src, o.id, ssa))
    by_id = {n.id: n for n in nodes}
    for src, _dst, ssa in raw:
        if ssa not in by_id[src].out_blobs:
            by_id[src].out_blobs.append(ssa)
    edges = []
    for i, (src, dst, ssa) in enumerate(raw):
        ports = by_id[src].out_blobs
        shape = shape_of_ssa.get(ssa, [])
        edges.append(DEdge(f"e{i}", src, dst, ssa, blob_of_ssa.get(ssa, ssa), list(shape),
                           shape_label(shape, stats.batch), ports.index(ssa), len(ports)))
    for n in nodes:
        size_node(n)
    present = {n.family for n in nodes} | {s.family for n in nodes for s in n.subrows}
    families = [f for f in FAMILY_COLORS if f in present]
    families += sorted(present - set(families))
    return Diagram(stats, nodes, edges, families)


def _join(a: str, b: str) -> str:
    return f"{a} · {b}" if b else a


def size_node(n: DNode) -> None:
    """Width and height of a box from its text."""
    if n.kind == "output":
        n.width = max(64.0, min(MAX_W, text_width(n.title, DETAIL_PX, True) + 26))
        n.height = OUTPUT_H
        return
    w = max(text_width(n.title, TITLE_PX, True), text_width(n.detail, DETAIL_PX))
    for s in n.subrows:
        w = max(w, text_width(subrow_text(s), SUBROW_PX) + 14)
    n.width = max(MIN_W, min(MAX_W, w + 2 * PAD_X + 2))
    n.height = PAD_TOP + TITLE_H + DETAIL_H + PAD_BOTTOM
    if n.subrows:
        n.height += 4 + SUBROW_H * len(n.subrows)


def subrow_text(s: SubRow) -> str:
    """What a folded layer's sub-row says: its type and name."""
    return f"{s.type}  {s.name}"


def family_color(family: str) -> tuple[str, str]:
    """(fill, stroke) of a family."""
    return FAMILY_COLORS.get(family, FAMILY_COLORS["custom"])


def totals_line(stats: NetStats) -> str:
    """'params 6.8M · MACs 1.6G · FLOPs 3.2G · memory 52 MiB (batch 1)'."""
    from landmarknet.analyze import human_bytes
    t = stats.totals
    text = (f"{t.layers} layers · params {human(t.params)} · MACs {human(t.macs)} · "
            f"FLOPs {human(t.flops)} · ops {human(t.ops)} · activations {human_bytes(t.memory)}")
    if stats.batch:
        text += f" (batch {stats.batch})"
    return text
