"""eric612/MobileNet-YOLO's detection heads: YoloDetectionOutput (YOLOv2) and
Yolov3DetectionOutput (YOLOv3).

Both follow the fork's CPU forward (``yolo_detection_output_layer.cpp``,
``yolov3_detection_output_layer.cpp`` and ``get_region_box`` in ``bbox_util.cpp``):

* Each bottom is (1, num_box * (5 + num_classes), H, W); anchor n owns the channels
  n*(5+C) .. n*(5+C)+4+C in the order tx, ty, tw, th, objectness, class scores.
* Box: x = (col + sigmoid(tx)) / W, y = (row + sigmoid(ty)) / H, w = exp(tw) * anchor_w / W',
  h = exp(th) * anchor_h / H'. YOLOv2: W' = H' = W (the fork assumes a square map), anchors in
  cells. YOLOv3: W' = W * anchors_scale[t], H' = H * anchors_scale[t] (the input size), anchors in
  pixels, bottom t taking the anchors mask[t*num_box .. t*num_box+num_box-1]. (The fork's
  correct_yolo_boxes is then the identity: anchors_scale is an integer, so the "letterbox" it
  undoes has no border.)
* YOLOv2 scores: one candidate per (cell, anchor): sigmoid(objectness) times the largest softmax
  class probability (first class on ties), kept when >= confidence_threshold.
  YOLOv3 scores: one candidate per (cell, anchor, class): sigmoid(objectness) *
  sigmoid(class score), kept when > confidence_threshold (strictly).
* Candidates of all bottoms go into one list (bottom, then row, column, anchor[, class]), sorted
  by score with GCC's std::sort (not stable: replayed by ``caffe_score_order``), then a greedy
  NMS over all classes together: a later box is dropped when its IoU (centre/size boxes, in
  float) with a kept earlier one is >= nms_threshold.
* Top: (1, 1, K, 7) rows [0, class + 1, score, xmin, ymin, xmax, ymax] in score order, coordinates
  relative to the input image and not clipped; no detection gives the one row
  [0, -1, -1, -1, -1, -1, -1].

The fork merges the candidates of every image of a batch into one list and writes image 0 on
every row, so a batch above 1 is refused rather than copied. The arithmetic keeps the C++'s float
and double steps (its ``exp`` is the double one; sigmoid runs in double and is stored as float).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from landmarknet.errors import LayerError
from landmarknet.layers.costs import PER_ALL_BOTTOMS
from landmarknet.layers.detection import caffe_score_order
from landmarknet.layers.registry import Built, LayerSpec, OnnxRule, register
from landmarknet.layers.shape import fork_param, has_field

_FAMILY = "detection"
_ORIGIN = "MobileNet-YOLO (eric612/MobileNet-YOLO)"
_F32 = np.float32
_F64 = np.float64

_NO_EMIT = ("the YOLO decoding, the score sort in Caffe's own order (libstdc++'s introsort) and "
            "the greedy NMS run in numpy and give a number of rows that depends on the data; a "
            "torch-only copy would be a second implementation to keep in step. Emit the net "
            "without it and decode its bottoms with landmarknet.layers.yolo.yolov2_detect or "
            "yolov3_detect")


def _no_export(type_name: str) -> str:
    return (f"{type_name} cannot be exported to ONNX or traced: its sort and greedy NMS give a "
            "number of rows that depends on the data, and landmarknet computes them outside "
            "torch (tracing would bake one input's detections into the graph as constants). "
            "Export the net up to its bottoms (the raw YOLO head maps) and decode them with "
            "landmarknet.layers.yolo or your runtime's YOLO post-processing")


# ----------------------------------------------------------------------------------------------
# The fork's arithmetic
# ----------------------------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The fork's sigmoid: 1. / (1. + exp(-x)) in double, stored in a float."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(_F64)))).astype(_F32)


def _scaled_exp(t: np.ndarray, anchor: np.ndarray, extent: int) -> np.ndarray:
    """exp(t) * anchor / extent: double exp, double product and quotient, stored in a float."""
    with np.errstate(over="ignore"):
        return (np.exp(t.astype(_F64)) * anchor.astype(_F64) / float(extent)).astype(_F32)


def greedy_nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """The fork's ApplyNms over score-sorted (x, y, w, h) float32 rows: indices kept, in order.

    Row i (not dropped) drops every later row whose IoU with it is >= threshold; IoU as the
    fork's box_iou computes it, every step in float (a NaN IoU, from an empty union, drops none).
    """
    thr = _F32(threshold)
    x, y, w, h = (boxes[:, k].astype(_F32) for k in range(4))
    two = _F32(2)
    alive = np.arange(len(boxes))
    kept = []
    # An exp that overflowed gives inf sizes and NaN IoUs, as in the C++: no warnings for them.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        left, right = x - w / two, x + w / two
        top, bottom = y - h / two, y + h / two
        area = w * h
        while alive.size:
            i, rest = alive[0], alive[1:]
            kept.append(i)
            ow = np.minimum(right[i], right[rest]) - np.maximum(left[i], left[rest])
            oh = np.minimum(bottom[i], bottom[rest]) - np.maximum(top[i], top[rest])
            inter = np.where((ow < 0) | (oh < 0), _F32(0), ow * oh).astype(_F32)
            union = (area[i] + area[rest]) - inter
            iou = inter / union
            alive = rest[~(iou >= thr)]
    return np.asarray(kept, dtype=np.int64)


def _rows(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, label: np.ndarray,
          score: np.ndarray, nms_threshold: float) -> np.ndarray:
    """Sort, NMS and the (K, 7) rows of the fork's top (one row of -1 without a detection)."""
    if score.size == 0:
        return np.array([[0, -1, -1, -1, -1, -1, -1]], dtype=_F32)
    order = caffe_score_order(score)
    x, y, w, h, label, score = (a[order] for a in (x, y, w, h, label, score))
    keep = greedy_nms(np.stack([x, y, w, h], axis=1), nms_threshold)
    x, y, w, h, label, score = (a[keep] for a in (x, y, w, h, label, score))
    # left = x - w / 2. : the halving and the difference in double, stored in a float
    hw, hh = w.astype(_F64) / 2.0, h.astype(_F64) / 2.0
    xd, yd = x.astype(_F64), y.astype(_F64)
    with np.errstate(over="ignore", invalid="ignore"):  # inf sizes, as the C++ gives them
        out = np.stack([np.zeros_like(xd), label.astype(_F64) + 1, score.astype(_F64),
                        xd - hw, yd - hh, xd + hw, yd + hh], axis=1).astype(_F32)
    return out


