"""From a parsed NetParameter to a graph of layers in SSA form, as Caffe's Net::Init sees it.

Three things happen here, in Caffe's order: layers are filtered by their include/exclude rules
against the net state (phase, level, stages); inputs are collected (Input layers and data layers
become graph inputs); and every blob write gets a fresh name, so that an in-place layer (``top ==
bottom``) produces a new version of the blob and later layers read the newest version while
earlier ones keep the old. Names are given in layer order, never by looking at the end state.

This is the step between the parsed prototxt and the build; like everything below the build it
needs protobuf only, never torch (tests/test_flow.py checks it). The Graph keeps the ParsedNet it
came from, so a built net still has its NetParameter (``CaffeNet.net_param``).
"""
from __future__ import annotations

import builtins
import difflib
import keyword
import re
from dataclasses import dataclass, field, replace
from urllib.parse import quote, unquote
from pathlib import Path
from typing import Sequence

from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.prototxt import ParsedNet, read_net
from landmarknet.errors import GraphError, PrototxtError
from landmarknet.input_shapes import data_top_shapes

Shape = tuple[int, ...]

#: Layer types that read data from outside the net: in the graph they are inputs.
DATA_LAYER_TYPES = frozenset({"Input", "Data", "ImageData", "HDF5Data", "MemoryData",
                              "WindowData", "AnnotatedData", "VideoData", "ImageLabelmapData",
                              "DenseImageData", "ImageSegData", "CPMData", "OPData"})

#: Caffe's LossLayer subclasses (BVLC and the SSD fork). Their AutoTopBlobs() is true: a layer
#: written without a top gets an anonymous one (net.cpp, Net::Init), which carries the loss
#: (weight 1 by default) but which no other layer can read and which is no net output.
AUTO_TOP_TYPES = frozenset({"EuclideanLoss", "SoftmaxWithLoss", "SigmoidCrossEntropyLoss",
                            "MultinomialLogisticLoss", "HingeLoss", "InfogainLoss",
                            "ContrastiveLoss", "SmoothL1Loss", "MultiBoxLoss"})
#: Caffe names every anonymous top "(automatic)"; ours get the layer name in front, so that
#: several of them stay apart in the dict a forward returns.
AUTOMATIC_SUFFIX = " (automatic)"

_PHASES = {"train": caffe_pb2.TRAIN, "test": caffe_pb2.TEST}


@dataclass
class NetState:
    """Caffe's NetState: which layers a net built from the prototxt contains."""

    phase: str = "test"
    level: int = 0
    stages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.phase not in _PHASES:
            raise ValueError(f"phase must be 'train' or 'test', got {self.phase!r}")


def _meets(state: NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != _PHASES[state.phase]:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stages for s in rule.stage):
        return False
    return not any(s in state.stages for s in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, state: NetState) -> bool:
    """Caffe's Net::FilterNet rule for one layer (include wins over exclude; never both)."""
    if layer.include and layer.exclude:
        raise PrototxtError("a layer may have include rules or exclude rules, not both",
                            layer=layer.name)
    included = not layer.include
    if any(_meets(state, r) for r in layer.exclude):
        included = False
    if any(_meets(state, r) for r in layer.include):
        included = True
    return included


def module_name(layer_name: str, reserved: frozenset[str] = frozenset()) -> str:
    """A layer name made safe as a torch submodule name, reversibly, for every string.

    Every character outside letters, digits and ``_-/`` is percent-encoded ('.' too, which
    torch reads as a path). This matters beyond readability: torch.fx pastes submodule names
    into the Python source it generates for ``forward``, so a quote, backslash or newline from a
    prototxt must never reach it as such. A name that would shadow an attribute of the module
    (a layer called 'forward', 'training' or '_modules'), a Python keyword (fx would write
    ``self.None``) or a dunder name gets a trailing '%', which the encoding itself never
    produces; the empty name becomes '%'.
    """
    escaped = quote(layer_name, safe="/-_").replace(".", "%2E").replace("~", "%7E")
    if (escaped in reserved or keyword.iskeyword(escaped) or escaped.startswith("__")
            or not escaped):
        return escaped + "%"
    return escaped


def layer_name_of(module: str) -> str:
    """Inverse of module_name."""
    if module.endswith("%") and not module.endswith("%25"):
        module = module[:-1]
    return unquote(module)


