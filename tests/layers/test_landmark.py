"""The landmark layers (landmarknet/layers/landmark.py) against numpy references written here.

Each layer: a forward test against an independent numpy re-implementation (loops, no torch), a
float64 ``torch.autograd.gradcheck`` on tiny shapes, and the checks of its parameters. Layers
are built through the registry exactly as the builder does (``type: "Python"`` resolved by
``python_param.layer``), and once inside a real net from prototxt text.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.prototxt import parse_net
from landmarknet.errors import LayerError
from landmarknet.layers import LayerSpec, converter_for

REGIONS = {"a": [0, 1], "b": [2], "c": [3, 4, 5]}  # K = 6 points, R = 3 regions


def _spec(layer: str, shapes, params: dict | None = None, n_tops: int = 1) -> LayerSpec:
    lp = caffe_pb2.LayerParameter(name="l", type="Python")
    lp.python_param.module = "landmarknet.layers.landmark"
    lp.python_param.layer = layer
    if params is not None:
        lp.python_param.param_str = json.dumps(params)
    return LayerSpec("l", "Python", lp, [tuple(s) for s in shapes], n_tops)


def _module(layer: str, shapes, params: dict | None = None, n_tops: int = 1):
    """Build on meta (shape check, as the builder does) and on the CPU; returns the CPU module."""
    spec = _spec(layer, shapes, params, n_tops)
    with torch.device("meta"):
        meta = converter_for(spec)(spec)
        out = meta.module(*[torch.empty(s) for s in shapes])
    built = converter_for(spec)(spec)
    for slot in built.blobs:  # the builder would fill these; 0 is every filler used here
        torch.nn.init.zeros_(getattr(built.module, slot.attr))
    return built, out


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------
# RegionWeightedEuclideanLoss


def _ref_region_loss(pred, target, weights, regions, min_weight):
    """Written from the definition: per face, normalised weights times per-region SSE, / 2N."""
    n = pred.shape[0]
    total = 0.0
    norm_all = []
    for i in range(n):
        w = np.maximum(weights[i], 0) if weights is not None else np.ones(len(regions))
        if weights is not None:
            w = min_weight + (1 - min_weight) * len(regions) * w / (w.sum() + 1e-12)
        norm_all.append(w)
        for r, idx in enumerate(regions):
            sse = 0.0
            for k in idx:
                sse += (pred[i, 2 * k] - target[i, 2 * k]) ** 2
                sse += (pred[i, 2 * k + 1] - target[i, 2 * k + 1]) ** 2
            total += w[r] * sse
    return total / (2 * n), np.array(norm_all)


@pytest.mark.parametrize("min_weight", [0.0, 0.25])
def test_region_loss_forward_matches_numpy(rng, min_weight):
    n, k = 3, 6
    pred, target = rng.normal(size=(n, 2 * k)), rng.normal(size=(n, 2 * k))
    w = rng.uniform(0.05, 1, size=(n, 3))
    built, _ = _module("RegionWeightedEuclideanLoss", [(n, 2 * k), (n, 2 * k), (n, 3)],
                       {"regions": REGIONS, "min_weight": min_weight}, n_tops=2)
    loss, wn = built.module(*(torch.tensor(a) for a in (pred, target, w)))
    ref, ref_w = _ref_region_loss(pred, target, w, list(REGIONS.values()), min_weight)
    assert built.default_loss_weight == 1.0
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), ref, rtol=1e-12)
    np.testing.assert_allclose(_np(wn), ref_w, rtol=1e-12)
    np.testing.assert_allclose(_np(wn).mean(axis=1), 1.0, rtol=1e-9)  # mean one
    assert _np(wn).min() >= min_weight


def test_region_loss_without_weights_is_caffe_euclidean(rng):
    n, k = 4, 6
    pred, target = rng.normal(size=(n, 2 * k)), rng.normal(size=(n, 2 * k))
    built, _ = _module("RegionWeightedEuclideanLoss", [(n, 2 * k), (n, 2 * k)],
                       {"regions": {"all": "0-5"}})
    loss = built.module(torch.tensor(pred), torch.tensor(target))
    np.testing.assert_allclose(float(loss), ((pred - target) ** 2).sum() / (2 * n), rtol=1e-12)


def test_region_loss_weights_cannot_collapse(rng):
    """Scaling the raw weights changes nothing; zero weights give the floor, never zero loss."""
    n, k = 2, 6
    pred, target = torch.tensor(rng.normal(size=(n, 2 * k))), torch.tensor(rng.normal(size=(n, 2 * k)))
    w = torch.tensor(rng.uniform(0.1, 1, size=(n, 3)))
    built, _ = _module("RegionWeightedEuclideanLoss", [(n, 2 * k), (n, 2 * k), (n, 3)],
                       {"regions": REGIONS, "min_weight": 0.25})
    base = built.module(pred, target, w)
    assert torch.allclose(built.module(pred, target, w * 1e-3), base, rtol=1e-6)
    assert torch.allclose(built.module(pred, target, w * 1e3), base, rtol=1e-9)
    floor = built.module(pred, target, torch.zeros(n, 3))
    plain = ((pred - target) ** 2).sum() / (2 * n)
    assert torch.allclose(floor, 0.25 * plain)  # all-zero weights: the floor, not zero
    # even pushing all the weight onto one region keeps every region at >= min_weight
    one_hot = torch.tensor([[1.0, 0, 0]] * n)
    per_region = torch.stack([((pred - target) ** 2)[:, [2 * i + c for i in idx for c in (0, 1)]]
                              .sum() for idx in REGIONS.values()])
    expected = (torch.tensor([0.25 + 0.75 * 3, 0.25, 0.25], dtype=per_region.dtype)
                * per_region).sum() / (2 * n)
    assert torch.allclose(built.module(pred, target, one_hot), expected)


def test_region_loss_gradcheck(rng):
    n, k = 2, 6
    args = [torch.tensor(rng.normal(size=(n, 2 * k)), requires_grad=True),
            torch.tensor(rng.normal(size=(n, 2 * k)), requires_grad=True),
            torch.tensor(rng.uniform(0.2, 1, size=(n, 3)), requires_grad=True)]
    built, _ = _module("RegionWeightedEuclideanLoss", [(n, 2 * k)] * 2 + [(n, 3)],
                       {"regions": REGIONS, "min_weight": 0.25})
    assert torch.autograd.gradcheck(built.module, args)


def test_region_loss_weight_grad_scale(rng):
    n, k = 2, 6
    pred = torch.tensor(rng.normal(size=(n, 2 * k)), requires_grad=True)
    target = torch.tensor(rng.normal(size=(n, 2 * k)))
    w = torch.tensor(rng.uniform(0.2, 1, size=(n, 3)), requires_grad=True)
    grads = {}
    for s in (1.0, 0.0, -1.0):
        built, _ = _module("RegionWeightedEuclideanLoss", [(n, 2 * k)] * 2 + [(n, 3)],
                           {"regions": REGIONS, "weight_grad_scale": s})
        w.grad = pred.grad = None
        built.module(pred, target, w).backward()
        grads[s] = (w.grad.clone(), pred.grad.clone())
    assert torch.count_nonzero(grads[0.0][0]) == 0
    assert torch.allclose(grads[-1.0][0], -grads[1.0][0])
    assert torch.allclose(grads[0.0][1], grads[1.0][1])  # the points' gradient is unchanged


def _ref_wing(d, w, eps):
    """The Wing loss of Feng et al. (CVPR 2018), eq. 5, one coordinate at a time."""
    c = w - w * math.log(1 + w / eps)
    return w * math.log(1 + abs(d) / eps) if abs(d) < w else abs(d) - c


@pytest.mark.parametrize("w, eps", [(0.1, 0.02), (0.5, 0.1)])
def test_region_loss_wing_matches_numpy(rng, w, eps):
    n, k = 3, 6
    # errors on both sides of w, so that both branches of the penalty are used
    pred = rng.normal(scale=w, size=(n, 2 * k))
    target = rng.normal(scale=w, size=(n, 2 * k))
    weights = rng.uniform(0.05, 1, size=(n, 3))
    built, _ = _module("RegionWeightedEuclideanLoss", [(n, 2 * k), (n, 2 * k), (n, 3)],
                       {"regions": REGIONS, "min_weight": 0.25, "penalty": "wing",
                        "wing_w": w, "wing_epsilon": eps}, n_tops=2)
    loss, wn = built.module(*(torch.tensor(a) for a in (pred, target, weights)))
    _, ref_w = _ref_region_loss(pred, target, weights, list(REGIONS.values()), 0.25)
    ref = 0.0
    for i in range(n):
        for r, idx in enumerate(REGIONS.values()):
            ref += ref_w[i, r] * sum(_ref_wing(pred[i, 2 * p + c] - target[i, 2 * p + c], w, eps)
                                     for p in idx for c in (0, 1))
    diffs = np.abs(pred - target)
    assert (diffs < w).any() and (diffs >= w).any()
    np.testing.assert_allclose(float(loss), ref / n, rtol=1e-12)


def test_region_loss_wing_is_continuous_and_keeps_small_errors_steep():
    """At |d| = w both branches meet; near 0 the slope is w / eps, not the squared error's 2d."""
    built, _ = _module("RegionWeightedEuclideanLoss", [(1, 2), (1, 2)],
                       {"regions": {"all": [0]}, "penalty": "wing"})  # w 0.1, eps 0.02
    f = lambda d: float(built.module(torch.tensor([[d, 0.0]], dtype=torch.float64),  # noqa: E731
                                     torch.zeros(1, 2, dtype=torch.float64)))
    assert f(0.1 - 1e-9) == pytest.approx(f(0.1 + 1e-9), abs=1e-8)
    assert (f(1e-4) - f(0.0)) / 1e-4 == pytest.approx(0.1 / 0.02, rel=1e-2)
    pred = torch.tensor([[0.3, -0.01]], dtype=torch.float64, requires_grad=True)
    built.module(pred, torch.zeros(1, 2, dtype=torch.float64)).backward()
    # beyond w: slope 1 (L1); inside: w / (eps + |d|) with the sign of d
    np.testing.assert_allclose(_np(pred.grad), [[1.0, -0.1 / 0.03]], rtol=1e-12)


