"""Loss and metric layers (landmarknet/layers/loss.py) against independent references.

References: ``reference.numpy_caffe``, small numpy references written here from the C++
(MultinomialLogisticLoss, HingeLoss, InfogainLoss, the Caffe backward passes), hand-derived
literals, and the reference Caffe (tests marked caffe_ref).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landmarknet.errors import LayerError
from landmarknet.layers import converter_for
from layers.checker import (assert_close, assert_refused, layer_spec, run_layer, seeded,
                            with_kinks)
from reference import numpy_caffe as R

F32_TINY = float(np.finfo(np.float32).tiny)


def test_loss_layers_default_loss_weight() -> None:
    cases = [("EuclideanLoss", [(2, 3), (2, 3)], 1.0),
             ("SoftmaxWithLoss", [(2, 3), (2,)], 1.0),
             ("SigmoidCrossEntropyLoss", [(2, 3), (2, 3)], 1.0),
             ("HingeLoss", [(2, 3), (2,)], 1.0),
             ("MultinomialLogisticLoss", [(2, 3), (2,)], 1.0),
             ("InfogainLoss", [(2, 3), (2,), (1, 1, 3, 3)], 1.0),
             ("Accuracy", [(2, 3), (2,)], 0.0),
             ("ReLU", [(2, 3)], 0.0)]
    for type_, shapes, weight in cases:
        spec = layer_spec(type_, "", shapes)
        assert converter_for(spec)(spec).default_loss_weight == weight, type_


def test_euclidean_loss_value_and_gradient() -> None:
    rng = seeded(16)
    a = rng.normal(size=(4, 3, 2)).astype(np.float32)
    b = rng.normal(size=(4, 6)).astype(np.float32)  # same count per sample, other shape
    (loss,), _, (at, bt) = run_layer("EuclideanLoss", "", [a, b], grad=True)
    assert loss.shape == ()
    assert_close(loss, R.euclidean_loss(a.reshape(4, 6), b))
    loss.backward()
    assert_close(at.grad, (a.reshape(4, 6) - b).reshape(a.shape) / 4)
    assert_close(bt.grad, -(a.reshape(4, 6) - b) / 4)
    assert_refused("EuclideanLoss", "", [(4, 6), (4, 5)], match="same count")


def _norm_text(mode: str | None, normalize: bool | None, ignore: int | None) -> str:
    parts = []
    if mode is not None:
        parts.append(f"normalization: {mode}")
    if normalize is not None:
        parts.append(f"normalize: {str(normalize).lower()}")
    if ignore is not None:
        parts.append(f"ignore_label: {ignore}")
    return f"loss_param {{ {' '.join(parts)} }}" if parts else ""


NORMALIZATIONS = [(None, None), ("FULL", None), ("VALID", None), ("BATCH_SIZE", None),
                  ("NONE", None), (None, True), (None, False), ("FULL", False)]


@pytest.mark.parametrize("mode,normalize", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_with_loss_normalizations(mode, normalize, ignore) -> None:
    rng = seeded(17)
    x = rng.normal(0, 3, (3, 4, 2, 5)).astype(np.float32)
    label = rng.integers(0, 4, (3, 1, 2, 5)).astype(np.float32)
    text = _norm_text(mode, normalize, ignore)
    (loss, prob), _, (xt, _lt) = run_layer("SoftmaxWithLoss", text, [x, label], n_tops=2, grad=True)
    ref = R.softmax_with_loss(x, label, ignore_label=ignore, normalization=mode,
                              normalize=normalize)
    assert_close(loss, ref)
    assert_close(prob, R.softmax(x, axis=1))
    loss.backward()
    # softmax_loss_layer.cpp Backward: (prob - onehot) for counted positions, 0 for ignored,
    # divided by the same normaliser.
    p = R.softmax(x, axis=1).astype(np.float64)
    lab = label[:, 0].astype(np.int64)
    keep = np.ones_like(lab, bool) if ignore is None else lab != ignore
    onehot = np.moveaxis(np.eye(4)[lab], -1, 1)
    expected = (p - onehot) * keep[:, None]
    total = -np.log(np.maximum(np.take_along_axis(p, lab[:, None], 1)[:, 0], F32_TINY))[keep]
    normalizer = total.sum() / float(ref) if float(ref) else 1.0
    assert_close(xt.grad, expected / normalizer, rtol=1e-4, atol=1e-6)


def test_softmax_with_loss_normalizer_by_hand() -> None:
    # Two positions, one ignored: VALID divides by 1, FULL by 2, BATCH_SIZE by N = 1.
    x = np.zeros((1, 2, 2), np.float32)  # p = 0.5 everywhere
    label = np.array([[0, 5]], np.float32)
    for mode, norm in [("VALID", 1), ("FULL", 2), ("BATCH_SIZE", 1), ("NONE", 1)]:
        (loss,), _, _ = run_layer("SoftmaxWithLoss", _norm_text(mode, None, 5), [x, label])
        assert_close(loss, np.float32(math.log(2) / norm))
    # every position ignored: the normaliser is max(1, 0) and the loss 0
    (loss,), _, _ = run_layer("SoftmaxWithLoss", _norm_text(None, None, 5),
                              [x, np.full((1, 2), 5.0)])
    assert_close(loss, np.float32(0))


def test_softmax_with_loss_axis_and_underflow() -> None:
    rng = seeded(18)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    label = rng.integers(0, 4, (2, 3)).astype(np.float32)
    (loss,), _, _ = run_layer("SoftmaxWithLoss", "softmax_param { axis: 2 }", [x, label])
    assert_close(loss, R.softmax_with_loss(x, label, axis=2))
    # p[label] underflows: the value is clamped at FLT_MIN, the gradient stays (p - onehot).
    x = np.array([[0.0, 200.0]], np.float32)
    (loss,), _, (xt, _) = run_layer("SoftmaxWithLoss", "", [x, np.array([0.0], np.float32)],
                                    grad=True)
    assert_close(loss, np.float32(-math.log(F32_TINY)))
    loss.backward()
    assert_close(xt.grad, [[-1.0, 1.0]])


def test_softmax_with_loss_bad_label_count() -> None:
    assert_refused("SoftmaxWithLoss", "", [(2, 3, 4), (2, 3)], match="one label per prediction")
    assert_refused("SoftmaxWithLoss", "", [(2, 3), (2,)], n_tops=3, match="1 to 2 tops")


@pytest.mark.parametrize("mode,normalize", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, -1])
def test_sigmoid_cross_entropy_loss(mode, normalize, ignore) -> None:
    rng = seeded(19)
    x = with_kinks(rng, (3, 2, 4))
    x[0, 0, :2] = [40.0, -40.0]
    t = rng.integers(0, 2, x.shape).astype(np.float32)
    if ignore is not None:
        t.reshape(-1)[::5] = ignore
    text = _norm_text(mode, normalize, ignore)
    (loss,), _, (xt, _) = run_layer("SigmoidCrossEntropyLoss", text, [x, t], grad=True)
    ref = R.sigmoid_cross_entropy_loss(x, t, ignore_label=ignore, normalization=mode,
                                       normalize=normalize)
    assert_close(loss, ref)
    loss.backward()
    # sigmoid_cross_entropy_loss_layer.cpp Backward: (sigmoid(x) - t), 0 where ignored, / norm.
    keep = np.ones(x.shape, bool) if ignore is None else t != ignore
    default = "BATCH_SIZE"
    chosen = mode or ({True: "VALID", False: "BATCH_SIZE"}[normalize] if normalize is not None
                      else default)
    norm = {"FULL": x.size, "VALID": keep.sum(), "BATCH_SIZE": 3, "NONE": 1}[chosen]
    expected = (1 / (1 + np.exp(-x.astype(np.float64))) - t) * keep / max(norm, 1)
    assert_close(xt.grad, expected, rtol=1e-5, atol=1e-7)


def test_sigmoid_cross_entropy_default_is_batch_size() -> None:
    x = np.zeros((2, 3), np.float32)  # each element log(2)
    t = np.zeros((2, 3), np.float32)
    (loss,), _, _ = run_layer("SigmoidCrossEntropyLoss", "", [x, t])
    assert_close(loss, np.float32(6 * math.log(2) / 2))
    assert_refused("SigmoidCrossEntropyLoss", "", [(2, 3), (2, 4)], match="same count")


def test_multinomial_logistic_loss() -> None:
    rng = seeded(20)
    p = rng.uniform(0, 1, (4, 5, 1, 1)).astype(np.float32)
    p[1, 2] = 0.0  # clamped at kLOG_THRESHOLD = 1e-20
    label = np.array([0, 2, 4, 1], np.float32)
    (loss,), _, (pt, _) = run_layer("MultinomialLogisticLoss", "", [p, label], grad=True)
    chosen = p.reshape(4, 5)[np.arange(4), label.astype(int)].astype(np.float64)
    # multinomial_logistic_loss_layer.cpp: -sum log(max(p, 1e-20)) / num; gradient
    # -1 / max(p, 1e-20) / num at the label, 0 elsewhere.
    assert_close(loss, -np.log(np.maximum(chosen, 1e-20)).sum() / 4)
    loss.backward()
    expected = np.zeros((4, 5))
    expected[np.arange(4), label.astype(int)] = -1 / np.maximum(chosen, 1e-20) / 4
    assert_close(pt.grad.reshape(4, 5), expected, rtol=1e-5)
    assert_refused("MultinomialLogisticLoss", "", [(4, 5), (3,)], match="one label per sample")


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm: str) -> None:
    rng = seeded(21)
    x = rng.normal(0, 1.5, (4, 5)).astype(np.float32)
    label = np.array([0, 3, 4, 1], np.float32)
    text = "" if norm == "L1" else "hinge_loss_param { norm: L2 }"
    (loss,), _, (xt, _) = run_layer("HingeLoss", text, [x, label], grad=True)
    # hinge_loss_layer.cpp: diff = x with the label entry negated; max(0, 1 + diff);
    # L1: sum / num, L2: sum of squares / num. Backward: sign (L1) or 2*margin (L2), times
    # the sign flip at the label, / num.
    sign = np.ones((4, 5))
    sign[np.arange(4), label.astype(int)] = -1
    margin = np.maximum(0, 1 + sign * x)
    assert_close(loss, (margin.sum() if norm == "L1" else (margin ** 2).sum()) / 4)
    loss.backward()
    g = np.sign(margin) if norm == "L1" else 2 * margin
    assert_close(xt.grad, g * sign / 4)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("ignore", [None, 1])
def test_accuracy(top_k: int, ignore) -> None:
    rng = seeded(22)
    x = rng.integers(0, 3, (4, 5, 3)).astype(np.float32)  # ties included
    label = rng.integers(0, 5, (4, 3)).astype(np.float32)
    text = f"accuracy_param {{ top_k: {top_k}" + (f" ignore_label: {ignore}" if ignore is not None
                                                 else "") + " }"
    (acc, per_class), _, _ = run_layer("Accuracy", text, [x, label], n_tops=2)
    ref_acc, ref_pc = R.accuracy(x, label, top_k=top_k, ignore_label=ignore, per_class=True)
    assert_close(acc, ref_acc)
    assert_close(per_class, ref_pc)
    assert per_class.shape == (5,)


def test_accuracy_literals() -> None:
    # Ties count against: true class 0 scores 1, class 1 also 1 -> not top-1, but top-2.
    x = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], np.float32)
    label = np.array([0, 1], np.float32)
    (acc,), _, _ = run_layer("Accuracy", "", [x, label])
    assert_close(acc, np.float32(0.5))
    (acc,), _, _ = run_layer("Accuracy", "accuracy_param { top_k: 2 }", [x, label])
    assert_close(acc, np.float32(1.0))
    (acc,), _, _ = run_layer("Accuracy", "accuracy_param { ignore_label: 1 }", [x, label])
    assert_close(acc, np.float32(0.0))
    (acc,), _, _ = run_layer("Accuracy", "accuracy_param { ignore_label: 7 }",
                             [x, np.full(2, 7, np.float32)])
    assert_close(acc, np.float32(0.0))  # nothing counted -> 0
    assert_refused("Accuracy", "accuracy_param { top_k: 4 }", [(2, 3), (2,)], match="top_k")


# ----------------------------------------------------------------------------------------------
# InfogainLoss: a numpy restatement of the reference Caffe's infogain_loss_layer.cpp, and the
# reference Caffe itself
# ----------------------------------------------------------------------------------------------

_THRESHOLD = float(np.float32(1e-20))  # kLOG_THRESHOLD as Dtype


def _infogain_ref(p: np.ndarray, label: np.ndarray, h: np.ndarray, weight: float = 1.0):
    """Forward_cpu / Backward_cpu: loss = -sum_i sum_j H[l_i, j] log(max(p_ij, 1e-20)) / num
    (num = shape(0), dim = count / num); diff = -weight H[l_i, j] / max(p_ij, 1e-20) / num."""
    num = p.shape[0]
    flat = p.reshape(num, -1).astype(np.float64)
    dim = flat.shape[1]
    hm = h.reshape(dim, dim).astype(np.float64)
    loss, grad = 0.0, np.zeros_like(flat)
    for i in range(num):
        lab = int(label.reshape(-1)[i])  # static_cast<int>
        for j in range(dim):
            prob = max(flat[i, j], _THRESHOLD)
            loss -= hm[lab, j] * math.log(prob)
            grad[i, j] = -weight * hm[lab, j] / prob / num
    return loss / num, grad.reshape(p.shape)


def _write_blobproto(path, array: np.ndarray, legacy: bool) -> None:
    """H as Caffe's BlobProto (.binaryproto), with legacy 4-D fields or a shape message."""
    from landmarknet.caffe import caffe_pb2
    blob = caffe_pb2.BlobProto()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = array.shape
    else:
        blob.shape.dim.extend(array.shape)
    blob.data.extend(array.reshape(-1).tolist())
    path.write_bytes(blob.SerializeToString())


