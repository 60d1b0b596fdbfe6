"""Faces in video, followed from frame to frame: the detector runs only when it is needed.

A detector costs more than the landmark net on a face (MTCNN on a 640x480 frame: tens of
milliseconds on two cores), and between two frames of a video a face moves a little. So
:class:`VideoTracker` runs the detector (through :class:`~landmarknet.detect.pipeline.Landmarker`,
with its alignment and candidate choice) only

* on the first frame, and whenever no face is being followed,
* every ``detect_every`` frames (new faces that walked in are found then),
* on a frame where a followed face is lost: the landmark model's confidence fell below
  ``min_confidence`` (or below half the confidence the face had when it was detected, if that
  is lower; heatmap models, regression models have none) or its points left the picture.
  That frame is then redone from the detector, so no frame reports a lost face.

On the other frames each face's crop comes from the previous frame's landmarks, framed as
training and evaluation frame a face from its points: the points' bounding box (in the face's
own axes, turned with the face by :func:`landmarknet.data.crop.alignment_angle`), then
:func:`landmarknet.data.crop.face_crop` with the model's crop policy. Reported boxes stay of
the detector's kind (the points' box through the inverse of the detector's box calibration), so
a face's box does not jump when the detector runs again. The reported points (and boxes) are
smoothed with the One-Euro filter of :mod:`landmarknet.smoothing`; the raw points, not the
smoothed ones, frame the next crop (smoothing lags behind motion).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from landmarknet.data.crop import alignment_angle, rotation_about
from landmarknet.detect import Detector
from landmarknet.detect.boxes import BoxCalibration, iou_matrix, points_box
from landmarknet.detect.pipeline import FaceResult, ImageResult, Landmarker
from landmarknet.smoothing import FaceTracker

#: Frames between two detector runs. Measured (docs/performance.md, "Detect end to end"): at
#: 10 MTCNN's share of a 640x480 frame on two cores is a tenth of its cost, about that of the
#: light landmark nets, new faces are found within a third of a second at 30 fps, and followed
#: points stay within 0.3-0.5 % of the face's size of detecting on every frame (5, 10 and 20
#: measured the same).
DEFAULT_DETECT_EVERY = 10
#: Heatmap confidence (mean peak height) below which a followed face counts as lost. Faces
#: framed by their own points score about 0.75 with heatmap4_68_bn and heatmap4_68; a crop of
#: flat background where the face was, 0.03 and 0.004 (tests/test_detect_video.py).
DEFAULT_MIN_CONFIDENCE = 0.35
#: Two followed faces whose boxes overlap more than this are one face (the less confident goes).
DUPLICATE_IOU = 0.5


def landmarks_crop_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The box to crop a face from its own points, and the face's roll (degrees).

    The points' bounding box is taken in the face's axes (points turned upright about their
    centre), so a rolled face is framed as tightly as an upright one. It comes back as the
    square of side max(w, h) about that box's centre: ``face_crop`` uses only the centre and
    max(w, h), and a square reads the same along any axes, so a box calibration applied "in the
    face frame" (identity for points' boxes) leaves it as it is. Upright, this is the centre and
    size of ``points_box(points)``: the crop of training and evaluation.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    angle = alignment_angle(p)
    centre = p.mean(0)
    turn = rotation_about(centre, angle)  # what face_crop does: eyes level
    upright = p @ turn[:, :2].T + turn[:, 2]
    x, y, w, h = points_box(upright)
    # the upright box's centre, turned back into the image
    c_up = np.array([x + w / 2, y + h / 2])
    back = rotation_about(centre, -angle)
    c = back[:, :2] @ c_up + back[:, 2]
    side = max(w, h)
    return np.array([c[0] - side / 2, c[1] - side / 2, side, side]), angle


def detector_like_box(points: np.ndarray, calibration: BoxCalibration) -> np.ndarray:
    """The box a detector would give for a face with these points (inverse calibration).

    The calibration maps a detector box's centre by ``(dx w, dy h)`` and its size by
    ``(sw, sh)`` to the points' box; this undoes it on the (axis-aligned) points' box.
    """
    x, y, w, h = points_box(points)
    dw, dh = w / calibration.sw, h / calibration.sh
    cx = x + w / 2 - calibration.dx * dw
    cy = y + h / 2 - calibration.dy * dh
    return np.array([cx - dw / 2, cy - dh / 2, dw, dh])


@dataclass
class _Followed:
    """A face being followed: its latest raw points and the detector's view of it."""

    points: np.ndarray
    score: float
    #: the confidence under which it is lost: min_confidence, or half the confidence it had
    #: when detected if that is lower (a hard face is not "lost" on every frame)
    floor: float


@dataclass
class TrackStats:
    """What the tracker did: the frames where the detector ran, and why."""

    frames: int = 0
    detected: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # frames redone because a face was lost


