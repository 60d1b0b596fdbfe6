"""Positions for boxes and routes for edges: Graphviz ``dot`` when installed, else our own.

Both engines take the same input (box sizes, edges with the index of the port they leave from)
and return the same result: box centres and, per edge, a cubic Bézier path (``p0, c1, c2, p1,
c1, c2, p2 ...``) in px with y growing downwards, so one SVG renderer serves both.

The built-in engine is a layered (Sugiyama) layout: longest-path layering, dummy boxes on edges
that span several layers, barycentric crossing reduction in alternating sweeps (the best order
seen is kept), then x coordinates from weighted averages of the neighbours, made non-overlapping
by an isotonic regression per layer (pool-adjacent-violators), so chains come out straight.
"""
from __future__ import annotations

import heapq
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from landmarknet.errors import LandmarknetError

Point = tuple[float, float]

RANK_GAP = 44.0  # vertical space between layers (room for the shape labels)
NODE_GAP = 26.0  # horizontal space between boxes
DUMMY_W = 14.0  # width reserved by an edge passing through a layer
MARGIN = 20.0
SNAP = 24.0  # a long edge keeps its x through a layer if its dummy moved less than this


@dataclass
class LNode:
    """A box to place: its id and size in px."""

    id: str
    width: float
    height: float


@dataclass
class LEdge:
    """An edge to route: from ``src`` (leaving port ``port`` of ``n_ports``) to ``dst``."""

    id: str
    src: str
    dst: str
    port: int = 0
    n_ports: int = 1


@dataclass
class LayoutResult:
    """Box centres and edge paths in px (y down), the canvas size and what made them."""

    centers: dict[str, Point]
    paths: dict[str, list[Point]]  # cubic Bézier control points: 1 + 3k points
    width: float
    height: float
    engine: str  # "dot" or "builtin"
    seconds: float = 0.0
    sizes: dict[str, tuple[float, float]] = field(default_factory=dict)


#: Boxes plus edge bends (an edge spanning k layers bends k - 1 times) above which a net is not
#: drawn: the built-in layout takes about 6 s at 40,000 and grows faster than linearly (10,000
#: skip edges over a long chain: 129 s and 7 GB), and Graphviz runs out of memory. The largest
#: nets of the zoo need under 10,000. LANDMARKNET_MAX_LAYOUT overrides it.
MAX_LAYOUT_SIZE = 50_000


class LayoutError(LandmarknetError, RuntimeError):
    """The net cannot be laid out: too large, or the dot engine failed (with its stderr)."""


def max_layout_size() -> int:
    """MAX_LAYOUT_SIZE, or LANDMARKNET_MAX_LAYOUT when set."""
    value = os.environ.get("LANDMARKNET_MAX_LAYOUT")
    try:
        return int(value) if value else MAX_LAYOUT_SIZE
    except ValueError:
        raise LayoutError(f"LANDMARKNET_MAX_LAYOUT must be an integer, got {value!r}") from None


def _ranks(nodes: list[LNode], edges: list[LEdge]) -> dict[str, int]:
    """Layer of every box: longest path from the sources, sources pulled down next to their
    first consumer."""
    succ_ids: dict[str, list[str]] = {n.id: [] for n in nodes}
    pred_ids: dict[str, list[str]] = {n.id: [] for n in nodes}
    for e in edges:
        succ_ids[e.src].append(e.dst)
        pred_ids[e.dst].append(e.src)
    topo = _toposort([n.id for n in nodes], succ_ids, pred_ids)
    rank: dict[str, int] = {}
    for v in topo:
        rank[v] = max((rank[u] + 1 for u in pred_ids[v]), default=0)
    for v in reversed(topo):
        if not pred_ids[v] and succ_ids[v]:
            rank[v] = min(rank[s] for s in succ_ids[v]) - 1
    return rank


def layout_size(nodes: list[LNode], edges: list[LEdge]) -> int:
    """Boxes plus edge bends: what a layered layout has to place (its cost grows with it)."""
    rank = _ranks(nodes, edges)
    return len(nodes) + sum(max(0, rank[e.dst] - rank[e.src] - 1) for e in edges)


