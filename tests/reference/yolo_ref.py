"""A scalar restatement of eric612/MobileNet-YOLO's YOLO detection heads, loop for loop.

Written from the fork's Forward_cpu of ``yolo_detection_output_layer.cpp`` (YOLOv2) and
``yolov3_detection_output_layer.cpp`` (YOLOv3), ``get_region_box`` (bbox_util.cpp) and their
ApplyNms / box_iou helpers: flat indexing into the bottom as the C++ does it, one candidate
pushed at a time, every float step rounded to float32 (double where the C++ uses double).
The score sort is a stable descending sort: libstdc++'s std::sort is an insertion sort (stable)
up to 16 elements, and the tests keep scores distinct or the lists that short.
"""
from __future__ import annotations

import math

import numpy as np

F = np.float32


def _sigmoid(x) -> np.float32:
    return F(1.0 / (1.0 + math.exp(-float(x))))


def _nms(preds: list[dict], threshold: float) -> list[int]:
    """ApplyNms: drop j > i (i not dropped) when box_iou(i, j) >= threshold."""
    dropped = set()
    thr = F(threshold)
    for i in range(len(preds) - 1):
        if i in dropped:
            continue
        for j in range(i + 1, len(preds)):
            if j in dropped:
                continue
            a, b = preds[i], preds[j]

            def overlap(x1, w1, x2, w2):
                l1, l2 = F(x1 - w1 / F(2)), F(x2 - w2 / F(2))
                r1, r2 = F(x1 + w1 / F(2)), F(x2 + w2 / F(2))
                return F(min(r1, r2) - max(l1, l2))

            w = overlap(a["x"], a["w"], b["x"], b["w"])
            h = overlap(a["y"], a["h"], b["y"], b["h"])
            inter = F(0) if (w < 0 or h < 0) else F(w * h)
            union = F(F(F(a["w"] * a["h"]) + F(b["w"] * b["h"])) - inter)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = F(inter / union)
            if iou >= thr:
                dropped.add(j)
    return [i for i in range(len(preds)) if i not in dropped]


def _top(preds: list[dict], nms_threshold: float, num: int) -> np.ndarray:
    preds = sorted(preds, key=lambda p: -float(p["conf"]))  # stable: see the module docstring
    keep = _nms(preds, nms_threshold) if preds else []
    if not keep:
        out = np.full((num, 7), -1, dtype=F)
        out[:, 0] = np.arange(num)
        return out
    rows = []
    for i in keep:
        p = preds[i]
        hw, hh = float(p["w"]) / 2.0, float(p["h"]) / 2.0
        rows.append([0, p["cls"] + 1, p["conf"], F(float(p["x"]) - hw), F(float(p["y"]) - hh),
                     F(float(p["x"]) + hw), F(float(p["y"]) + hh)])
    return np.asarray(rows, dtype=F)


def yolov3(bottoms: list[np.ndarray], num_classes: int, num_box: int, biases: list[float],
           mask: list[int], anchors_scale: list[int], confidence_threshold: float,
           nms_threshold: float) -> np.ndarray:
    """Yolov3DetectionOutput's top rows (K, 7)."""
    length = 5 + num_classes
    groups_num = len(mask) // len(bottoms)
    preds = []
    mask_offset = 0
    thr = F(confidence_threshold)
    for t, blob in enumerate(bottoms):
        data = np.asarray(blob, F).ravel()
        n_img, _, side_h, side_w = blob.shape
        stride = side_w * side_h
        count1 = data.size // n_img
        nw, nh = side_w * anchors_scale[t], side_h * anchors_scale[t]
        for b in range(n_img):
            for s in range(stride):
                for n in range(num_box):
                    index = n * length * stride + s + b * count1
                    act = {}
                    score = []
                    for c in range(length):
                        v = data[index + c * stride]
                        if c in (2, 3):
                            act[c] = v
                        elif c > 4:
                            score.append(_sigmoid(v))
                        else:
                            act[c] = _sigmoid(v)
                    row, col = s // side_w, s % side_w
                    obj = act[4]
                    m = mask[n + mask_offset]
                    x = F(F(col + act[0]) / F(side_w))
                    y = F(F(row + act[1]) / F(side_h))
                    w = F(math.exp(float(act[2])) * float(F(biases[2 * m])) / nw)
                    h = F(math.exp(float(act[3])) * float(F(biases[2 * m + 1])) / nh)
                    for c in range(num_classes):
                        conf = F(score[c] * obj)
                        if conf > thr:
                            preds.append(dict(x=x, y=y, w=w, h=h, cls=c, conf=conf))
        mask_offset += groups_num
    return _top(preds, nms_threshold, bottoms[0].shape[0])


def yolov2(bottoms: list[np.ndarray], num_classes: int, num_box: int, biases: list[float],
           confidence_threshold: float, nms_threshold: float) -> np.ndarray:
    """YoloDetectionOutput's top rows (K, 7)."""
    preds = []
    thr = F(confidence_threshold)
    for blob in bottoms[:2]:
        blob = np.asarray(blob, F)
        n_img, channels, height, width = blob.shape
        side = width
        per_box = channels // num_box
        # the fork's swap blob: (N, H*W, num_box, C/num_box), filled in (b, h, w, c) order
        swap = [blob[b, c, h, w] for b in range(n_img) for h in range(height)
                for w in range(width) for c in range(channels)]
        for b in range(n_img):
            for j in range(side):
                for i in range(side):
                    for n in range(num_box):
                        index = b * channels * height * width + (j * side + i) * channels \
                            + n * per_box
                        x = F(F(i + _sigmoid(swap[index])) / F(side))
                        y = F(F(j + _sigmoid(swap[index + 1])) / F(side))
                        w = F(math.exp(float(swap[index + 2])) * float(F(biases[2 * n])) / side)
                        h = F(math.exp(float(swap[index + 3])) * float(F(biases[2 * n + 1]))
                              / side)
                        obj = _sigmoid(swap[index + 4])
                        logits = swap[index + 5:index + 5 + num_classes]
                        large = logits[0]
                        for v in logits:
                            if v > large:
                                large = v
                        e = [F(math.exp(float(F(v - large)))) for v in logits]
                        total = F(0)
                        for v in e:
                            total = F(total + v)
                        prob = [F(v / total) for v in e]
                        best, cls = prob[0], 0
                        for k, v in enumerate(prob):
                            if v > best:
                                best, cls = v, k
                        conf = F(obj * best)
                        if conf >= thr:
                            preds.append(dict(x=x, y=y, w=w, h=h, cls=cls, conf=conf))
    return _top(preds, nms_threshold, bottoms[0].shape[0])
