"""Per-layer cost of a built net: shapes, parameters, MACs, other ops, activation memory.

Everything is read from the built module (``net.layers``: the shapes the builder inferred on the
meta device and the blobs each layer holds), so it is right for every layer type we build, in the
phase the net was built for, with Caffe's own pooling rounding.

Counting rules (for the whole batch the net was built with; ``per_sample`` divides by it): each
layer type's rule is part of its registration (``cost=`` in ``landmarknet/layers/<family>.py``,
shared rules in ``landmarknet/layers/costs.py``) and docs/layers.md lists them all. In short:
Convolution counts MACs = output elements x (C_in/group x kh x kw), Deconvolution MACs = INPUT
elements x (C_out/group x kh x kw), InnerProduct MACs = output elements x K, BatchNorm and
Scale one multiply-add per element, Pooling ops = output elements x window, Eltwise ops = output
elements x (bottoms - 1), activations and other element-wise layers one op per element, losses
one op per element of their first bottom, Dropout one op per element in TRAIN only, and data
movement (Concat, Slice, Split, Reshape, Crop, Permute ...) 0. A type without a rule (a custom
registration that gives none) is not counted: ``counted`` is False and the totals say so.

Biases are not counted (they are one add per output, negligible next to the MACs).
FLOPs = 2 x MACs. ``ops`` are single operations that are not multiply-accumulates; they are
reported on their own and are not part of FLOPs.

Memory is the bytes of the blobs a layer writes (4 bytes per float32 element). In-place layers
(``top == bottom``) write into their bottom and count 0, and so do the layers that Caffe and
torch both implement as views of their bottom (Split, Flatten, Reshape). Inputs count their
own blobs.

Parameters are learnable blobs; a blob shared through ``param { name }`` is counted once, in the
layer that owns it. Statistics (BatchNorm's mean/variance/scale factor) are ``stats``, not
parameters.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

from landmarknet.build import CaffeNet, LayerInfo
from landmarknet.graph import DATA_LAYER_TYPES
from landmarknet.layers.registry import Registration, registration_of

Shape = tuple[int, ...]

BYTES_PER_ELEMENT = 4  # float32

#: Separators tried in order for a layer name's prefix.
PREFIX_SEPARATORS = ("/", "_", "-", ".")


@dataclass
class LayerStats:
    """One row of the analysis: a layer (or a net input) with its shapes and costs."""

    index: int  # row number (inputs first, then layers in net order)
    module: str  # submodule name (unique); "input:<blob>" for inputs
    name: str  # Caffe layer name
    type: str
    family: str
    bottoms: list[str]  # Caffe blob names
    tops: list[str]
    bottom_ssa: list[str]  # SSA blob names (graph edges)
    top_ssa: list[str]
    in_shapes: list[list[int]]
    out_shapes: list[list[int]]
    params: int  # learnable elements owned by this layer (shared ones counted at the owner)
    stats: int  # non-learnable blob elements (BatchNorm statistics)
    blobs: list[dict]  # [{"attr", "shape", "learnable", "shared_from"}]
    macs: int
    ops: int
    memory: int  # bytes written
    counted: bool  # False: a type whose cost we do not know
    in_place: bool
    group: str  # the module of the drawn node this layer folds into (itself unless in place)
    prefix: str  # name prefix of the group head
    source: str | None
    prototxt: str  # the layer's text format
    detail: str = ""  # short parameter summary ('7×7 /2 p3 · 64', 'MAX 3×3 /2')
    loss_weights: list[float] = field(default_factory=list)
    is_input: bool = False

    @property
    def flops(self) -> int:
        """2 x MACs."""
        return 2 * self.macs


@dataclass
class Totals:
    """Sums over rows."""

    layers: int = 0
    params: int = 0
    stats: int = 0
    macs: int = 0
    ops: int = 0
    memory: int = 0

    @property
    def flops(self) -> int:
        """2 x MACs."""
        return 2 * self.macs

    def add(self, row: LayerStats) -> None:
        """Add one row."""
        self.layers += 0 if row.is_input else 1
        self.params += row.params
        self.stats += row.stats
        self.macs += row.macs
        self.ops += row.ops
        self.memory += row.memory

    def as_dict(self) -> dict:
        """Plain dict with FLOPs."""
        d = asdict(self)
        d["flops"] = self.flops
        return d


@dataclass
class NetStats:
    """The analysis of a whole net."""

    name: str
    phase: str
    path: str | None
    batch: int | None  # the common first dimension of the inputs, when they share one
    rows: list[LayerStats]
    totals: Totals
    prefixes: dict[str, Totals]  # name prefix -> subtotal (prefixes of two or more layers)
    outputs: dict[str, list[int]]  # Caffe output blob -> shape
    output_ssa: dict[str, str]  # Caffe output blob -> its SSA name
    uncounted_types: list[str]

    def row(self, name: str) -> LayerStats:
        """The row of a layer by Caffe name (first match)."""
        for r in self.rows:
            if r.name == name and not r.is_input:
                return r
        raise KeyError(name)

    def per_sample(self, value: int) -> float:
        """A batch total divided by the batch size (the value itself when unknown)."""
        return value / self.batch if self.batch else float(value)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict: rows, totals, per-prefix subtotals, counting rules."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["flops"] = r.flops
            rows.append(d)
        return {
            "name": self.name, "phase": self.phase, "path": self.path, "batch": self.batch,
            "outputs": self.outputs,
            "totals": self.totals.as_dict(),
            "prefixes": {k: v.as_dict() for k, v in self.prefixes.items()},
            "uncounted_types": self.uncounted_types,
            "rules": counting_rules(),
            "layers": rows,
        }

    def to_json(self, indent: int | None = 1) -> str:
        """The analysis as JSON text."""
        from landmarknet.jsontext import json_text
        return json_text(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """One line per row plus a total line (exact integers; shapes as 1x3x224x224)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in self.rows:
            w.writerow([r.index, _csv_safe(r.name), _csv_safe(r.type), r.family,
                        _csv_safe(" ".join(r.bottoms)), _csv_safe(" ".join(r.tops)),
                        " ".join(shape_text(s) for s in r.in_shapes),
                        " ".join(shape_text(s) for s in r.out_shapes),
                        r.params, r.stats, r.macs, r.flops, r.ops, r.memory,
                        int(r.in_place), _csv_safe(r.prefix), int(r.counted)])
        t = self.totals
        w.writerow(["", "TOTAL", "", "", "", "", "", "", t.params, t.stats, t.macs, t.flops,
                    t.ops, t.memory, "", "", ""])
        return buf.getvalue()

    def to_markdown(self) -> str:
        """A Markdown report: totals, the per-layer table, subtotals by prefix."""
        t = self.totals
        lines = [f"# {md_escape(self.name or 'net')} ({self.phase})", ""]
        if self.batch:
            lines.append(f"Batch {self.batch}; per sample: {human(self.per_sample(t.macs))} "
                         f"MACs, {human(self.per_sample(t.flops))} FLOPs.")
            lines.append("")
        lines += ["| total | params | MACs | FLOPs | ops | memory |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| {t.layers} layers | {t.params:,} | {t.macs:,} | {t.flops:,} | {t.ops:,} "
                  f"| {human_bytes(t.memory)} |", ""]
        if self.uncounted_types:
            types = ", ".join(map(md_escape, self.uncounted_types))
            lines += [f"Not counted (unknown cost): {types}.", ""]
        lines += ["| # | layer | type | input | output | params | MACs | ops | memory |",
                  "|---:|---|---|---|---|---:|---:|---:|---:|"]
        for r in self.rows:
            name = md_escape(r.name) + (" *(in place)*" if r.in_place else "")
            lines.append(
                f"| {r.index} | {name} | {md_escape(r.type)} | "
                f"{md_escape(', '.join(shape_text(s) for s in r.in_shapes))} | "
                f"{md_escape(', '.join(shape_text(s) for s in r.out_shapes))} | {r.params:,} | "
                f"{r.macs:,} | {r.ops:,} | {human_bytes(r.memory)} |")
        if self.prefixes:
            lines += ["", "## Subtotals by name prefix", "",
                      "| prefix | layers | params | MACs | ops | memory |",
                      "|---|---:|---:|---:|---:|---:|"]
            for k, v in self.prefixes.items():
                lines.append(f"| {md_escape(k)} | {v.layers} | {v.params:,} | {v.macs:,} | "
                             f"{v.ops:,} | {human_bytes(v.memory)} |")
        lines += ["", "MACs: multiply-accumulates; FLOPs = 2 x MACs; ops: other single "
                  "operations (pooling windows, activations, eltwise); memory: bytes of the blobs "
                  "each layer writes (in-place layers count 0).", ""]
        return "\n".join(lines)


