"""FlowNet 2.0's layers (lmb-freiburg/flownet2, a Caffe fork; OpenCV 4.x DNN reads them too):
Correlation, Accum, FlowWarp, Resample and DataAugmentation (its TEST path).

The arithmetic follows the fork's kernels (correlation_layer.cu, accum_layer.cpp,
flow_warp_layer.cpp, resample_layer.cu, data_augmentation_layer.cu), in float32. Where OpenCV
4.x computes something else, landmarknet keeps the fork's numbers, since the fork trained the
models; the departures (checked against OpenCV 4.14 in tests/layers/test_optical_flow.py):

- Correlation: OpenCV ignores ``correlation_type`` and always multiplies (SUBTRACT is the mean
  absolute difference in the fork).
- Accum: OpenCV floors where the fork rounds up to ``size_divisible_by`` (an integer division
  before its ceil), so it never enlarges; with several bottoms and a batch over 1 it lays the
  batch out wrongly. The fork concatenates per image.
- FlowWarp: OpenCV reads no ``fill_value`` and always fills 0; the fork fills NaN for
  NOT_A_NUMBER.
- Resample: OpenCV turns it into its Resize layer (LINEAR: src = dst * in / out, no
  antialiasing; NEAREST: floor). The fork samples at dst * f + f' / 2 - 0.5 (f the axis's own
  in/out ratio, f' the OTHER axis's: the fork swaps them, and so does landmarknet), rounds half
  away from zero for NEAREST, and filters LINEAR/CUBIC with a kernel widened by the ratio when
  it shrinks (``antialias``), weights renormalised over the samples inside the image. They
  agree on NEAREST enlargement by whole factors and on unchanged sizes.
- DataAugmentation: OpenCV restarts its count at every forward, so it always subtracts the
  input's own per-channel mean (what the fork does on the first forward of a layer whose stored
  count is 0), ignores ``mean_per_pixel`` and leaves images after the first unwritten. The fork
  at TEST keeps counting from the stored count (blob 0): up to ``recompute_mean`` it folds each
  batch into the stored running mean, then subtracts the stored mean (blob 2 per channel, blob
  1 per pixel); without ``recompute_mean`` it subtracts the three ``mean`` values of the
  prototxt (when ``mean_per_pixel`` is false) or nothing.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.errors import LayerError
from landmarknet.layers.costs import CostRule, first_top
from landmarknet.layers.emitting import copy_module
from landmarknet.layers.random_weights import uniform
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, register
from landmarknet.layers.roi import _round_half_away
from landmarknet.layers.shape import fork_param, has_field

_FAMILY = "optical_flow"
_ORIGIN = "FlowNet 2.0 (lmb-freiburg/flownet2; read by OpenCV DNN)"


def _four_d(spec: LayerSpec, index: int, what: str) -> tuple[int, int, int, int]:
    """Bottom ``index`` as (N, C, H, W), or a ShapeError naming it."""
    shape = tuple(spec.bottom_shapes[index])
    if len(shape) != 4:
        raise spec.error(f"bottom {index} ({what}) must be (N, C, H, W), got {shape}", shape=True)
    return shape  # type: ignore[return-value]


def _one_top(spec: LayerSpec) -> None:
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")


def _enum_name(msg, field: str) -> str:
    """The name of an enum field's value (the schema holds only known values)."""
    fd = msg.DESCRIPTOR.fields_by_name[field]
    return fd.enum_type.values_by_number[getattr(msg, field)].name


# ----------------------------------------------------------------------------------------------
# Correlation
# ----------------------------------------------------------------------------------------------

def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _cost_volume(a: torch.Tensor, b: torch.Tensor, y0: int, x0: int, span_h: int, span_w: int,
                 dys: list[int], dxs: list[int], k: int, s1: int,
                 subtract: bool) -> torch.Tensor:
    """FlowNet's correlation on padded maps, summed over channels (the caller divides by C):
    the patch of ``a`` at (y0, x0) of span_h x span_w against ``b`` moved by every (dy, dx),
    channel i * len(dxs) + j for (dys[i], dxs[j]); k x k window means at stride s1.

    MULTIPLY runs as one batched matrix product per vertical shift: per row, every x of the
    patch against every x of b's row (N*H products of (W, C) x (C, W_padded)), the horizontal
    shifts being diagonals of those matrices. Wider than the products needed, but in BLAS:
    FlowNetC's correlation (256 channels, 48 x 64, 441 displacements) takes 26 ms on two quiet
    cores against 133 ms for the loop over displacements that SUBTRACT (not a product) still
    runs (benchmarks/bench_correlation.py).
    """
    patch = a[:, :, y0:y0 + span_h, x0:x0 + span_w]
    maps = []
    if subtract:
        for dy in dys:
            for dx in dxs:
                moved = b[:, :, y0 + dy:y0 + dy + span_h, x0 + dx:x0 + dx + span_w]
                maps.append((patch - moved).abs().sum(1, keepdim=True))
        return F.avg_pool2d(torch.cat(maps, 1), k, stride=s1)
    n, c = patch.shape[:2]
    wp = b.shape[3]
    rows_a = patch.permute(0, 2, 3, 1).reshape(n * span_h, span_w, c)
    index = (torch.arange(span_w, device=a.device)[:, None]
             + torch.tensor(dxs, device=a.device)[None, :] + x0)
    index = index.expand(n * span_h, span_w, len(dxs))
    for dy in dys:
        rows_b = b[:, :, y0 + dy:y0 + dy + span_h, :].permute(0, 2, 1, 3)
        pairs = torch.bmm(rows_a, rows_b.reshape(n * span_h, c, wp))  # (NH, W, Wp)
        diag = pairs.gather(2, index)  # (NH, W, len(dxs)): x paired with x0 + x + dx
        maps.append(diag.reshape(n, span_h, span_w, -1).permute(0, 3, 1, 2))
    return F.avg_pool2d(torch.cat(maps, 1), k, stride=s1)