def _infogain_case(seed: int, n: int = 5, shape=(3, 2, 1)):
    rng = seeded(seed)
    dim = int(np.prod(shape))
    p = rng.dirichlet(np.ones(dim), size=n).astype(np.float32).reshape((n,) + shape)
    p.reshape(n, -1)[1, 2] = 0.0  # below the threshold: value and gradient use 1e-20
    label = rng.integers(0, dim, n).astype(np.float32) + 0.7  # truncated toward zero
    label[0] = dim - 1 + 0.5
    h = rng.uniform(0, 2, (1, 1, dim, dim)).astype(np.float32)
    return p, label, h


def test_infogain_loss_value_and_gradient_with_h_as_bottom() -> None:
    p, label, h = _infogain_case(50)
    (loss,), _, (pt, _, ht) = run_layer("InfogainLoss", "", [p, label, h], grad=True)
    assert loss.shape == ()
    want, grad = _infogain_ref(p, label, h)
    assert_close(loss, want, rtol=1e-6)
    loss.backward()
    assert_close(pt.grad, grad, rtol=1e-6)
    assert abs(float(pt.grad.reshape(5, -1)[1, 2])) > 1e15  # Caffe's -H / 1e-20 / N, no clamp
    assert ht.grad is None  # Caffe cannot back-propagate to H (nor to the labels)


