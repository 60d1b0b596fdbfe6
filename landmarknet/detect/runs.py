"""The per-input loops of a detect run: images through the batched pipeline, a video through
the tracker.

``detect_images`` reads image files and runs them through a
:class:`~landmarknet.detect.pipeline.Landmarker` in batches, keeping a file that cannot be read
in its place with the reason. ``process_video`` runs a video's frames through a
:class:`~landmarknet.detect.tracker.VideoTracker` into a
:class:`~landmarknet.detect.outputs.VideoOutput`; a decoding error, a stalled live source or
Ctrl-C ends the video and is reported, and what was done so far is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from landmarknet.detect import ImageError
from landmarknet.detect.images import DEFAULT_MAX_PIXELS, read_image
from landmarknet.detect.outputs import VideoOutput
from landmarknet.detect.pipeline import ImageResult, Landmarker
from landmarknet.detect.tracker import VideoTracker
from landmarknet.detect.video import Frames


@dataclass
class ImageOutcome:
    """One image file's outcome: the picture and its result, or the reason it was not read."""

    index: int
    path: Path
    image: Optional[np.ndarray]
    result: Optional[ImageResult]
    notes: list[str] = field(default_factory=list)  # what reading changed (bit depth, ...)
    error: Optional[str] = None


def detect_images(landmarker: Landmarker, paths: Sequence[Path],
                  max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Iterator[ImageOutcome]:
    """Each path's outcome, in order; the files are read one at a time as the batches fill."""
    notes: dict[int, list[str]] = {}
    errors: dict[int, str] = {}

    def stream():
        for i, path in enumerate(paths):
            try:
                loaded = read_image(path, max_pixels)
            except ImageError as exc:
                errors[i] = str(exc)
                yield i, None  # keeps the error in its place in the output order
                continue
            notes[i] = loaded.notes
            yield i, loaded.image

    for i, image, result in landmarker.process(stream()):
        if image is None:
            yield ImageOutcome(i, Path(paths[i]), None, None, error=errors[i])
        else:
            yield ImageOutcome(i, Path(paths[i]), image, result, notes[i])


@dataclass
class VideoEnd:
    """How a video ended: ``stopped`` says why when it ended early; ``interrupted`` by Ctrl-C."""

    stopped: Optional[str] = None
    interrupted: bool = False


def process_video(tracker: VideoTracker, frames: Frames, output: VideoOutput) -> VideoEnd:
    """Every frame through the tracker into ``output``; the frames and the output are closed
    at the end, however it comes."""
    end = VideoEnd()
    try:
        for i, frame, result in tracker.process(frames):
            output.add(i, frame, result)
    except cv2.error as exc:
        end.stopped = f"decoding stopped at frame {len(output.frames_json)} ({exc})"
    except ImageError as exc:  # a live source that stopped giving frames
        end.stopped = str(exc)
    except KeyboardInterrupt:  # a camera's normal end; a file's results so far are kept too
        end.stopped, end.interrupted = f"interrupted after {len(output.frames_json)} frames", True
    finally:
        frames.close()
        output.close()
    return end
