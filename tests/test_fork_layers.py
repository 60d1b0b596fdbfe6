"""Fork layers of real-world Caffe nets, each against an independent reference.

References, per layer:
* the reference Caffe (brocolli 9.0.2, tests/reference/real_caffe.py): Upsample (one bottom,
  dims_num 3 and 4), MaxUnPool, ReLU6 (negative_slope, threshold), HardSwish, HardSigmoid, Pad,
  PixelShuffle; SegNet's two-bottom Upsample against brocolli's MaxUnPool of the same mask; the
  TSN BN-Inception zoo net with each ``BN`` rewritten as Caffe's own BatchNorm + Scale;
* OpenCV DNN 4.x (tests/opencv_ref.py): the zoo nets with ConvolutionDepthwise and
  DepthwiseConvolution; PSPNet with ``BN`` rewritten as BatchNorm + Scale (the reference Caffe
  has no Interp);
* numpy re-implementations of the forks' C++ (tests/reference/fork_ref.py): ConvolutionDepthwise,
  both BN families (TSN/PSPNet moving statistics in TEST, TRAIN and frozen; SegNet LEARN and
  INFERENCE), SegNet's unpooling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.prototxt import parse_net, read_net
from landmarknet.errors import LandmarknetError
from landmarknet.layers.bn import INV_STD, VARIANCE, set_bn_statistic
from landmarknet.params import randomize, save_weights
from opencv_ref import OpenCVUnavailable, run_opencv
from reference import fork_ref as R
from reference import numpy_caffe as N
from reference.compare import rel_err
from reference.real_caffe import caffe_forward

REL_TOL = 1e-4


def _net(text: str, **kw):
    return build_net(parse_net(text), **kw)


def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def _run(net, inputs: dict[str, np.ndarray], blobs: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net.run(inputs, blobs=blobs)
    return {k: v.numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# brocolli layers against the real Caffe
# ----------------------------------------------------------------------------------------------

BROCOLLI_NET = _input("data", (2, 12, 5, 7)) + """
layer { name: "flat" type: "Reshape" bottom: "data" top: "flat" reshape_param { shape { dim: 0 dim: 0 dim: -1 } } }
layer { name: "up4" type: "Upsample" bottom: "data" top: "up4" upsample_param { scale: 3 } }
layer { name: "up3" type: "Upsample" bottom: "flat" top: "up3" upsample_param { scale: 2 dims_num: 3 } }
layer { name: "pool_o" type: "Pooling" bottom: "data" top: "pool_o" top: "mask_o" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "unpool_o" type: "MaxUnPool" bottom: "pool_o" bottom: "mask_o" top: "unpool_o" max_unpool_param { dst_h: 5 dst_w: 7 } }
layer { name: "pool_p" type: "Pooling" bottom: "data" top: "pool_p" top: "mask_p" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "unpool_p" type: "MaxUnPool" bottom: "pool_p" bottom: "mask_p" top: "unpool_p" max_unpool_param { dst_h: 6 dst_w: 8 } }
layer { name: "r6" type: "ReLU6" bottom: "data" top: "r6" }
layer { name: "r6s" type: "ReLU6" bottom: "data" top: "r6s" relu6_param { negative_slope: 0.1 threshold: 0.75 } }
layer { name: "hsw" type: "HardSwish" bottom: "data" top: "hsw" }
layer { name: "hsg" type: "HardSigmoid" bottom: "data" top: "hsg" hardsigmoid_param { alpha: 0.3 beta: 0.4 } }
layer { name: "hsg0" type: "HardSigmoid" bottom: "data" top: "hsg0" }
layer { name: "padc" type: "Pad" bottom: "data" top: "padc" pad_param { pad_u: 1 pad_d: 2 pad_l: 3 pad_r: 0 pad_value: 1.5 } }
layer { name: "padr" type: "Pad" bottom: "data" top: "padr" pad_param { pad_type: REPLICATE pad_u: 2 pad_d: 1 pad_l: 1 pad_r: 3 } }
layer { name: "padf" type: "Pad" bottom: "data" top: "padf" pad_param { pad_type: REFLECT pad_u: 2 pad_d: 1 pad_l: 3 pad_r: 2 } }
layer { name: "padn" type: "Pad" bottom: "data" top: "padn" pad_param { pad_u: -1 pad_d: -2 pad_l: -1 pad_r: -3 } }
layer { name: "shuf" type: "PixelShuffle" bottom: "data" top: "shuf" pixelshuffle_param { upscale_factor: 2 } }
"""
BROCOLLI_BLOBS = ["up4", "up3", "unpool_o", "unpool_p", "r6", "r6s", "hsw", "hsg", "hsg0",
                  "padc", "padr", "padf", "padn", "shuf"]


@pytest.mark.caffe_ref
def test_brocolli_layers_match_real_caffe(tmp_path: Path) -> None:
    proto = tmp_path / "net.prototxt"
    proto.write_text(BROCOLLI_NET)
    rng = np.random.default_rng(0)
    # Values of order 4 reach both clips of ReLU6/HardSwish/HardSigmoid.
    x = rng.normal(0, 4, (2, 12, 5, 7)).astype(np.float32)
    _, ref = caffe_forward(proto, {"data": x}, blobs=BROCOLLI_BLOBS)
    ours = _run(_net(BROCOLLI_NET), {"data": x}, BROCOLLI_BLOBS)
    for name in BROCOLLI_BLOBS:
        assert ours[name].shape == ref[name].shape, name
        assert rel_err(ours[name], ref[name]) <= 1e-6, name
    assert (ref["r6s"] == 0.75).any() and (ref["r6s"] < 0).any()  # both branches exercised


SEGNET_UP = _input("data", (2, 3, 7, 9)) + """
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" upsample_param { scale: 2 pad_out_h: true pad_out_w: true } }
layer { name: "up_hw" type: "Upsample" bottom: "pool" bottom: "mask" top: "up_hw" upsample_param { upsample_h: 7 upsample_w: 9 } }
layer { name: "pool3" type: "Pooling" bottom: "data" top: "pool3" top: "mask3" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "up3" type: "Upsample" bottom: "pool3" bottom: "mask3" top: "up3" upsample_param { scale_h: 2 scale_w: 3 } }
"""
BROCOLLI_UNPOOL = _input("data", (2, 3, 7, 9)) + """
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "MaxUnPool" bottom: "pool" bottom: "mask" top: "up" max_unpool_param { dst_h: 7 dst_w: 9 } }
layer { name: "pool3" type: "Pooling" bottom: "data" top: "pool3" top: "mask3" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "up3" type: "MaxUnPool" bottom: "pool3" bottom: "mask3" top: "up3" max_unpool_param { dst_h: 6 dst_w: 12 } }
"""


@pytest.mark.caffe_ref
def test_segnet_upsample_matches_real_caffe_unpooling(tmp_path: Path) -> None:
    # SegNet's Upsample and brocolli's MaxUnPool run the same loop; only the output size rule
    # differs (scale * size - pad_out, or upsample_h/_w, against dst_h/dst_w).
    proto = tmp_path / "net.prototxt"
    proto.write_text(BROCOLLI_UNPOOL)
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 9)).astype(np.float32)
    _, ref = caffe_forward(proto, {"data": x}, blobs=["up", "up3"])
    ours = _run(_net(SEGNET_UP), {"data": x}, ["up", "up_hw", "up3"])
    np.testing.assert_array_equal(ours["up"], ref["up"])
    np.testing.assert_array_equal(ours["up_hw"], ref["up"])
    np.testing.assert_array_equal(ours["up3"], ref["up3"])


def test_segnet_upsample_numpy_and_gradient() -> None:
    net = _net(SEGNET_UP)
    x = np.random.default_rng(2).normal(size=(2, 3, 7, 9)).astype(np.float32)
    out = _run(net, {"data": x}, ["pool3", "mask3", "up3"])
    np.testing.assert_array_equal(out["up3"], R.segnet_upsample(out["pool3"], out["mask3"], 6, 12))
    # Backward as in upsample_layer.cpp: each input gets the top gradient at its mask position.
    pool = torch.tensor(out["pool3"], requires_grad=True)
    mod = net.get_submodule("up3")
    y = mod(pool, torch.tensor(out["mask3"]))
    g = torch.tensor(np.random.default_rng(3).normal(size=y.shape).astype(np.float32))
    y.backward(g)
    m = out["mask3"].reshape(2, 3, -1).astype(int)
    want = np.take_along_axis(g.numpy().reshape(2, 3, -1), m, axis=2).reshape(pool.shape)
    np.testing.assert_array_equal(pool.grad.numpy(), want)


def test_upsample_errors() -> None:
    with pytest.raises(LandmarknetError, match="pad_out_h needs a scale of 2"):
        _net(SEGNET_UP.replace("scale: 2 pad_out_h", "scale: 3 pad_out_h"))
    with pytest.raises(LandmarknetError, match="dims_num 3 needs a 3-D bottom"):
        _net(_input("d", (1, 2, 3, 4)) + 'layer { name: "u" type: "Upsample" bottom: "d" '
             'top: "u" upsample_param { dims_num: 3 } }')
    with pytest.raises(LandmarknetError, match="mix negative"):
        _net(_input("d", (1, 2, 3, 4)) + 'layer { name: "p" type: "Pad" bottom: "d" top: "p" '
             'pad_param { pad_u: -1 pad_l: 1 } }')


# ----------------------------------------------------------------------------------------------
# depthwise convolutions
# ----------------------------------------------------------------------------------------------

def test_convolution_depthwise_matches_fork_loops() -> None:
    text = _input("data", (2, 4, 9, 11)) + """
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 5 stride: 2 pad_h: 1 pad_w: 2 dilation: 2 } }
"""
    net = _net(text)
    randomize(net, 0)
    w = net.blob_tensor("dw", 0).detach().numpy()
    b = net.blob_tensor("dw", 1).detach().numpy()
    assert w.shape == (4, 1, 3, 5) and b.shape == (4,)
    x = np.random.default_rng(4).normal(size=(2, 4, 9, 11)).astype(np.float32)
    ours = _run(net, {"data": x}, ["dw"])["dw"]
    ref = R.conv_dw(x, w, b, (2, 2), (1, 2), (2, 2))
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-6


def test_depthwise_spellings_refuse_other_channel_counts() -> None:
    head = _input("data", (1, 4, 8, 8))
    with pytest.raises(LandmarknetError, match="num_output 8 differs"):
        _net(head + 'layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw" '
             'convolution_param { num_output: 8 kernel_size: 3 } }')
    with pytest.raises(LandmarknetError, match="group == num_output"):
        _net(head + 'layer { name: "dw" type: "DepthwiseConvolution" bottom: "data" top: "dw" '
             'convolution_param { num_output: 4 group: 2 kernel_size: 3 } }')


def _opencv_or_skip(*args, **kwargs):
    try:
        return run_opencv(*args, **kwargs)
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer is unavailable: {exc}")


def _producing_layer(net, blob: str) -> str:
    ssa = net.caffe_graph.latest[blob]
    return next(i.node.name for i in net.layers.values() if ssa in i.node.tops)


DEPTHWISE_ZOO = [
    ("mobilenetv2_yolov3/mobilenet_v2_yolov3.prototxt", {"data": (1, 3, 160, 160)}),
    ("dwconv_mobilenet/depthwised_mobilenet_deploy.prototxt", {"data": (1, 3, 128, 128)}),
]


def _depthwise_as_convolution(net, net_param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """The net with each depthwise spelling as Caffe's own grouped Convolution.

    What the forks compute (conv_dw_layer.cpp's loops; depthwise_conv_layer.cpp's CPU path is
    BaseConvolutionLayer's): group = num_output = the bottom's channels, same blobs. OpenCV 4.14
    knows neither DepthwiseConvolution nor the one-bottom Upsample of the same nets, and the
    reference Caffe lacks both depthwise types, so the reference runs this rewritten file.
    """
    channels = {info.node.name: info.bottom_shapes[0][1] for info in net.layers.values()}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer in out.layer:
        if layer.type in ("ConvolutionDepthwise", "DepthwiseConvolution"):
            layer.type = "Convolution"
            c = channels[layer.name]
            layer.convolution_param.num_output = c
            layer.convolution_param.group = c
    return out


@pytest.mark.slow
@pytest.mark.caffe_ref
@pytest.mark.parametrize("rel, shapes", DEPTHWISE_ZOO, ids=[d[0].split("/")[0] for d in DEPTHWISE_ZOO])
def test_depthwise_zoo_nets_match_real_caffe(zoo, tmp_path, rel, shapes) -> None:
    parsed = read_net(zoo / rel)
    net = build_net(parsed, input_shapes=shapes)
    randomize(net, seed=7)
    plain = _depthwise_as_convolution(net, parsed.net)
    proto = tmp_path / "plain.prototxt"
    proto.write_text(str(plain))
    weights = tmp_path / "net.caffemodel"
    save_weights(net, weights, plain)
    x = {k: np.random.default_rng(5).uniform(-1, 1, v).astype(np.float32) for k, v in shapes.items()}
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run(x).items()}
    _, ref = caffe_forward(proto, x, weights=weights, blobs=list(ours))
    assert ours
    for blob, value in ours.items():
        assert value.shape == ref[blob].shape, blob
        assert rel_err(value, ref[blob]) <= REL_TOL, blob


@pytest.mark.slow
def test_convolution_depthwise_reads_as_opencv_does(tmp_path) -> None:
    # OpenCV 4.x maps ConvolutionDepthwise to a grouped convolution: the same blobs give the same
    # numbers (Upsample, which OpenCV lacks, is left out of this net).
    text = _input("data", (1, 6, 12, 10)) + """
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 4 kernel_size: 1 } }
"""
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    net = _net(text)
    randomize(net, 3)
    weights = tmp_path / "net.caffemodel"
    save_weights(net, weights, parse_net(text).net)
    x = np.random.default_rng(9).normal(size=(1, 6, 12, 10)).astype(np.float32)
    ours = _run(net, {"data": x}, ["pw"])["pw"]
    ref = _opencv_or_skip(proto, weights, {"data": x}, ["pw"])["pw"]
    assert ours.shape == ref.shape and rel_err(ours, ref) <= REL_TOL


# ----------------------------------------------------------------------------------------------
# BN (TSN / PSPNet moving statistics; SegNet)
# ----------------------------------------------------------------------------------------------

def _bn_net(bn_param: str, n_tops: int = 1, phase: str = "test"):
    tops = "".join(f' top: "t{i}"' for i in range(1, n_tops))
    text = _input("data", (3, 4, 5, 6)) + (
        f'layer {{ name: "bn" type: "BN" bottom: "data" top: "y"{tops} bn_param {{ {bn_param} }} }}')
    return _net(text, phase=phase)


def _bn_blobs(net) -> list[np.ndarray]:
    return [net.blob_tensor("bn", i).detach().numpy().copy() for i in range(len(net.layers["bn"].blobs))]


@pytest.mark.parametrize("statistic", [INV_STD, VARIANCE])
@pytest.mark.parametrize("phase, frozen", [("test", False), ("train", False), ("train", True)])
def test_moving_statistics_bn_matches_fork(statistic, phase, frozen) -> None:
    net = _bn_net(f"frozen: {str(frozen).lower()} momentum: 0.95 eps: 1e-3", phase=phase)
    set_bn_statistic(net, statistic)
    randomize(net, 1)
    before = _bn_blobs(net)
    assert [b.shape for b in before] == [(1, 4)] * 4
    x = np.random.default_rng(6).normal(1.0, 2.0, (3, 4, 5, 6)).astype(np.float32)
    ours = _run(net, {"data": x}, ["y"])["y"]
    ref, after = R.moving_bn(x, before, eps=1e-3, momentum=0.95, train=phase == "train",
                             frozen=frozen, statistic=statistic)
    assert rel_err(ours, ref) <= 1e-5
    for got, want in zip(_bn_blobs(net), after):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if phase == "train" and not frozen:
        assert not np.allclose(after[3], before[3])  # the moving statistic did move


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_segnet_bn_matches_fork(mode) -> None:
    n_tops = 3 if mode == "LEARN" else 1
    net = _bn_net(f"bn_mode: {mode} scale_filler {{ type: 'constant' value: 1 }}", n_tops)
    randomize(net, 2)
    scale, shift = _bn_blobs(net)
    assert scale.shape == shift.shape == (1, 4, 1, 1)
    x = np.random.default_rng(7).normal(0.5, 1.5, (3, 4, 5, 6)).astype(np.float32)
    names = ["y", "t1", "t2"][:n_tops]
    ours = _run(net, {"data": x}, names)
    top, mean, var = R.segnet_bn(x, scale, shift, learn=mode == "LEARN")
    assert rel_err(ours["y"], top) <= 1e-5
    if mode == "LEARN":
        assert ours["t1"].shape == ours["t2"].shape == (1, 4, 1, 1)
        assert rel_err(ours["t1"], mean) <= 1e-5 and rel_err(ours["t2"], var) <= 1e-4


def test_bn_refuses_mixed_families() -> None:
    with pytest.raises(LandmarknetError, match="two different BN layers"):
        _bn_net("bn_mode: INFERENCE frozen: true")


def _bn_as_batchnorm_scale(net_param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """The same net with every BN layer as BVLC's BatchNorm (global stats) + Scale (bias)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        if layer.type != "BN":
            out.layer.add().CopyFrom(layer)
            continue
        norm = out.layer.add()
        norm.name, norm.type = layer.name, "BatchNorm"
        norm.bottom.extend(layer.bottom)
        norm.top.extend(layer.top)
        norm.batch_norm_param.use_global_stats = True
        norm.batch_norm_param.eps = layer.bn_param.eps
        scale = out.layer.add()
        scale.name, scale.type = layer.name + "_scale", "Scale"
        scale.bottom.extend(layer.top)
        scale.top.extend(layer.top)
        scale.scale_param.bias_term = True
    return out