@pytest.mark.parametrize("params, shapes, match", [
    ({"regions": {"a": [0, 1], "b": [1, 2]}}, [(2, 6), (2, 6)], "exactly once"),
    ({"regions": {"a": "0-1"}}, [(2, 6), (2, 6)], "exactly once"),
    ({"regions": REGIONS, "bogus": 1}, [(2, 12), (2, 12)], "unknown key"),
    ({}, [(2, 12), (2, 12)], "needs \"regions\""),
    ({"regions": REGIONS}, [(2, 12), (2, 12), (2, 4)], "region weights"),
    ({"regions": REGIONS}, [(2, 11), (2, 11)], "even"),
    ({"regions": REGIONS, "min_weight": 1.0}, [(2, 12), (2, 12)], "min_weight"),
    ({"regions": REGIONS, "penalty": "l1"}, [(2, 12), (2, 12)], "penalty must be"),
    ({"regions": REGIONS, "wing_w": 0.2}, [(2, 12), (2, 12)], "need penalty"),
    ({"regions": REGIONS, "penalty": "wing", "wing_epsilon": 0}, [(2, 12), (2, 12)], "> 0"),
])
def test_region_loss_checks(params, shapes, match):
    spec = _spec("RegionWeightedEuclideanLoss", shapes, params)
    with pytest.raises(LayerError, match=match):
        converter_for(spec)(spec)


