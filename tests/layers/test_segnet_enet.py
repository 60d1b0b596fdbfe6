"""SegNet's and ENet's training nets: the class-weighted SoftmaxWithLoss and ENet's downsized
label maps.

Reference: numpy restatements of the forks' CPU code, alexgkendall/caffe-segnet (branch
segnet-cleaned) and TimoSaemann/caffe-enet, whose softmax_loss_layer.cpp are the same here:
loss = -sum over valid pixels of w[label] log(max(p[label], FLT_MIN)), divided by the count of
valid pixels (normalize: true, the forks' default) or by N (false); the gradient
(p - onehot) w[label] over the same divisor, zero on ignored pixels.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.layers import converter_for
from layers.checker import assert_refused, layer_spec, seeded
from reference.compare import rel_err

TOL = 1e-5
FLT_MIN = np.finfo(np.float32).tiny


def weighted_softmax_loss_ref(x: np.ndarray, label: np.ndarray, weights: np.ndarray,
                              ignore: int | None, normalize: bool):
    """softmax_loss_layer.cpp of SegNet/ENet with weight_by_label_freqs, in float64."""
    x = x.astype(np.float64)
    n, c = x.shape[:2]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    loss, count = 0.0, 0
    grad = prob.copy()
    for i in range(n):
        for idx in np.ndindex(*x.shape[2:]):
            lab = int(label[(i, 0) + idx])
            if ignore is not None and lab == ignore:
                grad[(i, slice(None)) + idx] = 0
                continue
            loss -= np.log(max(prob[(i, lab) + idx], FLT_MIN)) * weights[lab]
            grad[(i, lab) + idx] -= 1
            grad[(i, slice(None)) + idx] *= weights[lab]
            count += 1
    div = count if normalize else n
    return loss / div, grad / div


@pytest.mark.parametrize("ignore, normalize", [(None, True), (11, True), (11, False)])
def test_class_weighted_softmax_loss_matches_the_forks(ignore, normalize) -> None:
    """SegNet's CamVid weighting (12 classes, class 11 'unlabelled' ignored in SegNet's nets)."""
    rng = seeded(90)
    shape = (2, 12, 5, 6)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    label = rng.integers(0, 12, (2, 1, 5, 6)).astype(np.float32)
    weights = rng.uniform(0.1, 10.0, 12).astype(np.float32)
    text = ("loss_param { weight_by_label_freqs: true "
            + " ".join(f"class_weighting: {w!r}" for w in weights.tolist())
            + (f" ignore_label: {ignore}" if ignore is not None else "")
            + f" normalize: {str(normalize).lower()} }}")
    spec = layer_spec("SoftmaxWithLoss", text, [shape, label.shape])
    module = converter_for(spec)(spec).module
    tx = torch.tensor(x, requires_grad=True)
    loss = module(tx, torch.tensor(label))
    loss.backward()
    value, grad = weighted_softmax_loss_ref(x, label, weights.astype(np.float64), ignore,
                                            normalize)
    assert abs(float(loss.detach()) - value) <= TOL * abs(value)
    assert rel_err(tx.grad.numpy(), grad) <= TOL


def test_class_weighting_checks() -> None:
    shape = (2, 3, 4, 4)
    assert_refused("SoftmaxWithLoss", "loss_param { weight_by_label_freqs: true "
                   "class_weighting: 1 class_weighting: 2 }", [shape, (2, 1, 4, 4)],
                   match="one class_weighting value per class")
    spec = layer_spec("SoftmaxWithLoss", "loss_param { class_weighting: 1 class_weighting: 2 "
                      "class_weighting: 3 }", [shape, (2, 1, 4, 4)])
    with pytest.warns(UserWarning, match="ignored without weight_by_label_freqs"):
        module = converter_for(spec)(spec).module
    assert module.class_weights is None


def test_enet_encoder_label_is_divided(tmp_path) -> None:
    """ENet's encoder training net: DenseImageData with label_divide_factor 8 gives the label
    map at 1/8 of new_height x new_width (dense_image_data_layer.cpp), so the loss on the
    encoder's 1/8 output builds."""
    text = ('layer { name: "data" type: "DenseImageData" top: "data" top: "label" '
            'dense_image_data_param { source: "train.txt" batch_size: 2 shuffle: true '
            'new_height: 64 new_width: 96 label_divide_factor: 8 } }\n'
            'layer { name: "enc" type: "Convolution" bottom: "data" top: "enc" '
            'convolution_param { num_output: 5 kernel_size: 8 stride: 8 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "enc" bottom: "label" '
            'top: "loss" loss_param { weight_by_label_freqs: true class_weighting: 1 '
            'class_weighting: 2 class_weighting: 3 class_weighting: 4 class_weighting: 5 } }\n')
    path = tmp_path / "enet_train.prototxt"
    path.write_text(text)
    net = build_net(path, phase="train")
    assert {i.name: i.shape for i in net.caffe_graph.inputs} == \
        {"data": (2, 3, 64, 96), "label": (2, 1, 8, 12)}
