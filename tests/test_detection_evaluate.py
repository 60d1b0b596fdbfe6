"""SSD's DetectionEvaluate against the real SSD Caffe.

The reference is the SSD-based Caffe fork built by ``make caffe-ref`` (brocolli-caffe 9.0.2,
``detection_evaluate_layer.cpp``), run in a subprocess (tests/reference/real_caffe.py). Every
comparison is of the whole top, row for row and bit for bit: the per-class positive counts, then
[image, label, score, tp, fp] per detection in Caffe's order, and the zero rows Caffe leaves at
the end.

* Random detections and ground truth (several images and classes, difficult boxes, images with
  no ground truth or only detections, rows with image -1, DetectionOutput's [image, -1, ...]
  rows for an image without detections, a ground truth list cut by a -1 item,
  a class that has no ground truth, quantised scores with many ties, more than 16 tied
  detections of one image and class so that GCC's introsort reorders them) fed through Input
  layers, with evaluate_difficult_gt true and false, two background labels and thresholds.
* An overlap exactly at the threshold, and name_size_file (boxes scaled to pixels, one image
  size per image with detections, wrapping around the list).
* A small SSD net (convolutional heads, PriorBox, Permute/Flatten/Concat, DetectionOutput,
  DetectionEvaluate) with seeded random weights written by Caffe, end to end.
* The set-up checks: what Caffe refuses, landmarknet refuses at build time with a LayerError.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import landmarknet.layers.detection_eval as detection_eval
from landmarknet.build import build_net
from landmarknet.errors import LayerError
from reference.ours import forward_blobs as ours
from reference.real_caffe import CaffeFailed, caffe_forward, caffe_load

F32 = np.float32


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f'input_param {{ shape {{ {dims} }} }} }}\n')


def eval_net(cases: dict[str, tuple[np.ndarray, np.ndarray, str]]) -> str:
    """For each case: Inputs d_<case> and g_<case> feeding DetectionEvaluate e_<case>."""
    text = ""
    for name, (det, gt, params) in cases.items():
        text += _input(f"d_{name}", det.shape) + _input(f"g_{name}", gt.shape)
        text += (f'layer {{ name: "e_{name}" type: "DetectionEvaluate" bottom: "d_{name}" '
                 f'bottom: "g_{name}" top: "e_{name}" detection_evaluate_param {{ {params} }} }}\n')
    return text


def inputs_of(cases: dict[str, tuple[np.ndarray, np.ndarray, str]]) -> dict[str, np.ndarray]:
    out = {}
    for name, (det, gt, _) in cases.items():
        out[f"d_{name}"], out[f"g_{name}"] = det, gt
    return out


def random_box(rng: np.random.Generator) -> list[float]:
    x0, y0 = rng.uniform(0.0, 0.75, 2)
    w, h = rng.uniform(0.05, 0.4, 2)
    return [x0, y0, x0 + w, y0 + h]


def jitter(rng: np.random.Generator, box, scale: float = 0.04) -> list[float]:
    return list(np.asarray(box, dtype=np.float64) + rng.normal(0, scale, 4))


def random_case(seed: int, num_classes: int, background: int, *, levels: int = 4,
                cut_ground_truth: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Detections (1, 1, D, 7) and ground truth (1, 1, G, 8) with every situation the layer
    distinguishes; scores quantised to ``levels`` steps, so most of them tie."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(num_classes) if c != background]
    with_gt = classes[:-1]  # the last class never has ground truth
    n_images = 5
    gt: list[list[float]] = []
    for image in (0, 2, 3):  # image 1 and 4: no ground truth; image 5: not even detections
        for _ in range(int(rng.integers(2, 6))):
            label = with_gt[int(rng.integers(len(with_gt)))]
            gt.append([image, label, rng.integers(0, 3), *random_box(rng),
                       float(rng.random() < 0.3)])
    gt.append([0, with_gt[0], 0, *random_box(rng), 1.0])  # image 0 class with_gt[0]: a difficult
    gt.append([0, with_gt[0], 1, *random_box(rng), 0.0])  # and a plain box
    rng.shuffle(gt)
    det: list[list[float]] = []
    for image in range(n_images):
        for label in classes:
            own = [g for g in gt if g[0] == image and g[1] == label]
            for _ in range(int(rng.integers(0, 5))):
                box = jitter(rng, own[int(rng.integers(len(own)))][3:7]) \
                    if own and rng.random() < 0.75 else random_box(rng)
                det.append([image, label, round(rng.random() * levels) / levels, *box])
    # More than 16 detections of one image and class, all near its two boxes, three scores:
    # GCC's std::sort partitions them (not stable), and which tied one matches decides tp/fp.
    own = [g for g in gt if g[0] == 0 and g[1] == with_gt[0]]
    for _ in range(40):
        box = jitter(rng, own[int(rng.integers(len(own)))][3:7], 0.06)
        det.append([0, with_gt[0], (1 + int(rng.integers(3))) / 4, *box])
    for _ in range(4):  # no detection: skipped whatever the other columns hold
        det.append([-1, background, -1, -1, -1, -1, -1])
        det.append([-1, classes[0], 0.5, *random_box(rng)])
    # DetectionOutput's row for an image that kept nothing, [image, -1, -1, ...]: a detection
    # of label -1 for this layer (a false positive of score -1).
    det.append([2, -1, -1, -1, -1, -1, -1])
    det.append([4, -1, -1, -1, -1, -1, -1])
    rng.shuffle(det)
    if cut_ground_truth:
        # GetGroundTruth stops at the first item -1: the rows after it are never read.
        gt = gt[:len(gt) // 2] + [[-1] * 8] + gt[len(gt) // 2:]
    return (np.asarray(det, dtype=F32).reshape(1, 1, -1, 7),
            np.asarray(gt, dtype=F32).reshape(1, 1, -1, 8))


RANDOM_CASES = {
    # name: (seed, num_classes, background, detection_evaluate_param, cut ground truth)
    "difficult_counted": (1, 5, 0, "overlap_threshold: 0.5 evaluate_difficult_gt: true", False),
    "difficult_ignored": (2, 5, 0, "overlap_threshold: 0.5 evaluate_difficult_gt: false", False),
    "background_2": (3, 6, 2, "overlap_threshold: 0.3 evaluate_difficult_gt: false", False),
    "defaults": (4, 4, 0, "", False),
    "threshold_0_7_cut_gt": (5, 5, 0, "overlap_threshold: 0.7", True),
    "few_levels_ignored": (6, 3, 0, "overlap_threshold: 0.4 evaluate_difficult_gt: false", False),
}


def random_cases() -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    cases = {}
    for name, (seed, c, bg, params, cut) in RANDOM_CASES.items():
        det, gt = random_case(seed, c, bg, levels=2 if "few_levels" in name else 4,
                              cut_ground_truth=cut)
        cases[name] = (det, gt, f"num_classes: {c} background_label_id: {bg} {params}")
    return cases


def stable_sort(items: list, less) -> None:
    """A stable sort with the same comparator: what the layer would do without GCC's order."""
    items.sort(key=lambda item: -item[0])


