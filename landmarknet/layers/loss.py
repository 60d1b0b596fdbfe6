"""Loss and metric layers: EuclideanLoss, SoftmaxWithLoss, SigmoidCrossEntropyLoss,
MultinomialLogisticLoss, HingeLoss, ContrastiveLoss, InfogainLoss, Accuracy and SSD's
SmoothL1Loss.

Every loss top is a 0-axis tensor (Caffe's ``vector<int> loss_shape(0)``) and the first top's
default loss weight is 1. Labels arrive as float blobs and are read as ``static_cast<int>``
(truncation toward zero). Normalisation follows ``LossParameter`` as each C++ layer reads it:
SoftmaxWithLoss defaults to VALID, SigmoidCrossEntropyLoss to BATCH_SIZE, and the legacy
``normalize`` bool only counts when ``normalization`` is absent. Gradients are Caffe's, including
where the forward clamps a probability (the clamp changes the value, never the gradient).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.errors import LayerError
from landmarknet.layers.common import canonical_axis, side_file, where_looked
from landmarknet.layers.costs import PER_BOTTOM
from landmarknet.layers.emitting import EmitCall, EmitContext, copy_module
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, OnnxRule, register
from landmarknet.layers.shape import fork_param

_FAMILY = "loss"
_FLT_MIN = float(torch.finfo(torch.float32).tiny)  # softmax_loss_layer.cpp: max(p, FLT_MIN)
_LOG_THRESHOLD = 1e-20  # multinomial_logistic_loss_layer.cpp: kLOG_THRESHOLD
_FULL, _VALID, _BATCH_SIZE, _NONE = 0, 1, 2, 3
_MODE_NAMES = {_FULL: "FULL", _VALID: "VALID", _BATCH_SIZE: "BATCH_SIZE", _NONE: "NONE"}


# Tool hooks: every loss and metric costs one op per element of its first bottom (analyze);
# emit copies the layer's module with the constants and the normaliser it reads.

def _emit_euclidean(ctx: EmitContext, call: EmitCall) -> list[str]:
    """sum of squared differences / 2N, as one expression."""
    a, b = call.ins
    return [f"{call.one} = ({a}.reshape({a}.shape[0], -1) - {b}.reshape({b}.shape[0], -1))"
            f".square().sum() / (2.0 * {a}.shape[0])"]


def _loss_needs():
    """What the loss modules' code reads besides torch (constants as source, the normaliser)."""
    return (f"_FLT_MIN = {_FLT_MIN!r}", f"_LOG_THRESHOLD = {_LOG_THRESHOLD!r}",
            "_FULL, _VALID, _BATCH_SIZE, _NONE = 0, 1, 2, 3", f"_MODE_NAMES = {_MODE_NAMES!r}",
            _normalizer)


def _emit_loss(ctx: EmitContext, call: EmitCall) -> list[str] | None:
    """The layer's own module, copied with what it reads."""
    return copy_module(*_loss_needs())(ctx, call)


def _loss_tops(spec: LayerSpec, most: int = 1) -> None:
    if not 1 <= spec.n_tops <= most:
        want = "1 top" if most == 1 else f"1 to {most} tops"
        raise spec.error(f"needs {want}, got {spec.n_tops}")


def _normalization(spec: LayerSpec, default: int) -> int:
    """The layer's normalisation mode: ``normalization`` if given, else legacy ``normalize``
    (true VALID, false BATCH_SIZE), else the layer's own default."""
    lp = spec.param.loss_param
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        return _VALID if lp.normalize else _BATCH_SIZE
    return default


def _ignore_label(spec: LayerSpec) -> int | None:
    lp = spec.param.loss_param
    return int(lp.ignore_label) if lp.HasField("ignore_label") else None