CSV_COLUMNS = ["index", "layer", "type", "family", "bottoms", "tops", "input_shapes",
               "output_shapes", "params", "stats", "macs", "flops", "ops", "memory_bytes",
               "in_place", "prefix", "counted"]

def counting_rules() -> dict[str, str]:
    """The cost rule of every registered type (types sharing a rule on one line), then the
    definitions of FLOPs, memory and params."""
    from landmarknet.layers.registry import registered_types
    by_rule: dict[str, list[str]] = {}
    for name, reg in sorted(registered_types().items()):
        if reg.cost is not None and name != "Python":  # Python defers to its class's rule
            by_rule.setdefault(reg.cost.text, []).append(name)
    rules = {", ".join(types): text for text, types in by_rule.items()}
    rules.update({
        "FLOPs": "2 x MACs (ops are reported apart)",
        "memory": "bytes of the blobs a layer writes; in-place layers and views count 0",
        "params": "learnable blob elements; shared blobs counted once",
    })
    return rules


def _csv_safe(text: str) -> str:
    """Neutralise spreadsheet formulas (a name starting with = + - @)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def shape_text(shape: Iterable[int]) -> str:
    """(1, 3, 224, 224) -> '1x3x224x224'."""
    return "x".join(str(int(d)) for d in shape)


def md_escape(text: str) -> str:
    """Text for a Markdown table cell: HTML and Markdown specials escaped."""
    out = (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
           .replace("|", "\\|").replace("\n", " "))
    for ch in "\\`*_[]#":
        if ch == "\\":
            continue
        out = out.replace(ch, "\\" + ch)
    return out


def human(value: float) -> str:
    """1234567 -> '1.23M' (k, M, G, T)."""
    v = float(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}" if v != int(v) else str(int(v))


def human_bytes(n: float) -> str:
    """Bytes in KiB / MiB / GiB."""
    v = float(n)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{int(v)} B"


def name_prefix(name: str) -> str:
    """The group a layer name belongs to: the part before the first '/', else '_', '-', '.'.

    'inception_3a/1x1' -> 'inception_3a', 'res2a_branch2a' -> 'res2a', 'conv1' -> 'conv1'.
    """
    for sep in PREFIX_SEPARATORS:
        if sep in name:
            head = name.split(sep, 1)[0]
            if head:
                return head
    return name


def family_of(type_name: str, param=None) -> str:
    """The registry family of a layer type ('conv', 'pool' ...); Python layers by their class."""
    reg = registration_of(type_name, param)
    if reg is not None:
        return reg.family
    if type_name in DATA_LAYER_TYPES:  # data layers are graph inputs, not registered types
        return "data"
    return "custom"


def _numel(shape: Iterable[int]) -> int:
    return int(math.prod(int(d) for d in shape))


def layer_cost(info: LayerInfo, reg: Registration | None, training: bool
               ) -> tuple[int, int, bool]:
    """(MACs, ops, counted) of one layer by its registration's cost rule."""
    if reg is None or reg.cost is None:
        return 0, 0, False
    try:
        macs, ops = reg.cost.fn(info, training)
    except LookupError:  # a Python layer whose class is not registered
        return 0, 0, False
    return int(macs), int(ops), True


