"""Heatmap and regression decoding against analytic peaks."""
from __future__ import annotations

import numpy as np
import pytest

from landmarknet.decode import decode_heatmaps, decode_regression, heatmap_argmax


def _gaussians(centres: np.ndarray, h: int, w: int, sigma: float) -> np.ndarray:
    """(N, K, 2) centres -> (N, K, h, w) Gaussian maps with peak 1."""
    yy, xx = np.mgrid[0:h, 0:w]
    cx = centres[..., 0][..., None, None]
    cy = centres[..., 1][..., None, None]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))


@pytest.fixture
def centres(rng):
    return rng.uniform(3, 24, size=(4, 6, 2))


def test_argmax_finds_integer_peaks():
    hm = np.zeros((1, 2, 5, 7))
    hm[0, 0, 3, 6] = 2.0
    hm[0, 1, 0, 1] = 0.5
    peaks, values = heatmap_argmax(hm)
    np.testing.assert_array_equal(peaks, [[[6, 3], [1, 0]]])
    np.testing.assert_allclose(values, [[2.0, 0.5]])


def test_taylor_recovers_gaussian_centres(centres):
    hm = _gaussians(centres, 28, 28, 1.5)
    pts, peak = decode_heatmaps(hm, refine="taylor")
    np.testing.assert_allclose(pts, centres, atol=1e-6)  # log of a Gaussian is quadratic
    assert np.all(peak > 0.7)


def test_quarter_and_none_errors_are_bounded(centres):
    hm = _gaussians(centres, 28, 28, 1.5)
    quarter, _ = decode_heatmaps(hm, refine="quarter")
    none, _ = decode_heatmaps(hm, refine="none")
    err_q = np.abs(quarter - centres)
    err_n = np.abs(none - centres)
    assert err_n.max() <= 0.5 + 1e-9
    assert err_q.max() <= 0.75 + 1e-9
    assert err_q.mean() < err_n.mean()  # the quarter step helps on average


def test_blurred_taylor_on_noisy_maps(rng, centres):
    hm = _gaussians(centres, 28, 28, 2.0) + rng.normal(0, 0.01, size=(4, 6, 28, 28))
    plain, _ = decode_heatmaps(hm, refine="none")
    smooth, _ = decode_heatmaps(hm, refine="taylor", blur_sigma=1.0)
    assert np.abs(smooth - centres).mean() < 0.5 * np.abs(plain - centres).mean()


def test_stride_offset_convention(rng):
    # Maps made by averaging 4x4 blocks of a crop-resolution Gaussian: heatmap pixel u covers
    # crop pixels 4u .. 4u + 3, whose centre is 4u + 1.5, the default offset (stride - 1) / 2.
    q = rng.uniform(20, 90, size=(2, 3, 2))
    fine = _gaussians(q, 112, 112, 8.0)
    coarse = fine.reshape(2, 3, 28, 4, 28, 4).mean(axis=(3, 5))
    pts, _ = decode_heatmaps(coarse, stride=4, refine="taylor")
    np.testing.assert_allclose(pts, q, atol=0.1)
    pts0, _ = decode_heatmaps(coarse, stride=4, offset=0.0, refine="taylor")
    np.testing.assert_allclose(pts0, q - 1.5, atol=0.1)


def test_flat_and_border_maps_keep_the_argmax():
    hm = np.zeros((1, 2, 8, 8))
    hm[0, 1, 0, 7] = 1.0  # a corner peak: no neighbours on two sides
    pts, _ = decode_heatmaps(hm, refine="taylor")
    np.testing.assert_allclose(pts[0], [[0, 0], [7, 0]])


def test_regression_units():
    v = np.array([[0.25, 0.5, 1.0, 0.0]])
    np.testing.assert_allclose(decode_regression(v, 2, unit="fraction", size=64),
                               [[[16, 32], [64, 0]]])
    np.testing.assert_allclose(decode_regression(v, 2, unit="pixel"), [[[0.25, 0.5], [1.0, 0.0]]])
    np.testing.assert_allclose(decode_regression(v, 2, unit="unit", size=64),
                               [[[15.5, 31.5], [63.5, -0.5]]])
    c = np.array([[-1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(decode_regression(c, 2, unit="centered", size=64),
                               [[[-0.5, 63.5], [31.5, 31.5]]])
    with pytest.raises(ValueError, match="does not hold 3 points"):
        decode_regression(v, 3)
    with pytest.raises(ValueError, match="unit must be one of"):
        decode_regression(v, 2, unit="percent")
