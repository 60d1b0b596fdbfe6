"""FlowNet 2.0's layers (landmarknet/layers/optical_flow.py) against independent references.

References: numpy restatements, loop for loop, of the lmb-freiburg/flownet2 fork's kernels
(correlation_layer.cu CorrelateData / CorrelateDataSubtract, accum_layer.cpp Forward_cpu,
flow_warp_layer.cpp Forward_cpu and Backward_cpu, resample_layer.cu InterpolationKernel /
NearestNeighborKernel, data_augmentation_layer.cu's TEST path), and OpenCV 4.x DNN, which
reads these types from a Caffe prototxt, wherever OpenCV computes what the fork computes (the
module docstring of optical_flow.py lists where it does not; the OpenCV nets below are the
shapes of OpenCV's own unit tests for these layers, rewritten small).
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.errors import LayerError, WeightsError
from landmarknet.params import save_weights
from layers.checker import (assert_bad_parameters_name_the_layer, assert_refused, run_layer,
                            seeded, to_numpy)
from reference import wire

F32 = np.float32


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (the suite's measure against OpenCV)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def _opencv(text: str, inputs: dict, outputs: list[str], tmp_path, model: bytes | None = None):
    cv = pytest.importorskip("opencv_ref")
    (tmp_path / "net.prototxt").write_text(text)
    weights = None
    if model is not None:
        weights = tmp_path / "net.caffemodel"
        weights.write_bytes(model)
    try:
        return cv.run_opencv(tmp_path / "net.prototxt", weights, inputs, outputs)
    except cv.OpenCVUnavailable as exc:
        pytest.skip(str(exc))


def _inputs_text(shapes: dict) -> str:
    return "".join(f'input: "{n}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n'
                   for n, s in shapes.items())


def _ours(text: str, inputs: dict, outputs: list[str]) -> dict:
    net = build_net(parse_net(text, path="net.prototxt"))
    with torch.no_grad():
        got = net.run_layers({k: torch.from_numpy(v) for k, v in inputs.items()}, outputs)
    return {k: to_numpy(v) for k, v in got.items()}


# ----------------------------------------------------------------------------------------------
# numpy restatements of the fork's kernels
# ----------------------------------------------------------------------------------------------

def correlation_ref(a, b, pad, k, md, s1, s2, subtract=False):
    """CorrelateData / CorrelateDataSubtract on the zeroed, padded (N, Hp, Wp, C) copies."""
    n, c, h, w = a.shape
    ra = np.zeros((n, h + 2 * pad, w + 2 * pad, c), F32)
    rb = np.zeros_like(ra)
    ra[:, pad:pad + h, pad:pad + w] = a.transpose(0, 2, 3, 1)
    rb[:, pad:pad + h, pad:pad + w] = b.transpose(0, 2, 3, 1)
    r = (k - 1) // 2
    border = md + r
    th = math.ceil((h + 2 * pad - 2 * border) / s1)
    tw = math.ceil((w + 2 * pad - 2 * border) / s1)
    grid_r = md // s2
    gw = 2 * grid_r + 1
    top = np.zeros((n, gw * gw, th, tw), F32)
    for item in range(n):
        for y in range(th):
            for x in range(tw):
                x1, y1 = x * s1 + md, y * s1 + md
                p1 = ra[item, y1:y1 + k, x1:x1 + k]
                for tc in range(gw * gw):
                    s2o = (tc % gw - grid_r) * s2
                    s2p = (tc // gw - grid_r) * s2
                    p2 = rb[item, y1 + s2p:y1 + s2p + k, x1 + s2o:x1 + s2o + k]
                    v = np.abs(p1 - p2) if subtract else p1 * p2
                    top[item, tc, y, x] = F32(v.astype(np.float64).sum()) / F32(k * k * c)
    return top


def accum_upscale_ref(x, th, tw):
    """Accum's Forward_cpu for one bottom (the channel-offset copy done by the caller)."""
    n, c, h, w = x.shape
    flat = x.reshape(-1)
    count = flat.size
    out = np.zeros((n, c, th, tw), F32)
    for nn_ in range(n):
        for cc in range(c):
            cn = nn_ * c + cc
            for yy in range(th):
                for xx in range(tw):
                    xpos = F32(F32(xx) / F32(tw - 1)) * F32(w - 1)
                    ypos = F32(F32(yy) / F32(th - 1)) * F32(h - 1)
                    tlx, tly = F32(np.floor(xpos)), F32(np.floor(ypos))
                    off = int(w * (h * cn + tly) + tlx)
                    tl = flat[off]
                    tr = flat[min(off + 1, count - 1)]
                    bl = flat[min(off + w, count - 1)]
                    br = flat[min(off + 1 + w, count - 1)]
                    xd, yd = F32(xpos - tlx), F32(ypos - tly)
                    one = F32(1)
                    out[nn_, cc, yy, xx] = ((one - xd) * (one - yd) * tl + xd * yd * br
                                            + (one - xd) * yd * bl + xd * (one - yd) * tr)
    return out


def flow_warp_ref(img, flow, nan_fill=False):
    """FlowWarpLayer::Forward_cpu."""
    n, c, h, w = img.shape
    out = np.empty_like(img)
    fill = F32(np.nan) if nan_fill else F32(0)
    one = F32(1)
    for item in range(n):
        for x in range(w):
            for y in range(h):
                x2 = F32(x) + flow[item, 0, y, x]
                y2 = F32(y) + flow[item, 1, y, x]
                if x2 >= 0 and y2 >= 0 and x2 < w and y2 < h:
                    il, it = int(x2), int(y2)
                    ir, ib = min(il + 1, w - 1), min(it + 1, h - 1)
                    al, be = F32(x2 - il), F32(y2 - it)
                    for ch in range(c):
                        im = img[item, ch]
                        out[item, ch, y, x] = ((one - al) * (one - be) * im[it, il]
                                               + al * (one - be) * im[it, ir]
                                               + (one - al) * be * im[ib, il]
                                               + al * be * im[ib, ir])
                else:
                    out[item, :, y, x] = fill
    return out


