"""Convolution, pooling and normalisation layers against independent numpy references.

References come from ``tests/caffe_ref.py`` (numpy re-implementations of Caffe's C++); where it
has no function (the pooling mask top, STOCHASTIC pooling, Caffe's backward passes, Embed) a
small numpy reference below follows the C++ named in its docstring. Every module is built the
way the builder builds it: constructed on the 'meta' device, shape-inferred there, moved with
``to_empty`` and filled blob by blob; the meta top shapes must equal the CPU ones.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe_ref as R
from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError, ShapeError
from landmarknet.layers.pool import caffe_pool_output_size
from landmarknet.layers.registry import LayerSpec, converter_for, registered_types

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
RTOL = 1e-5


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def make_spec(type_: str, text: str, bottom_shapes, n_tops: int = 1, name: str = "layer1"
              ) -> LayerSpec:
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    param.name, param.type = name, type_
    return LayerSpec(name, type_, param, [tuple(s) for s in bottom_shapes], n_tops,
                     source="test.prototxt:1")


class Layer:
    """A converted layer, built like the builder does, with its blobs filled with random data."""

    def __init__(self, spec: LayerSpec, rng: np.random.Generator, blob_values=None,
                 train: bool = False) -> None:
        self.spec = spec
        with torch.device("meta"):
            built = converter_for(spec)(spec)
        self.built = built
        self.module = built.module.train(train)
        self.meta_shapes = self._tops(self.module(*[torch.empty(s, device="meta")
                                                    for s in spec.bottom_shapes]))
        self.module.to_empty(device="cpu")
        self.blobs: list[np.ndarray] = []
        for i, slot in enumerate(built.blobs):
            t = self.tensor(slot.attr)
            assert tuple(t.shape) == tuple(slot.shape), (slot.attr, t.shape, slot.shape)
            assert isinstance(t, torch.nn.Parameter) == slot.learnable, slot.attr
            if blob_values is not None and blob_values[i] is not None:
                value = np.asarray(blob_values[i], dtype=np.float32).reshape(slot.shape)
            else:
                value = rng.standard_normal(slot.shape).astype(np.float32)
            with torch.no_grad():
                t.copy_(torch.from_numpy(value))
            self.blobs.append(value)

    def tensor(self, attr: str) -> torch.Tensor:
        obj = self.module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    @staticmethod
    def _tops(out) -> list[tuple[int, ...]]:
        outs = out if isinstance(out, tuple) else (out,)
        return [tuple(o.shape) for o in outs]

    def __call__(self, *xs: np.ndarray, grad: bool = False):
        ts = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).requires_grad_(grad)
              for x in xs]
        out = self.module(*ts)
        assert self._tops(out) == self.meta_shapes, "meta shape inference disagrees with CPU"
        assert len(self.meta_shapes) == self.spec.n_tops
        if grad:
            return out, ts
        outs = out if isinstance(out, tuple) else (out,)
        res = [o.detach().numpy() for o in outs]
        return res[0] if len(res) == 1 else res


def close(actual, expected, rtol: float = RTOL) -> None:
    """Relative comparison; the absolute floor is rtol times the reference's largest value
    (float32 sums that cancel to ~0 cannot be compared relatively). NaN must match NaN."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


def test_registered_types_and_families():
    regs = registered_types()
    expect = {"Convolution": "conv", "Deconvolution": "conv", "InnerProduct": "conv",
              "Embed": "conv", "Pooling": "pool", "SPP": "pool", "BatchNorm": "norm",
              "Scale": "norm", "Bias": "norm", "LRN": "norm", "MVN": "norm", "Normalize": "norm"}
    for type_, family in expect.items():
        assert regs[type_].family == family
        assert regs[type_].summary, f"{type_} has no one-line summary"
    assert regs["Normalize"].origin == "SSD (weiliu89/caffe)"
    assert regs["Convolution"].origin == "BVLC Caffe"


# ---------------------------------------------------------------------------------------------
# pooling: output sizes
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# pooling: values against caffe_ref.pooling
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# convolution family
# ---------------------------------------------------------------------------------------------

