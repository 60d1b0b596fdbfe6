"""FaceBoxes (sfzhang15/FaceBoxes) exactly as its own Caffe runs it.

The fork's PriorBox has SSD's fields but other C++ (densified 32/64 anchors, 21 boxes per cell for
3 min_size values, min_size boxes 1 px smaller); landmarknet reads a net as FaceBoxes' when a
location head needs it. References, by test:

* the priors: tests/reference/faceboxes_ref.py, a scalar re-implementation of the fork's C++
  (bit for bit), plus a few coordinates worked out by hand from that C++;
* the detections: the fork's DetectionOutput/bbox_util decoding and NMS are SSD's (checked by
  reading both sources), so the reference Caffe's DetectionOutput (SSD's) is fed our priors and
  our loc/conf through Input layers; the trunk's loc/conf against that Caffe with our weights;
* OpenCV 4.x: it refuses the net (its PriorBox is SSD's, so its DetectionOutput asserts); its run
  of the trunk gives SSD's priors, which is what landmarknet builds for a net with no head to
  tell (the trunk).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.layers.detection import PriorBox, aspect_ratio_list
from landmarknet.params import randomize, save_weights
from reference.faceboxes_ref import faceboxes_priors
from reference.real_caffe import caffe_forward, without_layers

F32 = np.float32
PRIORS = ["inception_a3_concat_mbox_priorbox", "conv3_2_mbox_priorbox", "conv4_2_mbox_priorbox"]
HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def build_quietly(source, **kwargs):
    """build_net, returning (net, messages of the warnings it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = build_net(source, **kwargs)
    return net, [str(w.message) for w in caught]


def layer_info(net, name: str):
    """The builder's LayerInfo of the layer named ``name``."""
    return next(i for i in net.layers.values() if i.node.name == name)


def reference_of(net, name: str) -> np.ndarray:
    """The fork reference's priors for PriorBox ``name`` of ``net``, from its prototxt fields."""
    info = layer_info(net, name)
    pb = info.node.param.prior_box_param
    feat, img = info.bottom_shapes
    return faceboxes_priors(feat[2:], img[2:], min_size=list(pb.min_size),
                            max_size=list(pb.max_size), aspect_ratio=list(pb.aspect_ratio),
                            flip=pb.flip, clip=pb.clip, variance=list(pb.variance),
                            step=pb.step if pb.HasField("step") else None, offset=pb.offset)


def assert_same_rows(got: np.ndarray, ref: np.ndarray) -> None:
    """Same rows, bit for bit, in the same order."""
    got, ref = got.reshape(-1, 7), ref.reshape(-1, 7)
    assert got.shape == ref.shape, f"{got.shape[0]} rows, reference {ref.shape[0]}"
    np.testing.assert_array_equal(got, ref)


def detection_prototxt(shapes: dict[str, tuple[int, ...]], params: str) -> str:
    """Input layers loc, conf, prior feeding one DetectionOutput (SSD's, in the reference)."""
    inputs = "".join(
        f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in shapes[n]) + " } } }\n" for n in ("loc", "conf", "prior"))
    return inputs + ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
                     f'bottom: "prior" top: "det" detection_output_param {{ {params} }} }}\n')


def zoo_detection_params(proto: Path) -> str:
    """The zoo net's detection_output_param block, as text."""
    block = re.search(r"detection_output_param\s*\{(.*?)\n  \}", proto.read_text(), re.S)
    return block.group(1)


@pytest.fixture(scope="module")
def zoo_net(zoo: Path):
    """The zoo FaceBoxes net at its own input_shape (1x3x640x480), random weights; warnings."""
    net, messages = build_quietly(zoo / "faceboxes" / "deploy.prototxt")
    randomize(net, 0)
    return net, messages


# ----------------------------------------------------------------------------------------------
# Reading the net: which PriorBox, and why
# ----------------------------------------------------------------------------------------------