def _normalizer(mode: int, outer: int, inner: int, valid: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor | float:
    """Caffe's get_normalizer: max(1, FULL outer*inner | VALID count | BATCH_SIZE outer | 1)."""
    if mode == _FULL:
        return float(max(1, outer * inner))
    if mode == _VALID:
        return valid.sum().to(dtype).clamp(min=1.0)
    if mode == _BATCH_SIZE:
        return float(max(1, outer))
    return 1.0


class EuclideanLoss(nn.Module):
    """``sum((a - b)^2) / (2 N)``, N = a.shape[0]."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a.reshape(a.shape[0], -1) - b.reshape(b.shape[0], -1)
        return (diff * diff).sum() / (2.0 * a.shape[0])


@register("EuclideanLoss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_euclidean)
def euclidean_loss(spec: LayerSpec) -> Built:
    """sum((a - b)^2) / (2N), N the batch size; both bottoms hold the same count per sample."""
    spec.expect_bottoms(2)
    _loss_tops(spec)
    a, b = (tuple(s) for s in spec.bottom_shapes)
    if not a or not b or a[0] != b[0] or math.prod(a[1:]) != math.prod(b[1:]):
        raise spec.error(f"bottoms must have the same count per sample, got {a} and {b}",
                         shape=True)
    return Built(EuclideanLoss(), default_loss_weight=1.0)


class SoftmaxWithLoss(nn.Module):
    """Softmax along ``axis`` then ``-sum w[label] log(max(p[label], FLT_MIN)) / normalizer``
    (``w`` = 1 unless SegNet's/ENet's ``class_weighting`` is on)."""

    def __init__(self, axis: int, ignore_label: int | None, mode: int, n_tops: int,
                 class_weights: list[float] | None = None) -> None:
        super().__init__()
        self.axis, self.ignore_label, self.mode, self.n_tops = axis, ignore_label, mode, n_tops
        weights = None if class_weights is None else torch.tensor(class_weights,
                                                                  dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, x: torch.Tensor, label: torch.Tensor):
        outer = math.prod(x.shape[:self.axis])
        c = x.shape[self.axis]
        inner = math.prod(x.shape[self.axis + 1:])
        prob = torch.softmax(x, dim=self.axis)
        logp = torch.log_softmax(x.reshape(outer, c, inner), dim=1)
        lab = label.detach().reshape(outer, inner).to(torch.int64)  # static_cast<int>
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore_label is None \
            else lab != self.ignore_label
        index = torch.where(valid, lab, torch.zeros_like(lab)).unsqueeze(1)
        p_true = prob.reshape(outer, c, inner).gather(1, index).squeeze(1)
        lp_true = logp.gather(1, index).squeeze(1)
        # The value is Caffe's log(max(p, FLT_MIN)); the gradient is log_softmax's, i.e.
        # Caffe's (p - onehot), which stays right where p underflows and the clamp bites.
        lp_caffe = torch.log(torch.clamp(p_true.detach(), min=_FLT_MIN))
        lp = lp_true + (lp_caffe - lp_true).detach()
        if self.class_weights is not None:  # the forks multiply value and gradient by w[label]
            lp = lp * self.class_weights.to(lp.dtype)[index.squeeze(1)]
        total = -torch.where(valid, lp, torch.zeros_like(lp)).sum()
        loss = total / _normalizer(self.mode, outer, inner, valid, total.dtype)
        return (loss, prob) if self.n_tops == 2 else loss

    def extra_repr(self) -> str:
        return (f"axis={self.axis}, ignore_label={self.ignore_label}, "
                f"normalization={_MODE_NAMES[self.mode]}")


def _label_count(spec: LayerSpec, axis: int) -> tuple[int, int]:
    shape = tuple(spec.bottom_shapes[0])
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    n_labels = math.prod(spec.bottom_shapes[1])
    if n_labels != outer * inner:
        raise spec.error(f"needs one label per prediction: bottom {shape} with axis {axis} "
                         f"needs {outer * inner} labels, got {n_labels} "
                         f"(shape {tuple(spec.bottom_shapes[1])})", shape=True)
    return outer, inner


@register("SoftmaxWithLoss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss)
def softmax_with_loss(spec: LayerSpec) -> Built:
    """Softmax + multinomial log loss with ignore_label and normalization; top 2 = probabilities."""
    spec.expect_bottoms(2)
    _loss_tops(spec, 2)
    axis = canonical_axis(spec.param.softmax_param.axis, len(spec.bottom_shapes[0]), spec)
    _label_count(spec, axis)
    module = SoftmaxWithLoss(axis, _ignore_label(spec), _normalization(spec, _VALID),
                             spec.n_tops, _class_weights(spec, axis))
    return Built(module, default_loss_weight=1.0)


def _class_weights(spec: LayerSpec, axis: int) -> list[float] | None:
    """SegNet's and ENet's loss_param weight_by_label_freqs + class_weighting: one weight per
    class, multiplying each pixel's loss (and gradient) by its label's weight; the count that
    normalises stays the number of valid labels (softmax_loss_layer.cpp of both forks)."""
    lp = spec.param.loss_param
    weights = list(lp.class_weighting)
    if not lp.weight_by_label_freqs:
        if weights:
            warnings.warn(f"layer '{spec.name}' (SoftmaxWithLoss): loss_param.class_weighting "
                          "is ignored without weight_by_label_freqs: true, as SegNet's and "
                          "ENet's Caffe ignore it", stacklevel=3)
        return None
    classes = tuple(spec.bottom_shapes[0])[axis]
    if len(weights) != classes:
        raise spec.error(f"loss_param.weight_by_label_freqs needs one class_weighting value per "
                         f"class: {classes} classes on axis {axis}, got {len(weights)} "
                         "(Caffe: 'Number of class weight values does not match the number of "
                         "classes')")
    return weights


class SigmoidCrossEntropyLoss(nn.Module):
    """Per element ``-(x (t - [x>=0]) - log(1 + exp(-|x|)))``, summed and normalised."""

    def __init__(self, ignore_label: int | None, mode: int) -> None:
        super().__init__()
        self.ignore_label, self.mode = ignore_label, mode

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outer = x.shape[0]
        inner = math.prod(x.shape[1:])
        x = x.reshape(outer, inner)
        t = target.detach().reshape(outer, inner).to(x.dtype)
        pos = (x >= 0).to(x.dtype).detach()
        # Caffe's stable form for the value; softplus(x) - x t for the gradient, which is
        # exactly sigmoid(x) - t (0.5 - t at x = 0, where |x| has no useful derivative).
        value = -(x * (t - pos) - torch.log1p(torch.exp(-torch.abs(x))))
        grad_form = F.softplus(x) - x * t
        per = grad_form + (value - grad_form).detach()
        if self.ignore_label is None:
            valid = torch.ones_like(t, dtype=torch.bool)
        else:
            valid = t.to(torch.int64) != self.ignore_label
            per = torch.where(valid, per, torch.zeros_like(per))
        return per.sum() / _normalizer(self.mode, outer, inner, valid, per.dtype)

    def extra_repr(self) -> str:
        return f"ignore_label={self.ignore_label}, normalization={_MODE_NAMES[self.mode]}"


@register("SigmoidCrossEntropyLoss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss)
def sigmoid_cross_entropy_loss(spec: LayerSpec) -> Built:
    """Stable sigmoid cross-entropy; ignore_label; normalization defaults to BATCH_SIZE."""
    spec.expect_bottoms(2)
    _loss_tops(spec)
    x, t = (tuple(s) for s in spec.bottom_shapes)
    if not x or math.prod(x) != math.prod(t):
        raise spec.error(f"bottoms must have the same count, got {x} and {t}", shape=True)
    module = SigmoidCrossEntropyLoss(_ignore_label(spec), _normalization(spec, _BATCH_SIZE))
    return Built(module, default_loss_weight=1.0)


class MultinomialLogisticLoss(nn.Module):
    """``-sum log(max(p[label], 1e-20)) / N`` over probabilities ``p`` (N, C[, 1, 1])."""

    def forward(self, p: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        n = p.shape[0]
        flat = p.reshape(n, -1)
        lab = label.detach().reshape(n, 1).to(torch.int64)
        chosen = flat.gather(1, lab).squeeze(1)
        # Caffe's gradient is -1/max(p, threshold): clamp the value, keep a unit derivative.
        clamped = chosen + (torch.clamp(chosen.detach(), min=_LOG_THRESHOLD) - chosen).detach()
        return -torch.log(clamped).sum() / n


@register("MultinomialLogisticLoss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss)
def multinomial_logistic_loss(spec: LayerSpec) -> Built:
    """-sum log(max(p[label], 1e-20)) / N for probabilities p (N, C[,1,1]) and labels (N,)."""
    spec.expect_bottoms(2)
    _loss_tops(spec)
    p, lab = (tuple(s) for s in spec.bottom_shapes)
    if len(p) < 1 or math.prod(lab) != p[0] or (lab and lab[0] != p[0]):
        raise spec.error(f"needs one label per sample: probabilities {p}, labels {lab}",
                         shape=True)
    return Built(MultinomialLogisticLoss(), default_loss_weight=1.0)


class HingeLoss(nn.Module):
    """One-vs-all hinge: ``sum max(0, 1 - s x)`` (s = +1 for the label, -1 otherwise) / N."""

    def __init__(self, squared: bool) -> None:
        super().__init__()
        self.squared = squared

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flat = x.reshape(n, -1)
        lab = label.detach().reshape(n).to(torch.int64)
        classes = torch.arange(flat.shape[1], device=flat.device)
        onehot = (lab.unsqueeze(1) == classes).to(x.dtype)
        margin = F.relu(1.0 + flat * (1.0 - 2.0 * onehot))
        return ((margin * margin) if self.squared else margin).sum() / n

    def extra_repr(self) -> str:
        return f"norm={'L2' if self.squared else 'L1'}"


@register("HingeLoss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss)
def hinge_loss(spec: LayerSpec) -> Built:
    """One-vs-all hinge loss, L1 (default) or squared L2, divided by the batch size."""
    spec.expect_bottoms(2)
    _loss_tops(spec)
    x, lab = (tuple(s) for s in spec.bottom_shapes)
    if len(x) < 1 or math.prod(lab) != x[0]:
        raise spec.error(f"needs one label per sample: scores {x}, labels {lab}", shape=True)
    norm = spec.param.hinge_loss_param.norm
    if norm not in (1, 2):
        raise spec.error(f"norm must be L1 or L2, got {norm}")
    return Built(HingeLoss(norm == 2), default_loss_weight=1.0)


class ContrastiveLoss(nn.Module):
    """Siamese contrastive loss over pairs (a_i, b_i) with similarity labels y_i.

    ``sum_i [y_i] d_i^2 + [not y_i] max(margin - d_i, 0)^2`` over ``2N`` (d_i = ||a_i - b_i||),
    or ``max(margin - d_i^2, 0)`` for dissimilar pairs with ``legacy_version``. The gradient is
    contrastive_loss_layer.cpp's, not the exact derivative: for dissimilar pairs it divides by
    ``d_i + 1e-4`` instead of ``d_i`` (so it is finite at d = 0), and it is 0 where the hinge is
    exactly at the margin.
    """

    def __init__(self, margin: float, legacy: bool) -> None:
        super().__init__()
        self.margin, self.legacy = margin, legacy

    def forward(self, a: torch.Tensor, b: torch.Tensor, similar: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        diff = a.reshape(n, -1) - b.reshape(n, -1)
        dist_sq = (diff * diff).sum(dim=1)
        # static_cast<int>(label): any value that truncates to a non-zero integer is "similar".
        same = similar.detach().reshape(-1)[:n].to(torch.int64) != 0
        hinge = self.margin - (dist_sq if self.legacy else torch.sqrt(dist_sq.detach()))
        active = (hinge > 0).to(dist_sq.dtype)
        if self.legacy:
            apart = active * (self.margin - dist_sq)  # exact gradient: -2 diff where active
        else:
            # Value max(m - d, 0)^2; gradient (as Caffe) -2 (m - d) / (d + 1e-4) diff where
            # active: a surrogate linear in dist_sq carries it, its value is swapped for the
            # true one.
            d = torch.sqrt(dist_sq.detach())
            coef = (-active * hinge / (d + 1e-4)).detach()
            value = (active * hinge) ** 2
            surrogate = coef * dist_sq
            apart = value.detach() + surrogate - surrogate.detach()
        per = torch.where(same, dist_sq, apart)
        return per.sum() / n / 2.0

    def extra_repr(self) -> str:
        return f"margin={self.margin}, legacy_version={self.legacy}"


@register("ContrastiveLoss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss)
def contrastive_loss(spec: LayerSpec) -> Built:
    """Siamese contrastive loss (margin, legacy_version); the gradient is the one Caffe computes."""
    spec.expect_bottoms(3)
    _loss_tops(spec)
    a, b, y = (tuple(s) for s in spec.bottom_shapes)
    # ContrastiveLossLayer::LayerSetUp reads Caffe's legacy num/channels/height/width (a
    # missing axis reads as 1; more than 4 axes abort): features (N, C[, 1, 1]) of equal N and
    # C, one label per pair.
    for what, shape in (("bottom 0", a), ("bottom 1", b), ("the similarity bottom", y)):
        if not 1 <= len(shape) <= 4:
            raise spec.error(f"{what} must have 1 to 4 axes, got shape {shape}", shape=True)
    if a[0] != b[0] or math.prod(a[1:]) != math.prod(b[1:]) or math.prod(a[2:]) != 1 or \
            math.prod(b[2:]) != 1:
        raise spec.error(f"bottoms 0 and 1 must be features of shape (N, C[, 1, 1]) with the "
                         f"same N and C, got {a} and {b}", shape=True)
    if math.prod(y[1:]) != 1 or y[0] < a[0]:
        raise spec.error(f"the similarity bottom must hold one label per pair (N = {a[0]}), "
                         f"got shape {y}", shape=True)
    cp = spec.param.contrastive_loss_param
    module = ContrastiveLoss(float(cp.margin), bool(cp.legacy_version))
    return Built(module, default_loss_weight=1.0)


class Accuracy(nn.Module):
    """Top-k accuracy; optional second top the per-class accuracy (C,)."""

    def __init__(self, axis: int, top_k: int, ignore_label: int | None, n_tops: int) -> None:
        super().__init__()
        self.axis, self.top_k, self.ignore_label, self.n_tops = axis, top_k, ignore_label, n_tops

    def forward(self, x: torch.Tensor, label: torch.Tensor):
        x = x.detach()
        outer = math.prod(x.shape[:self.axis])
        c = x.shape[self.axis]
        inner = math.prod(x.shape[self.axis + 1:])
        scores = x.reshape(outer, c, inner)
        lab = label.detach().reshape(outer, inner).to(torch.int64)
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore_label is None \
            else lab != self.ignore_label
        index = torch.where(valid, lab, torch.zeros_like(lab))
        true_score = scores.gather(1, index.unsqueeze(1))
        # accuracy_layer.cpp: correct when fewer than top_k OTHER classes score >= the true one.
        n_ge = (scores >= true_score).sum(dim=1)
        correct = (n_ge <= self.top_k) & valid
        count = valid.sum().to(x.dtype)
        acc = torch.where(count > 0, correct.sum().to(x.dtype) / count.clamp(min=1),
                          torch.zeros_like(count))
        if self.n_tops == 1:
            return acc
        onehot = (index.unsqueeze(-1) == torch.arange(c, device=x.device)).to(x.dtype)
        seen = (onehot * valid.unsqueeze(-1).to(x.dtype)).sum(dim=(0, 1))
        hits = (onehot * correct.unsqueeze(-1).to(x.dtype)).sum(dim=(0, 1))
        per_class = torch.where(seen > 0, hits / seen.clamp(min=1), torch.zeros_like(seen))
        return acc, per_class

    def extra_repr(self) -> str:
        return f"axis={self.axis}, top_k={self.top_k}, ignore_label={self.ignore_label}"


@register("Accuracy", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss)
def accuracy(spec: LayerSpec) -> Built:
    """Top-k classification accuracy (ties count against); second top: per-class accuracy."""
    spec.expect_bottoms(2)
    _loss_tops(spec, 2)
    ap = spec.param.accuracy_param
    shape = tuple(spec.bottom_shapes[0])
    axis = canonical_axis(ap.axis, len(shape), spec)
    _label_count(spec, axis)
    if ap.top_k < 1 or ap.top_k > shape[axis]:
        raise spec.error(f"top_k must be between 1 and the {shape[axis]} classes, got {ap.top_k}")
    ignore = int(ap.ignore_label) if ap.HasField("ignore_label") else None
    return Built(Accuracy(axis, ap.top_k, ignore, spec.n_tops))


# ---------------------------------------------------------------------------------------------
# CenterLoss, ydwen/caffe-face's center_loss_layer.cpp: loss = sum_i |x_i - c_(y_i)|^2 / (2 M)
# over the M samples, with one learned centre per class (blob (num_output, K)). The gradient of
# x is the true one, (x - c_y) / M times the top's diff; the centres' diff is the fork's own
# update rule, not the derivative: sum over the samples of class n of (c_n - x_m), divided by
# (1 + their count) and independent of the loss weight, so that the solver moves each centre
# towards the mean of its class (lr_mult on the blob sets the pace, the paper's alpha).

class _CenterLossFunction(torch.autograd.Function):
    """Forward: the loss; backward: Caffe's diffs for x and the centres (none for labels)."""

    @staticmethod
    def forward(ctx, x, centers, labels):  # noqa: D102
        distance = x - centers[labels]
        ctx.save_for_backward(distance, labels)
        ctx.num_classes = centers.shape[0]
        return (distance * distance).sum() / x.shape[0] / 2.0

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        distance, labels = ctx.saved_tensors
        m = distance.shape[0]
        grad_x = distance * (grad / m)
        sums = torch.zeros(ctx.num_classes, distance.shape[1], dtype=distance.dtype,
                           device=distance.device).index_add_(0, labels, -distance)
        counts = torch.bincount(labels, minlength=ctx.num_classes).to(distance.dtype)
        grad_c = sums / (counts + 1.0).unsqueeze(1)
        return grad_x, grad_c, None


class CenterLoss(nn.Module):
    """Center loss with its learned class centres (``centers``, Caffe blob 0)."""

    def __init__(self, num_classes: int, dim: int, axis: int, name: str) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(num_classes, dim))
        self.axis, self.name = axis, name

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        m = math.prod(x.shape[:self.axis])
        flat = x.reshape(m, -1)
        labels = label.detach().reshape(-1).to(torch.int64)  # static_cast<int>
        if x.device.type != "meta" and bool(((labels < 0) | (labels >= self.centers.shape[0]))
                                            .any()):
            bad = int(labels[(labels < 0) | (labels >= self.centers.shape[0])][0])
            raise LayerError(f"label {bad} has no centre (num_output {self.centers.shape[0]}); "
                             "Caffe reads past its centres there", layer=self.name,
                             type="CenterLoss")
        return _CenterLossFunction.apply(flat, self.centers.to(flat.dtype), labels)

    def extra_repr(self) -> str:
        return f"classes={self.centers.shape[0]}, dim={self.centers.shape[1]}, axis={self.axis}"


