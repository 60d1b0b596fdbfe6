"""Detector + landmark model over a stream of images, with faces batched through the model.

``Landmarker.process(stream)`` takes ``(key, image)`` pairs in order and yields
``(key, image, ImageResult)`` in the same order. Faces of consecutive images are gathered until
``batch`` faces (or ``batch`` images) wait, then go through the landmark network together.
Without a model, the detector's own points (MTCNN's five) are the landmarks. With a model, those
points (when the detector gives them) turn each crop so the eyes are level (``align``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from landmarknet.detect import Detector, Face


@dataclass
class FaceResult:
    """One face: detector box and score, landmarks in image pixels, the model's confidence."""

    box: np.ndarray
    score: float
    landmarks: Optional[np.ndarray]
    confidence: Optional[float]
    heatmaps: Optional[np.ndarray] = None  # (K, h, w) when asked for
    crop: Optional[np.ndarray] = None  # model input crop (S, S, 3 RGB or 1 gray), with heatmaps
    crop_points: Optional[np.ndarray] = None  # landmarks in crop pixels, with heatmaps

    def to_json(self) -> dict:
        """The issue's face object: box, score, landmarks, confidence."""
        return {"box": [round(float(v), 2) for v in self.box],
                "score": round(float(self.score), 5),
                "landmarks": [] if self.landmarks is None else
                [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
                "confidence": None if self.confidence is None else round(float(self.confidence), 5)}


@dataclass
class ImageResult:
    """All faces of one image and the time spent on it."""

    faces: list[FaceResult] = field(default_factory=list)
    detect_seconds: float = 0.0
    landmark_seconds: float = 0.0


def face_candidates(faces: list[Face], align: bool = True) -> tuple[list[Face], list[int]]:
    """Each face and, when aligning, its alternative readings; with the index of their face."""
    cands, owner = [], []
    for i, f in enumerate(faces):
        for c in [f] + (list(f.alternatives) if align else []):
            cands.append(c)
            owner.append(i)
    return cands, owner


def best_candidates(confidence: list[Optional[float]], owner: list[int]) -> list[int]:
    """Per face (in order), the candidate the landmark model is most confident about.

    Without confidences (regression models) the first candidate, the detector's best, stays.
    """
    best: dict[int, int] = {}
    for j, (c, i) in enumerate(zip(confidence, owner)):
        if i not in best or (c is not None and confidence[best[i]] is not None
                             and c > confidence[best[i]]):
            best[i] = j
    return [best[i] for i in sorted(best)]


@dataclass
class _Pending:
    key: Any
    image: np.ndarray
    faces: list[Face]
    detect_seconds: float


class Landmarker:
    """Finds faces and their landmarks; see the module doc."""

    def __init__(self, detector: Detector, model=None, batch: int = 16,
                 keep_heatmaps: bool = False, align: bool = True) -> None:
        """``align``: turn each crop upright from the detector's eye points, when it gives any."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.detector = detector
        self.model = model
        self.batch = int(batch)
        self.align = bool(align)
        self.keep_heatmaps = bool(keep_heatmaps) and model is not None and model.decodes_heatmaps

    def process(self, stream: Iterable[tuple[Any, np.ndarray]],
                ) -> Iterator[tuple[Any, np.ndarray, ImageResult]]:
        """Yield ``(key, image, result)`` for each ``(key, image)``, in order.

        An image of None passes through untouched (no faces): callers use it to keep their own
        records, such as unreadable files, in order.
        """
        pending: list[_Pending] = []
        n_faces = 0
        for key, image in stream:
            t0 = time.perf_counter()
            faces = [] if image is None else self.detector.detect(image)
            pending.append(_Pending(key, image, faces, time.perf_counter() - t0))
            n_faces += len(faces)
            if n_faces >= self.batch or len(pending) >= self.batch or self.model is None:
                yield from self._flush(pending)
                pending, n_faces = [], 0
        if pending:
            yield from self._flush(pending)

    def process_one(self, image: np.ndarray) -> ImageResult:
        """One image, on its own."""
        return next(iter(self.process([(None, image)])))[2]

    def _flush(self, pending: list[_Pending]) -> Iterator[tuple[Any, np.ndarray, ImageResult]]:
        if self.model is None:
            for p in pending:
                faces = [FaceResult(f.box, f.score, f.points, None) for f in p.faces]
                yield p.key, p.image, ImageResult(faces, p.detect_seconds)
            return
        t0 = time.perf_counter()
        batches, geoms, crops, owner, cands, face_of = [], [], [], [], [], []
        for i, p in enumerate(pending):
            if not p.faces:
                continue
            cs, own = face_candidates(p.faces, self.align)
            b, g, c = self.model.prepare(p.image, np.stack([f.box for f in cs]),
                                         self.detector.name,
                                         [f.points for f in cs] if self.align else None)
            batches.append(b)
            geoms += g
            crops.append(c)
            owner += [i] * len(p.faces)
            cands += cs
            face_of += [len(owner) - len(p.faces) + o for o in own]  # global face index
        pts_all, conf_all, maps_all = [], [], []
        if batches:
            batch = np.concatenate(batches)
            for s in range(0, len(batch), self.batch):
                pts, conf, maps = self.model.run(batch[s:s + self.batch], self.keep_heatmaps)
                pts_all.append(pts)
                conf_all += conf
                if maps is not None:
                    maps_all.append(maps)
        crop_pts = np.concatenate(pts_all) if pts_all else np.zeros((0, 0, 2))
        image_pts = self.model.to_image(crop_pts, geoms) if len(geoms) else crop_pts
        maps = np.concatenate(maps_all) if maps_all else None
        crop_px = np.concatenate(crops) if crops else None
        pick = best_candidates(conf_all, face_of)  # one candidate per face, in order
        crop_pts, image_pts = crop_pts[pick], image_pts[pick]
        conf_all = [conf_all[j] for j in pick]
        chosen = [cands[j] for j in pick]
        maps = None if maps is None else maps[pick]
        crop_px = None if crop_px is None else crop_px[pick]
        if crop_px is not None and self.model.spec.channels == "BGR":
            crop_px = crop_px[..., ::-1]  # kept for display: RGB (or gray)
        per_face_seconds = (time.perf_counter() - t0) / max(1, len(owner))
        j = 0
        for i, p in enumerate(pending):
            res = ImageResult(detect_seconds=p.detect_seconds)
            for _ in p.faces:
                f = chosen[j]  # the reading of the face the landmark model chose
                res.faces.append(FaceResult(
                    f.box, f.score, image_pts[j], conf_all[j],
                    None if maps is None else maps[j],
                    None if maps is None or crop_px is None else crop_px[j],
                    None if maps is None else crop_pts[j]))
                j += 1
            res.landmark_seconds = per_face_seconds * len(p.faces)
            yield p.key, p.image, res