#: Names a generated ``forward(self, ...)`` must not use for an argument.
_UNSAFE_IDENTIFIERS = frozenset({"self"}) | frozenset(dir(builtins))


def python_identifier(name: str) -> str:
    """A blob name made into a Python identifier (for fx placeholders and generated code).

    Not reversible (blob names are kept beside it): keywords, builtins, 'self' and private
    names get a ``blob_`` prefix so that the generated source always compiles.
    """
    ident = re.sub(r"\W", "_", name, flags=re.ASCII)
    if not ident or ident[0].isdigit() or ident.startswith("_") or keyword.iskeyword(ident) \
            or keyword.issoftkeyword(ident) or ident in _UNSAFE_IDENTIFIERS:
        ident = "blob_" + ident
    return ident


@dataclass
class Node:
    """One layer of the filtered net, with its blobs renamed to SSA versions."""

    index: int  # position among the layers of the original prototxt
    name: str  # the Caffe layer name (may repeat in the file)
    module: str  # unique, attribute-safe submodule name
    type: str
    param: caffe_pb2.LayerParameter
    bottoms: list[str]  # SSA names of the inputs
    tops: list[str]  # SSA names of the outputs
    source: str | None  # "file:line"
    auto_tops: int = 0  # how many of the last tops are Caffe's anonymous loss tops

    @property
    def bottom_blobs(self) -> list[str]:
        """Caffe blob names of the bottoms."""
        return list(self.param.bottom)

    @property
    def top_blobs(self) -> list[str]:
        """Caffe blob names of the tops."""
        return list(self.param.top)


@dataclass
class GraphInput:
    """A blob that enters the net from outside: an Input layer's top or a data layer's top."""

    name: str  # SSA name == Caffe blob name (inputs are the first version)
    shape: Shape | None  # None when the prototxt does not say (data layers reading a DB)
    layer: str  # the layer that declares it
    layer_type: str
    source: str | None


@dataclass
class Graph:
    """The net as a DAG in SSA form."""

    name: str
    state: NetState
    inputs: list[GraphInput]
    nodes: list[Node]
    blob_of: dict[str, str]  # SSA name -> Caffe blob name
    latest: dict[str, str]  # Caffe blob name -> its last SSA version
    data_layers: list[Node] = field(default_factory=list)  # data layers, kept for tools
    path: str | None = None
    parsed: ParsedNet | None = None  # the parsed prototxt the graph came from
    #: SSA names a caller chose as the net's outputs (``cut_to``); None: Caffe's own outputs
    chosen_outputs: tuple[str, ...] | None = None

    def with_input_shapes(self, shapes: dict[str, Shape]) -> Graph:
        """The same graph with some input shapes given (as build_graph's ``input_shapes``)."""
        return replace(self, inputs=_given_shapes(self.inputs, shapes, self.state))

    def consumers(self) -> dict[str, list[Node]]:
        """SSA name -> the nodes reading it."""
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            for b in node.bottoms:
                out.setdefault(b, []).append(node)
        return out

    def outputs(self) -> list[str]:
        """SSA names no layer consumes (Caffe's net outputs), in the order they are produced;
        or the outputs chosen with ``cut_to``."""
        if self.chosen_outputs is not None:
            return list(self.chosen_outputs)
        used = self.consumers()
        return [t for n in self.nodes for t in n.tops[:len(n.tops) - n.auto_tops]
                if t not in used]

    def cut_to(self, blobs: Sequence[str]) -> Graph:
        """The graph that computes only ``blobs`` (Caffe blob names, each at its last value):
        they become the outputs, and the layers and inputs they do not need are left out.

        For exporting a net without its post-processing (``--outputs mbox_loc,mbox_conf_flatten,
        mbox_priorbox`` leaves SSD's DetectionOutput out), or running part of a net.
        """
        if not blobs:
            raise GraphError("--outputs: give at least one blob name")
        unknown = [b for b in blobs if b not in self.latest]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.latest), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise GraphError(f"--outputs: no blob named {unknown[0]!r} in this net in phase "
                             f"{self.state.phase}{hint}")
        wanted = [self.latest[b] for b in dict.fromkeys(blobs)]
        producer = {t: n for n in self.nodes for t in n.tops}
        needed: set[str] = set()
        stack = list(wanted)
        while stack:
            blob = stack.pop()
            node = producer.get(blob)
            if node is None or node.module in needed:
                continue
            needed.add(node.module)
            stack.extend(node.bottoms)
        nodes = [n for n in self.nodes if n.module in needed]
        read = {b for n in nodes for b in n.bottoms} | set(wanted)
        inputs = [i for i in self.inputs if i.name in read]
        kept = [i.name for i in inputs] + [t for n in nodes for t in n.tops]
        blob_of = {ssa: self.blob_of[ssa] for ssa in kept}
        latest = {blob_of[ssa]: ssa for ssa in kept}  # production order: the last one wins
        return replace(self, nodes=nodes, inputs=inputs, blob_of=blob_of, latest=latest,
                       chosen_outputs=tuple(wanted))


