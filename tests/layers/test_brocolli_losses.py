"""brocolli's SSD Caffe layers: SmoothL1Loss (landmarknet/layers/loss.py) and BatchNormKyle
(landmarknet/layers/bn.py).

References: numpy restatements written here from the fork's CPU code
(smooth_L1_loss_layer.cpp, batch_norm_kyle_layer.cpp), and the reference Caffe itself
(brocolli-caffe 9.0.2, tests marked caffe_ref): loss values, tops, statistics blobs after the
forward, and every gradient.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.layers import converter_for
from layers.checker import Layer, assert_refused, layer_spec, make_spec, seeded
from reference.compare import rel_err
from reference.ours import run_backward

TOL = 1e-5  # relative to the reference's largest magnitude


# ----------------------------------------------------------------------------------------------
# numpy restatements of the fork's CPU code
# ----------------------------------------------------------------------------------------------

def smooth_l1_ref(a: np.ndarray, b: np.ndarray, top_diff: float = 1.0):
    """Forward_cpu / Backward_cpu with two bottoms: d = a - b; loss = sum(0.5 d^2 if |d| < 1
    else |d| - 0.5) / N; diff of a = f'(d) top_diff / N (f' = d or sign(d)), of b its
    negative."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = a.shape[0]
    d = a - b
    err = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)
    slope = np.where(np.abs(d) < 1, d, np.sign(d))
    return err.sum() / n, slope * top_diff / n, -slope * top_diff / n


def kyle_ref(x: np.ndarray, blobs: list[np.ndarray], dy: np.ndarray, *, use_global: bool,
             alpha_beta: bool, eps: float, fraction: float):
    """batch_norm_kyle_layer.cpp: (top, blobs after the forward, bottom diff, alpha and beta
    diffs). Stored statistics are blob / s (0 when s == 0); batch ones update the blobs as
    f*blob + stat (the variance times m/(m-1)); with stored statistics the backward is
    dy*alpha/std and leaves alpha's and beta's diffs at 0."""
    x = x.astype(np.float64)
    dy = dy.astype(np.float64)
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    view = (1, c) + (1,) * (x.ndim - 2)
    blobs = [np.asarray(b, np.float64) for b in blobs]
    new = [b.copy() for b in blobs]
    if use_global:
        s = blobs[2][0]
        k = 0.0 if s == 0 else 1.0 / s
        mean, var = blobs[0] * k, blobs[1] * k
    else:
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(view)) ** 2).mean(axis=axes)
        m = x.size // c
        new[2] = blobs[2] * fraction + 1
        new[0] = blobs[0] * fraction + mean
        new[1] = blobs[1] * fraction + (m / (m - 1) if m > 1 else 1.0) * var
    std = np.sqrt(var + eps).reshape(view)
    xn = (x - mean.reshape(view)) / std
    alpha = blobs[3].reshape(view) if alpha_beta else 1.0
    y = xn * alpha + blobs[4].reshape(view) if alpha_beta else xn
    g = dy * alpha
    if use_global:
        dx = g / std
        da = db = np.zeros(c)
    else:
        dx = (g - g.mean(axis=axes, keepdims=True)
              - xn * (g * xn).mean(axis=axes, keepdims=True)) / std
        da, db = (dy * xn).sum(axis=axes), dy.sum(axis=axes)
    return y, new, dx, da, db


# ----------------------------------------------------------------------------------------------
# SmoothL1Loss without Caffe
# ----------------------------------------------------------------------------------------------

def _smooth_inputs(rng, shape):
    a = (rng.standard_normal(shape) * 1.5).astype(np.float32)  # both sides of |d| = 1
    b = rng.standard_normal(shape).astype(np.float32)
    return a, b


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 8), (3, 2, 6)])
def test_smooth_l1_value_and_gradients_match_the_cpp(shape) -> None:
    rng = seeded(70)
    a, b = _smooth_inputs(rng, shape)
    spec = layer_spec("SmoothL1Loss", "", [shape] * 2)
    built = converter_for(spec)(spec)
    assert built.default_loss_weight == 1.0 and built.blobs == []
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = built.module(ta, tb)
    assert loss.shape == ()
    (3.0 * loss).backward()  # a loss weight of 3: Caffe's top diff
    value, ga, gb = smooth_l1_ref(a, b, top_diff=3.0)
    assert abs(float(loss.detach()) - value) <= TOL * abs(value)
    assert rel_err(ta.grad.numpy(), ga) <= TOL
    assert rel_err(tb.grad.numpy(), gb) <= TOL


