"""One affine per sample: image and points agree; flip permutation; seeded augmentation."""
from __future__ import annotations

import numpy as np
import pytest

from landmarknet.data.crop import CropPolicy
from landmarknet.data.schemes import get_scheme
from landmarknet.data.transforms import Augment, SampleTransform, sample_rng


def _dots(points, h=240, w=260):
    """A black image with one small bright dot per point (different intensities)."""
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for x, y in points:
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0 ** 2))
        img = np.maximum(img, (g * 255)[:, :, None].astype(np.uint8))
    return img


def _find(crop, guess, r=4):
    """Intensity centroid near a guess (the dot the transform put there)."""
    g = crop[:, :, 0].astype(np.float64)
    x0, y0 = int(round(guess[0])), int(round(guess[1]))
    ys, xs = np.mgrid[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
    wgt = g[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
    return np.array([(wgt * xs).sum() / wgt.sum(), (wgt * ys).sum() / wgt.sum()])


@pytest.mark.parametrize("seed", range(6))
def test_image_and_points_agree(seed):
    scheme = get_scheme(5)
    pts = np.array([[100, 100], [160, 104], [131, 135], [108, 165], [152, 168]], np.float32)
    tr = SampleTransform(scheme, CropPolicy(112, 2.2),
                         Augment(rotate=30, scale=0.1, shift=0.05, flip=0.5, color=0, blur=0,
                                 occlusion=0))
    crop, q, geo = tr(_dots(pts), pts, sample_rng(seed, 0, 0))
    # a mirror swaps eyes and mouth corners: point i of the output sits where input flip[i] went
    for i in range(5):
        found = _find(crop, q[i])
        assert np.linalg.norm(found - q[i]) < 0.35, (seed, i, found, q[i])
    if geo.flipped:
        assert q[0, 0] < q[1, 0]  # image-left eye stays on the image's left after the mirror


def test_flip_permutation():
    scheme = get_scheme(68)
    rng = np.random.default_rng(0)
    pts = rng.uniform(40, 160, (68, 2)).astype(np.float32)
    pts[36], pts[45] = (60, 80), (140, 80)
    tr = SampleTransform(scheme, CropPolicy(100, 1.25), Augment.none())
    _, q0, _ = tr(np.zeros((200, 200, 3), np.uint8), pts)
    g = tr.geometry(pts)
    from landmarknet.data.transforms import Geometry, flip_matrix
    from dataclasses import replace
    m = (flip_matrix(100) @ np.vstack([g.crop.matrix, [0, 0, 1]]))[:2]
    q1 = Geometry(replace(g.crop, matrix=m), True).points(pts, scheme)
    expect = scheme.flip_points(q0, 100)
    np.testing.assert_allclose(q1, expect, atol=1e-4)
    assert q1[36, 0] < q1[45, 0]  # 36 is still the image-left outer corner


def test_seeded_and_photometric():
    scheme = get_scheme(5)
    pts = np.array([[100, 100], [160, 104], [131, 135], [108, 165], [152, 168]], np.float32)
    img = np.random.default_rng(1).integers(0, 255, (240, 260, 3), dtype=np.uint8)
    tr = SampleTransform(scheme, CropPolicy(64, 2.2), Augment(color=0.4, blur=1, occlusion=1))
    a = tr(img, pts, sample_rng(3, 1, 2))
    b = tr(img, pts, sample_rng(3, 1, 2))
    c = tr(img, pts, sample_rng(3, 1, 3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