def _equivalent_weights(bn_net, plain_net, statistic: str, eps_of: dict[str, float]) -> None:
    """Copy every blob to the BatchNorm + Scale net (variance from 1/std^2 - eps if needed)."""
    with torch.no_grad():
        for module, info in bn_net.layers.items():
            if info.node.type != "BN":
                for i in range(len(info.blobs)):
                    plain_net.blob_tensor(module, i).copy_(bn_net.blob_tensor(module, i))
                continue
            slope, bias, mean, stat = (bn_net.blob_tensor(module, i).reshape(-1) for i in range(4))
            eps = eps_of[info.node.name]
            var = stat if statistic == VARIANCE else 1.0 / stat.double() ** 2 - eps
            plain_net.blob_tensor(module, 0).copy_(mean)
            plain_net.blob_tensor(module, 1).copy_(var.float())
            plain_net.blob_tensor(module, 2).fill_(1.0)
            scale_mod = module + "_scale"
            plain_net.blob_tensor(scale_mod, 0).copy_(slope)
            plain_net.blob_tensor(scale_mod, 1).copy_(bias)


def _prepare_bn_zoo(zoo: Path, rel: str, shapes, statistic: str, tmp_path: Path):
    parsed = read_net(zoo / rel)
    net = build_net(parsed, input_shapes=shapes)
    assert set_bn_statistic(net, statistic) > 0
    randomize(net, seed=11)
    plain_param = _bn_as_batchnorm_scale(parsed.net)
    text = str(plain_param)
    proto = tmp_path / "plain.prototxt"
    proto.write_text(text)
    plain = build_net(parse_net(text), input_shapes=shapes)
    eps_of = {l.name: l.bn_param.eps for l in parsed.net.layer if l.type == "BN"}
    _equivalent_weights(net, plain, statistic, eps_of)
    weights = tmp_path / "plain.caffemodel"
    save_weights(plain, weights, plain_param)
    x = {k: np.random.default_rng(8).uniform(-1, 1, v).astype(np.float32) for k, v in shapes.items()}
    return net, proto, weights, x