def test_zoo_net_reads_faceboxes_priorbox_and_says_why(zoo_net) -> None:
    net, messages = zoo_net
    fb = [m for m in messages if "FaceBoxes" in m]
    assert len(fb) == 3, messages
    for name, message in zip(PRIORS, fb):
        assert f"layer '{name}'" in message
        assert "'inception_a3_concat_mbox_loc'" in message
        assert "21 boxes per cell" in message and "SSD's PriorBox makes 3" in message
    # 640x480 input: feature maps 20x15 (step 32), 10x8 (64), 5x4 (128).
    counts = {n: layer_info(net, n).top_shapes[0][2] // 4 for n in PRIORS}
    assert counts == {PRIORS[0]: 20 * 15 * 21, PRIORS[1]: 10 * 8, PRIORS[2]: 5 * 4}
    assert all(net.get_submodule(layer_info(net, n).node.module).faceboxes for n in PRIORS)
    assert net.blob_shapes["mbox_priorbox"] == (1, 2, 4 * (6300 + 80 + 20))


def small_net(min_sizes: list[int], boxes: int, *, consumer: bool = True,
              second: tuple[list[int], int] | None = None) -> str:
    """An SSD head on an 8x8 map of a 128x128 image: PriorBox ``min_sizes``, a location head of
    ``boxes`` boxes per cell; optionally a second level (on a 4x4 map) and no DetectionOutput."""
    levels = [(min_sizes, boxes)] + ([second] if second else [])
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 '
            'dim: 3 dim: 128 dim: 128 } } }\n')
    locs, confs, priors = [], [], []
    for k, (sizes, n) in enumerate(levels):
        mins = " ".join(f"min_size: {m}" for m in sizes)
        stride = 16 * (k + 1)
        text += (
            f'layer {{ name: "feat{k}" type: "Convolution" bottom: "data" top: "feat{k}" '
            f'convolution_param {{ num_output: 4 kernel_size: {stride} stride: {stride} }} }}\n'
            f'layer {{ name: "loc{k}" type: "Convolution" bottom: "feat{k}" top: "loc{k}" '
            f'convolution_param {{ num_output: {4 * n} kernel_size: 1 }} }}\n'
            f'layer {{ name: "loc{k}_perm" type: "Permute" bottom: "loc{k}" top: "loc{k}_perm" '
            'permute_param { order: 0 order: 2 order: 3 order: 1 } }\n'
            f'layer {{ name: "loc{k}_flat" type: "Flatten" bottom: "loc{k}_perm" '
            f'top: "loc{k}_flat" }}\n'
            f'layer {{ name: "conf{k}" type: "Convolution" bottom: "feat{k}" top: "conf{k}" '
            f'convolution_param {{ num_output: {2 * n} kernel_size: 1 }} }}\n'
            f'layer {{ name: "conf{k}_flat" type: "Flatten" bottom: "conf{k}" '
            f'top: "conf{k}_flat" }}\n'
            f'layer {{ name: "prior{k}" type: "PriorBox" bottom: "feat{k}" bottom: "data" '
            f'top: "prior{k}" prior_box_param {{ {mins} variance: 0.1 variance: 0.1 '
            f'variance: 0.2 variance: 0.2 step: {stride} }} }}\n')
        locs.append(f"loc{k}_flat")
        confs.append(f"conf{k}_flat")
        priors.append(f"prior{k}")
    for name, blobs, axis in (("loc", locs, 1), ("conf", confs, 1), ("prior", priors, 2)):
        text += (f'layer {{ name: "{name}" type: "Concat" '
                 + " ".join(f'bottom: "{b}"' for b in blobs)
                 + f' top: "{name}" concat_param {{ axis: {axis} }} }}\n')
    if consumer:
        text += ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
                 'bottom: "prior" top: "det" detection_output_param { num_classes: 2 '
                 'code_type: CENTER_SIZE nms_param { nms_threshold: 0.3 } } }\n')
    return text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return path


def test_head_fitting_faceboxes_only_selects_faceboxes(tmp_path: Path) -> None:
    net, messages = build_quietly(write(tmp_path, small_net([32, 64, 128], 21)))
    assert net.get_submodule("prior0").faceboxes
    assert net.blob_shapes["prior0"] == (1, 2, 8 * 8 * 21 * 4)
    assert any("'loc0' of PriorBox 'prior0' predicts 21 boxes per cell" in m for m in messages)


def test_head_fitting_ssd_keeps_ssd_without_warning(tmp_path: Path) -> None:
    net, messages = build_quietly(write(tmp_path, small_net([32, 64, 128], 3)))
    assert not net.get_submodule("prior0").faceboxes
    assert net.blob_shapes["prior0"] == (1, 2, 8 * 8 * 3 * 4)
    assert not [m for m in messages if "FaceBoxes" in m]


def test_without_a_head_to_tell_the_priorbox_is_ssds(tmp_path: Path) -> None:
    # No DetectionOutput: nothing says which Caffe the file is for; the prototxt is SSD's.
    net, messages = build_quietly(write(tmp_path, small_net([32, 64, 128], 21, consumer=False)))
    assert not net.get_submodule("prior0").faceboxes
    assert not [m for m in messages if "FaceBoxes" in m]


def test_head_fitting_neither_names_both_counts(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match=r"'loc0' predicts 5 boxes per cell, but for these "
                                         r"fields SSD's PriorBox makes 3 and the PriorBox of "
                                         r"the FaceBoxes fork .* makes 21"):
        build_quietly(write(tmp_path, small_net([32, 64, 128], 5)))


