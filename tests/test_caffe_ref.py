"""Pin the independent references (tests/reference/numpy_caffe.py and wire.py,
tests/opencv_ref.py) to facts.

Two kinds of evidence:

* hand-computed values - numbers worked out on paper from the C++ (comments show the work);
* agreement with OpenCV DNN's Caffe importer (OpenCV 4.x; OpenCV 5 has none) on tiny nets, for
  the layers and parameters where OpenCV follows Caffe.

Where OpenCV does NOT follow Caffe's C++ the reference is tested against hand-computed values
only, and ``test_opencv_divergence`` pins what OpenCV does instead, so that the list below stays
true. Places where OpenCV 4.14 differs from Caffe (evidence: the divergence tests; sources named):

 1. Pooling, a window that holds no input pixel (stride > kernel, pad 0, ceil rounding): Caffe's
    MAX leaves -FLT_MAX (pooling_layer.cpp initialises the top to -FLT_MAX), OpenCV writes 0.
 2. Pooling ``round_mode``: OpenCV's own caffe.proto has no such field (it spells FLOOR as
    ``ceil_mode: false``); a prototxt with ``round_mode`` fails to load ("kernel[i] > 0").
 3. LRN ACROSS_CHANNELS ignores Caffe's ``k`` (OpenCV reads a parameter named ``bias``): it always
    uses k = 1. (WITHIN_CHANNEL agrees: Caffe's C++ itself has no k there, shift is 1.)
 4. MVN adds eps to the variance, ``(x-m)/sqrt(var+eps)``; Caffe adds it to the standard
    deviation, ``(x-m)/(sqrt(var)+eps)`` (mvn_layer.cpp). Indistinguishable at the default 1e-9.
 5. BatchNorm with use_global_stats false: OpenCV rewrites it as MVN + BatchNorm(mean 0, var 1)
    (caffe_importer.cpp), so it normalises per sample (batch > 1 is refused outright) and divides
    once more by sqrt(1 + eps); Caffe uses batch statistics and one sqrt(var + eps).
 6. Swish ignores ``beta`` (always x*sigmoid(x)).
 7. Log ignores ``base``, ``scale`` and ``shift`` (always ln x).
 8. InnerProduct ignores ``transpose: true``: the (K, N) blob's memory is read as (N, K).
 9. Scale with two bottoms and ``bias_term``: OpenCV drops the multiplication (y = x + b).
10. PriorBox: OpenCV's proto defaults ``clip`` to TRUE (SSD's caffe.proto: false); OpenCV ignores
    ``img_size``/``img_h``/``img_w``; OpenCV keeps fractional min/max sizes, the C++ truncates them
    to int; OpenCV requires an explicit ``variance`` (Caffe defaults to 0.1).
11. Interp: OpenCV ignores ``pad_beg``/``pad_end``, rejects ``shrink_factor`` alone and computes
    zoom+shrink differently; zoom-only and height/width agree (align-corners bilinear).
12. Permute with a partial ``order`` (Caffe appends the missing axes) is rejected by OpenCV.
13. Not available at all in OpenCV's Caffe importer: Bias, Clip, Threshold, Reduction, ArgMax,
    Tile (expects a different parameter), Upsample, SoftmaxWithLoss, SigmoidCrossEntropyLoss,
    EuclideanLoss, Accuracy; 0-axis blobs (Caffe's shared Normalize scale) fail to load.
"""
from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest

from opencv_ref import (OPENCV_PATH_ENV, OpenCVFailed, OpenCVUnavailable, opencv_version,
                        run_opencv_text)
from reference import numpy_caffe as cr
from reference import wire

F32_MAX = float(np.finfo(np.float32).max)


def _net(inputs: dict[str, tuple[int, ...]], layers: str) -> str:
    head = 'name: "t"\n'
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        head += f'input: "{name}"\ninput_shape {{ {dims} }}\n'
    return head + textwrap.dedent(layers)


def _close(actual, expected, rtol=1e-5, atol=1e-5):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _opencv_or_skip(*args, **kwargs):
    try:
        return run_opencv_text(*args, **kwargs)
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer unavailable: {exc}")


# ==============================================================================================
# 1. hand-computed facts
# ==============================================================================================

# (H, kernel, stride, pad, round_mode, pooled size) worked by hand from pooling_layer.cpp:
#   out = ceil((H + 2p - k) / s) + 1   (floor for FLOOR), then -1 if p > 0 and (out-1)*s >= H+p
POOL_SIZE_TABLE = [
    (5, 3, 2, 1, "CEIL", 3),     # ceil(4/2)+1 = 3; 2*2=4 < 6
    (6, 3, 2, 1, "CEIL", 4),     # ceil(5/2)+1 = 4; 3*2=6 < 7
    (6, 3, 2, 1, "FLOOR", 3),    # floor(5/2)+1 = 3
    (7, 3, 2, 0, "CEIL", 3),     # ceil(4/2)+1
    (5, 2, 2, 1, "CEIL", 3),     # ceil(5/2)+1 = 4; 3*2=6 >= 5+1 -> 3 (last window in padding)
    (3, 2, 2, 1, "CEIL", 2),     # ceil(3/2)+1 = 3; 2*2=4 >= 4 -> 2
    (2, 3, 2, 2, "CEIL", 2),     # pad 2 < k 3: ceil(3/2)+1 = 3; 4 >= 4 -> 2
    (4, 3, 2, 1, "CEIL", 3),     # ceil(3/2)+1 = 3; 4 < 5
    (5, 1, 3, 0, "CEIL", 3),     # stride > kernel: ceil(4/3)+1 = 3 (third window starts at 6 > 4)
    (112, 3, 2, 0, "CEIL", 56),  # GoogLeNet pool1: ceil(109/2)+1
    (14, 3, 2, 0, "CEIL", 7),    # ceil(11/2)+1
    (14, 3, 2, 0, "FLOOR", 6),   # floor(11/2)+1
    (7, 4, 3, 3, "CEIL", 4),     # ceil(9/3)+1 = 4; 9 < 10
    (5, 2, 2, 1, "FLOOR", 3),    # floor(5/2)+1 = 3; 4 < 6
]


@pytest.mark.parametrize("h,k,s,p,mode,expected", POOL_SIZE_TABLE)
def test_pool_output_size_table(h, k, s, p, mode, expected):
    assert cr.pool_output_size(h, k, s, p, mode) == expected
    x = np.zeros((1, 1, h, h), np.float32)
    assert cr.pooling(x, kernel_size=k, stride=s, pad=p, round_mode=mode).shape[-1] == expected


def test_conv_deconv_output_sizes():
    assert cr.conv_output_size(7, 3, 2, 1) == 4          # (7+2-3)//2+1
    assert cr.conv_output_size(7, 3, 1, 2, dilation=2) == 7  # kext 5: (7+4-5)//1+1
    assert cr.deconv_output_size(4, 4, 2, 1) == 8        # 2*3 + 4 - 2
    assert cr.deconv_output_size(3, 3, 1, 0, dilation=2) == 7  # 2 + 5 - 0


X33 = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]


def test_pooling_hand_max_ceil():
    # k2 s2: windows rows [0,2),[2,3) x cols [0,2),[2,3)
    _close(cr.pooling(X33, pool="MAX", kernel_size=2, stride=2), [[[[5, 6], [8, 9]]]])


def test_pooling_hand_ave_ceil_divisor_clipped_to_input():
    # pad 0: hend = min(hstart+2, 3) -> the last windows have areas 2x1, 1x2, 1x1
    _close(cr.pooling(X33, pool="AVE", kernel_size=2, stride=2),
           [[[[12 / 4, 9 / 2], [15 / 2, 9 / 1]]]])


def test_pooling_hand_ave_pad_counts_padding():
    # k3 s2 p1 on 3x3: both windows are 3 wide (padding counted): divisor 9 everywhere
    _close(cr.pooling(X33, pool="AVE", kernel_size=3, stride=2, pad=1),
           [[[[12 / 9, 16 / 9], [24 / 9, 28 / 9]]]])


def test_pooling_hand_ave_divisor_clipped_to_h_plus_pad():
    # H=4, k3 s2 p1 -> 3 outputs. Rows: start -1,1,3; end min(start+3, 5) = 2,4,5;
    # divisor extents 3,3,2; input rows counted 2,3,1. Ones input -> (count/extent) outer product.
    ratio = np.array([2 / 3, 1.0, 1 / 2])
    _close(cr.pooling(np.ones((1, 1, 4, 4), np.float32), pool="AVE", kernel_size=3, stride=2,
                      pad=1), np.outer(ratio, ratio)[None, None])


def test_pooling_hand_max_padding_never_wins():
    # all-negative input, k3 s2 p1: windows rows {0,1},{1,2} x cols {0,1},{1,2};
    # zero padding would win everywhere if it counted
    x = -X33
    _close(cr.pooling(x, pool="MAX", kernel_size=3, stride=2, pad=1), [[[[-1, -2], [-4, -5]]]])


