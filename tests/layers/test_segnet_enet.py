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


# ----------------------------------------------------------------------------------------------
# DeepLab v2's SegAccuracy (seg_accuracy_layer.cpp, util/confusion_matrix.cpp)
# ----------------------------------------------------------------------------------------------

def seg_accuracy_ref(batches, ignore: set[int], reset: bool, c: int) -> list[np.ndarray]:
    """The fork's loops: per pixel the top-1 pair (score, class) under std::greater, the
    confusion matrix (cleared per forward when reset), then accuracy(), avgRecall(false) and
    avgJaccard() in double."""
    m = np.zeros((c, c))
    outs = []
    for x, label in batches:
        if reset:
            m[:] = 0
        n, _, h, w = x.shape
        for i in range(n):
            for y in range(h):
                for z in range(w):
                    best = max((float(x[i, k, y, z]), k) for k in range(c))
                    gt = int(label[i, 0, y, z])
                    if gt in ignore:
                        continue
                    m[gt, best[1]] += 1
        total, diag = m.sum(), np.trace(m)
        acc = 0.0 if total == 0 else diag / total
        recalls = [m[k, k] / m[k].sum() for k in range(c) if m[k].sum() > 0]
        recall = 0.0 if not recalls else sum(recalls) / len(recalls)
        jac = 0.0
        for k in range(c):
            inter, union = m[k, k], m[k].sum() + m[:, k].sum() - m[k, k]
            jac += 1.0 if inter == union else inter / union
        outs.append(np.array([acc, recall, jac / c], np.float32))
    return outs


@pytest.mark.parametrize("reset", [True, False])
def test_seg_accuracy_matches_deeplab(reset) -> None:
    """Scores rounded to a coarse grid so that many pixels tie (the higher class wins), labels
    with the ignore value 255, a class that never occurs, and two forwards (kept or cleared)."""
    rng = seeded(91)
    c = 5
    batches = []
    for _ in range(2):
        x = np.round(rng.standard_normal((2, c, 4, 6)) * 2) / 2  # ties
        x[:, 4] = -10.0  # class 4: never predicted
        label = rng.integers(0, 4, (2, 1, 4, 6)).astype(np.float32)
        label[0, 0, :2] = 255
        batches.append((x.astype(np.float32), label))
    spec = layer_spec("SegAccuracy", f"seg_accuracy_param {{ ignore_label: 255 "
                      f"reset: {str(reset).lower()} }}", [(2, c, 4, 6), (2, 1, 4, 6)])
    built = converter_for(spec)(spec)
    assert built.top_shapes == [(1, 1, 1, 3)]
    want = seg_accuracy_ref(batches, {255}, reset, c)
    for (x, label), ref in zip(batches, want):
        got = built.module(torch.tensor(x), torch.tensor(label)).numpy()
        np.testing.assert_allclose(got.reshape(3), ref, rtol=1e-6)


def test_seg_accuracy_refusals() -> None:
    assert_refused("SegAccuracy", "", [(2, 3, 4, 4), (2, 2, 4, 4)], match="labels (N, 1, H, W)")
    spec = layer_spec("SegAccuracy", "", [(1, 3, 2, 2), (1, 1, 2, 2)])
    module = converter_for(spec)(spec).module
    with pytest.raises(Exception, match="label 7 is outside the 3 classes"):
        module(torch.zeros(1, 3, 2, 2), torch.full((1, 1, 2, 2), 7.0))
