"""Whole real nets from the zoo against OpenCV DNN's Caffe importer (run in a subprocess).

For nets shipped without weights, seeded random weights of order one are written with our
.caffemodel writer and read by both sides. Outputs must agree within 1e-4 relative
(max abs difference / max abs reference).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import read_net
from landmarknet.models import MODELS_DIR
from landmarknet.params import load_weights, randomize, save_weights
from opencv_ref import OpenCVUnavailable, run_opencv

REL_TOL = 1e-4

# (folder/prototxt, caffemodel or None, input shapes, strict parsing)
DEPLOY_NETS = [
    ("mtcnn_det1/det1.prototxt", "mtcnn_det1/det1.caffemodel", {"data": (1, 3, 31, 43)}, True),
    ("mtcnn_det2/det2.prototxt", "mtcnn_det2/det2.caffemodel", {"data": (3, 3, 24, 24)}, True),
    ("mtcnn_det3/det3.prototxt", "mtcnn_det3/det3.caffemodel", {"data": (2, 3, 48, 48)}, True),
    ("caffe_onnx_test_tiny/test.prototxt", "caffe_onnx_test_tiny/test.caffemodel",
     {"data": (1, 3, 64, 64)}, True),
    ("ultraface_slim320/slim-320.prototxt", "ultraface_slim320/slim-320.caffemodel",
     {"input": (1, 3, 240, 320)}, True),
    ("squeezenet_v1.0/deploy.prototxt", None, {"data": (1, 3, 227, 227)}, True),
    ("squeezenet_v1.1/deploy.prototxt", None, {"data": (1, 3, 227, 227)}, True),
    ("bvlc_googlenet/deploy.prototxt", None, {"data": (1, 3, 224, 224)}, True),
    ("resnet_50/ResNet-50-deploy.prototxt", None, {"data": (1, 3, 224, 224)}, True),
    ("mobilenet_v1/mobilenet_deploy.prototxt", None, {"data": (1, 3, 224, 224)}, True),
    ("legacy_input_dim_caffenet/deploy.prototxt", None, {"data": (1, 3, 227, 227)}, True),
    ("legacy_v1_lenet/lenet.prototxt", None, {"data": (2, 1, 28, 28)}, True),
    ("mnist_lenet/lenet.prototxt", None, {"data": (2, 1, 28, 28)}, True),
    ("cifar10_quick/cifar10_quick.prototxt", None, {"data": (2, 3, 32, 32)}, True),
    ("hed/deploy.prototxt", None, {"data": (1, 3, 128, 160)}, True),
    ("openpose_face/pose_deploy.prototxt", None, {"image": (1, 3, 184, 184)}, True),
]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (0 when both are all zeros)."""
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ours.astype(np.float64) - ref).max())
    return diff / scale if scale else diff


def producing_layer(net, blob: str) -> str:
    """OpenCV names outputs by layer: the layer that last wrote ``blob``."""
    ssa = net.caffe_graph.latest[blob]
    for info in net.layers.values():
        if ssa in info.node.tops:
            return info.node.name
    raise KeyError(blob)


def opencv_or_skip(*args, **kwargs):
    try:
        return run_opencv(*args, **kwargs)
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer is unavailable: {exc}")


def compare_with_opencv(prototxt: Path, net, inputs: dict[str, np.ndarray], weights: Path):
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run(inputs).items()}
    # OpenCV names its outputs after the producing layer or, when it renames, after the blob.
    ref = opencv_or_skip(prototxt, weights, inputs, None)
    assert ours, "the net has no outputs"
    assert len(ref) == len(ours), (sorted(ours), sorted(ref))
    for blob in ours:
        layer = blob if blob in ref else producing_layer(net, blob)
        assert layer in ref, (blob, sorted(ref))
        assert ours[blob].shape == ref[layer].shape, (blob, ours[blob].shape, ref[layer].shape)
        err = rel_err(ours[blob], ref[layer])
        assert err <= REL_TOL, f"{prototxt.name}: output {blob}: relative error {err:.3g}"
    return ours


@pytest.mark.slow
@pytest.mark.parametrize("rel, model, shapes, strict", DEPLOY_NETS,
                         ids=[d[0].split("/")[0] for d in DEPLOY_NETS])
def test_deploy_net_matches_opencv(zoo, tmp_path, rel, model, shapes, strict):
    prototxt = zoo / rel
    net = build_net(prototxt, input_shapes=shapes, strict=strict)
    if model:
        weights = zoo / model
        report = load_weights(net, weights, strict=True)
        assert report.copied
    else:
        randomize(net, seed=7)
        weights = tmp_path / "net.caffemodel"
        save_weights(net, weights, read_net(prototxt, strict=strict).net)
    rng = np.random.default_rng(3)
    inputs = {k: rng.uniform(-1, 1, v).astype(np.float32) for k, v in shapes.items()}
    compare_with_opencv(prototxt, net, inputs, weights)