def test_smooth_l1_hand_values() -> None:
    # d = 0.5 -> 0.125; d = -2 -> 1.5; d = 1 (the edge goes to |d| - 0.5) -> 0.5; N = 1
    a = np.array([[0.5, -2.0, 1.0]], np.float32)
    b = np.zeros_like(a)
    spec = layer_spec("SmoothL1Loss", "", [a.shape, b.shape])
    ta = torch.tensor(a, requires_grad=True)
    loss = converter_for(spec)(spec).module(ta, torch.tensor(b))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(2.125)
    np.testing.assert_allclose(ta.grad.numpy(), [[0.5, -1.0, 1.0]])


def test_smooth_l1_bad_inputs_name_layer_and_field() -> None:
    assert_refused("SmoothL1Loss", "", [(2, 3)], match="bottom")
    assert_refused("SmoothL1Loss", "", [(2, 3)] * 5, match="bottom")
    assert_refused("SmoothL1Loss", "", [(2, 3), (2, 4)], match="bottom 1 (the targets)")
    assert_refused("SmoothL1Loss", "", [(2, 3), (3, 3)], match="first axis")
    assert_refused("SmoothL1Loss", "", [(2, 3), (2, 3), (2, 3), (2, 4)],
                   match="bottom 3 (the outside weights)")
    assert_refused("SmoothL1Loss", "smooth_l1_loss_param { sigma: 0 }", [(2, 3)] * 2,
                   match="sigma")
    assert_refused("SmoothL1Loss", "", [(2, 3, 1, 1, 2)] * 2, match="4-axis")
    assert_refused("SmoothL1Loss", "", [(2, 3), (2, 3)], n_tops=2, match="1 top")


