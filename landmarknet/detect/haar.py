"""OpenCV's bundled Haar cascade (Viola-Jones) as a fallback face detector.

It needs no network and no weights beyond the XML shipped inside opencv-python
(``cv2.data.haarcascades``). It gives boxes only (no points). Its score is the number of raw
cascade windows merged into the box (OpenCV's ``numDetections``): higher is surer, but it is a
count, not a probability, and not comparable with MTCNN's scores.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from landmarknet.detect import DetectError, Face

DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"


def cascade_path(name: str = DEFAULT_CASCADE) -> Path:
    """The path of a cascade bundled with OpenCV's Python package."""
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not base:
        raise DetectError("this OpenCV build has no bundled Haar cascades (cv2.data.haarcascades); "
                          "install opencv-python-headless")
    return Path(base) / name


class HaarDetector:
    """Frontal-face Haar cascade; ``detect(bgr_image) -> [Face]`` without points."""

    name = "haar"

    def __init__(self, cascade: str = DEFAULT_CASCADE, *, scale_factor: float = 1.1,
                 min_neighbors: int = 3, min_face: int = 20, max_input_side: int = 1280) -> None:
        """Load the cascade; images longer than ``max_input_side`` are searched downscaled."""
        if not hasattr(cv2, "CascadeClassifier"):
            raise DetectError(f"OpenCV {cv2.__version__} has no Haar cascade classifier (OpenCV 5 "
                              "moved it out); install opencv-python-headless<5 or use "
                              "--detector mtcnn")
        path = Path(cascade) if Path(cascade).is_file() else cascade_path(cascade)
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise DetectError(f"cannot load the Haar cascade {path}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face = int(min_face)
        self.max_input_side = int(max_input_side)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, most merged windows first."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DetectError(f"the Haar detector expects a BGR uint8 image (H, W, 3), got "
                              f"{image.dtype} {image.shape}")
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        f = min(1.0, self.max_input_side / max(h, w))
        if f < 1.0:
            gray = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))),
                              interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        m = max(1, int(round(self.min_face * f)))
        rects, counts = self.classifier.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(m, m))
        if len(rects) == 0:
            return []
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if f < 1.0:
            rects /= f  # corners and sizes alike (sub-pixel offsets are below Haar's precision)
        order = np.argsort(-counts, kind="stable")
        return [Face(rects[i], counts[i]) for i in order]
