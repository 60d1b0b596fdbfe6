"""Frames for ``detect``: video files and live sources (a camera index or any OpenCV capture
string), numbered and timed for the tracker (:func:`open_frames`).

A camera or network stream can open and then give no frame for ever (a camera in use, a stalled
stream), and ``VideoCapture.read`` then blocks. :func:`live_frames` reads in a helper thread and
waits for each frame at most ``timeout`` seconds, so the command always ends: on a timeout, at
the end of the stream, after ``max_frames``, or on Ctrl-C in the main thread.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from landmarknet.detect import ImageError
from landmarknet.detect.images import (DEFAULT_MAX_PIXELS, VideoInfo, normalise_image,
                                       open_video, video_frames)

#: Seconds ``detect --camera`` waits for a frame before it gives up on the source.
DEFAULT_FRAME_TIMEOUT = 10.0


class SourceTimeout(ImageError):
    """A live source that gave no frame in time."""


def camera_source(text: str) -> Union[int, str]:
    """``--camera`` text -> what ``cv2.VideoCapture`` takes: a device index or the string."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def open_live(source: Union[int, str]) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open a camera or stream; ImageError when OpenCV cannot."""
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        kind = f"camera {source}" if isinstance(source, int) else f"capture source {source!r}"
        raise ImageError(f"{kind}: cannot be opened (no such device, or a URL or pipeline "
                         "OpenCV cannot read)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    return cap, VideoInfo(fps if fps and np.isfinite(fps) and 0 < fps < 1000 else 0.0,
                          int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                          int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), 0)


def live_frames(cap: cv2.VideoCapture, timeout: float = DEFAULT_FRAME_TIMEOUT,
                max_frames: Optional[int] = None) -> Iterator[tuple[float, np.ndarray]]:
    """``(seconds since the first frame, BGR frame)`` from a live capture until it ends.

    Raises :class:`SourceTimeout` when no frame comes within ``timeout`` seconds. The reader
    thread owns the capture and releases it when it stops: at the end of the source, or after
    the generator is closed (end, error, Ctrl-C, the caller stopping) and its last read returns.
    """
    frames: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                ok, frame = cap.read()
                item = (time.monotonic(), frame) if ok else None
                while not stop.is_set():
                    try:
                        frames.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item is None:
                    return
        finally:
            cap.release()

    thread = threading.Thread(target=reader, name="landmarknet-camera", daemon=True)
    thread.start()
    t0, n = None, 0
    try:
        while max_frames is None or n < max_frames:
            try:
                item = frames.get(timeout=timeout)
            except queue.Empty:
                raise SourceTimeout(f"no frame from the source for {timeout:g} s; stopped "
                                    "(--frame-timeout to wait longer)") from None
            if item is None:
                return
            t, frame = item
            t0 = t if t0 is None else t0
            n += 1
            yield t - t0, normalise_image(frame)
    finally:
        stop.set()
        thread.join(timeout=1.0)  # a read that never returns: the daemon thread ends with us


#: What :func:`open_frames` gives: ``(index, t seconds, BGR frame)`` in order.
Frames = Iterator[tuple[int, float, np.ndarray]]


def open_frames(source: Union[str, os.PathLike], live: bool = False, *,
                max_frames: Optional[int] = None,
                frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
                max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> tuple[Frames, float]:
    """The frames of a video file (``live=False``) or of a live source (a camera index or a
    capture string) as a closable generator, and the source's frame rate (0 when a live
    source does not say). ImageError when the source cannot be opened."""
    if live:
        cap, info = open_live(camera_source(str(source)))
        return _numbered_live(live_frames(cap, frame_timeout, max_frames)), info.fps
    cap, info = open_video(Path(source), max_pixels)
    return _numbered_file(cap, info.fps, max_frames), info.fps


def _numbered_live(live: Iterator[tuple[float, np.ndarray]]) -> Frames:
    """A live source's frames, numbered; closing this stops the source's reader."""
    try:
        for i, (t, frame) in enumerate(live):
            yield i, t, frame
    finally:
        live.close()


def _numbered_file(cap: cv2.VideoCapture, fps: float, max_frames: Optional[int]) -> Frames:
    """A video file's frames, numbered and timed at ``fps``, at most ``max_frames``."""
    try:
        for i, frame in enumerate(video_frames(cap)):
            if max_frames is not None and i >= max_frames:
                return
            yield i, i / fps, frame
    finally:
        cap.release()


def moving_face_frames(picture: np.ndarray, n: int, size: tuple[int, int] = (640, 480),
                       step: float = 3.0, scale: float = 1.0) -> Iterator[tuple[np.ndarray,
                                                                                np.ndarray]]:
    """``n`` frames of ``picture`` (BGR) sliding on a ``size`` (w, h) canvas, and each frame's
    2x3 picture -> frame affine; for benchmarks and tests (a face that moves like in a video).

    The picture is scaled by ``scale``, centred, and moves ``step`` pixels a frame to the right
    and half that down, turning back every 20 frames (a zig-zag, so it stays in view).
    """
    w, h = size
    ph, pw = picture.shape[:2]
    for i in range(n):
        leg, k = divmod(i, 20)
        dx = step * (k if leg % 2 == 0 else 20 - k) - step * 10
        m = np.array([[scale, 0.0, (w - 1) / 2 - scale * (pw - 1) / 2 + dx],
                      [0.0, scale, (h - 1) / 2 - scale * (ph - 1) / 2 + dx / 2]])
        frame = cv2.warpAffine(picture, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        yield frame, m


def write_video(path, frames, fps: float = 30.0) -> int:
    """Write BGR frames as an mp4v video; the number written (ImageError when no encoder)."""
    writer = None
    n = 0
    try:
        for frame in frames:
            if writer is None:
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    raise ImageError(f"{path}: OpenCV has no mp4v encoder here")
            writer.write(frame)
            n += 1
    finally:
        if writer is not None:
            writer.release()
    return n