@register("CenterLoss", family=_FAMILY, cost=PER_BOTTOM, origin="ydwen/caffe-face",
          emit_reason="its centres' update is the fork's rule, not a derivative; emit the "
                      "deploy net")
def center_loss(spec: LayerSpec) -> Built:
    """Center loss (face recognition): distance of each feature to its class centre."""
    spec.expect_bottoms(2)
    _loss_tops(spec)
    p = fork_param(spec, "center_loss_param", "ydwen/caffe-face")
    if p.num_output < 1:
        raise spec.error("center_loss_param.num_output (the number of classes) is required")
    shape = tuple(spec.bottom_shapes[0])
    axis = canonical_axis(p.axis, len(shape), spec, "center_loss_param.axis")
    m, dim = math.prod(shape[:axis]), math.prod(shape[axis:])
    label = _legacy4(tuple(spec.bottom_shapes[1]), spec, "bottom 1 (the labels)")
    if label[1:] != (1, 1, 1) or label[0] != m:
        raise spec.error(f"needs one label per sample, (N, 1, 1, 1) with N = {m}: got "
                         f"{tuple(spec.bottom_shapes[1])}", shape=True)
    filler = p.center_filler if p.HasField("center_filler") else None
    return Built(CenterLoss(p.num_output, dim, axis, spec.name),
                 [BlobSlot("centers", (p.num_output, dim), filler)], default_loss_weight=1.0)