@pytest.mark.parametrize("legacy", [True, False])
def test_infogain_loss_reads_h_from_a_binaryproto(tmp_path, legacy: bool) -> None:
    p, label, h = _infogain_case(51, n=4, shape=(6,))
    path = tmp_path / "H.binaryproto"
    _write_blobproto(path, h, legacy)
    (loss,), module, _ = run_layer(
        "InfogainLoss", f'infogain_loss_param {{ source: "{path}" }}', [p, label])
    assert_close(loss, _infogain_ref(p, label, h)[0], rtol=1e-6)
    assert "infogain" not in module.state_dict()  # no Caffe blob: never in a weights file


def test_infogain_source_beside_the_prototxt_and_missing(tmp_path, monkeypatch) -> None:
    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import read_net
    _, _, h = _infogain_case(52, shape=(3,))
    (tmp_path / "net").mkdir()
    _write_blobproto(tmp_path / "net" / "H.binaryproto", h, legacy=True)
    text = """input: "p" input_shape { dim: 2 dim: 3 }
input: "l" input_shape { dim: 2 }
layer { name: "ig" type: "InfogainLoss" bottom: "p" bottom: "l" top: "loss"
        infogain_loss_param { source: "H.binaryproto" } }
"""
    proto = tmp_path / "net" / "net.prototxt"
    proto.write_text(text)
    monkeypatch.chdir(tmp_path)  # not the prototxt's folder: found beside the prototxt
    net = build_net(read_net(proto))
    assert net.blob_shapes["loss"] == ()
    proto.write_text(text.replace("H.binaryproto", "missing/H2.binaryproto"))
    with pytest.raises(LayerError, match=r"layer 'ig'.*source 'missing/H2\.binaryproto': no "
                                         r"such file.*net\.prototxt:3"):
        build_net(read_net(proto))


