"""Face detection: MTCNN through landmarknet's own Caffe importer, Haar cascade fallback.

A detector takes a BGR ``uint8`` image (H, W, 3) and returns :class:`Face` records: a box
``(x, y, w, h)`` in pixels (pixel centres at integer coordinates), a score and, for MTCNN, five
points (CelebA order: image-left eye, image-right eye, nose, left and right mouth corners).

``get_detector("mtcnn" | "haar")`` gives a shared, ready instance (``device="cuda"`` runs MTCNN
on a GPU; :func:`resolve_device` reads ``--device``). ``detector_box_stats`` measures a detector
against annotated samples (miss rate, IoU) for the evaluation tooling. Videos:
``landmarknet.detect.tracker`` runs the detector only when needed; live sources:
``landmarknet.detect.video``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np

from landmarknet.errors import LandmarknetError

#: The detectors ``get_detector`` knows, in the order the CLI lists them.
DETECTORS = ("mtcnn", "haar")


class DetectError(LandmarknetError):
    """A detector or an input image that cannot be used; the message says what to do."""


class ImageError(DetectError):
    """An input file that is missing, empty or not a decodable image or video."""


class DeviceError(DetectError):
    """A device that was asked for and is not there (``--device cuda`` without CUDA)."""


#: What ``--device`` accepts: auto is cuda when torch sees a GPU, else cpu.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: Optional[str]) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> the torch device string to use (DeviceError when
    CUDA is asked for and torch sees none)."""
    import torch

    text = (name or "cpu").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {text}: torch sees no CUDA GPU here (torch "
                              f"{torch.__version__}); use --device cpu or auto")
        index = text.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise DeviceError(f"--device {text}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        return text
    raise DeviceError(f"--device {name!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")


@dataclass
class Face:
    """One detected face: box (x, y, w, h), detector score and optional (K, 2) points.

    ``alternatives``: other readings of the same face (MTCNN searching quarter turns finds a
    face in several turns, with different eye points); a landmark model picks the one it is
    most confident about (``landmarknet.detect.pipeline.face_candidates``).
    """

    box: np.ndarray
    score: float
    points: Optional[np.ndarray] = None
    alternatives: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        self.score = float(self.score)
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)


class Detector(Protocol):
    """What every detector offers."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, best score first."""
        ...


@functools.lru_cache(maxsize=8)
def get_detector(name: str = "mtcnn", **options) -> Detector:
    """A (cached) detector by name: 'mtcnn' (default) or 'haar'; options go to its constructor."""
    if name == "mtcnn":
        from landmarknet.detect.mtcnn import MTCNN
        return MTCNN(**options)
    if name == "haar":
        from landmarknet.detect.haar import HaarDetector
        return HaarDetector(**options)
    raise DetectError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")


def detector_box_stats(samples, detector, **options):
    """Miss rate and IoU of a detector's boxes against annotated samples (see detect.evaluate)."""
    from landmarknet.detect.evaluate import detector_box_stats as _stats
    return _stats(samples, detector, **options)


__all__ = ["DETECTORS", "DEVICES", "DetectError", "ImageError", "DeviceError", "resolve_device",
           "Face", "Detector", "get_detector",
           "detector_box_stats"]