# ---------------------------------------------------------------------------------------------
# SegAccuracy, DeepLab v2's (deeplab-public-ver2 seg_accuracy_layer.cpp, util/confusion_matrix.cpp)
# Per pixel the top-1 class (std::partial_sort with greater<pair<score, class>>: on equal scores
# the higher class), counted into a C x C confusion matrix (true row, predicted column) that is
# cleared at each forward (``reset``, default) or kept across forwards. Top (1, 1, 1, 3):
# pixel accuracy (diagonal / total, 0 when empty), mean recall over the classes that occur, and
# mean Jaccard over all C classes where a class absent from both truth and prediction counts
# as 1 (its intersection equals its union, 0 = 0). Sums in double, stored as float.

class SegAccuracy(nn.Module):
    """DeepLab v2's [pixel accuracy, mean class recall, mean IoU] of the top-1 class."""

    def __init__(self, channels: int, ignore: tuple[int, ...], reset: bool, name: str) -> None:
        super().__init__()
        self.channels, self.ignore, self.reset, self.name = channels, ignore, reset, name
        self.register_buffer("confusion", torch.zeros(channels, channels, dtype=torch.float64),
                             persistent=False)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if x.device.type == "meta":
            return x.new_zeros((1, 1, 1, 3))
        c = self.channels
        scores = x.detach().reshape(x.shape[0], c, -1)
        pred = (c - 1) - scores.flip(1).argmax(dim=1)  # the highest class among equal maxima
        lab = label.detach().reshape(x.shape[0], -1).to(torch.int64)  # static_cast<int>
        keep = torch.ones_like(lab, dtype=torch.bool)
        for value in self.ignore:
            keep &= lab != value
        bad = keep & ((lab < 0) | (lab >= c))
        if bool(bad.any()):
            raise LayerError(f"label {int(lab[bad][0])} is outside the {c} classes and not an "
                             "ignore_label (DeepLab's Caffe aborts: 'Unexpected label')",
                             layer=self.name, type="SegAccuracy")
        counts = torch.bincount((lab[keep] * c + pred[keep]).cpu(), minlength=c * c)
        counts = counts.reshape(c, c).to(torch.float64)
        if self.reset:
            self.confusion.copy_(counts)
        else:
            self.confusion += counts
        m = self.confusion
        total, diag = m.sum(), m.diagonal()
        rows, cols = m.sum(dim=1), m.sum(dim=0)
        accuracy = diag.sum() / total if total > 0 else total.new_zeros(())
        seen = rows > 0
        recall = (diag[seen] / rows[seen]).mean() if bool(seen.any()) else total.new_zeros(())
        union = rows + cols - diag
        jaccard = torch.where(diag == union, torch.ones_like(diag), diag / union).mean()
        out = torch.stack([accuracy, recall, jaccard]).to(torch.float32)
        return out.reshape(1, 1, 1, 3).to(x.device)

    def extra_repr(self) -> str:
        return f"classes={self.channels}, ignore={self.ignore}, reset={self.reset}"


