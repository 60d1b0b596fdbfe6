"""Aligned crops (issue 15): the crop turns with the face, from the detector's eye points."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from landmarknet.data.crop import (CropPolicy, Jitter, alignment_angle, eye_angle, face_crop,
                                   rotate_expanded)
from landmarknet.detect.boxes import BoxCalibration


def _nme_io(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean point error over the outer eye corners' distance (68 points)."""
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))


# -- the shared geometry, on synthetic numbers ------------------------------------------------

def test_eye_angle_exact_values():
    assert eye_angle((10, 20), (30, 20)) == 0.0
    assert eye_angle((10, 20), (20, 30)) == pytest.approx(45.0)
    assert eye_angle((10, 20), (10, 40)) == pytest.approx(90.0)  # right eye below the left
    assert eye_angle((10, 20), (-10, 20)) == pytest.approx(180.0)
    assert eye_angle((0, 0), (math.sqrt(3), -1)) == pytest.approx(-30.0)
    with pytest.raises(ValueError):
        eye_angle((1, 1), (1, 1))


def test_alignment_angle_by_scheme():
    five = np.array([[10, 20], [20, 30], [15, 35], [12, 40], [18, 42]], float)
    assert alignment_angle(five) == pytest.approx(45.0)
    pts68 = np.zeros((68, 2))
    pts68[36:42] = [40, 50] + np.random.default_rng(0).normal(size=(6, 2))
    pts68[36:42] -= pts68[36:42].mean(0) - [40, 50]  # eye centres exactly (40,50), (40,80)
    pts68[42:48] = pts68[36:42] + [0, 30]
    assert alignment_angle(pts68) == pytest.approx(90.0)
    assert alignment_angle(None) == 0.0
    assert alignment_angle(np.zeros((7, 2))) == 0.0  # no known eyes: upright
    assert alignment_angle(np.zeros((5, 2))) == 0.0  # degenerate eyes: upright


@pytest.mark.parametrize("roll", [-170.0, -90.0, -30.0, 0.0, 25.0, 60.0, 90.0, 180.0])
def test_aligned_crop_puts_the_eyes_level(roll):
    # eyes 40 px apart about (100, 80), turned by ``roll`` degrees (y down)
    r = math.radians(roll)
    half = 20 * np.array([math.cos(r), math.sin(r)])
    eyes = np.array([[100.0, 80.0] - half, [100.0, 80.0] + half])
    policy = CropPolicy(size=112, scale=1.25)
    box = (60.0, 40.0, 80.0, 80.0)  # centred between the eyes
    g = face_crop(box, policy, angle=alignment_angle(np.vstack([eyes, np.zeros((3, 2))])))
    q = g.to_crop(eyes)
    s = 112 / (1.25 * 80)
    assert q[0, 1] == pytest.approx(q[1, 1], abs=1e-9)  # same row
    assert q[1, 0] - q[0, 0] == pytest.approx(40 * s, abs=1e-9)  # left eye left, same scale
    np.testing.assert_allclose(q.mean(0), [55.5, 55.5], atol=1e-9)
    np.testing.assert_allclose(g.to_image(q), eyes, atol=1e-9)  # exact way back


def test_no_angle_is_the_upright_crop_and_shift_follows_the_face():
    policy = CropPolicy(size=64, scale=1.5, shift=(0.0, 0.1))
    box = (10.0, 20.0, 50.0, 40.0)
    j = Jitter(1.1, 0.02, -0.03, 7.0)
    np.testing.assert_array_equal(face_crop(box, policy, j).matrix,
                                  face_crop(box, policy, j, angle=0.0).matrix)
    # a quarter turn: the policy's downward shift (0.1 side) points along the image's -x
    g = face_crop(box, policy, angle=90.0)
    side = 1.5 * 50
    np.testing.assert_allclose(g.center, (35.0 - 0.1 * side, 40.0), atol=1e-9)
    assert g.angle == 90.0


