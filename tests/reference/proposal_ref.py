"""A loop-for-loop numpy restatement of py-faster-rcnn's proposal layer (TEST path), written
from the facts of rbgirshick/py-faster-rcnn in our own words, for tests/layers/test_proposal.py.

- anchors: lib/rpn/generate_anchors.py (reference window (0, 0, base - 1, base - 1); per ratio
  the width round(sqrt(w * h / ratio)) and height round(width * ratio), np.round = half to
  even; per scale those times the scale; corners centre -/+ (size - 1) / 2; ratio outer);
- lib/rpn/proposal_layer.py forward: shifts (x * stride, y * stride) for every cell, y outer and
  x inner, each cell's A anchors in a row (index (h * W + w) * A + a); foreground scores are the
  last A of the 2A channels; deltas (1, 4A, H, W) read as (h, w, a) rows of 4;
- lib/fast_rcnn/bbox_transform.py: bbox_transform_inv (+1 widths, centre + 0.5 * width,
  exp of the size deltas) and clip_boxes (to width - 1 / height - 1 of im_info);
- _filter_boxes: both sides (x2 - x1 + 1) >= min_size * im_info[2];
- sort descending, cut to pre_nms_topn, NMS (lib/nms: its own descending sort, +1 areas,
  suppression when the overlap is > the threshold, as the default GPU NMS and py_cpu_nms
  do), cut to post_nms_topn; rows [0, x1, y1, x2, y2] and scores.

The caffe blobs are float32, so every box quantity is an np.float32 here with one rounding per
operation, as numpy's float32 arrays give. Two deliberate choices, shared with landmarknet:
exp is float64 rounded to float32 (numpy's own float32 exp differs from that in the last bit,
differently across numpy versions and CPUs), and the sort is ``kind`` (default "stable"; the
original's numpy default quicksort leaves equal scores in an order that depends on numpy and the
CPU). Nothing here imports landmarknet.
"""
from __future__ import annotations

import math

import numpy as np

F32 = np.float32
#: fast_rcnn/config.py TEST: RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE
TEST_CFG = (6000, 300, 0.7, 16)


def anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32),
            rounding: str = "half_even") -> np.ndarray:
    """generate_anchors: (A, 4) float64. ``rounding="half_up"`` rounds the ratio sizes as
    OpenCV's Proposal does (floor(x + 0.5)), for the test that shows where the two differ."""
    rnd = np.round if rounding == "half_even" else (lambda v: math.floor(v + 0.5))
    rows = []
    x1 = y1 = 0.0
    x2 = y2 = float(base_size - 1)
    w, h = x2 - x1 + 1, y2 - y1 + 1
    cx, cy = x1 + 0.5 * (w - 1), y1 + 0.5 * (h - 1)
    for ratio in ratios:
        size_ratio = (w * h) / float(ratio)
        ws = float(rnd(np.sqrt(size_ratio)))
        hs = float(rnd(ws * float(ratio)))
        ratio_box = (cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1),
                     cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1))
        rw = ratio_box[2] - ratio_box[0] + 1
        rh = ratio_box[3] - ratio_box[1] + 1
        rcx = ratio_box[0] + 0.5 * (rw - 1)
        rcy = ratio_box[1] + 0.5 * (rh - 1)
        for scale in scales:
            sw, sh = rw * float(scale), rh * float(scale)
            rows.append((rcx - 0.5 * (sw - 1), rcy - 0.5 * (sh - 1),
                         rcx + 0.5 * (sw - 1), rcy + 0.5 * (sh - 1)))
    return np.array(rows, np.float64)


