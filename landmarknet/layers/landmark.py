"""The face-landmark layers of this project, as Caffe ``Python`` layers.

Each is written in a prototxt as ``type: "Python"`` with ``python_param { module:
"landmarknet.layers.landmark" layer: "<Name>" param_str: "<JSON>" }``, so the files stay loadable
by Caffe's own tools; landmarknet resolves them through the registry (key ``Python:<Name>``) and
never imports the module a prototxt names.

Coordinate convention shared by all of them: a point is ``(u, v)`` in *unit coordinates* of the
image it refers to, ``u = (x + 0.5) / W`` and ``v = (y + 0.5) / H`` for pixel coordinates whose
pixel centres are the integers: (0, 0) is the top-left corner of the image, (1, 1) the
bottom-right one. Point vectors are interleaved: ``(N, 2K) = u0, v0, u1, v1, ...``.

Layers:

``RegionWeightedEuclideanLoss``  bottoms: prediction (N, 2K), target (N, 2K), [region weights
    (N, R)]; tops: loss, [the normalised weights (N, R)]. Caffe's EuclideanLoss with the squared
    error of each region multiplied by that region's weight. The weights are normalised inside
    the layer, per sample, to ``w~ = m + (1 - m) * R * w / sum(w)``: they average exactly one
    whatever the attention branch outputs, so they cannot all shrink to zero, and no region
    falls below the floor ``m`` (param ``min_weight``). With uniform weights it *is*
    EuclideanLoss: sum of squared errors / 2N. Without the third bottom every weight is one.
    Param ``penalty: "wing"`` swaps the squared error of each coordinate for the Wing loss
    (Feng et al., CVPR 2018): ``w * ln(1 + |d| / eps)`` for ``|d| < w``, ``|d| - C`` beyond,
    with ``C = w - w * ln(1 + w / eps)`` (params ``wing_w``, default 0.1, and ``wing_epsilon``,
    default 0.02, in the unit coordinates of the points), summed and divided by N: small and
    medium errors keep a large gradient, where the squared error's fades as they shrink.
``RegionPool``  bottoms: features (N, C, H, W), region logits (N, R, H, W); top (N, R, C): for
    each region a softmax over the H*W positions of its logit map, and the features averaged
    with those weights (a learned spatial attention: "that region's features").
``RegionFusion``  bottoms: global points (N, 2K) in point order, local points (N, 2K) in region
    order, [gate logits (N, K)]; top: fused points (N, 2K), [gates (N, K)]. Per point
    ``g * global + (1 - g) * local`` with ``g = sigmoid(logit)``; without a third bottom the
    logits are a learned blob (K,) of the layer, starting at 0 (g = 0.5).
``AffineAlign``  bottoms: image (N, C, H, W), box (N, 4) = (cx, cy, w, h) in unit coordinates,
    angle (N, 1) in radians; tops: the aligned face (N, C, height, width) and theta (N, 6), the
    affine map from aligned to original unit coordinates ``[a00 a01 b0 a10 a11 b1]``. The
    aligned image samples the original (bilinear, grid_sample) on the box rotated by ``angle``
    (positive = clockwise on screen, x right and y down), so a face rotated by ``angle`` comes
    out upright; differentiable in box and angle.
``InverseAffinePoints``  bottoms: points (N, 2K) in aligned unit coordinates, theta (N, 6);
    top: the points in the original image's unit coordinates ``A p + b``.
``AdaptiveWingLoss``  bottoms: predicted heatmaps (N, C, h, w), target heatmaps (same shape);
    top: loss. The Adaptive Wing loss of Wang, Bo and Fuxin (ICCV 2019) per pixel, with the
    exponent ``alpha - y`` following the target value y: ``omega * ln(1 + |d / eps|^(alpha - y))``
    for ``|d| < theta``, linear beyond (``A |d| - C``, A and C making value and slope
    continuous at theta). Near a peak (y near 1) the exponent is near 1 and small errors keep a
    large gradient, like the Wing loss; on the background (y near 0) it is near 2, close to the
    squared error, so the many background pixels do not drown the few foreground ones. Each
    pixel is weighted ``1 + foreground_weight`` where the target, dilated by a 3x3 max, exceeds
    ``foreground_threshold`` (the paper's weighted loss map), else 1; the sum is divided by N.
    Params ``alpha`` 2.1, ``omega`` 14, ``epsilon`` 1, ``theta`` 0.5, ``foreground_weight`` 10,
    ``foreground_threshold`` 0.2 (the paper's).
``HeatmapToPoints``  bottom: heatmaps (N, C, h, w); top: points (N, 2K) with K = C - 1 when
    the last channel is the background map (param ``background``, default true).
    ``mode: "soft"`` (default): soft-argmax, the expectation of the position under
    ``softmax(beta * map)`` (differentiable); ``mode: "argmax"``: the peak, moved a quarter pixel
    towards the higher neighbour (the usual sub-pixel decoding; no gradient).
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.layers.costs import PER_BOTTOM, CostRule, first_top, numel
from landmarknet.layers.emitting import EmitCall, EmitContext, copy_module, helper_source, num
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, OnnxRule, register


# ---------------------------------------------------------------------------------------------
# Tool hooks: cost (analyze), box label (render: the class name), standalone code (emit)

def python_class(p: caffe_pb2.LayerParameter) -> str:
    """The Python layer's class name (what its box shows)."""
    return p.python_param.layer


