"""Heatmap targets, made in batch on the training device, and the decoders they pair with.

Targets
-------
:func:`render_heatmaps` turns points ``(N, K, 2)`` in crop pixels into ``(N, K [+1], H, W)``
Gaussian maps in one vectorised torch expression on the points' device (the GPU when training
on one): map ``k`` is ``exp(-|u - u_k|^2 / (2 sigma^2))`` with peak 1, where heatmap pixel
``u`` sits at crop coordinate ``u * stride + offset`` (the convention of
:mod:`landmarknet.decode`; the default offset ``(stride - 1) / 2`` is the centre of the
``stride x stride`` block a pooled heatmap pixel averages). ``sigma`` is in heatmap pixels.
Points that are missing (NaN) or far outside the map give an all-zero map. With
``background=True`` a last channel ``1 - max_k(map_k)`` is appended, as OpenPose does.

Decoding
--------
:mod:`landmarknet.decode` already implements the arg-max, the quarter-pixel refinement
(``refine="quarter"``) and the DARK-style Taylor refinement on the log-heatmap with optional
Gaussian modulation (``refine="taylor"``, ``blur_sigma``). :func:`decode` here is a thin
alias so training code has one import.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from landmarknet.decode import decode_heatmaps


def heatmap_offset(stride: float, offset: Optional[float] = None) -> float:
    """Crop coordinate of heatmap pixel 0 (decode.py's default when ``offset`` is None)."""
    return (stride - 1) / 2.0 if offset is None else float(offset)


def render_heatmaps(points: torch.Tensor, size: int | tuple[int, int], *, sigma: float = 1.0,
                    stride: float = 4.0, offset: Optional[float] = None,
                    background: bool = True, dtype: torch.dtype = torch.float32,
                    ) -> torch.Tensor:
    """Points (N, K, 2) in crop pixels -> Gaussian heatmaps (N, K [+1], H, W) on their device.

    ``size`` is the heatmap side (or (H, W)); ``sigma`` in heatmap pixels. Separable: the map is
    the outer product of a 1-D Gaussian along y and one along x, so the cost is N*K*(H+W)
    exponentials plus one broadcast multiply.
    """
    if sigma <= 0:
        raise ValueError(f"heatmap sigma must be positive, got {sigma}")
    pts = torch.as_tensor(points)
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ValueError(f"points must be (N, K, 2), got {tuple(pts.shape)}")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    pts = pts.to(torch.float32)
    u = (pts - heatmap_offset(stride, offset)) / stride  # heatmap pixel coordinates
    valid = torch.isfinite(u).all(dim=-1)  # (N, K)
    u = torch.where(valid[..., None], u, torch.full_like(u, -1e4))
    xs = torch.arange(w, device=pts.device, dtype=torch.float32)
    ys = torch.arange(h, device=pts.device, dtype=torch.float32)
    gx = torch.exp(-(xs - u[..., 0:1]) ** 2 / (2 * sigma ** 2))  # (N, K, W)
    gy = torch.exp(-(ys - u[..., 1:2]) ** 2 / (2 * sigma ** 2))  # (N, K, H)
    maps = gy[..., :, None] * gx[..., None, :]  # (N, K, H, W)
    if background:
        bg = 1.0 - maps.amax(dim=1, keepdim=True) if maps.shape[1] else \
            torch.ones(maps.shape[0], 1, h, w, device=maps.device)
        maps = torch.cat([maps, bg], dim=1)
    return maps.to(dtype)


def decode(heatmaps, *, stride: float = 4.0, offset: Optional[float] = None,
           refine: str = "taylor", blur_sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) maps (tensor or array) -> crop points (N, K, 2) and peak values (N, K)."""
    if isinstance(heatmaps, torch.Tensor):
        heatmaps = heatmaps.detach().float().cpu().numpy()
    return decode_heatmaps(heatmaps, stride=stride, offset=offset, refine=refine,
                           blur_sigma=blur_sigma)