def test_infogain_bad_inputs(tmp_path) -> None:
    three = [(2, 3), (2,), (1, 1, 3, 3)]
    assert_refused("InfogainLoss", "", [(2, 3), (2,)], match="infogain_loss_param.source is "
                                                             "required")
    assert_refused("InfogainLoss", "", [(2, 3), (2,), (3, 3)], match="(1, 1, K, K) with K = 3")
    assert_refused("InfogainLoss", "", [(2, 3), (2,), (1, 1, 4, 4)], match="K = 3")
    assert_refused("InfogainLoss", "", [(2, 3), (3,), (1, 1, 3, 3)], match="one label per")
    assert_refused("InfogainLoss", "", [(2, 3), (2, 2), (1, 1, 3, 3)], match="one label per")
    assert_refused("InfogainLoss", "", [(2, 3, 1, 1, 1), (2,), (1, 1, 3, 3)], match="5 axes")
    assert_refused("InfogainLoss", "infogain_loss_param { axis: 1 }", three,
                   match="infogain_loss_param.axis")
    assert_refused("InfogainLoss", "", three, n_tops=2, match="2 tops")
    bad = tmp_path / "H.txt"
    bad.write_text("not a blob\n")
    assert_refused("InfogainLoss", f'infogain_loss_param {{ source: "{bad}" }}',
                   [(2, 3), (2,)], match=f"{bad}' is not a BlobProto")
    # labels outside 0..K-1: Caffe reads past H; here a clear error where the values are known
    p, _, h = _infogain_case(53, n=2, shape=(3,))
    with pytest.raises(LayerError, match=r"layer 'l'.*label 1 is 3, outside 0\.\.2"):
        run_layer("InfogainLoss", "", [p, np.array([0, 3], np.float32), h])


