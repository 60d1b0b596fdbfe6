"""THE face crop: one function, :func:`face_crop`, maps a face box to a landmark model's input.

Training (from the bounding box of the ground-truth points, with random jitter) and inference
(from a detector's box, calibrated to the same kind of box) both call it, so the network always
sees faces framed the same way.

Conventions
-----------
* Coordinates are continuous pixels with pixel CENTRES at integers (OpenCV's convention, also
  ``cv2.warpAffine``'s): the image's first pixel covers [-0.5, 0.5].
* A face box is ``(x, y, w, h)`` in those coordinates; its centre is ``(x + w/2, y + h/2)``.
  For training it is the bounding box of the scheme's points (``min`` to ``max`` over all points);
  detectors' boxes are mapped to that kind of box by a
  :class:`landmarknet.detect.boxes.BoxCalibration` before they reach this function.
* The crop is a square of side ``side = policy.scale * max(w, h)`` (times the jitter's scale),
  centred at the box centre moved by ``policy.shift * side`` (plus the jitter's shift), rotated by
  the jitter's angle, and resampled to ``policy.size`` x ``policy.size`` pixels. The square's
  continuous extent ``[c - side/2, c + side/2]`` maps onto the crop's ``[-0.5, size - 0.5]``, so
  the box centre lands on the crop's centre ``(size - 1) / 2``.
* The mapping image -> crop is the 2x3 affine ``FaceCrop.matrix`` with ``s = size / side`` and
  the jitter's angle ``a``:

      q = s * R(a) @ (p - c) + (size - 1) / 2,   R(a) = [[cos a, sin a], [-sin a, cos a]]

  With y pointing down, a positive ``a`` turns the face in the crop counter-clockwise as seen
  on screen (the image's x axis (1, 0) becomes (cos a, -sin a) in the crop).

  The angle is the jitter's plus an ALIGNMENT angle (``face_crop(..., angle=...)``): the roll
  of the face read from its eye points by :func:`eye_angle` / :func:`alignment_angle`, so the
  eyes come out level. Training and inference share these two functions: inference passes the
  detector's eye points (MTCNN's five), training may pass the ground-truth eyes. With an
  alignment angle the centre shift (policy and jitter) is taken along the face's own axes.

  ``FaceCrop.to_crop`` / ``to_image`` apply it and its exact inverse to points;
  ``FaceCrop.warp`` resamples an image (area-averaged first when shrinking by more than 2x, so
  large photographs do not alias).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

Box = Sequence[float]


@dataclass(frozen=True)
class CropPolicy:
    """How a face box becomes a crop: output size, margin (scale) and centre shift."""

    size: int = 112
    #: Side of the square crop in units of max(box w, box h).
    scale: float = 1.25
    #: Move of the crop's centre from the box centre, in units of the crop's side (x, y).
    shift: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"crop size must be a positive integer, got {self.size}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"crop scale must be positive, got {self.scale}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "shift", (float(self.shift[0]), float(self.shift[1])))

    def to_dict(self) -> dict:
        """As stored in model.json's "crop"."""
        return {"size": self.size, "scale": self.scale, "shift": list(self.shift)}

    @classmethod
    def from_dict(cls, d: dict) -> "CropPolicy":
        """From model.json's "crop" (unknown keys are an error)."""
        extra = set(d) - {"size", "scale", "shift", "box"}
        if extra:
            raise ValueError(f"unknown crop keys {sorted(extra)}; known: size, scale, shift, box")
        return cls(int(d.get("size", 112)), float(d.get("scale", 1.25)),
                   tuple(d.get("shift", (0.0, 0.0))))


@dataclass(frozen=True)
class Jitter:
    """A random perturbation of the crop for training: scale, shift (of the side), angle (deg)."""

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, scale: float = 0.1, shift: float = 0.05,
               angle: float = 0.0) -> "Jitter":
        """Uniform jitter: scale in [1-scale, 1+scale], shifts in [-shift, shift], angle +-angle."""
        return cls(float(rng.uniform(1 - scale, 1 + scale)), float(rng.uniform(-shift, shift)),
                   float(rng.uniform(-shift, shift)), float(rng.uniform(-angle, angle)))


