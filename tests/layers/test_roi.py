"""The R-CNN family's region pooling (landmarknet/layers/roi.py) against independent references.

References: ``reference.roi_ref`` (loop-for-loop restatements of caffe-fast-rcnn's and
caffe-rfcn's CPU Forward, and of their backward rules) and OpenCV 4.x DNN, which reads both
types from a Caffe prototxt, on a small Fast-R-CNN-like net and an R-FCN-like one.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.errors import LayerError
from landmarknet.params import save_weights
from layers.checker import (assert_bad_parameters_name_the_layer, assert_close, assert_refused,
                            run_layer, seeded, to_numpy)
from reference import roi_ref as R

# Regions on a 12 x 15 map at spatial_scale 1/16 (an image of about 192 x 240 pixels): inside,
# partly outside on every side, wholly outside (all bins empty or clipped to an edge), a 1-pixel
# region, a malformed one (x2 < x1), corners that land on .5 after scaling (8/16: C's round goes
# up where torch.round would go down), and both batch items.
ROIS_16 = np.array([
    [0, 0, 0, 239, 191],
    [1, 20.5, 30.2, 130.7, 100.1],
    [0, -50, -40, 60, 70],
    [1, 200, 150, 400, 300],
    [0, 300, 250, 500, 480],     # wholly outside, below right
    [1, -200, -100, -90, -30],   # wholly outside, above left
    [0, 77, 55, 77, 55],         # one pixel
    [1, 120, 90, 40, 20],        # x2 < x1, y2 < y1: the forks force 1 x 1
    [0, 8, 24, 40, 56],          # 8/16 = 0.5, 24/16 = 1.5, 40/16 = 2.5, 56/16 = 3.5
    [1, -8, -24, 232, 184],      # -0.5, -1.5: half away from zero
    [1, 0.4, 0.6, 15.9, 16.0],
], np.float32)
SCALE_16 = 1 / 16


def _map(shape, seed=0, ties=False) -> np.ndarray:
    x = seeded(seed).standard_normal(shape).astype(np.float32)
    if ties:  # ReLU'd and quantised: many equal maxima (zeros and repeated levels)
        x = np.maximum(np.round(x * 2) / 2, 0).astype(np.float32)
    return x


def _roi_text(ph: int, pw: int, scale: float) -> str:
    return f"roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} spatial_scale: {scale!r} }}"


def _psroi_text(dim: int, k: int, scale: float) -> str:
    return (f"psroi_pooling_param {{ spatial_scale: {scale!r} output_dim: {dim} "
            f"group_size: {k} }}")


# ----------------------------------------------------------------------------------------------
# ROIPooling
# ----------------------------------------------------------------------------------------------

ROI_CASES = [
    ("7x7 1/16", (2, 3, 12, 15), ROIS_16, 7, 7, SCALE_16),
    ("6x6 1/16", (2, 4, 12, 15), ROIS_16, 6, 6, SCALE_16),
    ("3x5 1/8", (2, 2, 24, 30), ROIS_16, 3, 5, 1 / 8),
    ("2x2 1", (2, 2, 9, 11), np.array([[0, 0, 0, 10, 8], [1, 3.5, 2.5, 5.5, 6.49], [1, 0, 0, 0, 0],
                                       [0, -1, 4, 20, 4]], np.float32), 2, 2, 1.0),
    ("4x3 0.3", (3, 2, 10, 10), np.array([[2, 1, 1, 25, 30], [0, 10, 0, 11, 33],
                                          [1, 5, 5, 5, 5]], np.float32), 4, 3, 0.3),
]


@pytest.mark.parametrize("case", ROI_CASES, ids=[c[0] for c in ROI_CASES])
def test_roi_pooling_matches_the_fork(case) -> None:
    _, shape, rois, ph, pw, scale = case
    x = _map(shape)
    (y,), _, _ = run_layer("ROIPooling", _roi_text(ph, pw, scale), [x, rois])
    ref, _ = R.roi_pooling(x, rois, ph, pw, scale)
    assert y.shape == (len(rois), shape[1], ph, pw)
    np.testing.assert_array_equal(to_numpy(y), ref)  # a maximum is a copy: exact


def test_roi_pooling_has_empty_bins_and_clipped_ones() -> None:
    # The cases above must really reach the edge rules the reference has: some bins empty (0),
    # and the wholly outside regions pooled from the clipped edge cells or empty.
    x = _map((2, 3, 12, 15))
    ref, arg = R.roi_pooling(x, ROIS_16, 7, 7, SCALE_16)
    assert (arg == -1).any() and (arg[:2] >= 0).all()
    assert (ref[5] == 0).all()  # above left of the map: every bin empty


def test_roi_pooling_accepts_regions_as_r_5_1_1() -> None:
    x = _map((2, 3, 12, 15))
    (y,), _, _ = run_layer("ROIPooling", _roi_text(7, 7, SCALE_16),
                           [x, ROIS_16.reshape(-1, 5, 1, 1)])
    np.testing.assert_array_equal(to_numpy(y), R.roi_pooling(x, ROIS_16, 7, 7, SCALE_16)[0])


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_roi_pooling_gradient_goes_to_the_first_maximum(ties: bool) -> None:
    x = _map((2, 3, 12, 15), seed=3, ties=ties)
    (y,), _, (xt, rt) = run_layer("ROIPooling", _roi_text(6, 6, SCALE_16), [x, ROIS_16],
                                  grad=True)
    top_diff = seeded(4).standard_normal(tuple(y.shape)).astype(np.float32)
    (y * torch.from_numpy(top_diff)).sum().backward()
    ref_top, arg = R.roi_pooling(x, ROIS_16, 6, 6, SCALE_16)
    np.testing.assert_array_equal(to_numpy(y), ref_top)
    ref = R.roi_pooling_backward(x.shape, ROIS_16, arg, top_diff)
    assert_close(xt.grad, ref.astype(np.float32), rtol=1e-5, atol=1e-5)
    assert rt.grad is None or not rt.grad.any()  # the regions get no gradient


# ----------------------------------------------------------------------------------------------
# PSROIPooling
# ----------------------------------------------------------------------------------------------

PSROI_CASES = [
    ("k7 d2 1/16", (2, 2 * 49, 12, 15), ROIS_16, 2, 7, SCALE_16),
    ("k3 d4 1/16", (2, 4 * 9, 12, 15), ROIS_16, 4, 3, SCALE_16),
    ("k3 d2 0.5", (2, 2 * 9, 9, 11), np.array([[0, 0, 0, 21, 17], [1, -0.5, 2.5, 6.5, 5.5],
                                               [1, 3, 3, 3, 3], [0, 15, 9, 4, 2],
                                               [0, -30, -30, -10, -10]], np.float32), 2, 3, 0.5),
    ("k2 d1 1", (1, 4, 5, 6), np.array([[0, 1, 1, 3, 2], [0, 0, 0, 10, 10]], np.float32),
     1, 2, 1.0),
]


@pytest.mark.parametrize("case", PSROI_CASES, ids=[c[0] for c in PSROI_CASES])
def test_psroi_pooling_matches_the_fork(case) -> None:
    _, shape, rois, dim, k, scale = case
    x = _map(shape, seed=1)
    (y,), _, _ = run_layer("PSROIPooling", _psroi_text(dim, k, scale), [x, rois])
    ref = R.psroi_pooling(x, rois, dim, k, scale)
    assert y.shape == (len(rois), dim, k, k)
    assert_close(y, ref, rtol=1e-5, atol=1e-6)
    # the same bins: a zero (empty) top exactly where the fork's is
    np.testing.assert_array_equal(to_numpy(y) == 0, ref == 0)


def test_psroi_pooling_reads_its_position_sensitive_channel() -> None:
    # Channel c filled with the constant c: bin (ph, pw) of output ctop must read channel
    # (ctop * k + ph) * k + pw, whatever the region.
    dim, k = 3, 3
    x = np.broadcast_to(np.arange(dim * k * k, dtype=np.float32)[None, :, None, None],
                        (1, dim * k * k, 9, 9)).copy()
    rois = np.array([[0, 0, 0, 8, 8], [0, 2, 1, 7, 6]], np.float32)
    (y,), _, _ = run_layer("PSROIPooling", _psroi_text(dim, k, 1.0), [x, rois])
    want = np.arange(dim * k * k, dtype=np.float32).reshape(dim, k, k)
    for r in range(2):
        np.testing.assert_array_equal(to_numpy(y[r]), want)


def test_psroi_pooling_gradient_spreads_over_the_bin() -> None:
    dim, k = 2, 3
    x = _map((2, dim * k * k, 12, 15), seed=5)
    (y,), _, (xt, _) = run_layer("PSROIPooling", _psroi_text(dim, k, SCALE_16), [x, ROIS_16],
                                 grad=True)
    top_diff = seeded(6).standard_normal(tuple(y.shape)).astype(np.float32)
    (y * torch.from_numpy(top_diff)).sum().backward()
    ref = R.psroi_pooling_backward(x.shape, ROIS_16, dim, k, SCALE_16, top_diff)
    assert_close(xt.grad, ref.astype(np.float32), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# bad input: a LayerError that names the layer
# ----------------------------------------------------------------------------------------------

BAD = [
    ("ROIPooling", _roi_text(7, 7, SCALE_16), [(1, 3, 8, 8), (4, 4)], "R x 5"),
    ("ROIPooling", _roi_text(7, 7, SCALE_16), [(1, 3, 8, 8), (4, 5, 2)], "R x 5"),
    ("ROIPooling", _roi_text(7, 7, SCALE_16), [(3, 8, 8), (4, 5)], "(N, C, H, W)"),
    ("ROIPooling", _roi_text(7, 7, SCALE_16), [(1, 3, 8, 8)], "bottom"),
    ("ROIPooling", "", [(1, 3, 8, 8), (4, 5)], "roi_pooling_param is missing"),
    ("ROIPooling", "roi_pooling_param { pooled_w: 7 }", [(1, 3, 8, 8), (4, 5)],
     "pooled_h is missing"),
    ("ROIPooling", "roi_pooling_param { pooled_h: 0 pooled_w: 7 }", [(1, 3, 8, 8), (4, 5)],
     "pooled_h must be > 0"),
    ("ROIPooling", _roi_text(2, 2, -1.0), [(1, 3, 8, 8), (4, 5)], "spatial_scale"),
    ("PSROIPooling", "", [(1, 18, 8, 8), (4, 5)], "psroi_pooling_param is missing"),
    ("PSROIPooling", "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 }",
     [(1, 18, 8, 8), (4, 5)], "group_size is missing"),
    ("PSROIPooling", "psroi_pooling_param { output_dim: 2 group_size: 3 }",
     [(1, 18, 8, 8), (4, 5)], "spatial_scale is missing"),
    ("PSROIPooling", _psroi_text(2, 0, 1.0), [(1, 18, 8, 8), (4, 5)], "must be > 0"),
    ("PSROIPooling", _psroi_text(2, 3, 1.0), [(1, 20, 8, 8), (4, 5)], "18 channels"),
    ("PSROIPooling", _psroi_text(2, 3, 1.0), [(1, 18, 8, 8), (4, 6)], "R x 5"),
]


@pytest.mark.parametrize("type_,text,shapes,word", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_layers_are_refused_by_name(type_, text, shapes, word) -> None:
    assert_refused(type_, text, shapes, match=word)
    assert_bad_parameters_name_the_layer(type_, text, shapes, word)


@pytest.mark.parametrize("type_,text,channels", [
    ("ROIPooling", _roi_text(2, 2, 1.0), 3), ("PSROIPooling", _psroi_text(1, 2, 1.0), 4)])
@pytest.mark.parametrize("index", [2.0, -1.0, 7.5])
def test_batch_index_out_of_range_names_the_layer(type_, text, channels, index) -> None:
    x = _map((2, channels, 6, 6))
    rois = np.array([[0, 0, 0, 4, 4], [index, 1, 1, 3, 3]], np.float32)
    with pytest.raises(LayerError, match=r"layer 'l'.*region 1 has batch index") as info:
        run_layer(type_, text, [x, rois])
    assert info.value.layer == "l"
    # -0.5 truncates to 0 as the forks' int cast does: accepted
    rois[1, 0] = -0.5
    run_layer(type_, text, [x, rois])


# ----------------------------------------------------------------------------------------------
# OpenCV 4.x DNN on a Fast-R-CNN-like and an R-FCN-like net (two Inputs)
# ----------------------------------------------------------------------------------------------

# Regions on a 12 x 16 map at spatial_scale 0.5: inside, partly outside, wholly outside, one
# pixel, malformed (x2 < x1), corners on .5 (-0.5, 2.5: C's round), and both batch items. OpenCV
# 4.x gives the forks' numbers on all of them (checked against the loop references too).
CV_ROIS = np.array([
    [0, 0, 0, 31, 23],
    [1, 3.2, 4.1, 20.7, 17.3],
    [0, -10, -7, 40, 30],
    [1, 20, 12, 80, 60],
    [0, -30, -30, -6, -6],
    [1, 6, 6, 6, 6],
    [0, 12, 7, 3, 2],
    [1, -0.5, 2.5, 6.5, 5.5],
], np.float32)
N_CV = len(CV_ROIS)

FAST_RCNN = """name: "fast_rcnn_like"
input: "data"
input_shape { dim: 2 dim: 3 dim: 24 dim: 32 }
input: "rois"
input_shape { dim: 8 dim: 5 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv1" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_h: 3 pooled_w: 3 spatial_scale: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 6 } }
"""

RFCN = """name: "rfcn_like"
input: "data"
input_shape { dim: 2 dim: 3 dim: 24 dim: 32 }
input: "rois"
input_shape { dim: 8 dim: 5 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 18 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "psroi" type: "PSROIPooling" bottom: "conv1" bottom: "rois" top: "psroi"
  psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 3 } }