def check_layout_size(nodes: list[LNode], edges: list[LEdge]) -> None:
    """Refuse, before any work, a drawing too large to lay out in reasonable time and memory."""
    limit = max_layout_size()
    size = layout_size(nodes, edges)
    if size > limit:
        raise LayoutError(
            f"the drawing is too large to lay out: {len(nodes):,} boxes and {size - len(nodes):,} "
            f"edge bends (long skip connections), limit {limit:,} (LANDMARKNET_MAX_LAYOUT). Use "
            "--format json, csv or md for the per-layer table, or --format dot to lay it out "
            "with other tools")


def dot_available() -> bool:
    """Whether Graphviz's ``dot`` is on PATH."""
    return shutil.which("dot") is not None


def layout(nodes: list[LNode], edges: list[LEdge], engine: str = "auto") -> LayoutResult:
    """Lay out top to bottom with ``engine`` 'dot', 'builtin' or 'auto' (dot when on PATH)."""
    if engine not in ("auto", "dot", "builtin"):
        raise ValueError(f"engine must be auto, dot or builtin, got {engine!r}")
    check_layout_size(nodes, edges)
    if engine == "dot" or (engine == "auto" and dot_available()):
        if not dot_available():
            raise LayoutError("Graphviz 'dot' is not on PATH (install graphviz, or use the "
                              "built-in layout)")
        return dot_layout(nodes, edges)
    return builtin_layout(nodes, edges)


def port_dx(width: float, port: int, n_ports: int) -> float:
    """Horizontal offset of an outgoing port from the box centre."""
    if n_ports <= 1:
        return 0.0
    span = width * 0.7
    return -span / 2 + span * port / (n_ports - 1)


# ---------------------------------------------------------------------------------------------
# Graphviz