class Correlation(nn.Module):
    """FlowNet's correlation of two feature maps over a grid of displacements."""

    def __init__(self, pad: int, kernel: int, max_displacement: int, stride_1: int,
                 stride_2: int, subtract: bool) -> None:
        super().__init__()
        self.pad, self.kernel, self.max_displacement = pad, kernel, max_displacement
        self.stride_1, self.stride_2, self.subtract = stride_1, stride_2, subtract

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        k, md, s1, s2, p = (self.kernel, self.max_displacement, self.stride_1, self.stride_2,
                            self.pad)
        channels, height, width = (int(d) for d in first.shape[1:])
        border = md + (k - 1) // 2
        out_h = _ceil_div(height + 2 * p - 2 * border, s1)
        out_w = _ceil_div(width + 2 * p - 2 * border, s1)
        # The fork copies both maps into zeroed, padded buffers; the patch of output (y, x)
        # starts (top-left) at padded (y * stride_1 + max_displacement, ...) in both maps, the
        # second map's shifted by the displacement.
        a = F.pad(first, (p, p, p, p))
        b = F.pad(second, (p, p, p, p))
        radius = md // s2
        shifts = [o * s2 for o in range(-radius, radius + 1)]
        return _cost_volume(a, b, md, md, s1 * (out_h - 1) + k, s1 * (out_w - 1) + k, shifts,
                            shifts, k, s1, self.subtract) / channels

    def extra_repr(self) -> str:
        return (f"pad={self.pad}, kernel={self.kernel}, max_displacement="
                f"{self.max_displacement}, strides=({self.stride_1}, {self.stride_2}), "
                f"{'SUBTRACT' if self.subtract else 'MULTIPLY'}")


def _correlation_cost(info, training: bool) -> tuple[int, int]:
    """Per output element, a kernel_size² x C patch: products and sums."""
    if not info.top_shapes or not info.bottom_shapes:
        return 0, 0
    k = info.node.param.correlation_param.kernel_size
    patch = k * k * int(info.bottom_shapes[0][1])
    if info.node.param.correlation_param.correlation_type == 1:  # SUBTRACT: |a - b| and a sum
        return 0, first_top(info) * patch * 2
    return first_top(info) * patch, 0


CORRELATION_COST = CostRule(_correlation_cost, "MACs = output elements × kernel_size² × C "
                                               "(SUBTRACT: 2 ops each instead)")


def correlation_detail(param) -> str:
    """'k1 d20 /1 /2 p20': kernel, max displacement, strides, pad (and SUBTRACT)."""
    p = param.correlation_param
    text = (f"k{p.kernel_size} d{p.max_displacement} /{p.stride_1} /{p.stride_2}"
            + (f" p{p.pad}" if p.pad else ""))
    return text + (" SUBTRACT" if p.correlation_type == 1 else "")


@register("Correlation", family=_FAMILY, origin=_ORIGIN, cost=CORRELATION_COST,
          detail=correlation_detail, emit=copy_module(_ceil_div, _cost_volume))
def correlation(spec: LayerSpec) -> Built:
    """FlowNet's cost volume: per displacement, mean of a·b (or |a−b|) over a k×k×C patch."""
    # do_abs and single_direction are read by the fork's LayerSetUp and used nowhere in its
    # 2-D layer (single_direction is Correlation1D's), so they change nothing here either.
    spec.expect_bottoms(2)
    _one_top(spec)
    p = fork_param(spec, "correlation_param", "FlowNet2")
    for name in ("kernel_size", "max_displacement"):
        if not has_field(p, name):  # the fork's LayerSetUp CHECKs both
            raise spec.error(f"correlation_param.{name} is missing (the FlowNet2 fork "
                             "requires it)")
    if p.kernel_size % 2 == 0:
        raise spec.error(f"correlation_param.kernel_size must be odd, got {p.kernel_size}")
    for name in ("stride_1", "stride_2"):
        if getattr(p, name) < 1:
            raise spec.error(f"correlation_param.{name} must be >= 1, got {getattr(p, name)}")
    first = _four_d(spec, 0, "first feature map")
    second = _four_d(spec, 1, "second feature map")
    if first != second:  # the fork CHECKs width, height and channels; num is read from bottom 0
        raise spec.error(f"correlation_param: both bottoms must have the same shape, got "
                         f"{first} and {second}", shape=True)
    border = p.max_displacement + (p.kernel_size - 1) // 2
    for axis, size in (("height", first[2]), ("width", first[3])):
        if size + 2 * p.pad - 2 * border < 1:
            raise spec.error(f"correlation_param: the {axis} {size} with pad {p.pad} leaves no "
                             f"output for max_displacement {p.max_displacement} and kernel_size "
                             f"{p.kernel_size} (needs {axis} + 2·pad > 2·{border})", shape=True)
    return Built(Correlation(int(p.pad), int(p.kernel_size), int(p.max_displacement),
                             int(p.stride_1), int(p.stride_2), p.correlation_type == 1))


