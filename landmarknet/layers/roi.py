"""Region-of-interest pooling of the R-CNN family: Fast/Faster R-CNN's ROIPooling and R-FCN's
PSROIPooling.

Both read a feature map (N, C, H, W) and regions (R, 5) = [batch index, x1, y1, x2, y2] in image
pixels (R x 5 x 1 x 1 too, as a Proposal layer or a second Input gives them) and return one
pooled map per region. The arithmetic follows the forks' CPU Forward step by step, in float32:

- ROIPooling (rbgirshick/caffe-fast-rcnn, ``roi_pooling_layer.cpp``): the corners times
  spatial_scale are rounded half away from zero; the region is max(end - start + 1, 1) cells;
  bin (ph, pw) spans floor(ph * bin) .. ceil((ph + 1) * bin) cells from the region's start,
  clipped to the map; its top is the maximum, 0 for an empty bin. The gradient goes to the first
  maximum in row-major order, as Caffe's argmax does; the regions get none.
- PSROIPooling (daijifeng001/caffe-rfcn, ``psroi_pooling_layer.cpp``): the corners are rounded
  first, then scaled (the end corner + 1); the region extent is a float of at least 0.1; bins
  are floor/ceil of float offsets, clipped; the top of (ctop, ph, pw) is the mean of channel
  (ctop * group_size + ph) * group_size + pw over its bin, 0 for an empty bin.

Neither fork checks the batch index against the batch; landmarknet refuses an index out of range
(Caffe would read another image's memory). No loop runs over regions or bins: ROIPooling
reads each bin's maximum from a 2-D sparse table of window maxima (four overlapping
power-of-two windows cover any bin), PSROIPooling each bin's sum from a summed-area table in
float64.
"""
from __future__ import annotations

import ast
import math
import re

import numpy as np
import torch
from torch import nn

from landmarknet.errors import LayerError
from landmarknet.layers.costs import CostRule, numel
from landmarknet.layers.emitting import copy_module
from landmarknet.layers.registry import Built, LayerSpec, OnnxRule, register
from landmarknet.layers.shape import fork_param, has_field

_FAMILY = "roi"
_ROI_ORIGIN = "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn; read by OpenCV DNN)"
_PSROI_ORIGIN = "R-FCN (daijifeng001/caffe-rfcn; read by OpenCV DNN)"


# ----------------------------------------------------------------------------------------------
# Shared: the regions bottom
# ----------------------------------------------------------------------------------------------

def _example_regions(field: str):
    """The export check's values for a regions input (bottom 1): R rows [batch index, x1, y1,
    x2, y2] inside the image the map comes from (map size / spatial_scale), from one pixel to
    the whole image, any image of the batch. Standard-normal noise would give batch indices
    outside the batch (and regions of nothing)."""
    def example(param, index, shape, bottom_shapes, images, rng):
        if index != 1 or len(bottom_shapes[0]) != 4:
            return None
        scale = getattr(param, field).spatial_scale or 1.0
        height, width = bottom_shapes[0][2] / scale, bottom_shapes[0][3] / scale
        r = int(shape[0])
        x1, y1 = rng.uniform(0, width - 1, r), rng.uniform(0, height - 1, r)
        x2 = np.minimum(x1 + rng.uniform(0, width, r), width - 1)
        y2 = np.minimum(y1 + rng.uniform(0, height, r), height - 1)
        rows = np.stack([rng.integers(0, max(images, 1), r), x1, y1, x2, y2], axis=1)
        return rows.astype(np.float32).reshape(shape)
    return example


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round() of float32 values (half away from zero), as int64.

    torch.round rounds half to even, and floor(x + 0.5) in float32 turns 0.49999997 into 1;
    float64 holds every float32 and x + 0.5 exactly, so the rounding is C's.
    """
    x = x.double()
    return (torch.sign(x) * torch.floor(x.abs() + 0.5)).to(torch.int64)


def _regions(rois: torch.Tensor, batch: int, layer: str, type_: str) -> torch.Tensor:
    """The regions as (R, 5) float32, without gradient; batch indices checked when known."""
    rois = rois.detach().reshape(rois.shape[0], 5).float()
    if rois.device.type != "meta" and rois.shape[0]:
        index = rois[:, 0].to(torch.int64)  # the forks cast to int: truncation toward zero
        bad = (index < 0) | (index >= batch)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0, 0])
            raise LayerError(f"region {first} has batch index {float(rois[first, 0]):g}, "
                             f"outside the batch of {batch} (0..{batch - 1}); the fork would "
                             "read memory past the feature map", layer=layer, type=type_)
    return rois


def _check_bottoms(spec: LayerSpec) -> tuple[int, int, int, int]:
    """Two bottoms: a 4-D map and R x 5 regions (R x 5 x 1 x 1 too); returns the map's shape."""
    spec.expect_bottoms(2)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    feat, rois = (tuple(s) for s in spec.bottom_shapes)
    if len(feat) != 4:
        raise spec.error(f"bottom 0 (the feature map) must be (N, C, H, W), got {feat}",
                         shape=True)
    # The forks CHECK channels * height * width == 5 on bottom 1 (Caffe's legacy 4 axes).
    if not 2 <= len(rois) <= 4 or math.prod(rois[1:]) != 5:
        raise spec.error(f"bottom 1 (the regions) must be R x 5 ([batch index, x1, y1, x2, y2]) "
                         f"or R x 5 x 1 x 1, got {rois}", shape=True)
    return feat  # type: ignore[return-value]