def flow_warp_backward_ref(img, flow, top_diff):
    """FlowWarpLayer::Backward_cpu: the image's and the flow's gradients."""
    n, c, h, w = img.shape
    gi = np.zeros_like(img, dtype=np.float64)
    gf = np.zeros_like(flow, dtype=np.float64)
    for item in range(n):
        for x in range(w):
            for y in range(h):
                x2 = F32(x) + flow[item, 0, y, x]
                y2 = F32(y) + flow[item, 1, y, x]
                if not (x2 >= 0 and y2 >= 0 and x2 < w and y2 < h):
                    continue
                il, it = int(x2), int(y2)
                ir, ib = min(il + 1, w - 1), min(it + 1, h - 1)
                al, be = float(x2 - il), float(y2 - it)
                d = top_diff[item, :, y, x].astype(np.float64)
                im = img[item].astype(np.float64)
                gi[item, :, it, il] += d * (1 - al) * (1 - be)
                gi[item, :, it, ir] += d * al * (1 - be)
                gi[item, :, ib, il] += d * (1 - al) * be
                gi[item, :, ib, ir] += d * al * be
                gamma = ib - float(y2)
                gf[item, 0, y, x] = (d * (gamma * (im[:, it, ir] - im[:, it, il])
                                          + (1 - gamma) * (im[:, ib, ir] - im[:, ib, il]))).sum()
                gamma = ir - float(x2)
                gf[item, 1, y, x] = (d * (gamma * (im[:, ib, il] - im[:, it, il])
                                          + (1 - gamma) * (im[:, ib, ir] - im[:, it, ir]))).sum()
    return gi, gf


