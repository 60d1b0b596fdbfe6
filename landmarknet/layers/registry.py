"""The layer registry: one converter per Caffe type, from a layer's spec to a torch module.

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

if TYPE_CHECKING:
    from landmarknet.graph import Graph, Node

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


@dataclass(frozen=True)
class Registration:
    """A registered layer type: its converter and what the docs say of it."""

    type: str
    converter: Converter
    family: str
    origin: str  # "BVLC Caffe" or the fork it comes from
    summary: str


_REGISTRY: dict[str, Registration] = {}


def register(type_name: str, *aliases: str, family: str, origin: str = "BVLC Caffe",
             ) -> Callable[[Converter], Converter]:
    """Decorator: make ``fn`` the converter of Caffe type ``type_name`` (and its aliases)."""

    def deco(fn: Converter) -> Converter:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        for name in (type_name, *aliases):
            if name in _REGISTRY and _REGISTRY[name].converter is not fn:
                raise ValueError(f"layer type {name!r} is registered twice")
            _REGISTRY[name] = Registration(name, fn, family, origin, summary)
        return fn

    return deco


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
        if info.name not in {"registry", "common"}:
            importlib.import_module(f"landmarknet.layers.{info.name}")
