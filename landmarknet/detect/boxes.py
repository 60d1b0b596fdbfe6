"""Box arithmetic shared by the detectors and their evaluation: IoU, greedy NMS, calibration.

Boxes here are float arrays of corners ``(x1, y1, x2, y2)`` in continuous image coordinates where
pixel centres sit at integers (OpenCV's convention), so a box's width is ``x2 - x1``. The MTCNN
code keeps its own 1-based inclusive-pixel convention internally and converts at its boundary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


def xywh_to_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x, y, w, h -> (N, 4) x1, y1, x2, y2."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def corners_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) x, y, w, h."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def points_box(points: np.ndarray) -> np.ndarray:
    """The bounding box (x, y, w, h) of (K, 2) points: min corner to max corner."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lo, hi = p.min(0), p.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` with every box of ``b`` (both x, y, w, h)."""
    ca, cb = xywh_to_corners(a), xywh_to_corners(b)
    lo = np.maximum(ca[:, None, :2], cb[None, :, :2])
    hi = np.minimum(ca[:, None, 2:], cb[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a = (ca[:, 2:] - ca[:, :2]).clip(0).prod(-1)
    area_b = (cb[:, 2:] - cb[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union",
        inclusive: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    ``boxes`` are corners (N, 4). ``mode`` "union" divides the overlap by the union (IoU), "min"
    by the smaller area. A box is suppressed when its overlap with a kept one exceeds
    ``threshold``. ``inclusive`` counts pixels as MTCNN's MATLAB code does (width x2 - x1 + 1).
    Each loop step handles one kept box against all remaining ones at once.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    one = 1.0 if inclusive else 0.0
    x1, y1, x2, y2 = b.T
    area = (x2 - x1 + one) * (y2 - y1 + one)
    # Stable sort, ties broken towards the later box, as MATLAB's sort + "take the last" does.
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        if mode == "min":
            over = inter / np.minimum(area[i], area[rest])
        else:
            over = inter / (area[i] + area[rest] - inter)
        order = rest[over <= threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class BoxCalibration:
    """Maps a detector's box to the box a landmark model was trained on (a linear fit).

    For a detector box (x, y, w, h) with centre (cx, cy): the calibrated box has centre
    ``(cx + dx * w, cy + dy * h)`` and size ``(sw * w, sh * h)``. The identity is (0, 0, 1, 1).
    """

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, boxes: np.ndarray, angles: Optional[Sequence[float]] = None) -> np.ndarray:
        """(N, 4) x, y, w, h detector boxes -> (N, 4) calibrated boxes.

        ``angles`` (degrees, one per box; :func:`landmarknet.data.crop.alignment_angle`) say how
        far each face is turned in the image. The calibration was fitted on upright faces, so
        it is applied in the face's frame: the detector's axis-aligned box keeps its centre,
        its sides are read along the face's axes (``w' = w cos^2 + h sin^2``,
        ``h' = w sin^2 + h cos^2``: unchanged upright, swapped at a quarter turn), and the
        centre moves by ``(dx w', dy h')`` along those axes. The result is the face-frame box
        (centre and sides) that ``face_crop(box, angle=...)`` turns with the face. Angles of 0
        give exactly the upright calibration.
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        a = np.zeros(len(b)) if angles is None else np.radians(np.asarray(angles, np.float64))
        if a.shape != (len(b),):
            raise ValueError(f"{a.size} angles for {len(b)} boxes")
        ca, sa = np.cos(a), np.sin(a)
        w0 = b[:, 2] * ca ** 2 + b[:, 3] * sa ** 2
        h0 = b[:, 2] * sa ** 2 + b[:, 3] * ca ** 2
        ox, oy = self.dx * w0, self.dy * h0  # the move in the face's frame
        cx = b[:, 0] + b[:, 2] / 2 + ca * ox - sa * oy
        cy = b[:, 1] + b[:, 3] / 2 + sa * ox + ca * oy
        w, h = w0 * self.sw, h0 * self.sh
        return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)

    def to_list(self) -> list[float]:
        """[dx, dy, sw, sh], as model.json stores it."""
        return [self.dx, self.dy, self.sw, self.sh]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> "BoxCalibration":
        """From [dx, dy, sw, sh]."""
        if len(values) != 4:
            raise ValueError(f"a box calibration is [dx, dy, sw, sh], got {list(values)}")
        return cls(*(float(v) for v in values))

    @classmethod
    def fit(cls, detected: np.ndarray, reference: np.ndarray) -> "BoxCalibration":
        """The calibration taking detector boxes to reference boxes (medians: robust)."""
        d = np.asarray(detected, dtype=np.float64).reshape(-1, 4)
        r = np.asarray(reference, dtype=np.float64).reshape(-1, 4)
        if len(d) == 0 or len(d) != len(r):
            raise ValueError(f"need as many detected as reference boxes (> 0), got "
                             f"{len(d)} / {len(r)}")
        dcx, dcy = d[:, 0] + d[:, 2] / 2, d[:, 1] + d[:, 3] / 2
        rcx, rcy = r[:, 0] + r[:, 2] / 2, r[:, 1] + r[:, 3] / 2
        return cls(float(np.median((rcx - dcx) / d[:, 2])), float(np.median((rcy - dcy) / d[:, 3])),
                   float(np.median(r[:, 2] / d[:, 2])), float(np.median(r[:, 3] / d[:, 3])))