def test_bad_json_param_str():
    spec = _spec("RegionPool", [(1, 2, 3, 3), (1, 2, 3, 3)])
    spec.param.python_param.param_str = "{'regions': 1}"
    with pytest.raises(LayerError, match="not valid JSON"):
        converter_for(spec)(spec)


# ---------------------------------------------------------------------------------------------
# RegionPool


def _ref_region_pool(feat, logits):
    n, c, h, w = feat.shape
    r = logits.shape[1]
    out = np.zeros((n, r, c))
    for i in range(n):
        for j in range(r):
            z = logits[i, j].ravel()
            p = np.exp(z - z.max())
            p /= p.sum()
            for ch in range(c):
                out[i, j, ch] = (p * feat[i, ch].ravel()).sum()
    return out


def test_region_pool_forward_and_grad(rng):
    feat, logits = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 3, 3, 4)) * 3
    built, meta_out = _module("RegionPool", [feat.shape, logits.shape])
    out = built.module(torch.tensor(feat), torch.tensor(logits))
    assert tuple(meta_out.shape) == (2, 3, 5)
    np.testing.assert_allclose(_np(out), _ref_region_pool(feat, logits), rtol=1e-12)
    args = [torch.tensor(a, requires_grad=True) for a in (feat, logits)]
    assert torch.autograd.gradcheck(built.module, args)