def test_three_sizes_without_densified_ones_are_undefined_in_the_fork(tmp_path: Path) -> None:
    # The fork allocates 21 boxes for any 3 min_size values but writes 3 for 16/48/128.
    with pytest.raises(LayerError, match="allocates 21 but writes 3"):
        build_quietly(write(tmp_path, small_net([16, 48, 128], 21)))


def test_faceboxes_net_applies_the_fork_to_every_level(tmp_path: Path) -> None:
    net, messages = build_quietly(write(tmp_path, small_net([32, 64, 128], 21,
                                                            second=([100], 1))))
    assert net.get_submodule("prior1").faceboxes  # 1 box, but 1 px smaller: the fork's
    assert any("layer 'prior1'" in m and "'loc0' of PriorBox 'prior0'" in m for m in messages)
    # A lone min_size 32 makes 16 boxes in the fork but allocates 1: undefined, refused.
    with pytest.raises(LayerError, match="would allocate 1 boxes per cell .* but write 16"):
        build_quietly(write(tmp_path, small_net([32, 64, 128], 21, second=([32], 1))))


# ----------------------------------------------------------------------------------------------
# Priors against the fork's C++ (numpy reference)
# ----------------------------------------------------------------------------------------------

def test_zoo_priors_equal_the_fork_bit_for_bit(zoo_net) -> None:
    net, _ = zoo_net
    x = np.zeros((1, 3, 640, 480), F32)
    with torch.no_grad():
        got = {k: v.numpy() for k, v in net.run({"data": x}, blobs=PRIORS).items()}
    for name in PRIORS:
        ref = reference_of(net, name)
        assert got[name].shape == ref.shape
        np.testing.assert_array_equal(got[name], ref, err_msg=name)
    # Worked out by hand from the C++: cell (0, 0) of inception_a3 has its centre at (16, 16);
    # its first box is the 32-px one shifted by (-16, -16), half extent 15.5.
    first = got[PRIORS[0]][0, 0, :4]
    np.testing.assert_array_equal(first, F32([-15.5 / 480, -15.5 / 640, 15.5 / 480, 15.5 / 640]))
    # 17th box: the first 64-px one, shifted by (-16, -16), half extent 31.5.
    np.testing.assert_array_equal(got[PRIORS[0]][0, 0, 64:68],
                                  F32([-31.5 / 480, -31.5 / 640, 31.5 / 480, 31.5 / 640]))
    # 21st: the 128-px box at the centre, half extent 63.5 (SSD's would be 64).
    np.testing.assert_array_equal(got[PRIORS[0]][0, 0, 80:84],
                                  F32([-47.5 / 480, -47.5 / 640, 79.5 / 480, 79.5 / 640]))
    # Variances follow (0.1, 0.1, 0.2, 0.2) per box.
    np.testing.assert_array_equal(got[PRIORS[0]][0, 1, :8], F32([0.1, 0.1, 0.2, 0.2] * 2))


SYNTHETIC = {
    # name: (layer h, w, image h, w, reference fields)
    "truncated_sizes_computed_step_clip": (7, 9, 300, 500, dict(
        min_size=[32.9, 64.5, 128.0], clip=True, variance=[0.2], offset=0.3)),
    "three_sizes_with_max": (5, 6, 160, 192, dict(
        min_size=[32, 64, 100], max_size=[40, 80, 150], step_hw=(32.0, 31.5),
        variance=[0.1, 0.1, 0.2, 0.2])),
    "one_size_max_and_ratios": (4, 3, 100, 90, dict(
        min_size=[37], max_size=[71], aspect_ratio=[2.0, 3.0], flip=True, img_hw=(120, 110),
        clip=False, offset=0.5)),
}


@pytest.mark.parametrize("case", list(SYNTHETIC))
def test_fork_priors_on_other_fields(case: str) -> None:
    lh, lw, ih, iw, fields = SYNTHETIC[case]
    ref = faceboxes_priors((lh, lw), (ih, iw), **fields)
    pb = caffe_pb2.PriorBoxParameter(aspect_ratio=fields.get("aspect_ratio", []),
                                     flip=fields.get("flip", True))
    step = fields.get("step_hw")
    layer = PriorBox([float(F32(m)) for m in fields["min_size"]],
                     [float(m) for m in fields.get("max_size", [])],
                     aspect_ratio_list(pb), fields.get("clip", False),
                     [float(F32(v)) for v in fields.get("variance", [0.1])],
                     fields.get("img_hw"), step, fields.get("offset", 0.5), faceboxes=True)
    got = layer.priors(lh, lw, ih, iw)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    ssd = PriorBox(layer.min_sizes, layer.max_sizes, layer.aspect_ratios, layer.clip,
                   layer.variances, layer.img_hw, step, layer.offset).priors(lh, lw, ih, iw)
    assert ssd.shape != ref.shape or not np.array_equal(ssd, ref)  # the rules do differ


