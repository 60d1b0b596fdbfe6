"""JSON that every parser reads: Python's json writes NaN and Infinity, which JSON has not."""
from __future__ import annotations

import json
import math

import numpy as np


def json_text(obj, **kwargs) -> str:
    """JSON that every parser reads: NaN and infinities (not JSON) become null."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def finite_json(obj):
    """``obj`` with every non-finite float (and numpy scalar) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return finite_json(obj.item())
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    return obj