def _scale_text(scale: float) -> str:
    """0.0625 -> '1/16' (the usual stride form), else the number."""
    inv = 1.0 / scale if scale else 0.0
    if scale and abs(inv - round(inv)) < 1e-6 and round(inv) > 1:
        return f"1/{round(inv)}"
    return f"{scale:g}"


# ----------------------------------------------------------------------------------------------
# ROIPooling (Fast R-CNN)
# ----------------------------------------------------------------------------------------------

def _first_max(va: torch.Tensor, ia: torch.Tensor, vb: torch.Tensor, ib: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger of two (value, flat index) candidates; on a tie the smaller index, which is
    the cell Caffe's row-major '>' scan keeps."""
    take_b = (vb > va) | ((vb == va) & (ib < ia))
    return torch.where(take_b, vb, va), torch.where(take_b, ib, ia)


def _max_table(x: torch.Tensor, levels_h: int, levels_w: int, with_index: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """2-D sparse table of x (N, H, W, C), channels last so that a bin's C maxima are read
    as one contiguous row: level (kh, kw) holds, for each top-left cell, the maximum of the
    2**kh x 2**kw window there and the flat index h * W + w of its first occurrence in
    row-major order (only ``with_index``: the gradient needs it, inference does not). Shaped
    (levels_h, levels_w, N, H, W, C); cells past the last window hold -inf."""
    height, width = int(x.shape[1]), int(x.shape[2])  # Python ints under tracing: unrolled
    table_v = x.new_full((levels_h, levels_w, *x.shape), -math.inf)
    table_v[0, 0] = x
    table_i = None
    if with_index:
        table_i = torch.zeros(table_v.shape, dtype=torch.int32, device=x.device)
        table_i[0, 0] = torch.arange(height * width, dtype=torch.int32,
                                     device=x.device).reshape(height, width, 1)
    # Widen along W within single rows, then heighten along H. The left (upper) window's first
    # maximum comes first in row-major order, so a tie keeps it: '>' alone decides.
    for kw in range(1, levels_w):
        step, length = 1 << (kw - 1), width - (1 << kw) + 1
        va = table_v[0, kw - 1, :, :, :length]
        vb = table_v[0, kw - 1, :, :, step:step + length]
        right = vb > va
        table_v[0, kw, :, :, :length] = torch.where(right, vb, va)
        if table_i is not None:
            table_i[0, kw, :, :, :length] = torch.where(
                right, table_i[0, kw - 1, :, :, step:step + length],
                table_i[0, kw - 1, :, :, :length])
    for kh in range(1, levels_h):
        step, length = 1 << (kh - 1), height - (1 << kh) + 1
        va = table_v[kh - 1, :, :, :length]
        vb = table_v[kh - 1, :, :, step:step + length]
        lower = vb > va
        table_v[kh, :, :, :length] = torch.where(lower, vb, va)
        if table_i is not None:
            table_i[kh, :, :, :length] = torch.where(
                lower, table_i[kh - 1, :, :, step:step + length],
                table_i[kh - 1, :, :, :length])
    return table_v, table_i


def _roi_bins(start: torch.Tensor, end: torch.Tensor, pooled: int, size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, pooled) first and past-the-end cells of each bin along one axis, clipped to the map."""
    extent = torch.clamp(end - start + 1, min=1).float()  # malformed regions become 1 cell
    bin_size = extent / pooled
    p = torch.arange(pooled, dtype=torch.float32, device=start.device)
    lo = torch.floor(p[None, :] * bin_size[:, None]).to(torch.int64) + start[:, None]
    hi = torch.ceil((p[None, :] + 1) * bin_size[:, None]).to(torch.int64) + start[:, None]
    return lo.clamp(0, size), hi.clamp(0, size)


def _roi_max(x: torch.Tensor, batch: torch.Tensor, hs: torch.Tensor, he: torch.Tensor,
             ws: torch.Tensor, we: torch.Tensor, with_index: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each bin's maximum (R, PH, PW, C) of x (N, H, W, C), and with ``with_index`` the flat
    index h * W + w of its first maximum (row-major, as Caffe's scan finds it): four
    overlapping power-of-two windows of the sparse table cover the bin. Empty bins get -inf
    and some index (the caller zeroes them)."""
    height, width = int(x.shape[1]), int(x.shape[2])
    # Levels up to the tallest / widest bin: bins are usually a few cells (a 7x7 grid on a
    # region), so this is 2-3 levels a side instead of log2 of the map. A trace keeps every
    # level (it must hold for any regions), and so does shape inference on meta tensors.
    levels_h, levels_w = max(height, 1).bit_length(), max(width, 1).bit_length()
    if not torch.jit.is_tracing() and hs.numel() and x.device.type != "meta":
        levels_h = int((he - hs).max().clamp(min=1)).bit_length()
        levels_w = int((we - ws).max().clamp(min=1)).bit_length()
    table_v, table_i = _max_table(x, levels_h, levels_w, with_index)
    # floor(log2(L)) for every possible bin extent L = 1..max(H, W) (entry 0 is unused)
    log2 = torch.tensor([0] + [n.bit_length() - 1 for n in range(1, max(height, width) + 1)],
                        dtype=torch.int64, device=x.device)

    def windows(lo, hi, size):  # (R, P) -> level, first and last window start, all valid
        empty = hi <= lo
        lo = torch.where(empty, torch.zeros_like(lo), lo).clamp(max=max(size - 1, 0))
        hi = torch.where(empty, lo + 1, hi)
        k = log2[hi - lo]
        return k, lo, hi - torch.bitwise_left_shift(torch.ones_like(k), k)

    kh, h_a, h_b = windows(hs, he, height)
    kw, w_a, w_b = windows(ws, we, width)
    kh, h_a, h_b = kh[:, :, None], h_a[:, :, None], h_b[:, :, None]  # (R, PH, 1)
    kw, w_a, w_b = kw[:, None, :], w_a[:, None, :], w_b[:, None, :]  # (R, 1, PW)
    b = batch[:, None, None]
    corners = ((h_a, w_a), (h_a, w_b), (h_b, w_a), (h_b, w_b))
    if table_i is None:
        best_v = table_v[kh, kw, b, h_a, w_a]
        for h, w in corners[1:]:
            best_v = torch.maximum(best_v, table_v[kh, kw, b, h, w])
        return best_v, None
    best_v, best_i = table_v[kh, kw, b, h_a, w_a], table_i[kh, kw, b, h_a, w_a]
    for h, w in corners[1:]:  # each (R, PH, PW, C)
        best_v, best_i = _first_max(best_v, best_i, table_v[kh, kw, b, h, w],
                                    table_i[kh, kw, b, h, w])
    return best_v, best_i


class ROIPooling(nn.Module):
    """Fast R-CNN's max pooling of each region into pooled_h x pooled_w bins."""

    def __init__(self, pooled_h: int, pooled_w: int, spatial_scale: float, *, layer: str = "",
                 type: str = "ROIPooling") -> None:
        super().__init__()
        self.pooled_h, self.pooled_w, self.spatial_scale = pooled_h, pooled_w, spatial_scale
        self._layer, self._type = layer, type

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        r = _regions(rois, n, self._layer, self._type)
        scale = torch.tensor(self.spatial_scale, dtype=torch.float32, device=r.device)
        batch = r[:, 0].to(torch.int64)
        # corners times the scale in float32 (the fork's Dtype), then C's round()
        x1, y1, x2, y2 = (_round_half_away(r[:, i] * scale) for i in range(1, 5))
        hs, he = _roi_bins(y1, y2, self.pooled_h, h)
        ws, we = _roi_bins(x1, x2, self.pooled_w, w)
        need_grad = torch.is_grad_enabled() and x.requires_grad
        with torch.no_grad():
            best, flat = _roi_max(x.detach().permute(0, 2, 3, 1), batch, hs, he, ws, we,
                                  with_index=need_grad)
        if need_grad:
            # Gathering the maxima from x keeps the gradient Caffe's: each bin's top goes to
            # the cell its argmax names, summed over bins and regions.
            bins = self.pooled_h * self.pooled_w
            chans = torch.arange(c, device=x.device)
            flat = flat.permute(0, 3, 1, 2).to(torch.int64).reshape(-1, c, bins)
            out = x.reshape(n, c, h * w)[batch[:, None, None], chans[None, :, None], flat]
            out = out.reshape(-1, c, self.pooled_h, self.pooled_w)
        else:
            out = best.permute(0, 3, 1, 2)
        empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]  # (R, PH, PW)
        return out.masked_fill(empty[:, None], 0.0)

    def extra_repr(self) -> str:
        return (f"pooled=({self.pooled_h}, {self.pooled_w}), "
                f"spatial_scale={self.spatial_scale}")


def _roi_cost(info, training: bool) -> tuple[int, int]:
    """Comparisons when every region covers the whole map: R x C x H x W."""
    if not info.bottom_shapes or not info.top_shapes:
        return 0, 0
    n_rois = int(info.top_shapes[0][0])
    return 0, n_rois * numel(info.bottom_shapes[0][1:])


ROI_COST = CostRule(_roi_cost, "ops = regions × C × H × W of the map (a bound: each region "
                               "covering the whole map)")


def roi_detail(param) -> str:
    """'7×7 1/16': the pooled size and the spatial scale."""
    p = param.roi_pooling_param
    return f"{p.pooled_h}×{p.pooled_w} {_scale_text(p.spatial_scale)}"


@register("ROIPooling", family=_FAMILY, origin=_ROI_ORIGIN, cost=ROI_COST, detail=roi_detail,
          emit=copy_module(_round_half_away, _regions, _roi_bins, _first_max, _max_table,
                           _roi_max),
          onnx=OnnxRule(example_input=_example_regions("roi_pooling_param")))
def roi_pooling(spec: LayerSpec) -> Built:
    """Max-pool each region [batch, x1, y1, x2, y2] into pooled_h x pooled_w bins (R, C, ph, pw)."""
    _check_bottoms(spec)
    p = fork_param(spec, "roi_pooling_param", "Fast R-CNN")
    if not spec.param.HasField("roi_pooling_param"):
        raise spec.error("roi_pooling_param is missing (pooled_h and pooled_w are required)")
    for name in ("pooled_h", "pooled_w"):
        if getattr(p, name) <= 0:  # the fork's LayerSetUp CHECK_GT
            how = "is missing" if not has_field(p, name) else "must be > 0"
            raise spec.error(f"roi_pooling_param.{name} {how}")
    if not math.isfinite(p.spatial_scale) or p.spatial_scale <= 0:
        raise spec.error(f"roi_pooling_param.spatial_scale must be positive, got "
                         f"{p.spatial_scale:g}")
    return Built(ROIPooling(int(p.pooled_h), int(p.pooled_w), float(p.spatial_scale),
                            layer=spec.name, type=spec.type))


# ----------------------------------------------------------------------------------------------
# PSROIPooling (R-FCN)
# ----------------------------------------------------------------------------------------------

def _psroi_bins(start: torch.Tensor, end: torch.Tensor, group: int, size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, group) first and past-the-end cells of each bin along one axis, clipped to the map;
    ``start`` and ``end`` are the scaled float32 corners (end already + 1 before scaling)."""
    extent = torch.maximum(end - start, torch.tensor(0.1, dtype=torch.float32,
                                                     device=start.device))
    bin_size = extent / group
    g = torch.arange(group, dtype=torch.float32, device=start.device)
    # product, then sum, each rounded to float32 as the fork's separate operations are
    lo = torch.floor(g[None, :] * bin_size[:, None] + start[:, None]).to(torch.int64)
    hi = torch.ceil((g[None, :] + 1) * bin_size[:, None] + start[:, None]).to(torch.int64)
    return lo.clamp(0, size), hi.clamp(0, size)


class PSROIPooling(nn.Module):
    """R-FCN's position-sensitive average pooling into output_dim x group_size x group_size."""

    def __init__(self, output_dim: int, group_size: int, spatial_scale: float, *,
                 layer: str = "", type: str = "PSROIPooling") -> None:
        super().__init__()
        self.output_dim, self.group_size = output_dim, group_size
        self.spatial_scale = spatial_scale
        self._layer, self._type = layer, type

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k, dim = self.group_size, self.output_dim
        r = _regions(rois, n, self._layer, self._type)
        scale = torch.tensor(self.spatial_scale, dtype=torch.float32, device=r.device)
        batch = r[:, 0].to(torch.int64)
        # rounded corners (exact in float32), scaled in float32; the end corner + 1 first
        x1, y1, x2, y2 = (_round_half_away(r[:, i]).float() for i in range(1, 5))
        hs, he = _psroi_bins(y1 * scale, (y2 + 1) * scale, k, h)
        ws, we = _psroi_bins(x1 * scale, (x2 + 1) * scale, k, w)
        # Summed-area table in float64: a bin's sum is four lookups, differentiable (each cell
        # of a bin gets 1/area of its top's gradient, as the fork's GPU backward gives; its CPU
        # backward is NOT_IMPLEMENTED).
        table = torch.nn.functional.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))
        g = torch.arange(k, device=x.device)
        ch = ((torch.arange(dim, device=x.device)[:, None, None] * k + g[None, :, None]) * k
              + g[None, None, :])  # (D, k, k): the position-sensitive channel of each bin
        b = batch[:, None, None, None]
        chan = ch[None]
        top, bottom = hs[:, None, :, None], he[:, None, :, None]
        left, right = ws[:, None, None, :], we[:, None, None, :]
        total = (table[b, chan, bottom, right] - table[b, chan, top, right]
                 - table[b, chan, bottom, left] + table[b, chan, top, left])
        area = (bottom - top) * (right - left)  # (R, 1, k, k)
        empty = area <= 0
        mean = total.float() / area.clamp(min=1).float()
        return mean.masked_fill(empty, 0.0).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"output_dim={self.output_dim}, group_size={self.group_size}, "
                f"spatial_scale={self.spatial_scale}")


