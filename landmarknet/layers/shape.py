"""Blob plumbing: layers that combine, cut, reorder or reduce blobs without learned weights
(except Parameter), plus Softmax and ArgMax, BatchReindex and Filter (rows picked by another
bottom's values), and the fork layers of the same kind (Permute, ShuffleChannel, Upsample,
Interp, Axpy; brocolli's Resize, BilinearInterpolate and Unsqueeze).

Output shapes are computed in ``forward`` from the runtime bottoms with Caffe's own rules, so a
module built for one batch size runs on another; the converters apply the same rules to the
declared bottom shapes first, so bad parameters fail at build time with the layer's name.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.layers.common import canonical_axis
from landmarknet.layers.costs import FREE, PER_BOTTOM, PER_OUTPUT, CostRule, first_top
from landmarknet.layers.emitting import (EmitCall, EmitContext, copy_module, helper_source, num,
                                         tuple_text)
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, OnnxRule, register

# ---------------------------------------------------------------------------------------------
# Tool hooks: cost (analyze), box label (render), standalone code (emit), ONNX

MOVES = OnnxRule(moves_values=True)
ELTWISE_COST = CostRule(
    lambda info, training: (0, first_top(info) * (len(info.bottom_shapes) - 1)),
    "ops = output elements x (bottoms - 1)")
_REDUCTION_OPS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}
_UNPOOL_NO_ONNX = (
    "max-unpooling places each value where its mask says, the later input winning "
    "(scatter_reduce amax); torch's TorchScript ONNX exporter writes that as a graph ONNX Runtime "
    "cannot run (its If and Where nodes disagree on the shape)")


def _segnet_unpool(p: caffe_pb2.LayerParameter) -> str | None:
    """With two bottoms (SegNet's max-unpooling Upsample)."""
    return _UNPOOL_NO_ONNX if len(p.bottom) == 2 else None


def eltwise_detail(p: caffe_pb2.LayerParameter) -> str:
    """'SUM', 'PROD' or 'MAX'."""
    return ("PROD", "SUM", "MAX")[p.eltwise_param.operation]


def concat_detail(p: caffe_pb2.LayerParameter) -> str:
    """'axis 2' unless the usual channel axis."""
    ax = p.concat_param.axis
    return f"axis {ax}" if ax != 1 else ""


def emit_eltwise(ctx: EmitContext, call: EmitCall) -> list[str]:
    """A sum with coefficients, a product, or a chain of torch.where for MAX."""
    sub, ins, one = call.sub, call.ins, call.one
    if sub.operation == 1:  # SUM
        terms = [i if c == 1.0 else f"{i} * {num(c)}" for i, c in zip(ins, sub.coeffs)]
        return [f"{one} = " + " + ".join(terms)]
    if sub.operation == 0:  # PROD
        return [f"{one} = " + " * ".join(ins)]
    lines = [f"{one} = torch.where({ins[0]} > {ins[1]}, {ins[0]}, {ins[1]})"]
    for i in ins[2:]:
        lines.append(f"{one} = torch.where({i} > {one}, {i}, {one})")
    return lines


def emit_concat(ctx: EmitContext, call: EmitCall) -> list[str]:
    """torch.cat."""
    if len(call.ins) == 1:
        return [f"{call.one} = {call.x}"]
    return [f"{call.one} = torch.cat([{', '.join(call.ins)}], dim={call.sub.axis})"]


def emit_slice(ctx: EmitContext, call: EmitCall) -> list[str]:
    """torch.split at Caffe's slice points (or in equal parts)."""
    sub, x, outs = call.sub, call.x, call.outs
    if len(outs) == 1:
        return [f"{call.one} = {x}"]
    if sub.points:
        sizes = [sub.points[0]] + [b - a for a, b in zip(sub.points, sub.points[1:])]
        size_expr = "[" + ", ".join(map(str, sizes)) + \
            f", {x}.shape[{sub.axis}] - {sub.points[-1]}]"
    else:
        size_expr = f"{x}.shape[{sub.axis}] // {len(outs)}"
    return [f"{', '.join(outs)} = torch.split({x}, {size_expr}, dim={sub.axis})"]


def emit_split(ctx: EmitContext, call: EmitCall) -> list[str]:
    """Every top is the bottom."""
    return [f"{o} = {call.x}" for o in call.outs]


def emit_flatten(ctx: EmitContext, call: EmitCall) -> list[str]:
    """torch.flatten."""
    return [f"{call.one} = torch.flatten({call.x}, {call.sub.axis}, {call.sub.end_axis})"]


def emit_reshape(ctx: EmitContext, call: EmitCall) -> list[str]:
    """x.reshape with Caffe's 0 (copy) and -1 (infer) dims, axis and num_axes."""
    sub, x, ndim = call.sub, call.x, call.ndim
    start = sub.axis if sub.axis >= 0 else ndim + sub.axis + 1
    end = ndim if sub.num_axes == -1 else start + sub.num_axes
    dims = []
    if start:
        dims.append(f"*{x}.shape[:{start}]")
    for i, d in enumerate(sub.dims):
        dims.append(f"{x}.shape[{start + i}]" if d == 0 else str(d))
    if end < ndim:
        dims.append(f"*{x}.shape[{end}:]")
    return [f"{call.one} = {x}.reshape({', '.join(dims)})"]


def emit_crop(ctx: EmitContext, call: EmitCall) -> list[str]:
    """A slice of bottom 0 to the size of bottom 1 from the offsets."""
    sub, ref = call.sub, call.ins[1]
    idx = [":"] * sub.axis + [f"{o}:{o} + {ref}.shape[{sub.axis + k}]"
                              for k, o in enumerate(sub.offsets)]
    return [f"{call.one} = {call.x}[{', '.join(idx)}]"]


def emit_softmax(ctx: EmitContext, call: EmitCall) -> list[str]:
    """torch.softmax."""
    return [f"{call.one} = torch.softmax({call.x}, dim={call.sub.axis})"]


helper_source("reduction", '''
def reduction(x, operation, axis, coeff):
    """Caffe's Reduction over all axes from axis: SUM, ASUM, SUMSQ or MEAN, times coeff."""
    flat = x.reshape(*x.shape[:axis], -1)
    if operation == "ASUM":
        y = flat.abs().sum(-1)
    elif operation == "SUMSQ":
        y = (flat * flat).sum(-1)
    else:
        y = flat.sum(-1)
    if operation == "MEAN":  # Caffe divides the coefficient in float32
        coeff = float(torch.tensor(coeff, dtype=torch.float32) / flat.shape[-1])
    return y if coeff == 1.0 else y * coeff
''')
helper_source("Parameter", '''
class ParameterLayer(nn.Module):
    """Caffe's Parameter layer: a learnable blob as the top."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self):
        return self.weight
''')


def emit_reduction(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The reduction helper function."""
    sub = call.sub
    ctx.helper("reduction")
    return [f"{call.one} = reduction({call.x}, {_REDUCTION_OPS[sub.operation]!r}, {sub.axis}, "
            f"{num(sub.coeff)})"]


def emit_silence(ctx: EmitContext, call: EmitCall) -> list[str]:
    """Nothing: a comment that the bottoms are unused."""
    return [f"# ({', '.join(call.ins)} unused)"]


def emit_tile(ctx: EmitContext, call: EmitCall) -> list[str]:
    """x.repeat along the axis."""
    reps = ["1"] * call.ndim
    reps[call.sub.axis] = str(call.sub.tiles)
    return [f"{call.one} = {call.x}.repeat({', '.join(reps)})"]


def emit_parameter(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The ParameterLayer helper module."""
    ctx.helper("Parameter")
    ctx.add_module(call.module, f"ParameterLayer({tuple_text(call.sub.weight.shape)})")
    return [f"{call.one} = {call.attr}()"]


def emit_permute(ctx: EmitContext, call: EmitCall) -> list[str]:
    """x.permute."""
    return [f"{call.one} = {call.x}.permute({', '.join(map(str, call.sub.order))})"]


def emit_shuffle_channel(ctx: EmitContext, call: EmitCall) -> list[str]:
    """Reshape to (N, g, C/g, ...), swap the two, reshape back."""
    g, x = call.sub.group, call.x
    return [f"{call.one} = {x}.reshape({x}.shape[0], {g}, {x}.shape[1] // {g}, *{x}.shape[2:])"
            f".transpose(1, 2).reshape({x}.shape)"]


def emit_upsample(ctx: EmitContext, call: EmitCall) -> list[str] | None:
    """repeat_interleave by the scales; SegNet's max-unpooling Upsample copies its module."""
    sub = call.sub
    if not hasattr(sub, "scale_h"):
        return copy_module(max_unpool)(ctx, call)
    expr = call.x
    if sub.scale_h != 1:
        expr = f"{expr}.repeat_interleave({sub.scale_h}, dim=-2)"
    if sub.scale_w != 1:
        expr = f"{expr}.repeat_interleave({sub.scale_w}, dim=-1)"
    return [f"{call.one} = {expr}"]


def emit_axpy(ctx: EmitContext, call: EmitCall) -> list[str]:
    """a reshaped to (N, C, 1, ...) times x plus y."""
    a, xx, yy = call.ins
    ones = ", 1" * (len(call.info.bottom_shapes[1]) - 2)
    return [f"{call.one} = {a}.reshape({xx}.shape[0], {xx}.shape[1]{ones}) * {xx} + {yy}"]

_FAMILY = "shape"
Shape = tuple[int, ...]


# ----------------------------------------------------------------------------------------------
# fork parameters: one place that knows how they are reached
# ----------------------------------------------------------------------------------------------

def fork_param(spec: LayerSpec, field: str, fork: str):
    """The fork-specific parameter message ``field`` of the layer, or a LayerError naming it.

    Fork messages (``permute_param``, ``prior_box_param``, ``interp_param`` ...) are not BVLC
    Caffe's; they exist only when our schema declares them, so every fork layer reaches its
    parameters through here.
    """
    if field not in spec.param.DESCRIPTOR.fields_by_name:
        raise spec.error(f"landmarknet's Caffe schema has no field '{field}' ({fork}); "
                         f"declare it in landmarknet/caffe/caffe.proto to use {spec.type} layers")
    return getattr(spec.param, field)


def has_field(msg, name: str) -> bool:
    """Whether ``msg`` declares field ``name`` and the prototxt set it (repeated: non-empty)."""
    fd = msg.DESCRIPTOR.fields_by_name.get(name)
    if fd is None:
        return False
    if fd.is_repeated:
        return len(getattr(msg, name)) > 0
    return msg.HasField(name)


def field_values(msg, name: str) -> list:
    """The values of ``name`` as a list, whether the schema declares it repeated or optional."""
    fd = msg.DESCRIPTOR.fields_by_name.get(name)
    if fd is None:
        return []
    if fd.is_repeated:
        return list(getattr(msg, name))
    return [getattr(msg, name)] if msg.HasField(name) else []


def _one_top(spec: LayerSpec) -> None:
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")


def _same_rank(spec: LayerSpec, shapes: Sequence[Shape]) -> None:
    ranks = {len(s) for s in shapes}
    if len(ranks) > 1:
        raise spec.error("all bottoms must have the same number of axes, got shapes "
                         + ", ".join(str(tuple(s)) for s in shapes), shape=True)


# ----------------------------------------------------------------------------------------------
# Eltwise
# ----------------------------------------------------------------------------------------------

_PROD, _SUM, _MAX = 0, 1, 2


class Eltwise(nn.Module):
    """Elementwise SUM (with a coefficient per bottom), PROD or MAX of any number of bottoms."""

    def __init__(self, operation: int, coeffs: Sequence[float]) -> None:
        super().__init__()
        self.operation = operation
        self.coeffs = [float(c) for c in coeffs]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.operation == _SUM:
            y = None
            for x, c in zip(xs, self.coeffs):
                term = x if c == 1.0 else x * c
                y = term if y is None else y + term
            return y
        if self.operation == _PROD:
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y = y * x
            return y
        # MAX, with Caffe's tie rule (eltwise_layer.cpp): between the first two bottoms the
        # second wins unless the first is strictly larger; later bottoms win only when strictly
        # larger. torch.where sends the whole gradient to the winner, like Caffe's mask.
        y = torch.where(xs[0] > xs[1], xs[0], xs[1])
        for x in xs[2:]:
            y = torch.where(x > y, x, y)
        return y

    def extra_repr(self) -> str:
        name = {_PROD: "PROD", _SUM: "SUM", _MAX: "MAX"}[self.operation]
        return f"operation={name}" + (f", coeff={self.coeffs}" if self.operation == _SUM else "")


@register("Eltwise", family=_FAMILY, cost=ELTWISE_COST, detail=eltwise_detail,
          emit=emit_eltwise)
def eltwise(spec: LayerSpec) -> Built:
    """Elementwise SUM (coeff per bottom), PROD or MAX over two or more same-shape bottoms."""
    n = len(spec.bottom_shapes)
    if n < 2:
        raise spec.error(f"needs at least 2 bottoms, got {n}")
    _one_top(spec)
    first = tuple(spec.bottom_shapes[0])
    for s in spec.bottom_shapes[1:]:
        if tuple(s) != first:
            raise spec.error(f"all bottoms must have the same shape, got {first} and {tuple(s)}",
                             shape=True)
    ep = spec.param.eltwise_param
    op = ep.operation
    coeffs = list(ep.coeff)
    if coeffs and op != _SUM:
        raise spec.error("coeff is only allowed with operation SUM")
    if coeffs and len(coeffs) != n:
        raise spec.error(f"needs one coeff per bottom: {n} bottoms, {len(coeffs)} coeff(s)")
    return Built(Eltwise(op, coeffs or [1.0] * n))


# ----------------------------------------------------------------------------------------------
# Concat, Slice, Split
# ----------------------------------------------------------------------------------------------

class Concat(nn.Module):
    """Concatenation along one axis."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


def _legacy_axis(spec: LayerSpec, msg, legacy: str, ndim: int) -> int:
    """``axis``, or the deprecated unsigned ``concat_dim``/``slice_dim`` (never both)."""
    if msg.HasField(legacy):
        if msg.HasField("axis"):
            raise spec.error(f"give either axis or {legacy}, not both")
        axis = int(getattr(msg, legacy))
        if axis >= ndim:
            raise spec.error(f"{legacy} {axis} is out of range for a {ndim}-D bottom", shape=True)
        return axis
    return canonical_axis(msg.axis, ndim, spec)


@register("Concat", family=_FAMILY, cost=FREE, detail=concat_detail, emit=emit_concat,
          onnx=MOVES)
def concat(spec: LayerSpec) -> Built:
    """Concatenate bottoms along axis (default 1; legacy concat_dim accepted)."""
    spec.expect_bottoms(1, 1 << 30)
    _one_top(spec)
    shapes = [tuple(s) for s in spec.bottom_shapes]
    _same_rank(spec, shapes)
    axis = _legacy_axis(spec, spec.param.concat_param, "concat_dim", len(shapes[0]))
    for s in shapes[1:]:
        if any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
            raise spec.error(f"bottoms must match on every axis but {axis}, got {shapes[0]} and "
                             f"{s}", shape=True)
    return Built(Concat(axis))


class Slice(nn.Module):
    """Cut one axis at fixed points, or into equal parts."""

    def __init__(self, axis: int, points: Sequence[int], n_tops: int) -> None:
        super().__init__()
        self.axis, self.points, self.n_tops = axis, [int(p) for p in points], n_tops

    def sizes(self, extent: int) -> list[int]:
        """The extent of each top along the sliced axis."""
        if self.points:
            edges = [0, *self.points, extent]
            return [b - a for a, b in zip(edges, edges[1:])]
        return [extent // self.n_tops] * self.n_tops

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.n_tops == 1:
            return x
        return tuple(torch.split(x, self.sizes(x.shape[self.axis]), dim=self.axis))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, slice_point={self.points}, tops={self.n_tops}"


@register("Slice", family=_FAMILY, cost=FREE, emit=emit_slice, onnx=MOVES)
def slice_(spec: LayerSpec) -> Built:
    """Cut a bottom along axis at slice_point(s), or into n_tops equal parts."""
    spec.expect_bottoms(1)
    shape = tuple(spec.bottom_shapes[0])
    sp = spec.param.slice_param
    axis = _legacy_axis(spec, sp, "slice_dim", len(shape))
    extent = shape[axis]
    n = spec.n_tops
    if n < 1:
        raise spec.error("needs at least 1 top")
    points = [int(p) for p in sp.slice_point]
    if points:
        if len(points) != n - 1:
            raise spec.error(f"{len(points)} slice_point(s) give {len(points) + 1} tops, but the "
                             f"layer has {n}")
        prev = 0
        for p in points:
            if p <= prev:
                raise spec.error(f"slice_point values must be increasing and positive, got "
                                 f"{points}")
            prev = p
        if prev >= extent:
            raise spec.error(f"slice_point {prev} is not inside axis {axis} of extent {extent}",
                             shape=True)
    elif extent % n:
        raise spec.error(f"axis {axis} of extent {extent} does not split into {n} equal tops; "
                         "give slice_point", shape=True)
    return Built(Slice(axis, points, n))


class Split(nn.Module):
    """The bottom, once per top (gradients of the tops add up, as in Caffe's Split)."""

    def __init__(self, n_tops: int) -> None:
        super().__init__()
        self.n_tops = n_tops

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return x if self.n_tops == 1 else tuple(x for _ in range(self.n_tops))


@register("Split", family=_FAMILY, cost=FREE, emit=emit_split, onnx=MOVES, view=True)
def split(spec: LayerSpec) -> Built:
    """Copy one bottom to every top."""
    spec.expect_bottoms(1)
    if spec.n_tops < 1:
        raise spec.error("needs at least 1 top")
    return Built(Split(spec.n_tops))


# ----------------------------------------------------------------------------------------------
# Flatten, Reshape, Crop
# ----------------------------------------------------------------------------------------------

class Flatten(nn.Module):
    """Merge axes ``axis..end_axis`` into one."""

    def __init__(self, axis: int, end_axis: int) -> None:
        super().__init__()
        self.axis, self.end_axis = axis, end_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.axis, self.end_axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, end_axis={self.end_axis}"


@register("Flatten", family=_FAMILY, cost=FREE, emit=emit_flatten, onnx=MOVES, view=True)
def flatten(spec: LayerSpec) -> Built:
    """Merge axes axis..end_axis (default 1..-1) into one."""
    spec.expect_bottoms(1)
    _one_top(spec)
    ndim = len(spec.bottom_shapes[0])
    fp = spec.param.flatten_param
    start = canonical_axis(fp.axis, ndim, spec, "axis")
    end = canonical_axis(fp.end_axis, ndim, spec, "end_axis")
    if start > end:
        raise spec.error(f"axis ({fp.axis}) comes after end_axis ({fp.end_axis})")
    return Built(Flatten(start, end))


def reshape_top_shape(in_shape: Sequence[int], dims: Sequence[int], axis: int,
                      num_axes: int) -> Shape:
    """Caffe's ReshapeLayer::Reshape: replace bottom axes [start, end) by ``dims``.

    ``start = axis`` (negative: ``ndim + axis + 1``), ``end = ndim`` when num_axes is -1 else
    ``start + num_axes``; in ``dims`` a 0 copies the bottom extent at the same position and one
    -1 is inferred from the count. Raises ValueError with a message for bad parameters.
    """
    in_shape = [int(d) for d in in_shape]
    ndim = len(in_shape)
    dims = [int(d) for d in dims]
    if dims.count(-1) > 1:
        raise ValueError(f"shape {dims} has more than one -1")
    if any(d < -1 for d in dims):
        raise ValueError(f"shape {dims} has a dimension below -1")
    start = axis if axis >= 0 else ndim + axis + 1
    if not 0 <= start <= ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}-D bottom")
    if num_axes < -1:
        raise ValueError(f"num_axes must be >= -1, got {num_axes}")
    end = ndim if num_axes == -1 else start + num_axes
    if end > ndim:
        raise ValueError(f"axis {axis} with num_axes {num_axes} goes past the bottom's {ndim} "
                         "axes")
    top = in_shape[:start] + dims + in_shape[end:]
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ValueError(f"shape dim {i} is 0 (copy) but the bottom has no axis "
                                 f"{start + i}")
            top[start + i] = in_shape[start + i]
    total = math.prod(in_shape)
    if -1 in dims:
        pos = start + dims.index(-1)
        known = math.prod(d for j, d in enumerate(top) if j != pos)
        if known == 0 or total % known:
            raise ValueError(f"cannot infer the -1 of shape {dims} from bottom {tuple(in_shape)} "
                             f"({total} elements)")
        top[pos] = total // known
    if math.prod(top) != total:
        raise ValueError(f"shape {tuple(top)} has {math.prod(top)} elements but the bottom "
                         f"{tuple(in_shape)} has {total}")
    return tuple(top)


class Reshape(nn.Module):
    """Caffe's Reshape (0 copies a dim, -1 infers one, axis/num_axes pick the replaced range)."""

    def __init__(self, dims: Sequence[int], axis: int, num_axes: int) -> None:
        super().__init__()
        self.dims, self.axis, self.num_axes = [int(d) for d in dims], axis, num_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(reshape_top_shape(x.shape, self.dims, self.axis, self.num_axes))

    def extra_repr(self) -> str:
        return f"shape={self.dims}, axis={self.axis}, num_axes={self.num_axes}"


@register("Reshape", family=_FAMILY, cost=FREE, emit=emit_reshape, onnx=MOVES, view=True)
def reshape(spec: LayerSpec) -> Built:
    """Change the shape (0 = copy a dim, -1 = infer one; axis/num_axes select the range)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    rp = spec.param.reshape_param
    dims = [int(d) for d in rp.shape.dim]
    try:
        reshape_top_shape(spec.bottom_shapes[0], dims, rp.axis, rp.num_axes)
    except ValueError as exc:
        raise spec.error(str(exc), shape=True) from None
    return Built(Reshape(dims, rp.axis, rp.num_axes))


class Crop(nn.Module):
    """Crop bottom 0 to bottom 1's extent on the axes from ``axis``, at the given offsets."""

    def __init__(self, axis: int, offsets: Sequence[int]) -> None:
        super().__init__()
        self.axis, self.offsets = axis, [int(o) for o in offsets]

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        for i in range(self.axis, x.dim()):
            x = x.narrow(i, self.offsets[i - self.axis], ref.shape[i])
        return x

    def extra_repr(self) -> str:
        return f"axis={self.axis}, offsets={self.offsets}"


@register("Crop", family=_FAMILY, cost=FREE, emit=emit_crop, onnx=MOVES)
def crop(spec: LayerSpec) -> Built:
    """Crop bottom 0 to bottom 1's shape from axis (default 2), offsets: none, one, or per axis."""
    spec.expect_bottoms(2)
    _one_top(spec)
    big, ref = (tuple(s) for s in spec.bottom_shapes)
    if len(big) != len(ref):
        raise spec.error(f"both bottoms need the same number of axes, got {big} and {ref}",
                         shape=True)
    cp = spec.param.crop_param
    axis = canonical_axis(cp.axis, len(big), spec, "axis")
    n_crop = len(big) - axis
    given = [int(o) for o in cp.offset]
    if len(given) == 0:
        offsets = [0] * n_crop
    elif len(given) == 1:
        offsets = given * n_crop
    elif len(given) == n_crop:
        offsets = given
    else:
        raise spec.error(f"give 0, 1 or {n_crop} offsets (one per cropped axis), got "
                         f"{len(given)}")
    for i in range(axis, len(big)):
        if big[i] - offsets[i - axis] < ref[i]:
            raise spec.error(f"axis {i}: offset {offsets[i - axis]} + extent {ref[i]} exceeds "
                             f"the bottom's {big[i]}", shape=True)
    return Built(Crop(axis, offsets))


# ----------------------------------------------------------------------------------------------
# Softmax, Reduction, ArgMax
# ----------------------------------------------------------------------------------------------

class Softmax(nn.Module):
    """Softmax along one axis."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@register("Softmax", family=_FAMILY, cost=PER_OUTPUT, emit=emit_softmax,
          onnx=OnnxRule(saturating=True))
def softmax(spec: LayerSpec) -> Built:
    """Softmax along axis (default 1)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    axis = canonical_axis(spec.param.softmax_param.axis, len(spec.bottom_shapes[0]), spec)
    return Built(Softmax(axis))


_R_SUM, _R_ASUM, _R_SUMSQ, _R_MEAN = 1, 2, 3, 4


class Reduction(nn.Module):
    """SUM / ASUM / SUMSQ / MEAN over all axes from ``axis``, times coeff; top = shape[:axis]."""

    def __init__(self, operation: int, axis: int, coeff: float) -> None:
        super().__init__()
        self.operation, self.axis, self.coeff = operation, axis, float(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:self.axis], -1)
        if self.operation == _R_ASUM:
            y = flat.abs().sum(-1)
        elif self.operation == _R_SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            y = flat.sum(-1)
        coeff = self.coeff
        if self.operation == _R_MEAN:
            # reduction_layer.cpp: coeff_ /= dim_, in the blob's float precision.
            coeff = float(np.float32(coeff) / np.float32(flat.shape[-1]))
        return y if coeff == 1.0 else y * coeff

    def extra_repr(self) -> str:
        name = {_R_SUM: "SUM", _R_ASUM: "ASUM", _R_SUMSQ: "SUMSQ", _R_MEAN: "MEAN"}[self.operation]
        return f"operation={name}, axis={self.axis}, coeff={self.coeff}"


@register("Reduction", family=_FAMILY, cost=PER_BOTTOM, emit=emit_reduction)
def reduction(spec: LayerSpec) -> Built:
    """SUM, ASUM, SUMSQ or MEAN over all axes from axis (default 0), times coeff."""
    spec.expect_bottoms(1)
    _one_top(spec)
    rp = spec.param.reduction_param
    axis = canonical_axis(rp.axis, len(spec.bottom_shapes[0]), spec)
    if rp.operation not in (_R_SUM, _R_ASUM, _R_SUMSQ, _R_MEAN):
        raise spec.error(f"unknown reduction operation {rp.operation}")
    return Built(Reduction(rp.operation, axis, rp.coeff))


def _topk_caffe(x: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along ``dim`` ordered as std::greater on (value, index): ties, larger index first."""
    n = x.shape[dim]
    flipped = torch.flip(x, dims=(dim,))
    vals, idx = torch.sort(flipped, dim=dim, descending=True, stable=True)
    vals, idx = vals.narrow(dim, 0, k), idx.narrow(dim, 0, k)
    return vals, (n - 1) - idx


class ArgMax(nn.Module):
    """Indices (and/or values) of the top_k largest entries, with Caffe's output layout."""

    def __init__(self, top_k: int, out_max_val: bool, axis: int | None) -> None:
        super().__init__()
        self.top_k, self.out_max_val, self.axis = top_k, out_max_val, axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()  # Caffe's ArgMax has no backward
        if self.axis is not None:
            vals, idx = _topk_caffe(x, self.top_k, self.axis)
            return vals if self.out_max_val else idx.to(x.dtype)
        n = x.shape[0]
        vals, idx = _topk_caffe(x.reshape(n, -1), self.top_k, 1)
        parts = [idx.to(x.dtype)] + ([vals] if self.out_max_val else [])
        y = torch.stack(parts, dim=1)  # (N, 1 or 2, top_k)
        # argmax_layer.cpp: max(ndim, 3) axes, (N, 1|2, top_k, 1, ...).
        return y.reshape(n, len(parts), self.top_k, *([1] * (max(x.dim(), 3) - 3)))

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, out_max_val={self.out_max_val}, axis={self.axis}"


@register("ArgMax", family=_FAMILY, cost=PER_OUTPUT, emit=copy_module(_topk_caffe),
          onnx=OnnxRule(saturating=True, not_exportable=(
              "Caffe's order of tied values (the larger index first) needs a stable sort, which "
              "torch's ONNX exporter cannot write (aten::sort with stable=True)")))
def argmax(spec: LayerSpec) -> Built:
    """Top-k indices (or values with out_max_val) along axis, or per sample when axis is unset."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    ap = spec.param.argmax_param
    k = ap.top_k
    if k < 1:
        raise spec.error("top_k must be at least 1")
    if ap.HasField("axis"):
        axis = canonical_axis(ap.axis, len(shape), spec)
        if k > shape[axis]:
            raise spec.error(f"top_k {k} exceeds the extent {shape[axis]} of axis {axis}",
                             shape=True)
        return Built(ArgMax(k, ap.out_max_val, axis))
    per_sample = math.prod(shape[1:])
    if k > per_sample:
        raise spec.error(f"top_k {k} exceeds the {per_sample} values per sample", shape=True)
    return Built(ArgMax(k, ap.out_max_val, None))


# ----------------------------------------------------------------------------------------------
# Silence, Tile, Parameter
# ----------------------------------------------------------------------------------------------

class Silence(nn.Module):
    """Consumes its bottoms and produces nothing."""

    def forward(self, *xs: torch.Tensor) -> tuple:
        return ()


@register("Silence", family=_FAMILY, cost=FREE, emit=emit_silence, onnx=MOVES, view=True)
def silence(spec: LayerSpec) -> Built:
    """Swallow bottoms so that they are not net outputs; no tops."""
    spec.expect_bottoms(1, 1 << 30)
    if spec.n_tops != 0:
        raise spec.error(f"has no tops, got {spec.n_tops}")
    return Built(Silence())


class Tile(nn.Module):
    """Repeat the whole block from ``axis`` on ``tiles`` times along ``axis``."""

    def __init__(self, axis: int, tiles: int) -> None:
        super().__init__()
        self.axis, self.tiles = axis, tiles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(*reps)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, tiles={self.tiles}"


@register("Tile", family=_FAMILY, cost=FREE, emit=emit_tile)
def tile(spec: LayerSpec) -> Built:
    """Repeat the bottom tiles times along axis (numpy.tile on one axis)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    tp = spec.param.tile_param
    axis = canonical_axis(tp.axis, len(spec.bottom_shapes[0]), spec)
    if tp.tiles < 1:
        raise spec.error(f"tiles must be positive, got {tp.tiles}")
    return Built(Tile(axis, tp.tiles))


class Parameter(nn.Module):
    """A learnable blob, output as the layer's top."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape))

    def forward(self) -> torch.Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


@register("Parameter", family=_FAMILY, cost=FREE, emit=emit_parameter)
def parameter(spec: LayerSpec) -> Built:
    """A learnable blob of parameter_param.shape as the top (initialised to 0, as Caffe does)."""
    spec.expect_bottoms(0)
    _one_top(spec)
    shape = tuple(int(d) for d in spec.param.parameter_param.shape.dim)
    if any(d < 1 for d in shape):
        raise spec.error(f"parameter_param.shape must have positive dims, got {list(shape)}")
    module = Parameter(shape)
    return Built(module, [BlobSlot("weight", shape, None)])


# ----------------------------------------------------------------------------------------------
# fork layers: Permute (SSD), ShuffleChannel, Upsample, Interp (PSPNet), Axpy (SENet)
# ----------------------------------------------------------------------------------------------

class Permute(nn.Module):
    """Reorder the axes."""

    def __init__(self, order: Sequence[int]) -> None:
        super().__init__()
        self.order = [int(o) for o in order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.order)

    def extra_repr(self) -> str:
        return f"order={self.order}"


@register("Permute", family=_FAMILY, origin="SSD (weiliu89/caffe)", cost=FREE,
          emit=emit_permute, onnx=MOVES)
def permute(spec: LayerSpec) -> Built:
    """Reorder axes by permute_param.order; axes left out follow in increasing order."""
    spec.expect_bottoms(1)
    _one_top(spec)
    pp = fork_param(spec, "permute_param", "SSD")
    ndim = len(spec.bottom_shapes[0])
    order: list[int] = []
    for o in pp.order:
        if not 0 <= o < ndim:
            raise spec.error(f"order {o} is out of range for a {ndim}-D bottom", shape=True)
        if o in order:
            raise spec.error(f"order {list(pp.order)} repeats axis {o}")
        order.append(int(o))
    order += [i for i in range(ndim) if i not in order]
    return Built(Permute(order))


# CTPN's Caffe (tianzhi0549/CTPN) has its own Transpose and Reverse around its Lstm layers.
_CTPN = "CTPN (tianzhi0549/CTPN's Caffe)"


def transpose_detail(p: caffe_pb2.LayerParameter) -> str:
    """'(3, 2, 0, 1)': the bottom axis each top axis takes."""
    return "(" + ", ".join(str(d) for d in p.transpose_param.dim) + ")"


@register("Transpose", family=_FAMILY, origin=_CTPN, cost=FREE, detail=transpose_detail,
          emit=emit_permute, onnx=MOVES)
def transpose(spec: LayerSpec) -> Built:
    """Top axis i is bottom axis transpose_param.dim(i) (a Permute that names every axis)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    dims = [int(d) for d in fork_param(spec, "transpose_param", "CTPN").dim]
    ndim = len(spec.bottom_shapes[0])
    if len(dims) != ndim:  # the fork CHECKs this
        raise spec.error(f"transpose_param has {len(dims)} dim value(s) for a {ndim}-D bottom "
                         f"{list(spec.bottom_shapes[0])}; give one per axis", shape=True)
    if sorted(dims) != list(range(ndim)):
        # the fork would write some top elements twice and leave others unwritten
        raise spec.error(f"transpose_param.dim {dims} must name each axis 0..{ndim - 1} once")
    return Built(Permute(dims))


class Reverse(nn.Module):
    """The elements in reverse order along one axis."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, (self.axis,))

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


def emit_reverse(ctx: EmitContext, call: EmitCall) -> list[str]:
    """torch.flip."""
    return [f"{call.one} = torch.flip({call.x}, ({call.sub.axis},))"]


@register("Reverse", family=_FAMILY, origin=_CTPN, cost=FREE,
          detail=lambda p: f"axis {p.reverse_param.axis}", emit=emit_reverse, onnx=MOVES)
def reverse(spec: LayerSpec) -> Built:
    """The bottom in reverse order along reverse_param.axis (default 0: the time axis)."""
    if len(spec.bottom_shapes) != 1:
        raise spec.error(f"needs 1 bottom, got {len(spec.bottom_shapes)} (CTPN's Reverse takes "
                         "one; a second bottom of sequence lengths belongs to other forks' "
                         "Reverse, which landmarknet does not implement)")
    _one_top(spec)
    axis = int(fork_param(spec, "reverse_param", "CTPN").axis)
    ndim = len(spec.bottom_shapes[0])
    if not 0 <= axis < ndim:  # the fork CHECKs 0 <= axis < num_axes (no negative axes)
        raise spec.error(f"reverse_param.axis {axis} is not an axis of the {ndim}-D bottom "
                         f"{list(spec.bottom_shapes[0])} (0..{ndim - 1})", shape=True)
    return Built(Reverse(axis))


class ShuffleChannel(nn.Module):
    """Channels read as a (group, C/group) matrix are written transposed."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        rest = x.shape[2:]
        return x.reshape(n, self.group, c // self.group, *rest).transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"group={self.group}"


@register("ShuffleChannel", family=_FAMILY, origin="ShuffleNet Caffe forks (read by OpenCV DNN)",
          cost=FREE, emit=emit_shuffle_channel)
def shuffle_channel(spec: LayerSpec) -> Built:
    """ShuffleNet channel shuffle: out channel j*group + i = in channel i*(C/group) + j."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    group = int(fork_param(spec, "shuffle_channel_param", "ShuffleNet forks").group)
    if len(shape) < 2:
        raise spec.error(f"needs a bottom with a channel axis, got shape {shape}", shape=True)
    if group < 1 or shape[1] % group:
        raise spec.error(f"{shape[1]} channels do not split into {group} groups", shape=True)
    return Built(ShuffleChannel(group))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by integer factors: ``y[h, w] = x[h // sh, w // sw]``."""

    def __init__(self, scale_h: int, scale_w: int) -> None:
        super().__init__()
        self.scale_h, self.scale_w = scale_h, scale_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.repeat_interleave(self.scale_h, dim=-2) if self.scale_h != 1 else x
        return y.repeat_interleave(self.scale_w, dim=-1) if self.scale_w != 1 else y

    def extra_repr(self) -> str:
        return f"scale=({self.scale_h}, {self.scale_w})"


@register("Upsample", family=_FAMILY, cost=FREE, emit=emit_upsample,
          onnx=OnnxRule(refuses=_segnet_unpool),
          origin="YOLOv3 Caffe forks and brocolli (nearest, one bottom); SegNet (max-unpooling, "
                 "two bottoms)")
def upsample(spec: LayerSpec) -> Built:
    """Nearest-neighbour by upsample_param.scale (1 bottom), or SegNet max-unpooling (2 bottoms)."""
    up = fork_param(spec, "upsample_param", "YOLOv3/SegNet Caffe forks")
    if len(spec.bottom_shapes) == 2:
        return _segnet_upsample(spec, up)
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    for name in ("upsample_h", "upsample_w", "pad_out_h", "pad_out_w"):
        if has_field(up, name):
            raise spec.error(f"upsample_param.{name} belongs to SegNet's max-unpooling Upsample, "
                             "which needs the pooling mask as a second bottom")
    dims_num = int(up.dims_num)
    if dims_num not in (3, 4):
        raise spec.error(f"dims_num must be 3 or 4 (brocolli's upsample_layer.cpp), got "
                         f"{dims_num}")
    if len(shape) != dims_num:
        raise spec.error(f"dims_num {dims_num} needs a {dims_num}-D bottom, got {shape}",
                         shape=True)
    scale = int(up.scale)  # the schema's default when absent
    sh = int(up.scale_h) if has_field(up, "scale_h") else scale
    sw = int(up.scale_w) if has_field(up, "scale_w") else scale
    if dims_num == 3:
        if has_field(up, "scale_h") or has_field(up, "scale_w"):
            raise spec.error("dims_num 3 upsamples the last axis only: give scale, not "
                             "scale_h/scale_w")
        sh = 1  # (N, C, W): only W grows; Upsample's height axis is then C, left alone
    if sh < 1 or sw < 1:
        raise spec.error(f"scale must be a positive integer, got ({sh}, {sw})")
    return Built(Upsample(sh, sw))


def max_unpool(x: torch.Tensor, mask: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Write each x[n, c, i] at flat position mask[n, c, i] of an (out_h, out_w) zero plane.

    As in SegNet's and brocolli's loops, when two inputs name the same position the later one
    (in row-major order) wins; and, as in their backward, every input receives the gradient of
    the position it names, overwritten or not.
    """
    n, c = x.shape[:2]
    plane = out_h * out_w
    src = x.reshape(n, c, -1)
    idx = mask.detach().reshape(n, c, -1).to(torch.long)  # static_cast<int>: truncation
    if idx.device.type != "meta" and idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= plane:
            raise ValueError(f"unpooling index {lo if lo < 0 else hi} is outside the "
                             f"{out_h}x{out_w} output (check the pooling layer and the scale)")
    order = torch.arange(src.shape[-1], device=x.device).expand_as(idx)
    winner = torch.full((n, c, plane), -1, dtype=torch.long, device=x.device)
    winner.scatter_reduce_(2, idx, order, reduce="amax", include_self=True)
    chosen = src.detach().gather(2, winner.clamp(min=0))
    value = torch.where(winner >= 0, chosen, torch.zeros_like(chosen))
    routed = torch.zeros((n, c, plane), dtype=x.dtype, device=x.device).scatter_add(2, idx, src)
    # value carries the numbers, routed the gradient; routed - routed.detach() is exactly 0.
    return (value + (routed - routed.detach())).reshape(n, c, out_h, out_w)


class MaxUnpool(nn.Module):
    """SegNet's two-bottom Upsample / brocolli's MaxUnPool: values placed by a pooling mask."""

    def __init__(self, size: tuple[int, int] | None, scale: tuple[int, int] = (1, 1),
                 pad_out: tuple[bool, bool] = (False, False)) -> None:
        super().__init__()
        self.size, self.scale, self.pad_out = size, scale, pad_out

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """The output (height, width): fixed, or scale * input minus the pad_out row/column."""
        if self.size is not None:
            return self.size
        return (h * self.scale[0] - int(self.pad_out[0]), w * self.scale[1] - int(self.pad_out[1]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        oh, ow = self.out_size(int(x.shape[2]), int(x.shape[3]))
        return max_unpool(x, mask, oh, ow)

    def extra_repr(self) -> str:
        return (f"size={self.size}" if self.size is not None
                else f"scale={self.scale}, pad_out={self.pad_out}")


def _unpool_bottoms(spec: LayerSpec) -> tuple[int, ...]:
    spec.expect_bottoms(2)
    _one_top(spec)
    x, m = (tuple(s) for s in spec.bottom_shapes)
    if len(x) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got {x}", shape=True)
    if x != m:
        raise spec.error(f"the mask (bottom 1) must have the shape of bottom 0, got {m} and {x}",
                         shape=True)
    return x


def _segnet_upsample(spec: LayerSpec, up) -> Built:
    """upsample_layer.cpp of caffe-segnet: upsample_h/_w, else scale (or scale_h/_w) - pad_out."""
    _unpool_bottoms(spec)
    if has_field(up, "upsample_h") or has_field(up, "upsample_w"):
        if not (has_field(up, "upsample_h") and has_field(up, "upsample_w")):
            raise spec.error("upsample_h and upsample_w must be given together")
        if up.upsample_h <= 1 or up.upsample_w <= 1:
            raise spec.error("upsample_h and upsample_w must be greater than 1")
        return Built(MaxUnpool((int(up.upsample_h), int(up.upsample_w))))
    if has_field(up, "scale_h") != has_field(up, "scale_w"):
        raise spec.error("scale_h and scale_w must be given together")
    if has_field(up, "scale_h"):
        if has_field(up, "scale"):
            raise spec.error("give scale or scale_h/scale_w, not both (SegNet's Caffe refuses)")
        scale = (int(up.scale_h), int(up.scale_w))
    else:
        scale = (int(up.scale), int(up.scale))
    if min(scale) <= 1:
        raise spec.error(f"scale must be greater than 1, got {scale}")
    pad_out = (bool(up.pad_out_h), bool(up.pad_out_w))
    for on, s, name in ((pad_out[0], scale[0], "pad_out_h"), (pad_out[1], scale[1], "pad_out_w")):
        if on and s != 2:
            raise spec.error(f"{name} needs a scale of 2 on its axis, got {s}")
    return Built(MaxUnpool(None, scale, pad_out))


@register("MaxUnPool", family=_FAMILY, origin="brocolli (inisis/caffe)", cost=FREE,
          emit=copy_module(max_unpool), onnx=OnnxRule(not_exportable=_UNPOOL_NO_ONNX))
def max_unpool_layer(spec: LayerSpec) -> Built:
    """Max-unpooling into a fixed dst_h x dst_w plane by a pooling mask (bottom 1)."""
    _unpool_bottoms(spec)
    p = fork_param(spec, "max_unpool_param", "brocolli")
    if not (has_field(p, "dst_h") and has_field(p, "dst_w")):
        raise spec.error("max_unpool_param needs dst_h and dst_w")
    if p.dst_h < 1 or p.dst_w < 1:
        raise spec.error("dst_h and dst_w must be positive")
    return Built(MaxUnpool((int(p.dst_h), int(p.dst_w))))


class PixelShuffle(nn.Module):
    """Depth to space: channel p*r*r + i*r + j becomes the (i, j) sub-pixel of channel p."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.factor}"


@register("PixelShuffle", family=_FAMILY, origin="brocolli (inisis/caffe)", cost=FREE,
          emit=copy_module())
def pixel_shuffle(spec: LayerSpec) -> Built:
    """Depth to space by pixelshuffle_param.upscale_factor r: (N, C*r*r, H, W) -> (N, C, rH, rW)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    p = fork_param(spec, "pixelshuffle_param", "brocolli")
    if not has_field(p, "upscale_factor") or p.upscale_factor < 1:
        raise spec.error("pixelshuffle_param.upscale_factor must be given and positive")
    r = int(p.upscale_factor)
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got {shape}", shape=True)
    if shape[1] % (r * r):
        # pixelshuffle_layer.cpp checks only C % r, then reads past the end when C % r^2 != 0.
        raise spec.error(f"{shape[1]} channels are not a multiple of upscale_factor^2 = {r * r}",
                         shape=True)
    return Built(PixelShuffle(r))


class Pad(nn.Module):
    """Pad (or, with all four pads negative, crop) the last two axes."""

    def __init__(self, pads: tuple[int, int, int, int], mode: str, value: float) -> None:
        super().__init__()
        self.pads, self.mode, self.value = pads, mode, float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, d, l, r = self.pads
        if u < 0:  # all negative: pad_layer.cpp crops |pad| from each side
            return x[:, :, -u:x.shape[2] + d, -l:x.shape[3] + r]
        if self.mode == "constant":
            return F.pad(x, (l, r, u, d), mode="constant", value=self.value)
        return F.pad(x, (l, r, u, d), mode=self.mode)

    def extra_repr(self) -> str:
        return f"pads(u,d,l,r)={self.pads}, mode={self.mode}, value={self.value}"


_PAD_MODES = {0: "constant", 1: "replicate", 2: "reflect"}


@register("Pad", family=_FAMILY, origin="brocolli (inisis/caffe)", cost=FREE,
          emit=copy_module())
def pad(spec: LayerSpec) -> Built:
    """Pad H and W by pad_u/pad_d/pad_l/pad_r (CONSTANT, REPLICATE, REFLECT); all < 0 crops."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got {shape}", shape=True)
    p = fork_param(spec, "pad_param", "brocolli")
    pads = (int(p.pad_u), int(p.pad_d), int(p.pad_l), int(p.pad_r))
    negative = [v < 0 for v in pads]
    if any(negative) and not all(negative):
        raise spec.error(f"pads {pads} mix negative and non-negative values; the fork crops "
                         "only when all four are negative and writes out of bounds otherwise")
    if all(negative) and (-pads[0] - pads[1] >= shape[2] or -pads[2] - pads[3] >= shape[3]):
        raise spec.error(f"cropping {pads} leaves nothing of the {shape[2]}x{shape[3]} input",
                         shape=True)
    mode = _PAD_MODES.get(int(p.pad_type))
    if mode is None:
        raise spec.error(f"unknown pad_type {p.pad_type}")
    if mode == "reflect" and not all(negative) and (max(pads[:2]) >= shape[2]
                                                     or max(pads[2:]) >= shape[3]):
        raise spec.error(f"REFLECT padding {pads} must be smaller than the input "
                         f"{shape[2]}x{shape[3]}", shape=True)
    return Built(Pad(pads, mode, p.pad_value))


def interp_top_hw(h: int, w: int, *, zoom: int | None, shrink: int | None,
                  height: int | None, width: int | None, pad_beg: int = 0,
                  pad_end: int = 0) -> tuple[int, int]:
    """Output (height, width) of PSPNet's InterpLayer::Reshape, in its order of precedence:
    shrink only, zoom only, explicit height+width, shrink then zoom. ValueError if none."""
    he, we = h + pad_beg + pad_end, w + pad_beg + pad_end
    if shrink is not None and zoom is None:
        oh, ow = (he - 1) // shrink + 1, (we - 1) // shrink + 1
    elif zoom is not None and shrink is None:
        oh, ow = he + (he - 1) * (zoom - 1), we + (we - 1) * (zoom - 1)
    elif height is not None and width is not None:
        oh, ow = height, width
    elif zoom is not None and shrink is not None:
        oh, ow = (he - 1) // shrink + 1, (we - 1) // shrink + 1
        oh, ow = oh + (oh - 1) * (zoom - 1), ow + (ow - 1) * (zoom - 1)
    else:
        raise ValueError("interp_param needs zoom_factor, shrink_factor, or height and width")
    if he <= 0 or we <= 0:
        raise ValueError(f"pads {pad_beg}, {pad_end} crop away the whole {h}x{w} input")
    if oh <= 0 or ow <= 0:
        raise ValueError(f"the output would be {oh}x{ow}")
    return int(oh), int(ow)


class Interp(nn.Module):
    """Bilinear resize with align-corners sampling of the (cropped) input (PSPNet's Interp)."""

    def __init__(self, zoom: int | None, shrink: int | None, height: int | None,
                 width: int | None, pad_beg: int, pad_end: int) -> None:
        super().__init__()
        self.zoom, self.shrink, self.height, self.width = zoom, shrink, height, width
        self.pad_beg, self.pad_end = pad_beg, pad_end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        oh, ow = interp_top_hw(h, w, zoom=self.zoom, shrink=self.shrink, height=self.height,
                               width=self.width, pad_beg=self.pad_beg, pad_end=self.pad_end)
        he, we = h + self.pad_beg + self.pad_end, w + self.pad_beg + self.pad_end
        # caffe_cpu_interp2 reads the window from (-pad_beg, -pad_beg) on BOTH axes.
        src = x[:, :, -self.pad_beg:-self.pad_beg + he, -self.pad_beg:-self.pad_beg + we]
        if (he, we) == (oh, ow):
            return src
        return F.interpolate(src, size=(oh, ow), mode="bilinear", align_corners=True)

    def extra_repr(self) -> str:
        return (f"zoom_factor={self.zoom}, shrink_factor={self.shrink}, height={self.height}, "
                f"width={self.width}, pad_beg={self.pad_beg}, pad_end={self.pad_end}")


@register("Interp", family=_FAMILY, origin="PSPNet (hszhao/PSPNet)", cost=PER_OUTPUT,
          emit=copy_module(interp_top_hw))
def interp(spec: LayerSpec) -> Built:
    """Bilinear align-corners resize by zoom_factor, shrink_factor or height/width; pads crop."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got {shape}", shape=True)
    ip = fork_param(spec, "interp_param", "PSPNet")
    opt = lambda name: int(getattr(ip, name)) if has_field(ip, name) else None  # noqa: E731
    zoom, shrink = opt("zoom_factor"), opt("shrink_factor")
    if zoom is not None and zoom < 1:
        raise spec.error(f"zoom_factor must be at least 1, got {zoom}")
    if shrink is not None and shrink < 1:
        raise spec.error(f"shrink_factor must be at least 1, got {shrink}")
    pad_beg, pad_end = int(ip.pad_beg), int(ip.pad_end)
    if pad_beg > 0 or pad_end > 0:
        raise spec.error("pad_beg and pad_end must be <= 0 (Interp only crops)")
    module = Interp(zoom, shrink, opt("height"), opt("width"), pad_beg, pad_end)
    try:
        interp_top_hw(shape[2], shape[3], zoom=zoom, shrink=shrink, height=module.height,
                      width=module.width, pad_beg=pad_beg, pad_end=pad_end)
    except ValueError as exc:
        raise spec.error(str(exc), shape=True) from None
    return Built(module)


# ----------------------------------------------------------------------------------------------
# brocolli's Resize, BilinearInterpolate and Unsqueeze (what its PyTorch converter writes for
# F.interpolate and unsqueeze). The sampling tables are worked out in the fork's own number
# types (float32 for a float net, with BilinearInterpolate's one double step) so that the
# outputs are the fork's to the bit, not merely close to torch's F.interpolate.
# ----------------------------------------------------------------------------------------------

_BROCOLLI = "brocolli (inisis/caffe)"


def resize_taps(src: int, dst: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first index, second index, first weight, second weight) along one axis of Resize.

    util_img.cpp's BiLinearResizeMat_cpu samples at ``i * (src / dst)`` (no half-pixel shift,
    no align-corners). Where the second tap would fall past the end it is dropped and the
    first weight is NOT renormalised, so the last rows/columns of an enlargement fade towards
    zero; the dropped tap here reads a valid position with weight 0.
    """
    cpu = torch.device("cpu")  # tables are numbers even while the builder works on 'meta'
    scale = (torch.tensor(float(src), dtype=dtype, device=cpu)
             / torch.tensor(float(dst), dtype=dtype, device=cpu))
    pos = torch.arange(dst, dtype=dtype, device=cpu) * scale
    base = torch.floor(pos)
    frac = pos - base
    first = base.to(torch.long)
    inside = first + 1 < src
    second = torch.where(inside, first + 1, first)
    w1 = torch.where(inside, frac.abs(), torch.zeros_like(frac))
    return first, second, (1 - frac).abs(), w1


def resize_fork(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """brocolli's bilinear Resize of the last two axes of ``x`` to (out_h, out_w)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    hi0, hi1, hw0, hw1 = resize_taps(int(x.shape[2]), out_h, dt)
    wi0, wi1, ww0, ww1 = resize_taps(int(x.shape[3]), out_w, dt)
    dev = x.device
    hi0, hi1, wi0, wi1 = (t.to(dev) for t in (hi0, hi1, wi0, wi1))
    # The fork weighs each tap by (w_h * w_w) first, then multiplies the value, and adds the
    # four terms in this order; products and sums here follow it for bit-equal results.
    weights = [(a[:, None] * b[None, :]).to(device=dev, dtype=x.dtype)
               for a in (hw0, hw1) for b in (ww0, ww1)]
    rows = [x.index_select(2, hi0), x.index_select(2, hi1)]
    taps = [r.index_select(3, c) for r in rows for c in (wi0, wi1)]
    return weights[0] * taps[0] + weights[1] * taps[1] + weights[2] * taps[2] + weights[3] * taps[3]


def resize_out_hw(h: int, w: int, size: tuple[int, int] | None,
                  scale: tuple[float, float] | None) -> tuple[int, int]:
    """Resize's output (height, width): fixed, or int(scale * input) in float32 as the fork."""
    if size is not None:
        return size
    # torch, not numpy (an emitted file carries this function too), on the CPU even while
    # the builder works under torch.device("meta")
    f32 = dict(dtype=torch.float32, device="cpu")
    return tuple(int(torch.tensor(s, **f32) * torch.tensor(float(n), **f32))
                 for s, n in zip(scale, (h, w)))


class BrocolliResize(nn.Module):
    """brocolli's Resize: bilinear, sampling at i * in/out (see ``resize_taps``)."""

    def __init__(self, size: tuple[int, int] | None, scale: tuple[float, float] | None) -> None:
        super().__init__()
        self.size, self.scale = size, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # is_pyramid_test sizes follow the bottom at every Reshape, as the fork's Reshape does.
        oh, ow = resize_out_hw(int(x.shape[2]), int(x.shape[3]), self.size, self.scale)
        return resize_fork(x, oh, ow)

    def extra_repr(self) -> str:
        return f"size={self.size}" if self.size is not None else f"scale={self.scale}"


def resize_detail(p: caffe_pb2.LayerParameter) -> str:
    """'HxW' or 'x sh, x sw' (is_pyramid_test)."""
    rp = p.resize_param
    if rp.is_pyramid_test:
        return f"bilinear x{rp.out_height_scale:g}, x{rp.out_width_scale:g}"
    return f"bilinear {rp.height}x{rp.width}"


@register("Resize", family=_FAMILY, origin=_BROCOLLI, cost=PER_OUTPUT, detail=resize_detail,
          emit=copy_module(resize_taps, resize_fork, resize_out_hw))
def resize(spec: LayerSpec) -> Built:
    """Bilinear resize to height x width, or by out_height/width_scale (is_pyramid_test)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got {shape}", shape=True)
    rp = fork_param(spec, "resize_param", "brocolli")
    size = scale = None
    if rp.is_pyramid_test:
        for name in ("out_height_scale", "out_width_scale"):
            if not has_field(rp, name):
                raise spec.error(f"resize_param.{name} is required when is_pyramid_test is "
                                 "true (the fork CHECKs it)")
        scale = (float(rp.out_height_scale), float(rp.out_width_scale))
        if not all(math.isfinite(s) and s > 0 for s in scale):
            raise spec.error(f"resize_param.out_height_scale/out_width_scale must be positive, "
                             f"got {scale}")
    else:
        for name in ("height", "width"):
            if not has_field(rp, name):
                raise spec.error(f"resize_param.{name} is required unless is_pyramid_test is "
                                 "true (the fork CHECKs it)")
        size = (int(rp.height), int(rp.width))
    oh, ow = resize_out_hw(shape[2], shape[3], size, scale)
    if oh < 1 or ow < 1:
        field_ = "out_height_scale/out_width_scale" if scale else "height/width"
        raise spec.error(f"resize_param.{field_} gives an empty {oh}x{ow} output for the "
                         f"{shape[2]}x{shape[3]} input", shape=True)
    return Built(BrocolliResize(size, scale))


def interpolate_taps(src: int, dst: int, align_corners: bool, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(low index, high index, low weight, high weight) along one axis of BilinearInterpolate.

    As bilinear_interpolate_layer.cpp: the source position is ``(i + 0.5) * src/dst - 0.5``
    (the ratio in float, the rest in double, stored back as the blob's type) or, with
    align_corners, ``i * (src-1)/(dst-1)``; clamped to [0, src-1]; the low index is its floor
    clamped to [0, src-2] and the weights are (low + 1 - pos, pos - low). A 1-pixel source
    gives low -1 with weight 0: the fork reads the element before the row there (out of
    bounds for the first one); here that tap reads a valid element, still with weight 0.
    """
    cpu = torch.device("cpu")  # tables are numbers even while the builder works on 'meta'
    ratio = (torch.tensor(float(src - 1 if align_corners else src), dtype=torch.float32,
                          device=cpu)
             / torch.tensor(float(dst - 1 if align_corners else dst), dtype=torch.float32,
                            device=cpu))
    idx = torch.arange(dst, dtype=dtype, device=cpu)
    if align_corners:
        pos = ratio.to(dtype) * idx
    else:
        pos = (ratio.double() * (idx.double() + 0.5) - 0.5).to(dtype)
    pos = torch.where(pos > src - 1, torch.full_like(pos, src - 1), pos)
    pos = torch.where(pos < 0, torch.zeros_like(pos), pos)
    low = torch.floor(pos).to(torch.long).clamp(min=0)
    low = torch.where(low > src - 2, torch.full_like(low, src - 2), low)  # -1 when src == 1
    high = low + 1
    return low.clamp(min=0), high, high.to(dtype) - pos, pos - low.to(dtype)


def interpolate_fork(x: torch.Tensor, out_h: int, out_w: int, align_corners: bool
                     ) -> torch.Tensor:
    """brocolli's BilinearInterpolate of the last two axes of ``x`` to (out_h, out_w)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    hl, hh, ha, hb = interpolate_taps(int(x.shape[2]), out_h, align_corners, dt)
    wl, wh, wa, wb = interpolate_taps(int(x.shape[3]), out_w, align_corners, dt)
    dev = x.device
    ha, hb = (t[:, None].to(device=dev, dtype=x.dtype) for t in (ha, hb))
    wa, wb = (t.to(device=dev, dtype=x.dtype) for t in (wa, wb))
    r_low, r_high = x.index_select(2, hl.to(dev)), x.index_select(2, hh.to(dev))
    wl, wh = wl.to(dev), wh.to(dev)
    # The fork's order: along the width within each of the two rows, then between the rows.
    r0 = wa * r_low.index_select(3, wl) + wb * r_low.index_select(3, wh)
    r1 = wa * r_high.index_select(3, wl) + wb * r_high.index_select(3, wh)
    return ha * r0 + hb * r1


class BilinearInterpolate(nn.Module):
    """brocolli's BilinearInterpolate to a size fixed when the net was set up."""

    def __init__(self, size: tuple[int, int], align_corners: bool) -> None:
        super().__init__()
        self.size, self.align_corners = size, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No shortcut for an unchanged size: the fork copies, then overwrites with the same
        # arithmetic, which reproduces the input exactly anyway.
        return interpolate_fork(x, self.size[0], self.size[1], self.align_corners)

    def extra_repr(self) -> str:
        return f"size={self.size}, align_corners={self.align_corners}"


def bilinear_interpolate_detail(p: caffe_pb2.LayerParameter) -> str:
    """'HxW' or 'x s', and whether corners are aligned."""
    bp = p.bilinear_interpolate_param
    if bp.HasField("scale_factor"):
        what = f"x{bp.scale_factor:g}"
    else:
        h = bp.dst_h if bp.HasField("dst_h") else "H"
        what = f"{h}x{bp.dst_w if bp.HasField('dst_w') else 'W'}"
    return what + (", align_corners" if bp.align_corners else "")


@register("BilinearInterpolate", family=_FAMILY, origin=_BROCOLLI, cost=PER_OUTPUT,
          detail=bilinear_interpolate_detail,
          emit=copy_module(interpolate_taps, interpolate_fork))
def bilinear_interpolate(spec: LayerSpec) -> Built:
    """Bilinear resize to dst_h x dst_w or by scale_factor, align_corners (default) or not."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got {shape}", shape=True)
    bp = fork_param(spec, "bilinear_interpolate_param", "brocolli")
    sized = has_field(bp, "dst_h") or has_field(bp, "dst_w")
    scaled = has_field(bp, "scale_factor")
    if sized and scaled:
        raise spec.error("bilinear_interpolate_param gives both dst_h/dst_w and scale_factor; "
                         "the fork then sets no output size at all (uninitialised): give one")
    if not sized and not scaled:
        raise spec.error("bilinear_interpolate_param needs dst_h/dst_w or scale_factor (the "
                         "fork leaves the output size uninitialised without them)")
    h, w = shape[2], shape[3]
    if sized:
        # A missing one of the two keeps the input's size on that axis.
        out = (int(bp.dst_h) if has_field(bp, "dst_h") else h,
               int(bp.dst_w) if has_field(bp, "dst_w") else w)
        field_ = "dst_h/dst_w"
    else:
        s = float(bp.scale_factor)
        if not (math.isfinite(s) and s > 0):
            raise spec.error(f"bilinear_interpolate_param.scale_factor must be positive, got {s}")
        # int(height * scale_factor) in float, once, from the shape the net is set up with.
        out = (int(np.float32(h) * np.float32(s)), int(np.float32(w) * np.float32(s)))
        field_ = "scale_factor"
    if min(out) < 1:
        raise spec.error(f"bilinear_interpolate_param.{field_} gives an empty {out[0]}x{out[1]} "
                         f"output for the {h}x{w} input", shape=True)
    align = bool(bp.align_corners)
    if align and min(out) == 1:
        raise spec.error(f"bilinear_interpolate_param.align_corners (true by default) with a "
                         f"{out[0]}x{out[1]} output: the fork divides by (size - 1) = 0 and "
                         "outputs NaN; set align_corners: false", shape=True)
    return Built(BilinearInterpolate(out, align))


class Unsqueeze(nn.Module):
    """A new axis of length 1 at ``dim`` (already made non-negative)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def unsqueeze_detail(p: caffe_pb2.LayerParameter) -> str:
    """'dim d'."""
    return f"dim {p.unsqueeze_param.dim}"


def emit_unsqueeze(ctx: EmitContext, call: EmitCall) -> list[str]:
    """x.unsqueeze(dim)."""
    return [f"{call.one} = {call.x}.unsqueeze({call.sub.dim})"]


@register("Unsqueeze", family=_FAMILY, origin=_BROCOLLI, cost=FREE, detail=unsqueeze_detail,
          emit=emit_unsqueeze, onnx=MOVES, view=True)
def unsqueeze(spec: LayerSpec) -> Built:
    """Insert an axis of length 1 at unsqueeze_param.dim (negative counts from the end + 1)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    p = fork_param(spec, "unsqueeze_param", "brocolli")
    if not has_field(p, "dim"):
        raise spec.error("unsqueeze_param.dim must be set (the fork's schema requires it)")
    n = len(shape)
    dim = int(p.dim) + n + 1 if p.dim < 0 else int(p.dim)
    if not 0 <= dim <= n:
        raise spec.error(f"unsqueeze_param.dim {p.dim} is outside [{-n - 1}, {n}] for the "
                         f"{n}-D bottom {shape}", shape=True)
    if n + 1 > 32:
        raise spec.error(f"the top would have {n + 1} axes; Caffe blobs hold at most 32",
                         shape=True)
    return Built(Unsqueeze(dim))


class Axpy(nn.Module):
    """``a * x + y`` with a per-(sample, channel) scale ``a`` of shape (N, C) or (N, C, 1, 1)."""

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = a.reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
        return scale * x + y


@register("Axpy", family=_FAMILY, origin="SENet Caffe forks (hujie's Axpy)", cost=PER_OUTPUT,
          emit=emit_axpy)
def axpy(spec: LayerSpec) -> Built:
    """F = a * X + Y: bottom 0 the scale (N, C[, 1, 1]), bottoms 1 and 2 X and Y (same shape)."""
    spec.expect_bottoms(3)
    _one_top(spec)
    a, x, y = (tuple(s) for s in spec.bottom_shapes)
    if len(x) < 2 or len(a) < 2 or a[:2] != x[:2]:
        raise spec.error(f"bottom 0 must be (N, C) of bottom 1 {x}, got {a}", shape=True)
    if len(a) == 4 and a[2:] != (1, 1):
        raise spec.error(f"a 4-D bottom 0 must be (N, C, 1, 1), got {a}", shape=True)
    if math.prod(a) != a[0] * a[1]:
        raise spec.error(f"bottom 0 must hold one scale per (sample, channel), got {a}",
                         shape=True)
    if x != y:
        raise spec.error(f"bottoms 1 and 2 must have the same shape, got {x} and {y}",
                         shape=True)
    return Built(Axpy())


# ----------------------------------------------------------------------------------------------
# BatchReindex, Filter: rows of the first axis picked by the values of another bottom
# ----------------------------------------------------------------------------------------------

class BatchReindex(nn.Module):
    """``top[i] = x[int(index[i])]`` along the first axis (batch_reindex_layer.cpp).

    Caffe CHECKs every index before the copy: ``0 <= value < N`` compared as floats (so -0.5 is
    refused although it truncates to 0), then truncates toward zero. Where the values are known
    (an eager forward on real tensors) the same test raises a LayerError. Under tracing (ONNX
    export) nothing can be checked: the exported Gather then fails in ONNX Runtime on an index
    >= N and reads from the end for a negative one (ONNX Gather accepts -N..-1).
    """

    def __init__(self, layer: str, type_: str) -> None:
        super().__init__()
        self.layer, self.type_ = layer, type_

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        idx = index.detach().reshape(-1)  # Caffe never back-propagates to the indices
        if idx.device.type != "meta" and not torch.jit.is_tracing() and idx.numel():
            bad = ~((idx >= 0) & (idx < x.shape[0]))  # NaN fails both CHECKs, as in Caffe
            if bool(bad.any()):
                first = int(torch.nonzero(bad)[0, 0])
                raise LayerError(f"index {first} of bottom 1 is {float(idx[first]):g}, outside "
                                 f"0..{x.shape[0] - 1} (the first axis of bottom 0 has "
                                 f"{x.shape[0]} rows); Caffe aborts on it (CHECK in "
                                 "check_batch_reindex)", layer=self.layer, type=self.type_)
        # index_select's gradient adds the rows of repeated indices, as Caffe's Backward_cpu.
        return x.index_select(0, idx.to(torch.int64))


def _example_index(param, index, shape, bottom_shapes, images, rng):
    """Valid row indices 0..N-1 of bottom 0 (N = ``images``) for the export check's bottom 1."""
    return rng.integers(0, max(images, 1), shape).astype(np.float32) if index == 1 else None


def _example_selector(param, index, shape, bottom_shapes, images, rng):
    """A 0/1 selector (first row kept) for the export check's last bottom: noise keeps all."""
    if index != len(param.bottom) - 1:
        return None
    values = rng.integers(0, 2, shape).astype(np.float32)
    values.reshape(-1)[:1] = 1.0
    return values


@register("BatchReindex", family=_FAMILY, cost=FREE, emit=copy_module(),
          onnx=OnnxRule(moves_values=True, example_input=_example_index))
def batch_reindex(spec: LayerSpec) -> Built:
    """Rows of bottom 0 picked, reordered or repeated by the 1-D bottom 1 (indices as floats)."""
    spec.expect_bottoms(2)
    _one_top(spec)
    data, index = (tuple(s) for s in spec.bottom_shapes)
    if len(data) < 1:
        raise spec.error(f"bottom 0 needs a first axis to index, got shape {data}", shape=True)
    if len(index) != 1:
        # BatchReindexLayer::Reshape: CHECK_EQ(1, bottom[1]->num_axes())
        raise spec.error(f"bottom 1 (the indices) must be 1-D, got shape {index}", shape=True)
    return Built(BatchReindex(spec.name, spec.type))


class Filter(nn.Module):
    """The rows of each data bottom whose selector value is non-zero, in order
    (filter_layer.cpp). The number of rows depends on the selector's values."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        *data, selector = xs
        # C's `if (value)`: every value but +-0 selects its row, NaN included.
        keep = torch.nonzero(selector.detach().reshape(-1) != 0).reshape(-1)
        # index_select's gradient puts each top row's diff back on its row, 0 elsewhere.
        outs = tuple(x.index_select(0, keep) for x in data)
        return outs[0] if len(outs) == 1 else outs


@register("Filter", family=_FAMILY, cost=FREE, emit=copy_module(),
          onnx=OnnxRule(moves_values=True, example_input=_example_selector))
def filter_(spec: LayerSpec) -> Built:
    """Rows of bottoms 0..K-1 whose selector (last bottom, (N, 1, ...)) is non-zero; K tops."""
    spec.expect_bottoms(2, 1 << 30)
    shapes = [tuple(s) for s in spec.bottom_shapes]
    *data, selector = shapes
    if spec.n_tops != len(data):
        # FilterLayer::LayerSetUp: CHECK_EQ(top.size(), bottom.size() - 1)
        raise spec.error(f"needs one top per filtered bottom ({len(data)}: every bottom but "
                         f"the last, the selector), got {spec.n_tops}")
    if len(selector) < 1 or any(d != 1 for d in selector[1:]):
        raise spec.error(f"the selector (last bottom) must be (N[, 1, ...]): one value per row, "
                         f"got shape {selector}", shape=True)
    for i, s in enumerate(data):
        if len(s) < 1 or s[0] != selector[0]:
            raise spec.error(f"bottom {i} {s} must have the selector's {selector[0]} rows in its "
                             "first axis", shape=True)
    # The rows kept depend on the selector's values, so the tops cannot be shaped on 'meta'.
    # The builder gets Caffe's own answer before any data is seen (Reshape's first_reshape_):
    # all N rows, the most there can be; a forward returns as many rows as values are non-zero.
    return Built(Filter(), top_shapes=[s for s in data])
