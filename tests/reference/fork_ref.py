"""numpy re-implementations of fork layers that neither the reference Caffe nor OpenCV runs.

Each function follows the loops of the fork's C++ Forward_cpu (named in its docstring), written
in float64 with explicit loops or per-channel reductions, never with torch: they are the
independent side of tests/test_fork_layers.py.
"""
from __future__ import annotations

import numpy as np


def conv_dw(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
            pad: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """conv_dw_layer.cpp (ConvolutionDepthwise): one (kh, kw) filter per channel, floor size."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            for oy in range(oh):
                hi = oy * stride[0] - pad[0] + i * dilation[0]
                if not 0 <= hi < h:
                    continue
                for ox in range(ow):
                    wi = ox * stride[1] - pad[1] + j * dilation[1]
                    if 0 <= wi < wd:
                        y[:, :, oy, ox] += x[:, :, hi, wi] * w[:, 0, i, j]
    if b is not None:
        y += b.reshape(1, c, 1, 1)
    return y


def _chan(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float64).reshape(1, -1, 1, 1)


def moving_bn(x: np.ndarray, blobs: list[np.ndarray], *, eps: float, momentum: float,
              train: bool, frozen: bool, statistic: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """bn_layer.cpp of TSN (statistic "inv_std") and PSPNet ("variance"); returns (top, blobs).

    TEST or frozen: the stored mean and statistic; TRAIN: the batch mean and biased variance,
    with the stored ones updated as (1 - momentum) * batch + momentum * stored.
    """
    slope, bias, mean_s, stat_s = (np.asarray(b, np.float64) for b in blobs)
    x = np.asarray(x, np.float64)
    if frozen or not train:
        mean = _chan(mean_s)
        inv_std = _chan(stat_s) if statistic == "inv_std" else 1.0 / np.sqrt(_chan(stat_s) + eps)
        new = [slope, bias, mean_s, stat_s]
    else:
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        inv_std = 1.0 / np.sqrt(var + eps)
        batch_stat = inv_std if statistic == "inv_std" else var
        new = [slope, bias,
               (1 - momentum) * mean.reshape(mean_s.shape) + momentum * mean_s,
               (1 - momentum) * batch_stat.reshape(stat_s.shape) + momentum * stat_s]
    top = (x - mean) * inv_std * _chan(slope) + _chan(bias)
    return top, new


def segnet_bn(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, learn: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bn_layer.cpp of caffe-segnet: (top, batch mean, batch variance); eps 1e-9, E(x^2)-E(x)^2."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = (x * x).mean(axis=(0, 2, 3), keepdims=True) - mean * mean
    if not learn:
        return x * _chan(scale) + _chan(shift), mean, var
    return (x - mean) / np.sqrt(var + 1e-9) * _chan(scale) + _chan(shift), mean, var


def segnet_upsample(x: np.ndarray, mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """upsample_layer.cpp of caffe-segnet: top[mask[i]] = x[i] per plane, later writes win."""
    n, c = x.shape[:2]
    y = np.zeros((n, c, out_h * out_w))
    flat_x, flat_m = x.reshape(n, c, -1), mask.reshape(n, c, -1)
    for a in range(n):
        for b in range(c):
            for i in range(flat_x.shape[-1]):
                y[a, b, int(flat_m[a, b, i])] = flat_x[a, b, i]
    return y.reshape(n, c, out_h, out_w)