def _psroi_cost(info, training: bool) -> tuple[int, int]:
    """Additions when every region covers the whole map: R x output_dim x H x W."""
    if not info.bottom_shapes or not info.top_shapes:
        return 0, 0
    n_rois, dim = int(info.top_shapes[0][0]), int(info.top_shapes[0][1])
    return 0, n_rois * dim * numel(info.bottom_shapes[0][2:])


PSROI_COST = CostRule(_psroi_cost, "ops = regions × output_dim × H × W of the map (a bound: "
                                   "each region covering the whole map)")


def psroi_detail(param) -> str:
    """'21×7×7 1/16': output_dim, the group grid and the spatial scale."""
    p = param.psroi_pooling_param
    return f"{p.output_dim}×{p.group_size}×{p.group_size} {_scale_text(p.spatial_scale)}"


@register("PSROIPooling", family=_FAMILY, origin=_PSROI_ORIGIN, cost=PSROI_COST,
          detail=psroi_detail, emit=copy_module(_round_half_away, _regions, _psroi_bins),
          onnx=OnnxRule(example_input=_example_regions("psroi_pooling_param")))
def psroi_pooling(spec: LayerSpec) -> Built:
    """Position-sensitive mean of each region's bins (R, output_dim, group_size, group_size)."""
    feat = _check_bottoms(spec)
    p = fork_param(spec, "psroi_pooling_param", "R-FCN")
    if not spec.param.HasField("psroi_pooling_param"):
        raise spec.error("psroi_pooling_param is missing (spatial_scale, output_dim and "
                         "group_size are required)")
    for name in ("spatial_scale", "output_dim", "group_size"):
        if not has_field(p, name):  # required in the fork's and OpenCV's schema
            raise spec.error(f"psroi_pooling_param.{name} is missing (the R-FCN fork requires "
                             "it)")
    if p.output_dim <= 0 or p.group_size <= 0:
        raise spec.error(f"psroi_pooling_param.output_dim and group_size must be > 0, got "
                         f"{p.output_dim} and {p.group_size}")
    if not math.isfinite(p.spatial_scale) or p.spatial_scale <= 0:
        raise spec.error(f"psroi_pooling_param.spatial_scale must be positive, got "
                         f"{p.spatial_scale:g}")
    dim, k = int(p.output_dim), int(p.group_size)
    if feat[1] != dim * k * k:  # the fork's Reshape CHECK_EQ
        raise spec.error(f"bottom 0 needs output_dim × group_size² = {dim}×{k}×{k} = "
                         f"{dim * k * k} channels, got {feat[1]}", shape=True)
    return Built(PSROIPooling(dim, k, float(p.spatial_scale), layer=spec.name, type=spec.type))