def test_region_pool_checks():
    spec = _spec("RegionPool", [(2, 5, 3, 4), (2, 3, 4, 4)])
    with pytest.raises(LayerError, match="same N, H, W"):
        converter_for(spec)(spec)


# ---------------------------------------------------------------------------------------------
# RegionFusion

SHUFFLED = {"c": [3, 4, 5], "a": [0, 1], "b": [2]}  # local heads in another order than points


def _ref_fusion(glob, local, logits, regions):
    order = [i for idx in regions.values() for i in idx]  # local pair j is point order[j]
    n, k = glob.shape[0], glob.shape[1] // 2
    out = np.zeros_like(glob)
    for i in range(n):
        for j, p in enumerate(order):
            g = 1 / (1 + math.exp(-logits[i, p]))
            for c in (0, 1):
                out[i, 2 * p + c] = g * glob[i, 2 * p + c] + (1 - g) * local[i, 2 * j + c]
    return out


def test_region_fusion_forward_and_grad(rng):
    n, k = 3, 6
    glob, local, logits = rng.normal(size=(n, 12)), rng.normal(size=(n, 12)), rng.normal(size=(n, k))
    built, _ = _module("RegionFusion", [(n, 12), (n, 12), (n, k, 1, 1)], {"regions": SHUFFLED},
                       n_tops=2)
    fused, gates = built.module(torch.tensor(glob), torch.tensor(local),
                                torch.tensor(logits).reshape(n, k, 1, 1))
    np.testing.assert_allclose(_np(fused), _ref_fusion(glob, local, logits, SHUFFLED), rtol=1e-12)
    np.testing.assert_allclose(_np(gates), 1 / (1 + np.exp(-logits)), rtol=1e-12)
    built1, _ = _module("RegionFusion", [(n, 12), (n, 12), (n, k)], {"regions": SHUFFLED})
    args = [torch.tensor(a, requires_grad=True) for a in (glob, local, logits)]
    assert torch.autograd.gradcheck(built1.module, args)


def test_region_fusion_own_gate(rng):
    """Without a gate bottom the layer holds a (K,) blob, filled with 0: an even mix."""
    n = 2
    glob, local = rng.normal(size=(n, 12)), rng.normal(size=(n, 12))
    built, _ = _module("RegionFusion", [(n, 12), (n, 12)], {"regions": REGIONS})
    assert [(b.attr, b.shape, b.filler.type, b.filler.value) for b in built.blobs] == \
        [("gate", (6,), "constant", 0.0)]
    module = built.module.double()
    out = module(torch.tensor(glob), torch.tensor(local))
    np.testing.assert_allclose(_np(out), 0.5 * glob + 0.5 * local, rtol=1e-12)
    with torch.no_grad():
        module.gate.copy_(torch.tensor(rng.normal(size=6)))
    logits = np.tile(_np(module.gate), (n, 1))
    np.testing.assert_allclose(_np(module(torch.tensor(glob), torch.tensor(local))),
                               _ref_fusion(glob, local, logits, REGIONS), rtol=1e-12)
    g, l = (torch.tensor(a, requires_grad=True) for a in (glob, local))
    assert torch.autograd.gradcheck(lambda a, b: module(a, b), (g, l))
    module(g, l).sum().backward()
    assert module.gate.grad is not None and torch.count_nonzero(module.gate.grad) > 0


