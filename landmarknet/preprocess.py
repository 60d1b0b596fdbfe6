"""Pictures -> input blobs, as ``cv2.dnn.blobFromImage`` makes them, and detections back.

People moving a Caffe net off OpenCV's removed Caffe importer have their pre-processing written
as ``cv2.dnn.blobFromImage(image, scalefactor, size, mean, swapRB, crop)``. This module gives
the same numbers (bit for bit against OpenCV 4.x: tests/test_preprocess.py) without a cv2.dnn
that may no longer read the net, and the inverse mapping that puts a detector's normalised
boxes back on the original picture, which blobFromImage leaves to the caller.

What OpenCV does, step by step (modules/dnn/src/dnn_utils.cpp, 4.x):

1. resize to ``size`` (W, H) with bilinear interpolation; with ``crop``, first scale by
   ``max(W / w, H / h)`` keeping the aspect ratio, then cut the centre W x H window;
2. convert to float32, subtract ``mean`` (one value per channel of the *output* order: with
   ``swapRB`` the mean is swapped together with the channels), multiply by ``scalefactor``;
3. HWC -> NCHW, reversing the first three channels with ``swapRB``.

One deliberate difference: OpenCV's Python binding turns a single number into the Scalar
``(v, 0, 0, 0)``, so ``blobFromImage(img, 0.007843, (300, 300), 127.5)`` (MobileNet-SSD's
sample) subtracts 127.5 from the first channel only. Here one number is every channel's mean,
which is what such code means; pass three numbers (``(127.5, 0, 0)``) to get OpenCV's exact
numbers for that call.

numpy and OpenCV's core only (no torch): usable before a net is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from landmarknet.errors import LandmarknetError

__all__ = ["ImageGeometry", "blob_from_image", "blob_from_images", "boxes_to_image"]

Number = Union[int, float]


@dataclass(frozen=True)
class ImageGeometry:
    """How one picture became the blob: enough to map blob coordinates back onto it."""

    width: int        # the picture's own size, in pixels
    height: int
    factor_x: float   # blob pixels per picture pixel
    factor_y: float
    offset_x: float   # blob pixels cut away on the left / top (crop)
    offset_y: float
    blob_width: int
    blob_height: int


def _channel_values(value: Number | Sequence[Number], channels: int, what: str) -> np.ndarray:
    """One value per channel from a number (every channel) or a sequence of 1, 3 or 4."""
    values = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if values.size == 1:
        values = np.repeat(values, channels)
    if values.size not in (channels, 4) or not np.all(np.isfinite(values)):
        raise LandmarknetError(f"{what} must be one number or one per channel ({channels}), "
                               f"got {[float(v) for v in np.atleast_1d(value)]}")
    return values[:channels]


def _resize(image: np.ndarray, size: tuple[int, int] | None,
            crop: bool) -> tuple[np.ndarray, ImageGeometry]:
    import cv2

    h, w = image.shape[:2]
    if size is None or tuple(size) == (w, h):
        return image, ImageGeometry(w, h, 1.0, 1.0, 0.0, 0.0, w, h)
    out_w, out_h = (int(v) for v in size)
    if out_w <= 0 or out_h <= 0:
        raise LandmarknetError(f"size must be two positive numbers (width, height), got {size}")
    if not crop:
        resized = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        return resized, ImageGeometry(w, h, out_w / w, out_h / h, 0.0, 0.0, out_w, out_h)
    # OpenCV: one factor for both axes, so that the smaller side fits (computed in float32,
    # which decides the resized size at some ratios); then the centre window.
    factor = float(max(np.float32(out_w) / np.float32(w), np.float32(out_h) / np.float32(h)))
    scaled = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    x0 = (scaled.shape[1] - out_w) // 2
    y0 = (scaled.shape[0] - out_h) // 2
    return (scaled[y0:y0 + out_h, x0:x0 + out_w],
            ImageGeometry(w, h, factor, factor, float(x0), float(y0), out_w, out_h))


def blob_from_images(images: Sequence[np.ndarray], *, scale: float = 1.0,
                     size: tuple[int, int] | None = None,
                     mean: Number | Sequence[Number] = 0.0, swap_rb: bool = False,
                     crop: bool = False) -> tuple[np.ndarray, list[ImageGeometry]]:
    """A float32 (N, C, H, W) blob from pictures (H x W or H x W x C arrays, 8-bit or float,
    as ``cv2.imread`` gives them), and each picture's geometry for :func:`boxes_to_image`.

    ``size`` is (width, height), as in OpenCV; None keeps each picture's own size (they must
    then all be equal). ``mean`` is in the blob's channel order (after ``swap_rb``).
    """
    if len(images) == 0:
        raise LandmarknetError("no images given")
    planes, geometries = [], []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
            raise LandmarknetError(f"image {i}: expected H x W, H x W x 1, 3 or 4 pixels, "
                                   f"got shape {image.shape}")
        channels = image.shape[2]
        resized, geometry = _resize(image, size, crop)
        if resized.ndim == 2:  # cv2.resize drops a single channel's axis
            resized = resized[:, :, None]
        pixels = resized.astype(np.float32)
        means = _channel_values(mean, channels, "mean")
        if swap_rb and channels >= 3:
            means[[0, 2]] = means[[2, 0]]  # OpenCV swaps the mean with the channels
        # float32 arithmetic, as OpenCV's Mat -= Scalar and Mat *= double do on a CV_32F Mat.
        pixels -= means.astype(np.float32)
        pixels *= np.float32(scale)
        if swap_rb and channels >= 3:
            pixels = pixels[:, :, [2, 1, 0, *range(3, channels)]]
        planes.append(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        geometries.append(geometry)
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        raise LandmarknetError(f"the images give blobs of different shapes {sorted(shapes)}; "
                               "give a size")
    return np.stack(planes), geometries


def blob_from_image(image: np.ndarray, *, scale: float = 1.0,
                    size: tuple[int, int] | None = None,
                    mean: Number | Sequence[Number] = 0.0, swap_rb: bool = False,
                    crop: bool = False) -> np.ndarray:
    """``cv2.dnn.blobFromImage(image, scale, size, mean, swap_rb, crop)``: a (1, C, H, W)
    float32 blob (see the module's notes for a single-number mean)."""
    blob, _ = blob_from_images([image], scale=scale, size=size, mean=mean, swap_rb=swap_rb,
                               crop=crop)
    return blob


def boxes_to_image(rows: np.ndarray, geometries: Sequence[ImageGeometry], *,
                   normalized: bool = True) -> np.ndarray:
    """Detection rows [image_id, label, score, x1, y1, x2, y2] (SSD's DetectionOutput and the
    YOLO heads) with their corners moved from the blob onto each original picture, in pixels.

    ``normalized``: corners are fractions of the blob (DetectionOutput's default) rather than
    blob pixels (``normalized_bbox: false``). Rows of image_id -1 (no detection) are dropped.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    rows = rows[rows[:, 0] >= 0].copy()
    for i, row in enumerate(rows):
        index = int(row[0])
        if index >= len(geometries):
            raise LandmarknetError(f"detection row {i} names image {index}, but only "
                                   f"{len(geometries)} image(s) were given")
        g = geometries[index]
        sx, sy = (g.blob_width, g.blob_height) if normalized else (1.0, 1.0)
        row[[3, 5]] = (row[[3, 5]] * sx + g.offset_x) / g.factor_x
        row[[4, 6]] = (row[[4, 6]] * sy + g.offset_y) / g.factor_y
    return rows