def test_pooling_hand_empty_window_stride_gt_kernel():
    # H=W=5, k1 s3: windows start at 0,3,6; the one at 6 holds no pixel.
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5) - 30
    mx = cr.pooling(x, pool="MAX", kernel_size=1, stride=3)
    _close(mx[0, 0, :2, :2], [[-30, -27], [-15, -12]])
    assert np.all(mx[0, 0, 2, :] == -F32_MAX) and np.all(mx[0, 0, :, 2] == -F32_MAX)
    av = cr.pooling(x, pool="AVE", kernel_size=1, stride=3)
    _close(av[0, 0], [[-30, -27, 0], [-15, -12, 0], [0, 0, 0]])


def test_pooling_global_and_rectangular():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    _close(cr.pooling(x, pool="AVE", global_pooling=True, kernel_size=99), [[[[5.5]]]])
    _close(cr.pooling(x, pool="MAX", global_pooling=True), [[[[11.0]]]])
    # kernel 1x2, stride 1x2: pairs along W
    _close(cr.pooling(x, pool="MAX", kernel_h=1, kernel_w=2, stride_h=1, stride_w=2),
           [[[[1, 3], [5, 7], [9, 11]]]])


def test_lrn_across_hand():
    # x = [1,2,3] over channels, n=3, alpha=3, beta=1:
    # scale_c = k + alpha/n * (sum of squares of c-1..c+1) = k + {5, 14, 13}
    x = np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)
    _close(cr.lrn(x, local_size=3, alpha=3, beta=1, k=1).ravel(), [1 / 6, 2 / 15, 3 / 14])
    _close(cr.lrn(x, local_size=3, alpha=3, beta=1, k=2).ravel(), [1 / 7, 2 / 16, 3 / 15])
    # beta 0.5, k 1: 1/sqrt(6) etc.
    _close(cr.lrn(x, local_size=3, alpha=3, beta=0.5).ravel(),
           [1 / math.sqrt(6), 2 / math.sqrt(15), 3 / math.sqrt(14)])


def test_lrn_within_hand_ignores_k():
    # 2x2 input, n=3 (pad 1): every 3x3 window covers all four pixels: sum of squares 30;
    # y = x * (1 + alpha/9 * 30)^-beta = x / 31 for alpha 9, beta 1, whatever k is.
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 1, 2, 2)
    for k in (1.0, 5.0):
        _close(cr.lrn(x, local_size=3, alpha=9, beta=1, k=k, norm_region="WITHIN_CHANNEL"),
               x / 31)


def test_batch_norm_hand():
    # one channel, values 1,3,5,7: mean 4, biased variance (9+1+1+9)/4 = 5
    x = np.array([1, 3, 5, 7], np.float32).reshape(2, 1, 1, 2)
    want = (x - 4) / math.sqrt(5 + 1e-5)
    _close(cr.batch_norm(x, use_global_stats=False), want)
    # stored sums with scale factor 2: mean 8/2, var 10/2
    _close(cr.batch_norm(x, [8.0], [10.0], [2.0]), want)
    # scale factor 0 -> mean = var = 0
    _close(cr.batch_norm(x, [8.0], [10.0], [0.0], eps=1e-2), x / 0.1)


def test_batch_norm_update_hand():
    # f=0.5: s' = 0.5*2+1 = 2; mean' = 0.5*8 + 4 = 8; m = 4 -> var' = 0.5*10 + (4/3)*5
    x = np.array([1, 3, 5, 7], np.float32).reshape(2, 1, 1, 2)
    m, v, s = cr.batch_norm_update(x, [8.0], [10.0], [2.0], moving_average_fraction=0.5)
    _close(m, [8.0])
    _close(v, [5 + 20 / 3])
    _close(s, [2.0])


def test_mvn_eps_added_to_std_hand():
    # values 1,3: mean 2, std 1 -> (x-2)/(1+eps); eps=0.5 -> -2/3, 2/3
    x = np.array([1, 3], np.float32).reshape(1, 1, 1, 2)
    _close(cr.mvn(x, eps=0.5).ravel(), [-2 / 3, 2 / 3])
    _close(cr.mvn(x, normalize_variance=False).ravel(), [-1, 1])
    # across channels: two channels (1,3) and (5,7): mean 4, std sqrt(5)
    x2 = np.array([1, 3, 5, 7], np.float32).reshape(1, 2, 1, 2)
    _close(cr.mvn(x2, across_channels=True, eps=0).ravel(), (np.array([1, 3, 5, 7]) - 4) / 5 ** 0.5)


def test_normalize_hand():
    # across_spatial: one norm sqrt(1+4+4+16 + eps) = 5 (eps 0); not across: per pixel
    x = np.array([1, 2, 2, 4], np.float32).reshape(1, 2, 1, 2)  # ch0 (1,2), ch1 (2,4)
    _close(cr.normalize(x, [2.0], eps=0).ravel(), np.array([1, 2, 2, 4]) * 2 / 5)
    px = np.sqrt(np.array([1 + 4, 4 + 16]))
    _close(cr.normalize(x, [1.0, 10.0], across_spatial=False, channel_shared=False, eps=0)[0],
           [[[1 / px[0], 2 / px[1]]], [[20 / px[0], 40 / px[1]]]])


def test_scale_bias_axes_hand():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    _close(cr.scale(x, [10, 100]), [[[0, 10, 20], [300, 400, 500]]])
    _close(cr.scale(x, [1, 2, 3], axis=2), [[[0, 2, 6], [3, 8, 15]]])
    _close(cr.scale(x, [[1, 2, 3], [4, 5, 6]], [1, 1, 1, 1, 1, 1], axis=1, num_axes=2),
           [[[1, 3, 7], [13, 21, 31]]])
    _close(cr.scale(x, np.float32(3)), 3 * x)  # scalar second bottom
    _close(cr.bias(x, [10, 100]), [[[10, 11, 12], [103, 104, 105]]])


def test_conv_hand():
    x = np.ones((1, 1, 3, 3), np.float32)
    w = np.ones((1, 1, 2, 2), np.float32)
    _close(cr.convolution(x, w), np.full((1, 1, 2, 2), 4.0))
    _close(cr.convolution(x, w, [0.5], pad=1, stride=2), [[[[1.5, 2.5], [2.5, 4.5]]]])
    # dilation 2 with a 2x2 kernel samples the four corners of a 3x3 patch
    x2 = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    _close(cr.convolution(x2, w, dilation=2), [[[[0 + 2 + 6 + 8]]]])
    # group 2: channel i of the output only sees input channel i
    xg = np.stack([np.ones((2, 2)), 2 * np.ones((2, 2))]).reshape(1, 2, 2, 2).astype(np.float32)
    wg = np.ones((2, 1, 1, 1), np.float32) * np.array([3, 5], np.float32).reshape(2, 1, 1, 1)
    _close(cr.convolution(xg, wg, group=2)[0, :, 0, 0], [3, 10])


def test_deconv_hand():
    x = np.array([1, 2], np.float32).reshape(1, 1, 1, 2)
    w = np.ones((1, 1, 2, 2), np.float32)
    # stride 2: each input pixel paints its own 2x2 block
    _close(cr.deconvolution(x, w, stride=2), [[[[1, 1, 2, 2], [1, 1, 2, 2]]]])
    # stride 1: overlaps add up
    _close(cr.deconvolution(x, w), [[[[1, 3, 2], [1, 3, 2]]]])
    # pad 1 crops one pixel from each border: 2x2 input, stride 2 -> 4x4 blocks -> centre 2x2
    x2 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 1, 2, 2)
    _close(cr.deconvolution(x2, w, stride=2, pad=1), [[[[1, 2], [3, 4]]]])
    # two input channels, group 1: contributions add; weights (C_in, C_out, kh, kw)
    x3 = np.ones((1, 2, 1, 1), np.float32)
    w3 = np.array([1, 2, 3, 4, 10, 20, 30, 40], np.float32).reshape(2, 1, 2, 2)
    _close(cr.deconvolution(x3, w3), [[[[11, 22], [33, 44]]]])


