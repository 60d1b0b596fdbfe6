"""Landmark accuracy: NME with several normalisers, the thesis variant, CED, AUC, failure rate, plots."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from landmarknet.data.schemes import Scheme, get_scheme

SchemeLike = Union[Scheme, int, str]
NORMALISERS = ("io", "ip", "box")


def _faces(points: np.ndarray, name: str) -> np.ndarray:
    """View points as (N, K, 2) float64 (a single (K, 2) face becomes N=1)."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise ValueError(f"{name} must be (N, K, 2) or (K, 2), got {np.shape(points)}")
    return arr


def _pair(pred: np.ndarray, gt: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    p, g = _faces(pred, "pred"), _faces(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    if g.shape[1] != scheme.n_points:
        raise ValueError(f"scheme {scheme.name} has {scheme.n_points} points, the arrays have {g.shape[1]}")
    return p, g


def normaliser(
    gt: np.ndarray, scheme: SchemeLike, kind: str = "io", boxes: Optional[np.ndarray] = None
) -> np.ndarray:
    """Per-face distance d (N,): 'io' outer eye corners, 'ip' eye-point means, 'box' sqrt(w*h)."""
    s = get_scheme(scheme)
    g = _faces(gt, "gt")
    if kind == "io":
        a, b = s.io_pair
        d = np.linalg.norm(g[:, a] - g[:, b], axis=1)
    elif kind == "ip":
        left, right = (g[:, list(idx)].mean(axis=1) for idx in s.pupil_groups)
        d = np.linalg.norm(left - right, axis=1)
    elif kind == "box":
        if boxes is None:
            wh = g.max(axis=1) - g.min(axis=1)  # bounding box of the ground-truth points
        else:
            bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if len(bx) != len(g):
                raise ValueError(f"{len(bx)} boxes for {len(g)} faces")
            wh = bx[:, 2:4]
        d = np.sqrt(wh[:, 0] * wh[:, 1])
    else:
        raise ValueError(f"normaliser must be one of {NORMALISERS}, got {kind!r}")
    if np.any(d <= 0):
        raise ValueError(f"normaliser {kind!r} is zero for face(s) {np.flatnonzero(d <= 0).tolist()}")
    return d


def nme(
    pred: np.ndarray,
    gt: np.ndarray,
    scheme: SchemeLike,
    norm: str = "io",
    boxes: Optional[np.ndarray] = None,
    indices: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Per-face NME (N,): mean point distance over ``indices`` (default all) divided by the normaliser."""
    s = get_scheme(scheme)
    p, g = _pair(pred, gt, s)
    d = normaliser(g, s, norm, boxes)
    idx = slice(None) if indices is None else list(indices)
    return np.linalg.norm(p[:, idx] - g[:, idx], axis=2).mean(axis=1) / d


def nme_thesis(pred: np.ndarray, gt: np.ndarray, scheme: SchemeLike) -> np.ndarray:
    """Per-face thesis error (N,): sum over points of squared distance divided by d_ip squared."""
    s = get_scheme(scheme)
    p, g = _pair(pred, gt, s)
    return ((p - g) ** 2).sum(axis=(1, 2)) / normaliser(g, s, "ip") ** 2


def per_region_nme(
    pred: np.ndarray,
    gt: np.ndarray,
    scheme: SchemeLike,
    norm: str = "io",
    regions: Optional[Mapping[str, Sequence[int]]] = None,
    boxes: Optional[np.ndarray] = None,
) -> dict[str, float]:
    """Mean NME over faces for each region (default: the scheme's disjoint regions)."""
    s = get_scheme(scheme)
    regions = s.regions if regions is None else regions
    return {name: float(nme(pred, gt, s, norm, boxes, idx).mean()) for name, idx in regions.items()}


def _errors(errors: np.ndarray) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        raise ValueError("no errors given")
    # A NaN prediction is a failure at every threshold, never a success.
    return np.where(np.isnan(e), np.inf, e)


def ced(errors: np.ndarray, max_error: float = 0.10) -> tuple[np.ndarray, np.ndarray]:
    """Exact CED step curve on [0, max_error]: x and the fraction of faces with error <= x."""
    e = np.sort(_errors(errors))
    inside = e[e <= max_error]
    x = np.concatenate([[0.0], inside, [max_error]])
    # Right-continuous steps: at each error value the fraction already includes that face.
    y = np.searchsorted(e, x, side="right") / e.size
    return x, y


def auc(errors: np.ndarray, threshold: float) -> float:
    """Area under the CED curve on [0, threshold] divided by threshold (exact, no sampling)."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    e = _errors(errors)
    # Face i adds 1/N to the CED on [e_i, t], a strip of width t - e_i when e_i < t.
    return float(np.clip(threshold - e, 0.0, None).mean() / threshold)


def failure_rate(errors: np.ndarray, threshold: float) -> float:
    """Fraction of faces whose error is above threshold (NaN counts as a failure)."""
    return float((_errors(errors) > threshold).mean())


def evaluate_points(
    pred: np.ndarray, gt: np.ndarray, scheme: SchemeLike, boxes: Optional[np.ndarray] = None
) -> dict:
    """All headline metrics; AUC, FR and per-region use NME_io. ``boxes`` (N, 4) feeds nme_box."""
    s = get_scheme(scheme)
    e_io = nme(pred, gt, s, "io")
    return {
        "n": int(e_io.size),
        "nme_io": float(e_io.mean()),
        "nme_ip": float(nme(pred, gt, s, "ip").mean()),
        "nme_box": float(nme(pred, gt, s, "box", boxes).mean()),
        "nme_thesis": float(nme_thesis(pred, gt, s).mean()),
        "auc08": auc(e_io, 0.08),
        "auc10": auc(e_io, 0.10),
        "fr08": failure_rate(e_io, 0.08),
        "fr10": failure_rate(e_io, 0.10),
        "per_region": per_region_nme(pred, gt, s, "io"),
    }


def plot_ced(
    nmes_by_name: Mapping[str, np.ndarray],
    path: Union[str, Path],
    max_error: float = 0.10,
    title: str = "CED (NME, inter-ocular)",
) -> Path:
    """Save a PNG with one CED step curve per named error array; the legend shows AUC and FR."""
    # The object API with an Agg canvas leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not nmes_by_name:
        raise ValueError("plot_ced: nothing to plot")
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, errs in nmes_by_name.items():
        x, y = ced(errs, max_error)
        label = f"{name} (AUC {auc(errs, max_error):.3f}, FR {failure_rate(errs, max_error):.3f})"
        ax.step(x, y, where="post", label=label)
    ax.set_xlim(0, max_error)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME")
    ax.set_ylabel("fraction of faces")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