def test_convolution_grouped_dilated_asymmetric(rng):
    text = """convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2
              stride_w: 1 pad_h: 1 pad_w: 0 dilation: 2 weight_filler { type: "xavier" } }"""
    spec = make_spec("Convolution", text, [(2, 4, 9, 8)])
    layer = Layer(spec, rng)
    w_slot, b_slot = layer.built.blobs
    assert (w_slot.attr, w_slot.shape) == ("weight", (6, 2, 3, 2))  # (O, C/g, kh, kw)
    assert w_slot.filler.type == "xavier"
    assert (b_slot.attr, b_slot.shape, b_slot.filler) == ("bias", (6,), None)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    y = layer(x)
    # H: (9 + 2 - (2*2+1)) // 2 + 1 = 4; W: (8 - (2*1+1)) // 1 + 1 = 6
    assert y.shape == (2, 6, 4, 6)
    ref = R.convolution(x, layer.blobs[0], layer.blobs[1], stride_h=2, stride_w=1, pad_h=1,
                        pad_w=0, dilation=2, group=2)
    close(y, ref)


def test_convolution_without_bias_and_two_bottoms(rng):
    text = "convolution_param { num_output: 3 kernel_size: 3 pad: 1 bias_term: false }"
    spec = make_spec("Convolution", text, [(1, 2, 5, 5), (1, 2, 5, 5)], n_tops=2)
    layer = Layer(spec, rng)
    assert [s.attr for s in layer.built.blobs] == ["weight"]
    a = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    b = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    ya, yb = layer(a, b)
    close(ya, R.convolution(a, layer.blobs[0], None, pad=1))
    close(yb, R.convolution(b, layer.blobs[0], None, pad=1))


def test_deconvolution_group_and_stride(rng):
    text = """convolution_param { num_output: 6 group: 3 kernel_size: 4 stride: 2 pad: 1
              bias_filler { type: "constant" value: 0.5 } }"""
    spec = make_spec("Deconvolution", text, [(2, 6, 5, 4)])
    layer = Layer(spec, rng)
    assert [(s.attr, s.shape) for s in layer.built.blobs] == [("weight", (6, 2, 4, 4)),
                                                              ("bias", (6,))]
    assert layer.built.blobs[1].filler.value == pytest.approx(0.5)
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 6, 10, 8)  # 2*(5-1) + 4 - 2 = 10, 2*(4-1) + 4 - 2 = 8
    close(y, R.deconvolution(x, layer.blobs[0], layer.blobs[1], stride=2, pad=1, group=3))


def test_deconvolution_dilated_rectangular(rng):
    text = """convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2
              pad_h: 2 pad_w: 0 dilation: 2 }"""
    spec = make_spec("Deconvolution", text, [(1, 3, 4, 5)])
    layer = Layer(spec, rng)
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    y = layer(x)
    assert y.shape == (1, 2, 10, 11)  # 3*3 + 2*2 + 1 - 4 = 10; 2*4 + 2*1 + 1 - 0 = 11
    close(y, R.deconvolution(x, layer.blobs[0], layer.blobs[1], stride_h=3, stride_w=2,
                             pad_h=2, pad_w=0, dilation=2))


@pytest.mark.parametrize("axis,transpose,shape,wshape,out", [
    (1, False, (2, 3, 4, 5), (7, 60), (2, 7)),
    (2, True, (2, 3, 4, 5), (20, 7), (2, 3, 7)),
    (-1, False, (2, 3, 4, 5), (7, 5), (2, 3, 4, 7)),
    (1, True, (4, 6), (6, 7), (4, 7)),
])
def test_inner_product_axis_and_transpose(axis, transpose, shape, wshape, out, rng):
    text = (f"inner_product_param {{ num_output: 7 axis: {axis} "
            f"transpose: {str(transpose).lower()} }}")
    spec = make_spec("InnerProduct", text, [shape])
    layer = Layer(spec, rng)
    assert [s.shape for s in layer.built.blobs] == [wshape, (7,)]
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer(x)
    assert y.shape == out
    close(y, R.inner_product(x, layer.blobs[0], layer.blobs[1], axis=axis, transpose=transpose))


def test_embed_looks_up_rows(rng):
    spec = make_spec("Embed", "embed_param { num_output: 4 input_dim: 10 }", [(2, 3)])
    layer = Layer(spec, rng)
    assert [s.shape for s in layer.built.blobs] == [(10, 4), (4,)]
    idx = np.array([[0, 3, 9], [9, 2.0, 5]], np.float32)
    y = layer(idx)
    # embed_layer.cpp: top[n] = weight[static_cast<int>(bottom[n])] + bias
    expected = layer.blobs[0][idx.astype(int)] + layer.blobs[1]
    assert y.shape == (2, 3, 4)
    close(y, expected)


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------