def faster_rcnn_smooth_l1_ref(a, b, w_in=None, w_out=None, sigma=1.0, top_diff=1.0,
                              weights_in_gradient=True):
    """smooth_L1_loss_layer.cu of rbgirshick/caffe-fast-rcnn, restated in float64.

    faster-rcnn branch (4 bottoms): x = w_in (a - b); loss = sum w_out f(x) / N with
    f = 0.5 sigma^2 x^2 where |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2; diff of a =
    f'(x) w_in w_out top_diff / N (f' = sigma^2 x or sign x), of b its negative.
    fast-rcnn branch (3 bottoms, ``weights_in_gradient=False``): no outside weights, and the
    diff of a is f'(x) top_diff / N, without w_in."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = a.shape[0]
    s2 = float(np.float32(sigma) * np.float32(sigma))
    x = a - b if w_in is None else w_in * (a - b)
    err = np.where(np.abs(x) < 1 / s2, 0.5 * x * x * s2, np.abs(x) - 0.5 / s2)
    slope = np.where(np.abs(x) < 1 / s2, s2 * x, np.sign(x))
    if w_out is not None:
        err = err * w_out
    if weights_in_gradient and w_in is not None:
        slope = slope * w_in * (1.0 if w_out is None else w_out)
    return err.sum() / n, slope * top_diff / n, -slope * top_diff / n


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_py_faster_rcnn_smooth_l1_with_weights_and_sigma(sigma) -> None:
    """4 bottoms and smooth_l1_loss_param, as py-faster-rcnn's rpn_loss_bbox (sigma 3) and
    loss_bbox (sigma 1) use them: inside weights 0/1, outside weights 1/Nanchors."""
    rng = seeded(71)
    shape = (2, 36, 3, 4)
    a, b = (rng.standard_normal(shape) * 0.4).astype(np.float32), \
        (rng.standard_normal(shape) * 0.4).astype(np.float32)
    w_in = (rng.random(shape) < 0.3).astype(np.float32)
    w_out = np.full(shape, 1 / 256, np.float32) * (rng.random(shape) < 0.8)
    spec = layer_spec("SmoothL1Loss", f"smooth_l1_loss_param {{ sigma: {sigma} }}", [shape] * 4)
    built = converter_for(spec)(spec)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = built.module(ta, tb, torch.tensor(w_in), torch.tensor(w_out))
    (2.0 * loss).backward()
    value, ga, gb = faster_rcnn_smooth_l1_ref(a, b, w_in, w_out, sigma, top_diff=2.0)
    assert abs(float(loss.detach()) - value) <= TOL * abs(value)
    assert rel_err(ta.grad.numpy(), ga) <= TOL
    assert rel_err(tb.grad.numpy(), gb) <= TOL


def test_fast_rcnn_smooth_l1_three_bottoms_keeps_its_gradient() -> None:
    """3 bottoms: rbgirshick/fast-rcnn's loss_bbox (bbox_pred, bbox_targets, bbox_loss_weights).
    With weights other than 0/1 its backward leaves them out of the gradient; that is kept."""
    rng = seeded(72)
    shape = (4, 84)
    a, b = _smooth_inputs(rng, shape)
    w = rng.uniform(0.0, 2.0, shape).astype(np.float32)
    spec = layer_spec("SmoothL1Loss", "", [shape] * 3)
    with pytest.warns(UserWarning, match="Fast R-CNN"):
        built = converter_for(spec)(spec)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = built.module(ta, tb, torch.tensor(w))
    loss.backward()
    value, ga, gb = faster_rcnn_smooth_l1_ref(a, b, w, None, 1.0, weights_in_gradient=False)
    assert abs(float(loss.detach()) - value) <= TOL * abs(value)
    assert rel_err(ta.grad.numpy(), ga) <= TOL
    assert rel_err(tb.grad.numpy(), gb) <= TOL


def test_smooth_l1_warns_that_loss_param_is_not_read() -> None:
    spec = make_spec("SmoothL1Loss", "loss_param { normalization: VALID }", [(2, 3), (2, 3)])
    with pytest.warns(UserWarning, match="layer1.*normalization ignored"):
        converter_for(spec)(spec)


# ----------------------------------------------------------------------------------------------
# BatchNormKyle without Caffe
# ----------------------------------------------------------------------------------------------

def _kyle_blobs(rng, c: int, s: float, alpha_beta: bool) -> list[np.ndarray]:
    blobs = [(rng.standard_normal(c) * s).astype(np.float32),
             (rng.uniform(0.5, 2.0, c) * s).astype(np.float32), np.array([s], np.float32)]
    if alpha_beta:
        blobs += [rng.uniform(0.5, 1.5, c).astype(np.float32),
                  rng.normal(0.0, 0.3, c).astype(np.float32)]
    return blobs


KYLE_CASES = [  # (params, bottom shape, train)
    ("use_alpha_beta: true", (4, 3, 5, 2), True),
    ("use_alpha_beta: true", (4, 3, 5, 2), False),
    ("use_alpha_beta: true eps: 0.01 moving_average_fraction: 0.9", (6, 4), True),
    ("use_alpha_beta: true use_global_stats: true", (2, 3, 4, 3), True),
    ("use_alpha_beta: true use_global_stats: false", (2, 3, 4, 3), False),
    ("", (3, 2, 4), True),
    ("eps: 0.5", (3, 2, 4), False),
    ("use_alpha_beta: false do_all_reduce: true", (1, 3, 1, 1), True),
]


@pytest.mark.parametrize("params, shape, train", KYLE_CASES)
def test_batch_norm_kyle_matches_the_cpp(params, shape, train) -> None:
    rng = seeded(71)
    text = f"batch_norm_param {{ {params} }}"
    spec = make_spec("BatchNormKyle", text, [shape])
    bp = spec.param.batch_norm_param
    alpha_beta = bp.use_alpha_beta
    use_global = bp.use_global_stats if bp.HasField("use_global_stats") else not train
    blobs = _kyle_blobs(rng, shape[1], 1.7, alpha_beta)
    layer = Layer(spec, rng, blob_values=blobs, train=train)
    assert [s.attr for s in layer.built.blobs] == ["mean", "variance", "scale_factor"] + (
        ["alpha", "beta"] if alpha_beta else [])
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    out, (tx,) = layer(x, grad=True)
    (out * torch.tensor(dy)).sum().backward()
    y, new, dx, da, db = kyle_ref(x, blobs, dy, use_global=use_global, alpha_beta=alpha_beta,
                                  eps=bp.eps, fraction=bp.moving_average_fraction)
    assert rel_err(out.detach().numpy(), y) <= TOL
    assert rel_err(tx.grad.numpy(), dx) <= 1e-4
    for i, slot in enumerate(layer.built.blobs[:3]):
        assert rel_err(layer.tensor(slot.attr).numpy(), new[i]) <= TOL, slot.attr
    if alpha_beta:
        for attr, ref in (("alpha", da), ("beta", db)):
            g = layer.tensor(attr).grad
            got = np.zeros_like(ref) if g is None else g.numpy()
            assert rel_err(got, ref) <= 1e-4, attr


def test_batch_norm_kyle_scale_factor_zero_reads_zero_statistics() -> None:
    rng = seeded(72)
    spec = make_spec("BatchNormKyle", "batch_norm_param { eps: 0.25 }", [(2, 3, 2, 2)])
    layer = Layer(spec, rng, blob_values=[np.ones(3), np.ones(3), np.zeros(1)], train=False)
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(layer(x), x / 0.5, rtol=1e-6)


def test_batch_norm_kyle_blob_fillers_are_caffes() -> None:
    # LayerSetUp: statistics 0, alpha 1, beta 0 (weight_filler/bias_filler are never read)
    spec = make_spec("BatchNormKyle", "batch_norm_param { use_alpha_beta: true "
                     "weight_filler { type: 'constant' value: 5 } }", [(2, 3)])
    blobs = converter_for(spec)(spec).blobs
    assert [(s.attr, s.shape, s.learnable) for s in blobs] == [
        ("mean", (3,), False), ("variance", (3,), False), ("scale_factor", (1,), False),
        ("alpha", (3,), True), ("beta", (3,), True)]
    assert blobs[3].filler.type == "constant" and blobs[3].filler.value == 1.0
    assert all(s.filler is None for i, s in enumerate(blobs) if i != 3)


def test_batch_norm_kyle_warns_when_caffe_would_decay_its_statistics() -> None:
    import warnings
    frozen = "param { lr_mult: 0 } param { lr_mult: 0 } param { decay_mult: 0 } "
    for text, phase, warns in (("", "train", True), (frozen, "train", False),
                               ("param { lr_mult: 0 } ", "train", True), ("", "test", False)):
        spec = make_spec("BatchNormKyle", text, [(2, 3)])
        spec.phase = phase
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converter_for(spec)(spec)
        assert any("weight decay" in str(w.message) for w in caught) == warns, (text, phase)


def test_batch_norm_kyle_bad_inputs_name_layer_and_field() -> None:
    assert_refused("BatchNormKyle", "", [(5,)], match="2 or more axes")
    assert_refused("BatchNormKyle", "batch_norm_param { eps: -1 }", [(2, 3)],
                   match="batch_norm_param.eps")
    assert_refused("BatchNormKyle", "", [(2, 3)], n_tops=2, match="1 top")
    assert_refused("BatchNormKyle", "", [(2, 3), (2, 3)], match="bottom")


# ----------------------------------------------------------------------------------------------
# against the reference Caffe
# ----------------------------------------------------------------------------------------------

def _inputs(tops: dict[str, tuple[int, ...]]) -> str:
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in tops.values())
    return ('layer { name: "in" type: "Input" '
            + " ".join(f'top: "{t}"' for t in tops) + f" input_param {{ {shapes} }} }}\n")


def _ours(proto: Path, weights: Path, arrays: dict, phase: str, blobs: list[str]):
    """landmarknet's net with the given weights: ({blob: tensor}, loss); grads retained."""
    net, out, inputs, loss = run_backward(proto, weights, arrays, phase, blobs,
                                          retain_grads=True)
    out.update(inputs)
    return net, out, loss


