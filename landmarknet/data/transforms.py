"""Training and evaluation transforms: one affine per sample, applied once to image and points.

The geometry is :func:`landmarknet.data.crop.face_crop` (THE crop shared with inference) of the
points' bounding box under a :class:`~landmarknet.data.crop.CropPolicy`, with a random
:class:`~landmarknet.data.crop.Jitter` (scale, shift, rotation up to +-30 degrees), optionally
followed by a horizontal mirror of the crop (``x -> size - 1 - x``, points reordered with the
scheme's flip permutation). The composed 2x3 matrix resamples the image once
(``FaceCrop.warp``: ``cv2.warpAffine``, area pre-shrink for large photos) and maps the points
with the same matrix, so image and points cannot disagree.

Photometric augmentation acts on the crop afterwards: colour (brightness, contrast, saturation),
Gaussian blur, and an occluding rectangle. Every random draw comes from the ``rng`` passed in
(``numpy.random.Generator``), so a sample's augmentation is a pure function of its seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import cv2
import numpy as np

from landmarknet.data.crop import CropPolicy, FaceCrop, Jitter, face_crop
from landmarknet.data.schemes import Scheme, get_scheme


@dataclass(frozen=True)
class Augment:
    """Augmentation strengths; ``Augment.none()`` is the evaluation transform."""

    rotate: float = 30.0  # max |angle| in degrees
    scale: float = 0.1  # crop side times U(1 - scale, 1 + scale)
    shift: float = 0.05  # crop centre moved by U(-shift, shift) x side on each axis
    flip: float = 0.5  # probability of a horizontal mirror
    color: float = 0.3  # brightness / contrast / saturation amplitude (0: off)
    blur: float = 0.15  # probability of a Gaussian blur (sigma 0.5..1.5 crop pixels)
    occlusion: float = 0.15  # probability of one random rectangle (10..35% of the side)

    @classmethod
    def none(cls) -> "Augment":
        """No augmentation at all."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def active(self) -> bool:
        """True when anything is random."""
        return any(v > 0 for v in (self.rotate, self.scale, self.shift, self.flip, self.color,
                                   self.blur, self.occlusion))


