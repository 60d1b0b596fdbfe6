"""SSD's detection layers (weiliu89/caffe): PriorBox and DetectionOutput.

PriorBox depends only on shapes; it is computed in float32 the way ``prior_box_layer.cpp`` does,
including its truncation of min_size/max_size to ``int``. DetectionOutput decodes the location
predictions against the priors, runs per-class greedy NMS and keeps the best ``keep_top_k``,
following ``detection_output_layer.cpp`` and ``bbox_util.cpp``; its top has a data-dependent
number of rows, so the layer declares Caffe's set-up shape (1, 1, 1, 7) and returns an empty
tensor of that shape on the meta device. Both layers have no gradient (Caffe's Backward is empty).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from landmarknet.layers.registry import Built, LayerSpec, register
from landmarknet.layers.shape import field_values, fork_param, has_field

_FAMILY = "detection"
_ORIGIN = "SSD (weiliu89/caffe)"
_F32 = np.float32
_FLT_MAX = float(np.finfo(np.float32).max)
_CORNER, _CENTER_SIZE, _CORNER_SIZE = 1, 2, 3


# ----------------------------------------------------------------------------------------------
# PriorBox
# ----------------------------------------------------------------------------------------------

class PriorBox(nn.Module):
    """Default boxes for every cell of bottom 0, normalised by the image (bottom 1) extent."""

    def __init__(self, min_sizes: list[float], max_sizes: list[float], aspect_ratios: list[float],
                 clip: bool, variances: list[float], img_hw: tuple[int, int] | None,
                 step_hw: tuple[float, float] | None, offset: float) -> None:
        super().__init__()
        self.min_sizes, self.max_sizes = min_sizes, max_sizes
        self.aspect_ratios, self.clip, self.variances = aspect_ratios, clip, variances
        self.img_hw, self.step_hw, self.offset = img_hw, step_hw, offset
        self.num_priors = len(aspect_ratios) * len(min_sizes) + len(max_sizes)
        self._cache: dict[tuple[int, int, int, int], np.ndarray] = {}

    def priors(self, lh: int, lw: int, ih: int, iw: int) -> np.ndarray:
        """The (1, 2, lh*lw*num_priors*4) float32 array for these extents."""
        key = (lh, lw, ih, iw)
        if key in self._cache:
            return self._cache[key]
        if self.img_hw is not None:
            ih, iw = self.img_hw
        if self.step_hw is not None:
            step_h, step_w = _F32(self.step_hw[0]), _F32(self.step_hw[1])
        else:
            step_w, step_h = _F32(iw) / _F32(lw), _F32(ih) / _F32(lh)
        offset = _F32(self.offset)
        # Per-cell box extents (width, height), in the C++ order: min_size, sqrt(min*max), then
        # each ratio != 1. prior_box_layer.cpp holds min/max sizes in ``int`` variables (so
        # fractional sizes are truncated) and stores each extent in a float.
        extents: list[tuple[float, float]] = []
        for s, smin_f in enumerate(self.min_sizes):
            smin = int(smin_f)
            extents.append((float(_F32(smin)), float(_F32(smin))))
            if self.max_sizes:
                side = math.sqrt(smin * int(self.max_sizes[s]))
                extents.append((float(_F32(side)), float(_F32(side))))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                # SSD's master branch scales min_size (never sqrt(min*max)) by the ratio.
                root = _F32(np.sqrt(_F32(ar)))
                extents.append((float(_F32(smin) * root), float(_F32(smin) / root)))
        ext = np.asarray(extents, dtype=np.float64)  # (P, 2)
        cx = ((np.arange(lw, dtype=_F32) + offset) * step_w).astype(np.float64)  # (lw,)
        cy = ((np.arange(lh, dtype=_F32) + offset) * step_h).astype(np.float64)  # (lh,)
        half_w, half_h = ext[:, 0] / 2.0, ext[:, 1] / 2.0
        cxg = cx[None, :, None]
        cyg = cy[:, None, None]
        boxes = np.stack(np.broadcast_arrays((cxg - half_w) / iw, (cyg - half_h) / ih,
                                             (cxg + half_w) / iw, (cyg + half_h) / ih), axis=-1)
        top = boxes.astype(_F32).reshape(-1)  # (lh, lw, P, 4), row-major like the C++ loop
        if self.clip:
            top = np.clip(top, _F32(0), _F32(1))
        if len(self.variances) == 1:
            var = np.full(top.shape, self.variances[0], dtype=_F32)
        else:
            var = np.tile(np.asarray(self.variances, dtype=_F32), top.size // 4)
        out = np.stack([top, var]).reshape(1, 2, -1)
        self._cache[key] = out
        return out

    def forward(self, feature: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        lh, lw = feature.shape[2], feature.shape[3]
        ih, iw = image.shape[2], image.shape[3]
        n = lh * lw * self.num_priors * 4
        if feature.device.type == "meta":
            return torch.empty((1, 2, n), device=feature.device, dtype=feature.dtype)
        out = torch.from_numpy(self.priors(lh, lw, ih, iw))
        return out.to(device=feature.device, dtype=feature.dtype)

    def extra_repr(self) -> str:
        return (f"min_size={self.min_sizes}, max_size={self.max_sizes}, "
                f"aspect_ratios={self.aspect_ratios}, clip={self.clip}, "
                f"variance={self.variances}, img={self.img_hw}, step={self.step_hw}, "
                f"offset={self.offset}")


@register("PriorBox", family=_FAMILY, origin=_ORIGIN)
def prior_box(spec: LayerSpec) -> Built:
    """SSD default boxes (1, 2, H*W*P*4): coordinates in channel 0, variances in channel 1."""
    spec.expect_bottoms(2)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    feat, img = (tuple(s) for s in spec.bottom_shapes)
    if len(feat) != 4 or len(img) != 4:
        raise spec.error(f"needs 4-D bottoms (feature map, image), got {feat} and {img}",
                         shape=True)
    pb = fork_param(spec, "prior_box_param", "SSD")
    for name in ("width", "height", "offset_h", "offset_w"):
        if has_field(pb, name):
            raise spec.error(f"prior_box_param.{name} is an OpenCV extension, not SSD's; "
                             "landmarknet implements SSD's PriorBox only")
    mins = [float(v) for v in field_values(pb, "min_size")]
    if not mins:
        raise spec.error("min_size is required")
    if any(v <= 0 for v in mins):
        raise spec.error(f"min_size must be positive, got {mins}")
    maxs = [float(v) for v in field_values(pb, "max_size")]
    if maxs and len(maxs) != len(mins):
        raise spec.error(f"give one max_size per min_size ({len(mins)}), got {len(maxs)}")
    for lo, hi in zip(mins, maxs):
        if hi <= lo:
            raise spec.error(f"max_size {hi} must be greater than min_size {lo}")
    ratios = [1.0]
    for ar in field_values(pb, "aspect_ratio"):
        ar = float(ar)
        if ar <= 0:
            raise spec.error(f"aspect_ratio must be positive, got {ar}")
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if pb.flip:
            ratios.append(float(_F32(1.0 / ar)))
    variances = [float(v) for v in field_values(pb, "variance")]
    if len(variances) > 1 and len(variances) != 4:
        raise spec.error(f"give 1 or 4 variances, got {len(variances)}")
    if any(v <= 0 for v in variances):
        raise spec.error(f"variances must be positive, got {variances}")
    variances = variances or [0.1]
    img_hw = None
    if has_field(pb, "img_h") or has_field(pb, "img_w"):
        if has_field(pb, "img_size"):
            raise spec.error("give either img_size or img_h/img_w, not both")
        if pb.img_h <= 0 or pb.img_w <= 0:
            raise spec.error("img_h and img_w must both be given and positive")
        img_hw = (int(pb.img_h), int(pb.img_w))
    elif has_field(pb, "img_size"):
        if pb.img_size <= 0:
            raise spec.error("img_size must be positive")
        img_hw = (int(pb.img_size), int(pb.img_size))
    step_hw = None
    if has_field(pb, "step_h") or has_field(pb, "step_w"):
        if has_field(pb, "step"):
            raise spec.error("give either step or step_h/step_w, not both")
        if pb.step_h <= 0 or pb.step_w <= 0:
            raise spec.error("step_h and step_w must both be given and positive")
        step_hw = (float(pb.step_h), float(pb.step_w))
    elif has_field(pb, "step"):
        if pb.step <= 0:
            raise spec.error("step must be positive")
        step_hw = (float(pb.step), float(pb.step))
    module = PriorBox(mins, maxs, ratios, bool(pb.clip), variances, img_hw, step_hw,
                      float(pb.offset))
    return Built(module)


# ----------------------------------------------------------------------------------------------
# DetectionOutput
# ----------------------------------------------------------------------------------------------

def decode_boxes(prior: np.ndarray, var: np.ndarray, loc: np.ndarray, code_type: int,
                 variance_in_target: bool) -> np.ndarray:
    """bbox_util.cpp DecodeBBox, in float32: ``(..., 4)`` offsets -> (xmin, ymin, xmax, ymax)."""
    px0, py0, px1, py1 = (prior[..., i] for i in range(4))
    lx0, ly0, lx1, ly1 = (loc[..., i] for i in range(4))
    if variance_in_target:
        v0 = v1 = v2 = v3 = _F32(1)
    else:
        v0, v1, v2, v3 = (var[..., i] for i in range(4))
    if code_type == _CORNER:
        if variance_in_target:
            out = (px0 + lx0, py0 + ly0, px1 + lx1, py1 + ly1)
        else:
            out = (px0 + v0 * lx0, py0 + v1 * ly0, px1 + v2 * lx1, py1 + v3 * ly1)
    elif code_type == _CENTER_SIZE:
        pw, ph = px1 - px0, py1 - py0
        pcx, pcy = (px0 + px1) / _F32(2), (py0 + py1) / _F32(2)
        if variance_in_target:
            cx, cy = lx0 * pw + pcx, ly0 * ph + pcy
            w, h = np.exp(lx1) * pw, np.exp(ly1) * ph
        else:
            cx, cy = v0 * lx0 * pw + pcx, v1 * ly0 * ph + pcy
            w, h = np.exp(v2 * lx1) * pw, np.exp(v3 * ly1) * ph
        out = (cx - w / _F32(2), cy - h / _F32(2), cx + w / _F32(2), cy + h / _F32(2))
    elif code_type == _CORNER_SIZE:
        pw, ph = px1 - px0, py1 - py0
        if variance_in_target:
            out = (px0 + lx0 * pw, py0 + ly0 * ph, px1 + lx1 * pw, py1 + ly1 * ph)
        else:
            out = (px0 + v0 * lx0 * pw, py0 + v1 * ly0 * ph,
                   px1 + v2 * lx1 * pw, py1 + v3 * ly1 * ph)
    else:
        raise ValueError(f"unknown code_type {code_type}")
    return np.stack(out, axis=-1).astype(_F32)


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """BBoxSize (normalised): width * height, 0 for an inverted box."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    return np.where(bad, _F32(0), w * h).astype(_F32)