def layer_detail(reg: Registration | None, param) -> str:
    """A short parameter summary for a box ('7×7 /2 p3 · 64', 'MAX 3×3 /2', 'SUM' ...)."""
    if reg is None or reg.detail is None or param is None:
        return ""
    try:
        return reg.detail(param)
    except (AttributeError, IndexError, ValueError):
        return ""


def analyze(net: CaffeNet, *, bytes_per_element: int = BYTES_PER_ELEMENT) -> NetStats:
    """The per-layer analysis of a built net (see the module docstring for the rules)."""
    g = net.caffe_graph
    rows: list[LayerStats] = []
    producer_group: dict[str, str] = {}  # SSA -> group module that produced it
    for inp in g.inputs:
        mod = f"input:{inp.name}"
        rows.append(LayerStats(
            index=len(rows), module=mod, name=inp.layer, type=inp.layer_type, family="data",
            bottoms=[], tops=[inp.name], bottom_ssa=[], top_ssa=[inp.name], in_shapes=[],
            out_shapes=[list(inp.shape)], params=0, stats=0, blobs=[], macs=0, ops=0,
            memory=_numel(inp.shape) * bytes_per_element, counted=True, in_place=False,
            group=mod, prefix=name_prefix(inp.layer), source=inp.source,
            prototxt=_input_text(net, inp), is_input=True))
        producer_group[inp.name] = mod
    training = g.state.phase == "train"
    uncounted: list[str] = []
    for module, info in net.layers.items():
        node = info.node
        reg = registration_of(node.type, node.param)
        family = reg.family if reg is not None else family_of(node.type, node.param)
        macs, ops, counted = layer_cost(info, reg, training)
        if not counted and node.type not in uncounted:
            uncounted.append(node.type)
        tops_caffe, bots_caffe = list(node.param.top), list(node.param.bottom)
        in_place_flags = [i < len(bots_caffe) and bots_caffe[i] == t
                          for i, t in enumerate(tops_caffe)]
        in_place = bool(tops_caffe) and all(in_place_flags)
        memory = 0
        if reg is None or not reg.view:
            memory = sum(_numel(s) for s, ip in zip(info.top_shapes, in_place_flags) if not ip)
            memory *= bytes_per_element
        params = stats = 0
        blobs = []
        for i, slot in enumerate(info.blobs):
            shared = info.shared_from.get(i)
            if shared is None:
                if slot.learnable:
                    params += _numel(slot.shape)
                else:
                    stats += _numel(slot.shape)
            blobs.append({"attr": slot.attr, "shape": list(slot.shape),
                          "learnable": slot.learnable,
                          "shared_from": None if shared is None else
                          f"{net.layers[shared[0]].node.name}[{shared[1]}]"})
        group = module
        if in_place and node.bottoms and node.bottoms[0] in producer_group:
            src = producer_group[node.bottoms[0]]
            if not src.startswith("input:"):
                group = src
        for t in node.tops:
            producer_group[t] = group
        rows.append(LayerStats(
            index=len(rows), module=module, name=node.name, type=node.type, family=family,
            bottoms=bots_caffe, tops=tops_caffe, bottom_ssa=list(node.bottoms),
            top_ssa=list(node.tops), in_shapes=[list(s) for s in info.bottom_shapes],
            out_shapes=[list(s) for s in info.top_shapes], params=params, stats=stats,
            blobs=blobs, macs=int(macs), ops=int(ops), memory=int(memory), counted=counted,
            in_place=in_place, group=group, prefix="", source=node.source,
            prototxt=_layer_text(node.param), detail=layer_detail(reg, node.param),
            loss_weights=list(info.loss_weights)))
    by_module = {r.module: r for r in rows}
    for r in rows:
        r.prefix = name_prefix(by_module[r.group].name)
    totals = Totals()
    groups: dict[str, Totals] = {}
    for r in rows:
        totals.add(r)
        if not r.is_input:
            groups.setdefault(r.prefix, Totals()).add(r)
    prefixes = {k: v for k, v in groups.items() if v.layers >= 2}
    batches = {int(i.shape[0]) for i in g.inputs if i.shape}
    outputs, output_ssa = _outputs(net)
    return NetStats(name=g.name or "", phase=g.state.phase, path=g.path,
                    batch=batches.pop() if len(batches) == 1 else None, rows=rows,
                    totals=totals, prefixes=prefixes, outputs=outputs, output_ssa=output_ssa,
                    uncounted_types=uncounted)


def _outputs(net: CaffeNet) -> tuple[dict[str, list[int]], dict[str, str]]:
    """The blobs the net returns (the fx output dict, in order) with shapes and SSA names."""
    shapes: dict[str, list[int]] = {}
    ssa: dict[str, str] = {}
    out_node = next(n for n in net.graph.nodes if n.op == "output")
    values = out_node.args[0]
    for blob, fx_node in values.items():
        s = fx_node.meta.get("ssa") or net.caffe_graph.latest.get(blob, blob)
        ssa[blob] = s
        shapes[blob] = list(net.blob_shapes.get(s, ()))
    return shapes, ssa


def _layer_text(param) -> str:
    # protobuf's default float printing is already the shortest round-trip form.
    from google.protobuf import text_format
    body = text_format.MessageToString(param).rstrip("\n")
    return "layer {\n" + "\n".join("  " + line for line in body.splitlines()) + "\n}"


def _input_text(net: CaffeNet, inp) -> str:
    for node in net.caffe_graph.data_layers:
        if node.name == inp.layer:
            return _layer_text(node.param)
    return f'input: "{inp.name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in inp.shape)} }}'
