"""The one measure the reference tests compare with: max |ours - ref| / max |ref|."""
from __future__ import annotations

import numpy as np


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| in float64 (the absolute difference when ref is all zeros;
    0 for empty arrays); the shapes must agree."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if not ref.size:
        return 0.0
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ours - ref).max())
    return diff / scale if scale else diff