def _bn_blobs(rng, c, s):
    mean = rng.standard_normal(c).astype(np.float32) * 3
    var = (rng.random(c).astype(np.float32) + 0.5) * 4
    return [mean, var, np.array([s], np.float32)]


@pytest.mark.parametrize("s", [1.0, 7.5, 0.0])
def test_batchnorm_test_phase_uses_blobs_over_scale_factor(s, rng):
    spec = make_spec("BatchNorm", "batch_norm_param { eps: 0.001 }", [(2, 4, 3, 5)])
    blobs = _bn_blobs(rng, 4, s)
    layer = Layer(spec, rng, blob_values=blobs, train=False)
    slots = layer.built.blobs
    assert [(b.attr, b.shape, b.learnable) for b in slots] == [
        ("mean", (4,), False), ("variance", (4,), False), ("scale_factor", (1,), False)]
    assert not list(layer.module.parameters())
    x = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    ref = R.batch_norm(x, *blobs, eps=1e-3, use_global_stats=True)
    if s == 0:  # factor 0: statistics are zero, y = x / sqrt(eps)
        close(ref, x / np.sqrt(1e-3))
    close(layer(x), ref)
    # the blobs did not move in TEST
    close(layer.module.mean.numpy(), blobs[0])
    close(layer.module.scale_factor.numpy(), blobs[2])


def test_batchnorm_train_phase_batch_stats_and_caffe_update(rng):
    spec = make_spec("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 }",
                     [(3, 4, 5, 2)])
    blobs = _bn_blobs(rng, 4, 2.0)
    layer = Layer(spec, rng, blob_values=blobs, train=True)
    mean_b, var_b, s_b = blobs
    for step in range(2):
        x = (rng.standard_normal((3, 4, 5, 2)) * 2 + 1).astype(np.float32)
        y = layer(x)
        close(y, R.batch_norm(x, eps=1e-5, use_global_stats=False))
        mean_b, var_b, s_b = R.batch_norm_update(x, mean_b, var_b, s_b,
                                                 moving_average_fraction=0.9)
        close(layer.module.mean.numpy(), mean_b)
        close(layer.module.variance.numpy(), var_b)
        close(layer.module.scale_factor.numpy(), s_b)
    # after training, eval() uses mean/s and var/s of the accumulated blobs
    layer.module.eval()
    x = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    close(layer(x), R.batch_norm(x, mean_b, var_b, s_b, use_global_stats=True))


def test_batchnorm_explicit_use_global_stats_overrides_mode(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    blobs = _bn_blobs(rng, 3, 3.0)
    on = make_spec("BatchNorm", "batch_norm_param { use_global_stats: true }", [x.shape])
    layer = Layer(on, rng, blob_values=blobs, train=True)
    close(layer(x), R.batch_norm(x, *blobs, use_global_stats=True))
    close(layer.module.scale_factor.numpy(), blobs[2])  # no update with global stats
    off = make_spec("BatchNorm", "batch_norm_param { use_global_stats: false }", [x.shape])
    layer = Layer(off, rng, blob_values=blobs, train=False)
    close(layer(x), R.batch_norm(x, use_global_stats=False))
    # Caffe updates its blobs whenever it uses batch statistics, even in a TEST net
    close(layer.module.scale_factor.numpy(), R.batch_norm_update(x, *blobs)[2])


def test_batchnorm_2d_bottom(rng):
    spec = make_spec("BatchNorm", "", [(6, 5)])
    blobs = _bn_blobs(rng, 5, 0.5)
    layer = Layer(spec, rng, blob_values=blobs)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    close(layer(x), R.batch_norm(x, *blobs, use_global_stats=True))


# ---------------------------------------------------------------------------------------------
# Scale and Bias
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,shape,blob_shape", [
    ("", (2, 3, 4, 5), (3,)),
    ("axis: 1 num_axes: 2", (2, 3, 4, 5), (3, 4)),
    ("axis: 2 num_axes: -1", (2, 3, 4, 5), (4, 5)),
    ("axis: -1", (2, 3, 4, 5), (5,)),
    ("num_axes: 0", (2, 3, 4, 5), ()),
    ("axis: 0 num_axes: 2", (2, 3), (2, 3)),
])
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_one_bottom(fields, shape, blob_shape, bias_term, rng):
    spec = make_spec("Scale", f"scale_param {{ {fields} bias_term: {str(bias_term).lower()} }}",
                     [shape])
    layer = Layer(spec, rng)
    slots = layer.built.blobs
    assert slots[0].shape == blob_shape and slots[0].learnable
    # scale_layer.cpp: no filler given -> constant 1 (identity); bias_filler absent -> 0
    assert slots[0].filler.type == "constant" and slots[0].filler.value == 1.0
    assert len(slots) == (2 if bias_term else 1)
    if bias_term:
        assert slots[1].shape == blob_shape and slots[1].filler is None
    x = rng.standard_normal(shape).astype(np.float32)
    b = layer.blobs[1] if bias_term else None
    close(layer(x), R.scale(x, layer.blobs[0], b, axis=int(spec.param.scale_param.axis),
                            num_axes=int(spec.param.scale_param.num_axes)))


