"""``landmarknet detect`` end to end: the JSON form, bad inputs, models, folders and video."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from landmarknet.cli import detect as detect_cli
from landmarknet.paths import REPO_ROOT
from synthetic_bundles import heatmap_bundle, regression_bundle

ASTRONAUT = REPO_ROOT / "samples" / "astronaut.png"
# The sample's face as MTCNN finds it (test_mtcnn checks it against points measured by eye).
FACE_CENTRE = np.array([224.0, 118.0])
# Most tests use the sample at half size (256x256): four times less detector work.
HALF_CENTRE = (FACE_CENTRE + 0.5) / 2 - 0.5


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    detect_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    rc = detect_cli.run(_args(*argv, "--json"))
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()], err


def _check_form(obj: dict, video: bool = False) -> None:
    """The issue's exact JSON form."""
    keys = ["input", "frame", "faces", "error"] if video else ["input", "faces", "error"]
    assert list(obj) == keys
    assert isinstance(obj["input"], str) and isinstance(obj["faces"], list)
    assert obj["error"] is None or isinstance(obj["error"], str)
    for face in obj["faces"]:
        assert list(face) == ["box", "score", "landmarks", "confidence"]
        assert len(face["box"]) == 4 and all(isinstance(v, float) for v in face["box"])
        assert isinstance(face["score"], float)
        assert all(len(p) == 2 and all(isinstance(v, float) for v in p)
                   for p in face["landmarks"])
        assert face["confidence"] is None or isinstance(face["confidence"], float)


def _face_centre(face: dict) -> np.ndarray:
    x, y, w, h = face["box"]
    return np.array([x + w / 2, y + h / 2])


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.imread(str(ASTRONAUT))


@pytest.fixture(scope="module")
def small(astronaut) -> np.ndarray:
    return cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def small_path(tmp_path_factory, small) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.png"
    cv2.imwrite(str(path), small)
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, small) -> dict[str, Path]:
    """One file (or folder) per kind of awkward input."""
    astronaut = small
    d = tmp_path_factory.mktemp("inputs")
    files = {}
    files["good"] = d / "astronaut.png"
    files["good"].write_bytes(ASTRONAUT.read_bytes())
    files["empty"] = d / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["garbage"] = d / "garbage.png"
    files["garbage"].write_bytes(np.random.default_rng(0).bytes(3000))
    files["truncated"] = d / "truncated.jpg"
    ok, jpg = cv2.imencode(".jpg", astronaut)
    files["truncated"].write_bytes(jpg.tobytes()[:40])
    files["missing"] = d / "missing.png"
    files["no_images"] = d / "no_images"
    files["no_images"].mkdir()
    (files["no_images"] / "notes.txt").write_text("not an image")
    files["flat"] = d / "flat.png"
    cv2.imwrite(str(files["flat"]), np.full((240, 320, 3), 128, np.uint8))
    files["noise"] = d / "noise.png"
    cv2.imwrite(str(files["noise"]),
                np.random.default_rng(1).integers(0, 256, (200, 260, 3), dtype=np.uint8))
    files["gray"] = d / "gray.png"
    cv2.imwrite(str(files["gray"]), cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))
    files["deep"] = d / "deep16.png"
    cv2.imwrite(str(files["deep"]), astronaut.astype(np.uint16) * 257)
    files["rgba"] = d / "rgba.png"
    alpha = np.full(astronaut.shape[:2], 255, np.uint8)
    alpha[:100, :100] = 0  # a transparent corner, away from the face
    cv2.imwrite(str(files["rgba"]), np.dstack([astronaut, alpha]))
    return files


