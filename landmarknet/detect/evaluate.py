"""Detectors against annotated faces: miss rate, IoU, matched boxes, and box calibrations.

``detector_box_stats(samples, detector)`` runs a detector over samples (``landmarknet.data.formats
.Sample``: image path, ground-truth points, optional box) and reports, per sample, the detection
that matches the annotated face (or a miss). The evaluation tooling feeds the matched boxes to a
landmark model to get NME with the detector's boxes beside NME with ground-truth boxes.

The reference box is the bounding box of the ground-truth points (what training crops from);
detector boxes are compared after their :class:`BoxCalibration` to that kind of box
(``DEFAULT_CALIBRATIONS``, measured with ``fit_box_calibration``), so IoU means "how well would
the crop be placed". A face counts as found when a detection's box holds the points' centroid
and is of a plausible size (see ``detector_box_stats``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from landmarknet.detect import Detector, DetectError, ImageError, get_detector
from landmarknet.detect.boxes import BoxCalibration, iou_matrix, points_box

#: (detector, points in the scheme) -> calibration from the detector's box to the bounding box of
#: the scheme's points. Measured by ``fit_box_calibration`` (match="centroid", no size check,
#: medians) on the TRAIN splits only: ytf68/train, ytf77/train (every 3rd sample) and cuhk5
#: partition 0 (every 5th sample); see tools/dev/fit_box_calibration.py.
DEFAULT_CALIBRATIONS: dict[tuple[str, int], BoxCalibration] = {
    # comments: samples; faces not found (centroid match); median IoU after calibration
    ("mtcnn", 68): BoxCalibration(0.0270, 0.1446, 1.0743, 0.7796),  # 1013; 0.0%; 0.867
    ("mtcnn", 77): BoxCalibration(0.0298, 0.0768, 1.0752, 0.9126),  # 996; 0.0%; 0.884
    ("mtcnn", 5): BoxCalibration(0.0100, 0.0698, 0.4671, 0.3899),  # 1053; 0.3%; 0.728
    ("haar", 68): BoxCalibration(-0.0102, 0.1667, 0.8947, 0.8566),  # 1013; 3.1%; 0.773
    ("haar", 77): BoxCalibration(-0.0046, 0.0908, 0.8974, 1.0127),  # 996; 2.5%; 0.778
    ("haar", 5): BoxCalibration(-0.0058, 0.0714, 0.3907, 0.4316),  # 1053; 5.5%; 0.798
}


@dataclass
class BoxStats:
    """What a detector did on a set of annotated faces."""

    detector: str
    n: int = 0
    n_missed: int = 0
    n_unreadable: int = 0
    n_detections: int = 0
    index: list[int] = field(default_factory=list)  # position in ``samples`` of each entry
    iou: list[float] = field(default_factory=list)  # per sample, 0 for a miss
    matched: list[Optional[np.ndarray]] = field(default_factory=list)  # raw detector box or None
    matched_points: list[Optional[np.ndarray]] = field(default_factory=list)  # detector's points
    matched_faces: list = field(default_factory=list)  # the matched Face (alternatives too)
    reference: list[np.ndarray] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def miss_rate(self) -> float:
        """Fraction of readable samples whose face was not found."""
        return self.n_missed / self.n if self.n else float("nan")

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the faces found."""
        hits = [v for v, m in zip(self.iou, self.matched) if m is not None]
        return float(np.mean(hits)) if hits else float("nan")

    @property
    def median_iou(self) -> float:
        """Median IoU over the faces found."""
        hits = [v for v, m in zip(self.iou, self.matched) if m is not None]
        return float(np.median(hits)) if hits else float("nan")

    @property
    def n_false(self) -> int:
        """Detections that matched no annotated face (each sample annotates one face)."""
        return self.n_detections - (self.n - self.n_missed)

    def summary(self) -> dict:
        """The headline numbers as a dict."""
        return {"detector": self.detector, "n": self.n, "missed": self.n_missed,
                "miss_rate": self.miss_rate, "mean_iou": self.mean_iou,
                "median_iou": self.median_iou, "extra_detections": self.n_false,
                "unreadable": self.n_unreadable,
                "seconds_per_image": float(np.mean(self.seconds)) if self.seconds else float("nan")}


def _calibration_for(detector: Detector, n_points: int,
                     calibration: BoxCalibration | str | None) -> BoxCalibration:
    if isinstance(calibration, BoxCalibration):
        return calibration
    if calibration is None or calibration == "none":
        return BoxCalibration()
    if calibration == "auto":
        return DEFAULT_CALIBRATIONS.get((detector.name, n_points), BoxCalibration())
    raise ValueError(f"calibration must be a BoxCalibration, 'auto' or 'none', got {calibration!r}")