# ----------------------------------------------------------------------------------------------
# random detections and ground truth
# ----------------------------------------------------------------------------------------------

@pytest.mark.caffe_ref
def test_detection_evaluate_random_cases_against_caffe(tmp_path: Path, monkeypatch) -> None:
    cases = random_cases()
    proto = tmp_path / "eval.prototxt"
    proto.write_text(eval_net(cases))
    inputs = inputs_of(cases)
    blobs = [f"e_{n}" for n in cases]
    _, ref = caffe_forward(proto, inputs, blobs=blobs)
    got = ours(proto, inputs, blobs)
    summary = []
    for name in cases:
        r, g = ref[f"e_{name}"], got[f"e_{name}"]
        assert g.shape == r.shape, name
        np.testing.assert_array_equal(g, r, err_msg=name)
        rows = r.reshape(-1, 5)
        det, c = cases[name][0].reshape(-1, 7), RANDOM_CASES[name][1]
        n_written = (c - 1) + int((det[:, 0] != -1).sum())
        det_rows = rows[c - 1:n_written]
        tp, fp = int(det_rows[:, 3].sum()), int(det_rows[:, 4].sum())
        neither = int(((det_rows[:, 3] == 0) & (det_rows[:, 4] == 0)).sum())
        summary.append(f"{name}: {rows.shape[0]} rows, tp {tp}, fp {fp}, neither {neither}")
        # The cases must exercise what they are about.
        assert tp > 0 and fp > 0, name
        if "ignored" in name:
            assert neither > 0, name  # matches with an ignored difficult box
        assert np.all(det_rows[:, 0] >= 0), name
        assert np.all(rows[n_written:] == 0), name  # the -1 rows leave Caffe's zero rows
    print("\n".join(summary))
    # GCC's tie order matters here: a stable sort gives other rows for some case.
    monkeypatch.setattr(detection_eval, "libstdcxx_sort", stable_sort)
    stable = ours(proto, inputs, blobs)
    assert any(not np.array_equal(stable[b], ref[b]) for b in blobs)