class Correlation1D(nn.Module):
    """DispNet's horizontal correlation (the fork's Correlation1D): displacements in x only."""

    def __init__(self, pad: int, kernel: int, max_displacement: int, stride_1: int,
                 stride_2: int, direction: int, subtract: bool) -> None:
        super().__init__()
        self.pad, self.kernel, self.max_displacement = pad, kernel, max_displacement
        self.stride_1, self.stride_2, self.subtract = stride_1, stride_2, subtract
        self.direction = direction

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        k, md, s1, s2, p = (self.kernel, self.max_displacement, self.stride_1, self.stride_2,
                            self.pad)
        channels, height, width = (int(d) for d in first.shape[1:])
        radius = (k - 1) // 2
        # padded in x only; the window's top-left starts at (y * stride_1, x * stride_1 + md)
        out_h = _ceil_div(height - 2 * radius, s1)
        out_w = _ceil_div(width + 2 * p - 2 * (md + radius), s1)
        a = F.pad(first, (p, p, 0, 0))
        b = F.pad(second, (p, p, 0, 0))
        return _cost_volume(a, b, 0, md, s1 * (out_h - 1) + k, s1 * (out_w - 1) + k, [0],
                            _horizontal_shifts(md, s2, self.direction), k, s1,
                            self.subtract) / channels

    def extra_repr(self) -> str:
        return (f"pad={self.pad}, kernel={self.kernel}, max_displacement="
                f"{self.max_displacement}, strides=({self.stride_1}, {self.stride_2}), "
                f"direction={self.direction}, {'SUBTRACT' if self.subtract else 'MULTIPLY'}")


def _horizontal_shifts(md: int, s2: int, direction: int) -> list[int]:
    """Correlation1D's x displacements, top channel order: the fork's (g + x_shift) * stride_2
    for g < the grid width, x_shift -r (both ways) or 0 (right only, r + 1 channels)."""
    radius = md // s2
    if direction == 1:
        return [g * s2 for g in range(radius + 1)]
    return [(g - radius) * s2 for g in range(2 * radius + 1)]


@register("Correlation1D", family=_FAMILY, origin="DispNet / FlowNet 2.0 (lmb-freiburg/flownet2)",
          cost=CORRELATION_COST, detail=correlation_detail,
          emit=copy_module(_ceil_div, _cost_volume, _horizontal_shifts))
def correlation_1d(spec: LayerSpec) -> Built:
    """DispNet's cost volume along x: per displacement, mean of a·b (or |a−b|) over k×k×C."""
    spec.expect_bottoms(2)
    _one_top(spec)
    p = fork_param(spec, "correlation_param", "FlowNet2")
    for name in ("kernel_size", "max_displacement"):
        if not has_field(p, name):
            raise spec.error(f"correlation_param.{name} is missing (the fork requires it)")
    if p.kernel_size % 2 == 0:
        raise spec.error(f"correlation_param.kernel_size must be odd, got {p.kernel_size}")
    for name in ("stride_1", "stride_2"):
        if getattr(p, name) < 1:
            raise spec.error(f"correlation_param.{name} must be >= 1, got {getattr(p, name)}")
    if p.single_direction not in (-1, 0, 1):
        raise spec.error(f"correlation_param.single_direction must be -1, 0 or 1, got "
                         f"{p.single_direction}")
    if p.single_direction == -1:
        # The fork's x_shift is then -(r + 1): r + 1 channels from -(r + 1) * stride_2 to
        # -stride_2, the first of which lies left of the padded image at the left border.
        raise spec.error("correlation_param.single_direction: -1 makes the fork read left of "
                         "its padded image (its displacements run from -(r + 1) * stride_2); "
                         "not supported")
    first = _four_d(spec, 0, "first feature map")
    second = _four_d(spec, 1, "second feature map")
    if first[1:] != second[1:]:  # the fork CHECKs width, height and channels
        raise spec.error(f"correlation_param: both bottoms must have the same channels, height "
                         f"and width, got {first} and {second}", shape=True)
    radius = (p.kernel_size - 1) // 2
    if first[2] - 2 * radius < 1 or first[3] + 2 * p.pad - 2 * (p.max_displacement + radius) < 1:
        raise spec.error(f"correlation_param: a {first[2]} x {first[3]} map with pad {p.pad} "
                         f"leaves no output for max_displacement {p.max_displacement} and "
                         f"kernel_size {p.kernel_size}", shape=True)
    return Built(Correlation1D(int(p.pad), int(p.kernel_size), int(p.max_displacement),
                               int(p.stride_1), int(p.stride_2), int(p.single_direction),
                               p.correlation_type == 1))