# ---------------------------------------------------------------------------------------------
# AffineAlign and InverseAffinePoints


def _ref_affine(box, angle, H, W, h, w):
    """A, b mapping aligned unit coordinates to original ones, derived in pixels."""
    cx, cy, bw, bh = box
    c, s = math.cos(angle), math.sin(angle)

    def to_orig(u, v):
        ax, ay = (u - 0.5) * bw * W, (v - 0.5) * bh * H  # offsets in original pixels
        px = cx * W + c * ax - s * ay
        py = cy * H + s * ax + c * ay
        return px / W, py / H

    b = np.array(to_orig(0, 0))
    a = np.stack([np.array(to_orig(1, 0)) - b, np.array(to_orig(0, 1)) - b], axis=1)
    return a, b, to_orig


def _ref_align(img, box, angle, h, w):
    n, ch, H, W = img.shape
    out = np.zeros((n, ch, h, w))
    for i in range(n):
        _, _, to_orig = _ref_affine(box[i], angle[i, 0], H, W, h, w)
        for r in range(h):
            for c in range(w):
                u, v = to_orig((c + 0.5) / w, (r + 0.5) / h)
                x, y = u * W - 0.5, v * H - 0.5  # pixel-centre coordinates
                x0, y0 = math.floor(x), math.floor(y)
                for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                    for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                        if 0 <= yy < H and 0 <= xx < W:  # zeros outside
                            out[i, :, r, c] += wy * wx * img[i, :, yy, xx]
    return out


def test_affine_align_forward_matches_numpy(rng):
    n, H, W, h, w = 2, 9, 11, 5, 6
    img = rng.normal(size=(n, 2, H, W))
    box = np.array([[0.5, 0.45, 0.7, 0.8], [0.4, 0.6, 0.9, 0.5]])
    angle = np.array([[0.3], [-1.1]])
    built, meta = _module("AffineAlign", [img.shape, (n, 4), (n, 1)], {"height": h, "width": w},
                          n_tops=2)
    assert [tuple(t.shape) for t in meta] == [(n, 2, h, w), (n, 6)]
    out, theta = built.module(*(torch.tensor(a) for a in (img, box, angle)))
    np.testing.assert_allclose(_np(out), _ref_align(img, box, angle, h, w), atol=1e-10)
    for i in range(n):
        a, b, _ = _ref_affine(box[i], angle[i, 0], H, W, h, w)
        np.testing.assert_allclose(_np(theta[i]), [a[0, 0], a[0, 1], b[0], a[1, 0], a[1, 1], b[1]],
                                   atol=1e-12)


def test_affine_align_identity_box_copies_the_image(rng):
    img = rng.normal(size=(1, 3, 8, 8))
    built, _ = _module("AffineAlign", [img.shape, (1, 4), (1, 1)], {"height": 8, "width": 8},
                       n_tops=2)
    out, theta = built.module(torch.tensor(img), torch.tensor([[0.5, 0.5, 1.0, 1.0]]),
                              torch.zeros(1, 1, dtype=torch.float64))
    np.testing.assert_allclose(_np(out), img, atol=1e-12)
    np.testing.assert_allclose(_np(theta), [[1, 0, 0, 0, 1, 0]], atol=1e-12)


def test_affine_align_gradcheck(rng):
    n = 2
    img = torch.tensor(rng.normal(size=(n, 1, 6, 7)), requires_grad=True)
    box = torch.tensor([[0.5, 0.5, 0.6, 0.7], [0.45, 0.55, 0.8, 0.6]], dtype=torch.float64,
                       requires_grad=True)
    angle = torch.tensor([[0.2], [-0.4]], dtype=torch.float64, requires_grad=True)
    built, _ = _module("AffineAlign", [(n, 1, 6, 7), (n, 4), (n, 1)], {"height": 4, "width": 5},
                       n_tops=2)
    assert torch.autograd.gradcheck(built.module, (img, box, angle))