@register("SegAccuracy", family=_FAMILY, cost=PER_BOTTOM,
          origin="DeepLab v2 (deeplab-public-ver2)",
          emit_reason="a metric over a confusion matrix kept between forwards; emit the net "
                      "without it",
          onnx=OnnxRule(not_exportable="a training/evaluation metric (a confusion matrix); "
                                       "export the net up to its scores"))
def seg_accuracy(spec: LayerSpec) -> Built:
    """DeepLab's segmentation metric: [pixel accuracy, mean recall, mean IoU] (1, 1, 1, 3)."""
    spec.expect_bottoms(2)
    _loss_tops(spec)
    scores, label = (_legacy4(tuple(s), spec, what) for s, what in
                     zip(spec.bottom_shapes, ("bottom 0 (the scores)", "bottom 1 (the labels)")))
    if scores[0] != label[0] or label[1] != 1 or scores[2:] != label[2:]:
        raise spec.error(f"needs the labels (N, 1, H, W) of the scores (N, C, H, W): scores "
                         f"{tuple(spec.bottom_shapes[0])}, labels "
                         f"{tuple(spec.bottom_shapes[1])}", shape=True)
    p = fork_param(spec, "seg_accuracy_param", "DeepLab v2")
    return Built(SegAccuracy(scores[1], tuple(p.ignore_label), p.reset, spec.name),
                 top_shapes=[(1, 1, 1, 3)])


