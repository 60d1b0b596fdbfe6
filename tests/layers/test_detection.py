"""SSD's detection layers (landmarknet/layers/detection.py) against independent references.

References: ``reference.numpy_caffe.prior_box``, a loop re-implementation of
detection_output_layer.cpp + bbox_util.cpp written here, and boxes worked out by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layers.checker import (assert_close, assert_refused, build_layer, check_layer, layer_spec,
                            run_layer, seeded, to_numpy)
from reference import numpy_caffe as R


# ----------------------------------------------------------------------------------------------
# PriorBox
# ----------------------------------------------------------------------------------------------

PRIORBOXES = [
    ("min_size: 30", dict(min_size=[30])),
    ("min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 clip: true variance: 0.1 "
     "variance: 0.1 variance: 0.2 variance: 0.2",
     dict(min_size=[30], max_size=[60], aspect_ratio=[2, 3], clip=True,
          variance=[0.1, 0.1, 0.2, 0.2])),
    ("min_size: 21.7 aspect_ratio: 2 aspect_ratio: 2 aspect_ratio: 0.5 flip: false step: 8 "
     "offset: 0.25", dict(min_size=[21.7], aspect_ratio=[2, 2, 0.5], flip=False, step=8,
                          offset=0.25)),
    ("min_size: 20 max_size: 50.9 aspect_ratio: 2 img_size: 300 variance: 0.2",
     dict(min_size=[20], max_size=[50.9], aspect_ratio=[2], img_size=300, variance=[0.2])),
    ("min_size: 16 img_h: 90 img_w: 120 step_h: 9 step_w: 11 aspect_ratio: 1.5",
     dict(min_size=[16], img_h=90, img_w=120, step_h=9, step_w=11, aspect_ratio=[1.5])),
]


@pytest.mark.parametrize("text,kw", PRIORBOXES)
def test_prior_box(text: str, kw: dict) -> None:
    feat = np.zeros((1, 8, 5, 6), np.float32)
    img = np.zeros((1, 3, 80, 100), np.float32)
    (y,), _, _ = run_layer("PriorBox", f"prior_box_param {{ {text} }}", [feat, img])
    if kw.get("max_size") and kw.get("aspect_ratio"):
        # SSD's master prior_box_layer.cpp orders each cell's priors [min, sqrt(min*max),
        # ratios...] and sizes the ratio boxes from min_size alone; compose that from two
        # reference calls, one without ratios and one without max sizes.
        no_ar = {k: v for k, v in kw.items() if k not in ("aspect_ratio", "flip")}
        no_max = {k: v for k, v in kw.items() if k != "max_size"}
        a = R.prior_box(feat, img, **no_ar).reshape(2, 30, -1, 4)
        b = R.prior_box(feat, img, **no_max).reshape(2, 30, -1, 4)
        ref = np.concatenate([a, b[:, :, 1:]], axis=2).reshape(1, 2, -1)
    else:
        ref = R.prior_box(feat, img, **kw)
    assert y.shape == ref.shape
    assert_close(y, ref, rtol=1e-6, atol=1e-7)


def test_prior_box_layout_by_hand() -> None:
    # One 1x2 feature map on a 100x100 image, min 20, max 80, ratio 2: 4 priors per cell in
    # the order min, sqrt(min*max), ratio 2, ratio 1/2; centres at (25, 50) and (75, 50).
    feat = np.zeros((1, 1, 1, 2), np.float32)
    img = np.zeros((1, 3, 100, 100), np.float32)
    (y,), _, _ = run_layer("PriorBox", "prior_box_param { min_size: 20 max_size: 80 "
                                       "aspect_ratio: 2 }", [feat, img])
    assert tuple(y.shape) == (1, 2, 2 * 4 * 4)
    boxes = to_numpy(y)[0, 0].reshape(2, 4, 4)
    s2 = math.sqrt(2)
    assert_close(boxes[0, 0], [0.15, 0.4, 0.35, 0.6])  # 20 x 20 at (25, 50)
    assert_close(boxes[0, 1], [0.05, 0.3, 0.45, 0.7])  # sqrt(20 * 80) = 40
    assert_close(boxes[1, 2], [(75 - 10 * s2) / 100, (50 - 10 / s2) / 100,  # 20*sqrt2 x 20/sqrt2
                               (75 + 10 * s2) / 100, (50 + 10 / s2) / 100])
    assert_close(boxes[1, 3], [(75 - 10 / s2) / 100, (50 - 10 * s2) / 100,  # flipped: ratio 1/2
                               (75 + 10 / s2) / 100, (50 + 10 * s2) / 100])
    assert_close(to_numpy(y)[0, 1], np.full(32, 0.1, np.float32))


def test_prior_box_bad_parameters() -> None:
    shapes = [(1, 8, 5, 6), (1, 3, 80, 100)]
    for text, match in [("", "min_size is required"),
                        ("min_size: 30 max_size: 20", "greater than min_size"),
                        ("min_size: 30 variance: 0.1 variance: 0.2", "1 or 4 variances"),
                        ("min_size: 30 img_size: 30 img_h: 30 img_w: 30", "not both"),
                        ("min_size: 30 step_h: 8", "step_h and step_w")]:
        assert_refused("PriorBox", f"prior_box_param {{ {text} }}", shapes, match=match)


# ----------------------------------------------------------------------------------------------
# DetectionOutput
# ----------------------------------------------------------------------------------------------

def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """JaccardOverlap (bbox_util.cpp) for normalised boxes, in float32."""
    f = np.float32
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = f(min(a[2], b[2]) - max(a[0], b[0]))
    ih = f(min(a[3], b[3]) - max(a[1], b[1]))
    if not (iw > 0 and ih > 0):
        return 0.0

    def size(z):
        return f(0) if z[2] < z[0] or z[3] < z[1] else f(f(z[2] - z[0]) * f(z[3] - z[1]))
    inter = f(iw * ih)
    return float(f(inter / f(f(size(a) + size(b)) - inter)))


def _detection_output_ref(loc, conf, prior, *, num_classes, share_location=True,
                          background=0, code="CENTER_SIZE", var_in_target=False,
                          nms_threshold=0.45, top_k=-1, keep_top_k=-1, conf_threshold=None):
    """detection_output_layer.cpp Forward_cpu + bbox_util.cpp, written as plain loops."""
    f = np.float32
    n = loc.shape[0]
    num_priors = prior.shape[2] // 4
    n_loc = 1 if share_location else num_classes
    pri = prior.reshape(2, num_priors, 4)
    loc = loc.reshape(n, num_priors, n_loc, 4)
    conf = conf.reshape(n, num_priors, num_classes)
    thr = -np.finfo(np.float32).max if conf_threshold is None else conf_threshold

    def decode(p, v, b):
        if var_in_target:
            v = np.ones(4, np.float32)
        if code == "CORNER":
            return np.array([p[0] + v[0] * b[0], p[1] + v[1] * b[1], p[2] + v[2] * b[2],
                             p[3] + v[3] * b[3]], np.float32)
        pw, ph = f(p[2] - p[0]), f(p[3] - p[1])
        pcx, pcy = f(f(p[0] + p[2]) / 2), f(f(p[1] + p[3]) / 2)
        cx = f(f(f(v[0] * b[0]) * pw) + pcx)
        cy = f(f(f(v[1] * b[1]) * ph) + pcy)
        w = f(np.exp(f(v[2] * b[2])) * pw)
        h = f(np.exp(f(v[3] * b[3])) * ph)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)

    rows = []
    for i in range(n):
        boxes = {c: [decode(pri[0, p], pri[1, p], loc[i, p, c]) for p in range(num_priors)]
                 for c in range(n_loc)}
        indices = {}
        for c in range(num_classes):
            if c == background:
                continue
            bb = boxes[0 if share_location else c]
            scores = conf[i, :, c]
            cand = [(scores[p], p) for p in range(num_priors) if scores[p] > thr]
            cand.sort(key=lambda sp: -sp[0])  # Python's sort is stable like std::stable_sort
            if top_k > -1:
                cand = cand[:top_k]
            kept = []
            for _, p in cand:
                if all(_iou(bb[p], bb[k]) <= f(nms_threshold) for k in kept):
                    kept.append(p)
            indices[c] = kept
        if keep_top_k > -1 and sum(map(len, indices.values())) > keep_top_k:
            pairs = sorted(((conf[i, p, c], c, p) for c in sorted(indices) for p in indices[c]),
                           key=lambda t: -t[0])[:keep_top_k]
            indices = {}
            for _, c, p in pairs:
                indices.setdefault(c, []).append(p)
        for c in sorted(indices):
            for p in indices[c]:
                rows.append([i, c, conf[i, p, c], *boxes[0 if share_location else c][p]])
    if not rows:
        return np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(n)], np.float32)[None, None]
    return np.asarray(rows, np.float32)[None, None]


def _ssd_inputs(rng, n, num_priors, num_classes, n_loc):
    centres = rng.uniform(0.2, 0.8, (num_priors, 2))
    sizes = rng.uniform(0.1, 0.4, (num_priors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (num_priors, 1))
    prior = np.stack([boxes.reshape(-1), var.reshape(-1)]).reshape(1, 2, -1).astype(np.float32)
    loc = rng.normal(0, 1, (n, num_priors * n_loc * 4)).astype(np.float32)
    logits = rng.normal(0, 2, (n, num_priors, num_classes))
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return loc, conf.reshape(n, -1).astype(np.float32), prior


@pytest.mark.parametrize("text,kw", [
    ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 } confidence_threshold: 0.05",
     dict(conf_threshold=0.05)),
    ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.3 top_k: 10 } keep_top_k: 7 "
     "confidence_threshold: 0.01", dict(nms_threshold=0.3, top_k=10, keep_top_k=7,
                                        conf_threshold=0.01)),
    ("code_type: CENTER_SIZE variance_encoded_in_target: true share_location: false "
     "background_label_id: 2 nms_param { nms_threshold: 0.5 } confidence_threshold: 0.1",
     dict(var_in_target=True, share_location=False, background=2, nms_threshold=0.5,
          conf_threshold=0.1)),
    ("nms_param { nms_threshold: 0.45 } confidence_threshold: 0.1",
     dict(code="CORNER", conf_threshold=0.1)),
])
def test_detection_output_against_loop_reference(text: str, kw: dict) -> None:
    rng = seeded(23)
    num_priors, num_classes = 40, 4
    n_loc = 1 if kw.get("share_location", True) else num_classes
    loc, conf, prior = _ssd_inputs(rng, 2, num_priors, num_classes, n_loc)
    (y,), _, _ = run_layer("DetectionOutput",
                           f"detection_output_param {{ num_classes: {num_classes} {text} }}",
                           [loc, conf, prior])
    ref = _detection_output_ref(loc, conf, prior, num_classes=num_classes, **kw)
    assert y.shape == ref.shape and ref.shape[2] > 2
    assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_detection_output_nms_and_empty_result_by_hand() -> None:
    # Two priors that overlap with IoU 0.08 / 0.24 = 1/3 (offsets 0): the weaker one is
    # suppressed at nms_threshold 0.3 and kept at 0.45. Class 0 is background.
    prior = np.array([[0.1, 0.1, 0.5, 0.5, 0.3, 0.1, 0.7, 0.5]], np.float32)
    prior = np.stack([prior[0], np.full(8, 0.1, np.float32)]).reshape(1, 2, 8)
    loc = np.zeros((1, 8), np.float32)
    conf = np.array([[0.1, 0.9, 0.3, 0.7]], np.float32)  # prior 0: 0.9, prior 1: 0.7 (class 1)
    text = "detection_output_param { num_classes: 2 code_type: CENTER_SIZE nms_param { " \
           "nms_threshold: %s } }"
    check_layer("DetectionOutput", text % "0.3", [loc, conf, prior],
                [[[[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5]]]])
    check_layer("DetectionOutput", text % "0.45", [loc, conf, prior],
                [[[[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 1, 0.7, 0.3, 0.1, 0.7, 0.5]]]])
    # Nothing above the threshold: one row of -1 per image, with the image index.
    loc2, conf2 = np.zeros((2, 8), np.float32), np.tile(conf, (2, 1))
    (y,), _, _ = run_layer("DetectionOutput", "detection_output_param { num_classes: 2 "
                           "confidence_threshold: 0.95 }", [loc2, conf2, prior])
    assert_close(y, [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]])


def test_detection_output_declares_caffes_setup_shape_and_checks_bottoms() -> None:
    spec = layer_spec("DetectionOutput", "detection_output_param { num_classes: 3 }",
                      [(2, 40), (2, 30), (1, 2, 40)])
    built, meta_shapes = build_layer(spec)
    assert meta_shapes == [(1, 1, 1, 7)]
    out = built.module(*[torch.empty(s, device="meta") for s in spec.bottom_shapes])
    assert out.device.type == "meta" and tuple(out.shape) == (1, 1, 1, 7)
    assert_refused("DetectionOutput", "detection_output_param { }", spec.bottom_shapes,
                   match="num_classes")
    assert_refused("DetectionOutput", "detection_output_param { num_classes: 4 }",
                   spec.bottom_shapes, match="confidences")
    assert_refused("DetectionOutput",
                   "detection_output_param { num_classes: 3 share_location: false }",
                   spec.bottom_shapes, match="locations")
    assert_refused("DetectionOutput",
                   "detection_output_param { num_classes: 3 nms_param { eta: 0 } }",
                   spec.bottom_shapes, match="eta")
