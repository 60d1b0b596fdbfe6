"""SSD's DetectionEvaluate (weiliu89/caffe): per-detection true/false positive flags for mAP.

The layer reads DetectionOutput's rows [image, label, score, xmin, ymin, xmax, ymax] and the
ground truth rows [item, label, instance, xmin, ymin, xmax, ymax, difficult] that SSD's
AnnotatedData writes, and returns (1, 1, num_pos_classes + D, 5) rows [image, label, score, tp,
fp]: first one row per non-background class whose score column holds the number of positives
of that class (image, tp and fp are -1), then the detections grouped by image and label
(ascending, as the C++ std::maps iterate them). Rows past the last one written stay zero, as
Caffe zero-fills the top. The rules follow ``detection_evaluate_layer.cpp`` and the helpers of
``bbox_util.cpp`` it calls (GetDetectionResults, GetGroundTruth, JaccardOverlap, ScaleBBox), in
float32 like the C++, with libstdc++'s unstable std::sort for the order of tied scores.

It is an evaluation layer: it has no gradient (Caffe's Backward is NOT_IMPLEMENTED), cannot be
traced or exported (a data-dependent number of rows, computed in numpy) and is not emitted.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.layers.costs import PER_ALL_BOTTOMS
from landmarknet.layers.common import side_file, where_looked
from landmarknet.layers.detection import (_FAMILY, _ORIGIN, _is_exporting, _score_greater,
                                          box_sizes, libstdcxx_sort, pixel_box_sizes)
from landmarknet.layers.registry import Built, LayerSpec, OnnxRule, register
from landmarknet.layers.shape import fork_param, has_field

_TYPE = "DetectionEvaluate"
_F32 = np.float32

_NO_EXPORT = (
    "DetectionEvaluate cannot be exported to ONNX or traced: it is an evaluation layer whose "
    "number of rows depends on the detections, computed outside torch (tracing would bake one "
    "batch's true/false positives into the graph). Export the net without it (e.g. up to "
    "detection_out) and evaluate the detections in your own code or with "
    "landmarknet.layers.detection_eval.DetectionEvaluate.evaluate")
_NO_EMIT = ("DetectionEvaluate matches detections to the ground truth in numpy with Caffe's own "
            "sort order and gives a data-dependent number of rows; it evaluates a test net and "
            "has no place in a standalone inference module. Emit the net without it")


# ----------------------------------------------------------------------------------------------
# bbox_util.cpp's box maths, in float32
# ----------------------------------------------------------------------------------------------

def _sizes(boxes: np.ndarray, normalized: bool) -> np.ndarray:
    """BBoxSize of (n, 4) float32 corner boxes: 0 for an inverted box; pixel boxes count the
    end pixels, (w + 1) * (h + 1)."""
    return box_sizes(boxes) if normalized else pixel_box_sizes(boxes)


def _overlaps(box: np.ndarray, size: np.float32, gts: np.ndarray, gt_sizes: np.ndarray,
              normalized: bool) -> np.ndarray:
    """JaccardOverlap(box, each ground truth) with the sizes stored on the boxes, float32."""
    apart = (gts[:, 0] > box[2]) | (gts[:, 2] < box[0]) | (gts[:, 1] > box[3]) \
        | (gts[:, 3] < box[1])
    # std::max(a, b) is (a < b ? b : a) and std::min(a, b) is (b < a ? b : a): written out so
    # that a NaN coordinate picks the same operand as in the C++.
    x0 = np.where(box[0] < gts[:, 0], gts[:, 0], box[0])
    y0 = np.where(box[1] < gts[:, 1], gts[:, 1], box[1])
    x1 = np.where(gts[:, 2] < box[2], gts[:, 2], box[2])
    y1 = np.where(gts[:, 3] < box[3], gts[:, 3], box[3])
    corners = np.where(apart[:, None], _F32(0), np.stack([x0, y0, x1, y1], 1)).astype(_F32)
    iw = corners[:, 2] - corners[:, 0]
    ih = corners[:, 3] - corners[:, 1]
    if not normalized:
        # Caffe adds the end pixel here too, so boxes that do not touch still overlap by 1x1.
        iw, ih = iw + _F32(1), ih + _F32(1)
    inter = iw * ih
    with np.errstate(all="ignore"):
        ratio = inter / (size + gt_sizes - inter)
    return np.where((iw > 0) & (ih > 0), ratio, _F32(0)).astype(_F32)


class DetectionEvaluate(nn.Module):
    """Rows [image, label, score, tp, fp] from detections and ground truth, as SSD's Caffe.

    ``sizes`` (from name_size_file): per image of the data set in order, its (height, width);
    boxes are then scaled to pixels and compared as pixel boxes. Like the C++, the layer keeps
    its place in that list between forwards (one step per image that has detections).
    """

    def __init__(self, num_classes: int, background_label_id: int, overlap_threshold: float,
                 evaluate_difficult_gt: bool, sizes: list[tuple[int, int]] | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        self.num_classes, self.background_label_id = num_classes, background_label_id
        self.overlap_threshold = _F32(overlap_threshold)
        self.evaluate_difficult_gt = evaluate_difficult_gt
        self.sizes = list(sizes or [])
        self.layer_name = name
        self.count = 0  # next entry of sizes (the C++ member count_)

    @property
    def num_pos_classes(self) -> int:
        return self.num_classes - (0 <= self.background_label_id < self.num_classes)

    def _fail(self, message: str) -> LayerError:
        return LayerError(message, layer=self.layer_name, type=_TYPE)

    def _whole(self, value: np.float32, what: str, row: int) -> int:
        """Caffe's ``int x = float`` (truncation) for an image id or label, which must be
        finite (the C++ conversion is undefined otherwise)."""
        if not math.isfinite(float(value)):
            raise self._fail(f"{what} of row {row} is {float(value)}; image ids and labels "
                             "must be finite numbers")
        return int(float(value))

    def _read(self, det: np.ndarray, gt: np.ndarray):
        """GetDetectionResults and GetGroundTruth: {image: {label: [row indices]}}."""
        bg = self.background_label_id
        dets: dict[int, dict[int, list[int]]] = {}
        for r in range(det.shape[0]):
            image = self._whole(det[r, 0], "the image id of detection", r)
            if image == -1:  # no detection
                continue
            label = self._whole(det[r, 1], "the label of detection", r)
            if label == bg:
                raise self._fail(f"detection row {r} has the background label {bg}; SSD's "
                                 "Caffe aborts on it (\"Found background label in the detection "
                                 "results\")")
            dets.setdefault(image, {}).setdefault(label, []).append(r)
        gts: dict[int, dict[int, list[int]]] = {}
        for r in range(gt.shape[0]):
            item = self._whole(gt[r, 0], "the item id of ground truth", r)
            if item == -1:  # the C++ stops reading the ground truth at the first -1 item
                break
            label = self._whole(gt[r, 1], "the label of ground truth", r)
            if label == bg:
                raise self._fail(f"ground truth row {r} has the background label {bg}; SSD's "
                                 "Caffe aborts on it (\"Found background label in the "
                                 "dataset\")")
            gts.setdefault(item, {}).setdefault(label, []).append(r)
        return dets, gts

    def evaluate(self, det: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """The (num_pos_classes + D, 5) float32 rows for detections (D, 7) and ground truth
        (G, 8) given as float32 numpy arrays (any leading axes of size 1)."""
        det = np.asarray(det, dtype=_F32).reshape(-1, 7)
        gt = np.asarray(gt, dtype=_F32).reshape(-1, 8)
        dets, gts = self._read(det, gt)
        out = np.zeros((self.num_pos_classes + det.shape[0], 5), dtype=_F32)
        difficult = gt[:, 7] != 0  # static_cast<bool>: any non-zero (NaN too) is difficult
        # Positives per label over all images (difficult ones only when they are evaluated).
        num_pos: dict[int, int] = {}
        for labels in gts.values():
            for label, rows in labels.items():
                n = len(rows) if self.evaluate_difficult_gt \
                    else sum(1 for r in rows if not difficult[r])
                num_pos[label] = num_pos.get(label, 0) + n
        k = 0
        for c in range(self.num_classes):
            if c == self.background_label_id:
                continue
            out[k] = (-1, c, num_pos.get(c, 0), -1, -1)
            k += 1
        normalized = not self.sizes
        # Boxes as the C++ reads them, with the size it stores on each (normalised BBoxSize).
        det_boxes = det[:, 3:7].copy()
        det_sizes = _sizes(det_boxes, True)
        gt_boxes = gt[:, 3:7].copy()
        gt_sizes = _sizes(gt_boxes, True)
        for image in sorted(dets):
            image_gts = gts.get(image)
            for label in sorted(dets[image]):
                rows = dets[image][label]
                if image_gts is None or label not in image_gts:
                    # Nothing to match: every detection is a false positive, in input order.
                    for r in rows:
                        out[k] = (image, label, det[r, 2], 0, 1)
                        k += 1
                    continue
                g = np.asarray(image_gts[label], dtype=np.int64)
                boxes_g, sizes_g = gt_boxes[g], gt_sizes[g]
                if not normalized:
                    boxes_g, sizes_g = self._scale(boxes_g)
                visited = np.zeros(len(g), dtype=bool)
                order = [(float(det[r, 2]), r) for r in rows]
                libstdcxx_sort(order, _score_greater)  # std::sort: unstable on ties
                for _, r in order:
                    box, size = det_boxes[r], det_sizes[r]
                    if not normalized:
                        scaled, scaled_size = self._scale(box[None])
                        box, size = scaled[0], scaled_size[0]
                    overlaps = _overlaps(box, size, boxes_g, sizes_g, normalized)
                    best, jmax = _F32(-1), -1
                    for j, v in enumerate(overlaps):  # the first strictly greater wins
                        if v > best:
                            best, jmax = v, j
                    tp, fp = 0, 1
                    if best >= self.overlap_threshold:
                        if self.evaluate_difficult_gt or not difficult[g[jmax]]:
                            if not visited[jmax]:
                                tp, fp = 1, 0
                                visited[jmax] = True
                        else:
                            # A match with an ignored difficult box: neither (the row keeps
                            # Caffe's zeros).
                            tp, fp = 0, 0
                    out[k] = (image, label, det[r, 2], tp, fp)
                    k += 1
            if self.sizes:
                self.count = (self.count + 1) % len(self.sizes)
        return out

    def _scale(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ScaleBBox to the current image's (height, width): boxes and their new sizes."""
        height, width = self.sizes[self.count]
        scale = np.asarray([width, height, width, height], dtype=np.int64).astype(_F32)
        scaled = (boxes * scale).astype(_F32)
        return scaled, _sizes(scaled, not (width > 1 or height > 1))

    def _check(self, det: torch.Tensor, gt: torch.Tensor) -> None:
        """Reshape's CHECKs, on the blobs of this forward."""
        if det.dim() != 4 or det.shape[0] != 1 or det.shape[1] != 1 or det.shape[3] != 7:
            raise self._fail(f"bottom 0 (detections) must be (1, 1, D, 7), got "
                             f"{tuple(det.shape)}")
        if gt.dim() != 4 or gt.shape[0] != 1 or gt.shape[1] != 1 or gt.shape[3] != 8:
            raise self._fail(f"bottom 1 (ground truth) must be (1, 1, G, 8), got "
                             f"{tuple(gt.shape)}")

    def forward(self, det: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if _is_exporting():
            raise self._fail(_NO_EXPORT)
        self._check(det, gt)
        rows = self.num_pos_classes + det.shape[2]
        if det.device.type == "meta":
            return torch.empty((1, 1, rows, 5), device=det.device, dtype=det.dtype)
        arrays = [t.detach().cpu().float().numpy() for t in (det, gt)]
        out = torch.from_numpy(self.evaluate(*arrays)).reshape(1, 1, rows, 5)
        # Built from numpy: no autograd history, so no gradient reaches the bottoms.
        return out.to(device=det.device, dtype=det.dtype)

    def extra_repr(self) -> str:
        text = (f"num_classes={self.num_classes}, background_label_id="
                f"{self.background_label_id}, overlap_threshold={float(self.overlap_threshold)}"
                f", evaluate_difficult_gt={self.evaluate_difficult_gt}")
        return text + (f", sizes={len(self.sizes)} images" if self.sizes else "")


# ----------------------------------------------------------------------------------------------
# name_size_file
# ----------------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")


def _name_size_path(spec: LayerSpec, name: str) -> Path:
    """Where the file is (working folder, else beside the prototxt), or a LayerError."""
    path = side_file(spec, name)
    if not path.is_file():
        raise spec.error(f"detection_evaluate_param.name_size_file {name!r}: no such file"
                         f"{where_looked(name)}; "
                         "SSD's Caffe refuses the net then too (\"Failed to open name size "
                         "file\"). Give the file of 'name height width' lines of the test set, or "
                         "remove the field to evaluate normalised boxes")
    return path


def _read_name_sizes(spec: LayerSpec, name: str) -> list[tuple[int, int]]:
    """The (height, width) of each 'name height width' line of name_size_file."""
    path = _name_size_path(spec, name)
    try:
        tokens = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError as exc:
        raise spec.error(f"detection_evaluate_param.name_size_file {name!r}: cannot read it: "
                         f"{exc}") from None
    if len(tokens) % 3:
        raise spec.error(f"detection_evaluate_param.name_size_file {name!r}: {len(tokens)} "
                         "words, not a whole number of 'name height width' entries (SSD's Caffe "
                         "would stop reading at the incomplete one)")
    sizes = []
    for i in range(0, len(tokens), 3):
        h, w = tokens[i + 1], tokens[i + 2]
        if not (_INT.fullmatch(h) and _INT.fullmatch(w)):
            raise spec.error(f"detection_evaluate_param.name_size_file {name!r}: entry "
                             f"{i // 3 + 1} ({tokens[i]!r}) has height {h!r} and width {w!r}; "
                             "both must be integers (SSD's Caffe would stop reading there)")
        sizes.append((int(h), int(w)))
    if not sizes:
        warnings.warn(f"layer '{spec.name}': name_size_file {name!r} is empty; like SSD's "
                      "Caffe, the layer compares normalised boxes", stacklevel=3)
    return sizes


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------

def detection_evaluate_detail(p: caffe_pb2.LayerParameter) -> str:
    """'21 classes, IoU ≥ 0.5' (', no difficult' when difficult boxes are not evaluated)."""
    ep = p.detection_evaluate_param
    text = f"{ep.num_classes} classes, IoU ≥ {ep.overlap_threshold:g}"
    return text + ("" if ep.evaluate_difficult_gt else ", no difficult")


@register(_TYPE, family=_FAMILY, origin=_ORIGIN, cost=PER_ALL_BOTTOMS,
          detail=detection_evaluate_detail, onnx=OnnxRule(not_exportable=_NO_EXPORT),
          emit_reason=_NO_EMIT)
def detection_evaluate(spec: LayerSpec) -> Built:
    """SSD's mAP rows: positives per class, then [image, label, score, tp, fp] per detection."""
    spec.expect_bottoms(2)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    ep = fork_param(spec, "detection_evaluate_param", "SSD")
    if not has_field(ep, "num_classes"):
        raise spec.error("detection_evaluate_param.num_classes is required (SSD's Caffe: "
                         "\"Must provide num_classes\"); give the number of classes the "
                         "detector predicts, background included")
    num_classes = int(ep.num_classes)
    background = int(ep.background_label_id)
    if background >= num_classes:
        # The C++ sizes its top for num_classes - 1 class rows but writes num_classes of them
        # when the background is no class: it writes past its buffer.
        raise spec.error(f"detection_evaluate_param.background_label_id {background} must be "
                         f"below num_classes ({num_classes}): SSD's Caffe writes past its top "
                         "otherwise")
    threshold = float(ep.overlap_threshold)
    if not threshold > 0:
        raise spec.error(f"detection_evaluate_param.overlap_threshold must be > 0 (SSD's Caffe "
                         f"CHECKs it), got {threshold}")
    det, gt = (tuple(s) for s in spec.bottom_shapes)
    if len(det) != 4 or det[0] != 1 or det[1] != 1 or det[3] != 7:
        raise spec.error(f"bottom 0 (detections, DetectionOutput's rows) must be (1, 1, D, 7), "
                         f"got {det}", shape=True)
    if len(gt) != 4 or gt[0] != 1 or gt[1] != 1 or gt[3] != 8:
        raise spec.error(f"bottom 1 (ground truth, AnnotatedData's label rows) must be "
                         f"(1, 1, G, 8), got {gt}", shape=True)
    sizes = _read_name_sizes(spec, ep.name_size_file) if has_field(ep, "name_size_file") \
        else None
    module = DetectionEvaluate(num_classes, background, threshold, bool(ep.evaluate_difficult_gt),
                               sizes, name=spec.name)
    return Built(module, top_shapes=[(1, 1, module.num_pos_classes + det[2], 5)])
