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

import math

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
_NO_EXPORT = ("landmarknet export checks every file with standard-normal inputs, which are not "
              "regions (their batch indices fall outside the batch); the layer's torch code "
              "itself traces to plain ONNX operators that ONNX Runtime runs with the same "
              "numbers (tests/layers/test_roi.py), so torch.onnx.export of the net with real "
              "regions works")


# ----------------------------------------------------------------------------------------------
# Shared: the regions bottom
# ----------------------------------------------------------------------------------------------

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
          onnx=OnnxRule(not_exportable=_NO_EXPORT))
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
          onnx=OnnxRule(not_exportable=_NO_EXPORT))
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
