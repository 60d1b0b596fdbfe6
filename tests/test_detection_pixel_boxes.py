"""DetectionOutput with OpenCV's ``normalized_bbox: false`` (pixel boxes), against OpenCV DNN.

Only OpenCV defines the field (the Faster R-CNN / R-FCN prototxts of its test data end with such
a DetectionOutput, the Proposal layer's ROIs reshaped to (1, 1, 4R) as priors). So the reference
is OpenCV 4.x in a subprocess (tests/opencv_ref.py) on small nets of our own whose Input layers
feed the DetectionOutput directly. OpenCV orders its rows by score across classes and pads them
with zeros to keep_top_k per image; the rows are compared as sorted sets, padding dropped.
A few facts are also checked by hand (the +1 pixel in decoding and in the overlap).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.errors import LayerError

F32 = np.float32
W, H = 200, 150  # the image the clip cases bound the boxes to


def det_prototxt(n: int, rois: int, num_classes: int, n_loc: int, prior_channels: int,
                 params: str, image: bool = False) -> str:
    """Input layers (loc, conf, prior[, image]) feeding one DetectionOutput."""
    text = (
        f'layer {{ name: "loc" type: "Input" top: "loc" input_param {{ shape {{ dim: {n} '
        f'dim: {rois * n_loc * 4} }} }} }}\n'
        f'layer {{ name: "conf" type: "Input" top: "conf" input_param {{ shape {{ dim: {n} '
        f'dim: {rois * num_classes} }} }} }}\n'
        f'layer {{ name: "prior" type: "Input" top: "prior" input_param {{ shape {{ dim: 1 '
        f'dim: {prior_channels} dim: {rois * 4} }} }} }}\n')
    bottoms = 'bottom: "loc" bottom: "conf" bottom: "prior" '
    if image:
        text += (f'layer {{ name: "image" type: "Input" top: "image" input_param {{ shape {{ '
                 f'dim: 1 dim: 3 dim: {H} dim: {W} }} }} }}\n')
        bottoms += 'bottom: "image" '
    return text + (f'layer {{ name: "det" type: "DetectionOutput" {bottoms}top: "det" '
                   f'detection_output_param {{ normalized_bbox: false {params} }} }}\n')


def det_inputs(rng: np.random.Generator, n: int, rois: int, num_classes: int, n_loc: int,
               variances: bool, loc_scale: float = 0.3, levels: int = 0) -> dict[str, np.ndarray]:
    """ROIs in pixels inside a W x H image, offsets, softmax scores (quantised to ``levels``
    steps: ties; else continuous)."""
    x0 = rng.uniform(0, W * 0.8, rois)
    y0 = rng.uniform(0, H * 0.8, rois)
    x1 = np.minimum(x0 + rng.uniform(4, W * 0.5, rois), W - 1)
    y1 = np.minimum(y0 + rng.uniform(4, H * 0.5, rois), H - 1)
    boxes = np.stack([x0, y0, x1, y1], 1).reshape(-1)
    if variances:
        var = np.tile(rng.uniform(0.1, 0.3, 4), rois)
        prior = np.stack([boxes, var]).reshape(1, 2, -1)
    else:
        prior = boxes.reshape(1, 1, -1)
    loc = rng.normal(0, loc_scale, (n, rois * n_loc * 4))
    logits = rng.normal(0, 2.0, (n, rois, num_classes))
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if levels:
        conf = np.round(conf * levels) / levels
    return {"loc": loc.astype(F32), "conf": conf.reshape(n, -1).astype(F32),
            "prior": prior.astype(F32)}


def ours(proto: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(proto, input_shapes={k: v.shape for k, v in inputs.items()})
    with torch.no_grad():
        return net.run(inputs, blobs=["det"])["det"].numpy().reshape(-1, 7)


def opencv(proto: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    opencv_ref = pytest.importorskip("opencv_ref")
    try:
        ref = opencv_ref.run_opencv(proto, None, inputs, ["det"])["det"].reshape(-1, 7)
    except opencv_ref.OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    return ref[np.any(ref != 0, axis=1)]  # OpenCV pads with all-zero rows


def as_set(rows: np.ndarray) -> np.ndarray:
    rows = rows[rows[:, 1] >= 0]  # our "no detection" row is [i, -1, ...]
    order = np.lexsort((rows[:, 6], rows[:, 5], rows[:, 4], rows[:, 3], -rows[:, 2],
                        rows[:, 1], rows[:, 0]))
    return rows[order]


CASES = {
    # name: (params, batch, rois, classes, share_location, variances in the prior blob, image,
    #        score levels: ties)
    "frcnn_like": ("num_classes: 5 share_location: false background_label_id: 0 "
                   "code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 60 "
                   "confidence_threshold: 0.05 nms_param { nms_threshold: 0.3 }",
                   2, 80, 5, False, False, False, 0),
    "clip": ("num_classes: 4 share_location: false background_label_id: 0 "
             "code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 100 "
             "confidence_threshold: 0.02 clip: true nms_param { nms_threshold: 0.4 top_k: 50 }",
             1, 80, 4, False, False, True, 0),
    "image_without_clip": ("num_classes: 4 share_location: false background_label_id: 0 "
                           "code_type: CENTER_SIZE variance_encoded_in_target: true "
                           "keep_top_k: 100 confidence_threshold: 0.02 "
                           "nms_param { nms_threshold: 0.4 }", 1, 80, 4, False, False, True, 0),
    "variances_shared_locations": ("num_classes: 3 share_location: true background_label_id: 0 "
                                   "code_type: CENTER_SIZE keep_top_k: 40 "
                                   "confidence_threshold: 0.05 nms_param { nms_threshold: 0.45 }",
                                   1, 60, 3, True, True, False, 0),
    "corner": ("num_classes: 4 share_location: false background_label_id: 0 code_type: CORNER "
               "variance_encoded_in_target: true keep_top_k: 50 confidence_threshold: 0.05 "
               "clip: true nms_param { nms_threshold: 0.3 }", 1, 60, 4, False, False, True, 0),
    "one_class_limit": ("num_classes: 2 share_location: false background_label_id: 0 "
                        "code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 7 "
                        "nms_param { nms_threshold: 0.5 }", 2, 60, 2, False, False, False, 0),
    "no_threshold_no_background": ("num_classes: 3 share_location: false "
                                   "background_label_id: -1 code_type: CENTER_SIZE "
                                   "variance_encoded_in_target: true keep_top_k: 30 "
                                   "nms_param { nms_threshold: 0.3 top_k: 20 }",
                                   1, 40, 3, False, False, False, 0),
    # Tied scores: which tied pair survives keep_top_k follows OpenCV's sorts, std::sort below
    # 8 * keep_top_k pairs and std::partial_sort from there (and, with one scored class, NMS
    # stopping at keep_top_k boxes).
    "ties_partial_sort": ("num_classes: 6 share_location: false background_label_id: 0 "
                          "code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 10 "
                          "confidence_threshold: 0.01 nms_param { nms_threshold: 0.6 }",
                          2, 150, 6, False, False, False, 6),
    "ties_full_sort": ("num_classes: 6 share_location: false background_label_id: 0 "
                       "code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 45 "
                       "confidence_threshold: 0.01 nms_param { nms_threshold: 0.6 }",
                       1, 150, 6, False, False, False, 6),
    "ties_one_class": ("num_classes: 2 share_location: false background_label_id: 0 "
                       "code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 20 "
                       "nms_param { nms_threshold: 0.7 }", 2, 120, 2, False, False, False, 4),
}


def tied_at_cut(rows: np.ndarray) -> bool:
    """Whether an image's lowest kept score is shared by another kept row (a tie at the cut)."""
    for i in np.unique(rows[:, 0]):
        sc = rows[rows[:, 0] == i, 2]
        if np.sum(sc == sc.min()) > 1:
            return True
    return False