def detector_box_stats(samples: Sequence, detector: Detector | str, *,
                       calibration: BoxCalibration | str | None = "auto",
                       match: str = "centroid", max_size_ratio: float | None = 2.0,
                       iou_threshold: float = 0.5, progress: bool = False) -> BoxStats:
    """Run ``detector`` on every sample's image; match its boxes to the annotated face.

    ``match="centroid"`` (default; "was the face found?"): the detection whose box contains the
    points' centroid, nearest centre first, and whose calibrated box's longer side is within
    ``max_size_ratio`` of the points' box's (None: any size). ``match="iou"``: the detection
    with the highest IoU between its calibrated box and the points' box, a miss below
    ``iou_threshold`` (strict for 5-point boxes, which are small). IoU is reported either way.
    Unreadable images are counted apart.
    """
    from landmarknet.detect.images import read_image

    if isinstance(detector, str):
        detector = get_detector(detector)
    if match not in ("iou", "centroid"):
        raise ValueError(f"match must be 'iou' or 'centroid', got {match!r}")
    stats = BoxStats(detector.name)
    it = samples
    if progress:
        from tqdm import tqdm
        it = tqdm(samples, desc=f"{detector.name} boxes", unit="img")
    for i, sample in enumerate(it):
        try:
            image = read_image(sample.image_path).image
        except ImageError as exc:
            stats.n_unreadable += 1
            stats.errors.append(str(exc))
            continue
        pts = np.asarray(sample.points, dtype=np.float64)
        ref = points_box(pts)
        cal = _calibration_for(detector, len(pts), calibration)
        t0 = time.perf_counter()
        faces = detector.detect(image)
        stats.seconds.append(time.perf_counter() - t0)
        stats.n += 1
        stats.index.append(i)
        stats.n_detections += len(faces)
        stats.reference.append(ref)
        best, best_iou = None, 0.0
        if faces:
            raw = np.stack([f.box for f in faces])
            boxes = cal.apply(raw)
            ious = iou_matrix(boxes, ref[None])[:, 0]
            if match == "iou":
                j = int(np.argmax(ious))
                if ious[j] >= iou_threshold:
                    best, best_iou = j, float(ious[j])
            else:
                c = pts.mean(0)
                inside = ((raw[:, 0] <= c[0]) & (c[0] <= raw[:, 0] + raw[:, 2])
                          & (raw[:, 1] <= c[1]) & (c[1] <= raw[:, 1] + raw[:, 3]))
                if max_size_ratio is not None:
                    ratio = boxes[:, 2:].max(1) / max(ref[2:].max(), 1e-9)
                    inside &= (ratio <= max_size_ratio) & (ratio >= 1 / max_size_ratio)
                if inside.any():
                    centres = raw[:, :2] + raw[:, 2:] / 2
                    dist = np.where(inside, np.hypot(*(centres - c).T), np.inf)
                    best = int(np.argmin(dist))
                    best_iou = float(ious[best])
        if best is None:
            stats.n_missed += 1
            stats.iou.append(0.0)
            stats.matched.append(None)
            stats.matched_points.append(None)
            stats.matched_faces.append(None)
        else:
            stats.iou.append(best_iou)
            stats.matched.append(faces[best].box.copy())
            stats.matched_points.append(None if faces[best].points is None
                                        else faces[best].points.copy())
            stats.matched_faces.append(faces[best])
    return stats


def fit_box_calibration(stats: BoxStats) -> BoxCalibration:
    """The calibration taking a detector's matched boxes to the points' bounding boxes."""
    pairs = [(m, r) for m, r in zip(stats.matched, stats.reference) if m is not None]
    if not pairs:
        raise DetectError(f"{stats.detector}: no matched detections to fit a calibration on")
    det, ref = (np.stack(x) for x in zip(*pairs))
    return BoxCalibration.fit(det, ref)


def _detector_prediction(model, image: np.ndarray, stats: BoxStats, j: int,
                         align: bool) -> np.ndarray:
    """The model's points from the j-th matched detection, chosen as ``detect`` chooses."""
    from landmarknet.detect import Face
    from landmarknet.detect.pipeline import best_candidates, face_candidates

    face = stats.matched_faces[j] if j < len(stats.matched_faces) else None
    if face is None:  # stats made by hand: box and points only
        face = Face(stats.matched[j], 1.0, stats.matched_points[j])
    cands, owner = face_candidates([face], align)
    pred = model.predict(image, np.stack([c.box for c in cands]), stats.detector,
                         points=[c.points for c in cands] if align else None)
    return pred.points[best_candidates(pred.confidence, owner)[0]]


def nme_detector_vs_gt(samples: Sequence, model, stats: BoxStats, align: bool = True) -> dict:
    """A landmark model's metrics with the detector's boxes beside those with ground-truth boxes.

    ``stats`` comes from :func:`detector_box_stats` on the same samples. Ground-truth boxes are the
    points' bounding boxes (what training crops from); detector boxes go through the model's
    calibration for ``stats.detector`` and, with ``align``, are turned upright by the detector's
    eye points (as ``detect`` does); ground-truth boxes stay upright. Returns counts,
    ``miss_rate`` and three metrics dicts from :func:`landmarknet.metrics.evaluate_points`:
    "gt" over every readable face,
    "detector_boxes" and "gt_on_found" over the faces the detector found (like with like).
    """
    from landmarknet.detect.images import read_image
    from landmarknet.metrics import evaluate_points

    gt_pts, pred_gt, pred_det, found = [], [], [], []
    for j, i in enumerate(stats.index):
        sample = samples[i]
        image = read_image(sample.image_path).image
        pts = np.asarray(sample.points, dtype=np.float64)
        gt_pts.append(pts)
        pred_gt.append(model.predict(image, points_box(pts)[None], "landmarks").points[0])
        if stats.matched[j] is not None:
            pred_det.append(_detector_prediction(model, image, stats, j, align))
            found.append(len(gt_pts) - 1)
    if not gt_pts:
        raise DetectError("no readable samples to evaluate")
    gt_all, pred_all = np.stack(gt_pts), np.stack(pred_gt)
    out = {"n": len(gt_pts), "n_found": len(found), "miss_rate": stats.miss_rate,
           "detector": stats.detector, "gt": evaluate_points(pred_all, gt_all, model.spec.scheme)}
    if found:
        out["gt_on_found"] = evaluate_points(pred_all[found], gt_all[found], model.spec.scheme)
        out["detector_boxes"] = evaluate_points(np.stack(pred_det), gt_all[found],
                                                model.spec.scheme)
    return out
