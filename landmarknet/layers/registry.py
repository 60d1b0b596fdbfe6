"""The layer registry: one converter per Caffe type, and everything else the project knows of it.

A type lives in one file: its ``@register`` carries the converter and, optionally, its cost
rule for ``analyze`` (MACs and other ops), its drawing detail (the parameter summary a box in
``render`` shows), its standalone-PyTorch emission for ``emit``, its ONNX export rule and its
rule for random test weights (``landmarknet.layers.random_weights``). Tools
over a built net ask the registry (``registration_of``) and keep no per-type tables.

A converter is a pure function ``(LayerSpec) -> Built``. It reads the layer's parameters and the
shapes of its bottoms and returns a module whose ``forward(*bottoms)`` returns one tensor per top
(a tuple when there are several), plus the list of Caffe blobs the module holds. Blobs are kept in
the exact shape Caffe stores them, so weight I/O needs no per-layer code.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.layers.costs import PER_OUTPUT, CostRule  # noqa: F401  (CostRule: re-exported)
from landmarknet.layers.random_weights import RandomRule

if TYPE_CHECKING:
    import numpy as np

    from landmarknet.graph import Graph, Node
    from landmarknet.layers.emitting import EmitCall, EmitContext

Shape = tuple[int, ...]


@dataclass
class LayerSpec:
    """Everything a converter may look at: the Caffe layer and the shapes flowing into it."""

    name: str
    type: str
    param: caffe_pb2.LayerParameter
    bottom_shapes: list[Shape]
    n_tops: int
    phase: str = "test"  # "train" or "test": the Caffe phase the net was built for
    source: str | None = None  # "file:line" of the layer, for error messages
    #: The filtered net and this layer's node in it when the builder makes the spec (None for a
    #: layer built on its own): for fork layers whose meaning depends on their neighbours.
    graph: Graph | None = None
    node: Node | None = None

    def error(self, message: str, *, shape: bool = False) -> LayerError:
        """A LayerError (or ShapeError) that names this layer, its type and its line."""
        from landmarknet.errors import ShapeError
        where = f" [{self.source}]" if self.source else ""
        cls = ShapeError if shape else LayerError
        return cls(message + where, layer=self.name, type=self.type)

    def expect_bottoms(self, low: int, high: int | None = None) -> None:
        """Raise a clear error unless the layer has between low and high bottoms."""
        high = low if high is None else high
        n = len(self.bottom_shapes)
        if not low <= n <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise self.error(f"needs {want} bottom(s), got {n}")


@dataclass
class BlobSlot:
    """One Caffe blob of a layer: which module tensor holds it, its shape, its filler."""

    attr: str  # attribute path inside the layer's module ("weight", "bias", "running_mean")
    shape: Shape  # Caffe's shape of the blob; the module tensor has exactly this shape
    filler: caffe_pb2.FillerParameter | None = None  # Caffe's initialiser (None: constant 0)
    learnable: bool = True  # nn.Parameter when True, buffer (statistics) when False
    #: How a weights file's blob of another shape is taken, as the layer's own Caffe code takes
    #: it (FlowNet2's DataAugmentation re-derives a mean saved at another image size): file
    #: array -> array of ``shape``, or None when it cannot be; None: another shape is a mismatch.
    adapt: Callable[[np.ndarray], "np.ndarray | None"] | None = None


@dataclass
class Built:
    """What a converter returns: the module and the Caffe blobs it owns, in Caffe's order."""

    module: nn.Module
    blobs: list[BlobSlot] = field(default_factory=list)
    #: Optional: the top shapes, for layers that cannot run on the meta device (data-dependent).
    top_shapes: list[Shape] | None = None
    #: Optional: Caffe's default loss weight for the first top (1 for loss layers).
    default_loss_weight: float = 0.0


Converter = Callable[[LayerSpec], Built]
#: The layer's LayerParameter -> a short parameter summary for its box ('MAX 3×3 /2').
DetailFn = Callable[[caffe_pb2.LayerParameter], str]
#: Forward lines for one layer (init lines and helpers go through the context), or None when
#: this configuration of the type cannot be expressed.
EmitFn = Callable[["EmitContext", "EmitCall"], "list[str] | None"]