layer { name: "score" type: "Pooling" bottom: "psroi" top: "score"
  pooling_param { pool: AVE global_pooling: true } }
"""


def _ours_and_opencv(text: str, outputs: list[str], tmp_path):
    cv = pytest.importorskip("opencv_ref")
    net = build_net(parse_net(text, path="net.prototxt"))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model = tmp_path / "net.caffemodel"
    save_weights(net, model, net.net_param)
    (tmp_path / "net.prototxt").write_text(text)
    data = _map((2, 3, 24, 32), seed=8)
    try:
        theirs = cv.run_opencv(tmp_path / "net.prototxt", model,
                               {"data": data, "rois": CV_ROIS}, outputs)
    except cv.OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    with torch.no_grad():
        ours = net.run_layers({"data": torch.from_numpy(data), "rois": torch.from_numpy(CV_ROIS)},
                              outputs)
    return {k: to_numpy(v) for k, v in ours.items()}, theirs, net


def test_fast_rcnn_like_net_matches_opencv(tmp_path) -> None:
    ours, theirs, net = _ours_and_opencv(FAST_RCNN, ["roi_pool", "fc"], tmp_path)
    assert ours["roi_pool"].shape == (N_CV, 4, 3, 3)
    assert theirs["roi_pool"].size == ours["roi_pool"].size and ours["roi_pool"].any()
    np.testing.assert_array_equal(ours["roi_pool"], theirs["roi_pool"].reshape(N_CV, 4, 3, 3))
    np.testing.assert_allclose(ours["fc"], theirs["fc"].reshape(N_CV, 6), rtol=1e-4, atol=1e-5)
    # and the fork's loops agree on the same feature map
    with torch.no_grad():
        conv = net.run_layers({"data": torch.from_numpy(_map((2, 3, 24, 32), seed=8)),
                               "rois": torch.from_numpy(CV_ROIS)}, ["relu1"])["relu1"]
    ref, _ = R.roi_pooling(to_numpy(conv), CV_ROIS, 3, 3, 0.5)
    np.testing.assert_array_equal(ours["roi_pool"], ref)


def test_rfcn_like_net_matches_opencv(tmp_path) -> None:
    ours, theirs, net = _ours_and_opencv(RFCN, ["psroi", "score"], tmp_path)
    assert ours["psroi"].shape == (N_CV, 2, 3, 3)
    assert theirs["psroi"].size == ours["psroi"].size and ours["psroi"].any()
    # OpenCV sums in float32 in the fork's order; ours sums in float64 (a summed-area table)
    np.testing.assert_allclose(ours["psroi"], theirs["psroi"].reshape(N_CV, 2, 3, 3),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours["psroi"] == 0,
                                  theirs["psroi"].reshape(ours["psroi"].shape) == 0)
    np.testing.assert_allclose(ours["score"], theirs["score"].reshape(N_CV, 2, 1, 1),
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        conv = net.run_layers({"data": torch.from_numpy(_map((2, 3, 24, 32), seed=8)),
                               "rois": torch.from_numpy(CV_ROIS)}, ["conv1"])["conv1"]
    ref = R.psroi_pooling(to_numpy(conv), CV_ROIS, 2, 3, 0.5)
    np.testing.assert_allclose(theirs["psroi"].reshape(ref.shape), ref, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# ONNX: landmarknet export feeds valid regions to its check (OnnxRule.example_input), and the
# traced graph bakes nothing of the traced regions in
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,out", [(FAST_RCNN, "fc"), (RFCN, "score")], ids=["roi", "psroi"])
def test_traced_net_gives_its_numbers_in_onnx_runtime(text, out, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    net = build_net(parse_net(text, path="net.prototxt")).eval()

    class Tops(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, data, rois):
            return self.net(data, rois)[out]

    data = torch.from_numpy(_map((2, 3, 24, 32), seed=9))
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():  # the tracer notes that the batch-index check is not traced
        warnings.simplefilter("ignore")
        torch.onnx.export(Tops(), (data, torch.from_numpy(CV_ROIS)), str(path), dynamo=False,
                          input_names=["data", "rois"], output_names=["out"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # other regions than the traced ones (same count): nothing of them is baked into the graph
    rois = CV_ROIS[::-1].copy()
    rois[:, 1:] += np.float32(3.7)
    rois[:, 0] = 1 - rois[:, 0]
    got = session.run(["out"], {"data": data.numpy(), "rois": rois})[0]
    with torch.no_grad():
        want = Tops()(data, torch.from_numpy(rois)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text", [FAST_RCNN, RFCN], ids=["roi", "psroi"])
def test_landmarknet_export_checks_the_net_on_valid_regions(text, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from landmarknet.export import export_onnx, random_inputs
    from landmarknet.params import randomize
    net = build_net(parse_net(text, path="net.prototxt"))
    randomize(net, 0)
    for batch in (None, 3):
        rois = random_inputs(net, seed=3, batch=batch)["rois"]
        images = 2 if batch is None else 3
        assert rois.shape == (8 if batch is None else 3, 5)
        assert set(np.unique(rois[:, 0])) <= set(range(images))
        # inside the 32 x 24 image the 16 x 12 map (scale 0.5) comes from, corners in order
        assert (rois[:, 1:] >= 0).all() and (rois[:, [1, 3]] <= 31).all()
        assert (rois[:, [2, 4]] <= 23).all()
        assert (rois[:, 3] >= rois[:, 1]).all() and (rois[:, 4] >= rois[:, 2]).all()
    rep = export_onnx(net, tmp_path / "net.onnx", dynamic_batch=True)
    assert rep.ok and rep.checks and rep.extra_checks, rep.render()
    assert all(c.max_abs_ref > 1e-3 for c in rep.checks)  # not a comparison of zeros