# ----------------------------------------------------------------------------------------------
# Region proposals (Faster R-CNN's RPN): py-faster-rcnn's Python ProposalLayer and OpenCV's
# Proposal type
# ----------------------------------------------------------------------------------------------
# The TEST path of rbgirshick/py-faster-rcnn (lib/rpn/proposal_layer.py with generate_anchors.py,
# fast_rcnn/bbox_transform.py, the NMS of lib/nms and the cfg defaults of fast_rcnn/config.py):
#
# - anchors: generate_anchors(base_size, ratios, scales) in float64, np.round (half to even) of
#   the ratio widths/heights, ratio outer and scale inner; shifted to every cell (h, w) of the
#   map by (w, h) * feat_stride, rows in (h, w, a) order (K*A layout), then cast to float32;
# - scores: the second half of the 2A channels (the foreground), deltas the 4A channels, both
#   in (h, w, a) order; boxes decoded in float32 with the +1 width convention, clipped to
#   [0, width - 1] x [0, height - 1] of im_info, boxes narrower or lower than
#   min_size * im_info[2] dropped;
# - order: numpy's argsort()[::-1] (descending), cut to pre_nms_topn, then the NMS sorts its
#   input the same way again; greedy NMS with +1 areas in float32, a box suppressed when its
#   overlap with a kept one is > nms_thresh (the default GPU NMS and py_cpu_nms; the Cython
#   cpu_nms suppresses on >=); the first post_nms_topn kept boxes.
#
# Ties. numpy's default argsort is an unstable quicksort (and, in recent numpy on AVX2/AVX-512
# CPUs, a vectorised sort), so py-faster-rcnn's order among equal scores depends on numpy's
# version and the CPU. landmarknet sorts as argsort(kind="stable")[::-1] would, in both places:
# at the pre_nms_topn cut the LATER anchor (higher (h, w, a) index) of equal scores comes first,
# and the NMS's second reversal puts equal scores back in ascending index order.
#
# exp(). numpy's float32 exp differs from the correctly rounded value in the last bit for many
# inputs, and differently across numpy versions and CPUs; landmarknet computes exp in float64
# and rounds it to float32 (what glibc's expf, and numpy of py-faster-rcnn's time, give).