# ---------------------------------------------------------------------------------------------
# InfogainLoss, as infogain_loss_layer.cpp of the reference Caffe (BVLC before mid-2017) has it:
# bottom 0 holds PROBABILITIES (no softmax inside), the loss is divided by N, one top only.
# Later BVLC Caffe rewrote the layer around an internal softmax over `infogain_loss_param.axis`
# with loss_param's normalization and ignore_label and a second (probability) top; a net written
# for that version gives other numbers here, so the fields only it reads are refused or flagged.

def _read_infogain(spec: LayerSpec, source: str) -> torch.Tensor:
    """The H blob of ``infogain_loss_param.source`` (a serialised BlobProto), as float32."""
    from landmarknet.caffe.caffemodel import _Bad, _scan_blob  # Caffe's BlobProto decoding
    path = side_file(spec, source)
    if path.exists() and not path.is_file():
        raise spec.error(f"infogain_loss_param.source {source!r} is not a regular file")
    if not path.exists():
        raise spec.error(f"infogain_loss_param.source {source!r}: no such file"
                         + where_looked(source))
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise spec.error(f"infogain_loss_param.source {source!r}: cannot read it: {exc}") \
            from None
    try:
        blob = _scan_blob(buf, np.frombuffer(buf, np.uint8), 0, len(buf))
    except _Bad as exc:
        raise spec.error(f"infogain_loss_param.source {source!r} is not a BlobProto "
                         f"(.binaryproto): {exc.message} at byte {exc.offset}") from None
    return torch.tensor(blob)


def _legacy4(shape: tuple[int, ...], spec: LayerSpec, what: str) -> tuple[int, int, int, int]:
    """Blob::num/channels/height/width: at most 4 axes, missing trailing ones read as 1."""
    if len(shape) > 4:
        raise spec.error(f"{what} has {len(shape)} axes, shape {shape}; the layer reads it "
                         "with Caffe's legacy 4-axis accessors, which refuse more than 4",
                         shape=True)
    return tuple(shape) + (1,) * (4 - len(shape))  # type: ignore[return-value]