# ----------------------------------------------------------------------------------------------
# ChannelNorm (FlowNet2's fusion net: the length of each pixel's vector over the channels)
# ----------------------------------------------------------------------------------------------

class _ChannelNormFn(torch.autograd.Function):
    """sqrt(sum_c x²) per pixel; the fork's backward g · x / (norm + 1e-9) (0 at a zero
    vector, where the plain derivative is undefined)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        norm = x.square().sum(1, keepdim=True).sqrt()
        ctx.save_for_backward(x, norm)
        return norm

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, norm = ctx.saved_tensors
        return grad * x / (norm + 1e-9)


class ChannelNorm(nn.Module):
    """FlowNet2's ChannelNorm: (N, C, H, W) -> (N, 1, H, W), the L2 norm over channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or x.device.type == "meta":
            return x.square().sum(1, keepdim=True).sqrt()  # the same forward, traceable
        return _ChannelNormFn.apply(x)


@register("ChannelNorm", family=_FAMILY, origin=_ORIGIN,
          cost=CostRule(lambda info, training: (math.prod(info.bottom_shapes[0]), 0)
                        if info.bottom_shapes else (0, 0), "MACs = input elements (squares)"),
          emit=copy_module(_ChannelNormFn))
def channel_norm(spec: LayerSpec) -> Built:
    """The L2 norm of each pixel's vector over the channels (FlowNet2's fusion net)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    _four_d(spec, 0, "the bottom")
    return Built(ChannelNorm())


# ----------------------------------------------------------------------------------------------
# Accum
# ----------------------------------------------------------------------------------------------

def _corner_bilinear(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """The fork's upscaling: corners aligned, position (w / (W - 1)) * (w_in - 1) in float32,
    the four neighbours weighted in the fork's order."""
    in_h, in_w = int(x.shape[2]), int(x.shape[3])

    def axis(out: int, size: int):
        step = torch.arange(out, dtype=torch.float32, device=x.device)
        pos = step / torch.tensor(float(out - 1), dtype=torch.float32, device=x.device)
        pos = pos * torch.tensor(float(size - 1), dtype=torch.float32, device=x.device)
        low = torch.floor(pos)
        index = low.to(torch.int64)
        return index, torch.clamp(index + 1, max=size - 1), pos - low

    y0, y1, yd = axis(out_h, in_h)
    x0, x1, xd = axis(out_w, in_w)
    top, bottom = x.index_select(2, y0), x.index_select(2, y1)
    tl, tr = top.index_select(3, x0), top.index_select(3, x1)
    bl, br = bottom.index_select(3, x0), bottom.index_select(3, x1)
    xd, yd = xd[None, :], yd[:, None]
    return ((1 - xd) * (1 - yd) * tl + xd * yd * br + (1 - xd) * yd * bl
            + xd * (1 - yd) * tr)


class Accum(nn.Module):
    """Concatenate the bottoms on channels, each upscaled to (height, width)."""

    def __init__(self, height: int, width: int, used: int) -> None:
        super().__init__()
        self.height, self.width, self.used = height, width, used

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        parts = []
        for x in bottoms[:self.used]:
            if (int(x.shape[2]), int(x.shape[3])) == (self.height, self.width):
                parts.append(x)  # OpenCV copies; the fork's w/(W-1)*(W-1) is w within a ulp
            else:
                parts.append(_corner_bilinear(x, self.height, self.width))
        return torch.cat(parts, 1)

    def extra_repr(self) -> str:
        return f"size=({self.height}, {self.width}), bottoms={self.used}"


def accum_detail(param) -> str:
    """'→ 64×64', '÷64' or 'like last bottom': how the top size is chosen."""
    p = param.accum_param
    if p.have_reference:
        return "like last bottom"
    if p.size_divisible_by:
        return f"÷{p.size_divisible_by}"
    if p.top_height or p.top_width:
        return f"→ {p.top_height}×{p.top_width}"
    return "largest"


ACCUM_COST = CostRule(lambda info, training: (0, 8 * first_top(info)),
                      "ops = 8 × output elements (a bilinear sample each; a bound)")


@register("Accum", family=_FAMILY, origin=_ORIGIN, cost=ACCUM_COST, detail=accum_detail,
          emit=copy_module(_corner_bilinear))
