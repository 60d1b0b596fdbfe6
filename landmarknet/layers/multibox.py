"""SSD's MultiBoxLoss (weiliu89/caffe): the training loss of every SSD-style detector.

Bottoms: location predictions (N, P*4), confidences (N, P*C), the priors (1, 2, P*4: boxes, then
variances) and the ground truth (1, 1, G, 8): one row per box of the batch, ``[image, class,
instance, xmin, ymin, xmax, ymax, difficult]`` in normalised coordinates (image -1: no box).
One top: the loss.

What the C++ does (multibox_loss_layer.cpp and bbox_util.cpp), and so what this does:

1. **Match** each image's priors to its ground-truth boxes by Jaccard overlap (float32, as
   bbox_util computes it): first a greedy bipartite pass (the largest overlap left, ties to the
   lowest prior then the lowest box), then with PER_PREDICTION every prior still free takes its
   best box with overlap >= ``overlap_threshold``. ``use_prior_for_matching: false`` matches the
   decoded predictions instead (per class when ``share_location`` is false).
2. **Mine** negatives (MAX_NEGATIVE): per image, the unmatched priors whose best overlap is
   below ``neg_overlap``, ranked by their softmax loss against the background class, the top
   ``int(positives * neg_pos_ratio)`` of them; ties are ordered as libstdc++'s ``std::sort``
   leaves them. NONE uses every prior for the confidence loss.
3. **Loss** = ``loc_weight * L_loc / n + L_conf / n``, with L_loc the smooth L1 (or half the
   squared L2) sum over the matched priors' encoded offsets and L_conf the summed softmax (or
   logistic) loss over matched and mined priors; ``n`` from ``loss_param.normalization``
   (VALID: the number of matches; at least 1). A term enters only when its bottom's
   ``propagate_down`` is true (default true, true, false, false), as in the C++.

Steps 1-2 pick indices and run in numpy (no gradient, as in Caffe); step 3 runs in torch on the
picked rows, so autograd gives Caffe's Backward: (p - onehot) / n on the confidences (also where
the forward clamps p at FLT_MIN), the smooth L1 slope times loc_weight / n on the locations, and
zero everywhere else. One quirk is kept: with ``encode_variance_in_target`` the C++ divides the
predictions by the prior variances for the loss but hands the gradient back undivided. Checked against the reference Caffe's MultiBoxLoss (tests/test_multibox_loss.py).

Not reproduced, refused with the reason: HARD_EXAMPLE mining and mining through NMS
(``nms_param``), mining with ``share_location: false`` (the C++ refuses it too), and the
LOGISTIC loss without mining (bbox_util's encoder moves the target pointer by P, not P*C, per
image: every image after the first gets its targets at the wrong place). The mining ranks losses
computed in float32 with numpy's exp: where two priors' losses differ by about one ulp, the
order can differ from the reference's CPU path (Caffe's own GPU path computes them another way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from landmarknet.errors import LayerError
from landmarknet.layers.costs import PER_ALL_BOTTOMS
from landmarknet.layers.detection import box_sizes, caffe_score_order, decode_boxes, jaccard
from landmarknet.layers.registry import Built, LayerSpec, OnnxRule, register

_FAMILY = "detection"
_ORIGIN = "SSD (weiliu89/caffe)"
_F32 = np.float32
_FLT_MIN = float(np.finfo(np.float32).tiny)
_BIPARTITE, _PER_PREDICTION = 0, 1
_L2, _SMOOTH_L1 = 0, 1
_SOFTMAX, _LOGISTIC = 0, 1
_NONE, _MAX_NEGATIVE, _HARD_EXAMPLE = 0, 1, 2
_CORNER, _CENTER_SIZE, _CORNER_SIZE = 1, 2, 3
_FULL, _VALID, _BATCH_SIZE = 0, 1, 2
_SHARED = -1  # bbox_util's label key for shared location predictions
#: MatchBBox keeps overlaps ``> 1e-6`` (a float against a double literal): for a float32 that is
#: the same as ``> float32(1e-6)``, which lies just below 1e-6 with no float32 between them.
_MIN_OVERLAP = np.float32(1e-6)
#: The batch's prior-to-box overlaps are computed at once when the (images, priors, boxes)
#: arrays stay below this many elements; else image by image.
_BATCH_MATCH_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class MultiBoxConfig:
    """The fields of MultiBoxLossParameter and LossParameter that the loss reads."""

    num_classes: int
    share_location: bool
    background: int
    match_type: int
    overlap_threshold: float
    use_prior_for_matching: bool
    use_difficult_gt: bool
    mining: bool
    neg_pos_ratio: float
    neg_overlap: float
    code_type: int
    variance_in_target: bool
    agnostic: bool
    ignore_cross_boundary: bool
    bp_inside: bool
    loc_loss: int
    conf_loss: int
    loc_weight: float
    normalization: int
    propagate_loc: bool
    propagate_conf: bool


# ----------------------------------------------------------------------------------------------
# matching and mining (numpy, float32 as bbox_util.cpp)
# ----------------------------------------------------------------------------------------------

@dataclass
class _Truth:
    """One image's ground-truth boxes (GetGroundTruth): corners, sizes and classes."""

    boxes: np.ndarray  # (k, 4) float32
    sizes: np.ndarray  # (k,) float32
    labels: np.ndarray  # (k,) int


