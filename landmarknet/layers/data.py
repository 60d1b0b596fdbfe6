"""Data layers (graph inputs and their shapes), DummyData, Caffe's ``Python`` layers, and the
sinks that write blobs to files in Caffe (MatWrite, HDF5Output; here they write nothing).

Data layers read from outside the net (LMDB, image lists, HDF5, memory); in landmarknet they are
graph inputs that the data pipeline feeds. Their shapes come from the prototxt where Caffe's own
reshape logic can tell them without the data (landmarknet.input_shapes, which needs no torch, so
that the graph is built without it); otherwise they must be given (--input-shape).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.fillers import fill
from landmarknet.layers.costs import FREE, CostRule
from landmarknet.layers.emitting import EmitCall, EmitContext, helper_source, num, tuple_text
from landmarknet.layers.registry import (Built, LayerSpec, OnnxRule, _REGISTRY, register,
                                         registration_of)

Shape = tuple[int, ...]

# ---------------------------------------------------------------------------------------------
# Tool hooks

helper_source("dummy_data", '''
def dummy_data(shape, kind, a, b, device):
    """Caffe's DummyData top: constant a, uniform in [a, b) or gaussian (mean a, std b) from a
    fresh default generator, as landmarknet fills it on every forward."""
    t = torch.empty(shape, device=device)
    gen = torch.Generator(device=t.device)
    if kind == "constant":
        return t.fill_(a)
    if kind == "uniform":
        return t.uniform_(a, b, generator=gen)
    return t.normal_(a, b, generator=gen)
''')


def _filler_args(fp) -> tuple[str, float, float] | None:
    """(kind, a, b) of a filler the dummy_data helper knows, else None."""
    if fp is None:
        return "constant", 0.0, 0.0
    if fp.type == "constant":
        return "constant", fp.value, 0.0
    if fp.type == "uniform":
        return "uniform", fp.min, fp.max
    if fp.type == "gaussian" and fp.sparse < 0:
        return "gaussian", fp.mean, fp.std
    return None


def emit_dummy_data(ctx: EmitContext, call: EmitCall) -> list[str] | None:
    """One dummy_data call per top (constant, uniform and gaussian fillers)."""
    lines = []
    for out, shape, fp in zip(call.outs, call.sub.shapes, call.sub.fillers):
        args = _filler_args(fp)
        if args is None:
            return None
        kind, a, b = args
        lines.append(f"{out} = dummy_data({tuple_text(shape)}, {kind!r}, {num(a)}, {num(b)}, "
                     "next(self.parameters(), torch.empty(0)).device)")
    ctx.helper("dummy_data")
    return lines


def _resolved(param):
    reg = registration_of("Python", param)
    if reg is None or reg.type == "Python":
        raise LookupError(f"Python layer {param.python_param.layer} is not registered")
    return reg


def python_detail(p: caffe_pb2.LayerParameter) -> str:
    """The Python layer's class name."""
    return p.python_param.layer


def emit_python_layer(ctx: EmitContext, call: EmitCall) -> list[str] | None:
    """The emitter of the registered class the layer names."""
    reg = _resolved(call.param)
    return reg.emit(ctx, call) if reg.emit is not None else None


def _random_fillers(p: caffe_pb2.LayerParameter) -> str | None:
    """With a random filler (gaussian, uniform ...)."""
    kinds = sorted({fp.type for fp in p.dummy_data_param.data_filler if fp.type != "constant"})
    if not kinds:
        return None
    return (f"its {', '.join(kinds)} filler would be exported as ONNX random operators, whose "
            "numbers ONNX Runtime draws itself; use constant fillers or feed the blob as an "
            "input")


PYTHON_COST = CostRule(lambda info, training: _resolved(info.node.param).cost.fn(info, training),
                       "that of the registered class it names")