def _region_pool_cost(info, training: bool) -> tuple[int, int]:
    n, r = info.bottom_shapes[1][:2]
    # softmax over each logit map (ops), then each region's weighted average of the features
    return first_top(info) * numel(info.bottom_shapes[0][2:]), n * r * numel(
        info.bottom_shapes[1][2:])


REGION_POOL_COST = CostRule(_region_pool_cost,
                            "MACs = output elements x H x W; ops = logit elements")
REGION_FUSION_COST = CostRule(lambda info, training: (2 * first_top(info), first_top(info)),
                              "MACs = 2 x output elements; ops = output elements")
AFFINE_ALIGN_COST = CostRule(lambda info, training: (4 * first_top(info), 0),
                             "MACs = 4 x output elements (bilinear taps)")
INVERSE_AFFINE_COST = CostRule(lambda info, training: (2 * first_top(info), 0),
                               "MACs = 2 x output elements")
HEATMAP_POINTS_COST = CostRule(
    lambda info, training: (2 * numel(info.bottom_shapes[0]), numel(info.bottom_shapes[0])),
    "MACs = 2 x input elements; ops = input elements")

helper_source("region_pool", '''
def region_pool(features, logits):
    """Per-region spatial softmax attention pooling: (N,C,H,W), (N,R,H,W) -> (N,R,C)."""
    n, c = features.shape[:2]
    r = logits.shape[1]
    attn = torch.softmax(logits.reshape(n, r, -1), dim=2)
    return torch.einsum("nrp,ncp->nrc", attn, features.reshape(n, c, -1))
''')
helper_source("RegionFusion", '''
class RegionFusion(nn.Module):
    """g * global + (1 - g) * local per point, g = sigmoid(gate logits): a learned gate
    (N points) or bottom 2. local_index reorders the local heads' coordinates."""

    def __init__(self, local_index, n_points, own_gate, gates_top):
        super().__init__()
        self.local_index, self.gates_top = local_index, gates_top
        self.gate = nn.Parameter(torch.zeros(n_points)) if own_gate else None

    def forward(self, glob, local, logits=None):
        n = glob.shape[0]
        glob = glob.reshape(n, -1)
        index = torch.as_tensor(self.local_index, device=local.device)
        local = local.reshape(n, -1).index_select(1, index)
        logits = self.gate.expand(n, -1) if logits is None else logits.reshape(n, -1)
        g = torch.sigmoid(logits)
        g2 = g.repeat_interleave(2, dim=1)
        fused = g2 * glob + (1 - g2) * local
        return (fused, g) if self.gates_top else fused
''')
helper_source("affine_align", '''
def box_angle_to_theta(box, angle, height, width):
    """(N, 6) affine from aligned to original unit coordinates of a box rotated by angle."""
    n = box.shape[0]
    cx, cy, bw, bh = box.reshape(n, 4).unbind(1)
    angle = angle.reshape(n)
    c, s = torch.cos(angle), torch.sin(angle)
    a00, a01 = c * bw, -s * (height / width) * bh
    a10, a11 = s * (width / height) * bw, c * bh
    b0 = cx - 0.5 * (a00 + a01)
    b1 = cy - 0.5 * (a10 + a11)
    return torch.stack([a00, a01, b0, a10, a11, b1], dim=1)


def affine_align(image, box, angle, height, width, padding_mode="zeros"):
    """Sample the rotated box of the image into an upright (height, width) crop; also
    returns theta (N, 6) for mapping points back."""
    n, c, h, w = image.shape
    theta = box_angle_to_theta(box.to(image.dtype), angle.to(image.dtype), h, w)
    a = theta.reshape(n, 2, 3)[:, :, :2]
    b = theta.reshape(n, 2, 3)[:, :, 2:]
    grid_theta = torch.cat([a, 2 * b + a.sum(dim=2, keepdim=True) - 1], dim=2)
    grid = F.affine_grid(grid_theta, [n, c, height, width], align_corners=False)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode,
                        align_corners=False)
    return out, theta
''')
helper_source("inverse_affine_points", '''
def inverse_affine_points(points, theta):
    """Points in aligned unit coordinates -> original ones: A p + b per point."""
    n = points.shape[0]
    pts = points.reshape(n, -1, 2)
    t = theta.reshape(n, 2, 3).to(pts.dtype)
    return (pts @ t[:, :, :2].transpose(1, 2) + t[:, :, 2].unsqueeze(1)).reshape(n, -1)
''')
helper_source("heatmap_to_points", '''
def heatmap_to_points(maps, mode="soft", beta=1.0, background=True):
    """Heatmaps (N, C, h, w) -> points (N, 2K) in unit coordinates: soft-argmax, or argmax
    moved a quarter pixel towards the higher neighbour."""
    if background:
        maps = maps[:, :-1]
    n, k, h, w = maps.shape
    if mode == "soft":
        p = torch.softmax(beta * maps.reshape(n, k, -1), dim=2).reshape(n, k, h, w)
        xs = (torch.arange(w, dtype=maps.dtype, device=maps.device) + 0.5) / w
        ys = (torch.arange(h, dtype=maps.dtype, device=maps.device) + 0.5) / h
        u = (p.sum(dim=2) * xs).sum(dim=2)
        v = (p.sum(dim=3) * ys).sum(dim=2)
        return torch.stack([u, v], dim=2).reshape(n, 2 * k)
    flat = maps.detach().reshape(n, k, -1)
    idx = flat.argmax(dim=2)
    y, x = idx // w, idx % w

    def at(yy, xx):
        yy, xx = yy.clamp(0, h - 1), xx.clamp(0, w - 1)
        return flat.gather(2, (yy * w + xx).unsqueeze(2)).squeeze(2)

    dx = torch.sign(at(y, x + 1) - at(y, x - 1)) * ((x > 0) & (x < w - 1))
    dy = torch.sign(at(y + 1, x) - at(y - 1, x)) * ((y > 0) & (y < h - 1))
    u = (x.to(maps.dtype) + 0.25 * dx + 0.5) / w
    v = (y.to(maps.dtype) + 0.25 * dy + 0.5) / h
    return torch.stack([u, v], dim=2).reshape(n, 2 * k)
''')


