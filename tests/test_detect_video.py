"""Video tracking (landmarknet.detect.tracker) and live sources (landmarknet.detect.video).

Videos are made with OpenCV from real face pictures (samples/astronaut.png, ytf68/val with its
annotated points) moved a few pixels a frame, written to mp4 and read back.
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import cv2
import numpy as np
import pytest

from landmarknet.data.dataset import read_samples
from landmarknet.detect import get_detector
from landmarknet.detect.boxes import BoxCalibration, points_box
from landmarknet.detect.pipeline import Landmarker
from landmarknet.detect.tracker import (DEFAULT_MIN_CONFIDENCE, VideoTracker, detector_like_box,
                                        landmarks_crop_box)
from landmarknet.detect.video import (SourceTimeout, camera_source, live_frames,
                                      moving_face_frames, write_video)
from landmarknet.metrics import nme
from landmarknet.models import load_bundle
from landmarknet.paths import REPO_ROOT

ASTRONAUT = REPO_ROOT / "samples" / "astronaut.png"


class CountingDetector:
    """A detector that records the frames it was called on (the tracker's frame index)."""

    def __init__(self, detector) -> None:
        self.inner, self.name, self.calls = detector, detector.name, 0

    def detect(self, image):
        self.calls += 1
        return self.inner.detect(image)


@pytest.fixture(scope="module")
def model():
    """The default 68-point bundle, without its mirrored pass (half the time; tests only)."""
    m = load_bundle("heatmap4_68_bn")
    m.spec.flip_test = False
    return m


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    """The sample at half size (256x256): its one face is about 45 px wide."""
    return cv2.resize(cv2.imread(str(ASTRONAUT)), (256, 256), interpolation=cv2.INTER_AREA)


def _read_back(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def _through_file(tmp_path, frames, name="clip.mp4") -> list[np.ndarray]:
    """The frames written as an mp4 and decoded again (what a user's video goes through)."""
    path = tmp_path / name
    assert write_video(path, frames, 30.0) == len(frames)
    back = _read_back(path)
    assert len(back) == len(frames)
    return back


def _track(tracker, frames):
    return [tracker.step(f, i / 30.0, i) for i, f in enumerate(frames)]


# -- geometry ----------------------------------------------------------------------------------


def test_crop_box_from_points_is_the_points_box_upright_and_turns_with_the_face(rng):
    pts = rng.uniform(80, 180, (68, 2))
    pts[36:42] = (100.0, 120.0)  # level eyes: the face is upright
    pts[42:48] = (160.0, 120.0)
    box, angle = landmarks_crop_box(pts)
    lo, hi = pts.min(0), pts.max(0)
    assert angle == 0.0
    np.testing.assert_allclose(box[:2] + box[2:] / 2, (lo + hi) / 2, atol=1e-9)
    assert box[2] == box[3] == pytest.approx((hi - lo).max())
    # the same face turned by 35 degrees (OpenCV's rotation, clockwise on screen for +35):
    # the same crop side, the centre turned with it, the roll read back from the eyes
    m = cv2.getRotationMatrix2D((130.0, 130.0), 35.0, 1.0)
    turned = pts @ m[:, :2].T + m[:, 2]
    box_t, angle_t = landmarks_crop_box(turned)
    assert angle_t == pytest.approx(-35.0)
    assert box_t[2] == pytest.approx(box[2])
    np.testing.assert_allclose(box_t[:2] + box_t[2:] / 2, m[:, :2] @ ((lo + hi) / 2) + m[:, 2],
                               atol=1e-9)


def test_reported_box_is_the_detector_kind(rng):
    """The tracked frame's box maps onto the points' box through the detector's calibration,
    as a detector's box does."""
    pts = rng.uniform(50, 150, (68, 2))
    cal = BoxCalibration(0.01, 0.14, 0.95, 0.8)
    box = detector_like_box(pts, cal)
    np.testing.assert_allclose(cal.apply(box[None])[0], points_box(pts), atol=1e-9)


# -- when the detector runs --------------------------------------------------------------------


def test_detector_runs_on_the_first_frame_and_every_n(tmp_path, model, small):
    frames = _through_file(tmp_path, [f for f, _ in moving_face_frames(small, 12, (256, 256),
                                                                        step=2.0)])
    det = CountingDetector(get_detector("mtcnn"))
    tracker = VideoTracker(det, model, detect_every=5)
    results = _track(tracker, frames)
    assert tracker.stats.detected == [0, 5, 10]
    assert det.calls == 3 and tracker.stats.lost == []
    assert all(len(r.faces) == 1 for r in results)
    every = VideoTracker(CountingDetector(get_detector("mtcnn")), model, detect_every=1)
    _track(every, frames[:3])
    assert every.stats.detected == [0, 1, 2]


def test_a_lost_face_is_found_again_on_the_same_frame(tmp_path, model, small):
    """The face jumps to the other half of the picture: the crop from the last points sees a
    flat background, the confidence falls, and the detector runs on that very frame."""
    canvas = np.full((256, 512, 3), 128, np.uint8)
    left, right = canvas.copy(), canvas.copy()
    left[:, :256] = small
    right[:, 256:] = small
    frames = _through_file(tmp_path, [left] * 4 + [right] * 4)
    det = CountingDetector(get_detector("mtcnn"))
    tracker = VideoTracker(det, model, detect_every=100, smooth=False)
    results = _track(tracker, frames)
    assert tracker.stats.lost == [4]
    assert tracker.stats.detected == [0, 4]
    assert det.calls == 2
    x_left = results[3].faces[0].landmarks[:, 0].mean()
    x_right = results[4].faces[0].landmarks[:, 0].mean()
    assert x_right - x_left == pytest.approx(256, abs=3)
    assert all(f.confidence > 0.5 for r in results for f in r.faces)
    # what the tracker saw on frame 4 before it gave up: a crop of background, low confidence
    last = results[3].faces[0].landmarks  # raw points (smooth=False)
    box, _ = landmarks_crop_box(last)
    batch, _, _ = model.prepare(frames[4], box[None], "landmarks", [last])
    assert model.run(batch)[1][0] < 0.1 < DEFAULT_MIN_CONFIDENCE


def test_a_face_that_walks_in_is_found_at_the_next_detection(tmp_path, model, small):
    canvas = np.full((256, 512, 3), 128, np.uint8)
    one, two = canvas.copy(), canvas.copy()
    one[:, :256] = small
    two[:, :256] = small
    two[:, 256:] = small
    frames = _through_file(tmp_path, [one] * 3 + [two] * 5)
    tracker = VideoTracker(CountingDetector(get_detector("mtcnn")), model, detect_every=5)
    counts = [len(r.faces) for r in _track(tracker, frames)]
    assert counts == [1, 1, 1, 1, 1, 2, 2, 2]
    assert tracker.stats.detected == [0, 5]


# -- accuracy ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ytf_face(data_dir):
    """A ytf68/val face with its annotated points."""
    samples, _ = read_samples(data_dir / "ytf68" / "val", n_points=68)
    s = next(s for s in samples if s.image_path.name == "te_Andy_Rooney_11.jpg")
    return cv2.imread(str(s.image_path)), s.points.astype(np.float64)


def test_tracked_points_stay_with_per_frame_detection(tmp_path, model, ytf_face):
    """A real face moving 3 px a frame (a 320x240 video): followed from the previous frame's
    points for 11 frames, its NME against the moved annotation stays that of detecting every
    frame, and the points stay within 2 % of the face's size of the per-frame ones."""
    picture, gt = ytf_face
    made = list(moving_face_frames(picture, 12, (320, 240), step=3.0))
    frames = _through_file(tmp_path, [f for f, _ in made])
    truth = np.stack([gt @ m[:, :2].T + m[:, 2] for _, m in made])
    tracker = VideoTracker(get_detector("mtcnn"), model, detect_every=100, smooth=False)
    tracked = np.stack([r.faces[0].landmarks for r in _track(tracker, frames)])
    assert tracker.stats.detected == [0]
    per_frame = np.stack([Landmarker(get_detector("mtcnn"), model).process_one(f)
                          .faces[0].landmarks for f in frames])
    e_tracked = nme(tracked, truth, model.scheme, "io")
    e_frame = nme(per_frame, truth, model.scheme, "io")
    assert e_frame.mean() < 0.08
    assert e_tracked.mean() <= e_frame.mean() * 1.15 + 0.003
    size = np.ptp(truth[0], axis=0).max()
    assert np.linalg.norm(tracked - per_frame, axis=2).mean(1).max() < 0.02 * size


# -- live sources ------------------------------------------------------------------------------


def test_camera_source_text():
    assert camera_source("0") == 0 and camera_source(" 2 ") == 2
    assert camera_source("rtsp://host/stream") == "rtsp://host/stream"


class _SilentCapture:
    """A capture that opened but whose read blocks for ``delay`` seconds, then gives up."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.released = threading.Event()

    def read(self):
        time.sleep(self.delay)
        return False, None

    def release(self) -> None:
        self.released.set()


def test_a_source_without_frames_does_not_hang():
    cap = _SilentCapture(delay=2.0)
    t0 = time.monotonic()
    with pytest.raises(SourceTimeout, match="no frame"):
        list(live_frames(cap, timeout=0.5))
    assert time.monotonic() - t0 < 5
    assert cap.released.wait(5)  # the reader stops once the generator is closed


def test_live_frames_stop_after_max_frames(tmp_path, small):
    path = tmp_path / "live.mp4"
    write_video(path, [small] * 6)
    cap = cv2.VideoCapture(str(path))
    got = list(live_frames(cap, timeout=5, max_frames=4))
    assert len(got) == 4 and all(f.shape == small.shape for _, f in got)
    assert [t for t, _ in got] == sorted(t for t, _ in got) and got[0][0] == 0.0


def test_detect_camera_option_reads_a_capture_string(capsys, tmp_path, small):
    """--camera takes any OpenCV capture string; a video file is one (no camera here)."""
    from landmarknet.cli import detect as detect_cli
    path = tmp_path / "cam.mp4"
    write_video(path, [f for f, _ in moving_face_frames(small, 8, (256, 256), step=2.0)])
    parser = argparse.ArgumentParser()
    detect_cli.add_arguments(parser)
    args = parser.parse_args(["--camera", str(path), "--max-frames", "5", "--detect-every", "3",
                              "-o", str(tmp_path / "out"), "--json", "--no-overlay"])
    assert detect_cli.run(args) == 0
    out, err = capsys.readouterr()
    objs = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [o["frame"] for o in objs] == [0, 1, 2, 3, 4]
    assert all(len(o["faces"]) == 1 for o in objs)
    assert "detector on 2" in err  # frames 0 and 3
    assert json.loads((tmp_path / "out" / "camera.json").read_text()) == objs


def test_bench_detect_reports_every_stage(tmp_path, capsys):
    """benchmarks/bench_detect.py on a short video: each stage timed, the detector's runs
    counted, the JSON written (its stage times add up to at most the wall time)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_detect", REPO_ROOT / "benchmarks" / "bench_detect.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--model", "squeeze77", "--workloads", "video", "--frames", "7",
                       "--detect-every", "3", "--repeats", "1", "--threads", "2",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["workload"] == "video" and row["frames"] == 7 and row["detector_runs"] == 3
    assert set(row["ms"]) == set(bench.STAGES) | {"other"}
    for stage in ("decode", "detect", "crop", "net", "points", "smooth", "draw", "encode"):
        assert row["ms"][stage] > 0, stage
    assert sum(row["ms"].values()) == pytest.approx(1000 / row["fps"], rel=0.05)
    assert data["info"]["model"] == "squeeze77" and data["info"]["threads"] == 2
    assert "fps" in capsys.readouterr().out



def test_ctrl_c_on_a_camera_keeps_what_was_done(capsys, tmp_path, small, monkeypatch):
    """Ctrl-C is how a camera run ends: the frames so far are written and the run exits 0."""
    from landmarknet.cli import detect as detect_cli
    path = tmp_path / "cam.mp4"
    write_video(path, [small] * 6)
    real_step = VideoTracker.step

    def step(self, frame, t, index=None):
        if index == 3:
            raise KeyboardInterrupt
        return real_step(self, frame, t, index)
    monkeypatch.setattr(VideoTracker, "step", step)
    parser = argparse.ArgumentParser()
    detect_cli.add_arguments(parser)
    args = parser.parse_args(["--camera", str(path), "--model", "none", "--json",
                              "-o", str(tmp_path / "out")])
    assert detect_cli.run(args) == 0
    out, err = capsys.readouterr()
    assert "interrupted after 3 frames" in err
    saved = json.loads((tmp_path / "out" / "camera.json").read_text())
    assert [o["frame"] for o in saved] == [0, 1, 2]
    assert (tmp_path / "out" / "camera_annotated.mp4").stat().st_size > 0