@pytest.mark.slow
@pytest.mark.caffe_ref
def test_tsn_bn_inception_matches_real_caffe(zoo, tmp_path) -> None:
    shapes = {"data": (1, 3, 224, 224)}
    net, proto, weights, x = _prepare_bn_zoo(
        zoo, "tsn_bn_inception_rgb/tsn_bn_inception_rgb_deploy.prototxt", shapes, INV_STD,
        tmp_path)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run(x).items()}
    _, ref = caffe_forward(proto, x, weights=weights, blobs=list(ours))
    for blob, value in ours.items():
        assert value.shape == ref[blob].shape
        assert rel_err(value, ref[blob]) <= REL_TOL, blob


@pytest.mark.slow
def test_pspnet_bn_interp_matches_opencv(zoo, tmp_path) -> None:
    shapes = {"data": (1, 3, 473, 473)}
    net, proto, weights, x = _prepare_bn_zoo(
        zoo, "pspnet50_ade20k/pspnet50_ADE20K_473.prototxt", shapes, VARIANCE, tmp_path)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run(x).items()}
    ref = _opencv_or_skip(proto, weights, x, None, timeout=600)
    assert len(ours) == len(ref)
    for blob, value in ours.items():
        layer = blob if blob in ref else _producing_layer(net, blob)
        assert value.shape == ref[layer].shape
        assert np.isfinite(value).all()
        assert rel_err(value, ref[layer]) <= REL_TOL, blob


