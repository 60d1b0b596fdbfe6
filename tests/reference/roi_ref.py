"""Loop-for-loop numpy restatements of the R-CNN forks' region pooling (CPU Forward), written
from the facts of their C++ in our own words, for tests/layers/test_roi.py.

- ``roi_pooling``: rbgirshick/caffe-fast-rcnn, src/caffe/layers/roi_pooling_layer.cpp
  (Forward_cpu; its argmax drives Backward_cpu, restated in ``roi_pooling_backward``).
- ``psroi_pooling``: daijifeng001/caffe-rfcn, src/caffe/layers/psroi_pooling_layer.cpp
  (PSROIPoolingForward_cpu); the backward spreads each top's gradient evenly over its bin.

Every quantity the C++ holds in ``Dtype`` (float) is an np.float32 here, and every ``int`` a
Python int, so rounding happens where the C++ rounds. Nothing here imports landmarknet.
"""
from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def c_round(v) -> int:
    """C's round(): half away from zero (the value is a float32, so the sum is exact in
    Python's double)."""
    v = float(v)
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def _regions(rois: np.ndarray) -> np.ndarray:
    return np.asarray(rois, F32).reshape(-1, 5)


def _roi_bins(rois: np.ndarray, x: np.ndarray, pooled_h: int, pooled_w: int,
              spatial_scale: float):
    """Yields (n, batch, ph, pw, hstart, hend, wstart, wend) as the fork's loops compute them."""
    scale = F32(spatial_scale)
    height, width = x.shape[2], x.shape[3]
    for n, roi in enumerate(_regions(rois)):
        batch = int(roi[0])  # float -> int: truncation
        start_w = c_round(F32(roi[1] * scale))
        start_h = c_round(F32(roi[2] * scale))
        end_w = c_round(F32(roi[3] * scale))
        end_h = c_round(F32(roi[4] * scale))
        assert 0 <= batch < x.shape[0]
        roi_h = max(end_h - start_h + 1, 1)
        roi_w = max(end_w - start_w + 1, 1)
        bin_h = F32(F32(roi_h) / F32(pooled_h))
        bin_w = F32(F32(roi_w) / F32(pooled_w))
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                hstart = int(math.floor(F32(F32(ph) * bin_h)))
                wstart = int(math.floor(F32(F32(pw) * bin_w)))
                hend = int(math.ceil(F32(F32(ph + 1) * bin_h)))
                wend = int(math.ceil(F32(F32(pw + 1) * bin_w)))
                hstart = min(max(hstart + start_h, 0), height)
                hend = min(max(hend + start_h, 0), height)
                wstart = min(max(wstart + start_w, 0), width)
                wend = min(max(wend + start_w, 0), width)
                yield n, batch, ph, pw, hstart, hend, wstart, wend