def accum(spec: LayerSpec) -> Built:
    """Channel concatenation of bottoms upscaled (bilinear, corners aligned) to a common size."""
    _one_top(spec)
    p = fork_param(spec, "accum_param", "FlowNet2")
    if not spec.bottom_shapes:
        raise spec.error("needs at least 1 bottom, got 0")
    shapes = [_four_d(spec, i, "a map") for i in range(len(spec.bottom_shapes))]
    used = len(shapes) - 1 if p.have_reference else len(shapes)
    if p.have_reference and used < 1:
        raise spec.error("accum_param.have_reference needs at least 2 bottoms (the last one "
                         "only gives the size), got 1")
    if any(s[0] != shapes[0][0] for s in shapes[:used]):
        raise spec.error(f"all accumulated bottoms must have the same batch size, got "
                         f"{[s[0] for s in shapes[:used]]}", shape=True)
    max_h, max_w = max(s[2] for s in shapes[:used]), max(s[3] for s in shapes[:used])
    if p.have_reference:
        height, width = shapes[-1][2], shapes[-1][3]
    else:
        if p.size_divisible_by:
            d = p.size_divisible_by  # the fork: ceil(max / d) * d in float
            height, width = _ceil_div(max_h, d) * d, _ceil_div(max_w, d) * d
        else:
            height, width = int(p.top_height), int(p.top_width)
        if not (height > max_h and width > max_w):  # the fork enlarges only when both grow
            height, width = max_h, max_w
    for s in shapes[:used]:
        if (s[2], s[3]) != (height, width) and (height < 2 or width < 2):
            raise spec.error(f"cannot resize a {s[2]}×{s[3]} map to {height}×{width}: the "
                             "fork divides by the top's size - 1", shape=True)
    return Built(Accum(int(height), int(width), used))


# ----------------------------------------------------------------------------------------------
# FlowWarp
# ----------------------------------------------------------------------------------------------

class FlowWarp(nn.Module):
    """Sample the image at (x + flow_x, y + flow_y), bilinear; outside the image: the fill."""

    def __init__(self, fill_nan: bool) -> None:
        super().__init__()
        self.fill_nan = fill_nan

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        n, c, h, w = (int(d) for d in image.shape)
        xs = torch.arange(w, dtype=flow.dtype, device=flow.device)[None, None, :]
        ys = torch.arange(h, dtype=flow.dtype, device=flow.device)[None, :, None]
        x2 = xs + flow[:, 0]
        y2 = ys + flow[:, 1]
        # compared in float32 as the fork does; NaN flow fails every test and gets the fill
        inside = (x2 >= 0) & (y2 >= 0) & (x2 < w) & (y2 < h)
        x2 = torch.where(inside, x2, torch.zeros_like(x2))
        y2 = torch.where(inside, y2, torch.zeros_like(y2))
        left, top = torch.floor(x2.detach()), torch.floor(y2.detach())
        alpha, beta = x2 - left, y2 - top  # the flow's gradient flows through these
        il, it = left.to(torch.int64), top.to(torch.int64)
        ir, ib = torch.clamp(il + 1, max=w - 1), torch.clamp(it + 1, max=h - 1)
        flat = image.reshape(n, c, h * w)

        def at(iy, ix):
            index = (iy * w + ix).reshape(n, 1, h * w).expand(n, c, h * w)
            return torch.gather(flat, 2, index).reshape(n, c, h, w)

        alpha, beta = alpha[:, None], beta[:, None]
        value = ((1 - alpha) * (1 - beta) * at(it, il) + alpha * (1 - beta) * at(it, ir)
                 + (1 - alpha) * beta * at(ib, il) + alpha * beta * at(ib, ir))
        fill = torch.full((), math.nan if self.fill_nan else 0.0, dtype=value.dtype,
                          device=value.device)
        return torch.where(inside[:, None], value, fill)

    def extra_repr(self) -> str:
        return f"fill={'NaN' if self.fill_nan else '0'}"


def flow_warp_detail(param) -> str:
    """'fill 0' or 'fill NaN': what a pixel warped from outside the image becomes."""
    return "fill NaN" if param.flow_warp_param.fill_value == 2 else "fill 0"


@register("FlowWarp", family=_FAMILY, origin=_ORIGIN,
          cost=CostRule(lambda info, training: (0, 8 * first_top(info)),
                        "ops = 8 × output elements (a bilinear sample each)"),
          detail=flow_warp_detail, emit=copy_module())
def flow_warp(spec: LayerSpec) -> Built:
    """Backward warping of bottom 0 by the flow in bottom 1 (N, 2, H, W), bilinear."""
    spec.expect_bottoms(2)
    _one_top(spec)
    p = fork_param(spec, "flow_warp_param", "FlowNet2")
    image = _four_d(spec, 0, "the image")
    flow = _four_d(spec, 1, "the flow")
    if flow[1] != 2:
        raise spec.error(f"bottom 1 (the flow) needs 2 channels (x and y), got {flow[1]}",
                         shape=True)
    if (flow[0], flow[2], flow[3]) != (image[0], image[2], image[3]):
        raise spec.error(f"image {image} and flow {flow} differ in batch, height or width",
                         shape=True)
    return Built(FlowWarp(_enum_name(p, "fill_value") == "NOT_A_NUMBER"))


# ----------------------------------------------------------------------------------------------
# Resample
# ----------------------------------------------------------------------------------------------

