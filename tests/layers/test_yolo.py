"""eric612/MobileNet-YOLO's YOLO heads (landmarknet/layers/yolo.py) against
``reference.yolo_ref``, a loop-for-loop restatement of the fork's Forward_cpu, and boxes worked
out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from layers.checker import assert_refused, run_layer
from reference import yolo_ref

V3 = "Yolov3DetectionOutput"
V2 = "YoloDetectionOutput"
BIASES3 = [10, 14, 23, 27, 37, 58, 81, 82]


def _v3_text(conf=0.3, nms=0.45, extra=""):
    return ("yolov3_detection_output_param { num_classes: 3 num_box: 2 "
            f"confidence_threshold: {conf} nms_threshold: {nms} "
            + " ".join(f"biases: {b}" for b in BIASES3)
            + " mask: 2 mask: 3 mask: 0 mask: 1 anchors_scale: 16 anchors_scale: 8 "
            f"mask_group_num: 2 {extra} }}")


def _v3_inputs(seed=0, scale=1.5):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, (1, 16, 3, 4)).astype(np.float32),
            rng.normal(0, scale, (1, 16, 6, 8)).astype(np.float32)]


def _v3_ref(inputs, conf=0.3, nms=0.45):
    return yolo_ref.yolov3(inputs, 3, 2, BIASES3, [2, 3, 0, 1], [16, 8], conf, nms)


def _rows(type_, text, inputs) -> np.ndarray:
    (top,), _, _ = run_layer(type_, text, inputs)
    assert top.shape[:2] == (1, 1) and top.shape[3] == 7
    return top.numpy()[0, 0]


def _assert_rows(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got[:, :2], want[:, :2])  # image, label: exact
    np.testing.assert_allclose(got[:, 2:], want[:, 2:], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("conf,nms", [(0.3, 0.45), (0.1, 0.3), (0.5, 0.7)])
def test_yolov3_two_heads_match_the_loop_reference(seed, conf, nms):
    inputs = _v3_inputs(seed)
    want = _v3_ref(inputs, conf, nms)
    got = _rows(V3, _v3_text(conf, nms), inputs)
    _assert_rows(got, want)
    # the threshold keeps some candidates and drops others; NMS drops some of the kept
    everything = _v3_ref(inputs, conf, 2.0)  # IoU never reaches 2: no suppression
    assert 0 < len(want) < len(everything) < 2 * (3 * 4 + 6 * 8) * 3
    assert (want[:, 1] >= 1).all() and (want[:, 1] <= 3).all()
    assert (np.diff(want[:, 2]) <= 0).all()  # score order


def test_yolov3_boxes_by_hand():
    # one anchor (mask 1: 23 x 27 px) at cell (row 1, col 2) of a 3x4 map with stride 16
    x = np.full((1, 2 * 6, 3, 4), -30, np.float32)  # num_box 2, one class
    # anchor n = 1 owns channels 6..11: tx ty tw th obj cls
    x[0, 6:12, 1, 2] = [0, 0, np.log(2), 0, 30, 30]
    text = ("yolov3_detection_output_param { num_classes: 1 num_box: 2 confidence_threshold: 0.5 "
            "biases: 10 biases: 14 biases: 23 biases: 27 mask: 0 mask: 1 anchors_scale: 16 "
            "mask_group_num: 1 }")
    got = _rows(V3, text, [x])
    cx, cy = 2.5 / 4, 1.5 / 3
    w, h = 2 * 23 / 64, 27 / 48
    np.testing.assert_allclose(got, [[0, 1, 1, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]],
                               rtol=1e-6)


def test_yolov3_nms_is_across_classes_and_keeps_the_higher_score():
    # two classes of one box, and the same box again from the other anchor: one row survives
    x = np.full((1, 2 * 7, 2, 2), -30, np.float32)
    x[0, 0:7, 0, 0] = [0, 0, 0, 0, 30, 1.0, 2.0]   # anchor 0, class 1 best
    x[0, 7:14, 0, 0] = [0, 0, 0, 0, 30, 3.0, -30]  # anchor 1 (same size), class 0 best overall
    text = ("yolov3_detection_output_param { num_classes: 2 num_box: 2 confidence_threshold: 0.1 "
            "nms_threshold: 0.45 biases: 8 biases: 8 biases: 8 biases: 8 mask: 0 mask: 1 "
            "anchors_scale: 8 mask_group_num: 1 }")
    got = _rows(V3, text, [x])
    want = yolo_ref.yolov3([x], 2, 2, [8] * 4, [0, 1], [8], 0.1, 0.45)
    _assert_rows(got, want)
    assert got.shape == (1, 7) and got[0, 1] == 1  # class 0 of anchor 1: sigmoid(3)


def test_yolov3_equal_scores_keep_the_fork_order():
    # two equal scores at far-apart cells: a short list, which std::sort leaves in push order
    x = np.full((1, 6, 3, 3), -30, np.float32)
    for r, c in ((0, 0), (2, 2)):
        x[0, :, r, c] = [0, 0, 0, 0, 2, 2]
    text = ("yolov3_detection_output_param { num_classes: 1 num_box: 1 confidence_threshold: 0.1 "
            "biases: 5 biases: 5 mask: 0 anchors_scale: 8 mask_group_num: 1 }")
    got = _rows(V3, text, [x])
    assert got.shape == (2, 7) and got[0, 2] == got[1, 2]
    assert got[0, 3] < got[1, 3]  # cell (0, 0) was pushed first


def test_yolov3_nothing_detected():
    inputs = _v3_inputs(3)
    got = _rows(V3, _v3_text(conf=0.9999), inputs)
    np.testing.assert_array_equal(got, [[0, -1, -1, -1, -1, -1, -1]])
    np.testing.assert_array_equal(got, _v3_ref(inputs, 0.9999, 0.45))


@pytest.mark.parametrize("seed", [0, 1, 4])
@pytest.mark.parametrize("conf,nms", [(0.2, 0.45), (0.05, 0.3)])
def test_yolov2_two_bottoms_match_the_loop_reference(seed, conf, nms):
    rng = np.random.default_rng(seed)
    inputs = [rng.normal(0, 1.5, (1, 2 * 8, 3, 3)).astype(np.float32),
              rng.normal(0, 1.5, (1, 2 * 8, 5, 5)).astype(np.float32)]
    biases = [1.08, 1.19, 3.42, 4.41]
    text = (f"yolo_detection_output_param {{ num_classes: 3 num_box: 2 coords: 4 "
            f"confidence_threshold: {conf} nms_threshold: {nms} "
            + " ".join(f"biases: {b}" for b in biases) + " }")
    want = yolo_ref.yolov2(inputs, 3, 2, biases, conf, nms)
    got = _rows(V2, text, inputs)
    _assert_rows(got, want)
    everything = yolo_ref.yolov2(inputs, 3, 2, biases, conf, 2.0)
    assert 0 < len(want) < len(everything) < 2 * (9 + 25)


def test_yolov2_one_bottom_and_nothing_detected():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (1, 5 * 7, 4, 4)).astype(np.float32)
    biases = [0.57, 0.68, 1.87, 2.06, 3.34, 5.47, 7.88, 3.53, 9.77, 9.17]
    text = ("yolo_detection_output_param { num_classes: 2 confidence_threshold: 0.3 "
            + " ".join(f"biases: {b}" for b in biases) + " }")
    _assert_rows(_rows(V2, text, [x]), yolo_ref.yolov2([x], 2, 5, biases, 0.3, 0.45))
    high = text.replace("0.3", "0.99")
    np.testing.assert_array_equal(_rows(V2, high, [x]), [[0, -1, -1, -1, -1, -1, -1]])


@pytest.mark.parametrize("type_,text,shapes,match", [
    (V3, _v3_text(), [(2, 16, 3, 4), (2, 16, 6, 8)], "batch 2"),
    (V3, _v3_text(), [(1, 16, 3, 4)], "needs mask_group_num = 2 bottoms"),
    (V3, _v3_text(), [(1, 15, 3, 4), (1, 16, 6, 8)], "16 channels"),
    (V3, _v3_text(extra="gaussian_box: true"), [(1, 16, 3, 4), (1, 16, 6, 8)], "gaussian_box"),
    (V3, "yolov3_detection_output_param { num_box: 2 }", [(1, 50, 3, 3)] * 2, "num_classes"),
    (V3, "yolov3_detection_output_param { num_classes: 3 num_box: 2 biases: 1 biases: 1 "
         "mask: 0 mask: 0 mask: 0 anchors_scale: 8 anchors_scale: 8 }",
     [(1, 16, 3, 3)] * 2, "mask needs"),
    (V3, "yolov3_detection_output_param { num_classes: 3 num_box: 1 biases: 1 biases: 1 "
         "mask: 0 mask: 1 anchors_scale: 8 anchors_scale: 8 }", [(1, 8, 3, 3)] * 2, "biases"),
    (V3, "yolov3_detection_output_param { num_classes: 3 num_box: 1 biases: 1 biases: 1 "
         "mask: 0 mask: 0 anchors_scale: 8 }", [(1, 8, 3, 3)] * 2, "anchors_scale"),
    (V2, "yolo_detection_output_param { num_classes: 3 num_box: 2 biases: 1 biases: 1 "
         "biases: 2 biases: 2 }", [(2, 16, 3, 3)], "batch 2"),
    (V2, "yolo_detection_output_param { num_classes: 3 num_box: 2 biases: 1 biases: 1 "
         "biases: 2 biases: 2 }", [(1, 16, 3, 4)], "non-square"),
    (V2, "yolo_detection_output_param { num_classes: 3 num_box: 2 biases: 1 biases: 1 }",
     [(1, 16, 3, 3)], "biases needs"),
    (V2, "yolo_detection_output_param { num_box: 2 biases: 1 biases: 1 biases: 2 biases: 2 }",
     [(1, 50, 3, 3)], "num_classes"),
    (V2, "yolo_detection_output_param { num_classes: 3 num_box: 2 coords: 5 biases: 1 "
         "biases: 1 biases: 2 biases: 2 }", [(1, 16, 3, 3)], "coords"),
    (V2, "yolo_detection_output_param { num_classes: 3 num_box: 2 biases: 1 biases: 1 "
         "biases: 2 biases: 2 }", [(1, 16, 3, 3)] * 3, "bottom"),
])
def test_bad_parameters_are_refused_naming_the_layer(type_, text, shapes, match):
    assert_refused(type_, text, shapes, match=match)


def test_edges_iou_equal_to_the_threshold_drops_and_score_equal_to_it_is_v3_strict():
    # one cell, anchors 8x8 and 16x8 px on a 2x2 map of stride 8: boxes 0.5x0.5 and 1.0x0.5
    # around the same centre, IoU exactly 0.5; both scores sigmoid(30) * sigmoid(c) in float
    x = np.full((1, 12, 2, 2), -30, np.float32)
    x[0, 0:6, 0, 0] = [0, 0, 0, 0, 30, 2]
    x[0, 6:12, 0, 0] = [0, 0, 0, 0, 30, 1]
    text = ("yolov3_detection_output_param {{ num_classes: 1 num_box: 2 confidence_threshold: "
            "{conf} nms_threshold: {nms} biases: 8 biases: 8 biases: 16 biases: 8 mask: 0 "
            "mask: 1 anchors_scale: 8 mask_group_num: 1 }}")
    assert _rows(V3, text.format(conf=0.1, nms=0.5), [x]).shape == (1, 7)  # IoU 0.5 >= 0.5
    assert _rows(V3, text.format(conf=0.1, nms=0.5001), [x]).shape == (2, 7)
    # score exactly 0.5 (sigmoid(30) is 1.0 in float, sigmoid(0) 0.5): YOLOv3 needs > 0.5
    x[0, 5, 0, 0] = 0
    x[0, 11, 0, 0] = -30
    np.testing.assert_array_equal(_rows(V3, text.format(conf=0.5, nms=0.5), [x]),
                                  [[0, -1, -1, -1, -1, -1, -1]])
    # YOLOv2 keeps a score equal to the threshold: sigmoid(30) * softmax([0, 0])[0] = 0.5
    y = np.full((1, 7, 2, 2), -30, np.float32)
    y[0, :, 1, 1] = [0, 0, 0, 0, 30, 0, 0]
    v2 = "yolo_detection_output_param { num_classes: 2 num_box: 1 confidence_threshold: 0.5 " \
         "biases: 1 biases: 1 }"
    got = _rows(V2, v2, [y])
    np.testing.assert_allclose(got, [[0, 1, 0.5, 0.5, 0.5, 1.0, 1.0]])  # first class on ties
    _assert_rows(got, yolo_ref.yolov2([y], 2, 1, [1, 1], 0.5, 0.45))