def test_calibration_in_the_face_frame():
    cal = BoxCalibration(0.05, 0.2, 1.1, 0.8)
    boxes = np.array([[10.0, 20.0, 40.0, 60.0]])
    np.testing.assert_array_equal(cal.apply(boxes), cal.apply(boxes, [0.0]))
    # turned 90 degrees: sides read swapped (w' = 60, h' = 40); the face's right (+x') is the
    # image's +y and its down (+y') the image's -x
    x, y, w, h = cal.apply(boxes, [90.0])[0]
    np.testing.assert_allclose([x + w / 2, y + h / 2], [30.0 - 0.2 * 40, 50.0 + 0.05 * 60])
    np.testing.assert_allclose([w, h], [1.1 * 60, 0.8 * 40])
    # 180 degrees: the moves reverse, sides as upright
    x, y, w, h = cal.apply(boxes, [180.0])[0]
    np.testing.assert_allclose([x + w / 2, y + h / 2], [30.0 - 0.05 * 40, 50.0 - 0.2 * 60])
    np.testing.assert_allclose([w, h], [1.1 * 40, 0.8 * 60])


def test_rotate_expanded_moves_pixels_with_the_points():
    image = np.zeros((50, 80, 3), np.uint8)
    image[10, 70] = 255
    for deg in (30.0, 90.0, 180.0):
        out, m = rotate_expanded(image, deg)
        c = math.radians(deg)
        assert out.shape[1] == math.ceil(80 * abs(math.cos(c)) + 50 * abs(math.sin(c)) - 1e-6)
        p = m @ [70, 10, 1]
        blob = out[..., 0].astype(float)
        ys, xs = np.indices(blob.shape)
        centroid = np.array([(xs * blob).sum(), (ys * blob).sum()]) / blob.sum()
        np.testing.assert_allclose(centroid, p, atol=0.3)


# -- a real face, the shipped default model and MTCNN ----------------------------------------

@pytest.fixture(scope="module")
def val_face(data_dir):
    from landmarknet.data.dataset import read_samples
    samples, _ = read_samples(data_dir / "ytf68" / "val", None, 68)
    s = samples[0]
    return cv2.imread(str(s.image_path)), np.asarray(s.points, np.float64)


@pytest.fixture(scope="module")
def model():
    from landmarknet.models import load_bundle
    return load_bundle("heatmap4_68_bn")


@pytest.fixture(scope="module")
def mtcnn():
    from landmarknet.detect import get_detector
    return get_detector("mtcnn")


@pytest.fixture(scope="module")
def any_roll():
    """MTCNN searching the quarter turns too (``detect --any-roll``)."""
    from landmarknet.detect import get_detector
    return get_detector("mtcnn", turns=(0, 90, 180, 270))


def _only_face(detector, image, gt):
    faces = detector.detect(image)
    c = gt.mean(0)
    inside = [f for f in faces if f.box[0] <= c[0] <= f.box[0] + f.box[2]
              and f.box[1] <= c[1] <= f.box[1] + f.box[3]]
    assert inside, "MTCNN should find the face"
    return inside[0]


def test_quarter_turns_find_a_turned_face_where_it_is(val_face, mtcnn, any_roll):
    image, gt = val_face
    up = _only_face(mtcnn, image, gt)
    for deg in (90.0, 180.0, 270.0):
        turned, m = rotate_expanded(image, deg)
        face = _only_face(any_roll, turned, gt @ m[:2, :2].T + m[:, 2])
        # a quarter turn of the picture is exact: one reading has the same five points, turned
        want = up.points @ m[:2, :2].T + m[:, 2]
        errors = [np.abs(f.points - want).max() for f in [face] + face.alternatives]
        assert min(errors) < 1e-3
        chosen = ([face] + face.alternatives)[int(np.argmin(errors))]
        assert alignment_angle(chosen.points) == pytest.approx(
            alignment_angle(up.points) - deg + (360 if deg > 180 else 0), abs=1e-3)


def test_best_candidate_per_face():
    from landmarknet.detect import Face
    from landmarknet.detect.pipeline import best_candidates, face_candidates

    alt = Face([0, 0, 5, 5], 0.5)
    faces = [Face([0, 0, 4, 4], 0.9, alternatives=[alt]), Face([9, 9, 4, 4], 0.8)]
    cands, owner = face_candidates(faces)
    assert cands == [faces[0], alt, faces[1]] and owner == [0, 0, 1]
    assert face_candidates(faces, align=False) == ([faces[0], faces[1]], [0, 1])
    assert best_candidates([0.4, 0.7, 0.2], owner) == [1, 2]
    assert best_candidates([0.7, 0.7, 0.2], owner) == [0, 2]  # ties: the detector's best
    assert best_candidates([None, None, None], owner) == [0, 2]