def yolov2_detect(bottoms: list[np.ndarray], num_classes: int, num_box: int,
                  biases: np.ndarray, confidence_threshold: float,
                  nms_threshold: float) -> np.ndarray:
    """YoloDetectionOutput on (1, num_box*(5+C), S, S) arrays: the (K, 7) rows."""
    parts = []
    thr = _F32(confidence_threshold)
    for blob in bottoms:
        side = blob.shape[3]
        # (A, 5+C, row, col) -> (row, col, A, 5+C): the fork's candidate order
        v = blob[0].astype(_F32).reshape(num_box, 5 + num_classes, side, side)
        v = v.transpose(2, 3, 0, 1)
        cols = np.arange(side, dtype=_F32)[None, :, None]
        rows = np.arange(side, dtype=_F32)[:, None, None]
        bx = (cols + _sigmoid(v[..., 0])) / _F32(side)
        by = (rows + _sigmoid(v[..., 1])) / _F32(side)
        bw = _scaled_exp(v[..., 2], biases[0:2 * num_box:2][None, None, :], side)
        bh = _scaled_exp(v[..., 3], biases[1:2 * num_box:2][None, None, :], side)
        obj = _sigmoid(v[..., 4])
        logits = v[..., 5:]
        large = logits.max(axis=-1, keepdims=True)
        e = np.exp((logits - large).astype(_F64)).astype(_F32)
        total = np.zeros(e.shape[:-1], dtype=_F32)
        for c in range(num_classes):  # the fork sums the exponentials one by one in a float
            total = (total + e[..., c]).astype(_F32)
        prob = (e / total[..., None]).astype(_F32)
        label = prob.argmax(axis=-1)  # first of equal maxima, as the fork's strict '>' scan
        score = (obj * prob.max(axis=-1)).astype(_F32)
        keep = (score >= thr).ravel()
        parts.append([a.ravel()[keep] for a in (bx, by, bw, bh, label, score)])
    x, y, w, h, label, score = (np.concatenate(p) for p in zip(*parts))
    return _rows(x, y, w, h, label, score, nms_threshold)