def ground_truth(rows: np.ndarray, background: int, use_difficult: bool,
                 layer: str) -> dict[int, _Truth]:
    """GetGroundTruth: rows of 8 -> boxes per image; image -1 rows are padding, difficult boxes
    are dropped unless ``use_difficult``; a box of the background class is an error."""
    per_image: dict[int, list[np.ndarray]] = {}
    for row in rows:
        image = int(row[0])  # static_cast<int>: truncation
        if image == -1:
            continue
        label = int(row[1])
        if label == background:
            raise LayerError(f"ground truth holds a box of the background class {background} "
                             f"(image {image}); MultiBoxLoss's data must label objects only "
                             "(Caffe aborts: 'Found background label in the dataset')",
                             layer=layer, type="MultiBoxLoss")
        if not use_difficult and row[7] != 0:
            continue
        per_image.setdefault(image, []).append(row)
    out = {}
    for image, kept in per_image.items():
        block = np.stack(kept).astype(_F32)
        boxes = np.ascontiguousarray(block[:, 3:7])
        out[image] = _Truth(boxes, box_sizes(boxes), block[:, 1].astype(np.int64))
    return out


def _cross_boundary(boxes: np.ndarray) -> np.ndarray:
    """IsCrossBoundaryBBox: a corner outside [0, 1]."""
    return ((boxes < 0) | (boxes > 1)).any(axis=-1)