def test_rotated_face_matches_its_upright_prediction(val_face, model, mtcnn, any_roll):
    image, gt = val_face
    up = _only_face(mtcnn, image, gt)
    upright = model.predict(image, up.box[None], "mtcnn", points=[up.points]).points[0]
    assert _nme_io(upright, gt) < 0.08
    for deg in (30.0, 90.0):
        turned, m = rotate_expanded(image, deg)
        gt_t = gt @ m[:2, :2].T + m[:, 2]
        face = _only_face(any_roll, turned, gt_t)
        aligned = model.predict(turned, face.box[None], "mtcnn", points=[face.points]).points[0]
        # mapped into the turned picture, the upright prediction is where the aligned one is
        assert _nme_io(aligned, upright @ m[:2, :2].T + m[:, 2]) < 0.03, deg
        assert _nme_io(aligned, gt_t) < 0.08
    flat = model.predict(turned, face.box[None], "mtcnn").points[0]  # today's upright crop
    assert _nme_io(flat, gt_t) > 2 * _nme_io(aligned, gt_t)


def _detect_json(tmp_path, capsys, path, *flags) -> dict:
    import argparse
    import json

    from landmarknet.cli import detect as detect_cli
    parser = argparse.ArgumentParser()
    detect_cli.add_arguments(parser)
    args = parser.parse_args([str(path), "--json", "--no-overlay", "-o", str(tmp_path / "o"),
                              *flags])
    assert detect_cli.run(args) == 0
    obj = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()][0]
    assert list(obj) == ["input", "faces", "error"]
    assert list(obj["faces"][0]) == ["box", "score", "landmarks", "confidence"]
    return obj


def test_no_align_is_todays_result(val_face, model, mtcnn, any_roll, tmp_path, capsys):
    from landmarknet.detect.pipeline import Landmarker

    image, gt = val_face
    turned, _ = rotate_expanded(image, 30.0)
    faces = mtcnn.detect(turned)
    boxes = np.stack([f.box for f in faces])
    today = model.predict(turned, boxes, "mtcnn").points  # no points: upright, as before
    res = Landmarker(mtcnn, model, align=False).process_one(turned)
    np.testing.assert_array_equal(np.stack([f.landmarks for f in res.faces]), today)
    path = tmp_path / "turned.png"
    cv2.imwrite(str(path), turned)
    obj = _detect_json(tmp_path, capsys, path, "--no-align")
    np.testing.assert_allclose([f["landmarks"] for f in obj["faces"]], today, atol=0.006)
    aligned = model.predict(turned, boxes, "mtcnn", points=[f.points for f in faces]).points
    assert np.abs(aligned - today).max() > 0.5  # alignment does change the crop here
    obj = _detect_json(tmp_path, capsys, path)
    np.testing.assert_allclose([f["landmarks"] for f in obj["faces"]], aligned, atol=0.006)
    # a quarter-turned face: found with --any-roll, and aligned
    turned, _ = rotate_expanded(image, 90.0)
    cv2.imwrite(str(path), turned)
    face = any_roll.detect(turned)[0]
    aligned = model.predict(turned, face.box[None], "mtcnn", points=[face.points]).points
    obj = _detect_json(tmp_path, capsys, path, "--any-roll")
    np.testing.assert_allclose([obj["faces"][0]["landmarks"]], aligned, atol=0.006)


def test_readings_of_one_face_from_other_turns_are_merged():
    from landmarknet.detect import Face
    from landmarknet.detect.mtcnn import _merge_turns

    real = Face([100, 100, 60, 60], 0.99)
    inner = Face([120, 125, 30, 25], 0.999)  # a wrong-turn reading inside the face: best score
    other = Face([10, 10, 40, 40], 0.9)  # another face
    same_turn = Face([104, 104, 60, 60], 0.8)  # left over by the same turn's NMS: dropped
    faces = _merge_turns([real, inner, other, same_turn], [0, 90, 0, 90])
    assert faces == [inner, other]
    assert inner.alternatives == [real] and other.alternatives == []