def test_infogain_loss_param_fields_are_ignored_with_a_warning() -> None:
    p, label, h = _infogain_case(54, n=3, shape=(4,))
    with pytest.warns(UserWarning, match="normalization, ignore_label ignored"):
        (loss,), _, _ = run_layer("InfogainLoss", "loss_param { normalization: NONE "
                                  "ignore_label: 1 }", [p, label, h])
    assert_close(loss, _infogain_ref(p, label, h)[0], rtol=1e-6)  # still divided by N


INFOGAIN_NET = """
layer { name: "in" type: "Input" top: "data" top: "label" top: "H"
        input_param { shape { dim: 5 dim: 3 dim: 2 dim: 1 } shape { dim: 5 dim: 1 dim: 1 dim: 1 }
                      shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }
layer { name: "s" type: "Scale" bottom: "data" top: "p" scale_param { axis: 0 num_axes: 0 } }
layer { name: "split" type: "Split" bottom: "p" top: "p1" top: "p2" top: "p3" }
layer { name: "ig_file" type: "InfogainLoss" bottom: "p1" bottom: "label" top: "loss_file"
        loss_weight: 2 infogain_loss_param { source: "SOURCE" } }
layer { name: "ig_bottom" type: "InfogainLoss" bottom: "p2" bottom: "label" bottom: "H"
        top: "loss_bottom" loss_weight: 0 }
layer { name: "ig_norm" type: "InfogainLoss" bottom: "p3" bottom: "label" bottom: "H"
        top: "loss_norm" loss_weight: 0 loss_param { normalization: NONE ignore_label: 2 } }
"""