_PROPOSAL_ORIGIN = "Faster R-CNN / R-FCN (rbgirshick/py-faster-rcnn, Python layer)"
_OPENCV_PROPOSAL_ORIGIN = "OpenCV DNN (Faster R-CNN's proposal layer, proposal_param)"
_PROPOSAL_NO_EXPORT = (
    "the proposals are a data-dependent number of rows (boxes left after the min_size filter "
    "and the NMS, at most post_nms_topn), chosen by a greedy NMS loop that tracing would bake "
    "into the graph as constants; export the net up to the RPN's outputs (rpn_cls_prob_reshape, "
    "rpn_bbox_pred) and run the proposal step outside ONNX")
#: fast_rcnn/config.py: (RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE)
_RPN_CFG = {"test": (6000, 300, 0.7, 16), "train": (12000, 2000, 0.7, 16)}
_RPN_RATIOS = (0.5, 1.0, 2.0)
_RPN_SCALES = (8.0, 16.0, 32.0)
_PARAM_KEYS = ("feat_stride", "scales", "ratios")


def rpn_anchors(base_size: float, ratios, scales) -> tuple[tuple[float, float, float, float], ...]:
    """generate_anchors' (A, 4) reference windows [x1, y1, x2, y2] around cell (0, 0), ratio
    outer and scale inner, in float64 (Python floats: the same IEEE double operations as
    numpy, and round() rounds half to even as np.round does)."""
    w = h = float(base_size)  # the reference window (0, 0, base - 1, base - 1)
    x_ctr = y_ctr = 0.5 * (w - 1)
    out = []
    for ratio in ratios:
        ws = float(round(math.sqrt(w * h / float(ratio))))
        hs = float(round(ws * float(ratio)))
        # the ratio window, then its width/height/centre again (as _scale_enum recomputes them)
        x1, y1 = x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1)
        x2, y2 = x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)
        rw, rh = x2 - x1 + 1, y2 - y1 + 1
        cx, cy = x1 + 0.5 * (rw - 1), y1 + 0.5 * (rh - 1)
        for scale in scales:
            sw, sh = rw * float(scale), rh * float(scale)
            out.append((cx - 0.5 * (sw - 1), cy - 0.5 * (sh - 1),
                        cx + 0.5 * (sw - 1), cy + 0.5 * (sh - 1)))
    return tuple(out)