@pytest.mark.parametrize("case", sorted(CASES))
def test_pixel_boxes_against_opencv(tmp_path: Path, case: str) -> None:
    params, n, rois, num_classes, share, variances, image, levels = CASES[case]
    n_loc = 1 if share else num_classes
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(n, rois, num_classes, n_loc, 2 if variances else 1, params,
                                  image))
    inputs = det_inputs(np.random.default_rng(len(case)), n, rois, num_classes, n_loc,
                        variances, loc_scale=0.8 if "clip" in params else 0.3, levels=levels)
    if image:
        inputs["image"] = np.zeros((1, 3, H, W), F32)
    got, ref = as_set(ours(proto, inputs)), as_set(opencv(proto, inputs))
    assert ref.shape[0] > 3, "the case must produce detections"
    assert got.shape == ref.shape, f"{got.shape[0]} rows, OpenCV {ref.shape[0]}"
    np.testing.assert_array_equal(got, ref)
    if "clip: true" in params:
        assert got[:, 3:].min() >= 0 and got[:, [3, 5]].max() <= W - 1
        assert got[:, [4, 6]].max() <= H - 1
        assert np.any(got[:, [3, 5]] == W - 1) or np.any(got[:, [4, 6]] == H - 1)
    if levels:
        assert tied_at_cut(ref)  # the case is about ties: make sure the cut splits some
    if case == "one_class_limit":
        assert np.all(np.bincount(got[:, 0].astype(int)) == 7)