def _c_round(v: float) -> int:
    """CUDA's round(): half away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def resample_ref(x, th, tw, kind="LINEAR", antialias=True):
    """resample_layer.cu: NearestNeighborKernel / InterpolationKernel, the 2-D window summed in
    float32 as the kernel does (note x_in uses fy / 2 and y_in fx / 2, as the fork has it)."""
    n, c, h, w = x.shape
    fx, fy = F32(F32(w) / F32(tw)), F32(F32(h) / F32(th))
    out = np.zeros((n, c, th, tw), F32)
    half = F32(0.5)
    if kind == "NEAREST":
        for yo in range(th):
            for xo in range(tw):
                xi = F32(F32(xo) * fx + fy / F32(2)) - half
                yi = F32(F32(yo) * fy + fx / F32(2)) - half
                out[:, :, yo, xo] = x[:, :, _c_round(float(yi)), _c_round(float(xi))]
        return out
    shrink = (fx > 1) or (fy > 1)
    aa = antialias and shrink
    ax = F32(1) / (fx if aa else F32(1))
    ay = F32(1) / (fy if aa else F32(1))
    kw = 4 if kind == "CUBIC" else 2
    rx = 2 if fx < 1 else math.ceil(float(F32(kw) / ax))
    ry = 2 if fy < 1 else math.ceil(float(F32(kw) / ay))

    def f(t):
        t = F32(t)
        if kind == "CUBIC":
            a = abs(t)
            if a <= 1:
                return a * a * (F32(1.5) * a - F32(2.5)) + F32(1)
            if a < 2:
                return a * (a * (F32(-0.5) * a + F32(2.5)) - F32(4)) + F32(2)
            return F32(0)
        if -1 <= t < 0:
            return t + F32(1)
        if 0 <= t <= 1:
            return F32(1) - t
        return F32(0)

    for yo in range(th):
        for xo in range(tw):
            xi = F32(F32(xo) * fx + fy / F32(2)) - half
            yi = F32(F32(yo) * fy + fx / F32(2)) - half
            xr, yr = _c_round(float(xi)), _c_round(float(yi))
            s = np.zeros((n, c), F32)
            ws = F32(0)
            for yy in range(yr - ry, yr + ry + 1):
                for xx in range(xr - rx, xr + rx + 1):
                    if yy < 0 or xx < 0 or yy >= h or xx >= w:
                        continue
                    wgt = ax * f(ax * F32(xi - xx)) * ay * f(ay * F32(yi - yy))
                    s = s + wgt * x[:, :, yy, xx]
                    ws = ws + wgt
            out[:, :, yo, xo] = 0 if ws == 0 else s / ws
    return out


# ----------------------------------------------------------------------------------------------
# Correlation
# ----------------------------------------------------------------------------------------------

# (pad, kernel_size, max_displacement, stride_1, stride_2): FlowNetC's (20, 1, 20, 1, 2) made
# small, a 3x3 patch with stride_1 2, a 5x5 patch, stride_2 that does not divide
# max_displacement, and no padding at all.
CORR_CASES = [(2, 1, 2, 1, 1), (3, 3, 3, 2, 1), (4, 1, 4, 1, 2), (2, 5, 2, 3, 2),
              (0, 1, 1, 1, 1), (1, 3, 3, 1, 2)]


def _corr_param(pad, k, md, s1, s2, kind=""):
    return (f"correlation_param {{ pad: {pad} kernel_size: {k} max_displacement: {md} "
            f"stride_1: {s1} stride_2: {s2} {kind} }}")


@pytest.mark.parametrize("case", CORR_CASES)
@pytest.mark.parametrize("subtract", [False, True], ids=["multiply", "subtract"])
def test_correlation_matches_the_forks_kernel(case, subtract) -> None:
    rng = seeded(3)
    a = rng.standard_normal((2, 3, 9, 11)).astype(F32)
    b = rng.standard_normal((2, 3, 9, 11)).astype(F32)
    kind = "correlation_type: SUBTRACT" if subtract else ""
    (top,), _, _ = run_layer("Correlation", _corr_param(*case, kind), [a, b])
    ref = correlation_ref(a, b, *case, subtract=subtract)
    assert rel_err(to_numpy(top), ref) <= 1e-6


def test_correlation_matches_opencv(tmp_path) -> None:
    rng = seeded(4)
    a = rng.standard_normal((2, 4, 10, 12)).astype(F32)
    b = rng.standard_normal((2, 4, 10, 12)).astype(F32)
    layers = "".join(f'layer {{ name: "c{i}" type: "Correlation" bottom: "a" bottom: "b" '
                     f'top: "c{i}" {_corr_param(*case)} }}\n' for i, case in enumerate(CORR_CASES))
    text = _inputs_text({"a": a.shape, "b": b.shape}) + layers
    names = [f"c{i}" for i in range(len(CORR_CASES))]
    theirs = _opencv(text, {"a": a, "b": b}, names, tmp_path)
    ours = _ours(text, {"a": a, "b": b}, names)
    for name in names:
        assert rel_err(ours[name], theirs[name]) <= 1e-5, name


def test_correlation_subtract_departs_from_opencv(tmp_path) -> None:
    # OpenCV reads no correlation_type: it multiplies where the fork takes |a - b|.
    rng = seeded(5)
    a = rng.standard_normal((1, 2, 7, 8)).astype(F32)
    b = rng.standard_normal((1, 2, 7, 8)).astype(F32)
    text = _inputs_text({"a": a.shape, "b": b.shape}) + (
        'layer { name: "c" type: "Correlation" bottom: "a" bottom: "b" top: "c" '
        + _corr_param(1, 1, 2, 1, 1, "correlation_type: SUBTRACT") + " }\n")
    theirs = _opencv(text, {"a": a, "b": b}, ["c"], tmp_path)["c"]
    ours = _ours(text, {"a": a, "b": b}, ["c"])["c"]
    assert rel_err(ours, correlation_ref(a, b, 1, 1, 2, 1, 1, subtract=True)) <= 1e-6
    assert rel_err(theirs, correlation_ref(a, b, 1, 1, 2, 1, 1)) <= 1e-5
    assert rel_err(ours, theirs) > 0.1


def test_correlation_is_differentiable() -> None:
    from landmarknet.layers.optical_flow import Correlation
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 2, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(1, 2, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    for subtract in (False, True):
        mod = Correlation(1, 3, 2, 1, 2, subtract)
        assert torch.autograd.gradcheck(mod, (a, b), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Accum
# ----------------------------------------------------------------------------------------------

def accum_ref(bottoms, th, tw, used):
    outs = []
    for x in bottoms[:used]:
        outs.append(x if x.shape[2:] == (th, tw) else accum_upscale_ref(x, th, tw))
    return np.concatenate(outs, axis=1)


ACCUM_OPENCV = [
    ("sizes", "accum_param { top_height: 9 top_width: 11 }", ["a", "b"], (9, 11)),
    ("only_one_larger", "accum_param { top_height: 9 top_width: 8 }", ["a", "b"], (6, 8)),
    ("largest", "", ["b", "a"], (6, 8)),
    ("reference", "accum_param { have_reference: true }", ["a", "b", "r"], (13, 17)),
    ("divisible_already", "accum_param { size_divisible_by: 2 }", ["a", "b"], (6, 8)),
]


def _accum_inputs(batch: int):
    rng = seeded(6)
    return {"a": rng.standard_normal((batch, 2, 3, 4)).astype(F32),
            "b": rng.standard_normal((batch, 3, 6, 8)).astype(F32),
            "r": rng.standard_normal((batch, 1, 13, 17)).astype(F32)}


def _accum_net(cases, batch):
    used = {b for case in cases for b in case[2]}
    inputs = {k: v for k, v in _accum_inputs(batch).items() if k in used}  # OpenCV: no idle inputs
    text = _inputs_text({k: v.shape for k, v in inputs.items()})
    for name, param, bottoms, _ in cases:
        text += (f'layer {{ name: "{name}" type: "Accum" '
                 + " ".join(f'bottom: "{b}"' for b in bottoms) + f' top: "{name}" {param} }}\n')
    return text, inputs


def test_accum_matches_opencv(tmp_path) -> None:
    # batch 1: OpenCV concatenates whole blobs, which is the per-image layout only for one image
    text, inputs = _accum_net(ACCUM_OPENCV, 1)
    names = [c[0] for c in ACCUM_OPENCV]
    theirs = _opencv(text, inputs, names, tmp_path)
    ours = _ours(text, inputs, names)
    for name, _, bottoms, size in ACCUM_OPENCV:
        assert ours[name].shape[2:] == size, name
        assert rel_err(ours[name], theirs[name]) <= 1e-5, name


def test_accum_batch_of_one_bottom_matches_opencv(tmp_path) -> None:
    cases = [("up", "accum_param { top_height: 7 top_width: 9 }", ["a"], (7, 9))]
    text, inputs = _accum_net(cases, 3)
    theirs = _opencv(text, inputs, ["up"], tmp_path)["up"]
    ours = _ours(text, inputs, ["up"])["up"]
    assert rel_err(ours, theirs) <= 1e-5


@pytest.mark.parametrize("param,bottoms,size", [
    ("accum_param { top_height: 9 top_width: 11 }", "ab", (9, 11)),
    ("accum_param { top_height: 9 top_width: 8 }", "ab", (6, 8)),   # both must grow
    ("accum_param { size_divisible_by: 5 }", "ab", (10, 10)),       # the fork rounds up
    ("accum_param { size_divisible_by: 4 }", "ab", (6, 8)),         # 6 -> 8 but 8 stays: no
    ("accum_param { have_reference: true }", "abr", (13, 17)),
    ("", "ba", (6, 8)),
])
def test_accum_matches_the_forks_loops_with_a_batch(param, bottoms, size) -> None:
    inputs = _accum_inputs(2)
    xs = [inputs[k] for k in bottoms]
    (top,), _, _ = run_layer("Accum", param, xs)
    used = len(xs) - 1 if "have_reference" in param else len(xs)
    ref = accum_ref(xs, *size, used)
    assert to_numpy(top).shape == ref.shape
    assert rel_err(to_numpy(top), ref) <= 1e-6


def test_accum_size_divisible_by_departs_from_opencv(tmp_path) -> None:
    # OpenCV's ceil(int / int) floors, so it never enlarges; the fork rounds 6x8 up to 10x10.
    cases = [("div", "accum_param { size_divisible_by: 5 }", ["a", "b"], (10, 10))]
    text, inputs = _accum_net(cases, 1)
    theirs = _opencv(text, inputs, ["div"], tmp_path)["div"]
    ours = _ours(text, inputs, ["div"])["div"]
    assert theirs.shape[2:] == (6, 8) and ours.shape[2:] == (10, 10)


# ----------------------------------------------------------------------------------------------
# FlowWarp
# ----------------------------------------------------------------------------------------------

def _warp_inputs(seed=7, n=2, c=3, h=6, w=7):
    rng = seeded(seed)
    img = rng.standard_normal((n, c, h, w)).astype(F32)
    flow = rng.uniform(-3, 3, (n, 2, h, w)).astype(F32)
    # the borders exactly: onto x = 0, just below 0, onto the last column and row, into
    # [W-1, W) (the right neighbour clamps), exactly W (outside), whole-pixel moves, NaN
    xs = np.arange(w, dtype=F32)[None, :]
    ys = np.arange(h, dtype=F32)[:, None]
    flow[0, 0, 0] = -xs[0]                        # row 0 lands on x = 0
    flow[0, 0, 1] = -xs[0] - F32(1e-6)            # just left of the image
    flow[0, 0, 2] = F32(w - 1) - xs[0]            # onto the last column
    flow[0, 0, 3] = F32(w - 1) + F32(0.5) - xs[0]  # between the last column and the edge
    flow[0, 0, 4] = F32(w) - xs[0]                # exactly the right edge: outside
    flow[1, 1, :, 0] = F32(h - 1) + F32(0.25) - ys[:, 0]
    flow[1, 1, :, 1] = F32(h) - ys[:, 0]
    flow[1, :, 2, 2:4] = np.round(flow[1, :, 2, 2:4])
    flow[1, 0, 5, 5] = np.nan
    return img, flow


@pytest.mark.parametrize("nan_fill", [False, True], ids=["zero", "nan"])
def test_flow_warp_matches_the_forks_loops_bit_for_bit(nan_fill) -> None:
    img, flow = _warp_inputs()
    text = "flow_warp_param { fill_value: NOT_A_NUMBER }" if nan_fill else ""
    (top,), _, _ = run_layer("FlowWarp", text, [img, flow])
    ref = flow_warp_ref(img, flow, nan_fill)
    np.testing.assert_array_equal(to_numpy(top), ref)
    assert np.isnan(ref).any() == nan_fill


def test_flow_warp_matches_opencv(tmp_path) -> None:
    img, flow = _warp_inputs(seed=8, n=2, c=4, h=9, w=10)
    flow[1, 0, 5, 5] = 0  # OpenCV's own loop would also fill, but keep its input finite
    text = _inputs_text({"img": img.shape, "flow": flow.shape}) + (
        'layer { name: "warp" type: "FlowWarp" bottom: "img" bottom: "flow" top: "warp" }\n')
    theirs = _opencv(text, {"img": img, "flow": flow}, ["warp"], tmp_path)["warp"]
    ours = _ours(text, {"img": img, "flow": flow}, ["warp"])["warp"]
    assert rel_err(ours, theirs) <= 1e-6
    np.testing.assert_array_equal(ours == 0, theirs == 0)


def test_flow_warp_gradients_are_the_forks() -> None:
    img, flow = _warp_inputs(seed=9)
    flow[1, 0, 5, 5] = 0.3
    (top,), _, ts = run_layer("FlowWarp", "", [img, flow], grad=True)
    diff = seeded(10).standard_normal(top.shape).astype(F32)
    top.backward(torch.from_numpy(diff))
    gi, gf = flow_warp_backward_ref(img, flow, diff)
    np.testing.assert_allclose(to_numpy(ts[0].grad), gi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(ts[1].grad), gf, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Resample
# ----------------------------------------------------------------------------------------------

RESAMPLE_FORK = [
    ("LINEAR", True, (10, 12)), ("LINEAR", True, (3, 4)), ("LINEAR", False, (3, 4)),
    ("LINEAR", True, (7, 4)), ("LINEAR", True, (11, 6)),     # unequal ratios (the x/y swap)
    ("CUBIC", True, (10, 12)), ("CUBIC", True, (4, 3)), ("CUBIC", False, (4, 3)),
    ("NEAREST", True, (10, 12)), ("NEAREST", True, (3, 4)), ("NEAREST", True, (5, 6)),
    ("LINEAR", True, (5, 6)),
]


@pytest.mark.parametrize("kind,aa,size", RESAMPLE_FORK)
def test_resample_matches_the_forks_kernel(kind, aa, size) -> None:
    x = seeded(11).standard_normal((2, 3, 5, 6)).astype(F32)
    text = (f"resample_param {{ height: {size[0]} width: {size[1]} type: {kind} "
            f"antialias: {str(aa).lower()} }}")
    (top,), _, _ = run_layer("Resample", text, [x])
    assert rel_err(to_numpy(top), resample_ref(x, *size, kind, aa)) <= 2e-6


def test_resample_size_from_the_second_bottom() -> None:
    x = seeded(12).standard_normal((1, 2, 8, 9)).astype(F32)
    ref_blob = np.zeros((1, 1, 4, 5), F32)
    (top,), _, _ = run_layer("Resample", "resample_param { type: LINEAR }", [x, ref_blob])
    assert rel_err(to_numpy(top), resample_ref(x, 4, 5, "LINEAR", True)) <= 2e-6


def test_resample_matches_opencv_where_they_agree(tmp_path) -> None:
    # NEAREST enlargement by whole factors and unchanged sizes: the fork and OpenCV's Resize
    # pick the same pixels; OpenCV's LINEAR samples at dst * in / out (not the fork's grid).
    x = seeded(13).standard_normal((2, 3, 4, 5)).astype(F32)
    cases = [("n2", "height: 8 width: 10 type: NEAREST"), ("n3", "height: 12 width: 15 "
             "type: NEAREST"), ("n23", "height: 8 width: 15 type: NEAREST"),
             ("same", "height: 4 width: 5 type: LINEAR")]
    text = _inputs_text({"x": x.shape}) + "".join(
        f'layer {{ name: "{n}" type: "Resample" bottom: "x" top: "{n}" '
        f'resample_param {{ {p} }} }}\n' for n, p in cases)
    names = [c[0] for c in cases]
    theirs = _opencv(text, {"x": x}, names, tmp_path)
    ours = _ours(text, {"x": x}, names)
    for name in names:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_resample_is_differentiable() -> None:
    x = seeded(14).standard_normal((1, 2, 5, 6)).astype(F32)
    (top,), _, ts = run_layer("Resample", "resample_param { height: 3 width: 4 }", [x],
                              grad=True)
    top.sum().backward()
    assert ts[0].grad is not None and float(ts[0].grad.abs().sum()) > 0
    # a linear map: the gradient of the sum is the column sums of the weights, >= 0 here
    assert float(ts[0].grad.min()) >= 0


# ----------------------------------------------------------------------------------------------
# DataAugmentation (TEST)
# ----------------------------------------------------------------------------------------------

def _augmentation_net(param: str, shape) -> str:
    return _inputs_text({"img": shape}) + (
        'layer { name: "aug" type: "DataAugmentation" bottom: "img" top: "aug" '
        f"augmentation_param {{ {param} }} }}\n")


def _augmentation_blobs(shape, iteration, seed=15):
    rng = seeded(seed)
    c, h, w = shape[1:]
    return [np.array([iteration], F32).reshape(1, 1, 1, 1),
            rng.uniform(0, 1, (1, c, h, w)).astype(F32),
            rng.uniform(0, 1, (1, c, 1, 1)).astype(F32)]


def _augmentation_layer(param: str, shape, blobs, tmp_path):
    from landmarknet.params import load_weights
    net = build_net(parse_net(_augmentation_net(param, shape), path="aug.prototxt"))
    model = tmp_path / "aug.caffemodel"
    model.write_bytes(wire.encode_caffemodel([("aug", "DataAugmentation", blobs)]))
    load_weights(net, model, strict=True)
    return net


def augmentation_ref(x, blobs, recompute, per_pixel):
    """data_augmentation_layer.cu's TEST path without cropping: count + 1, the running mean
    while the count is at most recompute_mean, then the subtraction; returns (top, blobs)."""
    count, mean, chan = float(blobs[0].reshape(-1)[0]) + 1, blobs[1].copy(), blobs[2].copy()
    if count <= recompute:
        mean = mean * F32(count - 1)
        for item in x:
            mean = mean + item[None] * (F32(1) / F32(len(x)))
        mean = mean * (F32(1) / F32(count))
        chan = (mean.sum(axis=(2, 3), keepdims=True, dtype=np.float64)
                * (1 / (mean.shape[2] * mean.shape[3]))).astype(F32)
    top = x - (mean if per_pixel else chan)
    return top, [np.array([count], F32).reshape(1, 1, 1, 1), mean, chan]


@pytest.mark.parametrize("per_pixel", [False, True])
def test_augmentation_subtracts_the_stored_mean(per_pixel, tmp_path) -> None:
    shape = (2, 3, 4, 5)
    param = (f"max_multiplier: 1 augment_during_test: false recompute_mean: 1000 "
             f"mean_per_pixel: {str(per_pixel).lower()}")
    blobs = _augmentation_blobs(shape, 1000.0)  # count 1001 > 1000: the mean is final
    net = _augmentation_layer(param, shape, blobs, tmp_path)
    x = seeded(16).standard_normal(shape).astype(F32)
    with torch.no_grad():
        out = to_numpy(net(torch.from_numpy(x))["aug"])
    np.testing.assert_array_equal(out, x - (blobs[1] if per_pixel else blobs[2]))
    np.testing.assert_array_equal(to_numpy(net.aug.data_mean), blobs[1])


@pytest.mark.parametrize("per_pixel", [False, True])
def test_augmentation_running_mean_while_counting(per_pixel, tmp_path) -> None:
    # a stored count of 998 with recompute_mean 1000: the next two forwards fold their batch
    # into the stored mean (the layer's state changes, as in Caffe), the third does not
    shape = (2, 3, 4, 5)
    param = f"recompute_mean: 1000 mean_per_pixel: {str(per_pixel).lower()}"
    blobs = _augmentation_blobs(shape, 998.0)
    net = _augmentation_layer(param, shape, blobs, tmp_path)
    rng = seeded(21)
    for step in range(3):
        x = rng.standard_normal(shape).astype(F32)
        with torch.no_grad():
            out = to_numpy(net(torch.from_numpy(x))["aug"])
        ref, blobs = augmentation_ref(x, blobs, 1000, per_pixel)
        assert rel_err(out, ref) <= 1e-6, step
        assert float(net.aug.iteration) == (999, 1000, 1000)[step]
        np.testing.assert_allclose(to_numpy(net.aug.channel_mean), blobs[2], rtol=1e-6,
                                   atol=1e-7)


def test_augmentation_matches_opencv(tmp_path) -> None:
    # OpenCV restarts its count at each forward: it computes the fork's first forward from a
    # stored count of 0, the input's own channel means subtracted (one image: OpenCV writes
    # only the first image of a batch).
    shape = (1, 3, 4, 5)
    x = seeded(17).standard_normal(shape).astype(F32)
    blobs = _augmentation_blobs(shape, 0.0)
    param = "recompute_mean: 1000 mean_per_pixel: false"
    model = wire.encode_caffemodel([("aug", "DataAugmentation", blobs)])
    theirs = _opencv(_augmentation_net(param, shape), {"img": x}, ["aug"], tmp_path,
                     model)["aug"]
    net = _augmentation_layer(param, shape, blobs, tmp_path)
    with torch.no_grad():
        ours = to_numpy(net(torch.from_numpy(x))["aug"])
    assert rel_err(ours, theirs) <= 1e-5
    assert rel_err(ours, augmentation_ref(x, blobs, 1000, False)[0]) <= 1e-6


def test_augmentation_during_test_without_generators_only_subtracts(tmp_path) -> None:
    # FlowNet2's deploy nets: augment_during_test with a crop the size of the input and no
    # random generator. The fork then draws nothing (its coefficients stay at identity): the
    # same numbers as without the flags. OpenCV (which reads neither) agrees.
    shape = (1, 3, 4, 5)
    x = seeded(19).standard_normal(shape).astype(F32)
    blobs = _augmentation_blobs(shape, 0.0)
    plain = "recompute_mean: 1000 mean_per_pixel: false"
    flagged = plain + " augment_during_test: true crop_width: 5 crop_height: 4"
    outs = []
    for param in (plain, flagged):
        net = _augmentation_layer(param, shape, blobs, tmp_path)
        with torch.no_grad():
            outs.append(to_numpy(net(torch.from_numpy(x))["aug"]))
    np.testing.assert_array_equal(outs[0], outs[1])
    model = wire.encode_caffemodel([("aug", "DataAugmentation", blobs)])
    theirs = _opencv(_augmentation_net(flagged, shape), {"img": x}, ["aug"], tmp_path,
                     model)["aug"]
    assert rel_err(outs[1], theirs) <= 1e-5


def test_augmentation_prototxt_mean_and_identity() -> None:
    x = seeded(18).standard_normal((2, 3, 4, 5)).astype(F32)
    given = "mean: 0.25 mean: 0.5 mean: 0.75"
    got = _ours(_augmentation_net(given + " mean_per_pixel: false", x.shape), {"img": x},
                ["aug"])["aug"]
    np.testing.assert_array_equal(got, x - np.array([0.25, 0.5, 0.75], F32).reshape(1, 3, 1, 1))
    # mean_per_pixel defaults to true: the fork then ignores the three values (and at TEST the
    # random generators' settings)
    got = _ours(_augmentation_net(given + " translate { spread: 0.4 }", x.shape), {"img": x},
                ["aug"])["aug"]
    np.testing.assert_array_equal(got, x)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_,text,shapes,word", [
    ("Correlation", "correlation_param { kernel_size: 1 }", [(1, 2, 5, 5)] * 2,
     "max_displacement"),
    ("Correlation", "correlation_param { kernel_size: 2 max_displacement: 1 }",
     [(1, 2, 5, 5)] * 2, "kernel_size"),
    ("Correlation", "correlation_param { kernel_size: 1 max_displacement: 1 stride_2: 0 }",
     [(1, 2, 5, 5)] * 2, "stride_2"),
    ("Correlation", "correlation_param { kernel_size: 1 max_displacement: 1 }",
     [(1, 2, 5, 5), (1, 3, 5, 5)], "same shape"),
    ("Correlation", "correlation_param { kernel_size: 1 max_displacement: 4 }",
     [(1, 2, 5, 5)] * 2, "max_displacement"),
    ("Correlation", "correlation_param { kernel_size: 1 max_displacement: 1 }",
     [(1, 2, 5, 5)], "bottom"),
    ("Accum", "accum_param { have_reference: true }", [(1, 2, 5, 5)], "have_reference"),
    ("Accum", "", [(1, 2, 5, 5), (2, 2, 5, 5)], "batch"),
    ("FlowWarp", "", [(1, 3, 5, 5), (1, 3, 5, 5)], "2 channels"),
    ("FlowWarp", "", [(1, 3, 5, 5), (1, 2, 5, 6)], "differ"),
    ("Resample", "resample_param { width: 4 height: 4 type: AREA }", [(1, 3, 5, 5)], "AREA"),
    ("Resample", "resample_param { width: 4 }", [(1, 3, 5, 5)], "height"),
    ("Resample", "resample_param { factor: 2 type: LINEAR }", [(1, 3, 5, 5)], "factor"),
    ("Resample", "resample_param { width: 20 height: 2 type: NEAREST }", [(1, 3, 8, 5)],
     "outside"),
    ("DataAugmentation", "augmentation_param { augment_during_test: true crop_width: 5 "
     "crop_height: 5 translate { spread: 0.4 } }", [(1, 3, 5, 5)],
     "augment_during_test: true with translate"),
    ("DataAugmentation", "augmentation_param { crop_width: 4 crop_height: 4 }",
     [(1, 3, 5, 5)], "crop 4 x 4 of 5 x 5"),
    ("DataAugmentation", "augmentation_param { mean: 1 mean: 2 mean: 3 mean_per_pixel: false }",
     [(1, 4, 5, 5)], "3 values"),
])
def test_bad_layers_are_refused_naming_layer_and_field(type_, text, shapes, word) -> None:
    assert_bad_parameters_name_the_layer(type_, text, shapes, word)


def test_unknown_enum_value_is_a_prototxt_error() -> None:
    from landmarknet.errors import PrototxtError
    text = _inputs_text({"a": (1, 2, 5, 5), "b": (1, 2, 5, 5)}) + (
        'layer { name: "c" type: "Correlation" bottom: "a" bottom: "b" top: "c"\n'
        "  correlation_param { kernel_size: 1 max_displacement: 1 correlation_type: DIVIDE } }\n")
    with pytest.raises(PrototxtError, match="DIVIDE"):
        parse_net(text, path="bad.prototxt")


def test_augmentation_in_train_phase_and_two_tops_are_refused() -> None:
    from layers.checker import make_spec
    from landmarknet.layers.registry import converter_for
    spec = make_spec("DataAugmentation", "", [(1, 3, 5, 5)], name="aug")
    spec.phase = "train"
    with pytest.raises(LayerError, match="aug.*TEST"):
        converter_for(spec)(spec)
    assert_refused("DataAugmentation", "", [(1, 3, 5, 5)], n_tops=2, match="1 top")


# ----------------------------------------------------------------------------------------------
# a FlowNet-like net: two images -> conv -> Correlation -> conv -> Resample / FlowWarp
# ----------------------------------------------------------------------------------------------

FLOWNET_LIKE = """name: "flownet_like"
input: "img0"
input_shape { dim: 1 dim: 3 dim: 16 dim: 20 }
input: "img1"
input_shape { dim: 1 dim: 3 dim: 16 dim: 20 }
layer { name: "conv_a" type: "Convolution" bottom: "img0" top: "feat0"
  param { name: "conv_w" } param { name: "conv_b" }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv_b" type: "Convolution" bottom: "img1" top: "feat1"
  param { name: "conv_w" } param { name: "conv_b" }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu_a" type: "ReLU" bottom: "feat0" top: "feat0" }
layer { name: "relu_b" type: "ReLU" bottom: "feat1" top: "feat1" }
layer { name: "corr" type: "Correlation" bottom: "feat0" bottom: "feat1" top: "corr"
  correlation_param { pad: 4 kernel_size: 1 max_displacement: 4 stride_1: 1 stride_2: 2 } }
layer { name: "flow_lo" type: "Convolution" bottom: "corr" top: "flow_lo"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "flow" type: "Resample" bottom: "flow_lo" top: "flow"
  resample_param { width: 20 height: 16 type: NEAREST } }
layer { name: "warp" type: "FlowWarp" bottom: "img1" bottom: "flow" top: "warped" }
layer { name: "both" type: "Accum" bottom: "flow_lo" bottom: "warped" top: "both" }
"""


def test_flownet_like_net_matches_opencv(tmp_path) -> None:
    net = build_net(parse_net(FLOWNET_LIKE, path="flownet_like.prototxt"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    save_weights(net, tmp_path / "net.caffemodel", net.net_param)
    rng = seeded(19)
    inputs = {k: rng.standard_normal((1, 3, 16, 20)).astype(F32) for k in ("img0", "img1")}
    outputs = ["corr", "flow_lo", "flow", "warp", "both"]
    theirs = _opencv(FLOWNET_LIKE, inputs, outputs, tmp_path,
                     (tmp_path / "net.caffemodel").read_bytes())
    with torch.no_grad():
        ours = {k: to_numpy(v) for k, v in net.run_layers(
            {k: torch.from_numpy(v) for k, v in inputs.items()}, outputs).items()}
    assert ours["corr"].shape == (1, 25, 8, 10)  # (2 * 4 // 2 + 1)² displacements
    for name in ("corr", "flow"):
        assert rel_err(ours[name], theirs[name].reshape(ours[name].shape)) <= 1e-5, name
    # Downstream of the flow a float32 ulp in a flow value moves a sample by that much, times
    # the image's slope: the chain agrees to 1e-4, and FlowWarp itself, fed OpenCV's own flow,
    # gives OpenCV's warp (and Accum OpenCV's concatenation).
    for name in ("warp", "both"):
        assert rel_err(ours[name], theirs[name].reshape(ours[name].shape)) <= 1e-4, name
    (warped,), _, _ = run_layer("FlowWarp", "", [inputs["img1"], theirs["flow"]])
    assert rel_err(to_numpy(warped), theirs["warp"]) <= 1e-6
    (both,), _, _ = run_layer("Accum", "", [theirs["flow_lo"], theirs["warp"]])
    assert rel_err(to_numpy(both), theirs["both"]) <= 1e-6


# FlowNet2's deploy pattern around it: the TEST mean subtraction on both images first (with a
# TRAIN-only random generator that TEST ignores), the flow resized (LINEAR, antialiased) last
FLOWNET_DEPLOY_LIKE = """name: "flownet_deploy_like"
input: "img0"
input_shape { dim: 1 dim: 3 dim: 16 dim: 20 }
input: "img1"
input_shape { dim: 1 dim: 3 dim: 16 dim: 20 }
layer { name: "img0_aug" type: "DataAugmentation" bottom: "img0" top: "img0_aug"
  augmentation_param { max_multiplier: 1 augment_during_test: false recompute_mean: 1000
    mean_per_pixel: false translate { rand_type: "uniform_bernoulli" spread: 0.4 } } }
layer { name: "img1_aug" type: "DataAugmentation" bottom: "img1" top: "img1_aug"
  augmentation_param { max_multiplier: 1 augment_during_test: false recompute_mean: 1000
    mean_per_pixel: false } }
""" + FLOWNET_LIKE.split("\n", 5)[5].replace('bottom: "img0" top: "feat0"',
                                             'bottom: "img0_aug" top: "feat0"').replace(
    'bottom: "img1" top: "feat1"', 'bottom: "img1_aug" top: "feat1"') + """\
layer { name: "flow_out" type: "Resample" bottom: "flow" top: "flow_out"
  resample_param { width: 13 height: 11 type: LINEAR antialias: true } }
"""


def test_flownet_like_net_runs_from_the_command_line(tmp_path) -> None:
    proto = tmp_path / "flownet_deploy_like.prototxt"
    proto.write_text(FLOWNET_DEPLOY_LIKE)
    out = tmp_path / "blobs.npz"
    rng = seeded(20)
    feeds = []
    for name in ("img0", "img1"):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((1, 3, 16, 20)).astype(F32))
        feeds += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    proc = subprocess.run([sys.executable, "-m", "landmarknet.cli.main", "forward", str(proto),
                           "--random-weights", "1", "--output", str(out), *feeds],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as blobs:
        assert blobs["both"].shape == (1, 5, 16, 20)
        assert blobs["flow_out"].shape == (1, 2, 11, 13)
        assert np.isfinite(blobs["both"]).all() and np.isfinite(blobs["flow_out"]).all()


def test_flownet_like_net_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import landmarknet.export as export
    from landmarknet.params import randomize
    net = build_net(parse_net(FLOWNET_DEPLOY_LIKE, path="flownet_deploy_like.prototxt"))
    randomize(net, 1)
    net.eval()
    report = export.export_onnx(net, tmp_path / "net.onnx")  # checked in ONNX Runtime
    assert {c.name for c in report.checks} == {"both", "flow_out"}
    assert all(c.max_abs_diff <= 1e-4 * max(c.max_abs_ref, 1) for c in report.checks)
    # a layer still folding batches into its mean has state no ONNX graph can hold
    net.img1_aug.iteration.fill_(3)
    with pytest.raises(export.ExportError, match="img1_aug.*recompute_mean 1000"):
        export.export_onnx(net, tmp_path / "counting.onnx")


# the battery's checks (tests/layers/test_registry_battery.py) on the configurations its one
# config per type leaves out: standalone code and ONNX Runtime give the module's numbers
VARIANT_NETS = {
    "subtract": _inputs_text({"a": (1, 2, 6, 7), "b": (1, 2, 6, 7)})
    + 'layer { name: "x" type: "Correlation" bottom: "a" bottom: "b" top: "x" '
    + _corr_param(1, 1, 1, 1, 1, "correlation_type: SUBTRACT") + " }\n",
    "reference": _inputs_text({"a": (1, 2, 3, 4), "r": (1, 1, 6, 5)})
    + 'layer { name: "x" type: "Accum" bottom: "a" bottom: "r" top: "x" '
    "accum_param { have_reference: true } }\n",
    "divisible": _inputs_text({"a": (2, 2, 3, 4), "b": (2, 1, 6, 7)})
    + 'layer { name: "x" type: "Accum" bottom: "a" bottom: "b" top: "x" '
    "accum_param { size_divisible_by: 4 } }\n",
    "nan": _inputs_text({"data": (1, 2, 4, 5), "flow": (1, 2, 4, 5)})
    + 'layer { name: "x" type: "FlowWarp" bottom: "data" bottom: "flow" top: "x" '
    "flow_warp_param { fill_value: NOT_A_NUMBER } }\n",
    "nearest": _inputs_text({"data": (1, 2, 3, 4)})
    + 'layer { name: "x" type: "Resample" bottom: "data" top: "x" '
    "resample_param { width: 8 height: 6 type: NEAREST } }\n",
    "cubic_like": _inputs_text({"data": (1, 2, 4, 5), "ref": (1, 1, 7, 9)})
    + 'layer { name: "x" type: "Resample" bottom: "data" bottom: "ref" top: "x" '
    "resample_param { type: CUBIC } }\n",
    "per_pixel": _inputs_text({"data": (1, 3, 4, 5)})
    + 'layer { name: "x" type: "DataAugmentation" bottom: "data" top: "x" '
    "augmentation_param { recompute_mean: 10 mean_per_pixel: true } }\n",
    "proto_mean": _inputs_text({"data": (1, 3, 4, 5)})
    + 'layer { name: "x" type: "DataAugmentation" bottom: "data" top: "x" '
    "augmentation_param { mean: 0.4 mean: 0.5 mean: 0.6 mean_per_pixel: false } }\n",
}


@pytest.mark.parametrize("case", list(VARIANT_NETS))
def test_variants_emit_and_export(case, tmp_path) -> None:
    import importlib.util

    import landmarknet.export as export
    from landmarknet.emit import emit_python
    from landmarknet.params import randomize
    net = build_net(parse_net(VARIANT_NETS[case], path=f"{case}.prototxt"))
    randomize(net, 0)
    net.eval()
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(tuple(i.shape), generator=gen) for i in net.caffe_graph.inputs]
    with torch.no_grad():
        ours = net(*inputs)
    emit_python(net, tmp_path / "net.py")
    spec = importlib.util.spec_from_file_location(f"emitted_{case}", tmp_path / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net()
    model.load_state_dict(net.state_dict())
    with torch.no_grad():
        theirs = model.eval()(*inputs)
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-6, atol=1e-6,
                                   equal_nan=True)
    if importlib.util.find_spec("onnxruntime") is None:
        return
    export.export_onnx(net, tmp_path / "net.onnx", check=False)
    got = export.ort_outputs(tmp_path / "net.onnx",
                             {i.name: t.numpy() for i, t in zip(net.caffe_graph.inputs, inputs)})
    for name, value in ours.items():
        np.testing.assert_allclose(got[name], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_augmentation_mean_saved_at_another_size_is_adapted(tmp_path) -> None:
    # A FlowNet2 .caffemodel holds its per-pixel mean at the training crop's size; the fork's
    # adjust_blobs then takes each channel's mean over it and spreads it over the net's size.
    from landmarknet.params import load_weights
    shape = (1, 3, 4, 5)
    rng = seeded(20)
    saved = [np.array([2000.0], F32).reshape(1, 1, 1, 1),
             rng.uniform(0, 1, (1, 3, 6, 8)).astype(F32),
             rng.uniform(0, 1, (1, 3, 1, 1)).astype(F32)]
    channel_means = saved[1].reshape(3, -1).mean(axis=1, dtype=np.float64).astype(F32)
    net = build_net(parse_net(_augmentation_net("recompute_mean: 1000", shape),
                              path="aug.prototxt"))
    model = tmp_path / "aug.caffemodel"
    model.write_bytes(wire.encode_caffemodel([("aug", "DataAugmentation", saved)]))
    report = load_weights(net, model, strict=True)
    assert any("aug[1]: [1, 3, 6, 8] -> [1, 3, 4, 5] (adapted" in r for r in report.reshaped)
    np.testing.assert_array_equal(to_numpy(net.aug.data_mean),
                                  np.broadcast_to(channel_means.reshape(1, 3, 1, 1), shape))
    x = rng.standard_normal(shape).astype(F32)
    with torch.no_grad():
        out = to_numpy(net(torch.from_numpy(x))["aug"])
    np.testing.assert_array_equal(out, x - channel_means.reshape(1, 3, 1, 1))
    # other channel counts cannot be adapted: still a mismatch, as in Caffe
    saved[1] = rng.uniform(0, 1, (1, 2, 6, 8)).astype(F32)
    model.write_bytes(wire.encode_caffemodel([("aug", "DataAugmentation", saved)]))
    with pytest.raises(WeightsError, match=r"aug\[1\]: file \[1, 2, 6, 8\], net \[1, 3, 4, 5\]"):
        load_weights(build_net(parse_net(_augmentation_net("recompute_mean: 1000", shape),
                                         path="aug.prototxt")), model, strict=True)


# ----------------------------------------------------------------------------------------------
# Correlation1D (DispNet) and ChannelNorm (FlowNet2's fusion net): numpy restatements of the
# fork's kernels (correlation_layer1d.cu, channel_norm_layer.cpp); OpenCV has neither layer.
# ----------------------------------------------------------------------------------------------

def correlation1d_ref(a, b, pad, k, md, s1, s2, direction, subtract=False):
    """CorrelateData / CorrelateDataSubtract of correlation_layer1d.cu on the zeroed copies
    padded in x only; x_shift -r (both ways) or 0 (right only)."""
    n, c, h, w = a.shape
    ra = np.zeros((n, h, w + 2 * pad, c), F32)
    rb = np.zeros_like(ra)
    ra[:, :, pad:pad + w] = a.transpose(0, 2, 3, 1)
    rb[:, :, pad:pad + w] = b.transpose(0, 2, 3, 1)
    r = (k - 1) // 2
    th = math.ceil((h - 2 * r) / s1)
    tw = math.ceil((w + 2 * pad - 2 * (md + r)) / s1)
    grid_r = md // s2
    gw = grid_r + 1 if direction else 2 * grid_r + 1
    x_shift = 0 if direction == 1 else -grid_r
    top = np.zeros((n, gw, th, tw), F32)
    for item in range(n):
        for y in range(th):
            for x in range(tw):
                x1, y1 = x * s1 + md, y * s1
                p1 = ra[item, y1:y1 + k, x1:x1 + k]
                for tc in range(gw):
                    s2o = (tc % gw + x_shift) * s2
                    p2 = rb[item, y1:y1 + k, x1 + s2o:x1 + s2o + k]
                    v = np.abs(p1 - p2) if subtract else p1 * p2
                    top[item, tc, y, x] = F32(v.astype(np.float64).sum()) / F32(k * k * c)
    return top


@pytest.mark.parametrize("pad,k,md,s1,s2,direction,subtract", [
    (4, 1, 4, 1, 1, 0, False), (4, 1, 4, 1, 2, 1, False), (3, 3, 2, 2, 1, 0, False),
    (2, 3, 2, 1, 2, 0, True), (0, 1, 3, 1, 1, 1, True), (5, 3, 4, 2, 2, 1, False)])
def test_correlation1d_matches_the_fork(pad, k, md, s1, s2, direction, subtract) -> None:
    rng = seeded(31)
    a = rng.standard_normal((2, 5, 7, 12)).astype(F32)
    b = rng.standard_normal((2, 5, 7, 12)).astype(F32)
    kind = "SUBTRACT" if subtract else "MULTIPLY"
    text = _inputs_text({"a": a.shape, "b": b.shape}) + (
        'layer { name: "c" type: "Correlation1D" bottom: "a" bottom: "b" top: "c"\n'
        f"  correlation_param {{ pad: {pad} kernel_size: {k} max_displacement: {md} "
        f"stride_1: {s1} stride_2: {s2} single_direction: {direction} "
        f"correlation_type: {kind} }} }}\n")
    got = _ours(text, {"a": a, "b": b}, ["c"])["c"]
    want = correlation1d_ref(a, b, pad, k, md, s1, s2, direction, subtract)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-6


def test_correlation1d_refuses_the_left_direction_and_bad_sizes() -> None:
    base = "correlation_param { kernel_size: 1 max_displacement: 2 pad: 2 %s }"
    assert_refused("Correlation1D", base % "single_direction: -1", [(1, 2, 4, 6)] * 2,
                   match="single_direction: -1")
    assert_refused("Correlation1D", base % "single_direction: 2", [(1, 2, 4, 6)] * 2,
                   match="-1, 0 or 1")
    assert_refused("Correlation1D", "correlation_param { kernel_size: 1 max_displacement: 9 }",
                   [(1, 2, 4, 6)] * 2, match="leaves no output")
    assert_refused("Correlation1D", base % "", [(1, 2, 4, 6), (1, 3, 4, 6)],
                   match="same channels")


def test_channel_norm_forward_and_the_forks_backward() -> None:
    rng = seeded(32)
    x = rng.standard_normal((2, 3, 4, 5)).astype(F32)
    x[0, :, 1, 2] = 0  # a zero vector: the fork's gradient there is 0 (norm + 1e-9)
    text = _inputs_text({"x": x.shape}) + (
        'layer { name: "n" type: "ChannelNorm" bottom: "x" top: "n" }\n')
    net = build_net(parse_net(text, path="net.prototxt"))
    t = torch.from_numpy(x).requires_grad_()
    out = net(x=t)["n"]
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(1, keepdims=True))
    assert out.shape == (2, 1, 4, 5)
    np.testing.assert_allclose(to_numpy(out), norm, rtol=1e-6)
    g = rng.standard_normal((2, 1, 4, 5)).astype(F32)
    out.backward(torch.from_numpy(g))
    want = g * x / (norm.astype(F32) + F32(1e-9))
    np.testing.assert_allclose(to_numpy(t.grad), want, rtol=1e-5, atol=1e-7)
    assert not to_numpy(t.grad)[0, :, 1, 2].any() and np.isfinite(to_numpy(t.grad)).all()