def emit_region_pool(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The region_pool helper function."""
    ctx.helper("region_pool")
    return [f"{call.one} = region_pool({call.ins[0]}, {call.ins[1]})"]


def emit_region_fusion(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The RegionFusion helper module."""
    sub = call.sub
    ctx.helper("RegionFusion")
    ctx.add_module(call.module,
                   f"RegionFusion({[int(i) for i in sub.local_index]!r}, {sub.n_points}, "
                   f"own_gate={sub.gate is not None}, gates_top={bool(sub.gates_top)})")
    return [f"{', '.join(call.outs)} = {call.attr}({', '.join(call.ins)})"]


def emit_affine_align(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The affine_align helper function."""
    sub = call.sub
    ctx.helper("affine_align")
    return [f"{', '.join(call.outs)} = affine_align({', '.join(call.ins)}, {sub.height}, "
            f"{sub.width}, {sub.padding_mode!r})"]


def emit_inverse_affine_points(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The inverse_affine_points helper function."""
    ctx.helper("inverse_affine_points")
    return [f"{call.one} = inverse_affine_points({call.ins[0]}, {call.ins[1]})"]


def emit_heatmap_to_points(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The heatmap_to_points helper function."""
    sub = call.sub
    ctx.helper("heatmap_to_points")
    return [f"{call.one} = heatmap_to_points({call.ins[0]}, {sub.mode!r}, {num(sub.beta)}, "
            f"{bool(sub.background)})"]

_FAMILY = "landmark"
_ORIGIN = "landmarknet"


# ---------------------------------------------------------------------------------------------
# param_str and common checks


def layer_params(spec: LayerSpec, allowed: Sequence[str]) -> dict[str, Any]:
    """The layer's param_str as a JSON object, with unknown keys refused."""
    text = spec.param.python_param.param_str.strip()
    if not text:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise spec.error(f"param_str is not valid JSON ({exc.msg} at character {exc.pos}): "
                         f"{text[:80]!r}") from None
    if not isinstance(params, dict):
        raise spec.error("param_str must be a JSON object, e.g. {\"regions\": ...}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise spec.error(f"param_str has unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(allowed) or 'none'}")
    return params


def parse_index_ranges(text: str) -> list[int]:
    """ "0-2,5" -> [0, 1, 2, 5]: the compact form of a region's point indices."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f"range {part!r} runs backwards")
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    return out


def parse_regions(spec: LayerSpec, raw: Any, n_points: int) -> list[tuple[int, ...]]:
    """Regions from param_str, checked to cover the points 0..K-1 exactly once.

    ``{"name": [indices] or "a-b,c"}`` (names in order) or a list of such entries.
    """
    if raw is None:
        raise spec.error("param_str needs \"regions\" (point indices per region)")
    groups = list(raw.values()) if isinstance(raw, dict) else list(raw)
    try:
        regions = [tuple(parse_index_ranges(g) if isinstance(g, str) else (int(i) for i in g))
                   for g in groups]
    except (TypeError, ValueError):
        raise spec.error("\"regions\" must hold lists of point indices or ranges such as "
                         "\"0-16\"") from None
    if not regions or any(not r for r in regions):
        raise spec.error("\"regions\" must be non-empty lists of point indices")
    flat = sorted(i for r in regions for i in r)
    if flat != list(range(n_points)):
        raise spec.error(f"\"regions\" must cover the {n_points} points 0..{n_points - 1} "
                         f"exactly once (the bottoms have {2 * n_points} coordinates)",
                         shape=True)
    return regions


def _flat2(spec: LayerSpec, shape: tuple[int, ...], what: str) -> int:
    """(N, D) or (N, D, 1, 1): returns D."""
    if len(shape) < 2 or math.prod(shape[2:]) != 1:
        raise spec.error(f"{what} must be (N, D) (or (N, D, 1, 1)), got {list(shape)}",
                         shape=True)
    return int(shape[1])


def _points_dim(spec: LayerSpec, shape: tuple[int, ...], what: str) -> int:
    d = _flat2(spec, shape, what)
    if d % 2:
        raise spec.error(f"{what} has {d} values; points need an even count (u, v pairs)",
                         shape=True)
    return d // 2


def _expect_tops(spec: LayerSpec, low: int, high: int) -> None:
    if not low <= spec.n_tops <= high:
        want = str(low) if low == high else f"{low} or {high}"
        raise spec.error(f"needs {want} top(s), got {spec.n_tops}")


def _coordinate_regions(regions: Sequence[Sequence[int]], n_points: int) -> list[int]:
    """Region index of each of the 2K coordinates (u and v of a point share its region)."""
    out = [0] * (2 * n_points)
    for r, idx in enumerate(regions):
        for i in idx:
            out[2 * i] = out[2 * i + 1] = r
    return out


# ---------------------------------------------------------------------------------------------
# RegionWeightedEuclideanLoss


#: Wing loss defaults, in unit coordinates (about 11 and 2 pixels of a 112-pixel crop).
WING_W, WING_EPSILON = 0.1, 0.02


class RegionWeightedEuclideanLoss(nn.Module):
    """sum_n sum_r w~[n, r] * penalty(pred - target) over region r / (2N or N), w~ normalised."""

    def __init__(self, regions: Sequence[Sequence[int]], n_points: int, min_weight: float,
                 weight_grad_scale: float, weights_top: bool, penalty: str = "l2",
                 wing_w: float = WING_W, wing_epsilon: float = WING_EPSILON) -> None:
        super().__init__()
        self.regions = [tuple(r) for r in regions]
        self.n_points, self.min_weight = n_points, float(min_weight)
        self.weight_grad_scale = float(weight_grad_scale)
        self.weights_top = weights_top
        self.penalty, self.wing_w, self.wing_epsilon = penalty, float(wing_w), float(wing_epsilon)
        # where the log branch meets the linear one: |d| - C = w * ln(1 + |d| / eps) at |d| = w
        self.wing_c = self.wing_w - self.wing_w * math.log1p(self.wing_w / self.wing_epsilon)
        # A constant of the layer, not a Caffe blob: kept out of state_dict.
        self.register_buffer("coord_region", torch.tensor(_coordinate_regions(regions, n_points)),
                             persistent=False)

    def normalise(self, w: torch.Tensor) -> torch.Tensor:
        """Mean-one weights with a floor: m + (1 - m) * R * w / sum(w) (w clamped at 0)."""
        s = self.weight_grad_scale
        if s != 1.0:  # scale (or stop, or reverse) the gradient reaching the attention branch
            w = w * s + w.detach() * (1.0 - s)
        w = w.clamp(min=0)
        r = w.shape[1]
        share = r * w / (w.sum(dim=1, keepdim=True) + 1e-12)
        return self.min_weight + (1.0 - self.min_weight) * share

    def elementwise(self, d: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The penalty of each coordinate's error and the divisor's factor (2 for L2)."""
        if self.penalty == "l2":
            return d * d, 2.0
        w, a = self.wing_w, d.abs()
        return torch.where(a < w, w * torch.log1p(a / self.wing_epsilon), a - self.wing_c), 1.0

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weights: torch.Tensor | None = None):
        n = pred.shape[0]
        e, factor = self.elementwise(pred.reshape(n, -1) - target.reshape(n, -1))
        per_region = e.new_zeros(n, len(self.regions)).index_add(1, self.coord_region, e)
        if weights is None:
            w = torch.ones_like(per_region)
        else:
            w = self.normalise(weights.reshape(n, -1).to(per_region.dtype))
        loss = (w * per_region).sum() / (factor * n)
        return (loss, w) if self.weights_top else loss

    def extra_repr(self) -> str:
        wing = (f", wing_w={self.wing_w}, wing_epsilon={self.wing_epsilon}"
                if self.penalty == "wing" else "")
        return (f"regions={[len(r) for r in self.regions]}, min_weight={self.min_weight}, "
                f"weight_grad_scale={self.weight_grad_scale}, penalty={self.penalty}{wing}")


@register("Python:RegionWeightedEuclideanLoss", family=_FAMILY, origin=_ORIGIN, cost=PER_BOTTOM,
          detail=python_class, emit=copy_module(f"WING_W = {WING_W!r}",
                                                f"WING_EPSILON = {WING_EPSILON!r}"),
          onnx=OnnxRule(not_exportable=(
              "a training loss that sums each region's errors with index_add over repeated "
              "indices, which torch's ONNX exporter refuses; export the deploy net")))
def region_weighted_euclidean_loss(spec: LayerSpec) -> Built:
    """Euclidean (or Wing) loss re-weighted per region by attention weights of mean one."""
    p = layer_params(spec, ("regions", "min_weight", "weight_grad_scale", "penalty", "wing_w",
                            "wing_epsilon"))
    spec.expect_bottoms(2, 3)
    _expect_tops(spec, 1, 2)
    pred, target = (tuple(s) for s in spec.bottom_shapes[:2])
    k = _points_dim(spec, pred, "bottom 0 (prediction)")
    if math.prod(target) != math.prod(pred) or target[0] != pred[0]:
        raise spec.error(f"prediction {list(pred)} and target {list(target)} differ in size",
                         shape=True)
    regions = parse_regions(spec, p.get("regions"), k)
    if len(spec.bottom_shapes) == 3:
        r = _flat2(spec, tuple(spec.bottom_shapes[2]), "bottom 2 (region weights)")
        if r != len(regions) or spec.bottom_shapes[2][0] != pred[0]:
            raise spec.error(f"bottom 2 must be (N, {len(regions)}) region weights, got "
                             f"{list(spec.bottom_shapes[2])}", shape=True)
    elif spec.n_tops == 2:
        raise spec.error("the weights top needs the region weights bottom")
    m = float(p.get("min_weight", 0.0))
    if not 0.0 <= m < 1.0:
        raise spec.error(f"min_weight must be in [0, 1), got {m}")
    penalty = p.get("penalty", "l2")
    if penalty not in ("l2", "wing"):
        raise spec.error(f"penalty must be \"l2\" or \"wing\", got {penalty!r}")
    if penalty == "l2" and ("wing_w" in p or "wing_epsilon" in p):
        raise spec.error("wing_w and wing_epsilon need penalty: \"wing\"")
    wing_w = float(p.get("wing_w", WING_W))
    wing_eps = float(p.get("wing_epsilon", WING_EPSILON))
    if not (wing_w > 0 and wing_eps > 0):
        raise spec.error(f"wing_w and wing_epsilon must be > 0, got {wing_w}, {wing_eps}")
    module = RegionWeightedEuclideanLoss(regions, k, m, float(p.get("weight_grad_scale", 1.0)),
                                         spec.n_tops == 2, penalty, wing_w, wing_eps)
    return Built(module, default_loss_weight=1.0)


# ---------------------------------------------------------------------------------------------
# RegionPool


class RegionPool(nn.Module):
    """(N, C, H, W) features, (N, R, H, W) logits -> (N, R, C) attention-pooled features."""

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        n, c = features.shape[:2]
        r = logits.shape[1]
        attn = torch.softmax(logits.reshape(n, r, -1), dim=2)
        return torch.einsum("nrp,ncp->nrc", attn, features.reshape(n, c, -1))


@register("Python:RegionPool", family=_FAMILY, origin=_ORIGIN, cost=REGION_POOL_COST,
          detail=python_class, emit=emit_region_pool)
def region_pool(spec: LayerSpec) -> Built:
    """Per-region spatial softmax attention pooling: features (N,C,H,W) -> (N,R,C)."""
    layer_params(spec, ())
    spec.expect_bottoms(2)
    _expect_tops(spec, 1, 1)
    f, g = (tuple(s) for s in spec.bottom_shapes)
    if len(f) != 4 or len(g) != 4 or f[0] != g[0] or f[2:] != g[2:]:
        raise spec.error(f"needs features (N, C, H, W) and logits (N, R, H, W) of the same N, "
                         f"H, W; got {list(f)} and {list(g)}", shape=True)
    return Built(RegionPool())


# ---------------------------------------------------------------------------------------------
# RegionFusion


class RegionFusion(nn.Module):
    """g * global + (1 - g) * local per point, g = sigmoid(gate logit)."""

    def __init__(self, regions: Sequence[Sequence[int]], n_points: int, own_gate: bool,
                 gates_top: bool) -> None:
        super().__init__()
        order = [i for r in regions for i in r]  # local coordinate pair j is point order[j]
        inverse = [0] * n_points
        for j, i in enumerate(order):
            inverse[i] = j
        self.register_buffer("local_index", torch.tensor(
            [2 * inverse[i] + c for i in range(n_points) for c in (0, 1)]), persistent=False)
        self.n_points, self.gates_top = n_points, gates_top
        if own_gate:
            self.gate = nn.Parameter(torch.empty(n_points))
        else:
            self.register_parameter("gate", None)

    def forward(self, glob: torch.Tensor, local: torch.Tensor,
                logits: torch.Tensor | None = None):
        n = glob.shape[0]
        glob = glob.reshape(n, -1)
        local = local.reshape(n, -1).index_select(1, self.local_index)
        logits = self.gate.expand(n, -1) if logits is None else logits.reshape(n, -1)
        g = torch.sigmoid(logits)
        g2 = g.repeat_interleave(2, dim=1)
        fused = g2 * glob + (1 - g2) * local
        return (fused, g) if self.gates_top else fused

    def extra_repr(self) -> str:
        return f"points={self.n_points}, learned_gate={self.gate is not None}"


@register("Python:RegionFusion", family=_FAMILY, origin=_ORIGIN, cost=REGION_FUSION_COST,
          detail=python_class, emit=emit_region_fusion)
def region_fusion(spec: LayerSpec) -> Built:
    """Per-point sigmoid gate mixing a global head's and the local heads' points."""
    p = layer_params(spec, ("regions",))
    spec.expect_bottoms(2, 3)
    _expect_tops(spec, 1, 2)
    g, l = (tuple(s) for s in spec.bottom_shapes[:2])
    k = _points_dim(spec, g, "bottom 0 (global points)")
    if _points_dim(spec, l, "bottom 1 (local points)") != k or l[0] != g[0]:
        raise spec.error(f"global {list(g)} and local {list(l)} points differ", shape=True)
    regions = parse_regions(spec, p.get("regions"), k)
    own = len(spec.bottom_shapes) == 2
    if not own:
        gs = tuple(spec.bottom_shapes[2])
        if _flat2(spec, gs, "bottom 2 (gate logits)") != k or gs[0] != g[0]:
            raise spec.error(f"bottom 2 must be (N, {k}) gate logits, got {list(gs)}",
                             shape=True)
    module = RegionFusion(regions, k, own, spec.n_tops == 2)
    blobs = []
    if own:
        blobs.append(BlobSlot("gate", (k,), caffe_pb2.FillerParameter(type="constant",
                                                                       value=0.0)))
    return Built(module, blobs)


# ---------------------------------------------------------------------------------------------
# AffineAlign and InverseAffinePoints


def box_angle_to_theta(box: torch.Tensor, angle: torch.Tensor, height: int, width: int,
                       ) -> torch.Tensor:
    """(N, 6) affine from aligned to original unit coordinates for a box rotated by angle.

    In pixels the aligned frame maps to ``c + R(angle) diag(w, h) (p' - 1/2)``; in unit
    coordinates of an H x W image the rotation becomes ``D^-1 R D`` with ``D = diag(W, H)``.
    """
    n = box.shape[0]
    box = box.reshape(n, 4)
    angle = angle.reshape(n)
    cx, cy, bw, bh = box.unbind(1)
    c, s = torch.cos(angle), torch.sin(angle)
    a00, a01 = c * bw, -s * (height / width) * bh
    a10, a11 = s * (width / height) * bw, c * bh
    b0 = cx - 0.5 * (a00 + a01)
    b1 = cy - 0.5 * (a10 + a11)
    return torch.stack([a00, a01, b0, a10, a11, b1], dim=1)


class AffineAlign(nn.Module):
    """Sample the box (rotated by angle) of the image into an upright (height, width) crop."""

    def __init__(self, height: int, width: int, padding_mode: str) -> None:
        super().__init__()
        self.height, self.width, self.padding_mode = height, width, padding_mode

    def forward(self, image: torch.Tensor, box: torch.Tensor, angle: torch.Tensor):
        n, c, h, w = image.shape
        theta = box_angle_to_theta(box.to(image.dtype), angle.to(image.dtype), h, w)
        a = theta.reshape(n, 2, 3)[:, :, :2]
        b = theta.reshape(n, 2, 3)[:, :, 2:]
        # grid_sample's coordinates (align_corners=False) are g = 2u - 1 on both sides.
        grid_theta = torch.cat([a, 2 * b + a.sum(dim=2, keepdim=True) - 1], dim=2)
        grid = F.affine_grid(grid_theta, [n, c, self.height, self.width], align_corners=False)
        out = F.grid_sample(image, grid, mode="bilinear", padding_mode=self.padding_mode,
                            align_corners=False)
        return out, theta

    def extra_repr(self) -> str:
        return f"size=({self.height}, {self.width}), padding_mode={self.padding_mode}"


@register("Python:AffineAlign", family=_FAMILY, origin=_ORIGIN, cost=AFFINE_ALIGN_COST,
          detail=python_class, emit=emit_affine_align)
def affine_align(spec: LayerSpec) -> Built:
    """Differentiable crop of a rotated box (grid_sample): image, box, angle -> face, theta."""
    p = layer_params(spec, ("height", "width", "padding_mode"))
    spec.expect_bottoms(3)
    _expect_tops(spec, 2, 2)
    img, box, angle = (tuple(s) for s in spec.bottom_shapes)
    if len(img) != 4:
        raise spec.error(f"bottom 0 must be an image (N, C, H, W), got {list(img)}", shape=True)
    if _flat2(spec, box, "bottom 1 (box)") != 4 or _flat2(spec, angle, "bottom 2 (angle)") != 1 \
            or box[0] != img[0] or angle[0] != img[0]:
        raise spec.error(f"needs box (N, 4) and angle (N, 1); got {list(box)} and "
                         f"{list(angle)}", shape=True)
    try:
        height, width = int(p["height"]), int(p["width"])
    except KeyError as exc:
        raise spec.error(f"param_str needs {exc.args[0]!r} (the aligned size)") from None
    if height <= 0 or width <= 0:
        raise spec.error("height and width must be positive")
    mode = p.get("padding_mode", "zeros")
    if mode not in ("zeros", "border", "reflection"):
        raise spec.error(f"padding_mode must be zeros, border or reflection, got {mode!r}")
    return Built(AffineAlign(height, width, mode))


class InverseAffinePoints(nn.Module):
    """Points in aligned unit coordinates -> original ones: A p + b per point."""

    def forward(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        n = points.shape[0]
        pts = points.reshape(n, -1, 2)
        t = theta.reshape(n, 2, 3).to(pts.dtype)
        out = pts @ t[:, :, :2].transpose(1, 2) + t[:, :, 2].unsqueeze(1)
        return out.reshape(n, -1)


@register("Python:InverseAffinePoints", family=_FAMILY, origin=_ORIGIN,
          cost=INVERSE_AFFINE_COST, detail=python_class, emit=emit_inverse_affine_points)
def inverse_affine_points(spec: LayerSpec) -> Built:
    """Map points from the aligned crop back to the original image (theta from AffineAlign)."""
    layer_params(spec, ())
    spec.expect_bottoms(2)
    _expect_tops(spec, 1, 1)
    pts, theta = (tuple(s) for s in spec.bottom_shapes)
    _points_dim(spec, pts, "bottom 0 (points)")
    if _flat2(spec, theta, "bottom 1 (theta)") != 6 or theta[0] != pts[0]:
        raise spec.error(f"bottom 1 must be theta (N, 6), got {list(theta)}", shape=True)
    return Built(InverseAffinePoints())


# ---------------------------------------------------------------------------------------------
# HeatmapToPoints


class HeatmapToPoints(nn.Module):
    """Heatmaps (N, C, h, w) -> points (N, 2K) in unit coordinates (soft-argmax or argmax)."""

    def __init__(self, mode: str, beta: float, background: bool) -> None:
        super().__init__()
        self.mode, self.beta, self.background = mode, float(beta), background

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.background:
            maps = maps[:, :-1]
        n, k, h, w = maps.shape
        if self.mode == "soft":
            p = torch.softmax(self.beta * maps.reshape(n, k, -1), dim=2).reshape(n, k, h, w)
            xs = (torch.arange(w, dtype=maps.dtype, device=maps.device) + 0.5) / w
            ys = (torch.arange(h, dtype=maps.dtype, device=maps.device) + 0.5) / h
            u = (p.sum(dim=2) * xs).sum(dim=2)
            v = (p.sum(dim=3) * ys).sum(dim=2)
            return torch.stack([u, v], dim=2).reshape(n, 2 * k)
        return self._argmax(maps.detach())

    @staticmethod
    def _argmax(maps: torch.Tensor) -> torch.Tensor:
        n, k, h, w = maps.shape
        flat = maps.reshape(n, k, -1)
        idx = flat.argmax(dim=2)
        y, x = (idx // w), (idx % w)
        xf, yf = x.to(maps.dtype), y.to(maps.dtype)

        def at(yy, xx):
            yy, xx = yy.clamp(0, h - 1), xx.clamp(0, w - 1)
            return flat.gather(2, (yy * w + xx).unsqueeze(2)).squeeze(2)

        # A quarter pixel towards the higher neighbour, where there is one on both sides.
        inner_x = (x > 0) & (x < w - 1)
        inner_y = (y > 0) & (y < h - 1)
        dx = torch.sign(at(y, x + 1) - at(y, x - 1)) * inner_x
        dy = torch.sign(at(y + 1, x) - at(y - 1, x)) * inner_y
        u = (xf + 0.25 * dx + 0.5) / w
        v = (yf + 0.25 * dy + 0.5) / h
        return torch.stack([u, v], dim=2).reshape(n, 2 * k)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, beta={self.beta}, background={self.background}"


@register("Python:HeatmapToPoints", family=_FAMILY, origin=_ORIGIN, cost=HEATMAP_POINTS_COST,
          detail=python_class, emit=emit_heatmap_to_points)
def heatmap_to_points(spec: LayerSpec) -> Built:
    """Decode heatmaps to unit-coordinate points: soft-argmax (differentiable) or argmax+1/4."""
    p = layer_params(spec, ("mode", "beta", "background"))
    spec.expect_bottoms(1)
    _expect_tops(spec, 1, 1)
    shape = tuple(spec.bottom_shapes[0])
    background = bool(p.get("background", True))
    if len(shape) != 4 or shape[1] < 1 + background:
        raise spec.error(f"needs heatmaps (N, C, h, w) with at least {1 + background} "
                         f"channel(s), got {list(shape)}", shape=True)
    mode = p.get("mode", "soft")
    if mode not in ("soft", "argmax"):
        raise spec.error(f"mode must be 'soft' or 'argmax', got {mode!r}")
    beta = float(p.get("beta", 1.0))
    if beta <= 0:
        raise spec.error(f"beta must be positive, got {beta}")
    return Built(HeatmapToPoints(mode, beta, background))


# ---------------------------------------------------------------------------------------------
# AdaptiveWingLoss

#: The paper's settings (Wang et al., ICCV 2019, section 4.1 and the weighted loss map).
AWING_DEFAULTS = {"alpha": 2.1, "omega": 14.0, "epsilon": 1.0, "theta": 0.5,
                  "foreground_weight": 10.0, "foreground_threshold": 0.2}


class AdaptiveWingLoss(nn.Module):
    """sum over pixels of weight * AWing(pred - target; exponent alpha - target) / N."""

    def __init__(self, alpha: float, omega: float, epsilon: float, theta: float,
                 foreground_weight: float, foreground_threshold: float) -> None:
        super().__init__()
        self.alpha, self.omega, self.epsilon, self.theta = alpha, omega, epsilon, theta
        self.foreground_weight, self.foreground_threshold = foreground_weight, foreground_threshold

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # at least float32 whatever autocast gives: the power and log lose too much in bf16
        dtype = torch.promote_types(pred.dtype, torch.float32)
        pred, y = pred.to(dtype), target.to(dtype).reshape(pred.shape)
        a = (pred - y).abs()
        p = self.alpha - y  # the exponent, per pixel
        om, eps, th = self.omega, self.epsilon, self.theta
        r = (th / eps) ** p  # (theta / eps)^(alpha - y)
        big_a = om * p * r / (th * (1.0 + r))  # slope of the log branch at theta
        big_c = th * big_a - om * torch.log1p(r)
        loss = torch.where(a < th, om * torch.log1p((a / eps) ** p), big_a * a - big_c)
        # the foreground, dilated by a 3x3 max as the paper's map is (maps are 4-D: checked
        # when the layer is built)
        fg = F.max_pool2d((y > self.foreground_threshold).to(loss.dtype), 3, stride=1, padding=1)
        return ((1.0 + self.foreground_weight * fg) * loss).sum() / pred.shape[0]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in AWING_DEFAULTS)


@register("Python:AdaptiveWingLoss", family=_FAMILY, origin=_ORIGIN, cost=PER_BOTTOM,
          detail=python_class, emit=copy_module(f"AWING_DEFAULTS = {AWING_DEFAULTS!r}"))
def adaptive_wing_loss(spec: LayerSpec) -> Built:
    """Adaptive Wing loss on heatmaps with the weighted loss map (Wang et al., ICCV 2019)."""
    p = layer_params(spec, tuple(AWING_DEFAULTS))
    spec.expect_bottoms(2)
    _expect_tops(spec, 1, 1)
    pred, target = (tuple(s) for s in spec.bottom_shapes)
    if len(pred) != 4 or math.prod(target) != math.prod(pred) or target[0] != pred[0]:
        raise spec.error(f"needs heatmaps (N, C, h, w) and a target of the same size, got "
                         f"{list(pred)} and {list(target)}", shape=True)
    v = {k: float(p.get(k, d)) for k, d in AWING_DEFAULTS.items()}
    for k in ("omega", "epsilon", "theta"):
        if v[k] <= 0:
            raise spec.error(f"{k} must be > 0, got {v[k]}")
    if v["alpha"] <= 1.0:
        # targets run up to 1: the exponent alpha - y must stay positive (the paper: 2.1, so
        # that it stays above 1 and the loss is smooth at zero error)
        raise spec.error(f"alpha must be > 1 (the exponent alpha - target must stay positive "
                         f"for targets up to 1), got {v['alpha']}")
    if v["foreground_weight"] < 0:
        raise spec.error(f"foreground_weight must be >= 0, got {v['foreground_weight']}")
    return Built(AdaptiveWingLoss(**v), default_loss_weight=1.0)
