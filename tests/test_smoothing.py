"""One-Euro filter against its closed forms, and the face tracker's bookkeeping."""
from __future__ import annotations

import math

import numpy as np
import pytest

from landmarknet.smoothing import FaceTracker, OneEuroFilter


def test_first_sample_passes_and_constant_stays():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    x = np.array([[3.0, 4.0], [5.0, 6.0]])
    np.testing.assert_array_equal(f(x, 0.0), x)
    for i in range(1, 10):
        np.testing.assert_allclose(f(x, i / 30), x)


def test_step_response_with_beta_zero_is_exponential():
    # beta = 0: a fixed low-pass with alpha = 1 / (1 + tau / dt), tau = 1 / (2 pi fc);
    # after a unit step the n-th output is 1 - (1 - alpha)^n.
    fc, dt = 2.0, 1 / 30
    alpha = 1 / (1 + 1 / (2 * math.pi * fc) / dt)
    f = OneEuroFilter(min_cutoff=fc, beta=0.0)
    f(np.zeros(3), 0.0)
    for n in range(1, 15):
        y = f(np.ones(3), n * dt)
        np.testing.assert_allclose(y, 1 - (1 - alpha) ** n, rtol=1e-12)


def test_noise_is_reduced_and_motion_followed(rng):
    dt = 1 / 30
    t = np.arange(300) * dt
    still = 100 + rng.normal(0, 1.0, size=(300, 2))
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    out = np.array([f(x, ti) for x, ti in zip(still, t)])
    assert out[30:].std() < 0.35 * still[30:].std()
    # A fast ramp (300 px/s): with beta the lag shrinks well below the fixed filter's.
    ramp = np.stack([300 * t, np.zeros_like(t)], 1)
    lag = {}
    for beta in (0.0, 0.05):
        g = OneEuroFilter(min_cutoff=1.0, beta=beta)
        out = np.array([g(x, ti) for x, ti in zip(ramp, t)])
        lag[beta] = np.abs(out[150:, 0] - ramp[150:, 0]).mean()
    assert lag[0.0] == pytest.approx(300 / (2 * math.pi * 1.0), rel=0.1)  # v * tau at steady state
    assert lag[0.05] < 0.3 * lag[0.0]


def test_bad_parameters():
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0.0)
    with pytest.raises(ValueError):
        OneEuroFilter(beta=-1.0)


def test_tracker_keeps_identities_across_reordering():
    tr = FaceTracker(min_cutoff=1.0, beta=0.0)
    a = np.array([10.0, 10.0, 50.0, 50.0])
    b = np.array([200.0, 20.0, 60.0, 60.0])
    pa, pb = np.array([[20.0, 30.0]]), np.array([[220.0, 40.0]])
    _, _, ids0 = tr.update(0, 0.0, np.stack([a, b]), [pa, pb])
    _, pts, ids1 = tr.update(1, 1 / 30, np.stack([b + 1, a + 1]), [pb + 1, pa + 1])
    assert ids1 == ids0[::-1]
    # each face is smoothed from its own past: it moved 1 px, the output moved less
    assert 0 < pts[0][0, 0] - 220.0 < 1 and 0 < pts[1][0, 0] - 20.0 < 1
    # a new face far away gets a new id; a face unseen for too long is forgotten
    _, _, ids2 = tr.update(2, 2 / 30, np.array([[400.0, 300.0, 40.0, 40.0]]), [None])
    assert ids2[0] not in ids0
    tr.update(20, 20 / 30, np.zeros((0, 4)), [])
    assert tr.tracks == []