def _unique_version(blob: str, layer: str, taken: dict[str, str], counts: dict[str, int]) -> str:
    """A fresh SSA name for a blob written again, ``blob@layer`` (then ``#2``, ``#3`` ...).

    ``counts`` remembers the last suffix tried per base name, so a blob rewritten by many
    layers of the same name costs constant time per write, not time growing with the net.
    """
    base = f"{blob}@{layer}"
    if base not in taken:
        return base
    k = counts.get(base, 1) + 1
    while f"{base}#{k}" in taken:
        k += 1
    counts[base] = k
    return f"{base}#{k}"


def build_graph(parsed: ParsedNet | str | Path, state: NetState | None = None, *,
                input_shapes: dict[str, Shape] | None = None,
                reserved: frozenset[str] = frozenset()) -> Graph:
    """Filter by phase/level/stage, collect inputs, rename blobs in layer order."""
    if not isinstance(parsed, ParsedNet):
        parsed = read_net(parsed)
    state = state or NetState()
    inputs: list[GraphInput] = []
    nodes: list[Node] = []
    data_nodes: list[Node] = []
    blob_of: dict[str, str] = {}
    latest: dict[str, str] = {}
    producer: dict[str, str] = {}  # Caffe blob -> layer that last wrote it (for messages)
    taken_modules: set[str] = set()
    module_counts: dict[str, int] = {}  # module name -> last '#k' suffix given
    versions: dict[str, int] = {}  # SSA base name -> last '#k' suffix given
    excluded_tops: dict[str, str] = {}  # blob -> layer that would produce it in another phase

    net = parsed.net
    all_tops = {t for layer in net.layer for t in layer.top}
    for index, layer in enumerate(net.layer):
        source = parsed.source(index)
        if not layer_included(layer, state):
            for t in layer.top:
                excluded_tops.setdefault(t, layer.name)
            continue
        layer, n_auto = _with_auto_top(layer, all_tops)
        # Bottoms read the latest version of each blob.
        bottoms = []
        for b in layer.bottom:
            if b not in latest:
                raise GraphError(_missing_bottom_message(parsed, index, layer, b, state,
                                                         excluded_tops))
            bottoms.append(latest[b])
        mod = module_name(layer.name, reserved)
        if mod in taken_modules:  # Caffe tolerates repeated layer names (HED has two 'crop')
            k = module_counts.get(mod, 1) + 1
            while f"{mod}#{k}" in taken_modules:
                k += 1
            module_counts[mod] = k
            mod = f"{mod}#{k}"
        taken_modules.add(mod)
        tops = []
        seen_here: set[str] = set()
        for i, t in enumerate(layer.top):
            if t in seen_here:
                raise GraphError(f"{source}: layer '{layer.name}' lists top '{t}' twice")
            seen_here.add(t)
            in_place = i < len(layer.bottom) and layer.bottom[i] == t
            if t in latest and not in_place:
                raise GraphError(
                    f"{source}: top '{t}' of layer '{layer.name}' is already produced by layer "
                    f"'{producer[t]}'. Caffe allows writing a blob twice only in place (the same "
                    "name as the bottom at the same position); rename one of the tops")
            ssa = t if t not in blob_of else _unique_version(t, layer.name, blob_of, versions)
            blob_of[ssa] = t
            if i < len(layer.top) - n_auto:  # anonymous tops are readable by no later layer
                latest[t] = ssa
                producer[t] = layer.name
            tops.append(ssa)
        node = Node(index, layer.name, mod, layer.type, layer, bottoms, tops, source, n_auto)
        if layer.type in DATA_LAYER_TYPES:
            if layer.bottom:
                raise GraphError(f"{source}: data layer '{layer.name}' cannot have bottoms")
            shapes = data_top_shapes(layer, parsed.path, state.phase)
            inputs += [GraphInput(t, shape, layer.name, layer.type, source)
                       for t, shape in zip(layer.top, shapes)]
            data_nodes.append(node)
            continue
        nodes.append(node)
    inputs = _given_shapes(inputs, input_shapes or {}, state)
    return Graph(net.name, state, inputs, nodes, blob_of, latest, data_nodes, parsed.path,
                 parsed)