def roi_pooling(x: np.ndarray, rois: np.ndarray, pooled_h: int, pooled_w: int,
                spatial_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(top (R, C, ph, pw), argmax (R, C, ph, pw) as h * W + w or -1) of Fast R-CNN's layer."""
    x = np.asarray(x, F32)
    n_rois, channels, width = len(_regions(rois)), x.shape[1], x.shape[3]
    top = np.full((n_rois, channels, pooled_h, pooled_w), -np.finfo(F32).max, F32)
    arg = np.full(top.shape, -1, np.int64)
    for n, b, ph, pw, hs, he, ws, we in _roi_bins(rois, x, pooled_h, pooled_w, spatial_scale):
        for c in range(channels):
            if he <= hs or we <= ws:
                top[n, c, ph, pw] = 0
                arg[n, c, ph, pw] = -1
            for h in range(hs, he):
                for w in range(ws, we):
                    if x[b, c, h, w] > top[n, c, ph, pw]:  # strictly greater: first max wins
                        top[n, c, ph, pw] = x[b, c, h, w]
                        arg[n, c, ph, pw] = h * width + w
    return top, arg


def roi_pooling_backward(x_shape, rois: np.ndarray, arg: np.ndarray, top_diff: np.ndarray
                         ) -> np.ndarray:
    """Bottom diff: each top's diff added to the cell its argmax names (none for empty bins)."""
    diff = np.zeros(x_shape, np.float64)
    width = x_shape[3]
    regions = _regions(rois)
    for n in range(arg.shape[0]):
        b = int(regions[n, 0])
        for c in range(arg.shape[1]):
            for ph in range(arg.shape[2]):
                for pw in range(arg.shape[3]):
                    a = int(arg[n, c, ph, pw])
                    if a >= 0:
                        diff[b, c, a // width, a % width] += top_diff[n, c, ph, pw]
    return diff


def _psroi_bins(rois: np.ndarray, x: np.ndarray, group_size: int, spatial_scale: float):
    """Yields (n, batch, ph, pw, hstart, hend, wstart, wend) of R-FCN's loop."""
    scale = F32(spatial_scale)
    height, width = x.shape[2], x.shape[3]
    for n, roi in enumerate(_regions(rois)):
        batch = int(roi[0])
        assert 0 <= batch < x.shape[0]
        start_w = F32(F32(c_round(roi[1])) * scale)
        start_h = F32(F32(c_round(roi[2])) * scale)
        end_w = F32(F32(c_round(roi[3]) + 1.0) * scale)
        end_h = F32(F32(c_round(roi[4]) + 1.0) * scale)
        roi_w = max(F32(end_w - start_w), F32(0.1))
        roi_h = max(F32(end_h - start_h), F32(0.1))
        bin_h = F32(roi_h / F32(group_size))
        bin_w = F32(roi_w / F32(group_size))
        for ph in range(group_size):
            for pw in range(group_size):
                hstart = int(math.floor(F32(F32(F32(ph) * bin_h) + start_h)))
                wstart = int(math.floor(F32(F32(F32(pw) * bin_w) + start_w)))
                hend = int(math.ceil(F32(F32(F32(ph + 1) * bin_h) + start_h)))
                wend = int(math.ceil(F32(F32(F32(pw + 1) * bin_w) + start_w)))
                hstart = min(max(hstart, 0), height)
                hend = min(max(hend, 0), height)
                wstart = min(max(wstart, 0), width)
                wend = min(max(wend, 0), width)
                yield n, batch, ph, pw, hstart, hend, wstart, wend


def psroi_pooling(x: np.ndarray, rois: np.ndarray, output_dim: int, group_size: int,
                  spatial_scale: float) -> np.ndarray:
    """Top (R, output_dim, group_size, group_size) of R-FCN's layer."""
    x = np.asarray(x, F32)
    n_rois = len(_regions(rois))
    top = np.zeros((n_rois, output_dim, group_size, group_size), F32)
    for n, b, ph, pw, hs, he, ws, we in _psroi_bins(rois, x, group_size, spatial_scale):
        for ctop in range(output_dim):
            c = (ctop * group_size + ph) * group_size + pw
            total = F32(0)
            for h in range(hs, he):
                for w in range(ws, we):
                    total = F32(total + x[b, c, h, w])
            area = F32((he - hs) * (we - ws))
            top[n, ctop, ph, pw] = 0 if (he <= hs or we <= ws) else F32(total / area)
    return top


def psroi_pooling_backward(x_shape, rois: np.ndarray, output_dim: int, group_size: int,
                           spatial_scale: float, top_diff: np.ndarray) -> np.ndarray:
    """Bottom diff: each non-empty bin's top diff / bin area added to every cell of the bin."""
    diff = np.zeros(x_shape, np.float64)
    dummy = np.zeros(x_shape, F32)
    for n, b, ph, pw, hs, he, ws, we in _psroi_bins(rois, dummy, group_size, spatial_scale):
        if he <= hs or we <= ws:
            continue
        area = (he - hs) * (we - ws)
        for ctop in range(output_dim):
            c = (ctop * group_size + ph) * group_size + pw
            diff[b, c, hs:he, ws:we] += top_diff[n, ctop, ph, pw] / area
    return diff
