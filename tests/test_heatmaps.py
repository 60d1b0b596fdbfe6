"""Heatmap targets (torch, batched) and the decoders' sub-pixel accuracy."""
from __future__ import annotations

import numpy as np
import torch

from landmarknet.data.heatmaps import decode, render_heatmaps


def _random_points(rng, n=64, size=112, margin=12):
    return rng.uniform(margin, size - margin, (n, 1, 2)).astype(np.float32)


def test_dark_within_005px(rng):
    pts = _random_points(rng)
    maps = render_heatmaps(torch.from_numpy(pts), 28, sigma=1.5, stride=4, background=False)
    got, peak = decode(maps, stride=4, refine="taylor")
    assert np.abs(got - pts).max() < 0.05 * 4  # 0.05 heatmap px = 0.2 crop px
    u_err = np.abs(got - pts) / 4
    assert u_err.max() < 0.05
    assert np.all(peak > 0.7)


def test_quarter_within_03px(rng):
    pts = _random_points(rng)
    maps = render_heatmaps(torch.from_numpy(pts), 28, sigma=1.5, stride=4, background=False)
    got, _ = decode(maps, stride=4, refine="quarter")
    assert (np.abs(got - pts) / 4).max() < 0.3 + 1e-6


def test_background_and_shapes():
    pts = torch.tensor([[[10.0, 20.0], [50.0, 60.0], [float("nan"), 3.0]]])
    maps = render_heatmaps(pts, (16, 20), sigma=1.0, stride=4, background=True)
    assert maps.shape == (1, 4, 16, 20)
    assert float(maps[0, 2].abs().max()) == 0.0  # a missing point gives an empty map
    np.testing.assert_allclose(maps[0, 3], 1 - maps[0, :3].amax(0), atol=1e-7)
    assert 0.0 <= float(maps.min()) and float(maps.max()) <= 1.0
    # the peak sits at the point: (x - 1.5) / 4
    u = (10.0 - 1.5) / 4
    assert int(maps[0, 0].amax(0).argmax()) == round(u)