def yolov3_detect(bottoms: list[np.ndarray], num_classes: int, num_box: int,
                  biases: np.ndarray, mask: list[int], anchors_scale: list[int],
                  confidence_threshold: float, nms_threshold: float) -> np.ndarray:
    """Yolov3DetectionOutput on (1, num_box*(5+C), H, W) arrays: the (K, 7) rows."""
    parts = []
    thr = _F32(confidence_threshold)
    for t, blob in enumerate(bottoms):
        hgt, wid = blob.shape[2], blob.shape[3]
        anchors = np.asarray(mask[t * num_box:(t + 1) * num_box], dtype=np.int64)
        # (A, 5+C, row, col) -> (row, col, A, 5+C): the fork's candidate order, classes last
        v = blob[0].astype(_F32).reshape(num_box, 5 + num_classes, hgt, wid).transpose(2, 3, 0, 1)
        cols = np.arange(wid, dtype=_F32)[None, :, None]
        rows = np.arange(hgt, dtype=_F32)[:, None, None]
        bx = (cols + _sigmoid(v[..., 0])) / _F32(wid)
        by = (rows + _sigmoid(v[..., 1])) / _F32(hgt)
        bw = _scaled_exp(v[..., 2], biases[2 * anchors][None, None, :], wid * anchors_scale[t])
        bh = _scaled_exp(v[..., 3], biases[2 * anchors + 1][None, None, :],
                         hgt * anchors_scale[t])
        obj = _sigmoid(v[..., 4])
        score = (_sigmoid(v[..., 5:]) * obj[..., None]).astype(_F32)
        hit = score > thr  # strictly greater in this layer
        cell = np.nonzero(hit)
        box = tuple(cell[:3])
        parts.append([bx[box], by[box], bw[box], bh[box], cell[3], score[hit]])
    x, y, w, h, label, score = (np.concatenate(p) for p in zip(*parts))
    return _rows(x, y, w, h, label, score, nms_threshold)


# ----------------------------------------------------------------------------------------------
# Modules and converters
# ----------------------------------------------------------------------------------------------

def _is_exporting() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class _YoloHead(nn.Module):
    """Shared forward: numpy decoding on the CPU, a (1, 1, K, 7) tensor back on the device."""

    type_name = ""

    def detect(self, arrays: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        first = bottoms[0]
        if _is_exporting():
            raise LayerError(_no_export(self.type_name), type=self.type_name)
        if first.device.type == "meta":
            return torch.empty((1, 1, 1, 7), device=first.device, dtype=first.dtype)
        if any(b.shape[0] != 1 for b in bottoms):
            raise LayerError(f"{self.type_name} decodes one image at a time (the fork merges "
                             f"a batch into image 0); got batch {first.shape[0]}",
                             type=self.type_name)
        rows = self.detect([b.detach().cpu().float().numpy() for b in bottoms])
        return torch.from_numpy(rows).reshape(1, 1, -1, 7).to(device=first.device,
                                                              dtype=first.dtype)


class YoloDetectionOutput(_YoloHead):
    """YOLOv2 head of eric612/MobileNet-YOLO (see the module docstring)."""

    type_name = "YoloDetectionOutput"

    def __init__(self, num_classes: int, num_box: int, biases: list[float],
                 confidence_threshold: float, nms_threshold: float) -> None:
        super().__init__()
        self.num_classes, self.num_box = num_classes, num_box
        self.biases = np.asarray(biases, dtype=_F32)
        self.confidence_threshold, self.nms_threshold = confidence_threshold, nms_threshold

    def detect(self, arrays: list[np.ndarray]) -> np.ndarray:
        return yolov2_detect(arrays, self.num_classes, self.num_box, self.biases,
                             self.confidence_threshold, self.nms_threshold)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_box={self.num_box}, "
                f"biases={self.biases.tolist()}, confidence_threshold="
                f"{self.confidence_threshold}, nms_threshold={self.nms_threshold}")


class Yolov3DetectionOutput(_YoloHead):
    """YOLOv3 head of eric612/MobileNet-YOLO (see the module docstring)."""

    type_name = "Yolov3DetectionOutput"

    def __init__(self, num_classes: int, num_box: int, biases: list[float], mask: list[int],
                 anchors_scale: list[int], confidence_threshold: float,
                 nms_threshold: float) -> None:
        super().__init__()
        self.num_classes, self.num_box = num_classes, num_box
        self.biases = np.asarray(biases, dtype=_F32)
        self.mask, self.anchors_scale = list(mask), list(anchors_scale)
        self.confidence_threshold, self.nms_threshold = confidence_threshold, nms_threshold

    def detect(self, arrays: list[np.ndarray]) -> np.ndarray:
        return yolov3_detect(arrays, self.num_classes, self.num_box, self.biases, self.mask,
                             self.anchors_scale, self.confidence_threshold, self.nms_threshold)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_box={self.num_box}, mask={self.mask}, "
                f"anchors_scale={self.anchors_scale}, confidence_threshold="
                f"{self.confidence_threshold}, nms_threshold={self.nms_threshold}")


def _check_bottoms(spec: LayerSpec, num_box: int, num_classes: int, *, square: bool) -> None:
    """Every bottom (1, num_box*(5+C), H, W): the layout the fork's indexing assumes."""
    want = num_box * (5 + num_classes)
    for k, shape in enumerate(spec.bottom_shapes):
        shape = tuple(shape)
        if len(shape) != 4:
            raise spec.error(f"bottom {k} must be 4-D (N, {want}, H, W), got {shape}", shape=True)
        if shape[1] != want:
            raise spec.error(f"bottom {k} needs num_box * (5 + num_classes) = {num_box} * "
                             f"(5 + {num_classes}) = {want} channels, got {shape}", shape=True)
        if shape[0] != 1:
            raise spec.error(f"bottom {k} has batch {shape[0]}: the fork merges the boxes of "
                             "every image into one list, runs NMS across images and writes "
                             "image 0 on every row; landmarknet decodes batch 1 only",
                             shape=True)
        if square and shape[2] != shape[3]:
            raise spec.error(f"bottom {k} is {shape[2]}x{shape[3]}: the fork's YOLOv2 head "
                             "walks a width x width grid and misreads a non-square map",
                             shape=True)