@pytest.mark.caffe_ref
def test_detection_evaluate_overlap_at_threshold_against_caffe(tmp_path: Path) -> None:
    # IoU of [0, 0, 0.25, 1] with [0, 0, 0.5, 1] is 0.25 / 0.5 = 0.5 exactly in float32: a true
    # positive at overlap_threshold 0.5 (>=), a false positive just below it. Boxes that only
    # touch overlap 0 (a zero-width intersection), inverted boxes have size 0.
    gt = np.asarray([[0, 1, 0, 0, 0, 0.5, 1, 0], [1, 1, 0, 0, 0, 0.5, 1, 0],
                     [2, 1, 0, 0.5, 0.5, 0.6, 0.6, 0], [3, 1, 0, 0.2, 0.2, 0.4, 0.4, 0]],
                    dtype=F32).reshape(1, 1, -1, 8)
    below = float(np.nextafter(F32(0.25), F32(0)))
    det = np.asarray([[0, 1, 0.9, 0, 0, 0.25, 1], [1, 1, 0.9, 0, 0, below, 1],
                      [2, 1, 0.8, 0.6, 0.5, 0.7, 0.6], [3, 1, 0.7, 0.4, 0.4, 0.2, 0.2],
                      [3, 1, 0.7, 0.2, 0.2, 0.4, 0.4]], dtype=F32).reshape(1, 1, -1, 7)
    cases = {"at": (det, gt, "num_classes: 2 overlap_threshold: 0.5")}
    proto = tmp_path / "eval.prototxt"
    proto.write_text(eval_net(cases))
    _, ref = caffe_forward(proto, inputs_of(cases), blobs=["e_at"])
    got = ours(proto, inputs_of(cases), ["e_at"])
    np.testing.assert_array_equal(got["e_at"], ref["e_at"])
    rows = ref["e_at"].reshape(-1, 5)
    np.testing.assert_array_equal(rows[1:3, 3:], [[1, 0], [0, 1]])  # at and below