# ----------------------------------------------------------------------------------------------
# DenseImageData: a net input
# ----------------------------------------------------------------------------------------------

DENSE = """
layer { name: "data" type: "DenseImageData" top: "data" top: "label"
  dense_image_data_param { source: "/nonexistent/test.txt" batch_size: 2 %s } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
"""


@pytest.mark.parametrize("extra, transform, want", [
    ("crop_height: 12 crop_width: 16", "", (2, 3, 12, 16)),
    ("new_height: 20 new_width: 24 is_color: false", "", (2, 1, 20, 24)),
    ("new_height: 20 new_width: 24 crop_height: 12 crop_width: 16", "", (2, 3, 12, 16)),
    ("crop_height: 12 crop_width: 16", "transform_param { crop_size: 8 }", (2, 3, 8, 8)),
])
def test_dense_image_data_is_an_input(extra, transform, want) -> None:
    # dense_image_data_layer.cpp: crop_size, else crop_height/_width, else new_height/_width.
    text = DENSE % extra
    if transform:
        text = text.replace('top: "label"', 'top: "label" ' + transform)
    net = _net(text)
    inputs = {i.name: i.shape for i in net.caffe_graph.inputs}
    assert inputs == {"data": want, "label": (want[0], 1, *want[2:])}
    out = _run(net, {"data": np.ones(want, np.float32), "label": np.zeros(inputs["label"], np.float32)},
               ["conv"])
    assert out["conv"].shape == (2, 2, want[2] - 2, want[3] - 2)