# train_val files: the TEST phase's logits equal OpenCV on the deploy file with the same weights,
# and the TRAIN phase's loss equals a softmax cross-entropy computed in numpy on those logits.
# The last column: does the file keep its Accuracy layers in TRAIN too? (SqueezeNet v1.1's
# file has the `include { phase: TEST }` of its accuracy layers commented out.)
TRAIN_VAL = [
    ("squeezenet_v1.0", "train_val.prototxt", "deploy.prototxt", "pool10", "loss", 227, 1000,
     False),
    ("squeezenet_v1.1", "train_val.prototxt", "deploy.prototxt", "pool10", "loss", 227, 1000,
     True),
    ("bvlc_googlenet", "train_val.prototxt", "deploy.prototxt", "loss3/classifier",
     "loss3/loss3", 224, 1000, False),
    ("mnist_lenet", "lenet_train_test.prototxt", "lenet.prototxt", "ip2", "loss", 28, 10, False),
    ("cifar10_quick", "cifar10_quick_train_test.prototxt", "cifar10_quick.prototxt", "ip2",
     "loss", 32, 10, False),
]


def _softmax_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    x = logits.reshape(logits.shape[0], -1).astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels.astype(int)].mean())


@pytest.mark.slow
@pytest.mark.parametrize("folder, train_val, deploy, logits, loss, size, classes, acc_in_train",
                         TRAIN_VAL, ids=[t[0] for t in TRAIN_VAL])
def test_train_val_both_phases(zoo, tmp_path, folder, train_val, deploy, logits, loss, size,
                               classes, acc_in_train):
    channels = 1 if folder == "mnist_lenet" else 3
    shapes = {"data": (2, channels, size, size), "label": (2,)}
    rng = np.random.default_rng(5)
    inputs = {"data": rng.uniform(-1, 1, shapes["data"]).astype(np.float32),
              "label": rng.integers(0, classes, 2).astype(np.float32)}

    test_net = build_net(zoo / folder / train_val, phase="test", input_shapes=shapes)
    assert not test_net.training
    randomize(test_net, seed=11)
    weights = tmp_path / "w.caffemodel"
    save_weights(test_net, weights)
    with torch.no_grad():
        ours = test_net.run(inputs, blobs=[logits])[logits].numpy()
    deploy_net = build_net(zoo / folder / deploy, input_shapes={"data": shapes["data"]})
    out_layer = producing_layer(deploy_net, logits)
    ref = opencv_or_skip(zoo / folder / deploy, weights, {"data": inputs["data"]},
                         [out_layer])[out_layer]
    assert rel_err(ours, ref) <= REL_TOL

    train_net = build_net(zoo / folder / train_val, phase="train", input_shapes=shapes)
    assert train_net.training
    report = load_weights(train_net, weights)
    assert not report.mismatched
    train_net.eval()  # dropout off, so the loss is a deterministic function of the logits
    with torch.no_grad():
        out = train_net.run(inputs)
    expected = _softmax_loss(ref, inputs["label"])
    assert float(out[loss]) == pytest.approx(expected, rel=1e-4)
    assert any(i.node.type == "Accuracy" for i in train_net.layers.values()) == acc_in_train
    assert any(i.node.type == "Accuracy" for i in test_net.layers.values())


# The shipped heatmap bundles (trained weights, BatchNorm included) against OpenCV DNN on a real
# face crop's value range. squeeze77 is not here: its Python layers are ours, OpenCV has none.
SHIPPED_HEATMAP = ["heatmap4_68_bn", "heatmap4_68", "heatmap4_5"]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", SHIPPED_HEATMAP)
def test_shipped_bundle_matches_opencv(bundle):
    folder = MODELS_DIR / bundle
    prototxt, weights = folder / "deploy.prototxt", folder / f"{bundle}.caffemodel"
    net = build_net(prototxt)
    load_weights(net, weights, strict=True)
    rng = np.random.default_rng(5)
    # normalised pixels ((x - 127.5) / 128) of a smooth random image, not white noise
    img = cv2.resize(rng.uniform(0, 255, (14, 14, 3)), (112, 112)).astype(np.float32)
    x = ((img - 127.5) / 128).transpose(2, 0, 1)[None].copy()
    compare_with_opencv(prototxt, net, {"data": x}, weights)