@pytest.mark.parametrize("axis,shape,other,bias_shape", [
    (1, (2, 3, 4, 5), (3, 4), (3, 4)),
    (0, (2, 3, 4, 5), (2, 3), (2, 3)),
    (-2, (2, 3, 4, 5), (4, 5), (4, 5)),
])
def test_scale_two_bottoms(axis, shape, other, bias_shape, rng):
    text = f"""scale_param {{ axis: {axis} bias_term: true
               bias_filler {{ type: "constant" value: 2 }} }}"""
    spec = make_spec("Scale", text, [shape, other])
    layer = Layer(spec, rng)
    assert [(s.attr, s.shape) for s in layer.built.blobs] == [("bias", bias_shape)]
    assert layer.built.blobs[0].filler.value == 2.0
    x = rng.standard_normal(shape).astype(np.float32)
    s = rng.standard_normal(other).astype(np.float32)
    close(layer(x, s), R.scale(x, s, layer.blobs[0], axis=axis))


def test_scale_filler_from_prototxt(rng):
    spec = make_spec("Scale", 'scale_param { filler { type: "constant" value: 0.25 } }',
                     [(1, 2, 3, 3)])
    layer = Layer(spec, rng)
    assert layer.built.blobs[0].filler.value == 0.25


@pytest.mark.parametrize("fields,shape,blob_shape", [
    ("", (2, 3, 4, 5), (3,)),
    ("axis: 1 num_axes: 2", (2, 3, 4, 5), (3, 4)),
    ("axis: 2 num_axes: -1", (2, 3, 4, 5), (4, 5)),
    ("num_axes: 0", (2, 3, 4), ()),
])
def test_bias_one_bottom(fields, shape, blob_shape, rng):
    spec = make_spec("Bias", f"bias_param {{ {fields} }}", [shape])
    layer = Layer(spec, rng)
    assert [(s.attr, s.shape, s.filler) for s in layer.built.blobs] == [("bias", blob_shape,
                                                                         None)]
    x = rng.standard_normal(shape).astype(np.float32)
    close(layer(x), R.bias(x, layer.blobs[0], axis=int(spec.param.bias_param.axis)))


def test_bias_two_bottoms(rng):
    spec = make_spec("Bias", "bias_param { axis: 1 }", [(2, 3, 4, 5), (3, 4)])
    layer = Layer(spec, rng)
    assert layer.built.blobs == []
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    close(layer(x, b), R.bias(x, b, axis=1))


# ---------------------------------------------------------------------------------------------
# LRN, MVN, Normalize
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("region,size", [("ACROSS_CHANNELS", 5), ("ACROSS_CHANNELS", 3),
                                         ("WITHIN_CHANNEL", 3), ("WITHIN_CHANNEL", 5)])
def test_lrn_both_regions(region, size, rng):
    # alpha large enough that the normaliser matters; k = 2 must be ignored by WITHIN_CHANNEL
    text = (f"lrn_param {{ local_size: {size} alpha: 0.5 beta: 0.75 k: 2 "
            f"norm_region: {region} }}")
    spec = make_spec("LRN", text, [(2, 7, 6, 5)])
    layer = Layer(spec, rng)
    x = (rng.standard_normal((2, 7, 6, 5)) * 2).astype(np.float32)
    close(layer(x), R.lrn(x, local_size=size, alpha=0.5, beta=0.75, k=2.0, norm_region=region))