def test_inverse_affine_points_forward_and_grad(rng):
    n, k = 2, 5
    pts, theta = rng.uniform(size=(n, 2 * k)), rng.normal(size=(n, 6))
    built, _ = _module("InverseAffinePoints", [(n, 2 * k), (n, 6)])
    out = built.module(torch.tensor(pts), torch.tensor(theta))
    ref = np.zeros_like(pts)
    for i in range(n):
        a00, a01, b0, a10, a11, b1 = theta[i]
        for j in range(k):
            u, v = pts[i, 2 * j], pts[i, 2 * j + 1]
            ref[i, 2 * j] = a00 * u + a01 * v + b0
            ref[i, 2 * j + 1] = a10 * u + a11 * v + b1
    np.testing.assert_allclose(_np(out), ref, rtol=1e-12)
    args = [torch.tensor(a, requires_grad=True) for a in (pts, theta)]
    assert torch.autograd.gradcheck(built.module, args)


def test_align_then_inverse_round_trip(rng):
    """A point drawn in the image, found in the aligned crop, maps back to where it was."""
    H = W = 32
    box, angle = torch.tensor([[0.55, 0.45, 0.5, 0.5]]), torch.tensor([[0.5]])
    img = torch.zeros(1, 1, H, W)
    img[0, 0, 12, 20] = 1.0  # pixel centre x=20, y=12 -> unit (20.5/32, 12.5/32)
    align, _ = _module("AffineAlign", [(1, 1, H, W), (1, 4), (1, 1)],
                       {"height": 64, "width": 64}, n_tops=2)
    out, theta = align.module(img, box, angle)
    peak = int(out[0, 0].argmax())
    r, c = divmod(peak, 64)
    inv, _ = _module("InverseAffinePoints", [(1, 2), (1, 6)])
    back = inv.module(torch.tensor([[(c + 0.5) / 64, (r + 0.5) / 64]]), theta)
    assert torch.allclose(back, torch.tensor([[20.5 / 32, 12.5 / 32]]), atol=0.6 / 32)


@pytest.mark.parametrize("params, shapes, match", [
    ({"height": 4}, [(1, 3, 8, 8), (1, 4), (1, 1)], "'width'"),
    ({"height": 4, "width": 4}, [(1, 3, 8, 8), (1, 5), (1, 1)], "box"),
    ({"height": 4, "width": 4, "padding_mode": "wrap"}, [(1, 3, 8, 8), (1, 4), (1, 1)],
     "padding_mode"),
])
def test_affine_align_checks(params, shapes, match):
    spec = _spec("AffineAlign", shapes, params, n_tops=2)
    with pytest.raises(LayerError, match=match):
        converter_for(spec)(spec)


# ---------------------------------------------------------------------------------------------
# HeatmapToPoints


def test_heatmap_soft_argmax_forward_and_grad(rng):
    maps = rng.normal(size=(2, 4, 5, 6))  # 3 landmarks + background
    built, meta = _module("HeatmapToPoints", [maps.shape], {"beta": 2.0})
    assert tuple(meta.shape) == (2, 6)
    out = built.module(torch.tensor(maps))
    ref = np.zeros((2, 6))
    for i in range(2):
        for k in range(3):
            z = 2.0 * maps[i, k]
            p = np.exp(z - z.max())
            p /= p.sum()
            for y in range(5):
                for x in range(6):
                    ref[i, 2 * k] += p[y, x] * (x + 0.5) / 6
                    ref[i, 2 * k + 1] += p[y, x] * (y + 0.5) / 5
    np.testing.assert_allclose(_np(out), ref, rtol=1e-12)
    assert torch.autograd.gradcheck(built.module, (torch.tensor(maps, requires_grad=True),))