def test_bad_inputs_each_handled_and_run_goes_on(capsys, bad_inputs, tmp_path):
    f = bad_inputs
    order = ["empty", "good", "garbage", "missing", "no_images", "flat", "truncated", "noise",
             "gray", "deep", "rgba"]
    rc, objs, err = _run(capsys, *(str(f[k]) for k in order), "-o", str(tmp_path), "--model", "none")
    assert rc == 1  # some inputs could not be read
    by = dict(zip(order, objs))
    assert len(objs) == len(order)
    for k, obj in by.items():
        _check_form(obj)
        assert obj["input"] == str(f[k])
    assert "empty file" in by["empty"]["error"]
    assert "not a decodable image" in by["garbage"]["error"]
    assert "not a decodable image" in by["truncated"]["error"]
    assert "no such file" in by["missing"]["error"]
    assert "no images or videos" in by["no_images"]["error"]
    for k in ("flat", "noise"):  # read fine, no face: a result, not an error
        assert by[k]["error"] is None and by[k]["faces"] == []
    for k in ("good", "gray", "deep", "rgba"):
        obj = by[k]
        assert obj["error"] is None and len(obj["faces"]) == 1, k
        face = obj["faces"][0]
        centre = FACE_CENTRE if k == "good" else HALF_CENTRE
        assert np.hypot(*(_face_centre(face) - centre)) < 12, k
        assert len(face["landmarks"]) == 5 and face["confidence"] is None
    assert "no landmark model (--model none); detection boxes and MTCNN's 5 points" in err
    # one JSON file and one overlay per readable input; errors get their JSON too
    for k in order:
        assert (tmp_path / f"{Path(f[k]).stem}.json").is_file(), k
    assert (tmp_path / "astronaut_overlay.png").is_file()
    assert json.loads((tmp_path / "deep16.json").read_text()) == by["deep"]


@pytest.mark.slow
def test_huge_image(capsys, astronaut, tmp_path):
    big = cv2.resize(astronaut, (6000, 6000), interpolation=cv2.INTER_LINEAR)[1000:5000]
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 80])
    rc, objs, _ = _run(capsys, str(path), "-o", str(tmp_path / "out"), "--model", "none")
    assert rc == 0 and len(objs[0]["faces"]) == 1
    # the face scaled by 6000 / 512 and moved up by 1000
    expected = FACE_CENTRE * 6000 / 512 - [0, 1000]
    assert np.hypot(*(_face_centre(objs[0]["faces"][0]) - expected)) < 12 * 6000 / 512


@pytest.mark.skipif(not hasattr(cv2, "CascadeClassifier"), reason="OpenCV without Haar cascades")
def test_folder_haar_and_model_none(capsys, bad_inputs, small_path, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "b.png").write_bytes(small_path.read_bytes())
    (folder / "a.png").write_bytes(bad_inputs["flat"].read_bytes())
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "readme.txt").write_text("skipped")
    rc, objs, err = _run(capsys, str(folder), "--detector", "haar", "--model", "none",
                         "-o", str(tmp_path / "out"))
    assert rc == 0
    assert [Path(o["input"]).name for o in objs] == ["a.png", "b.png"]
    face = objs[1]["faces"][0]
    _check_form(objs[1])
    assert face["landmarks"] == [] and face["score"] >= 3  # Haar: merged-window count, no points
    assert np.hypot(*(_face_centre(face) - HALF_CENTRE)) < 10
    assert "no landmark model (--model none); detection boxes are reported (the Haar " \
        "detector gives no points)" in err


def test_with_a_model_bundle(capsys, small_path, tmp_path):
    reg = regression_bundle(tmp_path / "fixed5")
    rc, objs, err = _run(capsys, str(small_path), "--model", str(reg), "-o", str(tmp_path / "o1"),
                         "--batch", "1")
    assert rc == 0 and "landmark model: fixed5" in err
    face = objs[0]["faces"][0]
    _check_form(objs[0])
    # the fixed points land inside the crop around the (calibrated) face box
    pts = np.array(face["landmarks"])
    assert pts.shape == (5, 2) and face["confidence"] is None
    assert pts[1, 0] > pts[0, 0] and pts[3, 1] > pts[0, 1]
    assert np.hypot(*(pts.mean(0) - HALF_CENTRE)) < 20
    hm = heatmap_bundle(tmp_path / "shift5")
    rc, objs, _ = _run(capsys, str(small_path), "--model", str(hm), "--show-heatmaps",
                       "--indices", "-o", str(tmp_path / "o2"))
    assert rc == 0 and isinstance(objs[0]["faces"][0]["confidence"], float)
    fig = cv2.imread(str(tmp_path / "o2" / "small_heatmaps.png"))
    assert fig is not None and fig.shape[0] > 100