class DummyData(nn.Module):
    """Caffe's DummyData: tensors of fixed shapes filled by fillers on every forward."""

    def __init__(self, shapes: list[Shape], fillers: list[caffe_pb2.FillerParameter | None]):
        super().__init__()
        self.shapes, self.fillers = shapes, fillers
        # A zero-size buffer tells forward which device the net lives on.
        self.register_buffer("anchor", torch.empty(0), persistent=False)

    def forward(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outs = []
        for shape, fp in zip(self.shapes, self.fillers):
            t = torch.empty(shape, device=self.anchor.device)
            if t.device.type != "meta":
                fill(t, fp, torch.Generator(device=t.device))
            outs.append(t)
        return outs[0] if len(outs) == 1 else tuple(outs)


@register("DummyData", family="data", cost=FREE, emit=emit_dummy_data,
          onnx=OnnxRule(refuses=_random_fillers),
          emit_reason="fillers other than constant, uniform and gaussian (not sparse)")
def dummy_data(spec: LayerSpec) -> Built:
    """Fixed-shape tensors from fillers (constant 0 by default), refilled on each forward."""
    p = spec.param.dummy_data_param
    n = spec.n_tops
    if p.shape:
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(len(v) not in (1, n) for v in legacy):
            raise spec.error("num/channels/height/width need 1 or one-per-top values each")
        shapes = [tuple(v[i if len(v) > 1 else 0] for v in legacy) for i in range(n)]
    if len(shapes) == 1:
        shapes = shapes * n
    if len(shapes) != n:
        raise spec.error(f"{n} tops but {len(shapes)} shapes")
    fillers = list(p.data_filler) or [None]
    if len(fillers) not in (1, n):
        raise spec.error(f"give 0, 1 or {n} data_filler entries, not {len(fillers)}")
    if len(fillers) == 1:
        fillers = fillers * n
    return Built(DummyData(shapes, fillers))


@register("Python", family="custom", cost=PYTHON_COST, detail=python_detail,
          emit=emit_python_layer)
def python_layer(spec: LayerSpec) -> Built:
    """A Caffe ``Python`` layer, resolved through the registry (never by importing code)."""
    pp = spec.param.python_param
    keys = [f"Python:{pp.module}.{pp.layer}", f"Python:{pp.layer}"]
    for key in keys:
        if key in _REGISTRY:
            return _REGISTRY[key].converter(spec)
    raise spec.error(
        f"Python layer {pp.module}.{pp.layer} is not registered. landmarknet never imports "
        f"modules named in a prototxt on its own: give the folder that holds {pp.module}.py "
        "with --python-path DIR (Python: load_caffe(..., python_path=[DIR])) to run the "
        f"caffe.Layer class as it is, or register a converter under '{keys[1]}' with "
        "`@landmarknet.layers.register(...)`")


# ---------------------------------------------------------------------------------------------
# MatWrite (DeepLab v2, deeplab-public-ver2 mat_write_layer.cpp): a sink without tops that
# writes each bottom to <prefix><name>_blob_<i>.mat every `period` forward passes (<name> from
# the `source` list with `strip` characters cut off its end, else iter_<k>). landmarknet does
# not write files while running a net: it accepts the layer and says so, as it does for
# DetectionOutput's save_output_param.

_DEEPLAB_ORIGIN = "DeepLab v2 (deeplab-public-ver2)"


class Sink(nn.Module):
    """Consumes its bottoms (as Caffe's writer layers do) and writes nothing."""

    def forward(self, *xs: torch.Tensor) -> tuple:
        return ()


def _sink_emitter(what: str):
    """An emitter of nothing but a comment saying what Caffe would have written."""
    def emit(ctx: EmitContext, call: EmitCall) -> list[str]:
        return [f"# {call.param.type}: {', '.join(call.ins)} not written ({what} are not "
                "produced)"]
    return emit


def _warn_sink(spec: LayerSpec, caffe_would: str) -> None:
    """The one warning of a writer layer accepted as a sink: what Caffe would write, and how
    to get the blobs instead."""
    warnings.warn(f"layer '{spec.name}' ({spec.type}): accepted as a sink that writes nothing; "
                  f"{caffe_would}, landmarknet does not. As in Caffe the blobs are consumed and "
                  "so no net outputs: ask for them by name (forward --blobs)", stacklevel=3)


def mat_write_detail(p: caffe_pb2.LayerParameter) -> str:
    """'no .mat files': the sink writes nothing here."""
    return "no .mat files"


@register("MatWrite", family="data", origin=_DEEPLAB_ORIGIN, cost=FREE, detail=mat_write_detail,
          emit=_sink_emitter(".mat files"), onnx=OnnxRule(moves_values=True), view=True)
def mat_write(spec: LayerSpec) -> Built:
    """DeepLab's .mat writer: a sink that consumes its bottoms; no files are written."""
    spec.expect_bottoms(1, 1 << 30)
    if spec.n_tops != 0:
        raise spec.error(f"has no tops, got {spec.n_tops}")
    mp = spec.param.mat_write_param
    if not mp.prefix:
        raise spec.error("mat_write_param.prefix is required (DeepLab's caffe.proto marks it "
                         "required)")
    if mp.period <= 0:
        raise spec.error(f"mat_write_param.period must be positive, got {mp.period}")
    if mp.HasField("source") and mp.strip < 0:
        raise spec.error(f"mat_write_param.strip cannot be negative, got {mp.strip}")
    bottoms = ", ".join(f"'{b}'" for b in spec.param.bottom)
    _warn_sink(spec, f"DeepLab's Caffe would write {bottoms} as .mat files under "
                     f"{mp.prefix!r}")
    return Built(Sink())



# ---------------------------------------------------------------------------------------------
# HDF5Output (BVLC hdf5_output_layer.cpp): a sink of two bottoms that writes them as the datasets
# "data" and "label" of hdf5_output_param.file_name. Caffe truncates the file when the net is
# set up and makes both datasets on the first forward; it cannot make them again in the same
# file, so a second forward of that net aborts ("Failed to make float dataset"). landmarknet
# writes nothing, as for MatWrite: a module that writes files on every forward, and fails on
# the second, serves no PyTorch user; `net.run(..., blobs=[data, label])` gives the same arrays
# to save as one likes.

def hdf5_output_detail(p: caffe_pb2.LayerParameter) -> str:
    """'no HDF5 file': the sink writes nothing here."""
    return "no HDF5 file"


@register("HDF5Output", family="data", cost=FREE, detail=hdf5_output_detail,
          emit=_sink_emitter("HDF5 files"), onnx=OnnxRule(moves_values=True), view=True)
def hdf5_output(spec: LayerSpec) -> Built:
    """Caffe's HDF5 writer of (data, label): a sink that consumes both; no file is written."""
    spec.expect_bottoms(2)
    if spec.n_tops != 0:
        raise spec.error(f"has no tops, got {spec.n_tops}")
    data, label = (tuple(s) for s in spec.bottom_shapes)
    for what, shape in (("bottom 0 (data)", data), ("bottom 1 (label)", label)):
        # Caffe copies each bottom into a blob of its legacy (num, channels, height, width).
        if not 1 <= len(shape) <= 4:
            raise spec.error(f"{what} must have 1 to 4 axes (Caffe writes it as a 4-D "
                             f"(N, C, H, W) dataset), got shape {shape}", shape=True)
    if data[0] != label[0]:
        raise spec.error(f"data and label must have the same first axis (Caffe CHECKs it), got "
                         f"{data} and {label}", shape=True)
    fname = spec.param.hdf5_output_param.file_name
    if not fname:
        raise spec.error("hdf5_output_param.file_name is required (Caffe fails to create the "
                         "file without one)")
    bottoms = ", ".join(f"'{b}'" for b in spec.param.bottom)
    _warn_sink(spec, f"Caffe would write {bottoms} as the datasets 'data' and 'label' of "
                     f"{fname!r}")
    return Built(Sink())