@pytest.mark.parametrize("fields,kwargs", [
    ("", {}),
    ("across_channels: true", {"across_channels": True}),
    ("normalize_variance: false", {"normalize_variance": False}),
    ("across_channels: true normalize_variance: false",
     {"across_channels": True, "normalize_variance": False}),
    ("eps: 0.5", {"eps": 0.5}),  # large eps: shows it is added to the std, not the variance
])
def test_mvn_variants(fields, kwargs, rng):
    spec = make_spec("MVN", f"mvn_param {{ {fields} }}", [(2, 3, 4, 5)])
    layer = Layer(spec, rng)
    x = (rng.standard_normal((2, 3, 4, 5)) * 0.7 + 2).astype(np.float32)
    close(layer(x), R.mvn(x, **kwargs))


def test_normalize_defaults(rng):
    # SSD's NormalizeParameter defaults: across_spatial true, channel_shared true, eps 1e-10,
    # scale filler constant 1; channel_shared gives a 0-axis blob (Blob(vector<int>(0))).
    spec = make_spec("Normalize", "", [(2, 5, 3, 4)])
    layer = Layer(spec, rng)
    (slot,) = layer.built.blobs
    assert slot.shape == () and slot.filler.type == "constant" and slot.filler.value == 1.0
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    close(layer(x), R.normalize(x, layer.blobs[0].reshape(1)))


@pytest.mark.parametrize("across_spatial,channel_shared", [(False, False), (True, False),
                                                           (False, True)])
def test_normalize_variants(across_spatial, channel_shared, rng):
    if "norm_param" not in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
        pytest.skip("the schema has no norm_param (SSD's NormalizeParameter) yet")
    text = (f"norm_param {{ across_spatial: {str(across_spatial).lower()} "
            f"channel_shared: {str(channel_shared).lower()} eps: 0.01 "
            'scale_filler { type: "constant" value: 20 } }')
    spec = make_spec("Normalize", text, [(2, 5, 3, 4)])
    layer = Layer(spec, rng)
    (slot,) = layer.built.blobs
    assert slot.shape == (() if channel_shared else (5,)) and slot.filler.value == 20
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    close(layer(x), R.normalize(x, layer.blobs[0].reshape(-1), across_spatial=across_spatial,
                                channel_shared=channel_shared, eps=0.01))


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------

GRAD_CASES = [
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 group: 2 pad: 1 }",
     [(2, 4, 5, 5)]),
    ("Deconvolution", "convolution_param { num_output: 4 kernel_size: 2 stride: 2 group: 2 }",
     [(2, 4, 3, 3)]),
    ("InnerProduct", "inner_product_param { num_output: 3 axis: 2 transpose: true }",
     [(2, 3, 4, 2)]),
    ("Embed", "embed_param { num_output: 3 input_dim: 4 }", [(5,)]),
    ("Scale", "scale_param { bias_term: true num_axes: 2 }", [(2, 3, 4, 2)]),
    ("Scale", "scale_param { axis: 0 }", [(2, 3, 4, 2), (2, 3)]),
    ("Bias", "", [(2, 3, 4, 2)]),
    ("Bias", "", [(2, 3, 4, 2), (3,)]),
    ("Normalize", "", [(2, 3, 4, 2)]),
    ("BatchNorm", "", [(2, 3, 4, 2)]),
    ("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 }", [(2, 3, 4, 4)]),
    ("MVN", "", [(2, 3, 4, 2)]),
    ("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }", [(2, 3, 6, 6)]),
    ("SPP", "spp_param { pyramid_height: 2 }", [(2, 3, 6, 6)]),
]


@pytest.mark.parametrize("type_,text,shapes", GRAD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradients_flow(type_, text, shapes, rng):
    spec = make_spec(type_, text, shapes)
    layer = Layer(spec, rng, train=True)
    if type_ == "Embed":
        xs = [rng.integers(0, 4, size=shapes[0]).astype(np.float32)]
    else:
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out, ts = layer(*xs, grad=True)
    if type_ == "Embed":
        ts = []  # indices: Caffe refuses to back-propagate to Embed's input
    weights = torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32))
    (out * weights).sum().backward()
    params = list(layer.module.parameters())
    assert len(params) == sum(s.learnable for s in layer.built.blobs)
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for t in ts:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


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