def jaccard(box: np.ndarray, size: np.float32, others: np.ndarray,
            other_sizes: np.ndarray) -> np.ndarray:
    """JaccardOverlap of one box against many, in float32 as bbox_util.cpp computes it."""
    apart = ((others[:, 0] > box[2]) | (others[:, 2] < box[0]) |
             (others[:, 1] > box[3]) | (others[:, 3] < box[1]))
    iw = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    ih = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / ((size + other_sizes) - inter)
    return np.where(apart | ~((iw > 0) & (ih > 0)), _F32(0), iou).astype(_F32)


def nms_fast(boxes: np.ndarray, sizes: np.ndarray, scores: np.ndarray, score_threshold: float,
             nms_threshold: float, eta: float, top_k: int) -> list[int]:
    """ApplyNMSFast: scores > threshold, stable sort descending, top_k, greedy suppression with
    ``overlap <= threshold`` to keep and the adaptive (eta) threshold."""
    cand = np.nonzero(scores > _F32(score_threshold))[0]
    order = cand[np.argsort(-scores[cand], kind="stable")]
    if -1 < top_k < order.size:
        order = order[:top_k]
    kept: list[int] = []
    threshold = _F32(nms_threshold)
    eta32 = _F32(eta)
    for idx in order:
        keep = True
        if kept:
            k = np.asarray(kept)
            keep = bool(np.all(jaccard(boxes[idx], sizes[idx], boxes[k], sizes[k]) <= threshold))
        if keep:
            kept.append(int(idx))
            if eta < 1 and threshold > 0.5:
                threshold = _F32(threshold * eta32)
    return kept


