"""Temporal smoothing of landmarks in video: the One-Euro filter and a small face tracker.

One-Euro filter (Casiez, Roussel, Vogel, CHI 2012): an exponential low-pass filter whose cutoff
rises with the signal's speed, ``cutoff = min_cutoff + beta * |dx/dt|``, so still faces stop
jittering and moving faces do not lag. It works on whole arrays at once (all points of a face).

:class:`FaceTracker` links each frame's faces to the previous frame's by box overlap and keeps one
filter per face; the signal is divided by the face's size when the track starts, so the
parameters mean the same for small and large faces (``beta`` per face-size per second).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from landmarknet.detect.boxes import iou_matrix


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter over arrays of any fixed shape, element-wise."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        """``min_cutoff`` (Hz): smoothing at rest; ``beta``: speed coefficient; ``d_cutoff`` (Hz):
        low-pass on the speed estimate."""
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("min_cutoff and d_cutoff must be positive, beta non-negative")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x: Optional[np.ndarray] = None
        self.dx: Optional[np.ndarray] = None
        self.t: Optional[float] = None

    def reset(self) -> None:
        """Forget the past."""
        self.x = self.dx = self.t = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter sample ``x`` taken at time ``t`` (seconds, increasing)."""
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or self.t is None or self.x.shape != x.shape:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        dt = float(t) - self.t
        if dt <= 0:
            return self.x.copy()
        dx = (x - self.x) / dt
        self.dx = self.dx + _alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        self.x = self.x + _alpha(cutoff, dt) * (x - self.x)
        self.t = float(t)
        return self.x.copy()


@dataclass
class _Track:
    filter: OneEuroFilter
    box: np.ndarray
    unit: float
    last_seen: int
    ident: int


@dataclass
class FaceTracker:
    """Per-face One-Euro smoothing of points (and boxes) across the frames of a video."""

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 1.0
    iou_threshold: float = 0.3
    max_missing: int = 5
    tracks: list[_Track] = field(default_factory=list)
    _next: int = 0

    def update(self, frame: int, t: float, boxes: np.ndarray, points: list[Optional[np.ndarray]],
               ) -> tuple[np.ndarray, list[Optional[np.ndarray]], list[int]]:
        """Smooth one frame: boxes (N, 4) x, y, w, h and per-face (K, 2) points (or None).

        Returns the smoothed boxes, smoothed points and each face's track id.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.tracks = [tr for tr in self.tracks if frame - tr.last_seen <= self.max_missing]
        assigned = self._match(boxes)
        out_boxes = boxes.copy()
        out_points: list[Optional[np.ndarray]] = []
        ids = []
        for i, box in enumerate(boxes):
            tr = assigned.get(i)
            if tr is None:
                unit = max(float(max(box[2], box[3])), 1.0)
                tr = _Track(OneEuroFilter(self.min_cutoff, self.beta, self.d_cutoff), box, unit,
                            frame, self._next)
                self._next += 1
                self.tracks.append(tr)
            corners = np.array([[box[0], box[1]], [box[0] + box[2], box[1] + box[3]]])
            pts = points[i] if i < len(points) else None
            signal = corners if pts is None else np.concatenate([corners, np.asarray(pts)], 0)
            smooth = tr.filter(signal / tr.unit, t) * tr.unit
            c = smooth[:2]
            out_boxes[i] = [c[0, 0], c[0, 1], c[1, 0] - c[0, 0], c[1, 1] - c[0, 1]]
            out_points.append(None if pts is None else smooth[2:])
            tr.box, tr.last_seen = box, frame
            ids.append(tr.ident)
        return out_boxes, out_points, ids

    def _match(self, boxes: np.ndarray) -> dict[int, _Track]:
        """Greedy one-to-one matching of boxes to live tracks by IoU."""
        if not len(boxes) or not self.tracks:
            return {}
        iou = iou_matrix(boxes, np.stack([tr.box for tr in self.tracks]))
        out: dict[int, _Track] = {}
        used: set[int] = set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            i, j = divmod(int(flat), iou.shape[1])
            if iou[i, j] < self.iou_threshold:
                break
            if i in out or j in used:
                continue
            out[i] = self.tracks[j]
            used.add(j)
        return out
