"""SSD's detection layers (weiliu89/caffe): PriorBox and DetectionOutput.

PriorBox depends only on shapes; it is computed in float32 the way ``prior_box_layer.cpp`` does,
including its truncation of min_size/max_size to ``int``. DetectionOutput decodes the location
predictions against the priors, runs per-class greedy NMS and keeps the best ``keep_top_k``,
following ``detection_output_layer.cpp`` and ``bbox_util.cpp``; its top has a data-dependent
number of rows, so the layer declares Caffe's set-up shape (1, 1, 1, 7) and returns an empty
tensor of that shape on the meta device. Both layers have no gradient (Caffe's Backward is empty).

A net whose location heads need the FaceBoxes fork's PriorBox (sfzhang15/FaceBoxes: SSD's fields,
other C++) gets that one, with a warning (see ``_faceboxes_verdict``). That fork's
DetectionOutput, decoding and NMS are SSD's, so they need nothing of their own.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from landmarknet.errors import LayerError
from landmarknet.layers.costs import PER_ALL_BOTTOMS, CostRule
from landmarknet.layers.emitting import EmitCall, EmitContext, helper_source, literal, num
from landmarknet.layers.registry import Built, LayerSpec, OnnxRule, register
from landmarknet.layers.shape import field_values, fork_param, has_field

_FAMILY = "detection"
_ORIGIN = "SSD (weiliu89/caffe)"
_F32 = np.float32
_FLT_MAX = float(np.finfo(np.float32).max)
_CORNER, _CENTER_SIZE, _CORNER_SIZE = 1, 2, 3


# ----------------------------------------------------------------------------------------------
# PriorBox: SSD's, and the FaceBoxes fork's (sfzhang15/FaceBoxes)
# ----------------------------------------------------------------------------------------------
# FaceBoxes' fork keeps SSD's PriorBoxParameter unchanged but changes the C++: a min_size of 32
# makes a 4x4 grid of boxes per cell (centres shifted by 8 px), 64 a 2x2 grid (16 px), every
# min_size box has half extents (size - 1) / 2 instead of size / 2, and a layer with exactly 3
# min_size values allocates 21 min_size boxes per cell whatever they are (its Forward writes
# 16 + 4 + 1 for 32, 64 and another size; other values leave the output undefined, which
# landmarknet refuses). The max_size and aspect-ratio boxes are SSD's. The prototxt cannot say
# which Caffe it was written for; the net can: the location head on the same feature map predicts
# a fixed number of boxes per cell, and a net is read as FaceBoxes' when only that fork's rules
# give it (see _faceboxes_verdict).

_FACEBOXES = "the FaceBoxes fork (sfzhang15/FaceBoxes)"
#: FaceBoxes' densified min_size values: (boxes per side, shift between box centres in pixels).
#: The grid is not centred on the cell: shifts run from -side/2 to side/2 - 1 steps.
_DENSE_GRIDS = {32: (4, 8), 64: (2, 16)}
#: The fork's LayerSetUp allocates this many min_size boxes per cell for exactly 3 min_size.
_FACEBOXES_THREE_SIZES = 21
#: Layers whose bottoms 0 and 2 are the location predictions and the priors.
_PRIOR_CONSUMERS = ("DetectionOutput", "MultiBoxLoss")
#: Layers that only move values between a head and _PRIOR_CONSUMERS (SSD's Permute/Flatten/
#: Concat plumbing). Anything else ends the search, so the trunk that continues from a feature
#: map is not taken for its head.
_PLUMBING = ("Permute", "Flatten", "Reshape", "Concat", "Split")


# Tool hooks (analyze, emit, export); the emitters follow the modules below.
PRIOR_COST = CostRule(lambda info, training: (0, 0), "0 (a constant of the input shapes)")
_NO_EMIT = ("SSD's decoding, per-class NMS and keep_top_k run in numpy with Caffe's own sort "
            "order (libstdc++'s introsort) and give a number of rows that depends on the data; "
            "a torch-only copy would be a second implementation to keep in step. Emit the net "
            "without it and decode with landmarknet.layers.detection.DetectionOutput.detect")


class PriorBox(nn.Module):
    """Default boxes for every cell of bottom 0, normalised by the image (bottom 1) extent.

    ``faceboxes`` selects the FaceBoxes fork's C++ (densified 32/64 anchors, min_size boxes one
    pixel smaller); otherwise SSD's.
    """

    def __init__(self, min_sizes: list[float], max_sizes: list[float], aspect_ratios: list[float],
                 clip: bool, variances: list[float], img_hw: tuple[int, int] | None,
                 step_hw: tuple[float, float] | None, offset: float,
                 faceboxes: bool = False) -> None:
        super().__init__()
        self.min_sizes, self.max_sizes = min_sizes, max_sizes
        self.aspect_ratios, self.clip, self.variances = aspect_ratios, clip, variances
        self.img_hw, self.step_hw, self.offset = img_hw, step_hw, offset
        self.faceboxes = faceboxes
        counts = prior_counts(min_sizes, max_sizes, aspect_ratios)
        self.num_priors = counts.faceboxes if faceboxes else counts.ssd
        self._cache: dict[tuple[int, int, int, int], np.ndarray] = {}

    def _cell_boxes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-cell boxes in the C++ order: centre shifts (P, 2) as float32, half extents (P, 2)
        as float64 (the C++ halves with the double literal ``2.``)."""
        shifts: list[tuple[float, float]] = []
        halves: list[tuple[float, float]] = []
        for s, smin_f in enumerate(self.min_sizes):
            # prior_box_layer.cpp holds min/max sizes in ``int`` (fractions are truncated) and
            # each extent in a float.
            smin = int(smin_f)
            if self.faceboxes:
                half = float(_F32(smin) - _F32(1)) / 2.0
                side, step = _DENSE_GRIDS.get(smin, (1, 0))
                for i in range(-(side // 2), side - side // 2):  # rows (y) outside, x inside
                    for j in range(-(side // 2), side - side // 2):
                        shifts.append((j * step, i * step))
                        halves.append((half, half))
            else:
                shifts.append((0, 0))
                halves.append((float(_F32(smin)) / 2.0,) * 2)
            if self.max_sizes:
                side_f = float(_F32(math.sqrt(smin * int(self.max_sizes[s]))))
                shifts.append((0, 0))
                halves.append((side_f / 2.0, side_f / 2.0))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                # SSD's master branch scales min_size (never sqrt(min*max)) by the ratio.
                root = _F32(np.sqrt(_F32(ar)))
                shifts.append((0, 0))
                halves.append((float(_F32(smin) * root) / 2.0, float(_F32(smin) / root) / 2.0))
        return (np.asarray(shifts, dtype=_F32), np.asarray(halves, dtype=np.float64))

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
        shift, half = self._cell_boxes()  # (P, 2) each
        cx = (np.arange(lw, dtype=_F32) + offset) * step_w  # (lw,) float32, like the C++
        cy = (np.arange(lh, dtype=_F32) + offset) * step_h  # (lh,)
        # A shifted centre is a float sum (centre + int shift), then widened to double.
        x = (cx[None, :, None] + shift[None, None, :, 0]).astype(np.float64)  # (1, lw, P)
        y = (cy[:, None, None] + shift[None, None, :, 1]).astype(np.float64)  # (lh, 1, P)
        boxes = np.stack(np.broadcast_arrays((x - half[:, 0]) / iw, (y - half[:, 1]) / ih,
                                             (x + half[:, 0]) / iw, (y + half[:, 1]) / ih),
                         axis=-1)
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
        text = (f"min_size={self.min_sizes}, max_size={self.max_sizes}, "
                f"aspect_ratios={self.aspect_ratios}, clip={self.clip}, "
                f"variance={self.variances}, img={self.img_hw}, step={self.step_hw}, "
                f"offset={self.offset}")
        return text + (", rules=FaceBoxes" if self.faceboxes else "")


helper_source("prior_boxes", '''
def prior_boxes(feature, image, shift, half, img_hw, step_hw, offset, clip, variances):
    """SSD's PriorBox top (1, 2, H*W*P*4): per cell of the feature map, the boxes of the cell
    centre moved by shift (P, 2) with half extents half (P, 2), in the C++ layer's float32 and
    double steps, normalised by the image; then the variances."""
    f32, f64 = torch.float32, torch.float64
    lh, lw = int(feature.shape[2]), int(feature.shape[3])
    ih, iw = (int(image.shape[2]), int(image.shape[3])) if img_hw is None else img_hw
    if step_hw is None:
        step_h = torch.tensor(ih, dtype=f32) / torch.tensor(lh, dtype=f32)
        step_w = torch.tensor(iw, dtype=f32) / torch.tensor(lw, dtype=f32)
    else:
        step_h, step_w = torch.tensor(step_hw[0], dtype=f32), torch.tensor(step_hw[1], dtype=f32)
    shift = torch.tensor(shift, dtype=f32)
    half = torch.tensor(half, dtype=f64)
    offset = torch.tensor(offset, dtype=f32)
    cx = (torch.arange(lw, dtype=f32) + offset) * step_w
    cy = (torch.arange(lh, dtype=f32) + offset) * step_h
    x = (cx[None, :, None] + shift[None, None, :, 0]).to(f64)
    y = (cy[:, None, None] + shift[None, None, :, 1]).to(f64)
    x, y = torch.broadcast_tensors(x, y)
    boxes = torch.stack([(x - half[:, 0]) / iw, (y - half[:, 1]) / ih,
                         (x + half[:, 0]) / iw, (y + half[:, 1]) / ih], dim=-1)
    top = boxes.to(f32).reshape(-1)
    if clip:
        top = top.clamp(0.0, 1.0)
    var = torch.tensor(variances, dtype=f32)
    var = var.expand(top.numel()) if len(variances) == 1 else var.repeat(top.numel() // 4)
    return torch.stack([top, var]).reshape(1, 2, -1).to(feature.device, feature.dtype)
''')


def emit_prior_box(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The prior_boxes helper with the per-cell boxes worked out now (they are constants)."""
    sub = call.sub
    shift, half = sub._cell_boxes()
    step = None if sub.step_hw is None else [float(v) for v in sub.step_hw]
    args = [literal(shift.tolist()), literal(half.tolist()),
            literal(None if sub.img_hw is None else tuple(int(v) for v in sub.img_hw)),
            literal(step), num(float(sub.offset)), str(bool(sub.clip)),
            literal([float(v) for v in sub.variances])]
    ctx.helper("prior_boxes")
    return [f"{call.one} = prior_boxes({call.ins[0]}, {call.ins[1]}, {', '.join(args)})"]


class PriorCounts(NamedTuple):
    """Boxes per cell of one PriorBox under each Caffe's rules."""

    ssd: int  # SSD's PriorBox (weiliu89/caffe)
    faceboxes: int  # what FaceBoxes' fork allocates (the top's size)
    faceboxes_written: int  # what FaceBoxes' fork's Forward writes per cell


def prior_counts(min_sizes: list[float], max_sizes: list[float],
                 aspect_ratios: list[float]) -> PriorCounts:
    """Boxes per cell of a PriorBox under SSD's and under FaceBoxes' C++."""
    n_min, n_max, n_ar = len(min_sizes), len(max_sizes), len(aspect_ratios)
    ssd = n_ar * n_min + n_max
    allocated = (_FACEBOXES_THREE_SIZES if n_min == 3 else n_ar * n_min) + n_max
    dense = sum(_DENSE_GRIDS.get(int(m), (1, 0))[0] ** 2 for m in min_sizes)
    written = dense + n_max + (n_ar - 1) * n_min
    return PriorCounts(ssd, allocated, written)


def aspect_ratio_list(pb) -> list[float]:
    """The aspect ratios a PriorBox uses, in its C++ order: 1 first, duplicates dropped, each
    followed by its inverse when ``flip``."""
    ratios = [1.0]
    for ar in field_values(pb, "aspect_ratio"):
        ar = float(ar)
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if pb.flip:
            ratios.append(float(_F32(1.0 / ar)) if ar else math.inf)
    return ratios


def _counts_of(node) -> PriorCounts:
    """prior_counts of a PriorBox node of the graph, from its prototxt fields."""
    pb = node.param.prior_box_param
    return prior_counts([float(v) for v in field_values(pb, "min_size")],
                        [float(v) for v in field_values(pb, "max_size")], aspect_ratio_list(pb))


class _Head(NamedTuple):
    """The location head found for a PriorBox: its layer and its boxes per cell."""

    layer: str
    boxes: int | None  # None when num_output does not divide into whole boxes


def _consumers(graph) -> dict[str, list]:
    """SSA blob -> the nodes that read it."""
    readers: dict[str, list] = {}
    for node in graph.nodes:
        for b in node.bottoms:
            readers.setdefault(b, []).append(node)
    return readers


def _reaches(start, readers: dict[str, list]) -> list[tuple[object, int]]:
    """(DetectionOutput/MultiBoxLoss node, bottom index) pairs that the tops of ``start`` reach
    through _PLUMBING layers only."""
    found, seen, todo = [], set(), list(start.tops)
    while todo:
        blob = todo.pop()
        if blob in seen:
            continue
        seen.add(blob)
        for node in readers.get(blob, ()):
            if node.type in _PRIOR_CONSUMERS:
                found.extend((node, k) for k, b in enumerate(node.bottoms) if b == blob)
            elif node.type in _PLUMBING:
                todo.extend(node.tops)
    return found


def _locations_per_box(consumer) -> int:
    """Location values per prior that a DetectionOutput/MultiBoxLoss reads (4, or 4 per class
    without share_location)."""
    field = ("detection_output_param" if consumer.type == "DetectionOutput"
             else "multibox_loss_param")
    if field not in consumer.param.DESCRIPTOR.fields_by_name:
        return 4
    msg = getattr(consumer.param, field)
    if has_field(msg, "share_location") and not msg.share_location:
        return 4 * max(int(msg.num_classes), 1)
    return 4


def _location_head(prior_node, readers: dict[str, list]) -> _Head | None:
    """The convolution on the PriorBox's feature map whose output reaches bottom 0 (locations)
    of a DetectionOutput/MultiBoxLoss that the PriorBox's top reaches as bottom 2; None when
    there is none, or several (which head goes with which PriorBox is then unknown)."""
    targets = {id(n) for n, k in _reaches(prior_node, readers) if k == 2}
    if not targets:
        return None
    heads = []
    for node in readers.get(prior_node.bottoms[0], ()):
        if node.bottoms[0] != prior_node.bottoms[0]:
            continue
        if "convolution_param" not in node.param.DESCRIPTOR.fields_by_name or \
                not node.param.HasField("convolution_param"):
            continue
        for consumer, k in _reaches(node, readers):
            if k == 0 and id(consumer) in targets:
                per_box = _locations_per_box(consumer)
                num_output = int(node.param.convolution_param.num_output)
                boxes = num_output // per_box if num_output % per_box == 0 else None
                heads.append(_Head(node.name, boxes))
                break
    return heads[0] if len(heads) == 1 else None


class _Verdict(NamedTuple):
    """How a net's PriorBox layers are to be read."""

    faceboxes: bool
    reason: str  # why (for the warning), empty for SSD


def _faceboxes_verdict(graph) -> _Verdict:
    """FaceBoxes' rules for the whole net when some PriorBox's location head predicts the boxes
    per cell that only FaceBoxes' fork makes (a Caffe build applies its rules to every PriorBox)."""
    readers = _consumers(graph)
    for node in graph.nodes:
        if node.type != "PriorBox" or not node.bottoms:
            continue
        head = _location_head(node, readers)
        counts = _counts_of(node)
        if head is None or head.boxes is None or head.boxes == counts.ssd:
            continue
        if head.boxes == counts.faceboxes == counts.faceboxes_written:
            mins = [int(v) for v in field_values(node.param.prior_box_param, "min_size")]
            return _Verdict(True, f"the location head '{head.layer}' of PriorBox '{node.name}' "
                                  f"predicts {head.boxes} boxes per cell, which only that fork "
                                  f"makes for min_size {mins} (SSD's PriorBox makes "
                                  f"{counts.ssd})")
    return _Verdict(False, "")


def _rules_for(spec: LayerSpec, counts: PriorCounts) -> bool:
    """Whether this PriorBox follows FaceBoxes' rules (True) or SSD's (False); warns when it
    reads FaceBoxes', raises when its location head fits neither."""
    graph, node = spec.graph, spec.node
    if graph is None or node is None:
        return False  # a layer built on its own: nothing but the prototxt, which is SSD's
    head = _location_head(node, _consumers(graph))
    verdict = _faceboxes_verdict(graph)
    boxes = None if head is None else head.boxes
    if head is not None and boxes is None:
        raise spec.error(f"its location head '{head.layer}' has a num_output that is not a "
                         "whole number of boxes (4 values per box)", shape=True)
    if verdict.faceboxes:
        _check_faceboxes_counts(spec, counts, head)
        warnings.warn(f"layer '{spec.name}': PriorBox read as that of {_FACEBOXES}, not SSD's "
                      "(min_size 32 and 64 densified, min_size boxes 1 px smaller; boxes per "
                      f"cell: {counts.faceboxes}): {verdict.reason}. Both forks have the same "
                      "prototxt fields; a Caffe build applies its rules to every PriorBox of a "
                      "net", stacklevel=3)
        return True
    if boxes is not None and boxes != counts.ssd:
        raise spec.error(f"its location head '{head.layer}' predicts {boxes} boxes per cell, "
                         f"but for these fields SSD's PriorBox makes {counts.ssd} and the "
                         f"PriorBox of {_FACEBOXES} {_faceboxes_count_text(counts)}",
                         shape=True)
    return False


def _faceboxes_count_text(counts: PriorCounts) -> str:
    """What the fork's PriorBox makes per cell, in words."""
    if counts.faceboxes == counts.faceboxes_written:
        return f"makes {counts.faceboxes}"
    return (f"allocates {counts.faceboxes} but writes {counts.faceboxes_written} (its output "
            "is then undefined)")


def _check_faceboxes_counts(spec: LayerSpec, counts: PriorCounts, head: _Head | None) -> None:
    """In a FaceBoxes net, this layer's fork output must be defined and fit its head."""
    if counts.faceboxes != counts.faceboxes_written:
        raise spec.error(f"in this FaceBoxes net, the PriorBox of {_FACEBOXES} would allocate "
                         f"{counts.faceboxes} boxes per cell for these fields but write "
                         f"{counts.faceboxes_written} (it hard-codes 21 for 3 min_size values "
                         "and densifies min_size 32 and 64), so its output is undefined")
    if head is not None and head.boxes != counts.faceboxes:
        raise spec.error(f"its location head '{head.layer}' predicts {head.boxes} boxes per "
                         f"cell, but in this FaceBoxes net the fork's PriorBox makes "
                         f"{counts.faceboxes} (SSD's would make {counts.ssd})", shape=True)


@register("PriorBox", family=_FAMILY, origin=_ORIGIN, cost=PRIOR_COST, emit=emit_prior_box)
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
    mins, maxs = _checked_sizes(spec, pb)
    for ar in field_values(pb, "aspect_ratio"):
        if ar <= 0:
            raise spec.error(f"aspect_ratio must be positive, got {float(ar)}")
    ratios = aspect_ratio_list(pb)
    variances = [float(v) for v in field_values(pb, "variance")]
    if len(variances) > 1 and len(variances) != 4:
        raise spec.error(f"give 1 or 4 variances, got {len(variances)}")
    if any(v <= 0 for v in variances):
        raise spec.error(f"variances must be positive, got {variances}")
    faceboxes = _rules_for(spec, prior_counts(mins, maxs, ratios))
    module = PriorBox(mins, maxs, ratios, bool(pb.clip), variances or [0.1], _img_hw(spec, pb),
                      _step_hw(spec, pb), float(pb.offset), faceboxes=faceboxes)
    return Built(module)


def _checked_sizes(spec: LayerSpec, pb) -> tuple[list[float], list[float]]:
    """min_size and max_size values, checked as LayerSetUp does."""
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
    return mins, maxs


def _img_hw(spec: LayerSpec, pb) -> tuple[int, int] | None:
    """The image extent the prototxt fixes (img_size or img_h/img_w), or None: bottom 1's."""
    if has_field(pb, "img_h") or has_field(pb, "img_w"):
        if has_field(pb, "img_size"):
            raise spec.error("give either img_size or img_h/img_w, not both")
        if pb.img_h <= 0 or pb.img_w <= 0:
            raise spec.error("img_h and img_w must both be given and positive")
        return int(pb.img_h), int(pb.img_w)
    if has_field(pb, "img_size"):
        if pb.img_size <= 0:
            raise spec.error("img_size must be positive")
        return int(pb.img_size), int(pb.img_size)
    return None


def _step_hw(spec: LayerSpec, pb) -> tuple[float, float] | None:
    """The cell step the prototxt fixes (step or step_h/step_w), or None: image / feature."""
    if has_field(pb, "step_h") or has_field(pb, "step_w"):
        if has_field(pb, "step"):
            raise spec.error("give either step or step_h/step_w, not both")
        if pb.step_h <= 0 or pb.step_w <= 0:
            raise spec.error("step_h and step_w must both be given and positive")
        return float(pb.step_h), float(pb.step_w)
    if has_field(pb, "step"):
        if pb.step <= 0:
            raise spec.error("step must be positive")
        return float(pb.step), float(pb.step)
    return None


# ----------------------------------------------------------------------------------------------
# libstdc++'s std::sort, for DetectionOutput's keep_top_k step
# ----------------------------------------------------------------------------------------------
# detection_output_layer.cpp orders the detections of an image with std::sort on (score, (label,
# prior)) pairs under a comparator that looks at the score only. std::sort is not stable, so the
# order of equal scores (common with random or quantised weights) and which of them survive the
# keep_top_k cut are whatever the C++ library's algorithm produces. The reference builds of Caffe
# use GCC's libstdc++, whose std::sort has been the same introsort since GCC 4 (median-of-three
# pivot moved to the front, unguarded Hoare partition, a recursion budget of 2*floor(log2 n)
# with heapsort past it, insertion sort of runs up to 16 at the end). It is reproduced here step
# for step so that the rows come out in Caffe's order, ties included. (MSVC's and libc++'s
# std::sort order ties differently; a Caffe built with them gives other rows on ties.)

_SORT_THRESHOLD = 16


def _move_median_to_first(v: list, result: int, a: int, b: int, c: int, less) -> None:
    if less(v[a], v[b]):
        if less(v[b], v[c]):
            v[result], v[b] = v[b], v[result]
        elif less(v[a], v[c]):
            v[result], v[c] = v[c], v[result]
        else:
            v[result], v[a] = v[a], v[result]
    elif less(v[a], v[c]):
        v[result], v[a] = v[a], v[result]
    elif less(v[b], v[c]):
        v[result], v[c] = v[c], v[result]
    else:
        v[result], v[b] = v[b], v[result]


def _unguarded_partition(v: list, first: int, last: int, pivot: int, less) -> int:
    while True:
        while less(v[first], v[pivot]):
            first += 1
        last -= 1
        while less(v[pivot], v[last]):
            last -= 1
        if not first < last:
            return first
        v[first], v[last] = v[last], v[first]
        first += 1


def _adjust_heap(v: list, first: int, hole: int, length: int, value, less) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if less(v[first + child], v[first + child - 1]):
            child -= 1
        v[first + hole] = v[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        v[first + hole] = v[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and less(v[first + parent], value):
        v[first + hole] = v[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    v[first + hole] = value


def _heap_sort(v: list, first: int, last: int, less) -> None:
    """std::__partial_sort(first, last, last): make_heap, then sort_heap."""
    length = last - first
    if length >= 2:
        parent = (length - 2) // 2
        while True:
            _adjust_heap(v, first, parent, length, v[first + parent], less)
            if parent == 0:
                break
            parent -= 1
    while last - first > 1:
        last -= 1
        value = v[last]
        v[last] = v[first]
        _adjust_heap(v, first, 0, last - first, value, less)


def _introsort_loop(v: list, first: int, last: int, depth: int, less) -> None:
    while last - first > _SORT_THRESHOLD:
        if depth == 0:
            _heap_sort(v, first, last, less)
            return
        depth -= 1
        mid = first + (last - first) // 2
        _move_median_to_first(v, first, first + 1, mid, last - 1, less)
        cut = _unguarded_partition(v, first + 1, last, first, less)
        _introsort_loop(v, cut, last, depth, less)
        last = cut


def _linear_insert(v: list, last: int, less) -> None:
    value = v[last]
    nxt = last - 1
    while less(value, v[nxt]):
        v[last] = v[nxt]
        last = nxt
        nxt -= 1
    v[last] = value


def _insertion_sort(v: list, first: int, last: int, less) -> None:
    for i in range(first + 1, last):
        if less(v[i], v[first]):
            value = v[i]
            v[first + 1:i + 1] = v[first:i]
            v[first] = value
        else:
            _linear_insert(v, i, less)


def libstdcxx_sort(items: list, less) -> None:
    """Sort ``items`` in place exactly as GCC's ``std::sort(begin, end, less)`` would."""
    n = len(items)
    if n < 2:
        return
    _introsort_loop(items, 0, n, 2 * (n.bit_length() - 1), less)
    if n > _SORT_THRESHOLD:
        _insertion_sort(items, 0, _SORT_THRESHOLD, less)
        for i in range(_SORT_THRESHOLD, n):
            _linear_insert(items, i, less)
    else:
        _insertion_sort(items, 0, n, less)


def libstdcxx_partial_sort(items: list, middle: int, less) -> None:
    """``std::partial_sort(begin, begin + middle, end, less)`` as GCC's libstdc++ runs it: a
    heap of the first ``middle`` items, each later item smaller than its top replaces the top,
    then the heap is sorted. Which of several equal items ends in front depends on this."""
    n = len(items)
    if middle < 1:
        return
    if middle >= 2:
        parent = (middle - 2) // 2
        while True:
            _adjust_heap(items, 0, parent, middle, items[parent], less)
            if parent == 0:
                break
            parent -= 1
    for i in range(middle, n):
        if less(items[i], items[0]):
            value = items[i]
            items[i] = items[0]
            _adjust_heap(items, 0, 0, middle, value, less)
    last = middle
    while last > 1:
        last -= 1
        value = items[last]
        items[last] = items[0]
        _adjust_heap(items, 0, 0, last, value, less)


def _score_greater(a: tuple, b: tuple) -> bool:
    return a[0] > b[0]


def caffe_score_order(scores: np.ndarray) -> np.ndarray:
    """Positions of ``scores`` in the order Caffe's std::sort (score descending) leaves them."""
    if np.unique(scores).size == scores.size and not np.isnan(scores).any():
        return np.argsort(-scores.astype(np.float64), kind="stable")  # no ties: one answer
    items = [(float(s), i) for i, s in enumerate(scores)]
    libstdcxx_sort(items, _score_greater)
    return np.fromiter((i for _, i in items), dtype=np.int64, count=len(items))


# ----------------------------------------------------------------------------------------------
# DetectionOutput
# ----------------------------------------------------------------------------------------------

def decode_boxes(prior: np.ndarray, var: np.ndarray, loc: np.ndarray, code_type: int,
                 variance_in_target: bool) -> np.ndarray:
    """bbox_util.cpp DecodeBBox: ``(..., 4)`` offsets -> (xmin, ymin, xmax, ymax), float32.

    The C++ keeps every intermediate in a ``float`` (its ``exp`` is the C library's ``expf``)
    but halves with the double literal ``2.``, so the halving and the
    additions after it run in float64 here and are rounded where the C++ stores into a float.
    Checked bit for bit against the reference Caffe (tests/test_ssd.py).
    """
    f64 = np.float64
    px0, py0, px1, py1 = (prior[..., i] for i in range(4))
    lx0, ly0, lx1, ly1 = (loc[..., i] for i in range(4))
    if variance_in_target:
        v0 = v1 = v2 = v3 = None
    else:
        v0, v1, v2, v3 = (var[..., i] for i in range(4))

    def scaled(v, x):  # variance * offset, a float product in the C++
        return x if v is None else (v * x).astype(_F32)

    if code_type == _CORNER:
        out = (px0 + scaled(v0, lx0), py0 + scaled(v1, ly0),
               px1 + scaled(v2, lx1), py1 + scaled(v3, ly1))
    elif code_type == _CENTER_SIZE:
        pw, ph = px1 - px0, py1 - py0
        pcx = ((px0 + px1).astype(f64) / 2.0).astype(_F32)
        pcy = ((py0 + py1).astype(f64) / 2.0).astype(_F32)
        cx = (scaled(v0, lx0) * pw + pcx).astype(_F32)
        cy = (scaled(v1, ly0) * ph + pcy).astype(_F32)
        w = _expf(scaled(v2, lx1)) * pw
        h = _expf(scaled(v3, ly1)) * ph
        hw, hh = w.astype(f64) / 2.0, h.astype(f64) / 2.0
        out = (cx - hw, cy - hh, cx + hw, cy + hh)
    elif code_type == _CORNER_SIZE:
        pw, ph = px1 - px0, py1 - py0
        out = (px0 + scaled(v0, lx0) * pw, py0 + scaled(v1, ly0) * ph,
               px1 + scaled(v2, lx1) * pw, py1 + scaled(v3, ly1) * ph)
    else:
        raise ValueError(f"unknown code_type {code_type}")
    return np.stack(out, axis=-1).astype(_F32)


def _libm_expf():
    """The C library's ``expf`` (what Caffe's ``exp(float)`` calls), or None without one."""
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        fn = libm.expf
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


_EXPF = _libm_expf()


def _expf(x: np.ndarray) -> np.ndarray:
    """float32 exp with the bits of the C library's expf.

    glibc's expf is accurate to about 0.5 ulp but not correctly rounded, and numpy's float32
    exp is another approximation: with the reference Caffe, 9 of 12,750 widths of RefineDet's
    boxes differed by one ulp between a correctly rounded exp and glibc's. Calling the same
    expf as Caffe gives its bits on the same C library; without one, a correctly rounded exp.
    """
    x = np.asarray(x, dtype=_F32)
    if _EXPF is None:
        return np.exp(x.astype(np.float64)).astype(_F32)
    flat = x.ravel().tolist()
    return np.fromiter(map(_EXPF, flat), dtype=_F32, count=len(flat)).reshape(x.shape)


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """BBoxSize (normalised): width * height, 0 for an inverted box."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    return np.where(bad, _F32(0), w * h).astype(_F32)


def jaccard(box: np.ndarray, size: np.float32, others: np.ndarray,
            other_sizes: np.ndarray) -> np.ndarray:
    """JaccardOverlap of boxes against others, in float32 as bbox_util.cpp computes it; the
    arguments broadcast (one box against many, or (k, 1, 4) against (1, k, 4) for a matrix)."""
    apart = ((others[..., 0] > box[..., 2]) | (others[..., 2] < box[..., 0]) |
             (others[..., 1] > box[..., 3]) | (others[..., 3] < box[..., 1]))
    iw = np.minimum(box[..., 2], others[..., 2]) - np.maximum(box[..., 0], others[..., 0])
    ih = np.minimum(box[..., 3], others[..., 3]) - np.maximum(box[..., 1], others[..., 1])
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iou = inter / ((size + other_sizes) - inter)
    return np.where(apart | ~((iw > 0) & (ih > 0)), _F32(0), iou).astype(_F32)


#: Above this many candidates the overlap matrix (k * k float32, a few temporaries) is not
#: worth its memory; nms_fast then compares box by box.
_NMS_MATRIX_LIMIT = 2048


def nms_fast(boxes: np.ndarray, sizes: np.ndarray, scores: np.ndarray, score_threshold: float,
             nms_threshold: float, eta: float, top_k: int, overlap=jaccard) -> list[int]:
    """ApplyNMSFast: scores > threshold, stable sort descending, top_k, greedy suppression with
    ``overlap <= threshold`` to keep and the adaptive (eta) threshold. ``overlap`` is
    :func:`jaccard` or, for OpenCV's pixel boxes, :func:`pixel_jaccard`."""
    cand = np.nonzero(scores > _F32(score_threshold))[0]
    # GetMaxScoreIndex uses std::stable_sort: equal scores keep the prior order.
    order = cand[np.argsort(-scores[cand].astype(np.float64), kind="stable")]
    if -1 < top_k < order.size:
        order = order[:top_k]
    kept: list[int] = []
    threshold = _F32(nms_threshold)
    eta32 = _F32(eta)
    if order.size <= _NMS_MATRIX_LIMIT:
        # All overlaps at once (the same float32 operations per pair as one box against the
        # kept ones), then the greedy pass with each candidate's largest overlap with what is
        # kept so far: a box is kept when that is <= the threshold, as when all of them are.
        # One numpy call per kept box instead of one per candidate: MobileNet-SSD's NMS went
        # from 58 to a few ms (benchmarks/bench_detection_output.py).
        b, sz = boxes[order], sizes[order]
        matrix = overlap(b[:, None, :], sz[:, None], b[None, :, :], sz[None, :])
        worst = np.full(order.size, -np.inf, dtype=_F32)
        for j in range(order.size):
            if worst[j] <= threshold:  # False for NaN, as np.all([nan] <= t) is
                kept.append(int(order[j]))
                np.maximum(worst, matrix[:, j], out=worst)
                if eta < 1 and threshold > 0.5:
                    threshold = _F32(threshold * eta32)
        return kept
    for idx in order:  # too many candidates for a matrix (top_k -1 and a low threshold)
        keep = True
        if kept:
            k = np.asarray(kept)
            keep = bool(np.all(overlap(boxes[idx], sizes[idx], boxes[k], sizes[k]) <= threshold))
        if keep:
            kept.append(int(idx))
            if eta < 1 and threshold > 0.5:
                threshold = _F32(threshold * eta32)
    return kept


# OpenCV's `normalized_bbox: false` (Faster R-CNN / R-FCN nets written for OpenCV DNN): boxes are
# in pixels and a box from x0 to x1 covers x1 - x0 + 1 pixels, so widths, areas and overlaps
# count the end pixel. Only OpenCV (detection_output_layer.cpp) defines the field; these follow
# its CPU path.

def decode_pixel_boxes(prior: np.ndarray, var: np.ndarray, loc: np.ndarray, code_type: int,
                       variance_in_target: bool) -> np.ndarray:
    """OpenCV's DecodeBBox with normalized_bbox false: CENTER_SIZE widens the prior by one
    pixel and centres it at ``x0 + w * .5``; the decoded corners are ``cx -/+ w * .5`` (no -1).
    CORNER is the same as Caffe's."""
    if code_type != _CENTER_SIZE:
        return decode_boxes(prior, var, loc, code_type, variance_in_target)
    f64, one = np.float64, _F32(1)
    px0, py0, px1, py1 = (prior[..., i] for i in range(4))
    offsets = [loc[..., i] if variance_in_target else (var[..., i] * loc[..., i]).astype(_F32)
               for i in range(4)]
    pw, ph = (px1 - px0) + one, (py1 - py0) + one
    # `x0 + w * .5` runs in double and is stored as float: w * .5 is exact, so it is the
    # correctly rounded float sum.
    pcx, pcy = (px0 + pw * _F32(0.5)).astype(_F32), (py0 + ph * _F32(0.5)).astype(_F32)
    cx = (offsets[0] * pw + pcx).astype(_F32)
    cy = (offsets[1] * ph + pcy).astype(_F32)
    w = _expf(offsets[2]) * pw
    h = _expf(offsets[3]) * ph
    hw, hh = w.astype(f64) * 0.5, h.astype(f64) * 0.5
    out = (cx - hw, cy - hh, cx + hw, cy + hh)
    return np.stack(out, axis=-1).astype(_F32)


def pixel_box_sizes(boxes: np.ndarray) -> np.ndarray:
    """OpenCV's BBoxSize for pixel boxes: (w + 1) * (h + 1), 0 for an inverted box."""
    one = _F32(1)
    w = (boxes[..., 2] - boxes[..., 0]) + one
    h = (boxes[..., 3] - boxes[..., 1]) + one
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    return np.where(bad, _F32(0), w * h).astype(_F32)


def pixel_jaccard(box: np.ndarray, size: np.float32, others: np.ndarray,
                  other_sizes: np.ndarray) -> np.ndarray:
    """OpenCV's JaccardOverlap<false>: the intersection counts its end pixels, so boxes that
    share only an edge (intersection width 0) still overlap by one pixel column."""
    inter_box = np.stack([np.maximum(box[..., 0], others[..., 0]),
                          np.maximum(box[..., 1], others[..., 1]),
                          np.minimum(box[..., 2], others[..., 2]),
                          np.minimum(box[..., 3], others[..., 3])], axis=-1)
    inter = pixel_box_sizes(inter_box)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iou = inter / ((size + other_sizes) - inter)
    return np.where(inter > 0, iou, _F32(0)).astype(_F32)


def objectness_filtered(conf: np.ndarray, arm_conf: np.ndarray, objectness: float) -> np.ndarray:
    """RefineDet's OSGetConfidenceScores: a prior whose ARM foreground probability is below
    ``objectness_score`` gets scores (1, 0, 0, ...), whatever the background label is."""
    easy = arm_conf[:, :, 1] < _F32(objectness)  # (n, P)
    out = conf.copy()
    out[easy] = 0
    out[..., 0][easy] = 1
    return out


class DetectionOutput(nn.Module):
    """Decode, per-class NMS, keep_top_k: rows [image, label, score, xmin, ymin, xmax, ymax].

    With ``refine`` (RefineDet, 4 or 5 bottoms) the ARM confidences filter easy negatives by
    ``objectness_score`` and, with a fifth bottom, the ARM offsets first move the priors.

    With ``pixel`` (OpenCV's ``normalized_bbox: false``) the priors are pixel boxes, e.g. the
    ROIs of a Proposal layer, decoded and compared as OpenCV does (see
    :func:`decode_pixel_boxes`); ``clip`` clamps to the image given as fourth bottom.
    """

    def __init__(self, num_classes: int, share_location: bool, background_label_id: int,
                 code_type: int, variance_encoded_in_target: bool, keep_top_k: int,
                 confidence_threshold: float, nms_threshold: float, eta: float,
                 top_k: int, clip: bool = False, objectness_score: float | None = None,
                 pixel: bool = False) -> None:
        super().__init__()
        self.num_classes, self.share_location = num_classes, share_location
        self.background_label_id, self.code_type = background_label_id, code_type
        self.variance_encoded_in_target = variance_encoded_in_target
        self.keep_top_k, self.confidence_threshold = keep_top_k, confidence_threshold
        self.nms_threshold, self.eta, self.top_k = nms_threshold, eta, top_k
        self.clip, self.objectness_score = clip, objectness_score
        self.pixel = pixel

    def _decode_pixel(self, prior: np.ndarray, var: np.ndarray, loc: np.ndarray,
                      image_hw: tuple[int, int] | None) -> np.ndarray:
        boxes = decode_pixel_boxes(prior, var, loc, self.code_type,
                                   self.variance_encoded_in_target)
        if self.clip:
            if image_hw is None:
                raise LayerError("DetectionOutput: clip with normalized_bbox: false clamps to "
                                 "the image, which must be the fourth bottom",
                                 type="DetectionOutput")
            # OpenCV clamps to [0, width - 1] x [0, height - 1] of the fourth bottom (N, C, H, W).
            lo = np.zeros(4, dtype=_F32)
            hi = np.asarray([image_hw[1] - 1, image_hw[0] - 1] * 2, dtype=_F32)
            boxes = np.minimum(np.maximum(boxes, lo), hi).astype(_F32)
        return boxes

    def _decode(self, prior: np.ndarray, var: np.ndarray, loc: np.ndarray) -> np.ndarray:
        if self.code_type in (_CENTER_SIZE, _CORNER_SIZE):
            # DecodeBBox CHECKs that every prior has a positive width and height (Caffe aborts).
            w, h = prior[..., 2] - prior[..., 0], prior[..., 3] - prior[..., 1]
            if not (np.all(w > 0) and np.all(h > 0)):
                raise LayerError("DetectionOutput: a prior box has a width or height <= 0, "
                                 "which Caffe's DecodeBBox refuses (CHECK_GT(prior_width, 0))",
                                 type="DetectionOutput")
        boxes = decode_boxes(prior, var, loc, self.code_type, self.variance_encoded_in_target)
        if self.clip:
            # OpenCV's `clip` (SSD's C++ passes clip_bbox = false): clamp to [0, 1]; the size
            # used by NMS is that of the clipped box.
            boxes = np.clip(boxes, _F32(0), _F32(1))
        return boxes

    def _keep_top_k(self, picked: dict[int, list[int]], conf: np.ndarray) -> dict[int, list[int]]:
        """Caffe's per-image cut to keep_top_k, in the order its std::sort leaves the pairs."""
        labels = [c for c in sorted(picked) for _ in picked[c]]
        idxs = [i for c in sorted(picked) for i in picked[c]]
        scores = np.asarray([conf[i, c] for c, i in zip(labels, idxs)], dtype=_F32)
        if self.pixel and self.keep_top_k * 8 <= len(scores):
            # OpenCV switches to std::partial_sort when the pairs are at least 8 * keep_top_k.
            items = [(float(v), j) for j, v in enumerate(scores)]
            libstdcxx_partial_sort(items, self.keep_top_k, _score_greater)
            order = [j for _, j in items]
        else:
            order = caffe_score_order(scores)
        chosen: dict[int, list[int]] = {}
        for j in order[:self.keep_top_k]:
            chosen.setdefault(labels[j], []).append(idxs[j])
        return chosen

    def detect(self, loc: np.ndarray, conf: np.ndarray, prior: np.ndarray,
               arm_conf: np.ndarray | None = None,
               arm_loc: np.ndarray | None = None,
               image_hw: tuple[int, int] | None = None) -> np.ndarray:
        """The (rows, 7) float32 detections for numpy inputs laid out as Caffe's blobs
        (``image_hw``: the image's height and width, for ``clip`` on pixel boxes)."""
        n = loc.shape[0]
        num_priors = prior.shape[2] // 4
        n_loc = 1 if self.share_location else self.num_classes
        loc = loc.reshape(n, num_priors, n_loc, 4).astype(_F32)
        conf = conf.reshape(n, num_priors, self.num_classes).astype(_F32)
        flat_prior = prior.reshape(-1).astype(_F32)
        boxes_p = flat_prior[:num_priors * 4].reshape(num_priors, 4)
        if self.pixel and self.variance_encoded_in_target:
            # OpenCV's prior blob then has one channel, the boxes; the variances are unused.
            var_p = np.ones((num_priors, 4), dtype=_F32)
        else:
            var_p = flat_prior[num_priors * 4:num_priors * 8].reshape(num_priors, 4)
        if arm_conf is not None:
            arm_conf = arm_conf.reshape(n, num_priors, 2).astype(_F32)
            conf = objectness_filtered(conf, arm_conf, self.objectness_score)
        if arm_loc is not None:
            # CasRegDecodeBBoxesAll: the ARM offsets move each image's priors (never clipped),
            # then the ODM offsets are decoded against the moved priors.
            arm_loc = arm_loc.reshape(n, num_priors, 4).astype(_F32)
            moved = decode_boxes(boxes_p[None], var_p[None], arm_loc, self.code_type,
                                 self.variance_encoded_in_target)  # (n, P, 4)
            decoded = self._decode(moved[:, :, None, :], var_p[None, :, None, :], loc)
        elif self.pixel:
            decoded = self._decode_pixel(boxes_p[None, :, None, :], var_p[None, :, None, :],
                                         loc, image_hw)
        else:
            decoded = self._decode(boxes_p[None, :, None, :], var_p[None, :, None, :], loc)
        sizes = (pixel_box_sizes if self.pixel else box_sizes)(decoded)  # (n, P, n_loc)
        overlap = pixel_jaccard if self.pixel else jaccard
        # OpenCV's NMS stops once it has kept keep_top_k boxes when only one class is scored;
        # a truncation of the greedy picks, which can change which tied box survives the cut.
        n_target = self.num_classes - (0 <= self.background_label_id < self.num_classes)
        limit = self.keep_top_k if self.pixel and n_target == 1 and self.keep_top_k > -1 \
            else None
        rows: list[list[float]] = []
        for i in range(n):
            picked: dict[int, list[int]] = {}
            for c in range(self.num_classes):
                if c == self.background_label_id:
                    continue
                lc = 0 if self.share_location else c
                picked[c] = nms_fast(decoded[i, :, lc], sizes[i, :, lc], conf[i, :, c],
                                     self.confidence_threshold, self.nms_threshold, self.eta,
                                     self.top_k, overlap)[:limit]
            if -1 < self.keep_top_k < sum(len(v) for v in picked.values()):
                picked = self._keep_top_k(picked, conf[i])
            for c in sorted(picked):  # a std::map: labels ascending
                lc = 0 if self.share_location else c
                for idx in picked[c]:
                    rows.append([i, c, conf[i, idx, c], *decoded[i, idx, lc]])
        if not rows:
            # detection_output_layer.cpp: one fake row per image, [i, -1, -1, -1, -1, -1, -1].
            out = np.full((n, 7), -1, dtype=_F32)
            out[:, 0] = np.arange(n)
            return out
        return np.asarray(rows, dtype=_F32)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
                *refine: torch.Tensor) -> torch.Tensor:
        if _is_exporting():
            raise LayerError(_NO_EXPORT, type="DetectionOutput")
        if loc.device.type == "meta":
            return torch.empty((1, 1, 1, 7), device=loc.device, dtype=loc.dtype)
        if self.pixel:
            # The optional fourth bottom is the image: only its size is read (for clip).
            image_hw = tuple(refine[0].shape[2:4]) if refine else None
            arrays = [t.detach().cpu().float().numpy() for t in (loc, conf, prior)]
            rows = self.detect(*arrays, image_hw=image_hw)
        else:
            arrays = [t.detach().cpu().float().numpy() for t in (loc, conf, prior, *refine)]
            rows = self.detect(*arrays)
        return torch.from_numpy(rows).reshape(1, 1, -1, 7).to(device=loc.device, dtype=loc.dtype)

    def extra_repr(self) -> str:
        text = (f"num_classes={self.num_classes}, share_location={self.share_location}, "
                f"background_label_id={self.background_label_id}, code_type={self.code_type}, "
                f"keep_top_k={self.keep_top_k}, confidence_threshold="
                f"{self.confidence_threshold}, nms_threshold={self.nms_threshold}, "
                f"top_k={self.top_k}, eta={self.eta}, clip={self.clip}")
        if self.pixel:
            text += ", normalized_bbox=False"
        if self.objectness_score is not None:
            text += f", objectness_score={self.objectness_score}"
        return text


_NO_EXPORT = (
    "DetectionOutput cannot be exported to ONNX or traced: SSD's per-class NMS and keep_top_k "
    "give a number of rows that depends on the data, and landmarknet computes them outside "
    "torch (tracing would bake one input's detections into the graph as constants). Export the "
    "net up to its bottoms (e.g. mbox_loc, mbox_conf_flatten and mbox_priorbox) and decode them "
    "with landmarknet.layers.detection.DetectionOutput.detect or your runtime's SSD "
    "post-processing")


def _is_exporting() -> bool:
    """Whether torch is tracing or exporting this forward (TorchScript, ONNX or dynamo)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _refine_bottoms(spec: LayerSpec, dp, num_priors: int) -> tuple[float | None, int]:
    """RefineDet's extra bottoms: (objectness_score or None, number of bottoms used)."""
    n_bottoms = len(spec.bottom_shapes)
    refinedet = n_bottoms == 5 or (n_bottoms == 4 and not dp.visualize)
    if not refinedet:
        if has_field(dp, "objectness_score"):
            raise spec.error("objectness_score (RefineDet) needs the ARM confidences as a "
                             "fourth bottom")
        return None, 3  # weiliu89's optional fourth bottom is the image, used by visualize only
    arm_conf = tuple(spec.bottom_shapes[3])
    if len(arm_conf) < 2 or math.prod(arm_conf[1:]) != num_priors * 2:
        raise spec.error(f"bottom 3 (RefineDet's ARM confidences) needs {num_priors * 2} values "
                         f"per image (2 per prior), got {arm_conf}", shape=True)
    if n_bottoms == 5:
        if not dp.share_location:
            raise spec.error("RefineDet's ARM locations (bottom 4) need share_location: true")
        arm_loc = tuple(spec.bottom_shapes[4])
        if len(arm_loc) < 2 or math.prod(arm_loc[1:]) != num_priors * 4:
            raise spec.error(f"bottom 4 (RefineDet's ARM locations) needs {num_priors * 4} "
                             f"values per image, got {arm_loc}", shape=True)
    return float(dp.objectness_score), n_bottoms


def _check_heads(spec: LayerSpec, num_priors: int, num_classes: int, n_loc: int) -> None:
    """Bottoms 0 and 1 must hold one location / one score set per prior (Reshape's CHECKs)."""
    loc, conf = (tuple(s) for s in spec.bottom_shapes[:2])
    if len(loc) < 2 or loc[1] != num_priors * n_loc * 4:
        hint = ""
        if len(loc) >= 2 and loc[1] % (n_loc * 4) == 0 and loc[1] // (n_loc * 4) > num_priors:
            hint = (f" (the location heads predict {loc[1] // (n_loc * 4)} boxes; landmarknet "
                    "reads a PriorBox as FaceBoxes' densified one only when it finds the "
                    "Convolution on the PriorBox's feature map that feeds these locations)")
        raise spec.error(f"bottom 0 (locations) needs {num_priors * n_loc * 4} channels for "
                         f"{num_priors} priors, got {loc}{hint}", shape=True)
    if len(conf) < 2 or conf[1] != num_priors * num_classes:
        raise spec.error(f"bottom 1 (confidences) needs {num_priors * num_classes} channels for "
                         f"{num_priors} priors and {num_classes} classes, got {conf}",
                         shape=True)
    if loc[0] != conf[0]:
        raise spec.error(f"bottoms 0 and 1 differ in batch size: {loc} and {conf}", shape=True)
    if math.prod(loc[2:]) != 1 or math.prod(conf[2:]) != 1:
        raise spec.error(f"bottoms 0 and 1 must be (N, channels[, 1, 1]), got {loc} and {conf}",
                         shape=True)


def _warn_ignored(spec: LayerSpec, dp) -> None:
    """Fields that only write files or draw windows: accepted, never change the detections."""
    if dp.visualize or has_field(dp, "visualize_threshold") or has_field(dp, "save_file"):
        warnings.warn(f"layer '{spec.name}': visualize/visualize_threshold/save_file are "
                      "ignored (they draw detections on screen or into a video in SSD's Caffe; "
                      "the detections are the same)", stacklevel=3)
    if dp.HasField("save_output_param"):
        warnings.warn(f"layer '{spec.name}': save_output_param is ignored (SSD's Caffe writes "
                      "result files with it; the detections are the same and landmarknet "
                      "returns them without writing files)", stacklevel=3)


@register("DetectionOutput", family=_FAMILY, origin=_ORIGIN, cost=PER_ALL_BOTTOMS,
          onnx=OnnxRule(not_exportable=_NO_EXPORT), emit_reason=_NO_EMIT)
def detection_output(spec: LayerSpec) -> Built:
    """SSD decoding + per-class NMS + keep_top_k; rows [image, label, score, x0, y0, x1, y1]."""
    spec.expect_bottoms(3, 5)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    dp = fork_param(spec, "detection_output_param", "SSD")
    if not has_field(dp, "num_classes") or dp.num_classes < 1:
        raise spec.error("num_classes is required")
    num_classes = int(dp.num_classes)
    share = bool(dp.share_location)
    if share and dp.background_label_id == -1:
        # DecodeBBoxesAll skips the shared location label (-1) as the background, then the
        # layer aborts with "Could not find location predictions for label -1".
        raise spec.error("background_label_id: -1 with share_location: true makes SSD's Caffe "
                         "abort (the shared locations carry label -1 and are skipped as the "
                         "background); use share_location: false or a real background label")
    code_type = int(dp.code_type)
    if code_type not in (_CORNER, _CENTER_SIZE, _CORNER_SIZE):
        raise spec.error(f"unknown code_type {code_type}")
    # Without nms_param, SSD's Caffe (weiliu89) still runs NMS with the message's defaults
    # (nms_threshold 0.3, no top_k, eta 1). The brocolli-caffe fork skips NMS instead.
    nms = dp.nms_param
    if nms.nms_threshold < 0:
        raise spec.error(f"nms_threshold must be non-negative, got {nms.nms_threshold}")
    if not 0 < nms.eta <= 1:
        raise spec.error(f"eta must be in (0, 1], got {nms.eta}")
    top_k = int(nms.top_k) if has_field(nms, "top_k") else -1
    conf_thr = float(dp.confidence_threshold) if has_field(dp, "confidence_threshold") \
        else -_FLT_MAX
    if has_field(dp, "normalized_bbox") and not dp.normalized_bbox:
        return _pixel_detection_output(spec, dp, num_classes, share, code_type, top_k, conf_thr)
    _warn_ignored(spec, dp)
    prior = tuple(spec.bottom_shapes[2])
    if len(prior) < 3 or prior[2] % 4:
        raise spec.error(f"bottom 2 must be PriorBox's (1, 2, P*4), got {prior}", shape=True)
    num_priors = prior[2] // 4
    if math.prod(prior) < 2 * num_priors * 4:
        raise spec.error(f"bottom 2 {prior} lacks the variance channel", shape=True)
    _check_heads(spec, num_priors, num_classes, 1 if share else num_classes)
    objectness, used = _refine_bottoms(spec, dp, num_priors)
    module = DetectionOutput(num_classes, share, int(dp.background_label_id), code_type,
                             bool(dp.variance_encoded_in_target), int(dp.keep_top_k), conf_thr,
                             float(nms.nms_threshold), float(nms.eta), top_k,
                             clip=bool(dp.clip), objectness_score=objectness)
    if used == 3 and len(spec.bottom_shapes) == 4:
        module = _DropImage(module)
    return Built(module, top_shapes=[(1, 1, 1, 7)])


class _DropImage(nn.Module):
    """SSD's DetectionOutput with the image as fourth bottom (only drawn by visualize)."""

    def __init__(self, inner: DetectionOutput) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        return self.inner(loc, conf, prior)


def _pixel_detection_output(spec: LayerSpec, dp, num_classes: int, share: bool, code_type: int,
                            top_k: int, conf_thr: float) -> Built:
    """OpenCV's ``normalized_bbox: false``: pixel boxes, priors (1, 1 or 2, 4P) such as the
    ROIs of a Proposal layer reshaped by the prototxt, optional image as fourth bottom."""
    nms = dp.nms_param
    if code_type == _CORNER_SIZE:
        # OpenCV reads every code_type other than CENTER_SIZE as CORNER.
        raise spec.error("code_type: CORNER_SIZE with normalized_bbox: false is not supported "
                         "(OpenCV, which defines normalized_bbox, decodes it as CORNER); use "
                         "CORNER or CENTER_SIZE")
    if nms.eta != 1:
        raise spec.error(f"eta {nms.eta} with normalized_bbox: false: OpenCV ignores eta (its "
                         "NMS threshold never adapts); remove the field")
    if not nms.nms_threshold > 0:
        raise spec.error(f"nms_threshold must be > 0 with normalized_bbox: false (OpenCV "
                         f"asserts it), got {nms.nms_threshold}")
    if has_field(dp, "objectness_score"):
        raise spec.error("objectness_score (RefineDet) cannot be combined with "
                         "normalized_bbox: false")
    if len(spec.bottom_shapes) > 4:
        raise spec.error(f"normalized_bbox: false takes 3 bottoms (locations, confidences, "
                         f"priors) and optionally the image, got {len(spec.bottom_shapes)}")
    if not has_field(dp, "confidence_threshold"):
        conf_thr = 0.0  # OpenCV's default: a score must be > 0 (Caffe's is -FLT_MAX)
    if top_k == 0:
        top_k = -1  # OpenCV's NMS applies top_k only when it is > 0
    encoded = bool(dp.variance_encoded_in_target)
    prior = tuple(spec.bottom_shapes[2])
    channels = 1 if encoded else 2
    if len(prior) < 3 or prior[0] != 1 or prior[1] != channels or prior[2] % 4 \
            or math.prod(prior[3:]) != 1:
        what = "boxes only, as variance_encoded_in_target is true" if encoded else \
            "boxes and variances, as variance_encoded_in_target is false"
        raise spec.error(f"bottom 2 (priors, with normalized_bbox: false e.g. a Proposal "
                         f"layer's ROIs without the batch column) must be (1, {channels}, 4*P) "
                         f"({what}), got {prior}", shape=True)
    num_priors = prior[2] // 4
    _check_heads(spec, num_priors, num_classes, 1 if share else num_classes)
    if len(spec.bottom_shapes) == 4 and len(spec.bottom_shapes[3]) != 4:
        raise spec.error(f"bottom 3 (the image, whose height and width bound clip) must be "
                         f"(N, C, H, W), got {tuple(spec.bottom_shapes[3])}", shape=True)
    if dp.clip and len(spec.bottom_shapes) < 4:
        raise spec.error("clip: true with normalized_bbox: false clamps boxes to the image, "
                         "which must be the fourth bottom (OpenCV asserts it)")
    _warn_ignored(spec, dp)
    module = DetectionOutput(num_classes, share, int(dp.background_label_id), code_type,
                             encoded, int(dp.keep_top_k), conf_thr, float(nms.nms_threshold),
                             1.0, top_k, clip=bool(dp.clip), pixel=True)
    return Built(module, top_shapes=[(1, 1, 1, 7)])