@dataclass(frozen=True)
class OnnxRule:
    """What ``export`` needs to know of a type beyond its torch module."""

    #: Why the type cannot be exported (None: it can). Reported by docs and the test battery.
    not_exportable: str | None = None
    #: Its output can saturate under random weights (a Softmax goes one-hot), so the export
    #: check also compares the blob feeding it.
    saturating: bool = False
    #: It only moves values: the saturation walk looks through it.
    moves_values: bool = False
    #: param -> why this configuration of the type cannot be exported (None: it can); the
    #: function's docstring says when, for the docs.
    refuses: Callable[[caffe_pb2.LayerParameter], str | None] | None = None
    #: param -> True when ONNX Runtime before the opset-19 fix computes this layer wrongly.
    wrong_before_opset19: Callable[[caffe_pb2.LayerParameter], bool] | None = None
    #: Values the export check feeds a net input that is this type's bottom ``index`` instead
    #: of standard-normal noise, for bottoms with a meaning (regions: a batch index and corners
    #: inside the image). Called as ``(param, index, shape, bottom_shapes, images, rng)`` with
    #: the input's shape, the layer's bottom shapes, the number of images in the batch and a
    #: numpy Generator; returns a float32 array of ``shape``, or None for noise.
    example_input: Callable[..., "np.ndarray | None"] | None = None
    #: Why an export with a symbolic batch (``--dynamic-batch``: axis 0 of every input and
    #: output) would be wrong for this type (None: it is fine).
    fixed_batch: str | None = None


@dataclass(frozen=True)
class Registration:
    """A registered layer type: its converter, what the docs say of it, and its tool hooks."""

    type: str
    converter: Converter
    family: str
    origin: str  # "BVLC Caffe" or the fork it comes from
    summary: str
    cost: CostRule | None = None  # None: analyze reports the type as "not counted"
    detail: DetailFn | None = None  # None: the box shows the type alone
    emit: EmitFn | None = None  # None: emit cannot express it (see emit_reason)
    emit_reason: str = ""  # why the type (or some configurations of it) cannot be emitted
    onnx: OnnxRule = OnnxRule()
    view: bool = False  # tops are views of the bottom: analyze counts no memory for them
    random: RandomRule | None = None  # test weights (--random-weights); None: the default rule


_REGISTRY: dict[str, Registration] = {}


def register(type_name: str, *aliases: str, family: str, origin: str = "BVLC Caffe",
             cost: CostRule | None = None, detail: DetailFn | None = None,
             emit: EmitFn | None = None, emit_reason: str = "", onnx: OnnxRule | None = None,
             view: bool = False, random: RandomRule | None = None,
             ) -> Callable[[Converter], Converter]:
    """Decorator: make ``fn`` the converter of Caffe type ``type_name`` (and its aliases).

    The keyword hooks are optional; a type of family ``activation`` costs one op per output
    element unless it says otherwise (see ``landmarknet.layers.costs``).
    """
    if cost is None and family in _FAMILY_COSTS:
        cost = _FAMILY_COSTS[family]

    def deco(fn: Converter) -> Converter:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        for name in (type_name, *aliases):
            if name in _REGISTRY and _REGISTRY[name].converter is not fn:
                raise ValueError(f"layer type {name!r} is registered twice")
            _REGISTRY[name] = Registration(
                name, fn, family, origin, summary, cost=cost, detail=detail,
                emit=emit, emit_reason=emit_reason, onnx=onnx or OnnxRule(), view=view,
                random=random)
        return fn

    return deco


#: Cost rules that a whole family shares unless a type gives its own.
_FAMILY_COSTS: dict[str, CostRule] = {"activation": PER_OUTPUT}


def registration_of(type_name: str, param: caffe_pb2.LayerParameter | None = None,
                    ) -> Registration | None:
    """The registration of a layer: ``Python`` layers by their ``python_param`` class."""
    load_builtin_layers()
    if type_name == "Python" and param is not None:
        pp = param.python_param
        for key in (f"Python:{pp.module}.{pp.layer}", f"Python:{pp.layer}"):
            if key in _REGISTRY:
                return _REGISTRY[key]
    return _REGISTRY.get(type_name)


def registered_types() -> dict[str, Registration]:
    """All registered types (after importing the built-in layer families)."""
    load_builtin_layers()
    return dict(_REGISTRY)


def converter_for(spec: LayerSpec) -> Converter:
    """The converter of the spec's type, or a LayerError that says how to add one."""
    load_builtin_layers()
    reg = _REGISTRY.get(spec.type)
    if reg is None:
        close = difflib.get_close_matches(spec.type, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise spec.error(
            f"unknown layer type '{spec.type}'.{hint} To support it, register a converter: "
            "`@landmarknet.layers.register('" + spec.type + "', family='custom')` on a function "
            "`(LayerSpec) -> Built` (see docs/layers.md, 'Adding a layer type')."
        )
    return reg.converter


_LOADED = False


def load_builtin_layers() -> None:
    """Import the built-in layer families once so that their @register calls run."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    import landmarknet.layers as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in {"registry", "common", "costs", "emitting"}:
            importlib.import_module(f"landmarknet.layers.{info.name}")