# ----------------------------------------------------------------------------------------------
# End to end against the reference Caffe
# ----------------------------------------------------------------------------------------------

@pytest.mark.caffe_ref
@pytest.mark.parametrize("shape", [(1, 3, 640, 480), (2, 3, 256, 320)],
                         ids=["own_640x480", "batch2_256x320"])
def test_zoo_detections_equal_caffe_detection_output(zoo: Path, tmp_path: Path,
                                                     shape: tuple[int, ...]) -> None:
    proto = zoo / "faceboxes" / "deploy.prototxt"
    net, _ = build_quietly(proto, input_shapes={"data": shape})
    randomize(net, 0)
    # Inputs of 0.1 keep the random heads of order one: distinct scores, finite boxes.
    x = np.random.default_rng(1).normal(0, 0.1, shape).astype(F32)
    with torch.no_grad():
        got = {k: v.numpy() for k, v in net.run({"data": x}, blobs=HEADS + PRIORS
                                                + ["detection_out"]).items()}
    ref_priors = np.concatenate([reference_of(net, n) for n in PRIORS], axis=2)
    np.testing.assert_array_equal(got["mbox_priorbox"], ref_priors)

    # The trunk (no DetectionOutput, whose SSD priors the fork's heads do not fit) in Caffe with
    # our weights: our locations and confidences are Caffe's.
    weights = tmp_path / "w.caffemodel"
    save_weights(net, weights)
    trunk = tmp_path / "trunk.prototxt"
    trunk.write_text(without_layers(proto.read_text(), "DetectionOutput"))
    _, caffe = caffe_forward(trunk, {"data": x}, weights=weights, blobs=HEADS[:2])
    for b in HEADS[:2]:
        scale = float(np.abs(caffe[b]).max())
        assert float(np.abs(got[b] - caffe[b]).max()) <= 1e-4 * scale, b

    # SSD-Caffe's DetectionOutput on our three bottoms gives our rows, bit for bit.
    det = tmp_path / "det.prototxt"
    det.write_text(detection_prototxt({n: got[b].shape for n, b in zip(("loc", "conf", "prior"),
                                                                        HEADS)},
                                      zoo_detection_params(proto)))
    _, ref = caffe_forward(det, dict(zip(("loc", "conf", "prior"), (got[b] for b in HEADS))),
                           blobs=["det"])
    rows = got["detection_out"].reshape(-1, 7)
    assert_same_rows(rows, ref["det"])
    # Not vacuous: many real detections per image, finite boxes, scores that mostly differ.
    assert np.isfinite(rows).all() and (rows[:, 1] == 1).all()
    assert len(rows) >= 100 * shape[0] and len(np.unique(rows[:, 2])) > 0.9 * len(rows)
    print(f"faceboxes {shape}: {len(rows)} rows equal to Caffe's DetectionOutput; priors "
          f"{ref_priors.shape[2] // 4} bit-exact")


# ----------------------------------------------------------------------------------------------
# OpenCV 4.x
# ----------------------------------------------------------------------------------------------

def test_opencv_refuses_faceboxes_and_runs_its_trunk_with_ssd_priors(zoo: Path, zoo_net,
                                                                     tmp_path: Path) -> None:
    from opencv_ref import OpenCVFailed, OpenCVUnavailable, run_opencv
    net, _ = zoo_net
    proto = zoo / "faceboxes" / "deploy.prototxt"
    weights = tmp_path / "w.caffemodel"
    save_weights(net, weights)
    x = np.random.default_rng(2).normal(0, 0.1, (1, 3, 640, 480)).astype(F32)
    try:
        with pytest.raises(OpenCVFailed, match=r"numPriors \* _numLocClasses \* 4"):
            run_opencv(proto, weights, {"data": x})
        trunk = tmp_path / "trunk.prototxt"
        trunk.write_text(without_layers(proto.read_text(), "DetectionOutput"))
        cv = run_opencv(trunk, weights, {"data": x}, HEADS)
    except OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    # OpenCV's priors are SSD's: 3 per cell on inception_a3, 1000 in all, as landmarknet builds
    # the trunk (no head says it is FaceBoxes').
    ssd_net, messages = build_quietly(trunk)
    assert not [m for m in messages if "FaceBoxes" in m]
    ssd_net.load_state_dict(net.state_dict())
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in ssd_net.run({"data": x}, blobs=HEADS).items()}
    assert cv["mbox_priorbox"].shape == ours["mbox_priorbox"].shape == (1, 2, 4000)
    np.testing.assert_allclose(cv["mbox_priorbox"], ours["mbox_priorbox"], rtol=0, atol=1e-6)
    for b in HEADS[:2]:
        scale = float(np.abs(cv[b]).max())
        assert float(np.abs(cv[b] - ours[b]).max()) <= 1e-4 * scale, b