def _grad(t: torch.Tensor) -> np.ndarray:
    return np.zeros(tuple(t.shape), np.float32) if t.grad is None else t.grad.numpy()


SMOOTH_NET = """name: "smooth"
force_backward: true
INPUTS
layer { name: "st" type: "Scale" bottom: "t" top: "ts" scale_param { bias_term: true } }
layer { name: "l_weighted" type: "SmoothL1Loss" bottom: "a" bottom: "ts" top: "loss_2"
        loss_weight: 2 }
layer { name: "l_auto" type: "SmoothL1Loss" bottom: "ts" bottom: "a" loss_weight: 0.5 }
layer { name: "l_3d" type: "SmoothL1Loss" bottom: "p" bottom: "q" top: "loss_3d" }
"""


@pytest.mark.caffe_ref
def test_smooth_l1_matches_real_caffe(tmp_path) -> None:
    from reference.real_caffe import run_caffe
    rng = seeded(73)
    shape = (4, 3, 2, 2)
    a, t = _smooth_inputs(rng, shape)
    p, q = _smooth_inputs(rng, (3, 5, 2))
    arrays = {"a": a, "t": t, "p": p, "q": q}
    text = SMOOTH_NET.replace("INPUTS", _inputs({k: v.shape for k, v in arrays.items()}))
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    weights = tmp_path / "caffe.caffemodel"
    meta, out = run_caffe("backward", {"prototxt": str(proto), "phase": "train",
                                       "save_weights": str(weights)}, arrays)
    ref = {n: (out[f"data{i}"], out[f"diff{i}"]) for i, n in enumerate(meta["blobs"])}
    # l_auto's anonymous top is Caffe's "(automatic)" blob, weighted 0.5
    auto = [i for i, n in enumerate(meta["blobs"]) if n == "(automatic)"]
    assert len(auto) == 1 and meta["loss_weights"][auto[0]] == 0.5
    net, ours, loss = _ours(proto, weights, arrays, "train", ["ts", "loss_2", "loss_3d"])
    errors = {"loss": abs(loss - meta["loss"]) / abs(meta["loss"])}
    for top in ("loss_2", "loss_3d"):
        errors[top] = rel_err(ours[top].detach().numpy(), ref[top][0].reshape(()))
    # diffs: a and ts get both losses' (2 f'(a - ts) / N and 0.5 f'(ts - a) / N), p and q
    # their own (AllowForceBackward is true for the targets too)
    for name in ("a", "ts", "p", "q"):
        assert np.abs(ref[name][1]).max() > 0, name
        errors[f"d {name}"] = rel_err(_grad(ours[name]), ref[name][1])
    # Caffe's total, restated: 2 + 0.5 times the same loss (smooth L1 is symmetric) + 1
    ts = ref["ts"][0]
    value = 2.5 * smooth_l1_ref(a, ts)[0] + smooth_l1_ref(p, q)[0]
    errors["restated"] = abs(value - meta["loss"]) / abs(meta["loss"])
    print("SmoothL1Loss vs Caffe:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOL, errors


@pytest.mark.caffe_ref
def test_smooth_l1_with_three_bottoms_aborts_real_caffe(tmp_path) -> None:
    # what the refusal of a weights bottom rests on
    from reference.real_caffe import CaffeFailed, run_caffe
    shape = (2, 3)
    proto = tmp_path / "net.prototxt"
    proto.write_text('name: "w"\n' + _inputs({"a": shape, "b": shape, "w": shape})
                     + 'layer { name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" '
                       'bottom: "w" top: "loss" }\n')
    zeros = np.zeros(shape, np.float32)
    with pytest.raises(CaffeFailed) as info:
        run_caffe("backward", {"prototxt": str(proto)}, {"a": zeros, "b": zeros, "w": zeros})
    assert "ExactNumBottomBlobs() == bottom.size() (2 vs. 3)" in info.value.log


def _kyle_net(shape: tuple[int, ...], params: str) -> str:
    return ('name: "kyle"\nforce_backward: true\n' + _inputs({"x": shape, "t": shape})
            + f'layer {{ name: "bk" type: "BatchNormKyle" bottom: "x" top: "y" '
              f'batch_norm_param {{ {params} }} }}\n'
            + 'layer { name: "d" type: "Eltwise" bottom: "y" bottom: "t" top: "d" '
              'eltwise_param { coeff: 1 coeff: -1 } }\n'
            + 'layer { name: "loss" type: "Reduction" bottom: "d" top: "loss" loss_weight: 1 '
              'reduction_param { operation: SUMSQ } }\n')


KYLE_CAFFE_CASES = [  # (params, shape, phase)
    ("use_alpha_beta: true eps: 0.001 moving_average_fraction: 0.9", (4, 3, 5, 2), "train"),
    ("use_alpha_beta: true eps: 0.001", (4, 3, 5, 2), "test"),
    ("use_alpha_beta: true use_global_stats: true", (2, 3, 4, 3), "train"),
    ("use_alpha_beta: true use_global_stats: false do_all_reduce: true", (3, 4), "test"),
    ("eps: 0.01", (2, 3, 4), "train"),
    ("", (2, 3, 3, 3), "test"),
]


@pytest.mark.caffe_ref
@pytest.mark.parametrize("params, shape, phase", KYLE_CAFFE_CASES)
def test_batch_norm_kyle_matches_real_caffe(tmp_path, params, shape, phase) -> None:
    from landmarknet.build import build_net
    from landmarknet.params import save_weights
    from reference.real_caffe import run_caffe
    rng = seeded(74)
    text = _kyle_net(shape, params)
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    alpha_beta = "use_alpha_beta: true" in params
    blobs = _kyle_blobs(rng, shape[1], 1.7, alpha_beta)
    # our .caffemodel, which Caffe loads by position: blob order and shapes are tested there
    net = build_net(proto, phase=phase)
    with torch.no_grad():
        for j, value in enumerate(blobs):
            net.blob_tensor("bk", j).copy_(torch.from_numpy(value))
    weights = tmp_path / "kyle.caffemodel"
    save_weights(net, weights, net.net_param)
    arrays = {"x": (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32),
              "t": rng.standard_normal(shape).astype(np.float32)}
    meta, out = run_caffe("backward", {"prototxt": str(proto), "phase": phase,
                                       "weights": str(weights)}, arrays)
    ref = {n: (out[f"data{i}"], out[f"diff{i}"]) for i, n in enumerate(meta["blobs"])}
    params_ref = {j: (out[f"pdata{k}"], out[f"pdiff{k}"])
                  for k, (layer, j, _s) in enumerate(meta["params"]) if layer == "bk"}
    assert len(params_ref) == len(blobs)
    ours_net, ours, loss = _ours(proto, weights, arrays, phase, ["y"])
    errors = {"loss": abs(loss - meta["loss"]) / abs(meta["loss"]),
              "y": rel_err(ours["y"].detach().numpy(), ref["y"][0]),
              "d x": rel_err(_grad(ours["x"]), ref["x"][1])}
    assert np.abs(ref["x"][1]).max() > 0
    for j in range(3):  # statistics after the forward (TRAIN with batch statistics updates them)
        errors[f"blob {j}"] = rel_err(ours_net.blob_tensor("bk", j).numpy(), params_ref[j][0])
    for j in range(3, len(blobs)):  # alpha, beta: their diffs (0 with stored statistics)
        errors[f"d blob {j}"] = rel_err(_grad(ours_net.blob_tensor("bk", j)), params_ref[j][1])
    print(f"BatchNormKyle [{params}] {phase}:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOL, errors
    # the case is what it says: batch statistics move the stored blobs, stored ones do not
    moved = not np.allclose(params_ref[2][0], blobs[2])
    bp_global = "use_global_stats: true" in params or (
        phase == "test" and "use_global_stats: false" not in params)
    assert moved == (not bp_global)


def test_kyle_random_weights_are_usable() -> None:
    # the registry's random rule: positive variance and scale factor, alpha near 1
    from landmarknet.layers.bn import _random_kyle
    values = _random_kyle([(3,), (3,), (1,), (3,), (3,)], torch.Generator().manual_seed(0))
    assert (values[1] > 0).all() and float(values[2]) > 0 and (values[3] > 0.4).all()
