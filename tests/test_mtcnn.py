"""MTCNN run by landmarknet: the sample face, the pyramid, NMS, and the nets against OpenCV DNN."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from landmarknet.detect import DetectError, get_detector
from landmarknet.detect.boxes import BoxCalibration, iou_matrix, nms
from landmarknet.detect.mtcnn import DEFAULT_WEIGHTS, MTCNN, crop_boxes, to_blob
from landmarknet.paths import REPO_ROOT

ASTRONAUT = REPO_ROOT / "samples" / "astronaut.png"

# Measured by eye on samples/astronaut.png (512x512) at 6x zoom with a 10-px grid: pupils,
# nose tip and mouth corners, in pixels (x right, y down).
EYE_LEFT = (204.0, 101.0)
EYE_RIGHT = (246.0, 102.0)
NOSE = (224.0, 127.0)
MOUTH_LEFT = (204.0, 141.0)
MOUTH_RIGHT = (243.0, 142.0)


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return get_detector("mtcnn")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.imread(str(ASTRONAUT))


def test_one_face_with_five_points_on_the_sample(mtcnn, astronaut):
    faces = mtcnn.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.99
    x, y, w, h = face.box
    # A face box: 80-130 px wide, about as tall as wide (MTCNN boxes run brow-ish to chin),
    # centred between the eyes and the mouth, holding all five points.
    assert 75 < w < 130 and 0.9 < h / w < 1.5
    cx, cy = x + w / 2, y + h / 2
    assert abs(cx - 224) < 10 and abs(cy - 121) < 15
    pts = face.points
    assert pts.shape == (5, 2)
    assert np.all((pts[:, 0] > x) & (pts[:, 0] < x + w) & (pts[:, 1] > y) & (pts[:, 1] < y + h))
    eyes = np.array([EYE_LEFT, EYE_RIGHT])
    others = np.array([NOSE, MOUTH_LEFT, MOUTH_RIGHT])
    assert np.hypot(*(pts[:2] - eyes).T).max() < 4.0
    assert np.hypot(*(pts[2:] - others).T).max() < 5.0


def test_no_face_on_flat_and_noise_images(mtcnn, rng):
    assert mtcnn.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    noise = rng.integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    assert mtcnn.detect(noise) == []
    assert mtcnn.detect(np.zeros((10, 10, 3), np.uint8)) == []  # smaller than a 12-px window


def test_pyramid_scales(mtcnn):
    # MATLAB: m = 12 / minsize, scales m * 0.709^k while min(h, w) * m * 0.709^k >= 12.
    s = mtcnn.scales(512, 512)
    assert len(s) == 10
    np.testing.assert_allclose(s[:3], [0.6, 0.4254, 0.3016086])
    # huge images: the first level is capped at max_input_side (1280) on the long side
    assert mtcnn.scales(4000, 6000)[0] == pytest.approx(12 / (12 * 6000 / 1280))


def test_bad_input_image(mtcnn):
    with pytest.raises(DetectError, match="BGR uint8"):
        mtcnn.detect(np.zeros((50, 50), np.uint8))
    with pytest.raises(DetectError, match="min_face"):
        MTCNN(min_face=5)


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 5, 5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 81 / 119 = 0.68; IoU(3, 0) = 25 / 100; IoU(3, 1) = 16 / 109
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, "union"), [3, 0, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, "union"), [3, 0, 1, 2])
    # "min": box 3 lies inside box 0, overlap / smaller area = 1 -> box 0 goes
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, "min"), [3, 1, 2])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0
    np.testing.assert_allclose(iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 10, 10]])),
                               [[50 / 150]])


def test_box_calibration_fit_and_apply():
    det = np.array([[0, 0, 100, 100], [50, 50, 200, 200.0]])
    ref = np.array([[10, 20, 80, 60], [70, 90, 160, 120.0]])
    cal = BoxCalibration.fit(det, ref)
    # centres: det (50, 50) -> ref (50, 50); det (150, 150) -> ref (150, 150); sizes x0.8, x0.6
    assert cal.to_list() == pytest.approx([0.0, 0.0, 0.8, 0.6])
    np.testing.assert_allclose(cal.apply(det), ref)


def test_crop_boxes_pads_outside_with_zeros():
    img = np.full((20, 30, 3), 200, np.uint8)
    # 1-based inclusive box (-9, -9) .. (10, 10): 20x20, only its lower-right 10x10 is inside
    crop = crop_boxes(img, np.array([[-9.0, -9.0, 10.0, 10.0]]), 20)
    assert crop.shape == (1, 20, 20, 3)
    assert np.all(crop[0, :10, :10] == 0) and np.all(crop[0, 10:, 10:] == 200)


# -- our nets against OpenCV DNN on the same inputs ----------------------------------------------


def _opencv_or_skip():
    opencv_ref = pytest.importorskip("opencv_ref")
    try:
        opencv_ref.opencv_version()
    except opencv_ref.OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV DNN unavailable: {exc}")
    return opencv_ref


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def _inputs(mtcnn, astronaut, rng):
    rgb = cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)
    level = cv2.resize(rgb, (157, 131), interpolation=cv2.INTER_AREA)  # odd sizes: ceil pooling
    boxes = mtcnn.stage1(rgb)
    pick = boxes[np.argsort(-boxes[:, 4])[:12]]
    return {
        "det1": to_blob(level[None]).numpy(),
        "det2": np.concatenate([to_blob(crop_boxes(rgb, pick, 24)).numpy(),
                                rng.normal(0, 1, (4, 3, 24, 24)).astype(np.float32)]),
        "det3": np.concatenate([to_blob(crop_boxes(rgb, pick, 48)).numpy(),
                                rng.normal(0, 1, (4, 3, 48, 48)).astype(np.float32)]),
    }


@pytest.mark.parametrize("stem, outputs", [("det1", ["prob1", "conv4-2"]),
                                           ("det2", ["prob1", "conv5-2"]),
                                           ("det3", ["prob1", "conv6-2", "conv6-3"])])
def test_nets_match_opencv(mtcnn, astronaut, rng, stem, outputs):
    opencv_ref = _opencv_or_skip()
    x = _inputs(mtcnn, astronaut, rng)[stem]
    net = {"det1": mtcnn.pnet, "det2": mtcnn.rnet, "det3": mtcnn.onet}[stem]
    try:
        ref = opencv_ref.run_opencv(DEFAULT_WEIGHTS / f"{stem}.prototxt",
                                    DEFAULT_WEIGHTS / f"{stem}.caffemodel", {"data": x}, outputs)
    except opencv_ref.OpenCVUnavailable as exc:  # e.g. OpenCV 5, which has no Caffe importer
        pytest.skip(f"OpenCV DNN unavailable: {exc}")
    ours = mtcnn._run(net, torch.from_numpy(x))
    for name in outputs:
        assert ours[name].shape == ref[name].shape, name
        assert _rel(ours[name], ref[name]) < 1e-4, (name, _rel(ours[name], ref[name]))
    if stem != "det1":  # the real crops include faces: the nets are not just agreeing on noise
        assert ref["prob1"][:12, 1].max() > 0.9


# -- the pyramid on the device (issue 15) --------------------------------------------------------


@pytest.mark.parametrize("src,dst", [(640, 455), (480, 341), (640, 320), (480, 120),
                                     (512, 363), (97, 13), (300, 300)])
def test_area_weights_are_opencvs_inter_area(rng, src, dst):
    """``A_h @ image @ A_w.T`` is cv2.resize(INTER_AREA) to within the uint8 rounding."""
    from landmarknet.detect.mtcnn import _round_like_opencv, area_weights
    img = rng.integers(0, 256, (src, 211, 3), dtype=np.uint8)
    w_dst = 211 if dst == src else max(1, dst // 3)
    ref = cv2.resize(img, (w_dst, dst), interpolation=cv2.INTER_AREA).astype(np.float64)
    ours = area_weights(src, dst) @ img.transpose(2, 0, 1).astype(np.float64) \
        @ area_weights(211, w_dst).T
    rounded = _round_like_opencv(torch.from_numpy(ours).float(),
                                 src == 2 * dst and 211 == 2 * w_dst)
    diff = np.abs(rounded.permute(1, 2, 0).numpy() - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.allclose(area_weights(src, dst).sum(1), 1.0)


def test_pyramid_on_the_device_path_finds_the_same_faces(mtcnn, astronaut, data_dir):
    """pyramid="torch" (what --device cuda runs), here on the CPU: the same boxes, scores and
    points as the OpenCV pyramid on the sample and on ytf68 faces."""
    on_device = MTCNN(pyramid="torch")
    assert on_device.pyramid == "torch" and mtcnn.pyramid == "opencv"
    images = [astronaut] + [cv2.imread(str(p)) for p in
                            sorted((data_dir / "ytf68" / "val").glob("*.jpg"))[:4]]
    for image in images:
        ref, got = mtcnn.detect(image), on_device.detect(image)
        assert len(got) == len(ref) >= 1
        for a, b in zip(ref, got):
            np.testing.assert_allclose(b.box, a.box, atol=1.0)
            np.testing.assert_allclose(b.points, a.points, atol=1.0)
            assert b.score == pytest.approx(a.score, abs=1e-3)


def test_device_names(monkeypatch):
    from landmarknet.detect import DeviceError, resolve_device
    from landmarknet.errors import LandmarknetError
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="no CUDA") as exc:
        resolve_device("cuda")
    assert isinstance(exc.value, LandmarknetError) and "\n" not in str(exc.value)
    with pytest.raises(DeviceError, match="choose one of"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("CUDA:1") == "cuda:1"
    with pytest.raises(DeviceError, match="2 CUDA device"):
        resolve_device("cuda:2")