class DetectionOutput(nn.Module):
    """Decode, per-class NMS, keep_top_k: rows [image, label, score, xmin, ymin, xmax, ymax]."""

    def __init__(self, num_classes: int, share_location: bool, background_label_id: int,
                 code_type: int, variance_encoded_in_target: bool, keep_top_k: int,
                 confidence_threshold: float, nms_threshold: float, eta: float,
                 top_k: int) -> None:
        super().__init__()
        self.num_classes, self.share_location = num_classes, share_location
        self.background_label_id, self.code_type = background_label_id, code_type
        self.variance_encoded_in_target = variance_encoded_in_target
        self.keep_top_k, self.confidence_threshold = keep_top_k, confidence_threshold
        self.nms_threshold, self.eta, self.top_k = nms_threshold, eta, top_k

    def detect(self, loc: np.ndarray, conf: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """The (rows, 7) float32 detections for numpy inputs laid out as Caffe's blobs."""
        n = loc.shape[0]
        num_priors = prior.shape[2] // 4
        n_loc = 1 if self.share_location else self.num_classes
        loc = loc.reshape(n, num_priors, n_loc, 4).astype(_F32)
        conf = conf.reshape(n, num_priors, self.num_classes).astype(_F32)
        flat_prior = prior.reshape(-1).astype(_F32)
        boxes_p = flat_prior[:num_priors * 4].reshape(num_priors, 4)
        var_p = flat_prior[num_priors * 4:num_priors * 8].reshape(num_priors, 4)
        decoded = decode_boxes(boxes_p[None, :, None, :], var_p[None, :, None, :], loc,
                               self.code_type, self.variance_encoded_in_target)
        sizes = box_sizes(decoded)  # (n, P, n_loc)
        rows: list[list[float]] = []
        for i in range(n):
            picked: dict[int, list[int]] = {}
            for c in range(self.num_classes):
                if c == self.background_label_id:
                    continue
                lc = 0 if self.share_location else c
                picked[c] = nms_fast(decoded[i, :, lc], sizes[i, :, lc], conf[i, :, c],
                                     self.confidence_threshold, self.nms_threshold, self.eta,
                                     self.top_k)
            num_det = sum(len(v) for v in picked.values())
            if -1 < self.keep_top_k < num_det:
                pairs = [(conf[i, idx, c], c, idx) for c in sorted(picked) for idx in picked[c]]
                order = sorted(range(len(pairs)), key=lambda j: -float(pairs[j][0]))
                chosen: dict[int, list[int]] = {}
                for j in order[:self.keep_top_k]:
                    chosen.setdefault(pairs[j][1], []).append(pairs[j][2])
                picked = chosen
            for c in sorted(picked):
                lc = 0 if self.share_location else c
                for idx in picked[c]:
                    rows.append([i, c, conf[i, idx, c], *decoded[i, idx, lc]])
        if not rows:
            # detection_output_layer.cpp: one fake row per image, [i, -1, -1, -1, -1, -1, -1].
            out = np.full((n, 7), -1, dtype=_F32)
            out[:, 0] = np.arange(n)
            return out
        return np.asarray(rows, dtype=_F32)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        if loc.device.type == "meta":
            return torch.empty((1, 1, 1, 7), device=loc.device, dtype=loc.dtype)
        rows = self.detect(loc.detach().cpu().float().numpy(), conf.detach().cpu().float().numpy(),
                           prior.detach().cpu().float().numpy())
        return torch.from_numpy(rows).reshape(1, 1, -1, 7).to(device=loc.device, dtype=loc.dtype)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, share_location={self.share_location}, "
                f"background_label_id={self.background_label_id}, code_type={self.code_type}, "
                f"keep_top_k={self.keep_top_k}, confidence_threshold="
                f"{self.confidence_threshold}, nms_threshold={self.nms_threshold}, "
                f"top_k={self.top_k}, eta={self.eta}")