def test_deconv_is_adjoint_of_conv():
    # Caffe's Deconvolution forward is Convolution's backward-data with the same blob:
    # <conv(x, W), y> == <x, deconv(y, W)>. Two independent code paths (im2col vs scatter).
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 2, 3, 2))  # C_out 6, C_in/group 2, group 2
    kw = dict(stride=(2, 1), pad=(1, 2), dilation=(2, 1), group=2)
    y_shape = cr.convolution(x, w, **kw).shape
    y = rng.standard_normal(y_shape)
    lhs = float((cr.convolution(x, w, **kw).astype(np.float64) * y).sum())
    back = cr.deconvolution(y, w, **kw)
    assert back.shape == x.shape
    rhs = float((x * back.astype(np.float64)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_inner_product_axis_and_transpose_hand():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    w = np.array([[1, 0, 0], [0, 1, 1]], np.float32)  # (N_out=2, K=3)
    _close(cr.inner_product(x, w, [10, 20], axis=2), [[[10, 23], [13, 29]]])
    _close(cr.inner_product(x, w.T, axis=2, transpose=True), [[[0, 3], [3, 9]]])
    # axis 1 flattens (2,3): K = 6; legacy 4-D blob (1,1,N,K)
    w6 = np.arange(6, dtype=np.float32).reshape(1, 1, 1, 6)
    _close(cr.inner_product(x, w6), [[0 + 1 + 4 + 9 + 16 + 25]])


def test_reshape_flatten_hand():
    s = (2, 3, 4, 5)
    assert cr.reshape_shape(s, [0, -1]) == (2, 60)
    assert cr.reshape_shape(s, [0, 0, -1]) == (2, 3, 20)
    assert cr.reshape_shape(s, [-1], axis=1, num_axes=2) == (2, 12, 5)
    assert cr.reshape_shape(s, [1], axis=-1, num_axes=0) == (2, 3, 4, 5, 1)
    assert cr.reshape_shape(s, [1], axis=0, num_axes=0) == (1, 2, 3, 4, 5)
    assert cr.reshape_shape(s, [0, 2, -1], axis=1, num_axes=2) == (2, 3, 2, 2, 5)
    with pytest.raises(ValueError):
        cr.reshape_shape(s, [7, -1])
    x = np.zeros(s, np.float32)
    assert cr.flatten(x).shape == (2, 60)
    assert cr.flatten(x, axis=2).shape == (2, 3, 20)
    assert cr.flatten(x, axis=1, end_axis=2).shape == (2, 12, 5)


def test_plumbing_hand():
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    assert cr.shuffle_channel(x, group=2).ravel().tolist() == [0, 3, 1, 4, 2, 5]
    assert cr.shuffle_channel(x, group=3).ravel().tolist() == [0, 2, 4, 1, 3, 5]
    assert cr.tile(np.array([[1, 2]]), axis=1, tiles=2).tolist() == [[1, 2, 1, 2]]
    assert cr.tile(np.array([[1], [2]]), axis=0, tiles=2).ravel().tolist() == [1, 2, 1, 2]
    parts = cr.slice_blob(np.arange(5).reshape(1, 5), axis=1, slice_point=[1, 3])
    assert [p.ravel().tolist() for p in parts] == [[0], [1, 2], [3, 4]]
    halves = cr.slice_blob(np.arange(4).reshape(1, 4), num_tops=2)
    assert [p.ravel().tolist() for p in halves] == [[0, 1], [2, 3]]
    a = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    assert cr.permute(a, order=[0, 3]).shape == (1, 4, 2, 3)  # missing axes appended
    c = cr.crop(a, (1, 1, 2, 2), axis=2, offset=[1])
    assert c.ravel().tolist() == [5, 6, 9, 10, 17, 18, 21, 22]
    c2 = cr.crop(a, (1, 1, 1, 2), axis=1, offset=[1, 2, 1])
    assert c2.ravel().tolist() == [21, 22]
    _close(cr.eltwise([[1.0, 2.0], [3.0, 5.0]], coeff=[2, -1]), [-1, -1])
    _close(cr.eltwise([[1.0, 2.0], [3.0, 5.0], [2.0, 2.0]], operation="PROD"), [6, 20])
    _close(cr.eltwise([[1.0, 7.0], [3.0, 5.0], [2.0, 2.0]], operation=2), [3, 7])


def test_reduction_hand():
    x = np.array([[1, -2, 3], [4, 5, -6]], np.float32)
    _close(cr.reduction(x, axis=1), [2, 3])
    _close(cr.reduction(x, operation="ASUM", axis=1), [6, 15])
    _close(cr.reduction(x, operation="SUMSQ", axis=1, coeff=2), [28, 154])
    _close(cr.reduction(x, operation="MEAN", axis=1), [2 / 3, 1])
    out = cr.reduction(x)  # axis 0: everything, a scalar
    assert out.shape == () and float(out) == 5


def test_argmax_ties_and_layout_hand():
    x = np.array([[3, 5, 5, 1]], np.float32)
    # (value, index) sorted descending: ties go to the larger index first
    assert cr.argmax(x, top_k=2).ravel().tolist() == [2, 1]
    both = cr.argmax(x, top_k=2, out_max_val=True)
    assert both.shape == (1, 2, 2)  # (N, 2, top_k) for a 2-D input
    assert both[0].tolist() == [[2, 1], [5, 5]]
    y = np.array([[[1, 9], [7, 2], [7, 3]]], np.float32)  # (1, 3, 2), axis 1 = 3 classes
    assert cr.argmax(y, axis=1).tolist() == [[[2, 0]]]
    assert cr.argmax(y, axis=1, out_max_val=True).tolist() == [[[7, 9]]]
    assert cr.argmax(np.zeros((2, 3, 4, 5)), top_k=3).shape == (2, 1, 3, 1)


def test_accuracy_hand():
    scores = np.array([[1, 2, 2], [5, 1, 0], [0, 0, 9]], np.float32)
    labels = np.array([1, 0, 1])
    # row 0: true score 2 tied by class 2 -> wrong at top-1, right at top-2; row 1 right;
    # row 2: class 1 scores 0, tied with class 0 and beaten by class 2 -> wrong at top-2
    assert float(cr.accuracy(scores, labels)) == pytest.approx(1 / 3)
    assert float(cr.accuracy(scores, labels, top_k=2)) == pytest.approx(2 / 3)
    assert float(cr.accuracy(scores, labels, top_k=3)) == pytest.approx(1.0)
    assert float(cr.accuracy(scores, labels, ignore_label=1)) == pytest.approx(1.0)
    acc, per = cr.accuracy(scores, labels, per_class=True)
    _close(per, [1.0, 0.0, 0.0])
    assert float(acc) == pytest.approx(1 / 3)
    assert float(cr.accuracy(scores[:1], [2], ignore_label=2)) == 0.0  # nothing counted


def test_softmax_with_loss_normalization_hand():
    x = np.zeros((2, 3), np.float32)  # p = 1/3 everywhere
    lab = np.array([0, 255])
    ln3 = math.log(3)
    f = lambda **kw: float(cr.softmax_with_loss(x, lab, ignore_label=255, **kw))  # noqa: E731
    assert f() == pytest.approx(ln3)                      # VALID: 1 counted
    assert f(normalization="FULL") == pytest.approx(ln3 / 2)
    assert f(normalization="BATCH_SIZE") == pytest.approx(ln3 / 2)
    assert f(normalization="NONE") == pytest.approx(ln3)
    assert f(normalization=1) == pytest.approx(ln3)
    assert f(normalize=False) == pytest.approx(ln3 / 2)   # legacy bool -> BATCH_SIZE
    assert f(normalize=True) == pytest.approx(ln3)        # legacy bool -> VALID
    assert f(normalization="FULL", normalize=True) == pytest.approx(ln3 / 2)
    # spatial: (N=1, C=2, H=1, W=2), logits make p(class 1) = 1/(1+e^-2) at both pixels
    xs = np.array([0, 0, 2, 2], np.float32).reshape(1, 2, 1, 2)
    want = -2 * math.log(1 / (1 + math.exp(-2)))
    assert float(cr.softmax_with_loss(xs, [1, 1], normalization="BATCH_SIZE")) == \
        pytest.approx(want)
    assert float(cr.softmax_with_loss(xs, [1, 1])) == pytest.approx(want / 2)
    # all ignored: normaliser max(1, 0) -> loss 0, not NaN
    assert float(cr.softmax_with_loss(x, [255, 255], ignore_label=255)) == 0.0


def test_sigmoid_cross_entropy_hand():
    ln2 = math.log(2)
    x = np.zeros((2, 2), np.float32)  # every element costs ln 2
    t = np.array([[1, 0], [1, -1]], np.float32)
    assert float(cr.sigmoid_cross_entropy_loss(x, t)) == pytest.approx(4 * ln2 / 2)  # BATCH
    assert float(cr.sigmoid_cross_entropy_loss(x, t, ignore_label=-1)) == \
        pytest.approx(3 * ln2 / 2)
    assert float(cr.sigmoid_cross_entropy_loss(x, t, ignore_label=-1, normalization="VALID")) \
        == pytest.approx(ln2)
    assert float(cr.sigmoid_cross_entropy_loss(x, t, ignore_label=-1, normalize=True)) == \
        pytest.approx(ln2)
    assert float(cr.sigmoid_cross_entropy_loss(x, t, ignore_label=-1, normalization="FULL")) \
        == pytest.approx(3 * ln2 / 4)
    # stable at large logits: x=100,t=1 costs ~0; x=-100,t=1 costs 100
    big = np.array([[100.0, -100.0]], np.float32)
    assert float(cr.sigmoid_cross_entropy_loss(big, [[1, 1]])) == pytest.approx(100.0)


def test_euclidean_loss_hand():
    a = np.array([[1, 2], [3, 4]], np.float32)
    assert float(cr.euclidean_loss(a, np.zeros_like(a))) == pytest.approx(30 / 2 / 2)


def test_activations_hand():
    assert float(cr.bnll(np.float32(0))) == pytest.approx(math.log(2))
    assert float(cr.bnll(np.float32(50))) == pytest.approx(50.0)
    assert cr.threshold(np.array([0.25, 0.26, -1]), threshold=0.25).tolist() == [0, 1, 0]
    assert float(cr.exp(np.float32(2), base=2, shift=1)) == pytest.approx(8.0)
    assert float(cr.exp(np.float32(1), scale=2)) == pytest.approx(math.e ** 2)
    assert float(cr.log(np.float32(100), base=10)) == pytest.approx(2.0)
    assert float(cr.log(np.float32(3), scale=3, shift=-1)) == pytest.approx(math.log(8))
    assert float(cr.power(np.float32(3), power=2, scale=2, shift=1)) == pytest.approx(49.0)
    assert float(cr.elu(np.float32(-math.log(2)), alpha=2)) == pytest.approx(-1.0)
    # sigmoid(ln 3) = 3/4 -> swish with beta 2 at x = ln3/2 is x * 3/4
    xh = math.log(3) / 2
    assert float(cr.swish(np.float32(xh), beta=2)) == pytest.approx(xh * 0.75, rel=1e-6)
    _close(cr.clip(np.array([-5, 0.2, 9]), min=-1, max=0.5), [-1, 0.2, 0.5])
    _close(cr.relu(np.array([-2, 3]), negative_slope=0.5), [-1, 3])
    _close(cr.prelu(np.array([-2, -2, 3, 3], np.float32).reshape(1, 2, 2), [0.5, 0.25]),
           [[[-1, -1], [3, 3]]])
    _close(cr.prelu(np.array([-2, 4], np.float32).reshape(1, 2), [0.5, 0.25]), [[-1, 4]])
    _close(cr.sigmoid(np.array([0.0, math.log(3)])), [0.5, 0.75])
    _close(cr.softmax(np.array([[0.0, math.log(3)]])), [[0.25, 0.75]])


def test_prior_box_hand():
    # feature 1x1 on a 10x10 image: step 10, centre (5, 5)
    out = cr.prior_box((1, 1), (10, 10), min_size=4, max_size=9, aspect_ratio=[2], flip=True,
                       variance=[0.1, 0.1, 0.2, 0.2])
    r2 = math.sqrt(2)
    want = [[0.3, 0.3, 0.7, 0.7],                                   # 4 x 4
            [0.2, 0.2, 0.8, 0.8],                                   # sqrt(4*9) = 6
            [0.5 - 0.2 * r2, 0.5 - 0.1 * r2, 0.5 + 0.2 * r2, 0.5 + 0.1 * r2],  # ar 2
            [0.5 - 0.1 * r2, 0.5 - 0.2 * r2, 0.5 + 0.1 * r2, 0.5 + 0.2 * r2]]  # ar 1/2
    assert out.shape == (1, 2, 16)
    _close(out[0, 0].reshape(4, 4), want, atol=1e-6)
    _close(out[0, 1], [0.1, 0.1, 0.2, 0.2] * 4)
    # fractional sizes are truncated to int by the C++ (int min_size_ = min_sizes_[s])
    _close(cr.prior_box((1, 1), (10, 10), min_size=4.9)[0, 0], [0.3, 0.3, 0.7, 0.7])
    # clip; explicit img_size and step; offset
    c = cr.prior_box((1, 1), (10, 10), min_size=16, clip=True)
    _close(c[0, 0], [0, 0, 1, 1])
    e = cr.prior_box((2, 2), (7, 7), min_size=2, img_size=20, step=10, offset=0.25)
    # cell (0,0): centre 2.5 -> [1.5, 3.5]/20; cell (0,1): centre x 12.5
    _close(e[0, 0, :8], [1.5 / 20, 1.5 / 20, 3.5 / 20, 3.5 / 20,
                         11.5 / 20, 1.5 / 20, 13.5 / 20, 3.5 / 20], atol=1e-7)
    _close(e[0, 1], np.full(16, 0.1))


def test_interp_and_upsample_hand():
    x = np.array([[0, 1], [2, 3]], np.float32).reshape(1, 1, 2, 2)
    # align corners: output corners are input corners
    _close(cr.interp(x, zoom_factor=2)[0, 0], [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])
    assert cr.interp_output_size(5, 7, zoom_factor=3) == (13, 19)
    assert cr.interp_output_size(5, 7, shrink_factor=2) == (3, 4)
    assert cr.interp_output_size(5, 7, zoom_factor=3, shrink_factor=2) == (7, 10)
    assert cr.interp_output_size(6, 6, zoom_factor=2, pad_beg=-1, pad_end=-1) == (7, 7)
    _close(cr.interp(x, height=1, width=1)[0, 0], [[0]])       # ratio 0 -> first pixel
    _close(cr.interp(x, height=2, width=3)[0, 0], [[0, 0.5, 1], [2, 2.5, 3]])
    y = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    _close(cr.interp(y, height=2, width=2, pad_beg=-1, pad_end=-1)[0, 0], [[5, 6], [9, 10]])
    _close(cr.upsample_nearest(np.array([[[[1, 2]]]], np.float32), scale=2)[0, 0],
           [[1, 1, 2, 2], [1, 1, 2, 2]])


# ==============================================================================================
# 2. the protobuf encoder, against literal bytes and against google.protobuf
# ==============================================================================================

def test_encode_caffemodel_literal_bytes():
    # NetParameter.layer (100, LEN) = a2 06 <len>; name "a" = 0a 01 61; type "B" = 12 01 42;
    # blob (7, LEN) = 3a <len> { data (5, packed) 2a 08 <1.0f><2.0f>; shape 3a 03 { 0a 01 02 } }
    want = bytes.fromhex("a20617" "0a0161" "120142" "3a0f" "2a08" "0000803f" "00000040"
                         "3a03" "0a0102")
    got = wire.encode_caffemodel([("a", "B", [np.array([1.0, 2.0], np.float32)])])
    assert got == want
    assert wire.decode_caffemodel(want)[0][0:2] == ("a", "B")
    _close(wire.decode_caffemodel(want)[0][2][0], [1.0, 2.0])


def _mini_caffe_classes():
    pb = pytest.importorskip("google.protobuf")
    del pb
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="lmn_mini_caffe_test.proto",
                                             package="lmn_mini_caffe", syntax="proto2")
    shape = fdp.message_type.add(name="BlobShape")
    dim = shape.field.add(name="dim", number=1, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    dim.options.packed = True
    blob = fdp.message_type.add(name="BlobProto")
    for nm, no in (("num", 1), ("channels", 2), ("height", 3), ("width", 4)):
        blob.field.add(name=nm, number=no, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    data = blob.field.add(name="data", number=5, type=F.TYPE_FLOAT, label=F.LABEL_REPEATED)
    data.options.packed = True
    blob.field.add(name="shape", number=7, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                   type_name=".lmn_mini_caffe.BlobShape")
    layer = fdp.message_type.add(name="LayerParameter")
    layer.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    layer.field.add(name="type", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    layer.field.add(name="blobs", number=7, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                    type_name=".lmn_mini_caffe.BlobProto")
    net = fdp.message_type.add(name="NetParameter")
    net.field.add(name="layer", number=100, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                  type_name=".lmn_mini_caffe.LayerParameter")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "lmn_mini_caffe.NetParameter"))


@pytest.mark.parametrize("legacy", [False, True])
def test_encode_caffemodel_matches_protobuf_serializer(legacy):
    NetParameter = _mini_caffe_classes()
    rng = np.random.default_rng(5)
    layers = [("conv1/a", "Convolution", [rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
                                          rng.standard_normal(3).astype(np.float32)]),
              ("fc", "InnerProduct", [rng.standard_normal((200, 3)).astype(np.float32)]),
              ("empty", "ReLU", [])]
    if not legacy:
        layers.append(("sc", "Normalize", [np.array(2.5, np.float32)]))  # 0-axis blob
    msg = NetParameter()
    for name, type_, blobs in layers:
        lp = msg.layer.add(name=name, type=type_)
        for b in blobs:
            bp = lp.blobs.add()
            if legacy:
                n, c, h, w = [1] * (4 - b.ndim) + list(b.shape)
                bp.num, bp.channels, bp.height, bp.width = n, c, h, w
            bp.data.extend(b.ravel().tolist())
            if not legacy:
                bp.shape.SetInParent()
                bp.shape.dim.extend(b.shape)
    want = msg.SerializeToString()
    assert wire.encode_caffemodel(layers, legacy_shape=legacy) == want
    # and the decoder reads protobuf's bytes back
    back = wire.decode_caffemodel(want)
    assert [(n, t) for n, t, _ in back] == [(n, t) for n, t, _ in layers]
    for (_, _, got), (_, _, ref) in zip(back, layers):
        for g, r in zip(got, ref):
            assert g.size == r.size
            np.testing.assert_array_equal(g.ravel(), r.ravel())
            if not legacy:
                assert g.shape == r.shape


# ==============================================================================================
# 3. opencv_ref plumbing (no real OpenCV needed: fake cv2 packages on the worker's path)
# ==============================================================================================

TINY_NET = _net({"data": (1, 1, 2, 2)}, """\
    layer { name: "r" type: "ReLU" bottom: "data" top: "r" }
    """)


def _fake_cv2(tmp_path, body: str):
    pkg = tmp_path / "cv2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return str(tmp_path)


def test_run_opencv_unavailable_without_cv2(tmp_path, monkeypatch):
    monkeypatch.setenv(OPENCV_PATH_ENV, _fake_cv2(tmp_path, "raise ImportError('no cv2')\n"))
    with pytest.raises(OpenCVUnavailable, match="no cv2"):
        run_opencv_text(TINY_NET, None, {"data": np.zeros((1, 1, 2, 2))})


def test_run_opencv_unavailable_without_caffe_importer(tmp_path, monkeypatch):
    body = """\
        __version__ = '5.0.0-fake'
        class dnn:  # no readNetFromCaffe, as in OpenCV 5
            pass
        """
    monkeypatch.setenv(OPENCV_PATH_ENV, _fake_cv2(tmp_path, body))
    with pytest.raises(OpenCVUnavailable, match="no Caffe importer"):
        run_opencv_text(TINY_NET, None, {"data": np.zeros((1, 1, 2, 2))})


def test_run_opencv_reports_a_crash(tmp_path, monkeypatch):
    body = """\
        import os, sys
        __version__ = '4.0.0-fake'
        def setRNGSeed(seed):
            pass
        class error(Exception):
            pass
        class dnn:
            @staticmethod
            def readNetFromCaffe(*args):
                sys.stderr.write('fake importer about to abort\\n')
                sys.stderr.flush()
                os.abort()
        """
    monkeypatch.setenv(OPENCV_PATH_ENV, _fake_cv2(tmp_path, body))
    with pytest.raises(OpenCVFailed, match="SIGABRT(.|\n)*fake importer about to abort"):
        run_opencv_text(TINY_NET, None, {"data": np.zeros((1, 1, 2, 2))})


# ==============================================================================================
# 4. agreement with OpenCV DNN (only where OpenCV follows Caffe's C++)
# ==============================================================================================

_RNG = np.random.default_rng(20240601)
X = _RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
W_CONV = _RNG.standard_normal((6, 2, 3, 2)).astype(np.float32)
B_CONV = _RNG.standard_normal(6).astype(np.float32)
W_CONV3 = _RNG.standard_normal((3, 4, 3, 3)).astype(np.float32)
W_DECONV = _RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
B_DECONV = _RNG.standard_normal(6).astype(np.float32)
W_DECONV2 = _RNG.standard_normal((4, 2, 2, 3)).astype(np.float32)
W_IP = _RNG.standard_normal((5, 4 * 7 * 6)).astype(np.float32)
B_IP = _RNG.standard_normal(5).astype(np.float32)
BN_MEAN = _RNG.standard_normal(4).astype(np.float32)
BN_VAR = _RNG.uniform(0.5, 2.0, 4).astype(np.float32)
BN_S = np.array([2.5], np.float32)
SC = _RNG.standard_normal(4).astype(np.float32)
SC_B = _RNG.standard_normal(4).astype(np.float32)
SC2 = _RNG.standard_normal((4, 7)).astype(np.float32)
SLOPE = _RNG.uniform(0.05, 0.5, 4).astype(np.float32)


def _t():
    return cr.tanh(X)


def _pool(**kw):
    return lambda: cr.pooling(X, **kw)


# name -> (prototxt layer(s) producing a layer called `name`, blobs, reference)
AGREE = {
    "t": ('layer { name: "t" type: "TanH" bottom: "data" top: "t" }', [], _t),
    "conv_group_dil": (
        'layer { name: "conv_group_dil" type: "Convolution" bottom: "data" top: "conv_group_dil"'
        ' convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2'
        ' stride_w: 1 pad_h: 1 pad_w: 2 dilation: 2 } }',
        [W_CONV, B_CONV],
        lambda: cr.convolution(X, W_CONV, B_CONV, stride=(2, 1), pad=(1, 2), dilation=2,
                               group=2)),
    "conv_nobias": (
        'layer { name: "conv_nobias" type: "Convolution" bottom: "data" top: "conv_nobias"'
        ' convolution_param { num_output: 3 kernel_size: 3 pad: 1 bias_term: false } }',
        [W_CONV3], lambda: cr.convolution(X, W_CONV3, pad=1)),
    "deconv": (
        'layer { name: "deconv" type: "Deconvolution" bottom: "data" top: "deconv"'
        ' convolution_param { num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 1 } }',
        [W_DECONV, B_DECONV],
        lambda: cr.deconvolution(X, W_DECONV, B_DECONV, stride=2, pad=1, group=2)),
    "deconv_rect": (
        'layer { name: "deconv_rect" type: "Deconvolution" bottom: "data" top: "deconv_rect"'
        ' convolution_param { num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2'
        ' bias_term: false } }',
        [W_DECONV2], lambda: cr.deconvolution(X, W_DECONV2, stride=(3, 2))),
    "ip": (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"'
        ' inner_product_param { num_output: 5 } }',
        [W_IP, B_IP], lambda: cr.inner_product(X, W_IP, B_IP)),
    "ip_legacy": (  # weights written as a legacy 4-D (1, 1, N, K) blob
        'layer { name: "ip_legacy" type: "InnerProduct" bottom: "data" top: "ip_legacy"'
        ' inner_product_param { num_output: 5 } }',
        "legacy", lambda: cr.inner_product(X, W_IP.reshape(1, 1, 5, -1), B_IP)),
    "pool_max_pad": (
        'layer { name: "pool_max_pad" type: "Pooling" bottom: "data" top: "pool_max_pad"'
        ' pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }',
        [], _pool(pool="MAX", kernel_size=3, stride=2, pad=1)),
    "pool_ave_pad": (  # last W window clipped to W + pad: divisor 3x2
        'layer { name: "pool_ave_pad" type: "Pooling" bottom: "data" top: "pool_ave_pad"'
        ' pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }',
        [], _pool(pool="AVE", kernel_size=3, stride=2, pad=1)),
    "pool_ave_k2p1": (  # H: ceil gives 5, the fifth window starts in the padding -> 4
        'layer { name: "pool_ave_k2p1" type: "Pooling" bottom: "data" top: "pool_ave_k2p1"'
        ' pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }',
        [], _pool(pool="AVE", kernel_size=2, stride=2, pad=1)),
    "pool_max_s3k2": (  # stride > kernel, every window non-empty here
        'layer { name: "pool_max_s3k2" type: "Pooling" bottom: "data" top: "pool_max_s3k2"'
        ' pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride: 3 } }',
        [], _pool(pool="MAX", kernel_h=2, kernel_w=3, stride=3)),
    "pool_ave_s3k2": (
        'layer { name: "pool_ave_s3k2" type: "Pooling" bottom: "data" top: "pool_ave_s3k2"'
        ' pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride: 3 } }',
        [], _pool(pool="AVE", kernel_h=2, kernel_w=3, stride=3)),
    "pool_floor": (  # OpenCV spells round_mode: FLOOR as ceil_mode: false
        'layer { name: "pool_floor" type: "Pooling" bottom: "data" top: "pool_floor"'
        ' pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false } }',
        [], _pool(pool="MAX", kernel_size=3, stride=2, pad=1, round_mode="FLOOR")),
    "pool_ave_pad2": (  # pad = kernel - 1 (torch refuses pad > k/2)
        'layer { name: "pool_ave_pad2" type: "Pooling" bottom: "data" top: "pool_ave_pad2"'
        ' pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 2 } }',
        [], _pool(pool="AVE", kernel_size=3, stride=1, pad=2)),
    "pool_global_ave": (
        'layer { name: "pool_global_ave" type: "Pooling" bottom: "data" top: "pool_global_ave"'
        ' pooling_param { pool: AVE global_pooling: true } }',
        [], _pool(pool="AVE", global_pooling=True)),
    "pool_global_max": (
        'layer { name: "pool_global_max" type: "Pooling" bottom: "data" top: "pool_global_max"'
        ' pooling_param { pool: MAX global_pooling: true } }',
        [], _pool(pool="MAX", global_pooling=True)),
    "lrn_across": (
        'layer { name: "lrn_across" type: "LRN" bottom: "data" top: "lrn_across"'
        ' lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 } }',
        [], lambda: cr.lrn(X, local_size=5, alpha=0.3, beta=0.75)),
    "lrn_within": (  # k given on purpose: neither Caffe nor OpenCV uses it here
        'layer { name: "lrn_within" type: "LRN" bottom: "data" top: "lrn_within"'
        ' lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 3 norm_region: WITHIN_CHANNEL } }',
        [], lambda: cr.lrn(X, local_size=3, alpha=0.5, beta=0.6, k=3,
                           norm_region="WITHIN_CHANNEL")),
    "bn_global": (
        'layer { name: "bn_global" type: "BatchNorm" bottom: "data" top: "bn_global"'
        ' batch_norm_param { use_global_stats: true eps: 0.001 } }',
        [BN_MEAN * BN_S, BN_VAR * BN_S, BN_S],
        lambda: cr.batch_norm(X, BN_MEAN * BN_S, BN_VAR * BN_S, BN_S, eps=1e-3)),
    "bn_default": (  # TEST phase: use_global_stats defaults to true
        'layer { name: "bn_default" type: "BatchNorm" bottom: "data" top: "bn_default" }',
        [BN_MEAN, BN_VAR, np.array([1.0], np.float32)],
        lambda: cr.batch_norm(X, BN_MEAN, BN_VAR, [1.0])),
    "bn_s0": (
        'layer { name: "bn_s0" type: "BatchNorm" bottom: "data" top: "bn_s0" }',
        [BN_MEAN, BN_VAR, np.array([0.0], np.float32)],
        lambda: cr.batch_norm(X, BN_MEAN, BN_VAR, [0.0])),
    "scale_bias": (
        'layer { name: "scale_bias" type: "Scale" bottom: "data" top: "scale_bias"'
        ' scale_param { bias_term: true } }',
        [SC, SC_B], lambda: cr.scale(X, SC, SC_B)),
    "scale_2axes": (
        'layer { name: "scale_2axes" type: "Scale" bottom: "data" top: "scale_2axes"'
        ' scale_param { num_axes: 2 } }',
        [SC2], lambda: cr.scale(X, SC2, num_axes=2)),
    "scale_bottom": (
        'layer { name: "scale_bottom" type: "Scale" bottom: "data" bottom: "t" top: "scale_bottom"'
        ' scale_param { axis: 0 } }',
        [], lambda: cr.scale(X, _t(), axis=0)),
    "sum_coeff": (
        'layer { name: "sum_coeff" type: "Eltwise" bottom: "data" bottom: "t" top: "sum_coeff"'
        ' eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }',
        [], lambda: cr.eltwise([X, _t()], coeff=[0.5, -2])),
    "prod3": (
        'layer { name: "prod3" type: "Eltwise" bottom: "data" bottom: "t" bottom: "data"'
        ' top: "prod3" eltwise_param { operation: PROD } }',
        [], lambda: cr.eltwise([X, _t(), X], operation="PROD")),
    "max3": (
        'layer { name: "max3" type: "Eltwise" bottom: "t" bottom: "data" bottom: "t" top: "max3"'
        ' eltwise_param { operation: MAX } }',
        [], lambda: cr.eltwise([_t(), X, _t()], operation="MAX")),
    "concat1": (
        'layer { name: "concat1" type: "Concat" bottom: "t" bottom: "data" top: "concat1" }',
        [], lambda: cr.concat([_t(), X])),
    "concat3": (
        'layer { name: "concat3" type: "Concat" bottom: "data" bottom: "t" top: "concat3"'
        ' concat_param { axis: 3 } }',
        [], lambda: cr.concat([X, _t()], axis=3)),
    "sl": (  # first top of a Slice: addressed by the layer name
        'layer { name: "sl" type: "Slice" bottom: "data" top: "s0" top: "s1" top: "s2"'
        ' slice_param { axis: 1 slice_point: 1 slice_point: 3 } }',
        [], lambda: cr.slice_blob(X, axis=1, slice_point=[1, 3])[0]),
    "sl1": (  # further tops: through an identity Power layer
        'layer { name: "sl1" type: "Power" bottom: "s1" top: "sl1" }',
        [], lambda: cr.slice_blob(X, axis=1, slice_point=[1, 3])[1]),
    "sl2": (
        'layer { name: "sl2" type: "Power" bottom: "s2" top: "sl2" }',
        [], lambda: cr.slice_blob(X, axis=1, slice_point=[1, 3])[2]),
    "crop_hw": (
        'layer { name: "crop_hw" type: "Crop" bottom: "data" bottom: "pool_max_pad"'
        ' top: "crop_hw" crop_param { offset: 1 offset: 2 } }',
        [], lambda: cr.crop(X, (2, 4, 4, 4), offset=[1, 2])),
    "crop_c": (
        'layer { name: "crop_c" type: "Crop" bottom: "data" bottom: "s0" top: "crop_c"'
        ' crop_param { axis: 1 offset: 2 offset: 0 offset: 0 } }',
        [], lambda: cr.crop(X, (2, 1, 7, 6), axis=1, offset=[2, 0, 0])),
    "flat": (
        'layer { name: "flat" type: "Flatten" bottom: "data" top: "flat"'
        ' flatten_param { axis: 1 end_axis: 2 } }',
        [], lambda: cr.flatten(X, axis=1, end_axis=2)),
    "resh_w": (
        'layer { name: "resh_w" type: "Reshape" bottom: "data" top: "resh_w"'
        ' reshape_param { shape { dim: 2 dim: -1 } axis: 3 num_axes: 1 } }',
        [], lambda: cr.reshape(X, [2, -1], axis=3, num_axes=1)),
    "resh_0": (
        'layer { name: "resh_0" type: "Reshape" bottom: "data" top: "resh_0"'
        ' reshape_param { shape { dim: 0 dim: -1 } } }',
        [], lambda: cr.reshape(X, [0, -1])),
    "softmax1": (
        'layer { name: "softmax1" type: "Softmax" bottom: "data" top: "softmax1" }',
        [], lambda: cr.softmax(X)),
    "softmax3": (
        'layer { name: "softmax3" type: "Softmax" bottom: "data" top: "softmax3"'
        ' softmax_param { axis: 3 } }',
        [], lambda: cr.softmax(X, axis=3)),
    "permute": (
        'layer { name: "permute" type: "Permute" bottom: "data" top: "permute"'
        ' permute_param { order: 0 order: 2 order: 3 order: 1 } }',
        [], lambda: cr.permute(X, order=[0, 2, 3, 1])),
    "shuffle": (
        'layer { name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "shuffle"'
        ' shuffle_channel_param { group: 2 } }',
        [], lambda: cr.shuffle_channel(X, group=2)),
    "relu_leaky": (
        'layer { name: "relu_leaky" type: "ReLU" bottom: "data" top: "relu_leaky"'
        ' relu_param { negative_slope: 0.2 } }',
        [], lambda: cr.relu(X, negative_slope=0.2)),
    "prelu": (
        'layer { name: "prelu" type: "PReLU" bottom: "data" top: "prelu" }',
        [SLOPE], lambda: cr.prelu(X, SLOPE)),
    "prelu_shared": (
        'layer { name: "prelu_shared" type: "PReLU" bottom: "data" top: "prelu_shared"'
        ' prelu_param { channel_shared: true } }',
        [SLOPE[:1]], lambda: cr.prelu(X, SLOPE[:1], channel_shared=True)),
    "elu": ('layer { name: "elu" type: "ELU" bottom: "data" top: "elu" elu_param { alpha: 0.5 } }',
            [], lambda: cr.elu(X, alpha=0.5)),
    "sigmoid": ('layer { name: "sigmoid" type: "Sigmoid" bottom: "data" top: "sigmoid" }',
                [], lambda: cr.sigmoid(X)),
    "absval": ('layer { name: "absval" type: "AbsVal" bottom: "data" top: "absval" }',
               [], lambda: cr.absval(X)),
    "bnll": ('layer { name: "bnll" type: "BNLL" bottom: "data" top: "bnll" }',
             [], lambda: cr.bnll(X)),
    "power": (
        'layer { name: "power" type: "Power" bottom: "data" top: "power"'
        ' power_param { power: 2 scale: 0.5 shift: 1.5 } }',
        [], lambda: cr.power(X, power=2, scale=0.5, shift=1.5)),
    "power_sqrt": (
        'layer { name: "power_sqrt" type: "Power" bottom: "data" top: "power_sqrt"'
        ' power_param { power: 0.5 scale: 0.5 shift: 10 } }',
        [], lambda: cr.power(X, power=0.5, scale=0.5, shift=10)),
    "exp2": (
        'layer { name: "exp2" type: "Exp" bottom: "data" top: "exp2"'
        ' exp_param { base: 2 scale: 0.5 shift: 0.3 } }',
        [], lambda: cr.exp(X, base=2, scale=0.5, shift=0.3)),
    "exp_e": ('layer { name: "exp_e" type: "Exp" bottom: "data" top: "exp_e" }',
              [], lambda: cr.exp(X)),
    "swish": ('layer { name: "swish" type: "Swish" bottom: "data" top: "swish" }',
              [], lambda: cr.swish(X)),
    "dropout": (
        'layer { name: "dropout" type: "Dropout" bottom: "data" top: "dropout"'
        ' dropout_param { dropout_ratio: 0.3 } }',
        [], lambda: cr.dropout(X)),
    "norm_spatial": (  # shared scale stored as a (1,) blob: OpenCV cannot read 0-axis blobs
        'layer { name: "norm_spatial" type: "Normalize" bottom: "data" top: "norm_spatial"'
        ' norm_param { across_spatial: true channel_shared: true eps: 0.01 } }',
        [np.array([2.5], np.float32)], lambda: cr.normalize(X, [2.5], eps=0.01)),
    "norm_pixel": (
        'layer { name: "norm_pixel" type: "Normalize" bottom: "data" top: "norm_pixel"'
        ' norm_param { across_spatial: false channel_shared: false eps: 0.5 } }',
        [SC], lambda: cr.normalize(X, SC, across_spatial=False, channel_shared=False, eps=0.5)),
    "mvn": ('layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }', [],
            lambda: cr.mvn(X)),
    "mvn_across": (
        'layer { name: "mvn_across" type: "MVN" bottom: "data" top: "mvn_across"'
        ' mvn_param { across_channels: true } }',
        [], lambda: cr.mvn(X, across_channels=True)),
    "mvn_mean_only": (
        'layer { name: "mvn_mean_only" type: "MVN" bottom: "data" top: "mvn_mean_only"'
        ' mvn_param { normalize_variance: false } }',
        [], lambda: cr.mvn(X, normalize_variance=False)),
    "interp_zoom": (
        'layer { name: "interp_zoom" type: "Interp" bottom: "data" top: "interp_zoom"'
        ' interp_param { zoom_factor: 2 } }',
        [], lambda: cr.interp(X, zoom_factor=2)),
    "interp_hw": (
        'layer { name: "interp_hw" type: "Interp" bottom: "data" top: "interp_hw"'
        ' interp_param { height: 5 width: 9 } }',
        [], lambda: cr.interp(X, height=5, width=9)),
    # in-place naming: forward("inpl") is the layer "inpl" (before the in-place ReLU),
    # forward("inpl_relu") is the blob after it
    "inpl": ('layer { name: "inpl" type: "Power" bottom: "data" top: "inpl"'
             ' power_param { scale: -2 } }', [], lambda: -2 * X),
    "inpl_relu": ('layer { name: "inpl_relu" type: "ReLU" bottom: "inpl" top: "inpl" }', [],
                  lambda: cr.relu(-2 * X)),
}


@pytest.fixture(scope="module")
def agree_outputs():
    layers = "\n".join(spec[0] for spec in AGREE.values()) + "\n"
    plain = [(name, "", spec[1]) for name, spec in AGREE.items()
             if isinstance(spec[1], list) and spec[1]]
    legacy = [(name, "", [W_IP.reshape(1, 1, 5, -1), B_IP]) for name, spec in AGREE.items()
              if spec[1] == "legacy"]
    # Two serialised NetParameters concatenated parse as one message (repeated fields append):
    # this also checks that the legacy 4-D blob form loads.
    model = wire.encode_caffemodel(plain) + wire.encode_caffemodel(legacy, legacy_shape=True)
    return _opencv_or_skip(_net({"data": X.shape}, layers), model, {"data": X}, list(AGREE))


@pytest.mark.parametrize("name", list(AGREE))
def test_agrees_with_opencv(agree_outputs, name):
    want = AGREE[name][2]()
    got = agree_outputs[name]
    _close(got, want, rtol=2e-5, atol=2e-5)


PB_FEAT, PB_IMG = (1, 2, 3, 4), (1, 3, 30, 41)
PRIOR = {
    "pb_full": ('min_size: 8 max_size: 20 aspect_ratio: 2 aspect_ratio: 3 flip: true'
                ' clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2',
                dict(min_size=8, max_size=20, aspect_ratio=[2, 3], flip=True,
                     variance=[0.1, 0.1, 0.2, 0.2])),
    "pb_noflip_clip": ('min_size: 8 aspect_ratio: 2 flip: false clip: true variance: 0.1',
                       dict(min_size=8, aspect_ratio=[2], flip=False, clip=True)),
    "pb_step_offset": ('min_size: 8 max_size: 20 aspect_ratio: 2 step: 10 offset: 0.25'
                       ' clip: false variance: 0.2',
                       dict(min_size=8, max_size=20, aspect_ratio=[2], step=10, offset=0.25,
                            variance=[0.2])),
    "pb_step_hw": ('min_size: 6 step_h: 7 step_w: 9 clip: false variance: 0.1',
                   dict(min_size=6, step_h=7, step_w=9)),
    "pb_two_sizes": ('min_size: 8 min_size: 16 max_size: 12 max_size: 30 aspect_ratio: 2'
                     ' clip: false variance: 0.1',
                     dict(min_size=[8, 16], max_size=[12, 30], aspect_ratio=[2])),
}


@pytest.fixture(scope="module")
def prior_outputs():
    layers = "".join(
        f'layer {{ name: "{n}" type: "PriorBox" bottom: "feat" bottom: "img" top: "{n}"'
        f" prior_box_param {{ {spec[0]} }} }}\n"
        for n, spec in {**PRIOR, **PRIOR_DIVERGE}.items())
    feat = np.zeros(PB_FEAT, np.float32)
    img = np.zeros(PB_IMG, np.float32)
    return _opencv_or_skip(_net({"feat": PB_FEAT, "img": PB_IMG}, layers), None,
                           {"feat": feat, "img": img}, list(PRIOR) + list(PRIOR_DIVERGE))


@pytest.mark.parametrize("name", list(PRIOR))
def test_prior_box_agrees_with_opencv(prior_outputs, name):
    _close(prior_outputs[name], cr.prior_box(PB_FEAT, PB_IMG, **PRIOR[name][1]), atol=1e-6)


def test_opencv_runs_are_deterministic():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    proto = _net({"data": x.shape}, """\
        layer { name: "c" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 16 kernel_size: 3 pad: 1 bias_term: false } }
        layer { name: "p" type: "Pooling" bottom: "c" top: "p"
                pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
        """)
    model = wire.encode_caffemodel([("c", "Convolution", [w])])
    a = _opencv_or_skip(proto, model, {"data": x}, ["p"])["p"]
    b = _opencv_or_skip(proto, model, {"data": x}, ["p"])["p"]
    np.testing.assert_array_equal(a, b)
    _close(a, cr.pooling(cr.convolution(x, w, pad=1), pool="AVE", kernel_size=3, stride=2),
           rtol=1e-5, atol=1e-5)


def test_opencv_failure_carries_opencv_message():
    bad = _net({"data": (1, 1, 2, 2)}, """\
        layer { name: "x" type: "NoSuchLayerType" bottom: "data" top: "x" }
        """)
    with pytest.raises(OpenCVFailed, match="NoSuchLayerType"):
        _opencv_or_skip(bad, None, {"data": np.zeros((1, 1, 2, 2), np.float32)}, ["x"])


def test_opencv_version_reports_a_version():
    try:
        version = opencv_version()
    except OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    assert version.split(".")[0].isdigit()


# ==============================================================================================
# 5. where OpenCV differs from Caffe: pin OpenCV's own behaviour (the reference is pinned above
#    by hand-computed values). If one of these fails, OpenCV changed: re-check the list at the
#    top of this file before trusting OpenCV for that layer.
# ==============================================================================================

X1 = np.random.default_rng(77).standard_normal((1, 3, 5, 5)).astype(np.float32)
W_IPT = np.random.default_rng(78).standard_normal((3 * 5 * 5, 4)).astype(np.float32)
B_SC2 = np.array([10.0, 20.0, 30.0], np.float32)


def _inst_stats(x):
    x = x.astype(np.float64)
    m = x.mean(axis=(2, 3), keepdims=True)
    v = ((x - m) ** 2).mean(axis=(2, 3), keepdims=True)
    return x, m, v


def _opencv_mvn(x, eps):
    x, m, v = _inst_stats(x)
    return (x - m) / np.sqrt(v + eps)


DIVERGE = {
    # name: (layer, blobs, what OpenCV computes, what Caffe computes)
    "d_pool_empty": (
        'layer { name: "d_pool_empty" type: "Pooling" bottom: "data" top: "d_pool_empty"'
        ' pooling_param { pool: MAX kernel_size: 1 stride: 3 } }', [],
        lambda: np.pad(X1[:, :, ::3, ::3], ((0, 0), (0, 0), (0, 1), (0, 1))),
        lambda: cr.pooling(X1, pool="MAX", kernel_size=1, stride=3)),
    "d_lrn_k": (
        'layer { name: "d_lrn_k" type: "LRN" bottom: "data" top: "d_lrn_k"'
        ' lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }', [],
        lambda: cr.lrn(X1, local_size=3, alpha=0.5, beta=0.75, k=1),
        lambda: cr.lrn(X1, local_size=3, alpha=0.5, beta=0.75, k=2)),
    "d_mvn_eps": (
        'layer { name: "d_mvn_eps" type: "MVN" bottom: "data" top: "d_mvn_eps"'
        ' mvn_param { eps: 0.5 } }', [],
        lambda: _opencv_mvn(X1, 0.5), lambda: cr.mvn(X1, eps=0.5)),
    "d_bn_train": (
        'layer { name: "d_bn_train" type: "BatchNorm" bottom: "data" top: "d_bn_train"'
        ' batch_norm_param { use_global_stats: false eps: 0.1 } }',
        [np.zeros(3, np.float32), np.ones(3, np.float32), np.ones(1, np.float32)],
        lambda: _opencv_mvn(X1, 0.1) / math.sqrt(1.1),
        lambda: cr.batch_norm(X1, use_global_stats=False, eps=0.1)),
    "d_swish": (
        'layer { name: "d_swish" type: "Swish" bottom: "data" top: "d_swish"'
        ' swish_param { beta: 2 } }', [],
        lambda: cr.swish(X1), lambda: cr.swish(X1, beta=2)),
    "d_log": (
        'layer { name: "d_log" type: "Log" bottom: "absval1" top: "d_log"'
        ' log_param { base: 10 scale: 2 shift: 3 } }', [],
        lambda: np.log(np.abs(X1.astype(np.float64))),
        lambda: cr.log(np.abs(X1), base=10, scale=2, shift=3)),
    "d_ip_transpose": (
        'layer { name: "d_ip_transpose" type: "InnerProduct" bottom: "data"'
        ' top: "d_ip_transpose" inner_product_param { num_output: 4 transpose: true'
        ' bias_term: false } }', [W_IPT],
        lambda: X1.reshape(1, -1).astype(np.float64) @ W_IPT.reshape(4, -1).T.astype(np.float64),
        lambda: cr.inner_product(X1, W_IPT, transpose=True)),
    "d_scale_bottom_bias": (
        'layer { name: "d_scale_bottom_bias" type: "Scale" bottom: "data" bottom: "absval1"'
        ' top: "d_scale_bottom_bias" scale_param { axis: 0 bias_term: true } }',
        [np.broadcast_to(B_SC2.reshape(1, 3, 1, 1), X1.shape).copy()],
        lambda: X1 + B_SC2.reshape(1, 3, 1, 1),
        lambda: cr.scale(X1, np.abs(X1), np.broadcast_to(B_SC2.reshape(1, 3, 1, 1), X1.shape),
                         axis=0)),
    "d_interp_pad": (
        'layer { name: "d_interp_pad" type: "Interp" bottom: "data" top: "d_interp_pad"'
        ' interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -1 } }', [],
        lambda: cr.interp(X1, zoom_factor=2),
        lambda: cr.interp(X1, zoom_factor=2, pad_beg=-1, pad_end=-1)),
}
DIVERGE_HELPERS = 'layer { name: "absval1" type: "AbsVal" bottom: "data" top: "absval1" }\n'

PRIOR_DIVERGE = {
    # OpenCV: clip defaults to true
    "pbd_clip_default": ('min_size: 16 variance: 0.1',
                         dict(min_size=16, clip=True), dict(min_size=16)),
    # OpenCV: img_size ignored (the image blob's size is used)
    "pbd_img_size": ('min_size: 8 img_size: 50 clip: false variance: 0.1',
                     dict(min_size=8), dict(min_size=8, img_size=50)),
    # OpenCV: fractional sizes kept; Caffe's C++ truncates them to int
    "pbd_fraction": ('min_size: 7.5 max_size: 20.7 clip: false variance: 0.1',
                     None, dict(min_size=7.5, max_size=20.7)),
}


@pytest.fixture(scope="module")
def diverge_outputs():
    layers = DIVERGE_HELPERS + "\n".join(spec[0] for spec in DIVERGE.values()) + "\n"
    model = wire.encode_caffemodel([(n, "", spec[1]) for n, spec in DIVERGE.items() if spec[1]])
    return _opencv_or_skip(_net({"data": X1.shape}, layers), model, {"data": X1}, list(DIVERGE))


@pytest.mark.parametrize("name", list(DIVERGE))
def test_opencv_divergence(diverge_outputs, name):
    _, _, opencv_formula, caffe_ref_fn = DIVERGE[name]
    got = diverge_outputs[name]
    caffe = caffe_ref_fn()
    np.testing.assert_allclose(got, opencv_formula(), rtol=2e-5, atol=2e-5, equal_nan=True)
    # ...and that is really not what Caffe computes (else the entry does not belong here)
    if got.shape == caffe.shape:
        assert not np.allclose(got, caffe, rtol=1e-3, atol=1e-3, equal_nan=True)


def _prior_fraction_opencv():
    # OpenCV's float sizes: 7.5 and sqrt(7.5*20.7), centred on the cells, image 41x30
    lh, lw = PB_FEAT[2:]
    ih, iw = PB_IMG[2:]
    boxes = []
    for h in range(lh):
        for w in range(lw):
            cx, cy = (w + 0.5) * iw / lw, (h + 0.5) * ih / lh
            for side in (7.5, math.sqrt(7.5 * 20.7)):
                boxes.append([(cx - side / 2) / iw, (cy - side / 2) / ih,
                              (cx + side / 2) / iw, (cy + side / 2) / ih])
    return np.asarray(boxes).ravel()


@pytest.mark.parametrize("name", list(PRIOR_DIVERGE))
def test_prior_box_opencv_divergence(prior_outputs, name):
    _, opencv_kw, caffe_kw = PRIOR_DIVERGE[name]
    got = prior_outputs[name]
    caffe = cr.prior_box(PB_FEAT, PB_IMG, **caffe_kw)
    want = _prior_fraction_opencv() if opencv_kw is None else \
        cr.prior_box(PB_FEAT, PB_IMG, **opencv_kw)[0, 0]
    _close(got[0, 0], want, atol=1e-6)
    assert not np.allclose(got, caffe, atol=1e-3)


REJECTS = {
    # round_mode is not in OpenCV's caffe.proto
    "round_mode": ('layer { name: "x" type: "Pooling" bottom: "data" top: "x"'
                   ' pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }',
                   [], (1, 2, 6, 6)),
    # partial permute order (Caffe appends the missing axes)
    "partial_permute": ('layer { name: "x" type: "Permute" bottom: "data" top: "x"'
                        ' permute_param { order: 0 order: 3 } }', [], (1, 2, 6, 6)),
    # batch statistics with batch > 1
    "bn_train_batch2": ('layer { name: "x" type: "BatchNorm" bottom: "data" top: "x"'
                        ' batch_norm_param { use_global_stats: false } }',
                        [np.zeros(2, np.float32), np.ones(2, np.float32),
                         np.ones(1, np.float32)], (2, 2, 3, 3)),
    # a 0-axis blob, as Caffe stores Normalize's channel-shared scale
    "zero_axis_blob": ('layer { name: "x" type: "Normalize" bottom: "data" top: "x"'
                       ' norm_param { channel_shared: true } }',
                       [np.array(2.0, np.float32)], (1, 2, 3, 3)),
}


@pytest.mark.parametrize("name", list(REJECTS))
def test_opencv_rejects_what_caffe_accepts(name):
    layer, blobs, shape = REJECTS[name]
    model = wire.encode_caffemodel([("x", "", blobs)]) if blobs else None
    with pytest.raises(OpenCVFailed):
        _opencv_or_skip(_net({"data": shape}, layer + "\n"), model,
                        {"data": np.ones(shape, np.float32)}, ["x"])
    # ...while the reference computes them
    x = np.ones(shape, np.float32)
    if name == "round_mode":
        assert cr.pooling(x, kernel_size=3, stride=2, round_mode="FLOOR").shape == (1, 2, 2, 2)
    elif name == "partial_permute":
        assert cr.permute(x, order=[0, 3]).shape == (1, 6, 2, 6)
    elif name == "bn_train_batch2":
        assert np.all(cr.batch_norm(x, use_global_stats=False) == 0)
    else:
        _close(cr.normalize(x, blobs[0]), np.full(shape, 2.0 / math.sqrt(18 + 1e-10)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