def test_heatmap_argmax_quarter_offset():
    maps = np.zeros((1, 3, 5, 5))
    maps[0, 0, 2, 3], maps[0, 0, 2, 4], maps[0, 0, 1, 3] = 1.0, 0.5, 0.2  # right and up
    maps[0, 1, 0, 0] = 1.0  # corner: no neighbours on both sides, no offset
    built, _ = _module("HeatmapToPoints", [maps.shape], {"mode": "argmax", "background": False})
    out = _np(built.module(torch.tensor(maps)))
    np.testing.assert_allclose(out[0, :4], [(3.25 + 0.5) / 5, (1.75 + 0.5) / 5, 0.5 / 5, 0.5 / 5])


# ---------------------------------------------------------------------------------------------
# Through a prototxt


NET = """
name: "tiny"
layer { name: "in" type: "Input" top: "feat" top: "target"
        input_param { shape { dim: 2 dim: 8 dim: 3 dim: 3 } shape { dim: 2 dim: 12 } } }
layer { name: "pooled" type: "Pooling" bottom: "feat" top: "pooled"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "glob" type: "InnerProduct" bottom: "pooled" top: "glob"
        inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "logits" type: "Convolution" bottom: "feat" top: "logits"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "rpool" type: "Python" bottom: "feat" bottom: "logits" top: "rfeat"
        python_param { module: "landmarknet.layers.landmark" layer: "RegionPool" } }
layer { name: "local" type: "InnerProduct" bottom: "rfeat" top: "local"
        inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fuse" type: "Python" bottom: "glob" bottom: "local" top: "pred"
        python_param { module: "landmarknet.layers.landmark" layer: "RegionFusion"
                       param_str: '{"regions": {"a": "0-1", "b": "2", "c": "3-5"}}' } }
layer { name: "att" type: "InnerProduct" bottom: "pooled" top: "att"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "sig" type: "Sigmoid" bottom: "att" top: "att" }
layer { name: "loss" type: "Python" bottom: "pred" bottom: "target" bottom: "att" top: "loss"
        loss_weight: 2
        python_param { module: "landmarknet.layers.landmark" layer: "RegionWeightedEuclideanLoss"
                       param_str: '{"regions": {"a": "0-1", "b": "2", "c": "3-5"}, "min_weight": 0.25}' } }
"""


