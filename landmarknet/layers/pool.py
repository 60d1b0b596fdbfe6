"""Pooling layers with Caffe's exact geometry: Pooling (MAX, AVE, STOCHASTIC) and SPP.

Caffe's pooling differs from torch's in three ways (pooling_layer.cpp):

* the output size rounds UP, ``ceil((H + 2p - k) / s) + 1`` (``floor`` with ``round_mode: FLOOR``),
  and only when the layer has padding (in either direction) one window is dropped if it would
  start at or beyond ``H + p``; without padding a window that lies wholly outside the input is
  kept (stride > kernel), and MAX gives ``-FLT_MAX`` there, AVE ``0 / pool_size``;
* AVE divides by the window clipped to ``H + p`` (padding counts, overhang past it does not);
* any ``pad < kernel`` is allowed (torch refuses ``pad > kernel / 2``).

The general path pads the input explicitly (``-FLT_MAX`` for MAX, 0 for AVE) to exactly the
extent the windows cover, pools without padding, and rescales AVE by a divisor map. torch's own
``ceil_mode`` pooling is used only where it provably gives the same windows and divisors: pad at
most half the kernel, the same output size, and no window without input pixels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import ShapeError
from landmarknet.layers.common import dims_text
from landmarknet.layers.costs import CostRule, first_bottom, first_top, numel
from landmarknet.layers.emitting import EmitCall, EmitContext, helper_source, tuple_text
from landmarknet.layers.registry import Built, LayerSpec, OnnxRule, register

FLT_MAX = 3.4028234663852886e38  # float32's largest value: Caffe's initial value for MAX
FLT_MIN = 1.1754943508222875e-38  # float32's smallest normal: StoPoolForwardTest's initial sum

MAX, AVE, STOCHASTIC = 0, 1, 2
_METHOD_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def caffe_pool_output_size(h: int, k: int, s: int, p: int, ceil: bool, *,
                           any_pad: bool | None = None) -> int:
    """Caffe's pooled extent along one axis (PoolingLayer::Reshape).

    ``ceil((h + 2p - k) / s) + 1`` (floor when ``ceil`` is False); then, when the layer has
    padding, one less if the last window would start at or beyond ``h + p``. Caffe tests the
    padding of BOTH axes (``if (pad_h_ || pad_w_)``): pass ``any_pad`` to say whether the layer
    has any padding; by default it is ``p > 0``. The result may be <= 0 for a kernel that does
    not fit; callers decide what to do with that.
    """
    span = h + 2 * p - k
    out = (-((-span) // s) if ceil else span // s) + 1
    if (p > 0 if any_pad is None else any_pad) and (out - 1) * s >= h + p:
        out -= 1
    return out


def _torch_ceil_output_size(h: int, k: int, s: int, p: int) -> int:
    """What torch's pooling with ``ceil_mode=True`` computes (pooling_output_shape)."""
    out = -((-(h + 2 * p - k)) // s) + 1
    if (out - 1) * s >= h + p:
        out -= 1
    return out


@dataclass(frozen=True)
class _AxisPlan:
    """The windows of one spatial axis."""

    out: int
    lo: int  # padding before the input (the layer's pad)
    hi: int  # padding after the input so that the last window fits (negative: crop)
    pool: tuple[int, ...]  # Caffe's AVE divisor factor per window (window clipped to size + p)
    empty: bool  # some window holds no input pixel
    torch_ok: bool  # torch's ceil_mode pooling with padding p gives identical windows


def _axis_plan(size: int, k: int, s: int, p: int, ceil: bool, any_pad: bool) -> _AxisPlan:
    out = caffe_pool_output_size(size, k, s, p, ceil, any_pad=any_pad)
    if out <= 0:
        return _AxisPlan(out, p, 0, (), True, False)
    starts = [i * s - p for i in range(out)]
    pool = tuple(min(st + k, size + p) - st for st in starts)
    hi = (out - 1) * s + k - p - size
    # Windows on the left always hold pixel 0 (p < k); only the last ones can miss the input.
    empty = starts[-1] >= size
    torch_ok = (2 * p <= k and not empty and _torch_ceil_output_size(size, k, s, p) == out)
    return _AxisPlan(out, p, hi, pool, empty, torch_ok)


@lru_cache(maxsize=256)
def pool_plan(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
              pad: tuple[int, int], ceil: bool) -> tuple[_AxisPlan, _AxisPlan]:
    """The window plan (output size, explicit padding, divisors) of a 2-D Caffe pooling."""
    any_pad = pad[0] > 0 or pad[1] > 0
    return (_axis_plan(h, kernel[0], stride[0], pad[0], ceil, any_pad),
            _axis_plan(w, kernel[1], stride[1], pad[1], ceil, any_pad))


def _neg_flt_max(dtype: torch.dtype) -> float:
    return -min(FLT_MAX, torch.finfo(dtype).max)


def caffe_pool2d(x: torch.Tensor, method: int, kernel: tuple[int, int],
                 stride: tuple[int, int], pad: tuple[int, int], ceil: bool = True, *,
                 training: bool = False, return_mask: bool = False, allow_fast: bool = True,
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Caffe's 2-D pooling of an (N, C, H, W) tensor; see the module docstring.

    ``method`` is 0 (MAX), 1 (AVE) or 2 (STOCHASTIC: the probability-weighted average
    ``sum x^2 / sum x`` unless ``training``, then one value per window sampled with probability
    proportional to its value). ``return_mask`` (MAX only) also returns Caffe's second top: the
    argmax as a float index ``h * W + w`` into the input plane, -1 for windows without input.
    ``allow_fast=False`` forces the general path (for tests).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph_, pw_ = pool_plan(h, w, tuple(kernel), tuple(stride), tuple(pad), bool(ceil))
    if ph_.out <= 0 or pw_.out <= 0:
        raise ValueError(f"pooling a {h}x{w} input with kernel {kernel}, stride {stride}, pad "
                         f"{pad} gives an empty output ({ph_.out}x{pw_.out})")
    kh, kw = kernel
    fast = allow_fast and ph_.torch_ok and pw_.torch_ok
    if method == MAX:
        if fast:
            r = F.max_pool2d(x, kernel, stride, pad, ceil_mode=True, return_indices=return_mask)
            if not return_mask:
                return r
            y, idx = r
            return y, idx.to(x.dtype)
        xp = F.pad(x, (pw_.lo, pw_.hi, ph_.lo, ph_.hi), value=_neg_flt_max(x.dtype))
        if not return_mask:
            return F.max_pool2d(xp, kernel, stride)
        y, idx = F.max_pool2d(xp, kernel, stride, return_indices=True)
        wp = w + pw_.lo + pw_.hi
        hh = torch.div(idx, wp, rounding_mode="floor") - ph_.lo
        ww = idx % wp - pw_.lo
        inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
        mask = torch.where(inside, hh * w + ww, torch.full_like(idx, -1))
        return y, mask.to(x.dtype)
    if return_mask:
        raise ValueError("only MAX pooling has a mask top")
    if method == AVE:
        if fast:
            return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
        xp = F.pad(x, (pw_.lo, pw_.hi, ph_.lo, ph_.hi), value=0.0)
        y = F.avg_pool2d(xp, kernel, stride)  # sum / (kh * kw): no window is clipped here
        full = kh * kw
        if all(v == kh for v in ph_.pool) and all(v == kw for v in pw_.pool):
            return y
        # Caffe divides by (hend - hstart) * (wend - wstart) with ends clipped to size + pad;
        # for a window wholly outside (pad 0, stride > kernel) that product is <= 0 and Caffe
        # computes 0 / it: -0, or NaN when it is exactly 0. The map below reproduces that.
        div_h = torch.tensor(ph_.pool, dtype=x.dtype, device=x.device)
        div_w = torch.tensor(pw_.pool, dtype=x.dtype, device=x.device)
        return y * (full / (div_h[:, None] * div_w[None, :]))
    if method == STOCHASTIC:
        if pad[0] or pad[1]:
            raise ValueError("STOCHASTIC pooling has no padding in Caffe")
        xp = F.pad(x, (0, pw_.hi, 0, ph_.hi), value=0.0)
        if not training:
            # StoPoolForwardTest: sum(x^2) / (FLT_MIN + sum(x)) over the window inside the input.
            full = kh * kw
            s1 = F.avg_pool2d(xp, kernel, stride) * full
            s2 = F.avg_pool2d(xp * xp, kernel, stride) * full
            return s2 / (s1 + FLT_MIN)
        # StoPoolForwardTrain: threshold u * sum, take the first pixel whose running sum reaches
        # it (row-major order in the window). Zero padding never changes a running sum.
        n, c = x.shape[0], x.shape[1]
        cols = F.unfold(xp, kernel, stride=stride).view(n, c, kh * kw, -1)
        cum = cols.cumsum(dim=2)
        u = torch.rand((n, c, 1, cols.shape[-1]), dtype=x.dtype, device=x.device)
        reached = cum >= u * cum[:, :, -1:, :]
        idx = reached.to(torch.uint8).argmax(dim=2, keepdim=True)
        y = cols.gather(2, idx).squeeze(2)
        return y.view(n, c, ph_.out, pw_.out)
    raise ValueError(f"unknown pooling method {method}")


# ---------------------------------------------------------------------------------------------
# Tool hooks: cost (analyze), box label (render), standalone code (emit), ONNX

def _pool_cost(info, training: bool) -> tuple[int, int]:
    pp = info.node.param.pooling_param
    if pp.global_pooling:
        window = numel(info.bottom_shapes[0][2:])
    elif pp.HasField("kernel_h"):
        window = int(pp.kernel_h) * int(pp.kernel_w)
    else:
        window = int(pp.kernel_size) ** 2
    return 0, first_top(info) * window


POOL_COST = CostRule(_pool_cost, "ops = output elements x window")
SPP_COST = CostRule(
    lambda info, training: (0, first_bottom(info)
                            * int(info.node.param.spp_param.pyramid_height)),
    "ops = input elements x pyramid levels")


def pool_detail(p: caffe_pb2.LayerParameter) -> str:
    """'MAX 3×3 /2', 'AVE global'."""
    pp = p.pooling_param
    method = ("MAX", "AVE", "STOCHASTIC")[pp.pool] if pp.pool in (0, 1, 2) else "?"
    if pp.global_pooling:
        return f"{method} global"
    k = (pp.kernel_h, pp.kernel_w) if pp.HasField("kernel_h") else (pp.kernel_size, pp.kernel_size)
    s = (pp.stride_h, pp.stride_w) if pp.HasField("stride_h") else (pp.stride, pp.stride)
    pd = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad, pp.pad)
    text = f"{method} {dims_text(k)}"
    if s != (1, 1):
        text += " /" + dims_text(s, short=True)
    if pd != (0, 0):
        text += " p" + dims_text(pd, short=True)
    return text


def spp_detail(p: caffe_pb2.LayerParameter) -> str:
    """'MAX 3 levels'."""
    sp = p.spp_param
    method = ("MAX", "AVE", "STOCHASTIC")[sp.pool] if sp.pool in (0, 1, 2) else "?"
    return f"{method} {sp.pyramid_height} levels"


helper_source("caffe_pool2d", '''
def _pool_axis(size, k, s, p, ceil, any_pad):
    """Caffe's pooled extent along one axis, the padding after the input, the AVE divisors."""
    span = size + 2 * p - k
    out = (-((-span) // s) if ceil else span // s) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1  # Caffe drops a last window that would start inside the padding
    after = (out - 1) * s + k - p - size
    divisors = [min(i * s - p + k, size + p) - (i * s - p) for i in range(out)]
    return after, divisors


def caffe_pool2d(x, method, kernel, stride, pad, ceil=True):
    """Caffe's MAX/AVE pooling: output size rounded up (ceil), AVE divides by the window
    clipped to the padded input. kernel=None pools globally."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    kernel = (h, w) if kernel is None else kernel
    any_pad = pad[0] > 0 or pad[1] > 0
    after_h, div_h = _pool_axis(h, kernel[0], stride[0], pad[0], ceil, any_pad)
    after_w, div_w = _pool_axis(w, kernel[1], stride[1], pad[1], ceil, any_pad)
    if method == "max":
        x = F.pad(x, (pad[1], after_w, pad[0], after_h), value=-3.4028234663852886e38)
        return F.max_pool2d(x, kernel, stride)
    y = F.avg_pool2d(F.pad(x, (pad[1], after_w, pad[0], after_h)), kernel, stride)
    if all(d == kernel[0] for d in div_h) and all(d == kernel[1] for d in div_w):
        return y
    dh = torch.tensor(div_h, dtype=x.dtype, device=x.device)
    dw = torch.tensor(div_w, dtype=x.dtype, device=x.device)
    return y * (kernel[0] * kernel[1] / (dh[:, None] * dw[None, :]))
''')
helper_source("caffe_pool2d_extra", '''
def caffe_max_pool2d_mask(x, kernel, stride, pad, ceil=True):
    """Caffe's MAX pooling with its second top: the argmax as a float index h * W + w into
    the input plane (-1 for windows that hold no input pixel)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    kernel = (h, w) if kernel is None else kernel
    any_pad = pad[0] > 0 or pad[1] > 0
    after_h, _ = _pool_axis(h, kernel[0], stride[0], pad[0], ceil, any_pad)
    after_w, _ = _pool_axis(w, kernel[1], stride[1], pad[1], ceil, any_pad)
    xp = F.pad(x, (pad[1], after_w, pad[0], after_h), value=-3.4028234663852886e38)
    y, idx = F.max_pool2d(xp, kernel, stride, return_indices=True)
    wp = w + pad[1] + after_w
    hh = torch.div(idx, wp, rounding_mode="floor") - pad[0]
    ww = idx % wp - pad[1]
    inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
    return y, torch.where(inside, hh * w + ww, torch.full_like(idx, -1)).to(x.dtype)


def caffe_stochastic_pool2d(x, kernel, stride, ceil=True):
    """Caffe's STOCHASTIC pooling at test time: sum(x^2) / (FLT_MIN + sum(x)) per window."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    kernel = (h, w) if kernel is None else kernel
    after_h, _ = _pool_axis(h, kernel[0], stride[0], 0, ceil, False)
    after_w, _ = _pool_axis(w, kernel[1], stride[1], 0, ceil, False)
    xp = F.pad(x, (0, after_w, 0, after_h))
    full = kernel[0] * kernel[1]
    s1 = F.avg_pool2d(xp, kernel, stride) * full
    s2 = F.avg_pool2d(xp * xp, kernel, stride) * full
    return s2 / (s1 + 1.1754943508222875e-38)


def caffe_spp(x, method, levels):
    """Caffe's SPP: for level l, 2^l x 2^l bins pooled, flattened and concatenated."""
    h, w = int(x.shape[2]), int(x.shape[3])
    outs = []
    for level in range(levels):
        bins = 2 ** level
        kh, kw = -(-h // bins), -(-w // bins)
        pad = ((kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2)
        if method == "stochastic":
            y = caffe_stochastic_pool2d(x, (kh, kw), (kh, kw))
        else:
            y = caffe_pool2d(x, method, (kh, kw), (kh, kw), pad)
        if levels == 1:
            return y
        outs.append(y.flatten(1))
    return torch.cat(outs, dim=1)
''', deps=("caffe_pool2d",))

_EMIT_METHODS = {MAX: "max", AVE: "ave", STOCHASTIC: "stochastic"}


def emit_pooling(ctx: EmitContext, call: EmitCall) -> list[str] | None:
    """caffe_pool2d (MAX/AVE), or the extra helpers for the mask top and STOCHASTIC."""
    sub, x, one = call.sub, call.x, call.one
    kernel = "None" if sub.kernel is None else tuple_text(sub.kernel)
    geometry = f"{kernel}, {tuple_text(sub.stride)}"
    if sub.method == STOCHASTIC:
        ctx.helper("caffe_pool2d_extra")
        # Caffe samples one value per window in TRAIN: the file has only the TEST rule.
        return [f"{one} = caffe_stochastic_pool2d({x}, {geometry}, ceil={bool(sub.ceil)})"]
    if len(call.outs) == 2:
        ctx.helper("caffe_pool2d_extra")
        return [f"{', '.join(call.outs)} = caffe_max_pool2d_mask({x}, {geometry}, "
                f"{tuple_text(sub.pad)}, ceil={bool(sub.ceil)})"]
    ctx.helper("caffe_pool2d")
    return [f"{one} = caffe_pool2d({x}, {_EMIT_METHODS[sub.method]!r}, {geometry}, "
            f"{tuple_text(sub.pad)}, ceil={bool(sub.ceil)})"]


def emit_spp(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The caffe_spp helper."""
    ctx.helper("caffe_pool2d_extra")
    return [f"{call.one} = caffe_spp({call.x}, {_EMIT_METHODS[call.sub.method]!r}, "
            f"{call.sub.pyramid_height})"]


def _ave_rounds_up(p: caffe_pb2.LayerParameter) -> bool:
    pp = p.pooling_param
    return pp.pool == AVE and not pp.global_pooling and pp.round_mode == 0


POOL_ONNX = OnnxRule(wrong_before_opset19=_ave_rounds_up)


class CaffePooling(nn.Module):
    """Caffe's Pooling layer (MAX, AVE, STOCHASTIC; global; CEIL/FLOOR rounding; mask top)."""

    def __init__(self, method: int, kernel: tuple[int, int] | None, stride: tuple[int, int],
                 pad: tuple[int, int], ceil: bool, n_tops: int = 1, *, layer: str = "",
                 type: str = "Pooling") -> None:
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad
        self.ceil, self.n_tops = ceil, n_tops
        self.allow_fast = True
        self._layer, self._type = layer, type

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise ShapeError(f"needs a 4-D (N, C, H, W) bottom, got shape {tuple(x.shape)}",
                             layer=self._layer, type=self._type)
        kernel = self.kernel if self.kernel is not None else (int(x.shape[2]), int(x.shape[3]))
        try:
            return caffe_pool2d(x, self.method, kernel, self.stride, self.pad, self.ceil,
                                training=self.training, return_mask=self.n_tops == 2,
                                allow_fast=self.allow_fast)
        except ValueError as exc:
            raise ShapeError(str(exc), layer=self._layer, type=self._type) from exc

    def extra_repr(self) -> str:
        k = "global" if self.kernel is None else f"kernel={self.kernel}"
        return (f"{_METHOD_NAMES[self.method]}, {k}, stride={self.stride}, pad={self.pad}, "
                f"round={'CEIL' if self.ceil else 'FLOOR'}")


def _round_is_ceil(spec: LayerSpec, pp) -> bool:
    """CEIL unless round_mode FLOOR; some forks spell it ``ceil_mode: false`` (field 13)."""
    fields = pp.DESCRIPTOR.fields_by_name
    if "ceil_mode" in fields and pp.HasField("ceil_mode"):
        return bool(pp.ceil_mode)
    if pp.round_mode not in (0, 1):
        raise spec.error(f"unknown round_mode {pp.round_mode}")
    return pp.round_mode == 0


def _scalar_or_pair(spec: LayerSpec, pp, name: str, default: int | None
                    ) -> tuple[int, int] | None:
    """Caffe's Pooling convention: ``name`` OR both ``name_h`` and ``name_w``."""
    has = pp.HasField(name)
    base = "kernel" if name == "kernel_size" else name
    has_h, has_w = pp.HasField(f"{base}_h"), pp.HasField(f"{base}_w")
    if has_h or has_w:
        if has:
            raise spec.error(f"give either {name} or {base}_h and {base}_w, not both")
        if not (has_h and has_w):
            raise spec.error(f"{base}_h and {base}_w must be given together")
        return int(getattr(pp, f"{base}_h")), int(getattr(pp, f"{base}_w"))
    if has or default is None:
        if not has:
            return None
        v = int(getattr(pp, name))
        return v, v
    return default, default


def _check_plan(spec: LayerSpec, h: int, w: int, kernel, stride, pad, ceil: bool,
                method: int) -> None:
    """Build-time shape checks (with the layer's line) and a warning for windows Caffe keeps
    although they hold no input pixel."""
    ph_, pw_ = pool_plan(h, w, tuple(kernel), tuple(stride), tuple(pad), ceil)
    if ph_.out <= 0 or pw_.out <= 0:
        raise spec.error(f"kernel {tuple(kernel)} with stride {tuple(stride)} and pad "
                         f"{tuple(pad)} does not fit the {h}x{w} input (output "
                         f"{ph_.out}x{pw_.out})", shape=True)
    if (ph_.empty or pw_.empty) and method != STOCHASTIC:
        what = ("-FLT_MAX" if method == MAX
                else "0, or NaN where a window starts exactly at the edge")
        warnings.warn(f"layer '{spec.name}': with stride {tuple(stride)} > kernel "
                      f"{tuple(kernel)} and no padding, Caffe keeps pooling windows that lie "
                      f"outside the {h}x{w} input and outputs {what} there; landmarknet does "
                      "the same", stacklevel=3)


@register("Pooling", family="pool", cost=POOL_COST, detail=pool_detail, emit=emit_pooling,
          onnx=POOL_ONNX)
def pooling(spec: LayerSpec) -> Built:
    """MAX/AVE/STOCHASTIC pooling with Caffe's ceil rounding, padding rule and AVE divisor."""
    spec.expect_bottoms(1)
    pp = spec.param.pooling_param
    method = int(pp.pool)
    if method not in _METHOD_NAMES:
        raise spec.error(f"unknown pooling method {method}")
    if spec.n_tops == 2 and method != MAX:
        raise spec.error("only MAX pooling has a second (mask) top")
    if spec.n_tops not in (1, 2):
        raise spec.error(f"has 1 top (or 2 for MAX with mask), got {spec.n_tops}")
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got shape {shape}", shape=True)
    ceil = _round_is_ceil(spec, pp)
    stride = _scalar_or_pair(spec, pp, "stride", 1)
    pad = _scalar_or_pair(spec, pp, "pad", 0)
    if pp.global_pooling:
        if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
            raise spec.error("global_pooling takes no kernel size (Caffe refuses both)")
        if pad != (0, 0) or stride != (1, 1):
            raise spec.error("global_pooling needs pad 0 and stride 1 (Caffe refuses others)")
        kernel = None
    else:
        kernel = _scalar_or_pair(spec, pp, "kernel_size", None)
        if kernel is None:
            raise spec.error("kernel_size (or kernel_h and kernel_w) is required")
        if min(kernel) <= 0:
            raise spec.error("kernel size must be positive")
    if min(stride) <= 0:
        raise spec.error("stride must be positive")
    if pad != (0, 0):
        if method == STOCHASTIC:
            raise spec.error("padding is implemented only for MAX and AVE pooling (as in Caffe)")
        if kernel is not None and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
            raise spec.error(f"pad {pad} must be smaller than the kernel {kernel} (Caffe "
                             "requires pad < kernel)")
    k_now = kernel if kernel is not None else shape[2:]
    _check_plan(spec, shape[2], shape[3], k_now, stride, pad, ceil, method)
    module = CaffePooling(method, kernel, stride, pad, ceil, spec.n_tops, layer=spec.name,
                          type=spec.type)
    return Built(module, [])


def spp_level_geometry(h: int, w: int, level: int
                       ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Kernel, stride and pad of pyramid level ``level`` (SPPLayer::GetPoolingParam)."""
    bins = 2 ** level
    kh, kw = -(-h // bins), -(-w // bins)
    ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
    return (kh, kw), (kh, kw), (ph, pw)


class CaffeSPP(nn.Module):
    """Spatial pyramid pooling: levels of 2^l x 2^l bins, flattened and concatenated."""

    def __init__(self, pyramid_height: int, method: int, *, layer: str = "",
                 type: str = "SPP") -> None:
        super().__init__()
        self.pyramid_height, self.method = pyramid_height, method
        self._layer, self._type = layer, type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ShapeError(f"needs a 4-D (N, C, H, W) bottom, got shape {tuple(x.shape)}",
                             layer=self._layer, type=self._type)
        h, w = int(x.shape[2]), int(x.shape[3])
        outs = []
        for level in range(self.pyramid_height):
            kernel, stride, pad = spp_level_geometry(h, w, level)
            if (pad[0] or pad[1]) and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
                raise ShapeError(f"pyramid level {level} on a {h}x{w} input needs pad {pad} >= "
                                 f"kernel {kernel}, which Caffe's pooling refuses",
                                 layer=self._layer, type=self._type)
            y = caffe_pool2d(x, self.method, kernel, stride, pad, True, training=self.training)
            if self.pyramid_height == 1:
                return y  # Caffe's SPP with one level is a plain Pooling: no flatten
            outs.append(y.flatten(1))
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return f"pyramid_height={self.pyramid_height}, {_METHOD_NAMES[self.method]}"


@register("SPP", family="pool", cost=SPP_COST, detail=spp_detail, emit=emit_spp)
def spp(spec: LayerSpec) -> Built:
    """Spatial pyramid pooling: pyramid_height levels of 2^l bins, flattened and concatenated."""
    spec.expect_bottoms(1)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    sp = spec.param.spp_param
    if sp.pyramid_height < 1:
        raise spec.error("pyramid_height must be given and at least 1")
    method = int(sp.pool)
    if method not in _METHOD_NAMES:
        raise spec.error(f"unknown pooling method {method}")
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got shape {shape}", shape=True)
    for level in range(sp.pyramid_height):
        kernel, stride, pad = spp_level_geometry(shape[2], shape[3], level)
        if (pad[0] or pad[1]):
            if method == STOCHASTIC:
                raise spec.error(f"pyramid level {level} needs padding, which STOCHASTIC "
                                 "pooling does not have in Caffe", shape=True)
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                raise spec.error(f"pyramid level {level} ({2 ** level} bins) on a "
                                 f"{shape[2]}x{shape[3]} input needs pad {pad} >= kernel "
                                 f"{kernel}, which Caffe's pooling refuses", shape=True)
    return Built(CaffeSPP(sp.pyramid_height, method, layer=spec.name, type=spec.type), [])