def test_dense_image_data_without_sizes_asks_for_input_shape() -> None:
    with pytest.raises(LandmarknetError, match="--input-shape data="):
        _net(DENSE % "")
    net = _net(DENSE % "", input_shapes={"data": (1, 3, 10, 10), "label": (1, 1, 10, 10)})
    assert [i.name for i in net.caffe_graph.inputs] == ["data", "label"]
    with pytest.raises(LandmarknetError, match="set together"):
        _net(DENSE % "crop_height: 5")


# ----------------------------------------------------------------------------------------------
# DeepLab v2: ImageSegData (net inputs) and MatWrite (a sink that writes nothing here)
# ----------------------------------------------------------------------------------------------

SEG = """
layer { name: "data" type: "ImageSegData" %s
  include { phase: TEST }
  transform_param { mirror: false %s mean_value: 104 mean_value: 117 mean_value: 123 }
  image_data_param { source: "/nonexistent/val.txt" root_folder: "/nonexistent/" %s } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 dilation: 1 } }
layer { name: "up" type: "Interp" bottom: "score" top: "score_up" interp_param { zoom_factor: 2 } }
layer { name: "save_score" type: "MatWrite" bottom: "score_up" include { phase: TEST }
  mat_write_param { prefix: "/nonexistent/out/" source: "/nonexistent/ids.txt" strip: 0 period: 1 } }
layer { name: "quiet" type: "Silence" bottom: "label" bottom: "data_dim" include { phase: TEST } }
"""
SEG_TOPS = 'top: "data" top: "label" top: "data_dim"'