@register("DetectionOutput", family=_FAMILY, origin=_ORIGIN)
def detection_output(spec: LayerSpec) -> Built:
    """SSD decoding + per-class NMS + keep_top_k; rows [image, label, score, x0, y0, x1, y1]."""
    if len(spec.bottom_shapes) == 4:
        raise spec.error("a fourth bottom (RefineDet's ARM confidences) is not supported")
    spec.expect_bottoms(3)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    dp = fork_param(spec, "detection_output_param", "SSD")
    if not has_field(dp, "num_classes") or dp.num_classes < 1:
        raise spec.error("num_classes is required")
    num_classes = int(dp.num_classes)
    share = bool(dp.share_location)
    code_type = int(dp.code_type)
    if code_type not in (_CORNER, _CENTER_SIZE, _CORNER_SIZE):
        raise spec.error(f"unknown code_type {code_type}")
    nms = dp.nms_param
    if nms.nms_threshold < 0:
        raise spec.error(f"nms_threshold must be non-negative, got {nms.nms_threshold}")
    if not 0 < nms.eta <= 1:
        raise spec.error(f"eta must be in (0, 1], got {nms.eta}")
    top_k = int(nms.top_k) if has_field(nms, "top_k") else -1
    conf_thr = float(dp.confidence_threshold) if has_field(dp, "confidence_threshold") \
        else -_FLT_MAX
    if has_field(dp, "normalized_bbox") and not dp.normalized_bbox:
        raise spec.error("normalized_bbox: false (OpenCV's pixel-coordinate boxes) is not "
                         "supported; SSD's boxes are normalised")
    if has_field(dp, "visualize") and dp.visualize:
        warnings.warn(f"layer '{spec.name}': visualize is ignored (landmarknet draws no "
                      "windows)", stacklevel=2)
    if has_field(dp, "save_output_param") and dp.save_output_param.output_directory:
        warnings.warn(f"layer '{spec.name}': save_output_param is ignored (landmarknet returns "
                      "the detections and writes no result files)", stacklevel=2)
    loc, conf, prior = (tuple(s) for s in spec.bottom_shapes)
    if len(prior) < 3 or prior[2] % 4:
        raise spec.error(f"bottom 2 must be PriorBox's (1, 2, P*4), got {prior}", shape=True)
    num_priors = prior[2] // 4
    if math.prod(prior) < 2 * num_priors * 4:
        raise spec.error(f"bottom 2 {prior} lacks the variance channel", shape=True)
    n_loc = 1 if share else num_classes
    if len(loc) < 2 or loc[1] != num_priors * n_loc * 4:
        raise spec.error(f"bottom 0 (locations) needs {num_priors * n_loc * 4} channels for "
                         f"{num_priors} priors, got {loc}", shape=True)
    if len(conf) < 2 or conf[1] != num_priors * num_classes:
        raise spec.error(f"bottom 1 (confidences) needs {num_priors * num_classes} channels for "
                         f"{num_priors} priors and {num_classes} classes, got {conf}",
                         shape=True)
    if loc[0] != conf[0]:
        raise spec.error(f"bottoms 0 and 1 differ in batch size: {loc} and {conf}", shape=True)
    if math.prod(loc[2:]) != 1 or math.prod(conf[2:]) != 1:
        raise spec.error(f"bottoms 0 and 1 must be (N, channels[, 1, 1]), got {loc} and {conf}",
                         shape=True)
    module = DetectionOutput(num_classes, share, int(dp.background_label_id), code_type,
                             bool(dp.variance_encoded_in_target), int(dp.keep_top_k), conf_thr,
                             float(nms.nms_threshold), float(nms.eta), top_k)
    return Built(module, top_shapes=[(1, 1, 1, 7)])