@pytest.mark.caffe_ref
def test_detection_evaluate_name_size_file_against_caffe(tmp_path: Path) -> None:
    # Boxes scaled to each image's pixels and compared as pixel boxes (sizes and intersections
    # count the end pixel). The C++ steps to the next size for each image that has detections
    # (not for images with ground truth only) and wraps around: 6 such images, 4 sizes. A 1x1
    # entry makes ScaleBBox store normalised sizes while the overlap still adds the end pixel.
    sizes = [("a", 375, 500), ("b", 1, 1), ("c", 480, 640), ("d", 300, 300)]
    (tmp_path / "sizes.txt").write_text("".join(f"{n} {h} {w}\n" for n, h, w in sizes))
    det, gt = random_case(11, 4, 0)
    # Image 7: ground truth, no detection (no step). Image 6, the sixth with detections, gets
    # the 1x1 size again: its exact match is a false positive there (the end pixel makes the
    # intersection larger than the union), a true positive with normalised boxes.
    extra_gt = np.asarray([[7, 1, 0, 0.1, 0.1, 0.3, 0.3, 0], [6, 1, 0, 0.1, 0.1, 0.4, 0.4, 0]],
                          dtype=F32).reshape(1, 1, 2, 8)
    gt = np.concatenate([gt, extra_gt], axis=2)
    det = np.concatenate([det, np.asarray([[6, 1, 0.5, 0.1, 0.1, 0.4, 0.4]], F32)
                          .reshape(1, 1, 1, 7)], axis=2)
    params = "num_classes: 4 overlap_threshold: 0.5 evaluate_difficult_gt: false"
    ref_proto, our_proto = tmp_path / "ref.prototxt", tmp_path / "ours.prototxt"
    absolute = tmp_path / "sizes.txt"
    ref_proto.write_text(eval_net({"s": (det, gt, f'{params} name_size_file: "{absolute}"')}))
    # ours: the relative name resolves beside the prototxt (Caffe would open it from its
    # working folder, which is where the absolute path points it to).
    our_proto.write_text(eval_net({"s": (det, gt, f'{params} name_size_file: "sizes.txt"')}))
    inputs = {"d_s": det, "g_s": gt}
    _, ref = caffe_forward(ref_proto, inputs, blobs=["e_s"])
    got = ours(our_proto, inputs, ["e_s"])
    np.testing.assert_array_equal(got["e_s"], ref["e_s"])
    # Without the file the flags differ: the case really depends on the scaling.
    plain = tmp_path / "plain.prototxt"
    plain.write_text(eval_net({"s": (det, gt, params)}))
    assert not np.array_equal(ours(plain, inputs, ["e_s"])["e_s"], ref["e_s"])


@pytest.mark.caffe_ref
def test_detection_evaluate_background_detection_aborts_caffe_and_is_refused(
        tmp_path: Path) -> None:
    det, gt = random_case(7, 4, 0)
    det[0, 0, 3, :2] = (2, 0)  # a detection of image 2 with the background label
    proto = tmp_path / "eval.prototxt"
    proto.write_text(eval_net({"b": (det, gt, "num_classes: 4")}))
    with pytest.raises(CaffeFailed, match="background label"):
        caffe_forward(proto, {"d_b": det, "g_b": gt}, blobs=["e_b"])
    with pytest.raises(LayerError, match="background label 0"):
        ours(proto, {"d_b": det, "g_b": gt}, ["e_b"])


# ----------------------------------------------------------------------------------------------
# a small SSD net, end to end
# ----------------------------------------------------------------------------------------------

NUM_CLASSES = 3


def ssd_net(n: int, n_gt: int) -> str:
    """Two feature maps with location and confidence heads, SSD's plumbing, DetectionOutput
    and DetectionEvaluate, as MobileNet-SSD's test net ends."""
    p = 4  # priors per cell: min, max, aspect ratio 2 and 1/2
    text = _input("data", (n, 3, 32, 32)) + _input("label", (1, 1, n_gt, 8))
    text += ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
             'convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }\n'
             'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
             'layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" '
             'convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }\n')
    sizes = {"conv1": (8, 16), "conv2": (16, 28)}
    for f, (lo, hi) in sizes.items():
        for head, k in (("loc", p * 4), ("conf", p * NUM_CLASSES)):
            text += (f'layer {{ name: "{f}_{head}" type: "Convolution" bottom: "{f}" '
                     f'top: "{f}_{head}" convolution_param {{ num_output: {k} kernel_size: 3 '
                     f'pad: 1 }} }}\n'
                     f'layer {{ name: "{f}_{head}_perm" type: "Permute" bottom: "{f}_{head}" '
                     f'top: "{f}_{head}_perm" permute_param {{ order: 0 order: 2 order: 3 '
                     f'order: 1 }} }}\n'
                     f'layer {{ name: "{f}_{head}_flat" type: "Flatten" '
                     f'bottom: "{f}_{head}_perm" top: "{f}_{head}_flat" '
                     f'flatten_param {{ axis: 1 }} }}\n')
        text += (f'layer {{ name: "{f}_prior" type: "PriorBox" bottom: "{f}" bottom: "data" '
                 f'top: "{f}_prior" prior_box_param {{ min_size: {lo} max_size: {hi} '
                 f'aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 '
                 f'variance: 0.2 variance: 0.2 offset: 0.5 }} }}\n')
    text += ('layer { name: "mbox_loc" type: "Concat" bottom: "conv1_loc_flat" '
             'bottom: "conv2_loc_flat" top: "mbox_loc" concat_param { axis: 1 } }\n'
             'layer { name: "mbox_conf" type: "Concat" bottom: "conv1_conf_flat" '
             'bottom: "conv2_conf_flat" top: "mbox_conf" concat_param { axis: 1 } }\n'
             'layer { name: "mbox_priorbox" type: "Concat" bottom: "conv1_prior" '
             'bottom: "conv2_prior" top: "mbox_priorbox" concat_param { axis: 2 } }\n'
             'layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" '
             f'top: "mbox_conf_reshape" reshape_param {{ shape {{ dim: 0 dim: -1 '
             f'dim: {NUM_CLASSES} }} }} }}\n'
             'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" '
             'top: "mbox_conf_softmax" softmax_param { axis: 2 } }\n'
             'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" '
             'top: "mbox_conf_flatten" flatten_param { axis: 1 } }\n'
             'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" '
             'bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out" '
             f'detection_output_param {{ num_classes: {NUM_CLASSES} share_location: true '
             'background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 60 } '
             'code_type: CENTER_SIZE keep_top_k: 40 confidence_threshold: 0.25 } }\n'
             'layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" '
             'bottom: "label" top: "detection_eval" detection_evaluate_param { '
             f'num_classes: {NUM_CLASSES} background_label_id: 0 overlap_threshold: 0.5 '
             'evaluate_difficult_gt: false } }\n')
    return text


