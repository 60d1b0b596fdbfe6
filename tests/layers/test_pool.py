"""Pooling and SPP (landmarknet/layers/pool.py) against independent numpy references.

References: ``reference.numpy_caffe.pooling`` and, where it has no function (the mask top,
STOCHASTIC pooling, Caffe's backward pass), a small numpy reference below that follows the
C++ named in its docstring; output sizes are derived by hand from pooling_layer.cpp.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import ShapeError
from landmarknet.layers.pool import caffe_pool_output_size
from layers.checker import (FLT_MAX, FLT_MIN, Layer, assert_bad_parameters_name_the_layer,
                            assert_gradients_flow, assert_meta_shapes_equal_cpu, close, layer_rng,
                            make_spec)
from reference import numpy_caffe as R

rng = pytest.fixture(layer_rng, name="rng")


# ----------------------------------------------------------------------------------------------
# output sizes
# ----------------------------------------------------------------------------------------------

# (H, k, s, p, ceil, expected) - expected derived by hand from pooling_layer.cpp:
# out = ceil|floor((H + 2p - k) / s) + 1, then with padding: out -= 1 if (out-1)*s >= H + p.
OUTPUT_SIZES = [
    (7, 3, 2, 0, True, 3),     # (7-3)/2 = 2 exactly
    (6, 3, 2, 0, True, 3),     # ceil(1.5) = 2: keeps the half window (torch floor gives 2)
    (6, 3, 2, 0, False, 2),    # FLOOR
    (6, 3, 2, 1, True, 4),     # ceil(2.5) = 3 -> 4; 3*2 = 6 < 7 keeps it
    (5, 2, 2, 1, True, 3),     # ceil(2.5) = 3 -> 4; 3*2 = 6 >= 6 drops the last
    (6, 3, 2, 1, False, 3),    # floor(2.5) = 2 -> 3; 2*2 = 4 < 7
    (5, 1, 3, 0, True, 3),     # stride > kernel, pad 0: window at 6 outside, kept
    (4, 1, 2, 0, True, 3),     # window starting exactly at H is kept (no pad)
    (5, 3, 1, 2, True, 7),     # pad = k - 1
    (6, 4, 3, 3, True, 3),     # pad = k - 1 with stride: ceil(8/3) = 3 -> 4; 9 >= 9 drops
    (2, 3, 2, 0, True, 1),     # kernel larger than the input: ceil(-0.5) = 0 -> 1
    (112, 3, 2, 0, True, 56),  # ceil(54.5) = 55 -> 56
    (112, 3, 2, 1, True, 57),  # ceil(55.5) = 56 -> 57; 112 < 113
    (2, 5, 1, 0, True, -2),    # does not fit: ceil(-3) + 1
]


@pytest.mark.parametrize("h,k,s,p,ceil,expected", OUTPUT_SIZES)
def test_caffe_pool_output_size(h, k, s, p, ceil, expected):
    assert caffe_pool_output_size(h, k, s, p, ceil) == expected


def test_caffe_pool_output_size_padding_of_the_other_axis():
    # pooling_layer.cpp tests `if (pad_h_ || pad_w_)`: padding along w also drops an h window.
    assert caffe_pool_output_size(5, 1, 3, 0, True) == 3
    assert caffe_pool_output_size(5, 1, 3, 0, True, any_pad=True) == 2


# ----------------------------------------------------------------------------------------------
# values against numpy_caffe.pooling
# ----------------------------------------------------------------------------------------------

# (id, H, W, pooling_param fields, expected (out_h, out_w)); sizes derived by hand as above.
POOL_CASES = [
    ("ceil_partial", 6, 6, "kernel_size: 3 stride: 2", (3, 3)),
    ("floor", 6, 6, "kernel_size: 3 stride: 2 round_mode: FLOOR", (2, 2)),
    ("exact", 7, 7, "kernel_size: 3 stride: 2", (3, 3)),
    ("pad1", 6, 6, "kernel_size: 3 stride: 2 pad: 1", (4, 4)),
    ("pad_drops_last", 5, 5, "kernel_size: 2 stride: 2 pad: 1", (3, 3)),
    ("pad_floor", 6, 6, "kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (3, 3)),
    ("stride_gt_kernel_outside", 5, 5, "kernel_size: 1 stride: 3", (3, 3)),
    ("stride_gt_kernel_partial", 5, 5, "kernel_size: 2 stride: 4", (2, 2)),
    ("window_at_edge_nan", 4, 4, "kernel_size: 1 stride: 2", (3, 3)),
    ("pad_k_minus_1", 5, 5, "kernel_size: 3 stride: 1 pad: 2", (7, 7)),
    ("pad_k_minus_1_strided", 6, 6, "kernel_size: 4 stride: 3 pad: 3", (3, 3)),
    ("kernel_gt_input", 2, 2, "kernel_size: 3 stride: 2", (1, 1)),
    # h: ceil(6/2)+1 = 4, 6 < 8 keeps; w: ceil(10/3)+1 = 5, 12 >= 11 drops -> 4
    ("asymmetric", 7, 10,
     "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1", (4, 4)),
    ("global", 5, 7, "global_pooling: true", (1, 1)),
    ("large_pad", 112, 112, "kernel_size: 3 stride: 2 pad: 1", (57, 57)),
    ("large_ceil", 112, 112, "kernel_size: 3 stride: 2", (56, 56)),
]


def _ref_pool_kwargs(text: str) -> dict:
    pp = caffe_pb2.PoolingParameter()
    text_format.Parse(text, pp)
    kw: dict = {"round_mode": "FLOOR" if pp.round_mode == 1 else "CEIL"}
    if pp.global_pooling:
        kw["global_pooling"] = True
        return kw
    for f in ("kernel_size", "kernel_h", "kernel_w", "stride", "stride_h", "stride_w", "pad",
              "pad_h", "pad_w"):
        if pp.HasField(f):
            kw[f] = getattr(pp, f)
    return kw


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("path", ["auto", "general"])
@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pooling_matches_caffe(case, method, path, rng):
    _, h, w, fields, expected = case
    n, c = (1, 2) if h > 50 else (2, 3)
    spec = make_spec("Pooling", f"pooling_param {{ pool: {method} {fields} }}", [(n, c, h, w)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = Layer(spec, rng)
    assert layer.built.blobs == []
    if path == "general":
        layer.module.allow_fast = False
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in the reference: Caffe's NaN
        ref = R.pooling(x, pool=method, **_ref_pool_kwargs(fields))
    y = layer(x)
    assert y.shape == (n, c) + expected
    close(y, ref)


def test_pooling_empty_windows_are_caffes_values(rng):
    # H = 4, k = 1, s = 2: windows start at 0, 2, 4; the one at 4 holds no pixel.
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    for method in ("MAX", "AVE"):
        spec = make_spec("Pooling", f"pooling_param {{ pool: {method} kernel_size: 1 stride: 2 }}",
                         [(1, 2, 4, 4)])
        with pytest.warns(UserWarning, match="outside"):
            layer = Layer(spec, rng)
        y = layer(x)
        np.testing.assert_array_equal(y[:, :, :2, :2], x[:, :, 0:4:2, 0:4:2])
        if method == "MAX":
            assert np.all(y[:, :, 2, :] == -FLT_MAX) and np.all(y[:, :, :, 2] == -FLT_MAX)
        else:  # 0 / pool_size with pool_size == 0: NaN, as Caffe's Forward_cpu computes
            assert np.all(np.isnan(y[:, :, 2, :])) and np.all(np.isnan(y[:, :, :, 2]))


def test_pooling_padding_on_w_drops_window_on_h(rng):
    # Caffe decrements both pooled sizes under `if (pad_h_ || pad_w_)`. H=5: ceil(4/3)+1 = 3,
    # (3-1)*3 = 6 >= 5 + 0 -> 2 rows (caffe_ref.pooling tests each axis's own pad and would
    # keep 3). W=6, pad_w 1: ceil(6/3)+1 = 3, 6 < 7 keeps 3. Rows 0, 3; column windows
    # [-1,1) [2,4) [5,7) clipped to the image {0}, {2,3}, {5}; AVE divisors (clipped to W+1=7)
    # are 2, 2, 2. Input x[r, c] = 6r + c, values worked out by hand.
    x = np.arange(30, dtype=np.float32).reshape(1, 1, 5, 6)
    geometry = "kernel_h: 1 kernel_w: 2 stride_h: 3 stride_w: 3 pad_h: 0 pad_w: 1"
    expected = {"MAX": [[0, 3, 5], [18, 21, 23]], "AVE": [[0, 2.5, 2.5], [9, 20.5, 11.5]]}
    for method, want in expected.items():
        for fast in (True, False):
            spec = make_spec("Pooling", f"pooling_param {{ pool: {method} {geometry} }}",
                             [(1, 1, 5, 6)])
            layer = Layer(spec, rng)
            layer.module.allow_fast = fast
            np.testing.assert_array_equal(layer(x)[0, 0], np.array(want, dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# mask top, STOCHASTIC, SPP
# ----------------------------------------------------------------------------------------------

def _ref_max_pool_with_mask(x, kernel, stride, pad, out):
    """pooling_layer.cpp MAX Forward_cpu with a mask top: first strictly greater value, mask
    h*W + w into the input plane, -FLT_MAX / -1 where the window holds no pixel."""
    n, c, h, w = x.shape
    y = np.full((n, c) + out, -FLT_MAX, np.float32)
    mask = np.full((n, c) + out, -1.0, np.float32)
    for b in range(n):
        for ch in range(c):
            for i in range(out[0]):
                for j in range(out[1]):
                    hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
                    he, we = min(hs + kernel[0], h), min(ws + kernel[1], w)
                    for r in range(max(hs, 0), he):
                        for q in range(max(ws, 0), we):
                            if x[b, ch, r, q] > y[b, ch, i, j]:
                                y[b, ch, i, j] = x[b, ch, r, q]
                                mask[b, ch, i, j] = r * w + q
    return y, mask


@pytest.mark.parametrize("fields,kernel,stride,pad,hw,out", [
    # ceil(3/2)+1 = 3, ceil(5/2)+1 = 4: torch's own pooling path
    ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0), (6, 8), (3, 4)),
    # ceil(7/2)+1 = 5, 8 >= 8 drops -> 4; ceil(8/2)+1 = 5, 8 < 9 keeps: pad > k/2
    ("kernel_size: 3 stride: 2 pad: 2", (3, 3), (2, 2), (2, 2), (6, 7), (4, 5)),
    # ceil(5/3)+1 = 3 with a row window at 6 = H outside the input; ceil(6/3)+1 = 3
    ("kernel_size: 1 stride: 3", (1, 1), (3, 3), (0, 0), (6, 7), (3, 3)),
])
def test_max_pooling_mask_top(fields, kernel, stride, pad, hw, out, rng):
    h, w = hw
    spec = make_spec("Pooling", f"pooling_param {{ pool: MAX {fields} }}", [(2, 2, h, w)],
                     n_tops=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = Layer(spec, rng)
    x = rng.standard_normal((2, 2, h, w)).astype(np.float32)
    y, mask = layer(x)
    ref_y, ref_mask = _ref_max_pool_with_mask(x, kernel, stride, pad, out)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(mask, ref_mask)


def _ref_stochastic_test(x, k, s, out):
    """StoPoolForwardTest (pooling_layer.cu): sum x^2 / (FLT_MIN + sum x) in [i*s, i*s+k)
    clipped to the input; no padding exists for STOCHASTIC."""
    x = x.astype(np.float64)
    n, c, h, w = x.shape
    y = np.zeros((n, c) + out)
    for i in range(out[0]):
        for j in range(out[1]):
            win = x[:, :, i * s:min(i * s + k, h), j * s:min(j * s + k, w)]
            y[:, :, i, j] = (win ** 2).sum(axis=(2, 3)) / (FLT_MIN + win.sum(axis=(2, 3)))
    return y.astype(np.float32)


def test_stochastic_pooling_test_phase_is_weighted_average(rng):
    # H = 7, k = 3, s = 2: ceil(4/2)+1 = 3; W = 8: ceil(5/2)+1 = 4 (last window partial).
    spec = make_spec("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }",
                     [(2, 3, 7, 8)])
    layer = Layer(spec, rng, train=False)
    x = np.abs(rng.standard_normal((2, 3, 7, 8))).astype(np.float32)
    close(layer(x), _ref_stochastic_test(x, 3, 2, (3, 4)))


def test_stochastic_pooling_train_phase_samples_a_window_member(rng):
    spec = make_spec("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }",
                     [(1, 2, 5, 6)])
    layer = Layer(spec, rng, train=True)
    x = np.abs(rng.standard_normal((1, 2, 5, 6))).astype(np.float32)
    y = layer(x)
    assert y.shape == (1, 2, 3, 3)  # H: ceil(3/2)+1 = 3, W: ceil(4/2)+1 = 3
    for i in range(3):
        for j in range(3):
            win = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(1, 2, -1)
            assert np.all(np.any(win == y[:, :, i, j, None], axis=-1))
    # A window whose only positive pixel is (1, 0) always yields it (probability 1).
    one_hot = np.zeros((1, 2, 5, 6), np.float32)
    one_hot[:, :, 1, 0] = 7.0
    for _ in range(5):
        assert np.all(layer(one_hot)[:, :, 0, 0] == 7.0)


def test_spp_matches_pooling_pyramid(rng):
    # Levels of SPPLayer::GetPoolingParam: bins = 2^l, kernel = ceil(H / bins),
    # pad = (kernel * bins - H + 1) / 2, stride = kernel. H = 7, W = 9 give 1x1, 2x2, 4x4.
    h, w = 7, 9
    for method in ("MAX", "AVE"):
        spec = make_spec("SPP", f"spp_param {{ pyramid_height: 3 pool: {method} }}",
                         [(2, 3, h, w)])
        layer = Layer(spec, rng)
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        parts = []
        for level in range(3):
            bins = 2 ** level
            kh, kw = math.ceil(h / bins), math.ceil(w / bins)
            ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
            pooled = R.pooling(x, pool=method, kernel_h=kh, kernel_w=kw, stride_h=kh,
                               stride_w=kw, pad_h=ph, pad_w=pw)
            assert pooled.shape[2:] == (bins, bins)
            parts.append(pooled.reshape(2, -1))
        y = layer(x)
        assert y.shape == (2, 3 * (1 + 4 + 16))
        close(y, np.concatenate(parts, axis=1))


# ----------------------------------------------------------------------------------------------
# backward, and a shape error at run time
# ----------------------------------------------------------------------------------------------

def _ref_pool_backward(x, top_diff, method, kernel, stride, pad):
    """pooling_layer.cpp Backward_cpu: MAX routes each top diff to its argmax (first strictly
    greater pixel); AVE spreads top_diff / pool_size over the window's pixels."""
    n, c, h, w = x.shape
    out_h, out_w = top_diff.shape[2:]
    dx = np.zeros(x.shape, np.float64)
    for b in range(n):
        for ch in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    hs, ws = i * stride - pad, j * stride - pad
                    if method == "MAX":
                        best, arg = -FLT_MAX, None
                        for r in range(max(hs, 0), min(hs + kernel, h)):
                            for q in range(max(ws, 0), min(ws + kernel, w)):
                                if x[b, ch, r, q] > best:
                                    best, arg = x[b, ch, r, q], (r, q)
                        dx[b, ch][arg] += top_diff[b, ch, i, j]
                    else:
                        he, we = min(hs + kernel, h + pad), min(ws + kernel, w + pad)
                        size = (he - hs) * (we - ws)
                        dx[b, ch, max(hs, 0):min(he, h), max(ws, 0):min(we, w)] += (
                            top_diff[b, ch, i, j] / size)
    return dx


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("k,s,p,h", [(3, 2, 2, 7), (3, 2, 1, 6), (2, 2, 0, 5)])
def test_pooling_backward_matches_caffe(method, k, s, p, h, rng):
    text = f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} }}"
    spec = make_spec("Pooling", text, [(2, 2, h, h)])
    layer = Layer(spec, rng)
    x = rng.standard_normal((2, 2, h, h)).astype(np.float32)
    out, (t,) = layer(x, grad=True)
    top_diff = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    (out * torch.from_numpy(top_diff)).sum().backward()
    close(t.grad.numpy(), _ref_pool_backward(x, top_diff, method, k, s, p))