@dataclass(frozen=True)
class FaceCrop:
    """A crop's geometry: the image -> crop affine and what it is made of."""

    #: 2x3 float64, image -> crop (``q = matrix @ [x, y, 1]``).
    matrix: np.ndarray
    size: int
    center: tuple[float, float] = field(default=(0.0, 0.0))
    side: float = 1.0
    angle: float = 0.0

    @property
    def inverse(self) -> np.ndarray:
        """2x3 float64, crop -> image."""
        return cv2.invertAffineTransform(self.matrix)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image points (..., 2) -> crop pixels."""
        return _apply(self.matrix, points)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Crop points (..., 2) -> image pixels (exact inverse of to_crop)."""
        return _apply(self.inverse, points)

    def corners(self) -> np.ndarray:
        """(4, 2) the crop's outer corners in image coordinates (for drawing)."""
        e = np.array([[-0.5, -0.5], [self.size - 0.5, -0.5], [self.size - 0.5, self.size - 0.5],
                      [-0.5, self.size - 0.5]])
        return self.to_image(e)

    def warp(self, image: np.ndarray, border: int = cv2.BORDER_CONSTANT,
             value: float | Sequence[float] = 0) -> np.ndarray:
        """Resample ``image`` into the crop (size x size, same channels and dtype).

        Shrinking by more than 2x first area-averages the needed region with ``cv2.resize``
        (INTER_AREA), then the affine does the rest bilinearly; the geometry is the same.
        """
        m = self.matrix
        scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
        src = image
        if scale < 0.5:
            h, w = image.shape[:2]
            c = self.corners()
            pad = 2.0 / scale
            x0 = int(max(0, math.floor(c[:, 0].min() - pad)))
            y0 = int(max(0, math.floor(c[:, 1].min() - pad)))
            x1 = int(min(w, math.ceil(c[:, 0].max() + pad) + 1))
            y1 = int(min(h, math.ceil(c[:, 1].max() + pad) + 1))
            if x1 > x0 and y1 > y0:
                roi = image[y0:y1, x0:x1]
                nw = max(1, int(round((x1 - x0) * scale * 1.5)))
                nh = max(1, int(round((y1 - y0) * scale * 1.5)))
                src = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
                fx, fy = nw / (x1 - x0), nh / (y1 - y0)
                # roi resize: x_r = (x - x0 + 0.5) * fx - 0.5; compose crop = m o inverse(resize)
                to_r = np.array([[fx, 0, (0.5 - x0) * fx - 0.5],
                                 [0, fy, (0.5 - y0) * fy - 0.5], [0, 0, 1]])
                m = (np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(to_r))[:2]
            # an empty intersection: the crop lies outside the image; warp the original (borders)
        if src.ndim == 3 and src.shape[2] > 4:
            raise ValueError("warp handles at most 4 channels")
        out = cv2.warpAffine(src, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                             borderMode=border, borderValue=value)
        if image.ndim == 3 and out.ndim == 2:
            out = out[:, :, None]
        return out


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def eye_angle(left_eye: Sequence[float], right_eye: Sequence[float]) -> float:
    """The face's roll in degrees: the image-left -> image-right eye direction (y down).

    Passed as ``face_crop(..., angle=...)`` it puts the two eyes on one crop row, left eye on
    the left; 0 for level eyes, +90 for a face turned so that its right eye is below its left.
    """
    dx = float(right_eye[0]) - float(left_eye[0])
    dy = float(right_eye[1]) - float(left_eye[1])
    if not (math.isfinite(dx) and math.isfinite(dy)) or (dx == 0 and dy == 0):
        raise ValueError(f"eye points must be finite and distinct, got {left_eye}, {right_eye}")
    return math.degrees(math.atan2(dy, dx))


#: Points of each scheme whose mean is an eye centre (image-left eye, image-right eye).
_EYES = {5: ((0,), (1,)), 68: (tuple(range(36, 42)), tuple(range(42, 48))),
         77: (tuple(range(36, 42)), tuple(range(42, 48)))}


def alignment_angle(points: Optional[np.ndarray]) -> float:
    """The alignment angle (degrees) from a face's 5, 68 or 77 points; 0 when there are none.

    5 points (MTCNN, CelebA order): the two eye points; 68/77 (iBUG): the means of each eye's
    six points. Other point counts, or degenerate eyes, give 0 (the upright crop).
    """
    if points is None:
        return 0.0
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(p) not in _EYES:
        return 0.0
    left, right = (p[list(idx)].mean(0) for idx in _EYES[len(p)])
    try:
        return eye_angle(left, right)
    except ValueError:
        return 0.0