def _given_shapes(inputs: list[GraphInput], shapes: dict[str, Shape], state: NetState,
                  ) -> list[GraphInput]:
    """The inputs with the shapes a caller gives (an empty one keeps the prototxt's)."""
    names = {i.name for i in inputs}
    unknown = [name for name in shapes if name not in names]
    if unknown:
        known = ", ".join(i.name for i in inputs) or "none"
        raise GraphError(f"--input-shape names {', '.join(unknown)}, which is not an input "
                         f"of this net in phase {state.phase} (inputs: {known})")
    given = [replace(i, shape=tuple(shapes[i.name])) if shapes.get(i.name) else i
             for i in inputs]
    return _follow_given_batch(given, shapes)


#: Data layers whose every top has the batch on its first axis (AnnotatedData's box list and
#: VideoData do not), so a batch size given for one top is the batch of all of them.
_BATCH_FIRST = frozenset({"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData",
                          "DenseImageData", "ImageSegData", "ImageLabelmapData", "CPMData",
                          "OPData"})


def _follow_given_batch(inputs: list[GraphInput], shapes: dict[str, Shape]) -> list[GraphInput]:
    """A batch size given for some tops of a data layer (``--input-shape data=8,...``) is the
    batch of its other tops too, whose shapes came from the layer's batch_size: the label of a
    Data layer follows its images."""
    out = list(inputs)
    for layer in {i.layer for i in inputs if i.layer_type in _BATCH_FIRST}:
        tops = [k for k, i in enumerate(out) if i.layer == layer]
        batches = {tuple(shapes[out[k].name])[0] for k in tops
                   if shapes.get(out[k].name) and len(shapes[out[k].name])}
        if len(batches) != 1:
            continue
        (batch,) = batches
        for k in tops:
            i = out[k]
            if not shapes.get(i.name) and i.shape:
                out[k] = replace(i, shape=(batch,) + tuple(i.shape[1:]))
    return out


def _with_auto_top(layer: caffe_pb2.LayerParameter, taken: set[str],
                   ) -> tuple[caffe_pb2.LayerParameter, int]:
    """(layer, 0), or a copy with Caffe's anonymous top added and 1 for a top-less loss layer.

    Caffe adds tops up to max(MinTopBlobs, ExactNumTopBlobs), which is 1 for every LossLayer.
    """
    if layer.top or layer.type not in AUTO_TOP_TYPES:
        return layer, 0
    name = (layer.name or layer.type) + AUTOMATIC_SUFFIX
    while name in taken:  # never shadow a blob the prototxt names
        name += "'"
    taken.add(name)
    copy = caffe_pb2.LayerParameter()
    copy.CopyFrom(layer)
    copy.top.append(name)
    return copy, 1


def _missing_bottom_message(parsed: ParsedNet, index: int, layer: caffe_pb2.LayerParameter,
                            blob: str, state: NetState, excluded: dict[str, str]) -> str:
    """Explain a bottom nobody produced: later layer (a cycle?), other phase, or a typo."""
    where = parsed.source(index)
    base = f"{where}: bottom '{blob}' of layer '{layer.name}' is not produced by any earlier layer"
    later = [l.name for l in parsed.net.layer[index:] if blob in l.top]
    if later:
        return (base + f"; layer '{later[0]}' produces it later. Caffe needs layers in "
                "topological order, so this is a cycle or a misordered file")
    if blob in excluded:
        other = "test" if state.phase == "train" else "train"
        return (base + f" in phase {state.phase.upper()}: layer '{excluded[blob]}', which "
                "produces it, is excluded by its include/exclude rules (a net of the other "
                f"phase? try --phase {other}; or its level/stage rules)")
    return base + " (a typo in the blob name?)"
