"""Decoding landmark networks' outputs into crop coordinates: heatmaps and regressions.

Heatmaps ``(N, K, H, W)``: the arg-max pixel, refined to sub-pixel precision by

* ``"taylor"`` (default): a second-order Taylor expansion of the log-heatmap at the maximum
  (Zhang et al., "Distribution-Aware Coordinate Representation", CVPR 2020), after an optional
  Gaussian smoothing; exact for Gaussian peaks. The step is clipped to one pixel.
* ``"quarter"``: a quarter-pixel step towards the higher neighbour (Newell et al.'s hourglass,
  HRNet);
* ``"none"``: the arg-max pixel itself.

Heatmap pixel ``u`` sits at crop coordinate ``u * stride + offset``. The default offset,
``(stride - 1) / 2``, is right for heatmaps whose pixels average ``stride x stride`` blocks of
the crop (pooling, strided convolution without padding shifts); a net whose targets were drawn
at ``u * stride`` declares ``offset: 0`` in its model.json.
"""
from __future__ import annotations

import numpy as np

REFINEMENTS = ("taylor", "quarter", "none")
REGRESSION_UNITS = ("unit", "fraction", "pixel", "centered")


def heatmap_argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) -> integer peaks (N, K, 2) as (x, y) and peak values (N, K)."""
    hm = np.asarray(heatmaps)
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, H, W), got shape {hm.shape}")
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, h * w)
    idx = np.argmax(flat, axis=2)
    peak = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    return np.stack([idx % w, idx // w], axis=-1), peak


def gaussian_blur(heatmaps: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of every map (N, K, H, W), edges replicated."""
    if sigma <= 0:
        return np.asarray(heatmaps, dtype=np.float64)
    r = max(1, int(round(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    x = np.asarray(heatmaps, dtype=np.float64)
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="edge")
        size = x.shape[axis]
        acc = np.zeros_like(x)
        for i, wgt in enumerate(g):
            acc += wgt * np.take(xp, np.arange(i, i + size), axis=axis)
        x = acc
    return x


def _neighbour(hm: np.ndarray, xs: np.ndarray, ys: np.ndarray, dx: int, dy: int) -> np.ndarray:
    n, k, h, w = hm.shape
    xx = np.clip(xs + dx, 0, w - 1)
    yy = np.clip(ys + dy, 0, h - 1)
    ni = np.arange(n)[:, None]
    ki = np.arange(k)[None, :]
    return hm[ni, ki, yy, xx]


def refine_quarter(heatmaps: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Peaks (N, K, 2) moved a quarter pixel towards the higher neighbour on each axis."""
    hm = np.asarray(heatmaps, dtype=np.float64)
    xs, ys = peaks[..., 0], peaks[..., 1]
    gx = _neighbour(hm, xs, ys, 1, 0) - _neighbour(hm, xs, ys, -1, 0)
    gy = _neighbour(hm, xs, ys, 0, 1) - _neighbour(hm, xs, ys, 0, -1)
    h, w = hm.shape[2:]
    inside_x = (xs > 0) & (xs < w - 1)
    inside_y = (ys > 0) & (ys < h - 1)
    out = peaks.astype(np.float64)
    out[..., 0] += 0.25 * np.sign(gx) * inside_x
    out[..., 1] += 0.25 * np.sign(gy) * inside_y
    return out


def refine_taylor(heatmaps: np.ndarray, peaks: np.ndarray, blur_sigma: float = 0.0,
                  eps: float = 1e-10) -> np.ndarray:
    """Peaks (N, K, 2) refined by a Newton step on the log-heatmap (see module doc)."""
    hm = gaussian_blur(heatmaps, blur_sigma) if blur_sigma > 0 else \
        np.asarray(heatmaps, dtype=np.float64)
    lg = np.log(np.maximum(hm, eps))
    xs, ys = peaks[..., 0], peaks[..., 1]
    f = lambda dx, dy: _neighbour(lg, xs, ys, dx, dy)  # noqa: E731
    c = f(0, 0)
    dx = 0.5 * (f(1, 0) - f(-1, 0))
    dy = 0.5 * (f(0, 1) - f(0, -1))
    dxx = f(1, 0) - 2 * c + f(-1, 0)
    dyy = f(0, 1) - 2 * c + f(0, -1)
    dxy = 0.25 * (f(1, 1) - f(1, -1) - f(-1, 1) + f(-1, -1))
    det = dxx * dyy - dxy ** 2
    h, w = lg.shape[2:]
    # A maximum has a negative-definite Hessian; elsewhere (flat maps, borders) keep the arg-max.
    ok = (det > 1e-12) & (dxx < 0) & (xs > 0) & (xs < w - 1) & (ys > 0) & (ys < h - 1)
    safe = np.where(ok, det, 1.0)
    ox = -(dyy * dx - dxy * dy) / safe
    oy = -(dxx * dy - dxy * dx) / safe
    ox = np.where(ok, np.clip(ox, -1, 1), 0.0)
    oy = np.where(ok, np.clip(oy, -1, 1), 0.0)
    out = peaks.astype(np.float64)
    out[..., 0] += ox
    out[..., 1] += oy
    return out


def decode_heatmaps(heatmaps: np.ndarray, *, stride: float = 1.0, offset: float | None = None,
                    refine: str = "taylor", blur_sigma: float = 0.0,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) heatmaps -> points (N, K, 2) in crop pixels and peak values (N, K)."""
    if refine not in REFINEMENTS:
        raise ValueError(f"refine must be one of {REFINEMENTS}, got {refine!r}")
    hm = np.asarray(heatmaps, dtype=np.float64)
    peaks, values = heatmap_argmax(hm)
    if refine == "taylor":
        pts = refine_taylor(hm, peaks, blur_sigma)
    elif refine == "quarter":
        pts = refine_quarter(hm, peaks)
    else:
        pts = peaks.astype(np.float64)
    off = (stride - 1) / 2.0 if offset is None else float(offset)
    return pts * stride + off, values


def decode_regression(values: np.ndarray, n_points: int, *, unit: str = "unit",
                      size: int = 1) -> np.ndarray:
    """(N, 2K) x0, y0, x1, y1, ... -> (N, K, 2) crop pixels.

    ``unit``: "unit" ((x + 0.5) / size: the unit coordinates of landmarknet.layers.landmark,
    0 and 1 at the crop's outer edges), "fraction" (x / size: the labels
    ``formats.pack_hdf5`` writes), "pixel", or "centered" ([-1, 1] across the crop's edges).
    """
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if v.shape[1] != 2 * n_points:
        raise ValueError(f"a regression output of {v.shape[1]} values does not hold {n_points} "
                         f"points (expected {2 * n_points})")
    p = v.reshape(-1, n_points, 2)
    if unit == "unit":
        return p * size - 0.5
    if unit == "fraction":
        return p * size
    if unit == "pixel":
        return p
    if unit == "centered":
        return (p + 1) * size / 2 - 0.5
    raise ValueError(f"regression unit must be one of {REGRESSION_UNITS}, got {unit!r}")