def _order(scores: np.ndarray, kind: str, tie_order: str = "descending") -> np.ndarray:
    """scores.argsort()[::-1] with the given numpy sort kind; ``tie_order="ascending"`` sorts
    -scores stably instead (equal scores in ascending index, as a C++ std::stable_sort with a
    '>' comparator leaves them): a different tie rule, to show that a test's ties matter."""
    if tie_order == "ascending":
        return np.argsort(-scores, kind="stable")
    return np.argsort(scores, kind=kind)[::-1]


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, kind: str = "stable",
        tie_order: str = "descending") -> list[int]:
    """Greedy NMS as lib/nms: its own descending sort, then box by box (as py_cpu_nms, one
    numpy float32 step over the remaining boxes per kept box)."""
    order = _order(scores, kind, tie_order)
    x1, y1, x2, y2 = (boxes[:, i].astype(F32) for i in range(4))
    areas = (x2 - x1 + F32(1)) * (y2 - y1 + F32(1))
    thr = F32(thresh)
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + F32(1))
        h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + F32(1))
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        assert overlap.dtype == F32
        order = rest[~(overlap > thr)]
    return keep


def proposals(cls_prob: np.ndarray, bbox_pred: np.ndarray, im_info: np.ndarray, *,
              feat_stride: int = 16, scales=(8, 16, 32), ratios=(0.5, 1, 2),
              cfg=TEST_CFG, base_size: int = 16, kind: str = "stable",
              tie_order: str = "descending", rounding: str = "half_even"):
    """(rois (R, 5) float32, scores (R, 1) float32) as the TEST forward computes them."""
    pre_nms, post_nms, nms_thresh, min_size = cfg
    base = anchors(base_size, ratios, scales, rounding)
    n_anchors = len(base)
    assert cls_prob.shape[0] == 1 and cls_prob.shape[1] == 2 * n_anchors
    height, width = cls_prob.shape[2], cls_prob.shape[3]
    info = np.asarray(im_info, F32).reshape(-1)
    boxes, scores = [], []
    for y in range(height):
        for x in range(width):
            for a in range(n_anchors):
                # the shifted anchor: float64 + int shift, then the cast to float32
                ax1, ay1, ax2, ay2 = (F32(base[a, 0] + x * feat_stride),
                                      F32(base[a, 1] + y * feat_stride),
                                      F32(base[a, 2] + x * feat_stride),
                                      F32(base[a, 3] + y * feat_stride))
                dx, dy, dw, dh = (F32(bbox_pred[0, 4 * a + k, y, x]) for k in range(4))
                aw = F32(F32(ax2 - ax1) + F32(1))
                ah = F32(F32(ay2 - ay1) + F32(1))
                cx = F32(ax1 + F32(F32(0.5) * aw))
                cy = F32(ay1 + F32(F32(0.5) * ah))
                px = F32(F32(dx * aw) + cx)
                py = F32(F32(dy * ah) + cy)
                pw = F32(F32(math.exp(float(dw))) * aw)
                ph = F32(F32(math.exp(float(dh))) * ah)
                box = [F32(px - F32(F32(0.5) * pw)), F32(py - F32(F32(0.5) * ph)),
                       F32(px + F32(F32(0.5) * pw)), F32(py + F32(F32(0.5) * ph))]
                x_hi, y_hi = F32(info[1] - F32(1)), F32(info[0] - F32(1))
                for k, hi in enumerate((x_hi, y_hi, x_hi, y_hi)):
                    box[k] = max(min(box[k], hi), F32(0))
                boxes.append(box)
                scores.append(F32(cls_prob[0, n_anchors + a, y, x]))
    boxes = np.array(boxes, F32).reshape(-1, 4)
    scores = np.array(scores, F32)
    least = F32(F32(min_size) * info[2])
    keep = [i for i in range(len(boxes))
            if F32(F32(boxes[i, 2] - boxes[i, 0]) + F32(1)) >= least
            and F32(F32(boxes[i, 3] - boxes[i, 1]) + F32(1)) >= least]
    boxes, scores = boxes[keep], scores[keep]
    order = _order(scores, kind, tie_order)
    if pre_nms > 0:
        order = order[:pre_nms]
    boxes, scores = boxes[order], scores[order]
    kept = nms(boxes, scores, nms_thresh, kind, tie_order) if len(boxes) else []
    if post_nms > 0:
        kept = kept[:post_nms]
    boxes, scores = boxes[kept].reshape(-1, 4), scores[kept]
    rois = np.hstack([np.zeros((len(boxes), 1), F32), boxes]).astype(F32)
    return rois, scores.reshape(-1, 1)