def _greedy_nms(boxes: torch.Tensor, thresh: torch.Tensor, limit: int) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS over boxes (n, 4) already in score order: +1
    areas, float32 overlaps, suppressed when > thresh; stops at ``limit`` kept boxes (<= 0: no
    limit), which keeps the same first boxes as the full NMS would. One vector step per kept
    box."""
    n = int(boxes.shape[0])
    x1, y1, x2, y2 = boxes.unbind(1)
    one = torch.ones((), dtype=boxes.dtype, device=boxes.device)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    alive = torch.ones(n, dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    i = 0
    while i < n:
        keep.append(i)
        if 0 < limit <= len(keep):
            break
        w = torch.maximum(zero, torch.minimum(x2[i], x2[i + 1:]) - torch.maximum(x1[i], x1[i + 1:])
                          + one)
        h = torch.maximum(zero, torch.minimum(y2[i], y2[i + 1:]) - torch.maximum(y1[i], y1[i + 1:])
                          + one)
        inter = w * h
        overlap = inter / (areas[i] + areas[i + 1:] - inter)
        alive[i + 1:] &= ~(overlap > thresh)
        rest = torch.nonzero(alive[i + 1:])
        if rest.numel() == 0:
            break
        i = i + 1 + int(rest[0, 0])
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def _descending(scores: torch.Tensor) -> torch.Tensor:
    """numpy's argsort(kind='stable')[::-1]: descending, equal scores in descending index."""
    return torch.argsort(scores, stable=True).flip(0)


class Proposal(nn.Module):
    """Faster R-CNN's region proposals: anchors + deltas, clip, min-size filter, NMS (TEST)."""

    def __init__(self, anchors, feat_stride: float, pre_nms_topn: int, post_nms_topn: int,
                 nms_thresh: float, min_size: float, n_tops: int = 1, *, layer: str = "",
                 type: str = "Proposal") -> None:
        super().__init__()
        self.anchors = tuple(tuple(float(v) for v in a) for a in anchors)  # (A, 4) float64
        self.feat_stride = float(feat_stride)
        self.pre_nms_topn, self.post_nms_topn = int(pre_nms_topn), int(post_nms_topn)
        self.nms_thresh, self.min_size = float(nms_thresh), float(min_size)
        self.n_tops = int(n_tops)
        self._layer, self._type = layer, type

    def _boxes(self, height: int, width: int, device) -> torch.Tensor:
        """Every shifted anchor (H * W * A, 4), rows in (h, w, a) order: float64, then float32
        (py-faster-rcnn adds int shifts to float64 anchors, then casts to the deltas' type)."""
        base = torch.tensor(self.anchors, dtype=torch.float64, device=device)  # (A, 4)
        sx = torch.arange(width, dtype=torch.float64, device=device) * self.feat_stride
        sy = torch.arange(height, dtype=torch.float64, device=device) * self.feat_stride
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # (K, 1, 4), K = h*W+w
        return (shifts + base[None]).reshape(-1, 4).float()

    def forward(self, cls_prob: torch.Tensor, bbox_pred: torch.Tensor, im_info: torch.Tensor):
        n_anchors = len(self.anchors)
        if cls_prob.shape[0] != 1 or bbox_pred.shape[0] != 1 or im_info.shape[0] != 1:
            raise LayerError(f"only single-image batches are supported (py-faster-rcnn asserts "
                             f"it), got {tuple(cls_prob.shape)}, {tuple(bbox_pred.shape)} and "
                             f"{tuple(im_info.shape)}", layer=self._layer, type=self._type)
        height, width = int(cls_prob.shape[2]), int(cls_prob.shape[3])
        with torch.no_grad():  # the layer passes no gradient (its backward is empty)
            # foreground scores and deltas in (h, w, a) order, as the anchors
            scores = cls_prob.detach()[0, n_anchors:].float().permute(1, 2, 0).reshape(-1)
            deltas = bbox_pred.detach()[0].float().permute(1, 2, 0).reshape(-1, 4)
            info = im_info.detach().reshape(-1).float()
            anchors = self._boxes(height, width, scores.device)
            # bbox_transform_inv in float32, one rounding per numpy operation
            half = torch.tensor(0.5, dtype=torch.float32, device=scores.device)
            one = torch.tensor(1.0, dtype=torch.float32, device=scores.device)
            widths = anchors[:, 2] - anchors[:, 0] + one
            heights = anchors[:, 3] - anchors[:, 1] + one
            ctr_x = anchors[:, 0] + half * widths
            ctr_y = anchors[:, 1] + half * heights
            pred_x = deltas[:, 0] * widths + ctr_x
            pred_y = deltas[:, 1] * heights + ctr_y
            pred_w = torch.exp(deltas[:, 2].double()).float() * widths
            pred_h = torch.exp(deltas[:, 3].double()).float() * heights
            x_hi, y_hi = info[1] - one, info[0] - one  # clip_boxes: width - 1, height - 1
            zero = torch.zeros((), dtype=torch.float32, device=scores.device)

            def clip(v, hi):
                return torch.maximum(torch.minimum(v, hi), zero)

            boxes = torch.stack([clip(pred_x - half * pred_w, x_hi),
                                 clip(pred_y - half * pred_h, y_hi),
                                 clip(pred_x + half * pred_w, x_hi),
                                 clip(pred_y + half * pred_h, y_hi)], dim=1)
            # _filter_boxes: min_size at the input image's scale, compared in float32
            least = torch.tensor(self.min_size, dtype=torch.float32, device=scores.device) * info[2]
            keep = torch.nonzero(((boxes[:, 2] - boxes[:, 0] + one) >= least)
                                 & ((boxes[:, 3] - boxes[:, 1] + one) >= least)).reshape(-1)
            boxes, scores = boxes[keep], scores[keep]
            order = _descending(scores)
            if self.pre_nms_topn > 0:
                order = order[:self.pre_nms_topn]
            boxes, scores = boxes[order], scores[order]
            order = _descending(scores)  # the NMS sorts its input again
            boxes, scores = boxes[order], scores[order]
            thresh = torch.tensor(self.nms_thresh, dtype=torch.float32, device=scores.device)
            kept = _greedy_nms(boxes, thresh, self.post_nms_topn)
            boxes, scores = boxes[kept], scores[kept]
            rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
        if self.n_tops == 2:
            return rois, scores.reshape(-1, 1)
        return rois

    def extra_repr(self) -> str:
        return (f"anchors={len(self.anchors)}, feat_stride={self.feat_stride:g}, "
                f"pre_nms_topn={self.pre_nms_topn}, post_nms_topn={self.post_nms_topn}, "
                f"nms_thresh={self.nms_thresh:g}, min_size={self.min_size:g}")


