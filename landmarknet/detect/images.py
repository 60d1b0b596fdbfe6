"""Reading what users give ``detect``: images of any common depth and layout, folders, videos.

Every image comes out as BGR ``uint8`` (H, W, 3), whatever it was on disk, and the conversion is
reported so the user knows what happened:

* grayscale -> replicated to three channels;
* 16-bit -> divided by 257 (the full 16-bit range onto 8 bits); float -> [0, 1] scaled to 255;
* with alpha (RGBA, gray + alpha) -> composited over white, as a viewer shows it;
* JPEG EXIF orientation is applied (OpenCV's IMREAD_COLOR does it).

Unreadable, empty and missing files raise :class:`ImageError` with a message that says which.
So do images larger than ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`): their size is
read from the file's header before anything is decoded (a 100-byte PNG can claim to be 50,000
pixels square), and checked again after decoding for formats whose header we cannot read.
OpenCV's own limit (2^30 pixels, ``OPENCV_IO_MAX_IMAGE_PIXELS``) stays behind it.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from landmarknet.detect import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif",
                  ".tiff", ".webp", ".jp2", ".exr", ".hdr", ".sr", ".ras")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".3gp", ".ogv")

#: The largest image ``detect`` and ``evaluate`` decode by default (--max-pixels): 100
#: megapixels is above any camera's face picture (a 108 MP phone sensor aside) and its BGR copy
#: is 300 MB; a decompression bomb claims thousands of times more.
DEFAULT_MAX_PIXELS = 100_000_000


def header_pixels(path: str | os.PathLike) -> tuple[int, str] | None:
    """(pixels, 'W x H') read from the image file's header without decoding it; None when
    Pillow does not know the format's header (the decoded size is checked instead)."""
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with matplotlib; without it the decoded size counts
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: ours follows
            with Image.open(path) as im:
                w, h = int(im.size[0]), int(im.size[1])
                return w * h, f"{w} x {h}"
    except Image.DecompressionBombError as exc:  # Pillow's own refusal names only the count
        m = re.search(r"\((\d+) pixels\)", str(exc))
        return (int(m.group(1)), "the header says") if m else None
    except Exception:  # noqa: BLE001 - any header Pillow cannot read: decode and check after
        return None


def check_pixels(path: str | os.PathLike, pixels: int, size: str,
                 max_pixels: int | None) -> None:
    """ImageError when an image of ``pixels`` exceeds max_pixels (None or 0: no limit)."""
    if max_pixels and pixels > max_pixels:
        raise ImageError(f"{path}: {size}: {pixels:,} pixels, more than --max-pixels "
                         f"{max_pixels:,}; not decoded (raise --max-pixels to read it)")


@dataclass
class LoadedImage:
    """A decoded image as BGR uint8 plus what was done to get there."""

    image: np.ndarray
    notes: list[str] = field(default_factory=list)


def _to_uint8(img: np.ndarray, notes: list[str]) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        notes.append("16-bit image scaled to 8 bits")
        return (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if img.dtype == np.int8:
        return (img.astype(np.int16) + 128).astype(np.uint8)
    if img.dtype in (np.float32, np.float64, np.float16):
        notes.append("floating-point image: values in [0, 1] scaled to 8 bits")
        return (np.clip(np.nan_to_num(img.astype(np.float32)), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.dtype in (np.int16, np.int32):
        notes.append(f"{img.dtype} image: range stretched to 8 bits")
        lo, hi = float(img.min()), float(img.max())
        return ((img.astype(np.float64) - lo) / max(hi - lo, 1) * 255 + 0.5).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {img.dtype}")


def normalise_image(img: np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """Any decoded array (gray, BGR, BGRA; 8/16-bit, float) -> BGR uint8 (H, W, 3)."""
    notes = [] if notes is None else notes
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"not an image array: shape {img.shape}")
    img = _to_uint8(img, notes)
    c = img.shape[2]
    if c == 1:
        notes.append("grayscale image replicated to 3 channels")
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if c == 2:  # gray + alpha
        notes.append("gray + alpha image composited over white")
        gray, alpha = img[:, :, :1].astype(np.float32), img[:, :, 1:2].astype(np.float32) / 255
        out = gray * alpha + 255 * (1 - alpha)
        return np.ascontiguousarray(np.repeat(out + 0.5, 3, axis=2).astype(np.uint8))
    if c == 4:
        notes.append("image with alpha composited over white")
        alpha = img[:, :, 3:4].astype(np.float32) / 255
        out = img[:, :, :3].astype(np.float32) * alpha + 255 * (1 - alpha)
        return np.ascontiguousarray((out + 0.5).astype(np.uint8))
    if c == 3:
        return np.ascontiguousarray(img)
    raise ImageError(f"unsupported number of channels: {c}")


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               ) -> LoadedImage:
    """Read an image file as BGR uint8; raise ImageError (missing, empty, undecodable, or
    larger than max_pixels: checked from the header before decoding)."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    if not path.is_file():  # reading a FIFO or a terminal would wait for a writer forever
        raise ImageError(f"{path}: not a regular file (a FIFO, socket or device); give an "
                         "image file")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    header = header_pixels(path)
    if header is not None:
        check_pixels(path, header[0], header[1], max_pixels)
    # JPEG is always 8-bit without alpha: IMREAD_COLOR also applies its EXIF orientation.
    flags = cv2.IMREAD_COLOR if data[:2].tobytes() == b"\xff\xd8" else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise ImageError(f"{path}: cannot be decoded as an image ({str(exc).strip()})") from None
    if img is None:
        raise ImageError(f"{path}: not a decodable image ({data.size} bytes; is it truncated or "
                         "another kind of file?)")
    check_pixels(path, img.shape[0] * img.shape[1], f"{img.shape[1]} x {img.shape[0]}",
                 max_pixels)
    notes: list[str] = []
    return LoadedImage(normalise_image(img, notes), notes)


def is_video(path: str | os.PathLike) -> bool:
    """True for the file suffixes ``detect`` treats as video."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def folder_entries(folder: str | os.PathLike) -> list[Path]:
    """The images and videos directly inside a folder, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)


@dataclass
class VideoInfo:
    """What a video says of itself."""

    fps: float
    width: int
    height: int
    frames: int  # as the container reports it; may be 0 or approximate


def open_video(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               ) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open a video for reading; ImageError when missing, empty, not decodable, or with
    frames larger than max_pixels."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file (a folder, FIFO, socket or device)")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ImageError(f"{path}: cannot be opened as a video")
    fps = cap.get(cv2.CAP_PROP_FPS)
    info = VideoInfo(fps if fps and np.isfinite(fps) and fps > 0 else 25.0,
                     int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0)))
    try:
        check_pixels(path, info.width * info.height, f"{info.width} x {info.height} frames",
                     max_pixels)
    except ImageError:
        cap.release()
        raise
    return cap, info


def video_frames(cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The frames of an open capture, in order, as BGR uint8; releases it at the end."""
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield normalise_image(frame)
    finally:
        cap.release()