def _greedy_match(ov: np.ndarray, present: np.ndarray, cross: np.ndarray, match_type: int,
                  threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """MatchBBox's choice for k images at once: ``ov`` (k, P, G) float32 overlaps, ``present``
    where they count (above 1e-6, a real box, not a cross-boundary prediction), ``cross`` (P,)
    the predictions marked -2. Returns (indices into G or -1/-2, best overlaps), (k, P) each.

    Bipartite: per image, the largest overlap left among free predictions and unused boxes; ties
    go to the lowest prediction, then the lowest box (the C++'s iteration order, strict '>').
    PER_PREDICTION then gives every free prediction its best box at >= ``threshold`` (the first
    of equal overlaps)."""
    k, _, g = ov.shape
    overlaps = np.where(present, ov, _F32(0)).max(axis=2)
    indices = np.where(cross[None, :], -2, -1).repeat(k, axis=0)
    masked = np.where(present, ov, -np.inf)
    free = present.any(axis=1)  # boxes that overlap something; the others can never be taken
    rows = np.arange(k)
    for _ in range(g):  # one box per image and round
        cand = np.where((indices == -1)[:, :, None] & free[:, None, :], masked, -np.inf)
        i, j = np.divmod(cand.reshape(k, -1).argmax(axis=1), g)
        ok = np.isfinite(cand[rows, i, j])
        if not ok.any():
            break
        indices[rows[ok], i[ok]] = j[ok]
        overlaps[rows[ok], i[ok]] = ov[rows[ok], i[ok], j[ok]]
        free[rows[ok], j[ok]] = False
    if match_type == _PER_PREDICTION:
        good = np.where(present & (ov >= _F32(threshold)), masked, -np.inf)
        best = good.argmax(axis=2)
        r, c = np.nonzero((indices == -1) & np.isfinite(good).any(axis=2))
        indices[r, c] = best[r, c]
        overlaps[r, c] = ov[r, c, best[r, c]]
    return indices.astype(np.int64), overlaps


def match_boxes(truth: _Truth, preds: np.ndarray, label: int, match_type: int,
                threshold: float, ignore_cross_boundary: bool) -> tuple[np.ndarray, np.ndarray]:
    """MatchBBox for one image: (indices into the truth or -1 / -2 for a cross-boundary
    prediction, and each prediction's best overlap) for ``preds`` (P, 4) against the boxes of
    class ``label`` (-1: all)."""
    n_pred = preds.shape[0]
    gt_index = np.arange(len(truth.labels)) if label == -1 else \
        np.nonzero(truth.labels == label)[0]
    if gt_index.size == 0:
        return np.full(n_pred, -1, np.int64), np.zeros(n_pred, _F32)
    cross = _cross_boundary(preds) if ignore_cross_boundary else np.zeros(n_pred, bool)
    ov = jaccard(preds[:, None, :], box_sizes(preds)[:, None], truth.boxes[gt_index][None],
                 truth.sizes[gt_index][None])[None]
    present = (ov > _MIN_OVERLAP) & ~cross[None, :, None]
    indices, overlaps = _greedy_match(ov, present, cross, match_type, threshold)
    indices, overlaps = indices[0], overlaps[0]
    hit = indices > -1
    indices[hit] = gt_index[indices[hit]]
    return indices, overlaps


def match_priors_batch(cfg: MultiBoxConfig, truths: dict[int, _Truth], n: int,
                       priors: np.ndarray) -> list[tuple[np.ndarray, np.ndarray] | None] | None:
    """:func:`match_boxes` of the priors against every box of each image, for all images at
    once (the same float32 overlaps, the same greedy order per image); None when the arrays
    would be too large, and None for an image without boxes."""
    images = [i for i in range(n) if i in truths]
    if not images:
        return [None] * n
    g = max(len(truths[i].labels) for i in images)
    k, n_pred = len(images), priors.shape[0]
    if k * n_pred * g > _BATCH_MATCH_ELEMENTS:
        return None
    boxes = np.zeros((k, g, 4), _F32)
    sizes = np.zeros((k, g), _F32)
    valid = np.zeros((k, g), bool)
    for row, i in enumerate(images):
        t = truths[i]
        boxes[row, :len(t.labels)], sizes[row, :len(t.labels)] = t.boxes, t.sizes
        valid[row, :len(t.labels)] = True
    cross = _cross_boundary(priors) if cfg.ignore_cross_boundary else np.zeros(n_pred, bool)
    ov = jaccard(priors[None, :, None, :], box_sizes(priors)[None, :, None],
                 boxes[:, None, :, :], sizes[:, None, :])
    present = (ov > _MIN_OVERLAP) & ~cross[None, :, None] & valid[:, None, :]
    indices, overlaps = _greedy_match(ov, present, cross, cfg.match_type, cfg.overlap_threshold)
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n
    for row, i in enumerate(images):
        out[i] = (indices[row], overlaps[row])
    return out


def find_matches(cfg: MultiBoxConfig, truth: _Truth | None, priors: np.ndarray,
                 variances: np.ndarray, loc: np.ndarray,
                 prior_match: tuple[np.ndarray, np.ndarray] | None = None) -> dict[int, tuple]:
    """FindMatches for one image: {label key: (indices, overlaps)}; loc is (P, loc classes, 4),
    ``prior_match`` this image's :func:`match_priors_batch` result when there is one.

    An image without ground truth has no entry at all (so no positives and no negatives)."""
    if truth is None:
        return {}
    args = (cfg.match_type, cfg.overlap_threshold, cfg.ignore_cross_boundary)
    if not cfg.use_prior_for_matching:
        out = {}
        for c in range(1 if cfg.share_location else cfg.num_classes):
            label = _SHARED if cfg.share_location else c
            if not cfg.share_location and c == cfg.background:
                continue
            decoded = decode_boxes(priors, variances, loc[:, c], cfg.code_type,
                                   cfg.variance_in_target)
            out[label] = match_boxes(truth, decoded, label, *args)
        return out
    indices, overlaps = prior_match if prior_match is not None else \
        match_boxes(truth, priors, _SHARED, *args)
    if cfg.share_location:
        return {_SHARED: (indices, overlaps)}
    out = {}
    for c in range(cfg.num_classes):
        if c == cfg.background:
            continue
        mine = np.where((indices > -1) & (truth.labels[np.maximum(indices, 0)] == c), indices, -1)
        out[c] = (mine, overlaps)
    return out


def _background_losses(conf: np.ndarray, labels: np.ndarray, cfg: MultiBoxConfig) -> np.ndarray:
    """ComputeConfLoss (CPU): each prior's loss against its matched class or the background,
    float32 with the C++'s order of operations (max, then the sum of exps from class 0);
    ``conf`` is (..., C), ``labels`` the matching (...)."""
    if cfg.conf_loss == _SOFTMAX:
        if np.isnan(conf).any():  # std::max's operand order decides where NaNs go
            top = conf[..., 0].copy()
            for c in range(1, conf.shape[-1]):
                top = np.where(conf[..., c] < top, top, conf[..., c])
        else:
            top = conf.max(axis=-1)
        # float32 sums from class 0 on, in that order (numpy's sum would pair them up)
        e = np.exp(conf - top[..., None])
        total = e[..., 0].copy()
        for c in range(1, conf.shape[-1]):
            total += e[..., c]
        picked = np.take_along_axis(conf, labels[..., None], axis=-1)[..., 0]
        prob = (np.exp(picked - top) / total).astype(_F32)
        # -log(max(p, FLT_MIN)): the C library's double log, stored as a float
        return (-np.log(np.maximum(prob, _F32(_FLT_MIN)).astype(np.float64))).astype(_F32)
    loss = np.zeros(conf.shape[:-1], _F32)
    for c in range(conf.shape[-1]):
        x = conf[..., c]
        pos = (x >= 0).astype(_F32)
        target = (labels == c).astype(_F32)
        term = x * (target - pos) - np.log1p(np.exp(x - 2 * x * pos))
        loss = (loss - term).astype(_F32)
    return loss


def _caffe_top(values: np.ndarray, k: int) -> np.ndarray:
    """The positions of the ``k`` largest values, as the first k of std::sort descending.

    Only the set matters to the caller. It is the first k of any descending order unless equal
    values straddle the cut; only then (or with NaNs) does the order of libstdc++'s sort decide,
    and it is replayed (:func:`caffe_score_order`)."""
    if k <= 0:
        return np.zeros(0, np.int64)
    if k >= values.size:
        return np.arange(values.size)
    part = np.argpartition(-values.astype(np.float64), k - 1)
    kth = values[part[k - 1]]
    if not (values[part[k:]] == kth).any() and not np.isnan(values).any():
        return part[:k]
    return caffe_score_order(values)[:k]


def mine_negatives(cfg: MultiBoxConfig, matches: dict[int, tuple],
                   loss: np.ndarray) -> np.ndarray:
    """MineHardExamples (MAX_NEGATIVE) for one image, given each prior's background loss
    (:func:`_background_losses`): the mined priors, ascending."""
    if not cfg.mining or not matches:
        return np.zeros(0, np.int64)
    (indices, overlaps), = matches.values()  # mining needs share_location: one key
    eligible = np.nonzero((indices == -1) & (overlaps < _F32(cfg.neg_overlap)))[0]
    n_pos = int((indices > -1).sum())
    n_sel = min(int(_F32(n_pos) * _F32(cfg.neg_pos_ratio)), eligible.size)
    return np.sort(eligible[_caffe_top(loss[eligible], n_sel)])


def encode_boxes(priors: np.ndarray, variances: np.ndarray, boxes: np.ndarray, code_type: int,
                 variance_in_target: bool, layer: str) -> np.ndarray:
    """EncodeBBox: ground-truth corners -> the offsets the location head should predict."""
    px0, py0, px1, py1 = (priors[:, i] for i in range(4))
    bx0, by0, bx1, by1 = (boxes[:, i] for i in range(4))
    var = [variances[:, i] for i in range(4)]

    def scaled(values):
        return values if variance_in_target else [(v / var[i]).astype(_F32)
                                                  for i, v in enumerate(values)]
    if code_type == _CORNER:
        return np.stack(scaled([bx0 - px0, by0 - py0, bx1 - px1, by1 - py1]), axis=1)
    pw, ph = px1 - px0, py1 - py0
    if (pw <= 0).any() or (ph <= 0).any():
        raise LayerError("a matched prior box has no width or height; SSD's encoder needs "
                         "positive sizes (Caffe aborts)", layer=layer, type="MultiBoxLoss")
    if code_type == _CORNER_SIZE:
        return np.stack(scaled([(bx0 - px0) / pw, (by0 - py0) / ph, (bx1 - px1) / pw,
                                (by1 - py1) / ph]), axis=1).astype(_F32)
    bw, bh = bx1 - bx0, by1 - by0
    if (bw <= 0).any() or (bh <= 0).any():
        raise LayerError("a matched ground-truth box has no width or height (xmax <= xmin or "
                         "ymax <= ymin); SSD's CENTER_SIZE encoding needs positive sizes "
                         "(Caffe aborts)", layer=layer, type="MultiBoxLoss")

    def centre(a, b):  # (a + b) / 2. : a float sum halved in double, stored as float
        return ((a + b).astype(np.float64) / 2.0).astype(_F32)
    dx = ((centre(bx0, bx1) - centre(px0, px1)) / pw).astype(_F32)
    dy = ((centre(by0, by1) - centre(py0, py1)) / ph).astype(_F32)
    # log of a float ratio is the C library's double log; with the variance in the box the
    # division by it also runs in double before the result is stored as a float
    lw = np.log((bw / pw).astype(_F32).astype(np.float64))
    lh = np.log((bh / ph).astype(_F32).astype(np.float64))
    if variance_in_target:
        return np.stack([dx, dy, lw.astype(_F32), lh.astype(_F32)], axis=1)
    return np.stack([(dx / var[0]).astype(_F32), (dy / var[1]).astype(_F32),
                     (lw / var[2]).astype(_F32), (lh / var[3]).astype(_F32)], axis=1)


@dataclass
class _Plan:
    """What the numpy pass picked for the torch pass."""

    pos_image: np.ndarray  # matched (image, prior, location class), Caffe's order
    pos_prior: np.ndarray
    pos_class: np.ndarray
    loc_target: np.ndarray  # (M, 4) encoded ground truth
    keep_target: np.ndarray  # (M, 4) bool: bp_inside swaps the prediction for the target
    loc_scale: np.ndarray | None  # (M, 4) the variances divided by (encode_variance_in_target)
    conf_image: np.ndarray  # mined rows (image, prior) and their class (mining)
    conf_prior: np.ndarray
    conf_label: np.ndarray
    dense_labels: np.ndarray | None  # (N, P) classes of every prior (no mining)
    num_matches: int


def plan_batch(cfg: MultiBoxConfig, loc: np.ndarray, conf: np.ndarray, prior: np.ndarray,
               gt: np.ndarray, layer: str) -> _Plan:
    """Matching, mining and target encoding for the whole batch (Forward_cpu's first half)."""
    n, n_priors = loc.shape[0], prior.shape[1]
    priors, variances = prior[0], prior[1]
    truths = ground_truth(gt, cfg.background, cfg.use_difficult_gt, layer)
    for image, truth in truths.items():
        bad = truth.labels[(truth.labels < 0) | (truth.labels >= cfg.num_classes)]
        if bad.size:
            raise LayerError(f"ground truth of image {image} has class {int(bad[0])}, outside "
                             f"[0, num_classes={cfg.num_classes})", layer=layer,
                             type="MultiBoxLoss")
    batch = match_priors_batch(cfg, truths, n, priors) if cfg.use_prior_for_matching \
        else None
    all_matches = [find_matches(cfg, truths.get(i), priors, variances, loc[i],
                                batch[i] if batch else None) for i in range(n)]
    # matched priors in the C++'s order: image, label key, prior
    parts: list[tuple[np.ndarray, ...]] = []
    matched_class = np.full((n, n_priors), cfg.background, np.int64)  # NONE: every row's class
    for i, matches in enumerate(all_matches):
        for key, (indices, _) in matches.items():
            js = np.nonzero(indices > -1)[0]
            if js.size == 0:
                continue
            boxes_of = indices[js]
            truth = truths[i]
            taught = np.full(js.size, cfg.background + 1) if cfg.agnostic \
                else truth.labels[boxes_of]
            parts.append((np.full(js.size, i), js, np.full(js.size, 0 if cfg.share_location
                                                           else key),
                          truth.boxes[boxes_of], taught))
            if not cfg.mining:
                matched_class[i, js] = taught
    if parts:
        pi, pj, pc, gt_boxes, taught = (np.concatenate(col) for col in zip(*parts))
    else:
        pi = pj = pc = taught = np.zeros(0, np.int64)
        gt_boxes = np.zeros((0, 4), _F32)
    m = pi.size
    negs_i, negs_j = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if cfg.mining and m:
        # each prior's loss against the class it is matched to (the true class, also when
        # agnostic), else the background: all images at once
        label_of = np.full((n, n_priors), cfg.background, np.int64)
        for i, matches in enumerate(all_matches):
            for indices, _ in reversed(list(matches.values())):  # the first key wins
                hit = indices > -1
                label_of[i, hit] = truths[i].labels[indices[hit]]
        losses = _background_losses(conf, label_of, cfg)
        mined = [mine_negatives(cfg, matches, losses[i]) for i, matches in enumerate(all_matches)]
        negs_i = np.concatenate([np.full(js.size, i) for i, js in enumerate(mined)])
        negs_j = np.concatenate(mined)
    target = encode_boxes(priors[pj], variances[pj], gt_boxes, cfg.code_type,
                          cfg.variance_in_target, layer).reshape(m, 4)
    keep = np.zeros((m, 4), bool)
    if cfg.bp_inside and m:
        where = priors[pj] if cfg.use_prior_for_matching else decode_boxes(
            priors[pj], variances[pj], loc[pi, pj, pc], cfg.code_type, cfg.variance_in_target)
        keep = (where < 0) | (where > 1)
    scale = None
    if cfg.variance_in_target and m:
        if (variances[pj] <= 0).any():
            raise LayerError("encode_variance_in_target divides by the prior variances, and a "
                             "matched prior has one <= 0 (Caffe aborts)", layer=layer,
                             type="MultiBoxLoss")
        scale = variances[pj]
        target = (target / scale).astype(_F32)
    if cfg.mining:
        conf_image = np.concatenate([pi, negs_i]).astype(np.int64)
        conf_prior = np.concatenate([pj, negs_j]).astype(np.int64)
        conf_label = np.concatenate([taught, np.full(negs_j.size, cfg.background)])
    else:
        conf_image = conf_prior = conf_label = np.zeros(0, np.int64)
    return _Plan(pi, pj, pc, target, keep, scale, conf_image, conf_prior,
                 conf_label.astype(np.int64), None if cfg.mining else matched_class, m)


# ----------------------------------------------------------------------------------------------
# the loss (torch)
# ----------------------------------------------------------------------------------------------

def _softmax_loss_sum(rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of -log(max(p[label], FLT_MIN)); the gradient is (p - onehot) also where it clamps."""
    logp = torch.log_softmax(rows, dim=1).gather(1, labels[:, None])[:, 0]
    p = torch.softmax(rows.detach(), dim=1).gather(1, labels[:, None])[:, 0]
    value = torch.log(torch.clamp(p, min=_FLT_MIN))
    return -(logp + (value - logp).detach()).sum()


def _logistic_loss_sum(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy summed (the reference's layer divides by num = 1 here)."""
    pos = (x >= 0).to(x.dtype).detach()
    value = -(x * (target - pos) - torch.log1p(torch.exp(x - 2 * x * pos)))
    grad_form = torch.nn.functional.softplus(x) - x * target
    return (grad_form + (value - grad_form).detach()).sum()


class MultiBoxLoss(nn.Module):
    """SSD's matching, hard negative mining and localisation + confidence loss."""

    def __init__(self, cfg: MultiBoxConfig, layer: str) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
                label: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n = loc.shape[0]
        n_priors = prior.shape[2] // 4
        loc_classes = 1 if cfg.share_location else cfg.num_classes
        loc4 = loc.reshape(n, n_priors, loc_classes, 4)
        conf3 = conf.reshape(n, n_priors, cfg.num_classes)
        if loc.device.type == "meta":
            return loc4.sum() * 0 + conf3.sum() * 0
        plan = plan_batch(cfg, _numpy(loc4), _numpy(conf3),
                          _numpy(prior).reshape(2, n_priors, 4),
                          _numpy(label).reshape(-1, 8), self.layer)
        normalizer = _normalizer(cfg.normalization, n, n_priors, plan.num_matches)
        # an empty slice's sum: 0, yet part of the graph, so a batch without boxes still
        # back-propagates (zeros, as Caffe's diffs are)
        loss = loc4.reshape(-1)[:0].sum() + conf3.reshape(-1)[:0].sum()
        if cfg.propagate_loc and plan.num_matches:
            loss = loss + cfg.loc_weight * self._loc_loss(loc4, plan) / normalizer
        if cfg.propagate_conf:
            loss = loss + self._conf_loss(conf3, plan) / normalizer
        return loss

    def _loc_loss(self, loc4: torch.Tensor, plan: _Plan) -> torch.Tensor:
        dev = loc4.device
        pred = loc4[_index(plan.pos_image, dev), _index(plan.pos_prior, dev),
                    _index(plan.pos_class, dev)]
        target = torch.from_numpy(plan.loc_target).to(dev, pred.dtype)
        pred = torch.where(torch.from_numpy(plan.keep_target).to(dev), target, pred)
        if plan.loc_scale is not None:
            # encode_variance_in_target divides prediction and target by the variance, but
            # the C++ copies the gradient of the divided prediction back unscaled: the value is
            # pred / var, the gradient passes as if it were pred (Caffe's training, kept)
            scaled = pred / torch.from_numpy(plan.loc_scale).to(dev, pred.dtype)
            pred = pred + (scaled - pred).detach()
        d = pred - target
        if self.cfg.loc_loss == _L2:
            return (d * d).sum() / 2.0
        a = d.abs()
        return torch.where(a < 1.0, 0.5 * d * d, a - 0.5).sum()

    def _conf_loss(self, conf3: torch.Tensor, plan: _Plan) -> torch.Tensor:
        cfg, dev = self.cfg, conf3.device
        if cfg.mining:
            if plan.conf_label.size == 0:
                return conf3.new_zeros(())
            rows = conf3[_index(plan.conf_image, dev), _index(plan.conf_prior, dev)]
            labels = _index(plan.conf_label, dev)
        else:
            rows = conf3.reshape(-1, cfg.num_classes)
            labels = _index(plan.dense_labels.reshape(-1), dev)
        if cfg.conf_loss == _SOFTMAX:
            return _softmax_loss_sum(rows, labels)
        # LOGISTIC (with mining): the targets start at the background id's value, as caffe_set
        # fills them, then the taught class of each row is set to 1
        target = torch.full_like(rows, float(cfg.background)).detach()
        ok = (labels >= 0) & (labels < cfg.num_classes)
        target[torch.nonzero(ok)[:, 0], labels[ok]] = 1.0
        return _logistic_loss_sum(rows, target)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"num_classes={c.num_classes}, share_location={c.share_location}, "
                f"mining={'MAX_NEGATIVE' if c.mining else 'NONE'}, "
                f"neg_pos_ratio={c.neg_pos_ratio}, code_type={c.code_type}")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _index(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(device)


def _normalizer(mode: int, num: int, n_priors: int, matches: int) -> float:
    """LossLayer::GetNormalizer with valid_count = the number of matches."""
    if mode == _FULL:
        value = num * n_priors
    elif mode == _VALID:
        value = matches
    elif mode == _BATCH_SIZE:
        value = num
    else:
        value = 1
    return float(max(1, value))


# ----------------------------------------------------------------------------------------------
# the converter
# ----------------------------------------------------------------------------------------------

def _config(spec: LayerSpec) -> MultiBoxConfig:
    p = spec.param.multibox_loss_param
    if not p.HasField("num_classes"):
        raise spec.error("multibox_loss_param.num_classes is required (Caffe: 'Must provide "
                         "num_classes')")
    if p.num_classes < 1:
        raise spec.error(f"multibox_loss_param.num_classes must be at least 1, got "
                         f"{p.num_classes}")
    mining = p.mining_type != _NONE
    if p.HasField("do_neg_mining") and p.do_neg_mining != mining:
        raise spec.error(f"multibox_loss_param.do_neg_mining: {str(p.do_neg_mining).lower()} "
                         f"contradicts mining_type (deprecated field; Caffe aborts): drop it "
                         "and set mining_type")
    if p.mining_type == _HARD_EXAMPLE:
        raise spec.error("mining_type: HARD_EXAMPLE (online hard example mining through NMS "
                         "over the location loss) is not implemented; MAX_NEGATIVE (SSD's "
                         "default) and NONE are")
    if mining and p.HasField("nms_param") and p.nms_param.nms_threshold > 0:
        raise spec.error("multibox_loss_param.nms_param: mining through NMS is not "
                         "implemented; remove nms_param to mine by loss alone (SSD's own "
                         "training scripts set none)")
    if mining and not p.share_location:
        raise spec.error("negative mining needs share_location: true (Caffe: 'Currently only "
                         "support negative mining if share_location is true')")
    if p.conf_loss_type == _SOFTMAX and not 0 <= p.background_label_id < p.num_classes:
        raise spec.error(f"background_label_id {p.background_label_id} must be within "
                         f"[0, num_classes={p.num_classes}) for the SOFTMAX loss")
    if p.conf_loss_type == _LOGISTIC and not mining:
        raise spec.error("conf_loss_type: LOGISTIC with mining_type: NONE is refused: SSD's "
                         "encoder places the targets of every image after the first at the "
                         "wrong offset (it moves by P, not P * num_classes), so Caffe trains "
                         "on wrong labels; use mining or SOFTMAX")
    if p.map_object_to_agnostic and p.num_classes != 2:
        raise spec.error("map_object_to_agnostic needs num_classes: 2 (background and "
                         f"object), got {p.num_classes}")
    if p.code_type not in (_CORNER, _CENTER_SIZE, _CORNER_SIZE):
        raise spec.error(f"unknown code_type {p.code_type}")
    pd = list(spec.param.propagate_down) or [True, True, False, False]
    if len(pd) != 4:
        raise spec.error(f"propagate_down is given {len(pd)} times; give it 0 or 4 times (one "
                         "per bottom), as Caffe requires")
    lp = spec.param.loss_param
    if lp.HasField("normalization") or not lp.HasField("normalize"):
        normalization = lp.normalization
    else:
        normalization = _VALID if lp.normalize else _BATCH_SIZE
    return MultiBoxConfig(
        num_classes=p.num_classes, share_location=p.share_location,
        background=p.background_label_id, match_type=p.match_type,
        overlap_threshold=p.overlap_threshold, use_prior_for_matching=p.use_prior_for_matching,
        use_difficult_gt=p.use_difficult_gt, mining=mining, neg_pos_ratio=p.neg_pos_ratio,
        neg_overlap=p.neg_overlap, code_type=p.code_type,
        variance_in_target=p.encode_variance_in_target, agnostic=p.map_object_to_agnostic,
        ignore_cross_boundary=p.ignore_cross_boundary_bbox, bp_inside=p.bp_inside,
        loc_loss=p.loc_loss_type, conf_loss=p.conf_loss_type, loc_weight=p.loc_weight,
        normalization=normalization, propagate_loc=bool(pd[0]), propagate_conf=bool(pd[1]))


def _check_shapes(spec: LayerSpec, cfg: MultiBoxConfig) -> None:
    """Reshape's CHECKs: one box of 4 per prior and location class, C scores per prior."""
    loc, conf, prior, label = (tuple(s) for s in spec.bottom_shapes)
    if len(prior) != 3 or prior[:2] != (1, 2) or prior[2] % 4:
        raise spec.error(f"bottom 2 must be PriorBox's (1, 2, 4 * priors), got {prior}",
                         shape=True)
    if len(label) < 3 or label[-1] != 8:
        raise spec.error(f"bottom 3 must be the ground truth (1, 1, boxes, 8), got {label}",
                         shape=True)
    n_priors = prior[2] // 4
    loc_classes = 1 if cfg.share_location else cfg.num_classes
    if len(loc) < 2 or loc[0] != conf[0]:
        raise spec.error(f"bottoms 0 and 1 must share the batch size, got {loc} and {conf}",
                         shape=True)
    if math.prod(loc[1:]) != n_priors * loc_classes * 4:
        raise spec.error(f"bottom 0 has {math.prod(loc[1:])} location values per image, the "
                         f"{n_priors} priors need {n_priors * loc_classes * 4} "
                         f"({loc_classes} location class(es) x 4)", shape=True)
    if math.prod(conf[1:]) != n_priors * cfg.num_classes:
        raise spec.error(f"bottom 1 has {math.prod(conf[1:])} confidences per image, the "
                         f"{n_priors} priors need {n_priors * cfg.num_classes} "
                         f"(num_classes {cfg.num_classes})", shape=True)


_NOT_EXPORTABLE = ("a training loss: matching and hard negative mining pick rows in numpy from "
                   "the data; export the deploy net (its DetectionOutput, or the heads alone "
                   "with --outputs)")


@register("MultiBoxLoss", family=_FAMILY, origin=_ORIGIN, cost=PER_ALL_BOTTOMS,
          onnx=OnnxRule(not_exportable=_NOT_EXPORTABLE),
          emit_reason="its matching and mining run in numpy; emit the deploy net")
def multibox_loss(spec: LayerSpec) -> Built:
    """SSD's training loss: prior matching, hard negative mining, smooth L1 + softmax loss."""
    spec.expect_bottoms(4)
    if spec.n_tops != 1:
        raise spec.error(f"needs 1 top (the loss), got {spec.n_tops}")
    cfg = _config(spec)
    _check_shapes(spec, cfg)
    return Built(MultiBoxLoss(cfg, spec.name), default_loss_weight=1.0)