def test_zero_offsets_decode_to_the_roi_plus_one_pixel(tmp_path: Path) -> None:
    # CENTER_SIZE on pixel boxes: the prior is x1 - x0 + 1 wide and centred at x0 + w / 2, and
    # the decoded corners are centre -/+ w / 2, so zero offsets give (x0, y0, x1 + 1, y1 + 1).
    rois = np.asarray([[10, 20, 50, 60], [100, 30, 130, 90]], F32)
    inputs = {"loc": np.zeros((1, 2 * 2 * 4), F32),
              "conf": np.asarray([[0.2, 0.8, 0.1, 0.9]], F32),
              "prior": rois.reshape(1, 1, -1)}
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(1, 2, 2, 2, 1, "num_classes: 2 share_location: false "
                                  "background_label_id: 0 code_type: CENTER_SIZE "
                                  "variance_encoded_in_target: true keep_top_k: 10 "
                                  "nms_param { nms_threshold: 0.3 }"))
    got = as_set(ours(proto, inputs))
    np.testing.assert_array_equal(got[:, 3:], rois[[1, 0]] + [0, 0, 1, 1])
    np.testing.assert_array_equal(as_set(opencv(proto, inputs)), got)


def test_edge_touching_boxes_overlap_by_one_pixel(tmp_path: Path) -> None:
    # Pixel boxes count their end pixels: (0, 0, 4, 4) and (4, 0, 8, 4) share the column x = 4,
    # an overlap of 5 / (25 + 25 - 5) = 0.111 (0 for normalised boxes), so NMS at 0.1 drops the
    # weaker box and at 0.12 keeps both. (5, 0, 9, 4) does not touch the first box.
    rois = np.asarray([[0, 0, 4, 4], [4, 0, 8, 4], [20, 0, 24, 4], [25, 0, 29, 4]], F32)
    inputs = {"loc": np.zeros((1, 4 * 4), F32),
              "conf": np.asarray([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]], F32),
              "prior": rois.reshape(1, 1, -1)}
    for thr, kept in ((0.1, 3), (0.12, 4)):
        proto = tmp_path / f"det{thr}.prototxt"
        proto.write_text(det_prototxt(1, 4, 2, 1, 1, "num_classes: 2 share_location: true "
                                      "background_label_id: 0 code_type: CORNER "
                                      "variance_encoded_in_target: true keep_top_k: 10 "
                                      f"nms_param {{ nms_threshold: {thr} }}"))
        got = as_set(ours(proto, inputs))
        assert got.shape[0] == kept
        np.testing.assert_array_equal(as_set(opencv(proto, inputs)), got)


@pytest.mark.parametrize("params, prior_channels, image, message", [
    ("code_type: CENTER_SIZE variance_encoded_in_target: true clip: true", 1, False,
     "fourth bottom"),
    ("code_type: CORNER_SIZE variance_encoded_in_target: true", 1, False, "CORNER_SIZE"),
    ("code_type: CENTER_SIZE", 1, False, "(1, 2, 4*P)"),
    ("code_type: CENTER_SIZE variance_encoded_in_target: true", 2, False, "(1, 1, 4*P)"),
    ("code_type: CENTER_SIZE variance_encoded_in_target: true nms_param { nms_threshold: 0.3 "
     "eta: 0.9 }", 1, False, "eta"),
])
def test_pixel_boxes_refusals(tmp_path: Path, params: str, prior_channels: int, image: bool,
                              message: str) -> None:
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(1, 3, 2, 1, prior_channels, "num_classes: 2 "
                                  "background_label_id: 0 keep_top_k: 5 " + params, image))
    with pytest.raises(LayerError, match=r"detection_out|det") as err:
        build_net(proto)
    assert message in str(err.value)


def test_libstdcxx_partial_sort_keeps_the_smallest_in_order() -> None:
    from landmarknet.layers.detection import libstdcxx_partial_sort
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 5, 17, 100):
        for middle in sorted({0, 1, n // 3, n}):
            vals = rng.integers(0, 5, n).tolist()
            items = [(v, i) for i, v in enumerate(vals)]
            libstdcxx_partial_sort(items, middle, lambda a, b: a[0] < b[0])
            assert sorted(i for _, i in items) == list(range(n))  # a permutation
            assert [v for v, _ in items[:middle]] == sorted(vals)[:middle]
