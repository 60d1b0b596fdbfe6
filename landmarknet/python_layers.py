"""Users' own Caffe ``Python`` layers (``caffe.Layer`` subclasses), run as they are, on request.

A prototxt's ``python_param { module: "m" layer: "L" }`` names a class that Caffe imports from
its PYTHONPATH. landmarknet never imports code because a prototxt names it; but a user who
holds that code can hand landmarknet the folders it lives in (``--python-path DIR``, or
``load_python_layers`` below), as they would set PYTHONPATH for Caffe. Each Python layer of the
net that no converter is registered for is then imported from those folders and registered as
``Python:m.L``, wrapped so that it runs inside a torch module:

* ``caffe`` is, while the module is imported, a small stand-in with pycaffe's ``Layer`` base
  class, ``TRAIN``/``TEST`` and blobs with ``data``, ``diff``, ``reshape``, ``shape``, ``count``,
  ``num``/``channels``/``height``/``width`` (what such layers use); the real pycaffe is put back
  afterwards;
* as in Caffe, ``setup`` runs once when the net is built (with ``param_str`` and ``phase`` set),
  ``reshape`` and ``forward`` on every forward pass, on float32 numpy arrays; the tops' shapes for
  shape inference come from ``setup`` + ``reshape`` on zero arrays of the bottoms' shapes;
* ``backward(top, propagate_down, bottom)`` runs in a torch autograd function, the tops'
  gradients in ``top[i].diff``, the bottoms' read back from ``bottom[i].diff`` (zero where the
  layer writes none, as for a layer whose backward is ``pass``).

The layer runs on the CPU (a net on a GPU copies its bottoms over and back), cannot be exported
to ONNX or emitted as PyTorch code (it is the user's numpy code), and an exception inside it
becomes a LayerError naming the layer and the user's message.
"""
from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from landmarknet.errors import LayerError, LandmarknetError
from landmarknet.layers.costs import FREE
from landmarknet.layers.registry import (Built, LayerSpec, OnnxRule, register,
                                         registration_of)

__all__ = ["Blob", "Layer", "load_python_layers", "caffe_stand_in"]

TRAIN, TEST = 0, 1

_NO_EXPORT = ("a user's Python layer runs its own numpy code, which has no ONNX form; export the "
              "net up to its bottoms (--outputs) and run the layer after ONNX Runtime")
_NO_EMIT = "a user's Python layer is its own numpy code"


class Blob:
    """pycaffe's Blob as Python layers use it: float32 numpy ``data`` and ``diff``."""

    def __init__(self, shape: Sequence[int] = (), data: np.ndarray | None = None) -> None:
        self.data = (np.zeros(tuple(shape), np.float32) if data is None
                     else np.ascontiguousarray(data, dtype=np.float32))
        self.diff = np.zeros_like(self.data)

    def reshape(self, *shape: int) -> None:
        """New zero data and diff of this shape (pycaffe's Blob.reshape)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob dimensions must be >= 0, got {shape}")
        if shape != self.data.shape:
            self.data = np.zeros(shape, np.float32)
            self.diff = np.zeros(shape, np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def count(self) -> int:
        return int(self.data.size)

    def _legacy(self, axis: int) -> int:
        # Blob::num() and friends: axes past the last read as 1, as in Caffe's LegacyShape.
        return self.data.shape[axis] if axis < self.data.ndim else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))


class _BlobVec(list):
    """A layer's own blobs (``self.blobs``); landmarknet refuses layers that add any."""

    def add_blob(self, *shape: int) -> None:
        self.append(Blob(shape))


class Layer:
    """pycaffe's ``caffe.Layer`` base: subclasses define setup, reshape, forward, backward."""

    def __init__(self) -> None:
        self.param_str = ""
        self.phase = TEST
        self.blobs = _BlobVec()

    def setup(self, bottom, top):  # noqa: D102 - the subclass's
        pass

    def reshape(self, bottom, top):  # noqa: D102
        pass

    def forward(self, bottom, top):  # noqa: D102
        raise NotImplementedError("forward")

    def backward(self, top, propagate_down, bottom):  # noqa: D102
        pass


def caffe_stand_in() -> types.ModuleType:
    """A module object that passes for ``caffe`` in a Python layer's ``import caffe``."""
    module = types.ModuleType("caffe", "landmarknet's stand-in for pycaffe (Python layers)")
    module.Layer, module.Blob, module.TRAIN, module.TEST = Layer, Blob, TRAIN, TEST
    return module


@contextmanager
def _stand_in_for_caffe() -> Iterator[None]:
    """``caffe`` (and ``caffe.proto``-free code) resolves to the stand-in while importing."""
    saved = {k: sys.modules[k] for k in ("caffe",) if k in sys.modules}
    sys.modules["caffe"] = caffe_stand_in()
    try:
        yield
    finally:
        sys.modules.pop("caffe", None)
        sys.modules.update(saved)


