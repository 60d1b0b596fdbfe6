"""The shared face crop: its affine against hand-computed numbers, round trips, resampling."""
from __future__ import annotations

import math

import numpy as np
import pytest

from landmarknet.data.crop import CropPolicy, Jitter, crop_batch, face_crop


def test_matrix_matches_hand_computed_example():
    # Box (100, 50, 40, 60): centre (120, 80), max side 60; scale 1.25 -> side 75;
    # s = 112 / 75 = 1.493333..; crop centre (112 - 1) / 2 = 55.5.
    crop = face_crop((100, 50, 40, 60), CropPolicy(size=112, scale=1.25))
    expected = np.array([[1.4933333333, 0.0, -123.7],
                         [0.0, 1.4933333333, -63.9666666667]])
    np.testing.assert_allclose(crop.matrix, expected, atol=1e-9)
    assert crop.side == pytest.approx(75.0)
    pts = np.array([[120.0, 80.0], [82.5, 42.5], [157.5, 117.5], [100.0, 50.0]])
    np.testing.assert_allclose(crop.to_crop(pts), [[55.5, 55.5], [-0.5, -0.5], [111.5, 111.5],
                                                   [25.6333333333, 10.7]], atol=1e-9)


def test_shift_and_rotation_by_hand():
    # shift (0, 0.1) of a side of 75 moves the centre down by 7.5 px.
    crop = face_crop((100, 50, 40, 60), CropPolicy(112, 1.25, (0.0, 0.1)))
    np.testing.assert_allclose(crop.to_crop([[120.0, 87.5]]), [[55.5, 55.5]], atol=1e-9)
    # 90 degrees: a point 10 px right of the centre shows 10 * s px ABOVE the crop centre.
    rot = face_crop((100, 50, 40, 60), CropPolicy(112, 1.25), Jitter(angle=90.0))
    np.testing.assert_allclose(rot.to_crop([[130.0, 80.0]]), [[55.5, 55.5 - 14.9333333333]],
                               atol=1e-9)
    # jitter scale 2 halves the magnification; jitter dx moves the centre by dx * side.
    jit = face_crop((100, 50, 40, 60), CropPolicy(112, 1.25), Jitter(scale=2.0, dx=0.1))
    assert jit.side == pytest.approx(150.0)
    np.testing.assert_allclose(jit.to_crop([[135.0, 80.0]]), [[55.5, 55.5]], atol=1e-9)


def test_round_trip_is_exact(rng):
    for _ in range(20):
        box = rng.uniform([0, 0, 5, 5], [500, 500, 300, 300])
        jitter = Jitter.sample(rng, scale=0.2, shift=0.1, angle=30)
        crop = face_crop(box, CropPolicy(int(rng.integers(16, 256)), rng.uniform(0.8, 3)), jitter)
        pts = rng.uniform(-100, 800, size=(68, 2))
        np.testing.assert_allclose(crop.to_image(crop.to_crop(pts)), pts, atol=1e-9)
        corners = crop.corners()
        side = np.linalg.norm(corners[1] - corners[0])
        assert side == pytest.approx(crop.side, rel=1e-9)


def _blob_image(h, w, centre, sigma, channels=3):
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma ** 2))
    img = (g * 250).astype(np.float32)
    return np.repeat(img[:, :, None], channels, axis=2)


def _centroid(img):
    m = img[:, :, 0].astype(np.float64)
    m = np.where(m > 0.05 * m.max(), m, 0)
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    return np.array([(xx * m).sum() / m.sum(), (yy * m).sum() / m.sum()])


@pytest.mark.parametrize("box, size, centre, sigma, tol", [
    ((40.0, 30.0, 50.0, 50.0), 64, (61.3, 57.8), 2.0, 0.05),      # enlarging
    ((100.0, 200.0, 1500.0, 1400.0), 64, (905.0, 870.0), 40.0, 0.08),  # shrinking 29x: area path
])
def test_warp_puts_a_blob_where_to_crop_says(box, size, centre, sigma, tol):
    h = w = int(max(box[0] + box[2], box[1] + box[3]) + 50)
    img = _blob_image(h, w, centre, sigma)
    crop = face_crop(box, CropPolicy(size, 1.2), Jitter(angle=17.0))
    out = crop.warp(img)
    assert out.shape == (size, size, 3)
    np.testing.assert_allclose(_centroid(out), crop.to_crop([centre])[0], atol=tol)


def test_crop_batch_and_gray():
    img = _blob_image(100, 120, (60, 50), 3.0, channels=1).astype(np.uint8)
    crops, geoms = crop_batch(img, np.array([[40, 30, 40, 40], [10, 10, 20, 30]]),
                              CropPolicy(32, 1.5))
    assert crops.shape == (2, 32, 32, 1) and crops.dtype == np.uint8 and len(geoms) == 2
    empty, none = crop_batch(img, np.zeros((0, 4)), CropPolicy(32))
    assert empty.shape == (0, 32, 32, 1) and none == []


def test_bad_boxes_and_policies():
    with pytest.raises(ValueError, match="positive width or height"):
        face_crop((10, 10, 0, 0))
    with pytest.raises(ValueError, match="finite"):
        face_crop((math.nan, 10, 5, 5))
    with pytest.raises(ValueError, match="scale"):
        CropPolicy(64, 0.0)
    with pytest.raises(ValueError, match="unknown crop keys"):
        CropPolicy.from_dict({"size": 64, "margin": 0.2})
    assert CropPolicy.from_dict(CropPolicy(96, 1.4, (0.0, 0.05)).to_dict()) == \
        CropPolicy(96, 1.4, (0.0, 0.05))