def test_layers_in_a_prototxt_net(rng):
    net = build_net(parse_net(NET), phase="train")
    assert dict(net.get_submodule("fuse").named_parameters())["gate"].shape == (6,)
    feat = torch.tensor(rng.normal(size=(2, 8, 3, 3)), dtype=torch.float32)
    target = torch.tensor(rng.uniform(size=(2, 12)), dtype=torch.float32)
    out = net(feat, target)
    assert set(out) == {"loss"} and out["loss"].shape == ()
    total = net.loss(out)
    assert torch.allclose(total, 2 * out["loss"])  # the explicit loss_weight
    total.backward()
    for name in ("glob", "local", "logits", "att", "fuse"):
        grads = [p.grad for p in net.get_submodule(name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(torch.count_nonzero(g) for g in grads), name


# ---------------------------------------------------------------------------------------------
# AdaptiveWingLoss


def _ref_awing_pixel(d, y, alpha, omega, eps, theta):
    """Adaptive Wing loss (Wang et al., ICCV 2019, eq. 8 with A and C of eq. 9), one pixel."""
    p = alpha - y
    a_ = omega * (1 / (1 + (theta / eps) ** p)) * p * (theta / eps) ** (p - 1) * (1 / eps)
    c_ = theta * a_ - omega * math.log(1 + (theta / eps) ** p)
    return omega * math.log(1 + abs(d / eps) ** p) if abs(d) < theta else a_ * abs(d) - c_


def _ref_awing(pred, target, alpha=2.1, omega=14.0, eps=1.0, theta=0.5, fg_w=10.0, fg_t=0.2):
    """Loops: the weighted loss map (target > t, dilated 3x3) times the pixel loss, sum / N."""
    n, c, h, w = pred.shape
    total = 0.0
    for i in range(n):
        for k in range(c):
            for r in range(h):
                for s in range(w):
                    win = target[i, k, max(r - 1, 0):r + 2, max(s - 1, 0):s + 2]
                    weight = 1 + fg_w * float((win > fg_t).any())
                    total += weight * _ref_awing_pixel(pred[i, k, r, s] - target[i, k, r, s],
                                                       target[i, k, r, s], alpha, omega, eps,
                                                       theta)
    return total / n


@pytest.mark.parametrize("params", [{}, {"alpha": 2.5, "omega": 5.0, "epsilon": 0.5,
                                         "theta": 0.3, "foreground_weight": 3.0,
                                         "foreground_threshold": 0.5}])
def test_adaptive_wing_matches_numpy(rng, params):
    shape = (2, 3, 5, 6)
    target = np.clip(rng.uniform(-0.6, 1.2, size=shape), 0, 1)  # many zeros, some peaks of 1
    pred = target + rng.normal(scale=0.5, size=shape)  # errors on both sides of theta
    built, _ = _module("AdaptiveWingLoss", [shape, shape], params)
    loss = built.module(torch.tensor(pred), torch.tensor(target))
    kw = {"alpha": 2.1, "omega": 14.0, "eps": 1.0, "theta": 0.5, "fg_w": 10.0, "fg_t": 0.2}
    names = {"epsilon": "eps", "foreground_weight": "fg_w", "foreground_threshold": "fg_t"}
    kw.update({names.get(k, k): v for k, v in params.items()})
    diffs = np.abs(pred - target)
    assert (diffs < kw["theta"]).any() and (diffs >= kw["theta"]).any()
    np.testing.assert_allclose(float(loss), _ref_awing(pred, target, **kw), rtol=1e-6)


def test_adaptive_wing_is_continuous_and_steeper_near_peaks():
    """Value and slope meet at theta; at a peak (y = 1) small errors get a far larger gradient
    than on the background (y = 0), the point of the adaptive exponent."""
    built, _ = _module("AdaptiveWingLoss", [(1, 1, 1, 1)] * 2, {"foreground_weight": 0.0})

    def f(d, y):
        t = torch.full((1, 1, 1, 1), y, dtype=torch.float64)
        return float(built.module(t + d, t))
    for y in (0.0, 0.5, 1.0):
        assert f(0.5 - 1e-9, y) == pytest.approx(f(0.5 + 1e-9, y), abs=1e-7)
        left = (f(0.5 - 1e-6, y) - f(0.5 - 2e-6, y)) / 1e-6
        right = (f(0.5 + 2e-6, y) - f(0.5 + 1e-6, y)) / 1e-6
        assert left == pytest.approx(right, rel=1e-3)
    slope = lambda y: (f(0.02, y) - f(0.01, y)) / 0.01  # noqa: E731
    assert slope(1.0) > 20 * slope(0.0)


def test_adaptive_wing_gradcheck(rng):
    shape = (1, 2, 3, 3)
    target = torch.tensor(np.clip(rng.uniform(-0.5, 1, size=shape), 0, 1))
    pred = (target + torch.tensor(rng.uniform(0.05, 0.9, size=shape) *
                                  rng.choice([-1, 1], size=shape))).requires_grad_()
    built, _ = _module("AdaptiveWingLoss", [shape, shape])
    assert torch.autograd.gradcheck(lambda p: built.module(p, target), (pred,))


@pytest.mark.parametrize("params, shapes, match", [
    ({"alpha": 1.0}, [(1, 2, 4, 4)] * 2, "alpha must be > 1"),
    ({"theta": 0}, [(1, 2, 4, 4)] * 2, "theta must be > 0"),
    ({"foreground_weight": -1}, [(1, 2, 4, 4)] * 2, "foreground_weight"),
    ({"beta": 1}, [(1, 2, 4, 4)] * 2, "unknown key"),
    ({}, [(1, 2, 4, 4), (1, 2, 4, 5)], "same size"),
    ({}, [(1, 8), (1, 8)], "heatmaps"),
])
def test_adaptive_wing_checks(params, shapes, match):
    spec = _spec("AdaptiveWingLoss", shapes, params)
    with pytest.raises(LayerError, match=match):
        converter_for(spec)(spec)