@pytest.mark.caffe_ref
def test_small_ssd_net_end_to_end_against_caffe(tmp_path: Path) -> None:
    n, n_gt = 2, 14
    rng = np.random.default_rng(21)
    x = rng.normal(0, 1, (n, 3, 32, 32)).astype(F32)
    # 1. Caffe's detections with its seeded random weights, to place ground truth on them.
    first = tmp_path / "first.prototxt"
    first.write_text(ssd_net(n, 1))
    weights = tmp_path / "w.caffemodel"
    no_gt = np.full((1, 1, 1, 8), -1, F32)  # AnnotatedData's row for a batch without boxes
    _, ref1 = caffe_forward(first, {"data": x, "label": no_gt}, seed=5, save_weights=weights,
                            blobs=["detection_out"])
    dets = ref1["detection_out"].reshape(-1, 7)
    assert dets.shape[0] > 2 * n_gt
    picks = rng.choice(dets.shape[0], n_gt, replace=False)
    gt = np.zeros((n_gt, 8), F32)
    gt[:, :2] = dets[picks, :2]
    gt[:, 2] = np.arange(n_gt)
    gt[:, 3:7] = dets[picks, 3:7] + rng.normal(0, 0.03, (n_gt, 4))
    gt[:, 7] = rng.random(n_gt) < 0.25
    gt = gt.reshape(1, 1, n_gt, 8)
    # 2. The net with that ground truth, in Caffe and in landmarknet (Caffe's weights).
    proto = tmp_path / "ssd.prototxt"
    proto.write_text(ssd_net(n, n_gt))
    inputs = {"data": x, "label": gt}
    blobs = ["detection_out", "detection_eval"]
    _, ref = caffe_forward(proto, inputs, weights=weights, blobs=blobs)
    got = ours(proto, inputs, blobs, weights)
    ref_det, got_det = ref["detection_out"].reshape(-1, 7), got["detection_out"].reshape(-1, 7)
    assert got_det.shape == ref_det.shape
    np.testing.assert_array_equal(got_det[:, :2], ref_det[:, :2])
    np.testing.assert_allclose(got_det[:, 2:], ref_det[:, 2:], rtol=0, atol=2e-5)
    r, g = ref["detection_eval"], got["detection_eval"]
    assert g.shape == r.shape == (1, 1, NUM_CLASSES - 1 + ref_det.shape[0], 5)
    r2, g2 = r.reshape(-1, 5), g.reshape(-1, 5)
    np.testing.assert_array_equal(g2[:, [0, 1, 3, 4]], r2[:, [0, 1, 3, 4]])
    np.testing.assert_allclose(g2[:, 2], r2[:, 2], rtol=0, atol=2e-5)
    # Our layer on Caffe's own detections: Caffe's rows bit for bit.
    module = detection_eval.DetectionEvaluate(NUM_CLASSES, 0, 0.5, False)
    np.testing.assert_array_equal(module.evaluate(ref["detection_out"], gt), r2)
    det_rows = r2[NUM_CLASSES - 1:]
    assert det_rows[:, 3].sum() > 0 and det_rows[:, 4].sum() > 0
    # The shape at build time is Caffe's set-up shape (DetectionOutput's one-row set-up top).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(proto)
    info = next(i for i in net.layers.values() if i.node.name == "detection_eval")
    assert list(info.top_shapes[0]) == caffe_load(proto)["shapes"]["detection_eval"] \
        == [1, 1, NUM_CLASSES, 5]
    print(f"small SSD: {ref_det.shape[0]} detections, tp {int(det_rows[:, 3].sum())}, "
          f"fp {int(det_rows[:, 4].sum())}")