class VideoTracker:
    """Landmarks of the faces of consecutive frames, the detector run only when needed."""

    def __init__(self, detector: Detector, model, *, detect_every: int = DEFAULT_DETECT_EVERY,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE, smooth: bool = True,
                 align: bool = True, smoother: Optional[FaceTracker] = None) -> None:
        """``model``: a LandmarkModel (None: the detector's points on every frame, no tracking).
        ``detect_every``: frames between detector runs (1: every frame). ``smooth``: One-Euro
        smoothing of the reported points (``smoother`` to choose its parameters)."""
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {detect_every}")
        self.landmarker = Landmarker(detector, model, batch=64, align=align)
        self.detector, self.model = detector, model
        self.detect_every = int(detect_every)
        self.min_confidence = float(min_confidence)
        self.smoother = (smoother or FaceTracker()) if smooth else None
        self.followed: list[_Followed] = []
        self.stats = TrackStats()
        self._last_detect: Optional[int] = None
        self._calibration = (BoxCalibration() if model is None
                             else model.calibration(getattr(detector, "name", None)))

    # -- public -------------------------------------------------------------------------------
    def process(self, frames: Iterable[tuple[Any, float, np.ndarray]],
                ) -> Iterator[tuple[Any, np.ndarray, ImageResult]]:
        """``(key, t seconds, frame)`` in order -> ``(key, frame, result)``, one at a time."""
        for index, (key, t, frame) in enumerate(frames):
            yield key, frame, self.step(frame, t, index)

    def step(self, frame: np.ndarray, t: float, index: Optional[int] = None) -> ImageResult:
        """The faces of one BGR frame taken at time ``t`` (seconds)."""
        index = self.stats.frames if index is None else int(index)
        self.stats.frames += 1
        res = None
        if not self._detector_due(index):
            t0 = time.perf_counter()
            res = self._follow(frame)
            if res is None:
                self.stats.lost.append(index)
            else:
                res.landmark_seconds = time.perf_counter() - t0
        if res is None:
            res = self._detect(frame, index)
        return self._smoothed(res, index, t)

    # -- steps --------------------------------------------------------------------------------
    def _detector_due(self, index: int) -> bool:
        return (self.model is None or not self.followed or self._last_detect is None
                or index - self._last_detect >= self.detect_every)

    def _detect(self, frame: np.ndarray, index: int) -> ImageResult:
        """Run the detector and the landmark model on the frame; follow what it found."""
        res = self.landmarker.process_one(frame)
        self._last_detect = index
        self.stats.detected.append(index)
        self.followed = [_Followed(f.landmarks, f.score, self._floor(f.confidence))
                         for f in res.faces if f.landmarks is not None and _usable(f.landmarks)]
        return res

    def _follow(self, frame: np.ndarray) -> Optional[ImageResult]:
        """Landmarks from crops framed by the previous points; None when a face is lost."""
        boxes = np.stack([landmarks_crop_box(f.points)[0] for f in self.followed])
        points = [f.points for f in self.followed]
        batch, geoms, _ = self.model.prepare(frame, boxes, "landmarks", points)
        crop_pts, conf, _ = self.model.run(batch)
        image_pts = self.model.to_image(crop_pts, geoms)
        h, w = frame.shape[:2]
        for p, c, f in zip(image_pts, conf, self.followed):
            if (c is not None and c < f.floor) or not _inside(p, w, h):
                return None
        keep = _without_duplicates(image_pts, conf)
        self.followed = [_Followed(image_pts[i], self.followed[i].score, self.followed[i].floor)
                         for i in keep]
        faces = [FaceResult(detector_like_box(image_pts[i], self._calibration),
                            self.followed[j].score, image_pts[i], conf[i])
                 for j, i in enumerate(keep)]
        return ImageResult(faces)

    def _floor(self, confidence: Optional[float]) -> float:
        """The confidence under which a face detected with ``confidence`` counts as lost."""
        if confidence is None:
            return -math.inf
        return min(self.min_confidence, 0.5 * float(confidence))

    def _smoothed(self, res: ImageResult, index: int, t: float) -> ImageResult:
        """The reported faces smoothed over time (the followed raw points stay as they are)."""
        if self.smoother is None or not res.faces:
            return res
        boxes, pts, _ = self.smoother.update(index, t, [f.box for f in res.faces],
                                             [f.landmarks for f in res.faces])
        faces = [FaceResult(b, f.score, p, f.confidence, f.heatmaps, f.crop, f.crop_points)
                 for f, b, p in zip(res.faces, boxes, pts)]
        return ImageResult(faces, res.detect_seconds, res.landmark_seconds)


def _usable(points: np.ndarray) -> bool:
    """Finite points spanning more than a pixel: something a crop can be framed from."""
    p = np.asarray(points, dtype=np.float64)
    return bool(np.isfinite(p).all()) and float(np.ptp(p, axis=0).max()) > 1.0


def _inside(points: np.ndarray, width: int, height: int, keep: float = 0.5) -> bool:
    """True while at least ``keep`` of the points lie in the picture (and all are finite)."""
    p = np.asarray(points, dtype=np.float64)
    if not _usable(p):
        return False
    ok = (p[:, 0] >= -0.5) & (p[:, 0] <= width - 0.5) & (p[:, 1] >= -0.5) & \
        (p[:, 1] <= height - 0.5)
    return float(ok.mean()) >= keep


def _without_duplicates(points: np.ndarray, conf: list[Optional[float]]) -> list[int]:
    """Indices of the faces to keep, in order: of two that became one face, the more
    confident (the first when there is no confidence)."""
    if len(points) < 2:
        return list(range(len(points)))
    boxes = np.stack([points_box(p) for p in points])
    iou = iou_matrix(boxes, boxes)
    score = [(-math.inf if c is None else c) for c in conf]
    order = sorted(range(len(points)), key=lambda i: (-score[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou[i, j] <= DUPLICATE_IOU for j in kept):
            kept.append(i)
    return sorted(kept)
