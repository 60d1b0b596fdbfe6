"""What a detect run reads: inputs (files, folders, a live source) expanded into items.

``expand_inputs(["photos/", "clip.mp4"], camera="0")`` opens each folder (its images and
videos, sorted by name), marks each path as an image or a video by its suffix, and keeps a
path that cannot be used as an ``error`` item with the reason, in its place, so a run can
report it and go on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from landmarknet.detect.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, folder_entries, is_video

#: The kinds of :class:`InputItem`.
KINDS = ("image", "video", "camera", "error")


@dataclass
class InputItem:
    """One input of a run: its path, its kind (``KINDS``) and, for an error, why."""

    path: Path
    kind: str
    error: Optional[str] = None
    #: A live source's capture string as given (a Path would fold a URL's "//").
    source: Optional[str] = None


def expand_inputs(inputs: Iterable[str], camera: Optional[str] = None) -> list[InputItem]:
    """Paths -> items, folders opened (their images and videos, sorted); ``camera`` (a
    device index or an OpenCV capture string) comes last as a ``camera`` item."""
    items: list[InputItem] = []
    for text in inputs:
        items += _expand_one(Path(text))
    if camera is not None:
        items.append(InputItem(Path(camera), "camera", source=camera))
    return items


def _expand_one(path: Path) -> list[InputItem]:
    """One path -> its items (a folder's entries, or the file itself, or an error)."""
    if path.is_dir():
        return _folder_items(path)
    if not path.exists():
        return [InputItem(path, "error", f"{path}: no such file or folder")]
    return [_file_item(path)]


def _folder_items(folder: Path) -> list[InputItem]:
    """A folder's images and videos; an error item when it cannot be listed or has none."""
    try:
        entries = folder_entries(folder)
    except OSError as exc:
        return [InputItem(folder, "error", f"{folder}: cannot list the folder ({exc.strerror})")]
    if not entries:
        return [InputItem(folder, "error", f"{folder}: folder has no images or videos "
                          f"(looked for {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")]
    return [_file_item(e) for e in entries]


def _file_item(path: Path) -> InputItem:
    """A file as an image or a video item, by its suffix."""
    return InputItem(path, "video" if is_video(path) else "image")