class InfogainLoss(nn.Module):
    """``-sum_n sum_k H[l_n, k] log(max(p_nk, 1e-20)) / N`` over probabilities ``p`` (N, K...).

    Labels are truncated toward zero (``static_cast<int>``); Caffe reads row ``l_n`` of H without
    a check, so a label outside 0..K-1 is a LayerError here wherever the values are known (not
    under tracing). The gradient is Caffe's ``-H[l_n, k] / (N max(p_nk, 1e-20))``; none flows to
    the labels or to H (Caffe aborts if asked).
    """

    def __init__(self, layer: str, type_: str, infogain: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer, self.type_ = layer, type_
        if infogain is not None:
            # Caffe's infogain_ is no learnable blob (never in a .caffemodel): a constant.
            self.register_buffer("infogain", infogain, persistent=False)
        else:
            self.infogain = None

    def forward(self, p: torch.Tensor, label: torch.Tensor,
                infogain: torch.Tensor | None = None) -> torch.Tensor:
        h = (self.infogain if infogain is None else infogain).detach()
        n = p.shape[0]
        flat = p.reshape(n, -1)
        dim = flat.shape[1]
        lab = label.detach().reshape(n).to(torch.int64)
        if lab.device.type != "meta" and not torch.jit.is_tracing() and n:
            bad = (lab < 0) | (lab >= dim)
            if bool(bad.any()):
                first = int(torch.nonzero(bad)[0, 0])
                raise LayerError(f"label {first} is {float(label.reshape(n)[first]):g}, outside "
                                 f"0..{dim - 1} (the rows of the {dim}x{dim} infogain matrix); "
                                 "Caffe would read past H", layer=self.layer, type=self.type_)
        rows = h.reshape(dim, dim).to(flat.dtype).index_select(0, lab)  # (N, K)
        # Value log(max(p, 1e-20)); derivative 1 / max(p, 1e-20) even where the clamp bites.
        clamped = flat + (torch.clamp(flat.detach(), min=_LOG_THRESHOLD) - flat).detach()
        return -(rows * torch.log(clamped)).sum() / n

    def extra_repr(self) -> str:
        return "infogain=" + ("bottom 2" if self.infogain is None
                              else f"{tuple(self.infogain.shape)} from source")


def _refuse_later_infogain_fields(spec: LayerSpec) -> None:
    """Refuse what only later BVLC Caffe's InfogainLoss has; flag the fields it alone reads."""
    later = ("later BVLC Caffe (mid-2017 on) rewrote InfogainLoss to take raw scores and apply "
             "a softmax itself; the reference Caffe's layer, which landmarknet follows, takes "
             "probabilities")
    if spec.param.infogain_loss_param.HasField("axis"):
        raise spec.error(f"infogain_loss_param.axis is not a field of this Caffe's InfogainLoss: "
                         f"{later} over dimension 1 from bottom 0's second axis. Remove it "
                         "(and put a Softmax before the layer if the net was written for the "
                         "later version)")
    if spec.n_tops == 2:
        raise spec.error(f"has 2 tops, but this Caffe's InfogainLoss has one (the loss); the "
                         f"probability top comes from the later version: {later}. Put a "
                         "Softmax before the layer and read its top instead")
    lp = spec.param.loss_param
    ignored = [f for f in ("normalization", "normalize", "ignore_label") if lp.HasField(f)]
    if ignored:
        warnings.warn(f"layer '{spec.name}' (InfogainLoss): loss_param {', '.join(ignored)} "
                      "ignored, as the reference Caffe's infogain_loss_layer.cpp ignores them "
                      "(the loss is always divided by the batch size N); only " + later,
                      stacklevel=3)


#: Layers whose top is a probability (or in [0, 1]): what the reference Caffe's InfogainLoss
#: expects in bottom 0.
_PROBABILITY_LAYERS = frozenset({"Softmax", "Sigmoid"})


def _warn_unless_probabilities(spec: LayerSpec) -> None:
    """Say so when bottom 0 comes from a layer that gives no probabilities: a net written for
    BVLC's final InfogainLoss (softmax inside) feeds raw scores, and would get other numbers."""
    if spec.graph is None or spec.node is None:
        return
    producers = {t: n for n in spec.graph.nodes for t in n.tops}
    producer = producers.get(spec.node.bottoms[0])
    while producer is not None and producer.type in ("Split", "Reshape", "Flatten"):
        producer = producers.get(producer.bottoms[0])  # look through what only moves values
    if producer is None or producer.type in _PROBABILITY_LAYERS:
        return
    warnings.warn(f"layer '{spec.name}' (InfogainLoss): bottom 0 comes from {producer.type} "
                  f"layer '{producer.name}', not from a Softmax; this InfogainLoss (the "
                  "reference Caffe's) takes probabilities. A net written for BVLC's final "
                  "InfogainLoss, which applies a softmax itself, needs a Softmax layer before "
                  "it here", stacklevel=3)


def _example_infogain(param, index, shape, bottom_shapes, images, rng):
    """For the export check: probabilities (rows summing to 1), labels 0..K-1, H in [0, 1)."""
    k = math.prod(bottom_shapes[0][1:])
    if index == 0:
        e = rng.exponential(1.0, (shape[0], k))
        return (e / e.sum(axis=1, keepdims=True)).reshape(shape)
    if index == 1:
        return rng.integers(0, max(k, 1), shape)
    return rng.uniform(0.0, 1.0, shape)


@register("InfogainLoss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss,
          onnx=OnnxRule(example_input=_example_infogain))
def infogain_loss(spec: LayerSpec) -> Built:
    """-sum H[label] . log(max(p, 1e-20)) / N over probabilities p; H from source or bottom 2."""
    spec.expect_bottoms(2, 3)
    _refuse_later_infogain_fields(spec)
    _warn_unless_probabilities(spec)
    _loss_tops(spec)
    p = tuple(spec.bottom_shapes[0])
    lab = tuple(spec.bottom_shapes[1])
    if not p or not lab:
        raise spec.error(f"bottoms 0 and 1 need a first axis (N), got {p} and {lab}", shape=True)
    num = _legacy4(p, spec, "bottom 0 (the probabilities)")[0]
    dim = math.prod(p) // num if num else 0
    if lab[0] != p[0] or _legacy4(lab, spec, "bottom 1 (the labels)")[1:] != (1, 1, 1):
        raise spec.error(f"needs one label per sample, bottom 1 of shape (N[, 1, 1, 1]) with "
                         f"N = {p[0]}, got {lab}", shape=True)
    ip = spec.param.infogain_loss_param
    if len(spec.bottom_shapes) == 3:
        # Caffe does not read the source then, even if it is given.
        h_shape, infogain = tuple(spec.bottom_shapes[2]), None
        what = "bottom 2 (the infogain matrix H)"
    else:
        if not ip.source:
            raise spec.error("infogain_loss_param.source is required (a .binaryproto file with "
                             "the infogain matrix H) unless H is given as a third bottom")
        infogain = _read_infogain(spec, ip.source)
        h_shape = tuple(infogain.shape)
        what = f"the infogain matrix in {ip.source!r}"
    if _legacy4(h_shape, spec, what) != (1, 1, dim, dim):
        raise spec.error(f"{what} must be (1, 1, K, K) with K = {dim}, the values per sample of "
                         f"bottom 0 {p}; got {h_shape}", shape=True)
    return Built(InfogainLoss(spec.name, spec.type, infogain), default_loss_weight=1.0)


# ---------------------------------------------------------------------------------------------
# SmoothL1Loss: one type name, three forks, told apart by their bottoms
# - 2 bottoms: SSD's smooth_L1_loss_layer.cpp (Wei Liu's version of Ross Girshick's; brocolli's,
#   the reference Caffe) and py-faster-rcnn's with no weights: sum f(a - b) / N.
# - 4 bottoms: py-faster-rcnn (rbgirshick/caffe-fast-rcnn, branch faster-rcnn): inside and
#   outside weights, sum w_out f(w_in (a - b)) / N, and its gradient the exact derivative
#   (w_in w_out f'(.) / N); the weights get none.
# - 3 bottoms: Fast R-CNN (the fork's fast-rcnn branch, rbgirshick/fast-rcnn's train nets):
#   sum f(w (a - b)) / N, but the backward hands back f'(w (a - b)) / N without the factor w
#   (exact for its 0/1 weights; kept as it is for others). SSD's and py-faster-rcnn's Caffe abort
#   on 3 bottoms.
# f(x) = 0.5 sigma^2 x^2 where |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2, with sigma from
# py-faster-rcnn's smooth_l1_loss_param (default 1: SSD's f). N = bottom 0's first axis; loss_param
# is not read. AllowForceBackward is true for predictions and targets: the targets get the
# negated diff.

class SmoothL1Loss(nn.Module):
    """``sum w_out f(w_in (a - b)) / N`` with the smooth L1 ``f`` of width ``1 / sigma^2``."""

    def __init__(self, sigma: float = 1.0, weights: int = 0) -> None:
        super().__init__()
        self.sigma2 = float(np.float32(sigma) * np.float32(sigma))  # a float in the C++
        self.weights = weights  # 0, 1 (inside, Fast R-CNN) or 2 (inside and outside)

    def forward(self, a: torch.Tensor, b: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        d = a.reshape(n, -1) - b.reshape(n, -1)
        if self.weights:
            d_in = w[0].detach().reshape(n, -1) * d
        else:
            d_in = d
        absd = d_in.abs()
        s2 = self.sigma2
        # at |x| == 1 / sigma^2 both branches and their slopes agree: autograd is the backward
        err = torch.where(absd < 1.0 / s2, 0.5 * d_in * d_in * s2, absd - 0.5 / s2)
        if self.weights == 1:
            # Fast R-CNN's backward: f'(w d) for a and b, not w f'(w d)
            slope = torch.where(absd < 1.0 / s2, s2 * d_in, torch.sign(d_in)).detach()
            surrogate = slope * d
            err = err.detach() + (surrogate - surrogate.detach())
        elif self.weights == 2:
            err = w[1].detach().reshape(n, -1) * err
        return err.sum() / n

    def extra_repr(self) -> str:
        return f"sigma2={self.sigma2}, weights={['none', 'inside', 'inside+outside'][self.weights]}"


@register("SmoothL1Loss", family=_FAMILY, cost=PER_BOTTOM, emit=_emit_loss,
          origin="SSD (weiliu89/caffe), brocolli's SSD Caffe; py-faster-rcnn and Fast R-CNN "
                 "(rbgirshick/caffe-fast-rcnn)")
def smooth_l1_loss(spec: LayerSpec) -> Built:
    """Smooth L1 over (a - b), optionally weighted inside and outside, summed, divided by N."""
    spec.expect_bottoms(2, 4)
    _loss_tops(spec)
    shapes = [tuple(s) for s in spec.bottom_shapes]
    names = ("bottom 0 (the predictions)", "bottom 1 (the targets)",
             "bottom 2 (the inside weights)", "bottom 3 (the outside weights)")
    legacy = [_legacy4(s, spec, what) for s, what in zip(shapes, names)]
    if not shapes[0] or not shapes[1] or shapes[0][0] != shapes[1][0]:
        raise spec.error(f"bottoms 0 and 1 must have the same first axis (N), got {shapes[0]} "
                         f"and {shapes[1]}", shape=True)
    for shape, got, what in zip(shapes[1:], legacy[1:], names[1:]):
        if got != legacy[0]:
            raise spec.error(f"{what} must match bottom 0 element for element (N, C, H, W as "
                             f"Caffe reads them): {legacy[0]}, got {shape}", shape=True)
    sigma = fork_param(spec, "smooth_l1_loss_param", "py-faster-rcnn").sigma
    if not sigma > 0:
        raise spec.error(f"smooth_l1_loss_param.sigma must be > 0, got {sigma} (the loss "
                         "divides by sigma^2)")
    ignored = [f for f in ("normalization", "normalize", "ignore_label")
               if spec.param.loss_param.HasField(f)]
    if ignored:
        warnings.warn(f"layer '{spec.name}' (SmoothL1Loss): loss_param {', '.join(ignored)} "
                      "ignored, as smooth_L1_loss_layer.cpp ignores them (the loss is always "
                      "divided by the batch size N)", stacklevel=3)
    if len(shapes) == 3:
        warnings.warn(f"layer '{spec.name}' (SmoothL1Loss): 3 bottoms are Fast R-CNN's layer "
                      "(rbgirshick/fast-rcnn): predictions, targets and inside weights, whose "
                      "backward leaves the weights out of the gradient (exact for 0/1 "
                      "weights); SSD's and py-faster-rcnn's Caffe abort on 3 bottoms",
                      stacklevel=3)
    return Built(SmoothL1Loss(sigma, len(shapes) - 2), default_loss_weight=1.0)