def _ratio(size: int, out: int) -> float:
    """float(size) / float(out) rounded to float32, as the fork's ratios are (on the CPU: the
    builder may have made 'meta' the default device)."""
    return float(torch.tensor(float(size), dtype=torch.float32, device="cpu")
                 / torch.tensor(float(out), dtype=torch.float32, device="cpu"))


def _source_positions(out: int, own: float, other: float, device) -> torch.Tensor:
    """The fork's sampling position of each output index: o * f + f' / 2 - 0.5 in float32,
    with f' the other axis's ratio (the fork's x uses the height ratio and y the width's)."""
    o = torch.arange(out, dtype=torch.float32, device=device)
    f = torch.tensor(own, dtype=torch.float32, device=device)
    g = torch.tensor(other, dtype=torch.float32, device=device)
    return o * f + g / 2.0 - 0.5


def _filter_matrix(out: int, size: int, own: float, other: float, kind: str, shrink: bool,
                   device) -> torch.Tensor:
    """(out, size) weights of one axis: the fork's filter at dx = pos - x over the window
    round(pos) ± r, samples outside the image skipped, each row divided by its sum (0 where
    the sum is 0); the 2-D weight is the product of the axes', so the 2-D sum is too."""
    pos = _source_positions(out, own, other, device)
    scale = 1.0 / own if shrink else 1.0  # antialias: the filter widened by the ratio
    width = 4 if kind == "CUBIC" else 2
    reach = 2 if own < 1.0 else math.ceil(width / scale)
    centre = _round_half_away(pos)
    cols = torch.arange(size, device=device)
    near = (cols[None, :] - centre[:, None]).abs() <= reach
    t = (pos[:, None] - cols[None, :].float()) * scale
    a = t.abs()
    if kind == "CUBIC":
        w = torch.where(a <= 1, a * a * (1.5 * a - 2.5) + 1,
                        torch.where(a < 2, a * (a * (-0.5 * a + 2.5) - 4) + 2,
                                    torch.zeros_like(a)))
    else:
        w = torch.clamp(1 - a, min=0)
    w = torch.where(near, w * scale, torch.zeros_like(w))
    total = w.sum(1, keepdim=True)
    return torch.where(total != 0, w / torch.where(total != 0, total, torch.ones_like(total)),
                       torch.zeros_like(w))


class Resample(nn.Module):
    """FlowNet2's resize (NEAREST, LINEAR, CUBIC) on the fork's sampling grid."""

    def __init__(self, height: int, width: int, kind: str, antialias: bool) -> None:
        super().__init__()
        self.height, self.width, self.kind, self.antialias = height, width, kind, antialias

    def forward(self, x: torch.Tensor, *reference: torch.Tensor) -> torch.Tensor:
        in_h, in_w = int(x.shape[2]), int(x.shape[3])
        fx, fy = _ratio(in_w, self.width), _ratio(in_h, self.height)
        if self.kind == "NEAREST":
            cols = _round_half_away(_source_positions(self.width, fx, fy, x.device))
            rows = _round_half_away(_source_positions(self.height, fy, fx, x.device))
            return x.index_select(2, rows).index_select(3, cols)
        shrink = self.antialias and (fx > 1 or fy > 1)
        across = _filter_matrix(self.width, in_w, fx, fy, self.kind, shrink, x.device)
        down = _filter_matrix(self.height, in_h, fy, fx, self.kind, shrink, x.device)
        return torch.matmul(down.to(x.dtype), torch.matmul(x, across.t().to(x.dtype)))

    def extra_repr(self) -> str:
        return (f"size=({self.height}, {self.width}), {self.kind}"
                + (", antialias" if self.antialias and self.kind != "NEAREST" else ""))


def resample_detail(param) -> str:
    """'LINEAR → 64×64 aa': type, size ('like bottom 1' with two bottoms), antialias."""
    p = param.resample_param
    kind = _enum_name(p, "type")
    size = "like bottom 1" if len(param.bottom) == 2 else f"→ {p.height}×{p.width}"
    aa = " aa" if p.antialias and kind in ("LINEAR", "CUBIC") else ""
    return " ".join(t for t in (kind, size) if t) + aa


def _resample_cost(info, training: bool) -> tuple[int, int]:
    """Two passes of a separable filter over the input rows and output columns."""
    if not info.top_shapes or not info.bottom_shapes:
        return 0, 0
    n, c, h, w = (int(d) for d in info.bottom_shapes[0])
    oh, ow = int(info.top_shapes[0][2]), int(info.top_shapes[0][3])
    if info.node.param.resample_param.type == 1:  # NEAREST: copies
        return 0, 0
    return n * c * (h * w * ow + oh * h * ow), 0


@register("Resample", family=_FAMILY, origin=_ORIGIN,
          cost=CostRule(_resample_cost, "MACs = N·C·(H·W·W' + H'·H·W') (the two filter "
                                        "passes as matrix products); NEAREST: 0 (copies)"),
          detail=resample_detail,
          emit=copy_module(_round_half_away, _ratio, _source_positions, _filter_matrix))