@pytest.mark.caffe_ref
def test_infogain_loss_matches_real_caffe(tmp_path) -> None:
    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import parse_net
    from reference.real_caffe import run_caffe

    # H from the file (its loss weighted 2, to check the gradient's scale) and H as a third
    # bottom (no diff asked of it: Caffe aborts on one); the Scale in front makes Caffe
    # back-propagate to p. loss_param's fields change nothing in this Caffe.
    p, label, h = _infogain_case(55)
    source = tmp_path / "H.binaryproto"
    _write_blobproto(source, h, legacy=True)
    text = INFOGAIN_NET.replace("SOURCE", str(source))
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    arrays = {"data": p, "label": label.reshape(5, 1, 1, 1), "H": h}
    meta, out = run_caffe("backward", {"prototxt": str(proto)}, arrays)
    ref = {n: (out[f"data{i}"], out[f"diff{i}"]) for i, n in enumerate(meta["blobs"])}
    p_caffe, gp_caffe = ref["p"]
    assert ref["loss_bottom"][0] == ref["loss_file"][0] == ref["loss_norm"][0]

    with pytest.warns(UserWarning, match="ignored"):
        net = build_net(parse_net(text), phase="train")
    feeds = {"label": torch.tensor(arrays["label"]), "H": torch.tensor(h)}
    # the Scale's weight is Caffe's random one: feed its top p directly to our layers
    pt = torch.tensor(p_caffe, requires_grad=True)
    losses = {}
    for name, bottoms in (("ig_file", (pt, feeds["label"])),
                          ("ig_bottom", (pt, feeds["label"], feeds["H"])),
                          ("ig_norm", (pt, feeds["label"], feeds["H"]))):
        losses[name] = net.get_submodule(name)(*bottoms)
    for name, top in (("ig_file", "loss_file"), ("ig_bottom", "loss_bottom"),
                      ("ig_norm", "loss_norm")):
        ours = float(losses[name].detach())
        assert abs(ours - float(ref[top][0])) <= 1e-6 * abs(float(ref[top][0])), name
    (2.0 * losses["ig_file"]).backward()
    close_rel = np.abs(pt.grad.numpy() - gp_caffe).max() / np.abs(gp_caffe).max()
    assert close_rel <= 1e-6, close_rel


def test_infogain_warns_when_bottom_0_holds_no_probabilities() -> None:
    # A net written for BVLC's final InfogainLoss (softmax inside) feeds raw scores: this
    # InfogainLoss (the reference Caffe's) would read them as probabilities. A Softmax in front
    # (seen through Split/Reshape/Flatten) is what the reference Caffe's nets have.
    import warnings

    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import parse_net
    head = ('input: "x" input_shape { dim: 4 dim: 3 }\ninput: "label" input_shape { dim: 4 }\n'
            'input: "H" input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" '
            'inner_product_param { num_output: 5 } }\n')
    loss = ('layer { name: "ig" type: "InfogainLoss" bottom: "%s" bottom: "label" bottom: "H" '
            'top: "loss" }\n')
    with pytest.warns(UserWarning, match="bottom 0 comes from InnerProduct layer 'fc'"):
        build_net(parse_net(head + loss % "fc", path="ig.prototxt"), phase="train")
    softmax = ('layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'
               'layer { name: "flat" type: "Flatten" bottom: "prob" top: "flat" }\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_net(parse_net(head + softmax + loss % "flat", path="ig.prototxt"), phase="train")