def rotation_about(center: Sequence[float], degrees: float) -> np.ndarray:
    """2x3 affine turning points about ``center`` by ``degrees`` (counter-clockwise on screen)."""
    a = math.radians(degrees)
    ca, sa = math.cos(a), math.sin(a)
    lin = np.array([[ca, sa], [-sa, ca]])
    c = np.asarray(center, dtype=np.float64)
    return np.concatenate([lin, (c - lin @ c)[:, None]], axis=1)


def rotate_expanded(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image turned by ``degrees`` (counter-clockwise) on a canvas that holds all of it.

    Returns the new image and the 2x3 image -> new image affine (apply it to the points too);
    used to make rotated copies of annotated faces for tests and benchmarks.
    """
    h, w = image.shape[:2]
    m = rotation_about(((w - 1) / 2, (h - 1) / 2), degrees)
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    turned = _apply(m, corners)
    lo, hi = turned.min(0), turned.max(0)
    nw, nh = int(math.ceil(hi[0] - lo[0] - 1e-6)), int(math.ceil(hi[1] - lo[1] - 1e-6))
    # put the turned canvas's centre on the new canvas's centre
    m[:, 2] += np.array([(nw - 1) / 2, (nh - 1) / 2]) - _apply(m, [(w - 1) / 2, (h - 1) / 2])
    out = cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out, m


def face_crop(box: Box, policy: CropPolicy = CropPolicy(), jitter: Optional[Jitter] = None,
              angle: float = 0.0) -> FaceCrop:
    """The crop of a face box under a policy, an optional training jitter and an alignment angle.

    ``angle`` (degrees, usually :func:`alignment_angle` of eye points) turns the crop with the
    face; the jitter's angle adds to it. See the module doc.
    """
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"face box must be finite, got {tuple(box)}")
    extent = max(w, h)
    if extent <= 0:
        raise ValueError(f"face box must have a positive width or height, got {tuple(box)}")
    if not math.isfinite(angle):
        raise ValueError(f"alignment angle must be finite, got {angle}")
    j = jitter or Jitter()
    side = policy.scale * extent * j.scale
    # the shift is along the face's axes: the image's when upright (angle 0, as before)
    sx, sy = (policy.shift[0] + j.dx) * side, (policy.shift[1] + j.dy) * side
    r = math.radians(angle)
    cx = x + w / 2 + math.cos(r) * sx - math.sin(r) * sy
    cy = y + h / 2 + math.sin(r) * sx + math.cos(r) * sy
    s = policy.size / side
    a = math.radians(angle + j.angle)
    ca, sa = math.cos(a), math.sin(a)
    lin = s * np.array([[ca, sa], [-sa, ca]])
    half = (policy.size - 1) / 2.0
    t = np.array([half, half]) - lin @ np.array([cx, cy])
    matrix = np.concatenate([lin, t[:, None]], axis=1)
    return FaceCrop(matrix, policy.size, (cx, cy), side, angle + j.angle)


def crop_batch(image: np.ndarray, boxes: np.ndarray, policy: CropPolicy,
               angles: Optional[Sequence[float]] = None,
               ) -> tuple[np.ndarray, list[FaceCrop]]:
    """All faces of one image: (N, size, size, C) crops (image dtype) and their FaceCrops.

    ``angles``: one alignment angle (degrees) per box, or None for upright crops.
    """
    crops, geoms = [], []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if angles is None:
        angles = [0.0] * len(boxes)
    if len(angles) != len(boxes):
        raise ValueError(f"{len(angles)} alignment angles for {len(boxes)} boxes")
    for box, angle in zip(boxes, angles):
        g = face_crop(box, policy, angle=float(angle))
        c = g.warp(image)
        crops.append(c if c.ndim == 3 else c[:, :, None])
        geoms.append(g)
    if not crops:
        ch = image.shape[2] if image.ndim == 3 else 1
        return np.zeros((0, policy.size, policy.size, ch), dtype=image.dtype), []
    return np.stack(crops), geoms