def resample(spec: LayerSpec) -> Built:
    """Resize to width×height or to bottom 1's size: the fork's NEAREST, LINEAR or CUBIC."""
    spec.expect_bottoms(1, 2)
    _one_top(spec)
    p = fork_param(spec, "resample_param", "FlowNet2")
    kind = _enum_name(p, "type")
    if kind == "AREA":
        raise spec.error("resample_param.type AREA: the FlowNet2 fork supports only NEAREST, "
                         "LINEAR and CUBIC (its LayerSetUp stops on AREA)")
    if p.factor != 1.0:
        raise spec.error(f"resample_param.factor {p.factor:g}: the FlowNet2 fork ignores it "
                         "(its size comes from width/height or bottom 1) while OpenCV reads it "
                         "as a zoom factor; give width and height instead")
    shape = _four_d(spec, 0, "the input")
    if len(spec.bottom_shapes) == 2:
        ref = _four_d(spec, 1, "the size reference")
        height, width = ref[2], ref[3]
    else:
        height, width = int(p.height), int(p.width)
        for name, value in (("height", height), ("width", width)):
            if value < 1:
                raise spec.error(f"resample_param.{name} must be >= 1 with one bottom (or give "
                                 f"a second bottom for the size), got {value}")
    if kind == "NEAREST":
        # The fork reads index round(pos) unchecked; its x uses the height ratio, so unequal
        # ratios can step outside the image (memory of the next row or image): refused.
        fx, fy = _ratio(shape[3], width), _ratio(shape[2], height)
        for axis, out, size, own, other in (("x", width, shape[3], fx, fy),
                                            ("y", height, shape[2], fy, fx)):
            index = _round_half_away(_source_positions(out, own, other, "cpu"))
            if int(index.min()) < 0 or int(index.max()) >= size:
                raise spec.error(f"resample_param: NEAREST from {shape[2]}×{shape[3]} to "
                                 f"{height}×{width} reads {axis} index {int(index.min())}.."
                                 f"{int(index.max())} outside 0..{size - 1} in the fork (its "
                                 "x position uses the height ratio and y the width's)",
                                 shape=True)
    return Built(Resample(int(height), int(width), kind, bool(p.antialias)))


# ----------------------------------------------------------------------------------------------
# DataAugmentation (TEST)
# ----------------------------------------------------------------------------------------------

def _compiling() -> bool:
    """Whether dynamo is compiling this forward (buffers are then fake: no values to read)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _exporting() -> bool:
    """Whether torch is tracing or exporting this forward (TorchScript, ONNX or dynamo)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return True
    return _compiling()