def _dot_source(nodes: list[LNode], edges: list[LEdge]) -> str:
    lines = ["digraph G {",
             f'  graph [rankdir=TB, nodesep={NODE_GAP / 72:.3f}, ranksep={RANK_GAP / 72:.3f}, '
             'splines=spline, outputorder=edgesfirst];',
             '  node [shape=box, fixedsize=true, label=""];',
             "  edge [arrowhead=none];"]
    for n in nodes:
        lines.append(f"  {n.id} [width={n.width / 72:.4f}, height={n.height / 72:.4f}];")
    for e in edges:
        tail = ", tailport=s" if e.n_ports <= 1 else ""
        lines.append(f"  {e.src} -> {e.dst} [id={e.id}{tail}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_layout(nodes: list[LNode], edges: list[LEdge]) -> LayoutResult:
    """Positions and splines from ``dot -Tplain``."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(["dot", "-Tplain"], input=_dot_source(nodes, edges), text=True,
                              capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise LayoutError("Graphviz dot gave no layout within 300 s; use --layout builtin or "
                          "--format dot") from None
    except OSError as exc:
        raise LayoutError(f"cannot run Graphviz dot: {exc}") from None
    if proc.returncode < 0:
        raise LayoutError(f"Graphviz dot was killed by signal {-proc.returncode} (out of "
                          "memory?); use --layout builtin or --format dot")
    if proc.returncode != 0:
        err = proc.stderr.strip()
        raise LayoutError(f"Graphviz dot failed: {err[-500:] or f'exit {proc.returncode}'}")
    centers: dict[str, Point] = {}
    paths: dict[str, list[Point]] = {}
    height = width = 0.0
    edge_queue: dict[tuple[str, str], list[str]] = {}
    for e in edges:
        edge_queue.setdefault((e.src, e.dst), []).append(e.id)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "graph":
            width, height = float(parts[2]) * 72, float(parts[3]) * 72
        elif parts[0] == "node":
            x, y = float(parts[2]) * 72, float(parts[3]) * 72
            centers[parts[1]] = (x, height - y)
        elif parts[0] == "edge":
            n = int(parts[3])
            pts = [(float(parts[4 + 2 * i]) * 72, height - float(parts[5 + 2 * i]) * 72)
                   for i in range(n)]
            ids = edge_queue.get((parts[1], parts[2]))
            if ids:
                paths[ids.pop(0)] = pts
    # Keep a margin around the drawing.
    shifted = {k: (x + MARGIN, y + MARGIN) for k, (x, y) in centers.items()}
    shifted_paths = {k: [(x + MARGIN, y + MARGIN) for x, y in v] for k, v in paths.items()}
    return LayoutResult(shifted, shifted_paths, width + 2 * MARGIN, height + 2 * MARGIN, "dot",
                        time.perf_counter() - t0, {n.id: (n.width, n.height) for n in nodes})


# ---------------------------------------------------------------------------------------------
# Built-in layered layout


@dataclass
class _V:
    id: str
    width: float
    height: float
    dummy: bool
    rank: int = 0
    order: float = 0.0
    order_key: float = 0.0
    x: float = 0.0
    preds: list[tuple["_V", float]] = field(default_factory=list)  # (vertex, x offset there)
    succs: list[tuple["_V", float]] = field(default_factory=list)


def builtin_layout(nodes: list[LNode], edges: list[LEdge], *, sweeps: int = 12,
                   passes: int = 10) -> LayoutResult:
    """Our own layered layout (see the module docstring)."""
    t0 = time.perf_counter()
    verts = {n.id: _V(n.id, n.width, n.height, False) for n in nodes}
    # 1. Ranks: longest path from the sources (nodes arrive in a topological order, but sort
    #    anyway so that any DAG works), then sources pulled down next to their first consumer.
    for v, r in _ranks(nodes, edges).items():
        verts[v].rank = r
    # 2. Dummy vertices on long edges.
    chains: dict[str, list[_V]] = {}
    for e in edges:
        a, b = verts[e.src], verts[e.dst]
        dx = port_dx(a.width, e.port, e.n_ports)
        chain = [a]
        prev, off = a, dx
        for r in range(a.rank + 1, b.rank):
            d = _V(f"{e.id}#{r}", DUMMY_W, 0.0, True, rank=r)
            verts[d.id] = d
            prev.succs.append((d, off))
            d.preds.append((prev, off))
            chain.append(d)
            prev, off = d, 0.0
        prev.succs.append((b, off))
        b.preds.append((prev, off))
        chain.append(b)
        chains[e.id] = chain
    n_ranks = max((v.rank for v in verts.values()), default=0) + 1
    ranks: list[list[_V]] = [[] for _ in range(n_ranks)]
    # Initial order: depth-first from the sources in input order (keeps branches together).
    seen: set[str] = set()

    def visit(v: _V) -> None:
        stack = [v]
        while stack:
            cur = stack.pop()
            if cur.id in seen:
                continue
            seen.add(cur.id)
            ranks[cur.rank].append(cur)
            for s, _ in reversed(cur.succs):
                if s.id not in seen:
                    stack.append(s)

    for n in nodes:
        if n.id not in seen:
            visit(verts[n.id])
    for r in ranks:
        for i, v in enumerate(r):
            v.order = i
    # 3. Crossing reduction.
    best = [list(r) for r in ranks]
    best_cross = _crossings(ranks)
    for it in range(sweeps):
        if best_cross == 0:
            break
        down = it % 2 == 0
        seq = range(1, n_ranks) if down else range(n_ranks - 2, -1, -1)
        for r in seq:
            layer = ranks[r]
            for v in layer:
                nbrs = v.preds if down else v.succs
                if nbrs:
                    v.order_key = sum(u.order for u, _ in nbrs) / len(nbrs)
                else:
                    v.order_key = v.order
            layer.sort(key=lambda v: v.order_key)
            for i, v in enumerate(layer):
                v.order = i
        c = _crossings(ranks)
        if c < best_cross:
            best_cross, best = c, [list(r) for r in ranks]
    ranks = best
    for r in ranks:
        for i, v in enumerate(r):
            v.order = i
    # 4. x coordinates.
    for r in ranks:
        x = 0.0
        for i, v in enumerate(r):
            if i:
                x += _sep(r[i - 1], v)
            v.x = x
        shift = x / 2
        for v in r:
            v.x -= shift
    for it in range(passes):
        mode = ("down", "up", "both")[it % 3] if it < passes - 1 else "both"
        seq = list(range(n_ranks)) if mode != "up" else list(range(n_ranks - 1, -1, -1))
        for r in seq:
            _place_rank(ranks[r], mode)
    _straighten(chains, ranks)
    # 5. y coordinates: one band per rank, as tall as its tallest box.
    band_h = [max((v.height for v in r), default=0.0) for r in ranks]
    tops = []
    y = MARGIN
    for h in band_h:
        tops.append(y)
        y += h + RANK_GAP
    height = y - RANK_GAP + MARGIN
    min_x = min(v.x - v.width / 2 for v in verts.values())
    max_x = max(v.x + v.width / 2 for v in verts.values())
    dx0 = MARGIN - min_x
    centers: dict[str, Point] = {}
    for n in nodes:
        v = verts[n.id]
        centers[n.id] = (v.x + dx0, tops[v.rank] + band_h[v.rank] / 2)
    # 6. Edge paths: leave at the port, run straight through the bands of dummy vertices,
    #    arrive spread along the top of the target in the order of their last x.
    raw: dict[str, list[Point]] = {}
    for e in edges:
        chain = chains[e.id]
        a = chain[0]
        ax, ay = centers[a.id]
        pts = [(ax + port_dx(a.width, e.port, e.n_ports), ay + a.height / 2)]
        cur = None
        for d in chain[1:-1]:
            # Keep a long edge on one x through small wobbles when nothing is in the way.
            if cur is None or abs(d.x - cur) > SNAP or not _clear(cur, d, ranks[d.rank]):
                cur = d.x
            top = tops[d.rank]
            pts.append((cur + dx0, top))
            pts.append((cur + dx0, top + band_h[d.rank]))
        raw[e.id] = pts
    incoming: dict[str, list[str]] = {}
    for e in edges:
        incoming.setdefault(e.dst, []).append(e.id)
    paths: dict[str, list[Point]] = {}
    for dst, ids in incoming.items():
        bx, by = centers[dst]
        b = verts[dst]
        ids.sort(key=lambda i: raw[i][-1][0])
        span = min(b.width * 0.6, 18.0 * (len(ids) - 1))
        for k, eid in enumerate(ids):
            hx = bx if len(ids) == 1 else bx - span / 2 + span * k / (len(ids) - 1)
            pts = raw[eid] + [(hx, by - b.height / 2)]
            paths[eid] = _smooth(pts)
    width = max_x - min_x + 2 * MARGIN
    return LayoutResult(centers, paths, width, height, "builtin", time.perf_counter() - t0,
                        {n.id: (n.width, n.height) for n in nodes})


def _toposort(ids: list[str], succ: dict[str, list[str]], pred: dict[str, list[str]]
              ) -> list[str]:
    indeg = {v: len(pred[v]) for v in ids}
    pos = {v: i for i, v in enumerate(ids)}
    ready = [(pos[v], v) for v in ids if indeg[v] == 0]  # a heap: the earliest in input order
    heapq.heapify(ready)
    out = []
    while ready:
        _, v = heapq.heappop(ready)
        out.append(v)
        for s in succ[v]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, (pos[s], s))
    if len(out) != len(ids):
        raise ValueError("the graph has a cycle")
    return out


def _sep(a: _V, b: _V) -> float:
    gap = NODE_GAP if not (a.dummy and b.dummy) else 8.0
    if a.dummy != b.dummy:
        gap = NODE_GAP / 2
    return (a.width + b.width) / 2 + gap


def _crossings(ranks: list[list[_V]]) -> int:
    """Edge crossings between adjacent ranks (counting inversions, O(E^2) per pair)."""
    total = 0
    for r in ranks[:-1]:
        pairs = []
        for v in r:
            for s, off in v.succs:
                pairs.append((v.order + off * 1e-3, s.order))
        pairs.sort()
        for i in range(len(pairs)):
            bi = pairs[i][1]
            for j in range(i + 1, len(pairs)):
                if pairs[j][1] < bi and pairs[j][0] != pairs[i][0]:
                    total += 1
    return total


def _edge_weight(a: _V, b: _V) -> float:
    """dot's idea: straight long edges matter most (dummy-dummy 8, dummy-real 2, real-real 1)."""
    return 8.0 if a.dummy and b.dummy else 2.0 if (a.dummy or b.dummy) else 1.0


def _place_rank(layer: list[_V], mode: str) -> None:
    """Move a rank's vertices towards their neighbours' mean x, keeping order and gaps."""
    desired, weights = [], []
    for v in layer:
        nbrs = []
        if mode in ("down", "both"):
            nbrs += [(u, u.x + off, _edge_weight(u, v)) for u, off in v.preds]
        if mode in ("up", "both"):
            nbrs += [(u, u.x - off, _edge_weight(u, v)) for u, off in v.succs]
        if nbrs:
            wsum = sum(w for _, _, w in nbrs)
            desired.append(sum(x * w for _, x, w in nbrs) / wsum)
            weights.append(wsum)
        else:
            desired.append(v.x)
            weights.append(0.05)
    xs = _isotonic_with_gaps(desired, weights, [_sep(a, b) for a, b in zip(layer, layer[1:])])
    for v, x in zip(layer, xs):
        v.x = x


def _straighten(chains: dict[str, list[_V]], ranks: list[list[_V]]) -> None:
    """Line up the dummy vertices of each long edge on one x where the neighbours allow it
    (the median of the chain first), so that long edges run straight down."""
    for _ in range(2):
        for chain in chains.values():
            dummies = [v for v in chain if v.dummy]
            if len(dummies) < 2:
                continue
            xs = sorted(v.x for v in dummies)
            for target in (xs[len(xs) // 2], dummies[0].x, dummies[-1].x):
                if all(_fits(v, target, ranks[v.rank]) for v in dummies):
                    for v in dummies:
                        v.x = target
                    break


def _clear(x: float, d: _V, layer: list[_V]) -> bool:
    """Whether a line at x through d's layer stays clear of the boxes and other edges there."""
    for v in layer:
        if v is d:
            continue
        room = v.width / 2 + 6 if not v.dummy else 5
        if abs(v.x - x) < room:
            return False
    return True


def _fits(v: _V, x: float, layer: list[_V]) -> bool:
    """Whether v can sit at x without coming closer than the minimum gap to its neighbours."""
    i = layer.index(v)
    if i > 0 and x - layer[i - 1].x < _sep(layer[i - 1], v) - 1e-6:
        return False
    if i + 1 < len(layer) and layer[i + 1].x - x < _sep(v, layer[i + 1]) - 1e-6:
        return False
    return True


def _isotonic_with_gaps(desired: list[float], weights: list[float], gaps: list[float]
                        ) -> list[float]:
    """Weighted least-squares x_i near desired_i with x_{i+1} - x_i >= gaps_i (PAVA)."""
    offs = [0.0]
    for g in gaps:
        offs.append(offs[-1] + g)
    ys = [d - o for d, o in zip(desired, offs)]
    # Pool adjacent violators on ys (non-decreasing fit).
    blocks: list[list[float]] = []  # [value, weight, count]
    for y, w in zip(ys, weights):
        blocks.append([y, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            wt = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / wt, wt, c1 + c2])
    fit = []
    for v, _, c in blocks:
        fit += [v] * c
    return [f + o for f, o in zip(fit, offs)]


def _smooth(pts: list[Point]) -> list[Point]:
    """A polyline going down, as cubic Béziers with vertical tangents at every point."""
    out = [pts[0]]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if abs(x1 - x0) < 0.5:
            k = (y1 - y0) / 3
        else:
            k = max((y1 - y0) / 2, 4.0)
        out += [(x0, y0 + k), (x1, y1 - k), (x1, y1)]
    return out