def _proposal_cost(info, training: bool) -> tuple[int, int]:
    """Decoding every anchor, then at most pre_nms x post_nms overlaps."""
    if not info.bottom_shapes or not info.top_shapes:
        return 0, 0
    n_anchors = numel(info.bottom_shapes[1][1:]) // 4
    return 0, n_anchors * 10 + n_anchors * int(info.top_shapes[0][0])


PROPOSAL_COST = CostRule(_proposal_cost, "ops = 10 × anchors (decode, clip, filter) + anchors × "
                                         "proposals (NMS overlaps, a bound)")

_PARAM_ENTRY = re.compile(
    r"""\s*(?:(?P<q>['"])(?P<qkey>\w+)(?P=q)|(?P<key>\w+))\s*:\s*"""
    r"""(?P<value>(?:!!python/tuple\s*)?(?:\[[^\[\]]*\]|\([^()]*\)|[^,\n\[\]()'"{}]+?))"""
    r"""\s*(?:[,\n]|$)""")


def parse_rpn_param_str(text: str, spec: LayerSpec) -> dict:
    """py-faster-rcnn's param_str (YAML of one mapping, e.g. ``'feat_stride': 16`` or
    ``'feat_stride': 16 \\n'scales': !!python/tuple [4, 8, 16, 32]``; a Python dict literal
    too) -> {key: number or tuple}. Read with a small scanner and ast.literal_eval of each
    value: nothing in a prototxt is evaluated as code."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    out: dict = {}
    pos = 0
    while pos < len(body):
        if not body[pos:].strip(" \t\r\n,"):
            break
        match = _PARAM_ENTRY.match(body, pos)
        if match is None or match.end() == pos:
            raise spec.error(f"python_param.param_str {text!r}: cannot read it from position "
                             f"{pos} ({body[pos:pos + 20]!r}); expected entries like "
                             "'feat_stride': 16 and 'scales': (8, 16, 32)")
        key = match.group("qkey") or match.group("key")
        raw = match.group("value").strip()
        raw = raw.removeprefix("!!python/tuple").strip()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise spec.error(f"python_param.param_str: '{key}' has value {raw!r}, which is not "
                             "a number or a list of numbers") from None
        if key in out:
            raise spec.error(f"python_param.param_str gives '{key}' twice")
        out[key] = value
        pos = match.end()
    unknown = sorted(set(out) - set(_PARAM_KEYS))
    if unknown:
        raise spec.error(f"python_param.param_str: unknown key(s) {', '.join(unknown)} for "
                         f"rpn.proposal_layer.ProposalLayer (known: {', '.join(_PARAM_KEYS)})")
    return out


def _positive_numbers(value, what: str, spec: LayerSpec) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                             and math.isfinite(v) and v > 0 for v in values):
        raise spec.error(f"{what} must be positive numbers, got {value!r}")
    return tuple(float(v) for v in values)


def _check_proposal_shapes(spec: LayerSpec, n_anchors: int) -> tuple[int, int]:
    """Three bottoms (1, 2A, H, W), (1, 4A, H, W), (1, >= 3); one or two tops."""
    spec.expect_bottoms(3)
    if spec.n_tops not in (1, 2):
        raise spec.error(f"needs 1 or 2 tops (rois, [scores]), got {spec.n_tops}")
    cls, bbox, info = (tuple(s) for s in spec.bottom_shapes)
    if len(cls) != 4 or len(bbox) != 4:
        raise spec.error(f"bottoms 0 and 1 must be (1, 2A, H, W) and (1, 4A, H, W), got {cls} "
                         f"and {bbox}", shape=True)
    if len(info) != 2 or info[1] < 3:
        raise spec.error(f"bottom 2 (im_info) must be (1, 3) = [height, width, scale], got "
                         f"{info}", shape=True)
    if cls[0] != 1 or bbox[0] != 1 or info[0] != 1:
        raise spec.error(f"batch size must be 1 (py-faster-rcnn supports single-image batches "
                         f"only), got {cls[0]}, {bbox[0]} and {info[0]}", shape=True)
    if cls[1] != 2 * n_anchors:
        raise spec.error(f"bottom 0 (scores) needs 2A = {2 * n_anchors} channels for "
                         f"{n_anchors} anchors, got {cls[1]}", shape=True)
    if bbox[1] != 4 * n_anchors:
        raise spec.error(f"bottom 1 (deltas) needs 4A = {4 * n_anchors} channels for "
                         f"{n_anchors} anchors, got {bbox[1]}", shape=True)
    if cls[2:] != bbox[2:]:
        raise spec.error(f"bottoms 0 and 1 differ in H x W: {cls} and {bbox}", shape=True)
    return cls[2], cls[3]


def _proposal_built(spec: LayerSpec, anchors, stride: float, pre: int, post: int,
                    thresh: float, min_size: float) -> Built:
    height, width = _check_proposal_shapes(spec, len(anchors))
    module = Proposal(anchors, stride, pre, post, thresh, min_size, spec.n_tops,
                      layer=spec.name, type=spec.type)
    # the top shapes depend on the data: at most min(anchors, pre, post) rows
    rows = height * width * len(anchors)
    for cap in (pre, post):
        if cap > 0:
            rows = min(rows, cap)
    return Built(module, top_shapes=[(rows, 5), (rows, 1)][:spec.n_tops])


def proposal_detail(param) -> str:
    """'/16 9 anchors': the stride and the number of anchors per cell (the Python layer's box
    says 'ProposalLayer' first)."""
    if param.type == "Python":
        try:
            values = parse_rpn_param_str(param.python_param.param_str,
                                         LayerSpec(param.name, param.type, param, [], 1))
        except LayerError:
            return "ProposalLayer"
        scales = values.get("scales", _RPN_SCALES)
        ratios = values.get("ratios", _RPN_RATIOS)
        n = (len(scales) if isinstance(scales, (list, tuple)) else 1) * (
            len(ratios) if isinstance(ratios, (list, tuple)) else 1)
        return f"ProposalLayer /{values.get('feat_stride', '?')} {n} anchors"
    p = param.proposal_param
    n = (len(p.ratio) or len(_RPN_RATIOS)) * (len(p.scale) or len(_RPN_SCALES))
    return f"/{p.feat_stride} {n} anchors"


@register("Python:rpn.proposal_layer.ProposalLayer", family=_FAMILY, origin=_PROPOSAL_ORIGIN,
          cost=PROPOSAL_COST, detail=proposal_detail,
          emit=copy_module(_descending, _greedy_nms),
          onnx=OnnxRule(not_exportable=_PROPOSAL_NO_EXPORT))
def rpn_proposal_layer(spec: LayerSpec) -> Built:
    """Faster R-CNN's RPN proposals (R, 5) [0, x1, y1, x2, y2] (+ scores (R, 1)), TEST cfg."""
    values = parse_rpn_param_str(spec.param.python_param.param_str, spec)
    if "feat_stride" not in values:
        raise spec.error("python_param.param_str has no 'feat_stride' (py-faster-rcnn requires "
                         "it, e.g. \"'feat_stride': 16\")")
    if isinstance(values["feat_stride"], (list, tuple)):
        raise spec.error(f"python_param.param_str: feat_stride must be one number, got "
                         f"{values['feat_stride']!r}")
    (stride,) = _positive_numbers(values["feat_stride"], "feat_stride", spec)
    scales = _positive_numbers(values.get("scales", _RPN_SCALES), "scales", spec)
    ratios = _positive_numbers(values.get("ratios", _RPN_RATIOS), "ratios", spec)
    pre, post, thresh, min_size = _RPN_CFG["train" if spec.phase == "train" else "test"]
    return _proposal_built(spec, rpn_anchors(16, ratios, scales), stride, pre, post, thresh,
                           min_size)