def _check_common(spec: LayerSpec, p) -> tuple[int, int]:
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    if not has_field(p, "num_classes"):
        raise spec.error("num_classes is required (the fork CHECKs it)")
    num_classes, num_box = int(p.num_classes), int(p.num_box)
    if num_classes < 1:
        raise spec.error(f"num_classes must be positive, got {num_classes}")
    if num_box < 1:
        raise spec.error(f"num_box must be positive, got {num_box}")
    for name in ("confidence_threshold", "nms_threshold"):
        if not math.isfinite(getattr(p, name)):
            raise spec.error(f"{name} must be finite, got {getattr(p, name)}")
    return num_classes, num_box


@register("YoloDetectionOutput", family=_FAMILY, origin=_ORIGIN, cost=PER_ALL_BOTTOMS,
          onnx=OnnxRule(not_exportable=_no_export("YoloDetectionOutput")), emit_reason=_NO_EMIT)
def yolo_detection_output(spec: LayerSpec) -> Built:
    """YOLOv2 head: objectness x best softmax class, greedy NMS over all classes; SSD-style rows."""
    spec.expect_bottoms(1, 2)  # the fork reads bottoms 0 and 1 and ignores any further one
    p = fork_param(spec, "yolo_detection_output_param", "eric612/MobileNet-YOLO")
    num_classes, num_box = _check_common(spec, p)
    if int(p.coords) != 4:
        raise spec.error(f"coords: {p.coords} is not supported: the fork's C++ always reads 4 "
                         "box values, the objectness at 4 and the classes from 5")
    if len(p.biases) < 2 * num_box:
        raise spec.error(f"biases needs 2 * num_box = {2 * num_box} values (w, h per anchor), "
                         f"got {len(p.biases)}")
    _check_bottoms(spec, num_box, num_classes, square=True)
    module = YoloDetectionOutput(num_classes, num_box, list(p.biases),
                                 float(p.confidence_threshold), float(p.nms_threshold))
    return Built(module, top_shapes=[(1, 1, 1, 7)])


@register("Yolov3DetectionOutput", family=_FAMILY, origin=_ORIGIN, cost=PER_ALL_BOTTOMS,
          onnx=OnnxRule(not_exportable=_no_export("Yolov3DetectionOutput")),
          emit_reason=_NO_EMIT)
def yolov3_detection_output(spec: LayerSpec) -> Built:
    """YOLOv3 heads: anchor masks, objectness x sigmoid class, greedy NMS; SSD-style rows."""
    p = fork_param(spec, "yolov3_detection_output_param", "eric612/MobileNet-YOLO")
    num_classes, num_box = _check_common(spec, p)
    if p.gaussian_box:
        raise spec.error("gaussian_box: true is not supported: the fork's Gaussian YOLOv3 "
                         "branch reads class k from channel 8 + k of each anchor (class 0 is "
                         "the objectness) and writes past its class-score buffer")
    groups = int(p.mask_group_num)
    if groups < 1:
        raise spec.error(f"mask_group_num must be positive, got {groups}")
    if len(spec.bottom_shapes) != groups:
        raise spec.error(f"needs mask_group_num = {groups} bottoms (one per head), got "
                         f"{len(spec.bottom_shapes)}")
    mask = [int(m) for m in p.mask]
    if len(mask) != num_box * groups:
        raise spec.error(f"mask needs num_box * mask_group_num = {num_box * groups} anchor "
                         f"indices (num_box per bottom), got {len(mask)}")
    if 2 * max(mask) + 2 > len(p.biases):
        raise spec.error(f"mask index {max(mask)} needs {2 * max(mask) + 2} biases, got "
                         f"{len(p.biases)}")
    scales = [int(s) for s in p.anchors_scale]
    if len(scales) < groups or any(s < 1 for s in scales[:groups]):
        raise spec.error(f"anchors_scale needs one positive stride per bottom ({groups}), got "
                         f"{scales}")
    _check_bottoms(spec, num_box, num_classes, square=False)
    module = Yolov3DetectionOutput(num_classes, num_box, list(p.biases), mask, scales[:groups],
                                   float(p.confidence_threshold), float(p.nms_threshold))
    return Built(module, top_shapes=[(1, 1, 1, 7)])