@pytest.mark.parametrize("transform, param, image", [
    ("crop_size: 9", "batch_size: 2 label_type: NONE", (2, 3, 9, 9)),
    ("crop_size: 9", "batch_size: 1 new_height: 20 new_width: 30 label_type: PIXEL", (1, 3, 9, 9)),
    ("", "batch_size: 3 new_height: 6 new_width: 8 is_color: false ignore_label: 255", (3, 1, 6, 8)),
])
def test_image_seg_data_is_three_inputs(transform, param, image) -> None:
    # image_seg_data_layer.cpp: image and a one-channel label map of crop_size (else the image
    # read at new_height x new_width), data_dim (N, 1, 1, 2) with each image's height and width
    with pytest.warns(UserWarning, match="save_score"):
        net = _net(SEG % (SEG_TOPS, transform, param))
    n, _, h, w = image
    assert {i.name: i.shape for i in net.caffe_graph.inputs} == {
        "data": image, "label": (n, 1, h, w), "data_dim": (n, 1, 1, 2)}


def test_image_seg_data_and_mat_write_forward_against_numpy() -> None:
    with pytest.warns(UserWarning) as record:
        net = _net(SEG % (SEG_TOPS, "crop_size: 9", "batch_size: 2 label_type: NONE"))
    text = " ".join(str(w.message) for w in record)
    # the warning names the layer and says that no .mat file is written
    assert "'save_score'" in text and ".mat" in text and "/nonexistent/out/" in text
    assert "MatWrite" in text
    randomize(net, 3)
    net.eval()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    inputs = {"data": x, "label": np.full((2, 1, 9, 9), 255, np.float32),
              "data_dim": np.full((2, 1, 1, 2), 9, np.float32)}
    # score_up is consumed by the sink, as in Caffe: no net output, asked for by name
    assert "score_up" not in net.caffe_graph.outputs()
    out = _run(net, inputs, ["score_up"])
    w = net.conv.weight.detach().numpy()
    b = net.conv.bias.detach().numpy()
    want = N.interp(N.convolution(x, w, b, pad=1), zoom_factor=2)
    assert out["score_up"].shape == (2, 4, 17, 17)
    assert rel_err(out["score_up"], want) <= REL_TOL