def test_batchnorm_backward_matches_caffe(rng):
    # batch_norm_layer.cpp Backward_cpu (batch statistics):
    # dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), means over all axes but 1.
    spec = make_spec("BatchNorm", "", [(3, 2, 4, 3)])
    layer = Layer(spec, rng, train=True)
    x = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
    out, (t,) = layer(x, grad=True)
    dy = rng.standard_normal((3, 2, 4, 3))
    (out * torch.from_numpy(dy.astype(np.float32))).sum().backward()
    axes = (0, 2, 3)
    xd = x.astype(np.float64)
    std = np.sqrt(xd.var(axis=axes, keepdims=True) + 1e-5)
    y = (xd - xd.mean(axis=axes, keepdims=True)) / std
    dx = (dy - dy.mean(axis=axes, keepdims=True)
          - (dy * y).mean(axis=axes, keepdims=True) * y) / std
    close(t.grad.numpy(), dx, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# meta device
# ---------------------------------------------------------------------------------------------

META_CASES = [
    ("Convolution", "convolution_param { num_output: 5 kernel_size: 3 stride: 2 dilation: 2 }",
     [(1, 3, 17, 13)]),
    ("Deconvolution", "convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 }",
     [(1, 3, 7, 5)]),
    ("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }", [(1, 2, 9, 8)]),
    ("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }", [(1, 2, 9, 8)]),
    ("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }", [(1, 2, 5, 5)]),
    ("SPP", "spp_param { pyramid_height: 3 pool: AVE }", [(1, 2, 11, 7)]),
    ("InnerProduct", "inner_product_param { num_output: 4 }", [(2, 3, 2, 2)]),
    ("BatchNorm", "", [(2, 3, 4, 4)]),
    ("LRN", "", [(1, 6, 3, 3)]),
    ("MVN", "mvn_param { across_channels: true }", [(2, 3, 4, 4)]),
    ("Normalize", "", [(2, 3, 4, 4)]),
]


@pytest.mark.parametrize("type_,text,shapes", META_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(META_CASES)])
@pytest.mark.parametrize("train", [False, True])
def test_meta_shapes_equal_cpu_shapes(type_, text, shapes, train, rng):
    spec = make_spec(type_, text, shapes)
    layer = Layer(spec, rng, train=train)  # asserts meta == CPU on every call
    with torch.device("meta"):
        m = converter_for(spec)(spec).module.train(train)
        out = m(*[torch.empty(s) for s in shapes])
    assert out.device.type == "meta"
    y = layer(*[rng.standard_normal(s).astype(np.float32) for s in shapes])
    assert y.shape == tuple(out.shape)
    assert [tuple(p.shape) for p in m.parameters()] == [
        tuple(p.shape) for p in layer.module.parameters()]


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

BAD = [
    ("Convolution", "convolution_param { kernel_size: 3 }", [(1, 3, 5, 5)], "num_output"),
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 group: 2 }",
     [(1, 3, 5, 5)], "group"),
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 axis: 2 }",
     [(1, 3, 5, 5)], "axis"),
    ("Convolution", "convolution_param { num_output: 4 }", [(1, 3, 5, 5)], "kernel_size"),
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 7 }", [(1, 3, 5, 5)],
     "larger"),
    ("Deconvolution", "convolution_param { num_output: 3 kernel_size: 2 group: 2 }",
     [(1, 4, 5, 5)], "group"),
    ("InnerProduct", "inner_product_param { }", [(2, 3)], "num_output"),
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
    ("LRN", "lrn_param { local_size: 4 }", [(1, 3, 5, 5)], "odd"),
    ("Scale", "scale_param { axis: 1 }", [(2, 3, 4, 5), (4, 5)], "match"),
    ("Scale", "scale_param { axis: 2 num_axes: 3 }", [(2, 3, 4, 5)], "num_axes"),
    ("Bias", "bias_param { axis: 4 }", [(2, 3, 4, 5)], "axis"),
    ("SPP", "spp_param { }", [(1, 3, 5, 5)], "pyramid_height"),
    ("Embed", "embed_param { num_output: 3 }", [(4,)], "input_dim"),
]


