"""The device pipeline against the CPU one (OpenCV warps, numpy photometric): same crops."""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from landmarknet.data.crop import CropPolicy, Jitter, face_crop
from landmarknet.data.dataset import read_samples
from landmarknet.data.device_pipeline import (DeviceBatches, PatchCache, apply_photometric_batch,
                                              context_factor, crop_matrices, warp_batch)
from landmarknet.data.formats import Sample
from landmarknet.data.schemes import get_scheme
from landmarknet.data.transforms import (Augment, Photometric, SampleTransform,
                                         apply_photometric, flip_matrix, occlusion_rect,
                                         points_box)

JITTERS = [Jitter(), Jitter(1.08, 0.03, -0.02, 20.0), Jitter(0.91, -0.05, 0.05, -30.0),
           Jitter(1.1, 0.05, 0.05, 29.0)]


@pytest.fixture(scope="module")
def faces(data_dir):
    """Two small YTF faces and the three high-resolution photos (area pre-shrink path)."""
    small, _ = read_samples(data_dir / "ytf68" / "val", n_points=68)
    big, _ = read_samples(data_dir / "samples68", n_points=68)
    return small[:2] + big


def _cpu_crop(sample, policy, jitter, flip, scheme):
    image = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
    g = face_crop(points_box(sample.points), policy, jitter)
    m = g.matrix
    if flip:
        m = (flip_matrix(policy.size) @ np.vstack([m, [0, 0, 1]]))[:2]
    g = replace(g, matrix=m)
    crop = g.warp(image)
    pts = g.to_crop(sample.points)
    if flip:
        pts = pts[list(scheme.flip)]
    return crop.astype(np.float64), pts


@pytest.mark.parametrize("flip", [False, True])
def test_geometry_matches_opencv_crop(faces, flip):
    scheme = get_scheme(68)
    policy = CropPolicy(112, 1.25)
    aug = Augment(rotate=30, scale=0.1, shift=0.05)
    cache = PatchCache(faces, SampleTransform(scheme, policy, aug), "cpu", threads=2)
    assert len(cache) == len(faces) and not cache.bad
    for j in JITTERS:
        n = len(faces)
        t = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
        m = crop_matrices(cache.points.double(), policy, t(j.scale), t(j.dx), t(j.dy),
                          t(j.angle), torch.full((n,), flip))
        crops = warp_batch(cache.patches, m, policy.size).numpy()
        q = cache.points.double() @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
        if flip:
            q = q[:, list(scheme.flip)]
        for i, s in enumerate(faces):
            ref_img, ref_pts = _cpu_crop(s, policy, j, flip, scheme)
            np.testing.assert_allclose(q[i].numpy(), ref_pts, atol=2e-3)
            ours = crops[i].transpose(1, 2, 0)
            diff = np.abs(ours - ref_img)
            # two resamplings (patch at 1.5x, then bilinear) vs OpenCV's one: small blur only
            assert diff.mean() < 2.5, (s.image_path.name, j, diff.mean())  # wrong flip: > 25
            corr = np.corrcoef(ours.ravel(), ref_img.ravel())[0, 1]
            assert corr > 0.97, (s.image_path.name, j, corr)


def test_context_covers_every_jitter():
    a = Augment(rotate=30, scale=0.1, shift=0.05)
    ctx = context_factor(a)
    # the farthest crop corner under the largest jitter, in units of the nominal side
    big, ang = 1.1, np.radians(30)
    corner = big / 2 * (np.cos(ang) + np.sin(ang)) + 0.05 * big
    assert ctx / 2 >= corner


@pytest.mark.parametrize("seed", range(4))
def test_photometric_batch_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    s = 64
    crops = rng.integers(0, 256, (3, s, s, 3)).astype(np.uint8)
    crops = cv2.GaussianBlur(crops.reshape(3 * s, s, 3), (0, 0), 2).reshape(3, s, s, 3)
    params = [Photometric(0.2, -0.25, 0.3, 0.0, None),
              Photometric(-0.1, 0.1, -0.2, 1.3, (0.2, 0.3, 0.4, 0.7), (10.0, 200.0, 90.0)),
              Photometric(0.0, 0.0, 0.0, 0.6, (0.35, 0.1, 0.0, 1.0), (255.0, 0.0, 30.0))]
    ref = np.stack([apply_photometric(c, p) for c, p in zip(crops, params)]).astype(np.float64)
    f = lambda name: torch.tensor([getattr(p, name) for p in params], dtype=torch.float32)  # noqa
    rects = torch.tensor([occlusion_rect(p.occlusion, s) if p.occlusion else (0, 0, 0, 0)
                          for p in params], dtype=torch.float32)
    out = apply_photometric_batch(
        torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32)), f("bright"),
        f("contrast"), f("saturation"), f("blur_sigma"), rects,
        torch.tensor([p.occlusion is not None for p in params]),
        torch.tensor([p.occlusion_color for p in params], dtype=torch.float32))
    diff = np.abs(out.numpy().transpose(0, 2, 3, 1) - ref)
    assert diff.max() <= 1.0  # rounding at .5 only
    assert diff.mean() < 0.05


def test_batches_resume_exactly_and_report_bad(faces, tmp_path):
    scheme = get_scheme(68)
    bad = Sample(tmp_path / "missing.jpg", faces[0].points)
    tr = SampleTransform(scheme, CropPolicy(48, 1.25), Augment(occlusion=0.5, blur=0.5))
    cache = PatchCache([bad] + list(faces), tr, "cpu", threads=2, oversample=1.0)
    assert len(cache) == len(faces) and "missing.jpg" in cache.bad[0]
    run = iter(DeviceBatches(cache, tr.augment, scheme.flip, 2, seed=5))
    first = next(run)
    assert first["bad"] and "missing.jpg" in first["bad"][0]
    straight = [first] + [next(run) for _ in range(4)]
    resumed = iter(DeviceBatches(cache, tr.augment, scheme.flip, 2, seed=5, start_batch=3))
    again = next(resumed)
    assert not again["bad"] or again["bad"] == first["bad"]
    assert again["index"] == straight[3]["index"]
    torch.testing.assert_close(again["image"], straight[3]["image"])
    torch.testing.assert_close(again["points"], straight[3]["points"])
    assert not torch.equal(straight[3]["image"], straight[4]["image"])
    assert straight[0]["image"].shape == (2, 3, 48, 48)
    assert set(straight[0]["image"].unique().tolist()) <= set(range(256))