def test_image_seg_data_fewer_tops_and_refusals() -> None:
    # the fork's AutoTopBlobs: a prototxt may name only the image (and the label)
    text = SEG.replace('bottom: "label" bottom: "data_dim"', 'bottom: "label"')
    with pytest.warns(UserWarning, match="save_score"):
        net = _net(text % ('top: "data" top: "label"', "crop_size: 5", "batch_size: 1"))
    assert [i.name for i in net.caffe_graph.inputs] == ["data", "label"]
    with pytest.raises(LandmarknetError, match="--input-shape data="):
        _net(SEG % (SEG_TOPS, "", "batch_size: 1"))
    with pytest.raises(LandmarknetError, match="set together"):
        _net(SEG % (SEG_TOPS, "", "new_height: 5"))
    with pytest.raises(LandmarknetError, match="at most 3 tops"):
        _net(SEG % (SEG_TOPS + ' top: "weights"', "crop_size: 5", ""))
    with pytest.raises(LandmarknetError, match="mean_file"):
        _net(SEG.replace("mean_value: 104 mean_value: 117 mean_value: 123", "")
             % (SEG_TOPS, 'crop_size: 5 mean_file: "m.binaryproto"', ""))


@pytest.mark.parametrize("param, match", [
    ('mat_write_param { source: "ids.txt" }', "prefix is required"),
    ('mat_write_param { prefix: "out/" period: 0 }', "period must be positive"),
    ('mat_write_param { prefix: "out/" source: "ids.txt" strip: -1 }', "strip cannot be negative"),
    ('top: "t" mat_write_param { prefix: "out/" }', "has no tops"),
])
def test_mat_write_refuses_what_the_fork_refuses(param, match) -> None:
    text = _input("data", (1, 2, 3, 3)) + (
        f'layer {{ name: "save" type: "MatWrite" bottom: "data" {param} }}\n')
    with pytest.raises(LandmarknetError, match=match):
        _net(text)