# ----------------------------------------------------------------------------------------------
# set-up checks, gradient
# ----------------------------------------------------------------------------------------------

def _net_text(det_shape=(1, 1, 3, 7), gt_shape=(1, 1, 2, 8), params="num_classes: 3") -> str:
    return (_input("d", det_shape) + _input("g", gt_shape)
            + 'layer { name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "e" '
              f'detection_evaluate_param {{ {params} }} }}\n')


REFUSED = {
    # name: (prototxt, what our LayerError says, whether Caffe refuses it too)
    "no_num_classes": (_net_text(params="background_label_id: 0"), "num_classes is required",
                       True),
    "threshold_zero": (_net_text(params="num_classes: 3 overlap_threshold: 0"),
                       "overlap_threshold must be > 0", True),
    "det_width_6": (_net_text(det_shape=(1, 1, 3, 6)), r"bottom 0 .* \(1, 1, D, 7\)", True),
    "det_num_2": (_net_text(det_shape=(2, 1, 3, 7)), r"bottom 0 .* \(1, 1, D, 7\)", True),
    "gt_width_7": (_net_text(gt_shape=(1, 1, 2, 7)), r"bottom 1 .* \(1, 1, G, 8\)", True),
    "gt_channels_2": (_net_text(gt_shape=(1, 2, 2, 8)), r"bottom 1 .* \(1, 1, G, 8\)", True),
    "missing_name_size_file": (_net_text(params='num_classes: 3 name_size_file: '
                                                '"/nonexistent/sizes.txt"'),
                               "name_size_file '/nonexistent/sizes.txt': no such file", True),
    # Caffe accepts this one and writes a class row past its top (a buffer overrun).
    "background_not_a_class": (_net_text(params="num_classes: 3 background_label_id: 3"),
                               "background_label_id 3 must be below num_classes", False),
}


@pytest.mark.caffe_ref
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_detection_evaluate_setup_checks(tmp_path: Path, case: str) -> None:
    text, message, caffe_refuses = REFUSED[case]
    proto = tmp_path / "bad.prototxt"
    proto.write_text(text)
    with pytest.raises(LayerError, match=message) as info:
        build_net(proto)
    assert "layer 'e' (type DetectionEvaluate)" in str(info.value)
    if caffe_refuses:
        with pytest.raises(CaffeFailed):
            caffe_load(proto)


def test_detection_evaluate_has_no_gradient(tmp_path: Path) -> None:
    # Caffe's Backward_cpu is NOT_IMPLEMENTED: the top carries no autograd history.
    proto = tmp_path / "eval.prototxt"
    det, gt = random_case(3, 4, 0)
    proto.write_text(eval_net({"a": (det, gt, "num_classes: 4")}))
    net = build_net(proto, input_shapes={"d_a": det.shape, "g_a": gt.shape})
    d = torch.from_numpy(det).requires_grad_(True)
    out = net.run({"d_a": d, "g_a": torch.from_numpy(gt)}, blobs=["e_a"])["e_a"]
    assert not out.requires_grad and out.grad_fn is None
    assert out.shape == (1, 1, 3 + det.shape[2], 5)