def _import_layer_class(module: str, layer: str, paths: Sequence[Path], where: str) -> type:
    """The class ``module.layer`` imported from the given folders (and nowhere else first)."""
    old_path = list(sys.path)
    sys.path[:0] = [str(p) for p in paths]
    try:
        with _stand_in_for_caffe():
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                raise LandmarknetError(
                    f"{where}: Python layer module {module!r} not found in "
                    f"{', '.join(map(str, paths))} ({exc})") from None
            except Exception as exc:  # the user's module failed while importing
                raise LandmarknetError(f"{where}: importing Python layer module {module!r} "
                                       f"failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path[:] = old_path
    cls = getattr(mod, layer, None)
    if not isinstance(cls, type):
        raise LandmarknetError(f"{where}: module {module!r} ({getattr(mod, '__file__', '?')}) "
                               f"has no class {layer!r}")
    return cls


def load_python_layers(graph, paths: Iterable[str | Path]) -> list[str]:
    """Register every Python layer of ``graph`` that nothing handles yet, from ``paths``.

    Returns the registered names (``Python:module.layer``). Call before building the net
    (``landmarknet.build.build_from_graph``); the CLI does it for ``--python-path``.
    """
    folders = [Path(p) for p in paths]
    for folder in folders:
        if not folder.is_dir():
            raise LandmarknetError(f"--python-path {folder}: no such folder")
    done: list[str] = []
    for node in graph.nodes:
        if node.type != "Python":
            continue
        reg = registration_of("Python", node.param)
        if reg is not None and reg.type != "Python":
            continue  # a built-in or already registered class
        pp = node.param.python_param
        key = f"Python:{pp.module}.{pp.layer}"
        where = f"layer '{node.name}'" + (f" [{node.source}]" if node.source else "")
        cls = _import_layer_class(pp.module, pp.layer, folders, where)
        register(key, family="custom",
                 origin=f"user Python layer ({cls.__module__}.{cls.__qualname__})", cost=FREE,
                 emit_reason=_NO_EMIT, onnx=OnnxRule(not_exportable=_NO_EXPORT))(
            _converter_for(cls))
        done.append(key)
    return done


def _converter_for(cls: type):
    def convert(spec: LayerSpec) -> Built:
        module = PythonLayer(spec, cls)
        return Built(module, top_shapes=module.top_shapes)
    convert.__doc__ = f"The user's caffe.Layer {cls.__qualname__}, run on numpy arrays."
    return convert


def _call(layer_name: str, what: str, fn, *args) -> None:
    """A call into the user's layer; its exceptions become a LayerError naming the layer."""
    try:
        fn(*args)
    except LandmarknetError:
        raise
    except Exception as exc:
        raise LayerError(f"the Python layer's {what}() raised {type(exc).__name__}: {exc}",
                         layer=layer_name, type="Python") from exc


class PythonLayer(nn.Module):
    """A user's caffe.Layer instance, set up once, reshaped and run on each forward."""

    def __init__(self, spec: LayerSpec, cls: type) -> None:
        super().__init__()
        self.layer_name, self.n_tops = spec.name, spec.n_tops
        pp = spec.param.python_param
        try:
            instance = cls()
        except Exception as exc:
            raise spec.error(f"cannot create {cls.__qualname__}(): {type(exc).__name__}: "
                             f"{exc}") from None
        if not isinstance(instance, Layer):
            raise spec.error(f"{cls.__qualname__} is not a caffe.Layer subclass")
        instance.param_str = pp.param_str
        instance.phase = TRAIN if spec.phase == "train" else TEST
        self.instance = instance
        bottoms = [Blob(s) for s in spec.bottom_shapes]
        tops = [Blob() for _ in range(spec.n_tops)]
        _call(spec.name, "setup", instance.setup, bottoms, tops)
        if instance.blobs:
            raise spec.error("the Python layer adds blobs of its own (self.blobs.add_blob); "
                             "learnable Python-layer blobs are not supported")
        _call(spec.name, "reshape", instance.reshape, bottoms, tops)
        self.top_shapes = [tuple(int(d) for d in t.shape) for t in tops]

    def forward(self, *bottoms: torch.Tensor):
        first = bottoms[0] if bottoms else None
        if first is not None and first.device.type == "meta":
            outs = [torch.empty(s, device="meta") for s in self.top_shapes]
        else:
            outs = list(_RunPythonLayer.apply(self, *bottoms))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def extra_repr(self) -> str:
        cls = type(self.instance)
        return f"{cls.__module__}.{cls.__qualname__}"


class _RunPythonLayer(torch.autograd.Function):
    """reshape + forward on numpy copies; backward through the layer's own backward."""

    @staticmethod
    def forward(ctx, layer: PythonLayer, *bottoms: torch.Tensor):
        device = bottoms[0].device if bottoms else torch.device("cpu")
        blobs = [Blob(data=b.detach().cpu().float().numpy()) for b in bottoms]
        tops = [Blob() for _ in range(layer.n_tops)]
        _call(layer.layer_name, "reshape", layer.instance.reshape, blobs, tops)
        _call(layer.layer_name, "forward", layer.instance.forward, blobs, tops)
        ctx.layer, ctx.blobs, ctx.tops, ctx.device = layer, blobs, tops, device
        return tuple(torch.from_numpy(np.array(t.data, np.float32)).to(device) for t in tops)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        layer, blobs, tops = ctx.layer, ctx.blobs, ctx.tops
        for top, g in zip(tops, grads):
            top.diff = (np.zeros_like(top.data) if g is None
                        else g.detach().cpu().float().numpy().reshape(top.data.shape).copy())
        for b in blobs:
            b.diff = np.zeros_like(b.data)
        wanted = list(ctx.needs_input_grad[1:])
        _call(layer.layer_name, "backward", layer.instance.backward, tops, wanted, blobs)
        return (None, *(torch.from_numpy(np.array(b.diff, np.float32)).to(ctx.device)
                        if need else None for b, need in zip(blobs, wanted)))
