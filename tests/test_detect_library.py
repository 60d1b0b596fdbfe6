"""The detect run's library pieces that the CLI calls (landmarknet.detect.inputs, outputs,
model_choice), checked on their own: what a Python user gets without the CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from landmarknet.detect.inputs import expand_inputs
from landmarknet.detect.model_choice import resolve_model
from landmarknet.detect.outputs import OutputNames, json_file_text, result_json
from landmarknet.infer import ModelError
from landmarknet.models import MODELS_DIR


def test_inputs_expand_folders_in_order_and_keep_bad_paths_in_place(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        cv2.imwrite(str(folder / name), np.zeros((8, 8, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "clip.mp4").write_bytes(b"")  # a video by its suffix; opening it is the run's job
    empty = tmp_path / "empty"
    empty.mkdir()
    items = expand_inputs([str(folder), str(tmp_path / "missing.jpg"), str(empty)],
                          camera="rtsp://host:554/stream")
    assert [(i.path.name, i.kind) for i in items] == [
        ("a.jpg", "image"), ("b.png", "image"), ("clip.mp4", "video"),
        ("missing.jpg", "error"), ("empty", "error"), ("stream", "camera")]
    assert "no such file or folder" in items[3].error
    assert "has no images or videos" in items[4].error
    assert items[5].source == "rtsp://host:554/stream"  # the capture string exactly as given


def test_output_names_are_unique_within_a_run():
    names = OutputNames()
    assert [names.name_for(p) for p in ("x/a.png", "y/a.jpg", "a", "z/a.png", ".hidden")] == \
        ["a", "a-1", "a-2", "a-3", ".hidden"]


def test_json_of_an_image_and_of_a_video():
    one = result_json("a.png", error="unreadable")
    assert one == {"input": "a.png", "faces": [], "error": "unreadable"}
    assert json.loads(json_file_text(one)) == one
    frames = [result_json("v.mp4", frame=i) for i in range(3)]
    text = json_file_text(frames)
    assert json.loads(text) == frames
    assert len(text.strip().splitlines()) == 3 + 2  # one frame per line between the brackets


def test_model_choice_none_default_and_named(monkeypatch):
    monkeypatch.delenv("LANDMARKNET_MODELS", raising=False)
    assert resolve_model("None") == (None, "no landmark model (--model none)")
    model, note = resolve_model(None, default="light3w_5")
    assert model.name == "light3w_5" and note.endswith(f"({MODELS_DIR / 'light3w_5'})")
    model, _ = resolve_model(None)  # the bundle marked "default": true
    assert model.name == "heatmap4_68_bn"
    with pytest.raises(ModelError, match="heatmap4_69"):
        resolve_model("heatmap4_69")