def test_bad_model_and_options(capsys, tmp_path):
    from landmarknet.cli.common import UsageError
    from landmarknet.infer import ModelError

    with pytest.raises(ModelError, match="no such bundle folder"):
        detect_cli.run(_args(str(ASTRONAUT), "--model", str(tmp_path / "nope")))
    with pytest.raises(UsageError, match="--batch"):
        detect_cli.run(_args(str(ASTRONAUT), "--batch", "0"))


def test_device_and_tracking_options(capsys, monkeypatch):
    """--device cuda without CUDA: one clear line (exit 2 from the command); bad numbers."""
    import torch

    from landmarknet.cli.common import UsageError
    from landmarknet.cli.main import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["detect", str(ASTRONAUT), "--device", "cuda", "--model", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landmarknet detect: error: --device cuda: torch sees no CUDA GPU")
    assert "\n" not in err
    with pytest.raises(UsageError, match="--detect-every"):
        detect_cli.run(_args(str(ASTRONAUT), "--detect-every", "0"))
    with pytest.raises(UsageError, match="--camera"):
        detect_cli.run(_args())


def test_device_auto_on_the_cpu_gives_the_same_result(capsys, small_path, tmp_path,
                                                      monkeypatch):
    """--device auto without a GPU runs the CPU path: the same JSON as without it."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, plain, _ = _run(capsys, str(small_path), "-o", str(tmp_path / "a"), "--no-overlay")
    _, auto, _ = _run(capsys, str(small_path), "-o", str(tmp_path / "b"), "--no-overlay",
                      "--device", "auto")
    assert auto == plain and len(plain[0]["faces"]) == 1


def test_video(capsys, small, tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (256, 256))
    assert writer.isOpened()
    for i in range(4):
        writer.write(np.roll(small, 3 * i, axis=1))  # the face moves 3 px right per frame
    writer.release()
    out = tmp_path / "out"
    rc, objs, _ = _run(capsys, str(path), "-o", str(out))
    assert rc == 0 and [o["frame"] for o in objs] == [0, 1, 2, 3]
    for o in objs:
        _check_form(o, video=True)
        assert len(o["faces"]) == 1
    xs = [_face_centre(o["faces"][0])[0] for o in objs]
    assert xs[0] < xs[1] < xs[3]  # smoothed, still following the motion
    assert json.loads((out / "clip.json").read_text()) == objs
    cap = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4


def test_empty_and_broken_video(capsys, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF" + bytes(200))
    rc, objs, _ = _run(capsys, str(empty), str(broken), "-o", str(tmp_path / "o"))
    assert rc == 1
    assert "empty file" in objs[0]["error"]
    assert objs[1]["error"] and "video" in objs[1]["error"]
    for o in objs:
        _check_form(o)


def test_tools_script_runs(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "detect.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--show-heatmaps" in proc.stdout and "example:" in proc.stdout


def test_overlay_leaves_out_points_it_cannot_draw():
    """A broken model's NaN, inf or huge points are not drawn (cv2 would raise on them); the
    finite ones still are."""
    import numpy as np

    from landmarknet.detect.draw import overlay
    from landmarknet.detect.pipeline import FaceResult
    image = np.zeros((64, 64, 3), np.uint8)
    points = np.array([[10.0, 10.0], [np.nan, 5.0], [np.inf, 1.0], [1e30, 3.0]])
    face = FaceResult(np.array([5.0, 5.0, 40.0, 40.0]), 0.9, points, float("nan"))
    out = overlay(image, [face])
    assert out[10, 10].any()  # the finite point is drawn
    broken = FaceResult(np.array([np.nan, 5.0, 40.0, 40.0]), 0.9, points, None)
    assert not overlay(image, [broken]).any()  # a face without a drawable box is left out