@register("Proposal", family=_FAMILY, origin=_OPENCV_PROPOSAL_ORIGIN, cost=PROPOSAL_COST,
          detail=proposal_detail, emit=copy_module(_descending, _greedy_nms),
          onnx=OnnxRule(not_exportable=_PROPOSAL_NO_EXPORT))
def proposal(spec: LayerSpec) -> Built:
    """RPN proposals from proposal_param, with py-faster-rcnn's semantics (R, 5) [+ (R, 1)]."""
    p = fork_param(spec, "proposal_param", "OpenCV's Faster R-CNN")
    for name in ("feat_stride", "base_size"):
        if getattr(p, name) <= 0:
            raise spec.error(f"proposal_param.{name} must be > 0, got {getattr(p, name)}")
    if not math.isfinite(p.nms_thresh):
        raise spec.error(f"proposal_param.nms_thresh must be a number, got {p.nms_thresh}")
    ratios = _positive_numbers(list(p.ratio) or _RPN_RATIOS, "proposal_param.ratio", spec)
    scales = _positive_numbers(list(p.scale) or _RPN_SCALES, "proposal_param.scale", spec)
    # uint32 fields: 0 means 'no cut', as py-faster-rcnn's cfg values <= 0 do
    return _proposal_built(spec, rpn_anchors(p.base_size, ratios, scales), p.feat_stride,
                           int(p.pre_nms_topn), int(p.post_nms_topn), float(p.nms_thresh),
                           float(p.min_size))