@pytest.mark.parametrize("type_,text,shapes,word", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_parameters_raise_layer_error(type_, text, shapes, word):
    spec = make_spec(type_, text, shapes, name="bad_layer")
    with pytest.raises(LayerError) as info:
        converter_for(spec)(spec)
    message = str(info.value)
    assert info.value.layer == "bad_layer" and "bad_layer" in message
    assert type_ in message and "test.prototxt:1" in message
    assert word in message


def test_batch_norm_lr_mult_refused_in_train_ignored_in_test():
    """BVLC Caffe refuses learnable statistics; deploy files of nets trained with older Caffe or
    SSD-based forks carry them (ShuffleNet v2's), and OpenCV runs those: TEST warns, TRAIN
    refuses."""
    spec = make_spec("BatchNorm", "param { lr_mult: 1 }", [(2, 3, 4, 5)], name="bn")
    spec.phase = "train"
    with pytest.raises(LayerError, match="lr_mult 1.0.*Scale layer"):
        converter_for(spec)(spec)
    spec.phase = "test"
    with pytest.warns(UserWarning, match="BatchNorm layers with lr_mult != 0.*ignored"):
        with torch.device("meta"):
            converter_for(spec)(spec)


def test_runtime_shape_error_names_the_layer(rng):
    spec = make_spec("Pooling", "pooling_param { kernel_size: 3 }", [(1, 1, 5, 5)], name="p1")
    layer = Layer(spec, rng)
    with pytest.raises(ShapeError, match="p1"):
        layer.module(torch.zeros(1, 1, 2, 2))


# ---------------------------------------------------------------------------------------------
# a second, independent reference: OpenCV DNN's Caffe importer
# ---------------------------------------------------------------------------------------------

# Each layer reads the input directly. Two known OpenCV departures from Caffe's C++ are avoided:
# OpenCV's LRN ignores `k` (it uses 1; lrn_layer.cpp starts the scale at k) and OpenCV's MVN
# divides by sqrt(var + eps) (mvn_layer.cpp adds eps after the square root), so the LRN below
# has k 1 and the MVN the default eps 1e-9, where the two agree to float precision.
OPENCV_LAYERS = [
    ("conv", "Convolution",
     "convolution_param { num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 1 dilation: 2 }"),
    ("conv_asym", "Convolution", "convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 "
     "stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }"),
    ("deconv", "Deconvolution",
     "convolution_param { num_output: 6 group: 2 kernel_size: 4 stride: 2 pad: 1 }"),
    ("pool_ave_pad", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"),
    ("pool_max_ceil", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
    ("pool_ave_ceil", "Pooling", "pooling_param { pool: AVE kernel_size: 2 stride: 2 }"),
    ("pool_ave_pad2", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }"),
    ("pool_max_pad2", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 2 }"),
    ("pool_global", "Pooling", "pooling_param { pool: AVE global_pooling: true }"),
    ("lrn_across", "LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }"),
    ("lrn_within", "LRN",
     "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 norm_region: WITHIN_CHANNEL }"),
    ("bn", "BatchNorm", "batch_norm_param { use_global_stats: true eps: 0.001 }"),
    ("scale", "Scale", "scale_param { bias_term: true }"),
    ("mvn", "MVN", ""),
    ("mvn_across", "MVN", "mvn_param { across_channels: true }"),
    ("ip", "InnerProduct", "inner_product_param { num_output: 5 }"),
]


def test_layers_agree_with_opencv(rng):
    from opencv_ref import OpenCVUnavailable, run_opencv_text
    shape = (2, 4, 9, 8)
    proto = 'name: "t"\ninput: "data"\ninput_shape { dim: 2 dim: 4 dim: 9 dim: 8 }\n'
    layers, weights = {}, []
    for name, type_, text in OPENCV_LAYERS:
        proto += f'layer {{ name: "{name}" type: "{type_}" bottom: "data" top: "{name}" {text} }}\n'
        values = None
        if type_ == "BatchNorm":
            values = _bn_blobs(rng, 4, 2.5)
        layer = Layer(make_spec(type_, text, [shape], name=name), rng, blob_values=values)
        layers[name] = layer
        weights.append((name, type_, layer.blobs))
    x = rng.standard_normal(shape).astype(np.float32)
    try:
        cv = run_opencv_text(proto, R.encode_caffemodel(weights), {"data": x}, list(layers))
    except OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    for name, layer in layers.items():
        close(layer(x), cv[name], rtol=2e-5)
