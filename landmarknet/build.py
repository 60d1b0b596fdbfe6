"""Graph -> torch.fx.GraphModule: one submodule per Caffe layer, named after it.

Each layer is first built on the ``meta`` device and run on meta tensors to learn its top shapes
(no second copy of shape formulas, no memory), then built for real and filled with Caffe's
fillers. Learnable blobs are parameters, statistics are buffers; ``param { name }`` sharing makes
layers hold the very same Parameter object.

The flow runs one way: a prototxt is parsed once (``read_net``), filtered into a Graph once
(``net_graph``, no torch) and built once (``build_from_graph``); ``build_net`` does all three.
The net keeps what it came from (``net.caffe_graph``, ``net.parsed``, ``net.net_param``), so
writing a .caffemodel, exporting or bundling never reads the prototxt again.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import fx, nn

from landmarknet import memory
from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.prototxt import ParsedNet, read_net
from landmarknet.errors import GraphError, LayerError, ShapeError
from landmarknet.fillers import fill
from landmarknet.graph import Graph, GraphInput, NetState, Node, build_graph, python_identifier
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, converter_for

Shape = tuple[int, ...]


@dataclass
class LayerInfo:
    """What the builder learnt about one layer: shapes, blobs, loss weights, lr multipliers."""

    node: Node
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    blobs: list[BlobSlot]
    loss_weights: list[float]
    shared_from: dict[int, tuple[str, int]] = field(default_factory=dict)  # blob i -> (module, j)

    def param_spec(self, i: int) -> caffe_pb2.ParamSpec:
        """The ParamSpec of blob ``i`` (Caffe's defaults when the prototxt gives fewer)."""
        specs = self.node.param.param
        return specs[i] if i < len(specs) else caffe_pb2.ParamSpec()


class CaffeNet(fx.GraphModule):
    """A Caffe net as a GraphModule: ``forward(*inputs) -> {blob name: tensor}``.

    Positional inputs follow ``input_names``; ``run`` takes a dict by Caffe blob names instead
    and can also return intermediate blobs. ``caffe_graph`` is the Graph it was built from,
    ``parsed`` / ``net_param`` the parsed prototxt (as upgraded, all phases): what
    ``save_weights(net, path, net.net_param)`` needs to write a .caffemodel.
    """

    def __init__(self, root: nn.Module, graph: fx.Graph, caffe_graph: Graph,
                 layers: dict[str, LayerInfo], blob_shapes: dict[str, Shape]) -> None:
        super().__init__(root, graph, class_name="CaffeNet")
        self.caffe_graph = caffe_graph
        self.layers = layers
        self.blob_shapes = blob_shapes
        self.input_names = [i.name for i in caffe_graph.inputs]

    @property
    def parsed(self) -> ParsedNet:
        """The parsed prototxt the net was built from: NetParameter, path, source lines."""
        return self.caffe_graph.parsed

    @property
    def net_param(self) -> caffe_pb2.NetParameter:
        """The NetParameter parsed once at build (every layer, every phase; legacy upgraded)."""
        return self.caffe_graph.parsed.net

    # -- running ------------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, torch.Tensor | np.ndarray],
            blobs: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Run on inputs named by blob; return the outputs, or the named blobs when given."""
        args = self._positional(inputs)
        if blobs is None:
            return self(*args)
        wanted = [self._ssa(b) for b in blobs]
        env = _BlobRecorder(self, set(wanted)).run_recording(*args)
        return {b: env[w] for b, w in zip(blobs, wanted)}

    def run_layers(self, inputs: Mapping[str, torch.Tensor | np.ndarray],
                   layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Each named layer's first top as that layer wrote it (before later in-place layers),
        which is how OpenCV and Caffe's per-layer tools address outputs."""
        tops = {}
        for name in layers:
            info = next((i for i in self.layers.values() if i.node.name == name), None)
            if info is None or not info.node.tops:
                raise GraphError(f"no layer named '{name}' with a top in this net")
            tops[name] = info.node.tops[0]
        env = _BlobRecorder(self, set(tops.values())).run_recording(*self._positional(inputs))
        return {name: env[ssa] for name, ssa in tops.items()}

    def _positional(self, inputs: Mapping[str, torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
        """Inputs by blob name -> forward's positional arguments, on the net's device."""
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise GraphError(f"inputs of the net are {self.input_names}; missing {missing}, "
                             f"unknown {extra}")
        device = next((b.device for b in self.buffers()), None) or \
            next((p.device for p in self.parameters()), torch.device("cpu"))
        return [torch.as_tensor(inputs[n], device=device) for n in self.input_names]

    def _ssa(self, blob: str) -> str:
        if blob in self.caffe_graph.latest:
            return self.caffe_graph.latest[blob]
        if blob in self.caffe_graph.blob_of:
            return blob
        raise GraphError(f"no blob named '{blob}' in this net; blobs are "
                         f"{', '.join(sorted(self.caffe_graph.latest))}")

    def loss(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The net's objective: sum of loss_weight x sum(top) over weighted tops (Caffe's)."""
        total = None
        for info in self.layers.values():
            for ssa, w in zip(info.node.tops, info.loss_weights):
                if w:
                    blob = self.caffe_graph.blob_of[ssa]
                    term = w * outputs[blob].sum()
                    total = term if total is None else total + term
        if total is None:
            raise GraphError("this net has no loss (no top with a loss_weight) in phase "
                             f"{self.caffe_graph.state.phase}")
        return total

    # -- learning-rate multipliers -------------------------------------------------------------
    def param_groups(self, base_lr: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer parameter groups honouring Caffe's lr_mult and decay_mult per blob."""
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        seen: set[int] = set()
        for module, info in self.layers.items():
            sub = self.get_submodule(module)
            for i, slot in enumerate(info.blobs):
                if not slot.learnable or i in info.shared_from:
                    continue
                tensor = sub.get_parameter(slot.attr)
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                spec = info.param_spec(i)
                groups.setdefault((spec.lr_mult, spec.decay_mult), []).append(tensor)
        return [{"params": ps, "lr": base_lr * lr, "weight_decay": weight_decay * dm,
                 "lr_mult": lr, "decay_mult": dm} for (lr, dm), ps in groups.items()]

    def blob_tensor(self, module: str, i: int) -> torch.Tensor:
        """The tensor holding Caffe blob ``i`` of layer (submodule) ``module``."""
        info = self.layers[module]
        return _get_tensor(self.get_submodule(module), info.blobs[i].attr)


class _BlobRecorder(fx.Interpreter):
    """Runs the graph and keeps the values of the requested SSA blobs."""

    def __init__(self, gm: CaffeNet, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.kept: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        ssa = n.meta.get("ssa")
        if ssa in self.wanted:
            self.kept[ssa] = value
        return value

    def run_recording(self, *args) -> dict[str, torch.Tensor]:
        self.run(*args)
        return self.kept


def _get_tensor(module: nn.Module, attr: str) -> torch.Tensor:
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _set_tensor(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    *parents, last = attr.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


class _WatchedSpec(LayerSpec):
    """A LayerSpec that notes whether its converter looked at the net around the layer."""

    context_read = False

    def _read(self, attr: str):
        self.context_read = True
        return self.__dict__[attr]

    def _write(self, attr: str, value) -> None:
        self.__dict__[attr] = value

    # The dataclass __init__ assigns these; a converter reading them marks the spec.
    graph = property(lambda self: self._read("_graph"),  # type: ignore[assignment]
                     lambda self, v: self._write("_graph", v))
    node = property(lambda self: self._read("_node"),  # type: ignore[assignment]
                    lambda self, v: self._write("_node", v))


def _spec(node: Node, shapes: list[Shape], state: NetState, graph: Graph | None = None,
          ) -> LayerSpec:
    return _WatchedSpec(node.name, node.type, node.param, shapes, len(node.tops), state.phase,
                        node.source, graph, node)


#: Fields of a LayerParameter that name the layer and its blobs: they do not change what a
#: converter builds, so layers that differ only there share one shape inference.
_NAMING_FIELDS = ("name", "bottom", "top")


def _shape_key(spec: LayerSpec) -> tuple:
    """What a layer's top shapes can depend on when its converter reads no context."""
    param = type(spec.param)()
    param.CopyFrom(spec.param)
    for name in _NAMING_FIELDS:
        param.ClearField(name)
    return (spec.type, param.SerializeToString(deterministic=True),
            tuple(map(tuple, spec.bottom_shapes)), spec.n_tops, spec.phase)


def _infer(node: Node, spec: LayerSpec, memo: dict | None = None) -> tuple[Built, list[Shape]]:
    """Build the layer on meta and run it on meta tensors to learn its top shapes.

    Running on meta costs up to a millisecond a layer (elementwise ops go through Python
    reference kernels), so with ``memo`` a layer identical to one already inferred (same
    type, parameters, bottom shapes and phase; names aside) reuses its shapes. A converter
    that looked at the graph around its layer is always run.
    """
    conv = converter_for(spec)
    with torch.device("meta"):
        built = conv(spec)
    if built.top_shapes is not None:
        return built, [tuple(s) for s in built.top_shapes]
    key = None
    if memo is not None and not getattr(spec, "context_read", True):
        key = _shape_key(spec)
        if key in memo:
            return built, memo[key]
    # Run in the mode the net will have (build_net ends with net.train(phase == "train")), so
    # shape inference takes the same code path as the real forward (BatchNorm's statistics).
    built.module.train(spec.phase == "train")
    try:
        with torch.no_grad():
            out = built.module(*[torch.empty(s, device="meta") for s in spec.bottom_shapes])
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise spec.error(f"cannot run on bottoms of shape "
                         f"{', '.join(str(list(s)) for s in spec.bottom_shapes)}: {exc}",
                         shape=True) from None
    outs = [] if out is None else list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != spec.n_tops:
        raise spec.error(f"produces {len(outs)} output(s) but the prototxt names "
                         f"{spec.n_tops} top(s)")
    shapes = [tuple(o.shape) for o in outs]
    if key is not None:
        memo[key] = shapes
    return built, shapes


def build_net(source: ParsedNet | str | os.PathLike, *, phase: str = "test", level: int = 0,
              stages: Iterable[str] = (), input_shapes: Mapping[str, Iterable[int]] | None = None,
              seed: int = 0, device: str | torch.device = "cpu", strict: bool = True,
              max_memory: int | None = None) -> CaffeNet:
    """Parse (if needed), filter, build and fill a net; TRAIN nets come back in train() mode.

    ``max_memory`` (bytes; 0: no limit; None: the current memory_limit, by default what the
    machine has available) refuses, before allocating anything, a net whose weights and
    blobs need more (landmarknet.memory.MemoryLimitError names the layer that asks most).
    """
    with _gc_paused():
        graph = net_graph(source, phase=phase, level=level, stages=stages,
                          input_shapes=input_shapes, strict=strict)
        return _build_from_graph(graph, seed=seed, device=device, max_memory=max_memory)


def net_graph(source: ParsedNet | str | os.PathLike, *, phase: str = "test", level: int = 0,
              stages: Iterable[str] = (), input_shapes: Mapping[str, Iterable[int]] | None = None,
              strict: bool = True) -> Graph:
    """The Graph build_net builds from: parsed (if needed), filtered, names clear of CaffeNet's.

    For callers that must look at the net's inputs before choosing their shapes: take the
    graph, then ``build_from_graph(graph, input_shapes=...)``; nothing is parsed or filtered
    twice.
    """
    parsed = source if isinstance(source, ParsedNet) else read_net(source, strict=strict)
    state = NetState(phase, level, tuple(stages))
    return build_graph(parsed, state, input_shapes=_int_shapes(input_shapes),
                       reserved=reserved_names())


def build_from_graph(graph: Graph, *, input_shapes: Mapping[str, Iterable[int]] | None = None,
                     seed: int = 0, device: str | torch.device = "cpu",
                     max_memory: int | None = None) -> CaffeNet:
    """Build and fill a net from a graph of ``net_graph`` (see build_net for the options)."""
    if input_shapes:
        graph = graph.with_input_shapes(_int_shapes(input_shapes))
    with _gc_paused():
        return _build_from_graph(graph, seed=seed, device=device, max_memory=max_memory)


def _int_shapes(shapes: Mapping[str, Iterable[int]] | None) -> dict[str, Shape]:
    """Input shapes as tuples of Python ints, whatever sequences of numbers they came as."""
    return {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off while a net is built.

    Building allocates several container objects per layer and frees almost none, so the
    collector's full passes, triggered as the heap grows, rescan everything built so far: on a
    100,000-layer net they took half the build time. The net's objects hold no garbage cycles
    worth collecting meanwhile; the collector resumes (if it was on) when the build ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build_from_graph(graph: Graph, *, seed: int, device: str | torch.device,
                      max_memory: int | None) -> CaffeNet:
    """build_net's work after the graph (see there)."""
    _check_graph(graph)
    state = graph.state
    blob_shapes: dict[str, Shape] = {}
    for inp in graph.inputs:
        if inp.shape is None or any(d <= 0 for d in inp.shape):
            raise GraphError(_unknown_input_message(inp))
        blob_shapes[inp.name] = inp.shape

    # Pass 1: shapes, on meta.
    infos: dict[str, LayerInfo] = {}
    meta_built: dict[str, Built] = {}
    memo: dict = {}
    for node in graph.nodes:
        spec = _spec(node, [blob_shapes[b] for b in node.bottoms], state, graph)
        built, tops = _infer(node, spec, memo)
        for t, s in zip(node.tops, tops):
            blob_shapes[t] = s
        weights = list(node.param.loss_weight)
        if weights and len(weights) != len(node.tops):
            raise GraphError(f"{node.source}: layer '{node.name}' has {len(node.tops)} tops but "
                             f"{len(weights)} loss_weight values")
        if not weights:
            weights = [built.default_loss_weight if i == 0 else 0.0 for i in range(len(node.tops))]
        infos[node.module] = LayerInfo(node, spec.bottom_shapes, tops, built.blobs, weights)
        meta_built[node.module] = built

    # Nothing real is allocated yet: refuse a net bigger than the budget now.
    memory.check(estimate_memory(graph, infos, meta_built, blob_shapes), max_memory, device)

    # Pass 2: the real modules, filled.
    root = nn.Module()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for node in graph.nodes:
        info = infos[node.module]
        built = _materialise(meta_built[node.module],
                             lambda: _spec(node, info.bottom_shapes, state, graph), device)
        for slot in built.blobs:
            _fill_slot(built.module, slot, gen)
        info.blobs = built.blobs
        root.add_module(node.module, built.module)
    _share_params(root, infos)

    fx_graph = _fx_graph(graph, infos)
    net = CaffeNet(root, fx_graph, graph, infos, blob_shapes)
    net.train(state.phase == "train")
    return net


def _check_graph(graph: Graph) -> None:
    """Refuse an empty net, and a graph whose submodule names were not kept clear of CaffeNet's
    attributes (made by graph.build_graph without net_graph's ``reserved``)."""
    if not graph.nodes and not graph.inputs:
        has_layers = graph.parsed is not None and len(graph.parsed.net.layer) > 0
        raise GraphError(f"{graph.path or '<text>'}: the net has no layers"
                         + (f" in phase {graph.state.phase.upper()}" if has_layers else ""))
    clash = next((n for n in graph.nodes if n.module in _RESERVED), None)
    if clash is not None:
        raise GraphError(f"{clash.source}: layer '{clash.name}' would shadow the CaffeNet "
                         f"attribute '{clash.module}'; make the graph with "
                         "landmarknet.build.net_graph, which keeps names clear of them")


def estimate_memory(graph: Graph, infos: dict[str, LayerInfo], meta_built: dict[str, Built],
                    blob_shapes: Mapping[str, Shape]) -> memory.MemoryEstimate:
    """Bytes of the net's tensors (from the meta build) and of its blobs (float32), as Caffe
    holds them: every top once, an in-place top in its bottom's memory."""
    params = activations = 0
    largest: memory.Demand | None = None
    shared: set[str] = set()

    def note(demand: memory.Demand) -> None:
        nonlocal largest
        if largest is None or demand.bytes > largest.bytes:
            largest = demand

    for inp in graph.inputs:
        n = math.prod(blob_shapes[inp.name])
        activations += 4 * n
        note(memory.Demand(inp.name, f"from {inp.layer_type} layer '{inp.layer}'", "input",
                           4 * n, n))
    for module, info in infos.items():
        node = info.node
        slot_of = {slot.attr: i for i, slot in enumerate(info.blobs)}
        values = size = 0
        tensors = list(meta_built[module].module.named_parameters(remove_duplicate=False)) + \
            list(meta_built[module].module.named_buffers(remove_duplicate=False))
        for attr, t in tensors:
            i = slot_of.get(attr)
            name = info.param_spec(i).name if i is not None else ""
            if name:  # param { name } sharing: the first layer holds the tensor
                if name in shared:
                    continue
                shared.add(name)
            values += t.numel()
            size += t.numel() * t.element_size()
        params += size
        if size:
            note(memory.Demand(node.name, node.type, "weights", size, values))
        # An in-place top (the bottom's name at the same position) reuses the bottom's memory
        # in Caffe; here it is a new tensor, but the one it replaces is then freed.
        n = sum(math.prod(s) for i, s in enumerate(info.top_shapes)
                if not (i < len(node.param.bottom) and i < len(node.param.top)
                        and node.param.top[i] == node.param.bottom[i]))
        activations += 4 * n
        note(memory.Demand(node.name, node.type, "outputs", 4 * n, n))
    factor = 2 if graph.state.phase == "train" else 1
    return memory.MemoryEstimate(params, activations, factor, largest)


def _unknown_input_message(inp: GraphInput) -> str:
    """Why an input has no usable shape, and the three ways to give one."""
    how = (f"give it, e.g. --input-shape {inp.name}=1,3,224,224 (input_shapes={{'{inp.name}': "
           "(1, 3, 224, 224)} in Python)")
    if inp.layer_type == "Input" and inp.shape is None:
        # `input: "data"` with no dims (OpenCV takes the shape from the data), or an Input layer
        # without input_param.
        return (f"{inp.source}: input '{inp.name}' has no dims in the prototxt, so its shape "
                f"must come with the data: {how}; `landmarknet forward` takes it from the "
                "--input .npy file")
    given = "unknown" if inp.shape is None else str(list(inp.shape))
    return (f"{inp.source}: the shape of input '{inp.name}' (from {inp.layer_type} layer "
            f"'{inp.layer}') is {given}; {how}")


def _materialise(built: Built, make_spec: Callable[[], LayerSpec],
                 device: str | torch.device) -> Built:
    """The meta-built layer on the real device, storage uninitialised (fillers come next).

    Converters must not compute values in __init__ (the registry's contract), so to_empty is
    enough when every non-empty tensor of the module is a Caffe blob; a module that holds other
    tensors is built again on the device (from the spec ``make_spec`` gives) instead, so nothing
    it computed is lost. A module without tensors (most layers of a deep net) is left as it is.
    """
    tensors = list(built.module.named_parameters()) + list(built.module.named_buffers())
    if not tensors:
        return built
    blob_attrs = {slot.attr for slot in built.blobs}
    if all(name in blob_attrs or t.numel() == 0 for name, t in tensors):
        built.module.to_empty(device=device)
        return built
    spec = make_spec()
    with torch.device(device):
        return converter_for(spec)(spec)


def _fill_slot(module: nn.Module, slot: BlobSlot, gen: torch.Generator) -> None:
    """Apply the slot's Caffe filler (on the CPU generator, so results are device-independent)."""
    tensor = _get_tensor(module, slot.attr)
    if tuple(tensor.shape) != tuple(slot.shape):
        raise LayerError(f"internal: blob {slot.attr} has shape {list(tensor.shape)}, declared "
                         f"{list(slot.shape)}")
    if tensor.device.type == "cpu":
        fill(tensor, slot.filler, gen)
        return
    cpu = torch.empty(tensor.shape)
    fill(cpu, slot.filler, gen)
    with torch.no_grad():
        tensor.copy_(cpu)


def reserved_names() -> frozenset[str]:
    """Attribute names of CaffeNet that a submodule must not shadow (see graph.module_name)."""
    return _RESERVED


def _attribute_names() -> frozenset[str]:
    """Class attributes and the instance attributes nn.Module and GraphModule set in __init__."""
    probe = fx.GraphModule(nn.Module(), fx.Graph())
    return (frozenset(dir(CaffeNet)) | frozenset(vars(probe))
            | {"caffe_graph", "layers", "blob_shapes", "input_names", "graph", "code", "meta",
               "training", "parsed", "net_param"})


_RESERVED = _attribute_names()


def _share_params(root: nn.Module, infos: dict[str, LayerInfo]) -> None:
    """``param { name: "w" }`` on several layers: the later ones hold the first one's tensor."""
    owners: dict[str, tuple[str, int]] = {}
    for module, info in infos.items():
        for i, spec in enumerate(info.node.param.param):
            if not spec.name or i >= len(info.blobs):
                continue
            if spec.name not in owners:
                owners[spec.name] = (module, i)
                continue
            owner_mod, j = owners[spec.name]
            owner_slot = infos[owner_mod].blobs[j]
            slot = info.blobs[i]
            strict = spec.share_mode == caffe_pb2.ParamSpec.STRICT
            same = tuple(owner_slot.shape) == tuple(slot.shape)
            if not same and (strict or math.prod(owner_slot.shape) != math.prod(slot.shape)):
                raise ShapeError(
                    f"{info.node.source}: layer '{info.node.name}' shares param '{spec.name}' "
                    f"with layer '{infos[owner_mod].node.name}' but its blob {i} has shape "
                    f"{list(slot.shape)} against {list(owner_slot.shape)}", layer=info.node.name)
            if not same:
                raise ShapeError(f"layer '{info.node.name}': PERMISSIVE sharing of blobs with "
                                 "different shapes is not supported", layer=info.node.name)
            shared = _get_tensor(root.get_submodule(owner_mod), owner_slot.attr)
            _set_tensor(root.get_submodule(module), slot.attr, shared)
            info.shared_from[i] = (owner_mod, j)


def _fx_graph(graph: Graph, infos: dict[str, LayerInfo]) -> fx.Graph:
    """The fx graph: placeholders for inputs, one call_module per layer, a dict of outputs."""
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    used_idents: set[str] = set()
    for inp in graph.inputs:
        ident = python_identifier(inp.name)
        while ident in used_idents:
            ident += "_"
        used_idents.add(ident)
        env[inp.name] = g.placeholder(ident)
        env[inp.name].meta["ssa"] = inp.name
    for node in graph.nodes:
        # fx names a node after its target unless told; 'self' or a builtin would shadow
        # the generated function's own names, so the name is made safe here.
        call = g.create_node("call_module", node.module, tuple(env[b] for b in node.bottoms),
                             name=python_identifier(node.name))
        if len(node.tops) == 1:
            env[node.tops[0]] = call
            call.meta["ssa"] = node.tops[0]
        else:
            for i, t in enumerate(node.tops):
                item = g.call_function(_item, (call, i))
                item.meta["ssa"] = t
                env[t] = item
    outputs = list(graph.outputs())
    for info in infos.values():  # weighted loss tops are outputs even when consumed
        outputs += [t for t, w in zip(info.node.tops, info.loss_weights) if w and t not in outputs]
    g.output({graph.blob_of[t]: env[t] for t in outputs})
    return g


def _item(values, i: int):
    """values[i], as a named function so generated code reads well."""
    return values[i]


fx.wrap("_item")


def net_summary(net: CaffeNet) -> list[dict]:
    """Per-layer rows: name, type, top shapes, parameter count (shared blobs counted once)."""
    rows = []
    for inp in net.caffe_graph.inputs:
        rows.append({"name": inp.layer, "type": inp.layer_type, "tops": {inp.name: list(inp.shape)},
                     "params": 0})
    for module, info in net.layers.items():
        n = sum(math.prod(s.shape) for i, s in enumerate(info.blobs)
                if s.learnable and i not in info.shared_from)
        rows.append({"name": info.node.name, "type": info.node.type,
                     "tops": {net.caffe_graph.blob_of[t]: list(s)
                              for t, s in zip(info.node.tops, info.top_shapes)},
                     "params": int(n)})
    return rows


def count_params(net: CaffeNet) -> int:
    """Learnable parameters, shared ones counted once."""
    return int(sum(p.numel() for p in net.parameters()))