def test_runtime_shape_error_names_the_layer(rng):
    spec = make_spec("Pooling", "pooling_param { kernel_size: 3 }", [(1, 1, 5, 5)], name="p1")
    layer = Layer(spec, rng)
    with pytest.raises(ShapeError, match="p1"):
        layer.module(torch.zeros(1, 1, 2, 2))


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------

GRAD_CASES = [
    ("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }", [(2, 3, 6, 6)]),
    ("SPP", "spp_param { pyramid_height: 2 }", [(2, 3, 6, 6)]),
]


@pytest.mark.parametrize("type_,text,shapes", GRAD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradients_flow(type_, text, shapes, rng):
    assert_gradients_flow(type_, text, shapes, rng)


# ----------------------------------------------------------------------------------------------
# meta device
# ----------------------------------------------------------------------------------------------

META_CASES = [
    ("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }", [(1, 2, 9, 8)]),
    ("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }", [(1, 2, 9, 8)]),
    ("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }", [(1, 2, 5, 5)]),
    ("SPP", "spp_param { pyramid_height: 3 pool: AVE }", [(1, 2, 11, 7)]),
]


@pytest.mark.parametrize("type_,text,shapes", META_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(META_CASES)])
@pytest.mark.parametrize("train", [False, True])
def test_meta_shapes_equal_cpu_shapes(type_, text, shapes, train, rng):
    assert_meta_shapes_equal_cpu(type_, text, shapes, train, rng)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

BAD = [
    ("Pooling", "pooling_param { kernel_size: 3 pad: 3 }", [(1, 3, 5, 5)], "pad"),
    ("Pooling", "pooling_param { global_pooling: true kernel_size: 3 }", [(1, 3, 5, 5)],
     "global"),
    ("Pooling", "pooling_param { stride: 2 }", [(1, 3, 5, 5)], "kernel_size"),
    ("Pooling", "pooling_param { kernel_size: 3 kernel_h: 3 kernel_w: 2 }", [(1, 3, 5, 5)],
     "kernel"),
    ("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }", [(1, 3, 5, 5)],
     "padding"),
    ("Pooling", "pooling_param { kernel_size: 7 }", [(1, 3, 5, 5)], "fit"),
    ("Pooling", "pooling_param { kernel_size: 3 }", [(3, 5, 5)], "4-D"),
    ("SPP", "spp_param { }", [(1, 3, 5, 5)], "pyramid_height"),
]


@pytest.mark.parametrize("type_,text,shapes,word", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_parameters_raise_layer_error(type_, text, shapes, word):
    assert_bad_parameters_name_the_layer(type_, text, shapes, word)
