"""What a detect run writes for each input, in one output folder.

An image gives ``NAME.json`` (one object) and ``NAME_overlay.png`` (and ``NAME_heatmaps.png``
when asked); a video gives ``NAME.json`` (a list, one object per frame),
``NAME_annotated.mp4`` and at most one heatmap figure. NAME is the input's stem, made unique
within the run by :class:`OutputNames`. Writers raise OSError; the caller decides what to say.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import cv2
import numpy as np

from landmarknet.detect.draw import heatmap_figure, overlay, write_image
from landmarknet.detect.pipeline import FaceResult, ImageResult
from landmarknet.jsontext import json_text

PathLike = Union[str, os.PathLike]


class OutputNames:
    """File stems in one output folder, unique within a run (a second ``a.png`` is ``a-1``)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def name_for(self, path: PathLike) -> str:
        """A stem for this input not given out before in this run."""
        path = Path(path)
        stem = path.stem or path.name or "input"
        name, i = stem, 1
        while name in self.used:
            name = f"{stem}-{i}"
            i += 1
        self.used.add(name)
        return name


def result_json(path: PathLike, faces: Sequence[FaceResult] = (), error: Optional[str] = None,
                frame: Optional[int] = None) -> dict:
    """The JSON object of one image or video frame: input, [frame], faces, error."""
    obj: dict = {"input": str(path)}
    if frame is not None:
        obj["frame"] = frame
    obj["faces"] = [f.to_json() for f in faces]
    obj["error"] = error
    return obj


def json_file_text(obj: Union[dict, list[dict]]) -> str:
    """NAME.json's text: an object on one line; a video's list with one frame per line."""
    text = (json_text(obj) if isinstance(obj, dict)
            else "[\n" + ",\n".join(json_text(o) for o in obj) + "\n]")
    return text + "\n"


def write_json(path: PathLike, obj: Union[dict, list[dict]]) -> None:
    """Write NAME.json (OSError when it cannot be written)."""
    Path(path).write_text(json_file_text(obj), encoding="utf-8")


def write_pictures(out_dir: Path, name: str, image: np.ndarray, faces: Sequence[FaceResult], *,
                   draw_overlay: bool = True, indices: bool = False,
                   heatmaps_title: Optional[str] = None) -> None:
    """NAME_overlay.png (unless ``draw_overlay`` is False) and, given a title, the heatmap
    figure NAME_heatmaps.png; OSError when one cannot be written."""
    if draw_overlay:
        write_image(out_dir / f"{name}_overlay.png", overlay(image, faces, indices))
    if heatmaps_title is not None:
        heatmap_figure(out_dir / f"{name}_heatmaps.png", faces, heatmaps_title)


def open_video_writer(path: PathLike, width: int, height: int,
                      fps: float) -> Optional[cv2.VideoWriter]:
    """An mp4v writer for ``path``, or None when OpenCV has no such encoder here."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    return writer if writer.isOpened() else None


class VideoOutput:
    """Where one video's results go: per-frame JSON objects (kept, and handed to ``on_frame``
    as they come), the annotated video and the first frame's heatmap figure."""

    def __init__(self, out_dir: Path, name: str, source: PathLike, fps: float, *,
                 draw_overlay: bool = True, indices: bool = False,
                 heatmaps_model: Optional[str] = None,
                 on_frame: Optional[Callable[[dict], None]] = None,
                 warn: Optional[Callable[[str], None]] = None) -> None:
        """``fps`` 0 (a live source that does not say) writes at 30; ``heatmaps_model``: the
        model's name when a heatmap figure is wanted; ``warn`` hears what could not be done."""
        self.out_dir, self.name, self.source = Path(out_dir), name, Path(source)
        self.fps = fps or 30.0
        self.draw_overlay, self.indices, self.heatmaps_model = draw_overlay, indices, heatmaps_model
        self.on_frame, self.warn = on_frame, warn
        self.writer: Union[cv2.VideoWriter, None, bool] = None  # False: could not be opened
        self.frames_json: list[dict] = []
        self.n_faces = 0
        self.seconds = 0.0
        self.heatmaps_done = False

    def add(self, index: int, frame: np.ndarray, result: ImageResult) -> None:
        """One frame's result: recorded, handed on, drawn."""
        obj = result_json(self.source, result.faces, frame=index)
        self.frames_json.append(obj)
        if self.on_frame is not None:
            self.on_frame(obj)
        self.n_faces += len(result.faces)
        self.seconds += result.detect_seconds + result.landmark_seconds
        if self.draw_overlay:
            self._write_frame(frame, result.faces)
        if (self.heatmaps_model is not None and not self.heatmaps_done
                and any(f.heatmaps is not None for f in result.faces)):
            self.heatmaps_done = heatmap_figure(
                self.out_dir / f"{self.name}_heatmaps.png", result.faces,
                f"{self.source.name} frame {index}: {self.heatmaps_model}")

    def _write_frame(self, frame: np.ndarray, faces: Sequence[FaceResult]) -> None:
        """The frame with its overlay into the annotated video (opened at the first frame)."""
        if self.writer is None:
            path = self.out_dir / f"{self.name}_annotated.mp4"
            self.writer = open_video_writer(path, frame.shape[1], frame.shape[0],
                                            self.fps) or False
            if not self.writer and self.warn is not None:
                self.warn(f"cannot write {path} (no mp4v encoder?); JSON only")
        if self.writer:
            self.writer.write(overlay(frame, faces, self.indices))

    def close(self) -> None:
        """Finish the annotated video."""
        if self.writer:
            self.writer.release()