class MeanSubtraction(nn.Module):
    """The TEST path of FlowNet2's DataAugmentation: subtract a stored (or running) or given
    mean."""

    def __init__(self, mode: str, channels: int, height: int, width: int, recompute: int,
                 mean: tuple[float, ...] = (), *, layer: str = "",
                 type: str = "DataAugmentation") -> None:
        super().__init__()
        self.mode, self.recompute, self.mean = mode, recompute, tuple(float(v) for v in mean)
        self._layer, self._type = layer, type
        self.register_buffer("iteration", torch.empty(1, 1, 1, 1))
        if recompute > 0:
            self.register_buffer("data_mean", torch.empty(1, channels, height, width))
            self.register_buffer("channel_mean", torch.empty(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "proto":
            return x - torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1,
                                                                                       1)
        if self.mode == "none":
            return x
        if x.device.type != "meta":
            if not _exporting():
                self._recompute(x)
            elif not _compiling() and self._counting():
                # an ONNX graph holds no state: it would subtract the mean as it is now
                raise LayerError(f"cannot be exported while blob 0 (iteration "
                                 f"{int(self.iteration.detach().reshape(-1)[0].item())}) is "
                                 f"within recompute_mean {self.recompute}: the fork still "
                                 "folds each batch into its mean", layer=self._layer,
                                 type=self._type)
        if self.mode == "pixel":
            return x - self.data_mean
        return x - self.channel_mean

    def _counting(self) -> bool:
        import warnings  # here, so that the class copied by --emit-python needs no import

        with warnings.catch_warnings():  # a traced module's buffer read as a number
            warnings.simplefilter("ignore")
            return int(self.iteration.detach().reshape(-1)[0].item()) + 1 <= self.recompute

    @torch.no_grad()
    def _recompute(self, x: torch.Tensor) -> None:
        """The fork's count (blob 0) goes up by one each forward; while it is at most
        recompute_mean, the stored mean absorbs this batch as a running average (blob 1) and
        its spatial mean (blob 2), before the subtraction: the layer's state changes, as in
        Caffe. A count past recompute_mean (a finished training run) leaves the mean alone."""
        count = int(self.iteration.reshape(-1)[0]) + 1
        if count > self.recompute:
            return
        one = torch.ones((), dtype=torch.float32, device=x.device)
        mean = self.data_mean * float(count - 1)
        share = one / x.shape[0]
        for item in x.detach().float().split(1):  # one image at a time, as the fork's axpy
            mean = mean + item * share
        mean = mean * (one / count)
        area = mean.shape[2] * mean.shape[3]
        self.data_mean.copy_(mean)
        self.channel_mean.copy_(mean.sum((2, 3), keepdim=True) * (one / area))
        self.iteration.fill_(count)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


def _random_augmentation(shapes, gen):
    """Iteration far past any recompute_mean (a finished mean), means in (0, 1)."""
    values = []
    for i, s in enumerate(shapes):
        if s is None:
            values.append(None)
        elif i == 0:
            values.append(torch.full(s, float(2 ** 32)))
        else:
            values.append(uniform(s, 0.0, 1.0, gen))
    return values


def augmentation_detail(param) -> str:
    """'− mean (channel)' / '− mean (pixel)' / '− 0.41 0.43 0.45' / 'identity'."""
    p = param.augmentation_param
    if p.recompute_mean > 0:
        return f"− mean ({'pixel' if p.mean_per_pixel else 'channel'})"
    if len(p.mean) == 3 and not p.mean_per_pixel:
        return "− " + " ".join(f"{v:g}" for v in p.mean)
    return "identity"


def _mean_at_size(saved: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray | None:
    """A per-pixel mean saved at another image size, as the fork's adjust_blobs takes it: each
    channel's mean over the saved pixels, spread over the net's (a FlowNet2 .caffemodel
    trained on crops runs at any size)."""
    if saved.ndim != 4 or saved.shape[:2] != shape[:2]:
        return None
    means = saved.astype(np.float32).reshape(shape[1], -1).mean(axis=1, dtype=np.float64)
    return np.broadcast_to(means.astype(np.float32).reshape(1, -1, 1, 1), shape).copy()


@register("DataAugmentation", family=_FAMILY, origin=_ORIGIN,
          cost=CostRule(lambda info, training: (0, first_top(info)),
                        "ops = output elements (a subtraction; TEST only)"),
          detail=augmentation_detail, emit=copy_module(_compiling, _exporting),
          random=_random_augmentation)
def data_augmentation(spec: LayerSpec) -> Built:
    """FlowNet2's augmentation at TEST: subtract the stored (or given) mean, no random change."""
    p = fork_param(spec, "augmentation_param", "FlowNet2")
    if len(spec.bottom_shapes) != 1 or spec.n_tops != 1:
        raise spec.error(f"landmarknet runs DataAugmentation with 1 bottom and 1 top (the "
                         f"second ones carry augmentation coefficients, a TRAIN matter); got "
                         f"{len(spec.bottom_shapes)} bottom(s) and {spec.n_tops} top(s)")
    if spec.phase == "train":
        raise spec.error("DataAugmentation in the TRAIN phase draws random augmentations; "
                         "landmarknet runs only its TEST path (build the net for TEST)")
    n, c, h, w = _four_d(spec, 0, "the images")
    # The fork augments only when it crops (crop_width and crop_height both set), and then only
    # with the random generators the prototxt sets. FlowNet2's deploy nets say
    # `augment_during_test: true` with a crop equal to the input and no generator: nothing
    # random happens, the layer subtracts its mean. That case runs; a real crop or a generator
    # is refused.
    crop = has_field(p, "crop_width") and has_field(p, "crop_height")
    if crop and (p.crop_width, p.crop_height) != (w, h):
        raise spec.error(f"augmentation_param crop {p.crop_width} x {p.crop_height} of {w} x "
                         f"{h} images: the fork's crop resamples through its spatial transform; "
                         "not supported (resize with Resample)")
    generators = [f.name for f in p.DESCRIPTOR.fields
                  if f.message_type is not None and f.message_type.name ==
                  "RandomGeneratorParameter" and p.HasField(f.name)]
    if crop and p.augment_during_test and generators:
        raise spec.error(f"augmentation_param.augment_during_test: true with {', '.join(generators)} "
                         "draws random augmentations at TEST; not supported")
    blobs = [BlobSlot("iteration", (1, 1, 1, 1), learnable=False)]
    if p.recompute_mean > 0:
        blobs += [BlobSlot("data_mean", (1, c, h, w), learnable=False,
                           adapt=functools.partial(_mean_at_size, shape=(1, c, h, w))),
                  BlobSlot("channel_mean", (1, c, 1, 1), learnable=False)]
        mode = "pixel" if p.mean_per_pixel else "channel"
        return Built(MeanSubtraction(mode, c, h, w, int(p.recompute_mean), layer=spec.name,
                                     type=spec.type), blobs)
    if len(p.mean) == 3 and not p.mean_per_pixel:
        if c != 3:  # the fork's (1, 3, 1, 1) mean is applied to bottomchannels channels
            raise spec.error(f"augmentation_param.mean has 3 values but the images have {c} "
                             "channels", shape=True)
        return Built(MeanSubtraction("proto", c, h, w, 0, tuple(p.mean)), blobs)
    return Built(MeanSubtraction("none", c, h, w, 0), blobs)


__all__ = ["Accum", "ChannelNorm", "Correlation", "Correlation1D", "FlowWarp",
           "MeanSubtraction", "Resample"]