def points_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box (x, y, w, h) of the finite points (crop.py's "landmarks" box)."""
    p = np.asarray(points, dtype=np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        raise ValueError("no finite points to make a box from")
    lo, hi = p.min(axis=0), p.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def flip_matrix(size: int) -> np.ndarray:
    """3x3 mirror of a size x size crop: x -> size - 1 - x (pixel centres at integers)."""
    return np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Geometry:
    """One sample's affine: image -> crop matrix and whether the points are to be re-ordered."""

    crop: FaceCrop  # its matrix already includes the mirror when flipped
    flipped: bool

    def points(self, points: np.ndarray, scheme: Scheme) -> np.ndarray:
        """Image points (K, 2) -> crop points (K, 2), re-ordered after a mirror."""
        q = self.crop.to_crop(points)
        if self.flipped:
            q = q[list(scheme.flip)]
        return q


class SampleTransform:
    """Image + points (+ box) -> crop (S, S, C) uint8 and crop points (K, 2) float32."""

    def __init__(self, scheme, policy: CropPolicy = CropPolicy(),
                 augment: Optional[Augment] = None, channels: str = "BGR") -> None:
        self.scheme = get_scheme(scheme)
        self.policy = policy
        self.augment = augment or Augment.none()
        if channels not in ("BGR", "RGB", "GRAY"):
            raise ValueError(f"channels must be BGR, RGB or GRAY, got {channels!r}")
        self.channels = channels

    def geometry(self, points: np.ndarray, rng: Optional[np.random.Generator] = None,
                 ) -> Geometry:
        """The affine for one sample: crop of the points' box with jitter, then a mirror."""
        a = self.augment
        box = points_box(points)
        jitter = None
        flipped = False
        if rng is not None and a.active:
            jitter = Jitter.sample(rng, scale=a.scale, shift=a.shift, angle=a.rotate)
            flipped = bool(rng.random() < a.flip)
        g = face_crop(box, self.policy, jitter)
        if flipped:
            m = (flip_matrix(self.policy.size) @ np.vstack([g.matrix, [0, 0, 1]]))[:2]
            g = replace(g, matrix=m)
        return Geometry(g, flipped)

    def __call__(self, image: np.ndarray, points: np.ndarray,
                 rng: Optional[np.random.Generator] = None,
                 ) -> tuple[np.ndarray, np.ndarray, Geometry]:
        """Crop and augment; ``rng`` None is the deterministic evaluation transform."""
        image = to_channels(image, self.channels)
        geo = self.geometry(points, rng)
        crop = geo.crop.warp(image)
        if crop.ndim == 2:
            crop = crop[:, :, None]
        pts = geo.points(points, self.scheme).astype(np.float32)
        if rng is not None:
            crop = photometric(crop, rng, self.augment)
        return crop, pts, geo


def to_channels(image: np.ndarray, channels: str) -> np.ndarray:
    """A decoded (H, W[, C]) BGR/gray/BGRA image as (H, W, C) in ``channels`` (BGR, RGB, GRAY)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if channels == "GRAY" and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif channels != "GRAY" and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if channels == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


@dataclass(frozen=True)
class Photometric:
    """One sample's photometric draw (all in crop units; see :func:`apply_photometric`)."""

    bright: float = 0.0  # added 64 * bright
    contrast: float = 0.0  # (x - mean) * (1 + contrast)
    saturation: float = 0.0  # gray + (x - gray) * (1 + saturation)
    blur_sigma: float = 0.0  # 0: no blur
    occlusion: Optional[tuple[float, float, float, float]] = None  # w, h, x, y as fractions
    occlusion_color: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def draw(cls, rng: np.random.Generator, a: Augment) -> "Photometric":
        """Draw one sample's parameters; the number of draws never depends on the image."""
        c_bright, c_contrast, c_sat = rng.uniform(-1, 1, 3) * a.color
        do_blur, blur_sigma = rng.random() < a.blur, rng.uniform(0.5, 1.5)
        do_occ = rng.random() < a.occlusion
        occ_wh = rng.uniform(0.10, 0.35, 2)
        occ_xy = rng.uniform(0, 1, 2)
        occ_col = rng.uniform(0, 255, 3)
        return cls(float(c_bright), float(c_contrast), float(c_sat),
                   float(blur_sigma) if do_blur else 0.0,
                   (*map(float, occ_wh), *map(float, occ_xy)) if do_occ else None,
                   tuple(map(float, occ_col)))


def occlusion_rect(occ: tuple[float, float, float, float], s: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) crop pixels of an occluder drawn as fractions (w, h, x, y) of side s."""
    w, h = int(occ[0] * s), int(occ[1] * s)
    return int(occ[2] * (s - w)), int(occ[3] * (s - h)), w, h


def apply_photometric(crop: np.ndarray, p: Photometric) -> np.ndarray:
    """Colour (saturation, contrast, brightness), blur, occlusion on a uint8 (S, S, C) crop."""
    out = crop.astype(np.float32)
    if out.shape[2] == 3 and p.saturation:
        gray = out.mean(axis=2, keepdims=True)
        out = gray + (out - gray) * (1 + p.saturation)
    if p.contrast or p.bright:
        mean = out.mean()
        out = (out - mean) * (1 + p.contrast) + mean + 64.0 * p.bright
    if p.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), p.blur_sigma)
        if out.ndim == 2:
            out = out[:, :, None]
    if p.occlusion is not None:
        x0, y0, w, h = occlusion_rect(p.occlusion, crop.shape[0])
        out[y0:y0 + h, x0:x0 + w] = p.occlusion_color[: out.shape[2]]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def photometric(crop: np.ndarray, rng: np.random.Generator, a: Augment) -> np.ndarray:
    """Colour jitter, blur and occlusion on a uint8 (S, S, C) crop, drawn from rng."""
    return apply_photometric(crop, Photometric.draw(rng, a))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a pure function of (seed, epoch, index)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def default_crop_scale(n_points: int) -> float:
    """Crop side / max(box) for the landmarks' box: 1.25 for 68/77, wider for 5 points."""
    return 2.2 if n_points <= 5 else 1.25


def angle_of_eyes(points: np.ndarray, scheme: Scheme) -> float:
    """Eye-line angle in radians, clockwise on screen (y down), from the pupils' centres."""
    left = np.mean(points[list(scheme.pupil_groups[0])], axis=0)
    right = np.mean(points[list(scheme.pupil_groups[1])], axis=0)
    d = right - left
    return math.atan2(float(d[1]), float(d[0]))
