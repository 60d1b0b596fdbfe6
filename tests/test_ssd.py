"""SSD detection heads (PriorBox, Normalize, Permute, DetectionOutput) against the real SSD Caffe.

The reference is the SSD-based Caffe fork built by ``make caffe-ref`` (brocolli-caffe 9.0.2),
run in a subprocess (tests/reference/real_caffe.py). What is compared:

* the SSD nets of the zoo, with seeded random weights written by that Caffe: every row of
  ``detection_out`` (image, label, score, box) and the order of the rows. Random weights make
  many confidences tie exactly, so the order depends on the C++'s sorts: ``std::stable_sort`` in
  NMS and GCC's (unstable) ``std::sort`` in the keep_top_k step, which landmarknet reproduces.
  Our DetectionOutput is also fed Caffe's own bottoms and must then give Caffe's rows bit for bit.
* small nets of our own (Input layers feeding a DetectionOutput, PriorBox, Normalize, Permute)
  for each field and edge case, again against that Caffe.

Where the reference cannot run a case, the test says which reference it uses instead:
RefineDet's 5-bottom DetectionOutput (the fork lacks ``objectness_score`` and allows 4 bottoms)
is checked by composing it from two runs of the real Caffe's 3-bottom layer; OpenCV's ``clip``
field (no SSD Caffe has it) is checked against OpenCV DNN; SSD's semantics without ``nms_param``
(NMS with the message's defaults; brocolli skips NMS there) against the real Caffe with those
defaults written out.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.errors import LayerError
from landmarknet.layers.detection import caffe_score_order, libstdcxx_sort
from landmarknet.params import load_weights, save_weights
from reference.ours import forward_blobs as ours
from reference.real_caffe import caffe_forward

F32 = np.float32


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def strip_save_output(text: str) -> str:
    """The prototxt without save_output_param blocks, for the reference run: the fork CHECKs
    that label_map_file exists (and would create output_directory); no number depends on it."""
    return re.sub(r"\n\s*save_output_param\s*\{[^{}]*\}", "", text)


def drop_layer(text: str, name: str) -> str:
    """The prototxt without the layer block named ``name`` (top-level ``layer { }`` blocks)."""
    out, depth, start, i = [], 0, None, 0
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            if depth == 0:
                start = text.rfind("layer", 0, m.start())
            depth += 1
        else:
            depth -= 1
            if depth == 0 and re.search(rf'name:\s*"{re.escape(name)}"', text[start:m.end()]):
                out.append(text[i:start])
                i = m.end()
    out.append(text[i:])
    return "".join(out)


def detection_module(prototxt: Path, inputs: dict[str, np.ndarray]):
    """Our DetectionOutput module of a net (to feed it the reference's own bottoms)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(prototxt, input_shapes={k: v.shape for k, v in inputs.items()})
    mods = [m for m in net.modules() if type(m).__name__ == "DetectionOutput"]
    assert len(mods) == 1
    return mods[0]


def assert_same_rows(got: np.ndarray, ref: np.ndarray, *, atol: float = 0.0) -> None:
    """Same number of rows, same image/label per row, scores and boxes within ``atol``."""
    got, ref = got.reshape(-1, 7), ref.reshape(-1, 7)
    assert got.shape == ref.shape, f"{got.shape[0]} rows, reference {ref.shape[0]}"
    np.testing.assert_array_equal(got[:, :2], ref[:, :2])
    if atol == 0.0:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got[:, 2:], ref[:, 2:], rtol=0, atol=atol)


def tied_scores(rows: np.ndarray) -> int:
    """How many output rows share their score with another row of the same image."""
    rows = rows.reshape(-1, 7)
    n = 0
    for i in np.unique(rows[:, 0]):
        _, counts = np.unique(rows[rows[:, 0] == i, 2], return_counts=True)
        n += int(counts[counts > 1].sum())
    return n


# ----------------------------------------------------------------------------------------------
# libstdc++'s std::sort (no Caffe needed)
# ----------------------------------------------------------------------------------------------

def test_libstdcxx_sort_sorts_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 15, 16, 17, 40, 300, 2000):
        keys = rng.integers(0, 5, n).astype(F32)  # heavy ties
        items = [(float(k), i) for i, k in enumerate(keys)]
        libstdcxx_sort(items, lambda a, b: a[0] > b[0])
        scores = [s for s, _ in items]
        assert scores == sorted(scores, reverse=True)
        assert sorted(i for _, i in items) == list(range(n))
        order = caffe_score_order(keys)
        assert [i for _, i in items] == order.tolist()
    # Without ties the order is the only one possible.
    keys = rng.permutation(1000).astype(F32)
    assert caffe_score_order(keys).tolist() == np.argsort(-keys).tolist()


def test_libstdcxx_sort_known_permutation() -> None:
    # 17 equal keys: GCC's introsort first moves the median of elements 1, 8 and 16 (all equal:
    # element 8) to the front and its Hoare partition swaps equal elements from both ends, so
    # the result is not the input order that a stable sort would keep. (The exact tie order is
    # checked against the real Caffe in the tie cases below.)
    items = [(1.0, i) for i in range(17)]
    libstdcxx_sort(items, lambda a, b: a[0] > b[0])
    got = [i for _, i in items]
    assert got != list(range(17)) and sorted(got) == list(range(17))


# ----------------------------------------------------------------------------------------------
# the zoo's SSD nets
# ----------------------------------------------------------------------------------------------

ZOO_SSD = [
    # (net, input shape, DetectionOutput bottoms)
    ("ssd300_vgg_voc", (1, 3, 300, 300), ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]),
    ("mobilenetv2_ssdlite_voc", (2, 3, 300, 300),
     ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]),
]


@pytest.mark.caffe_ref
@pytest.mark.parametrize("name,shape,bottoms", ZOO_SSD, ids=[z[0] for z in ZOO_SSD])
def test_zoo_ssd_detection_out_row_for_row(zoo: Path, tmp_path: Path, name: str,
                                            shape: tuple[int, ...], bottoms: list[str]) -> None:
    proto = zoo / name / "deploy.prototxt"
    ref_proto = tmp_path / "ref.prototxt"
    ref_proto.write_text(strip_save_output(proto.read_text()))
    x = np.random.default_rng(1).normal(0, 1, shape).astype(F32)
    weights = tmp_path / "w.caffemodel"
    _, ref = caffe_forward(ref_proto, {"data": x}, seed=3, save_weights=weights,
                           blobs=bottoms + ["detection_out"])
    # 1. Our layer on Caffe's own bottoms: Caffe's rows, bit for bit, in Caffe's order.
    module = detection_module(proto, {"data": x})
    rows = module.detect(*(ref[b] for b in bottoms))
    assert_same_rows(rows, ref["detection_out"])
    # 2. The whole net from the original file (save_output_param accepted and ignored).
    got = ours(proto, {"data": x}, bottoms + ["detection_out"], weights)
    for b in bottoms:
        scale = float(np.abs(ref[b]).max())
        assert float(np.abs(got[b] - ref[b]).max()) <= 1e-4 * scale, b
    assert_same_rows(got["detection_out"], ref["detection_out"], atol=2e-5)
    n_rows = ref["detection_out"].shape[2]
    print(f"{name}: {n_rows} rows equal, {tied_scores(ref['detection_out'])} with tied scores")


@pytest.mark.caffe_ref
@pytest.mark.parametrize("name", ["mobilenetv2_ssdlite_voc", "ssd300_vgg_voc"])
def test_zoo_ssd_with_massive_ties(zoo: Path, tmp_path: Path, name: str) -> None:
    # The confidence heads' weights set to zero (biases kept): every prior of a feature map and
    # prior type gets the same scores, so NMS and keep_top_k run on thousands of exact ties and
    # the rows depend on the C++'s sort orders alone.
    proto = zoo / name / "deploy.prototxt"
    ref_proto = tmp_path / "ref.prototxt"
    ref_proto.write_text(strip_save_output(proto.read_text()))
    x = np.random.default_rng(4).normal(0, 1, (1, 3, 300, 300)).astype(F32)
    bottoms = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
    random_weights, weights = tmp_path / "r.caffemodel", tmp_path / "w.caffemodel"
    caffe_forward(ref_proto, {"data": x}, seed=6, save_weights=random_weights, blobs=["data"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(proto)
    load_weights(net, random_weights, strict=True)
    with torch.no_grad():
        for module_name, module in net.named_modules():
            if module_name.endswith("mbox_conf") and hasattr(module, "weight"):
                module.weight.zero_()
    save_weights(net, weights)
    _, ref = caffe_forward(ref_proto, {"data": x}, weights=weights,
                           blobs=bottoms + ["detection_out"])
    assert tied_scores(ref["detection_out"]) > 50
    module = detection_module(proto, {"data": x})
    assert_same_rows(module.detect(*(ref[b] for b in bottoms)), ref["detection_out"])
    got = ours(proto, {"data": x}, bottoms + ["detection_out"], weights)
    assert_same_rows(got["detection_out"], ref["detection_out"], atol=2e-5)
    print(f"{name} (tied): {ref['detection_out'].shape[2]} rows equal, "
          f"{tied_scores(ref['detection_out'])} with tied scores")


def refinedet_reference(tmp: Path, dp_text: str, odm_loc: np.ndarray, odm_conf: np.ndarray,
                        prior: np.ndarray, arm_conf: np.ndarray, arm_loc: np.ndarray,
                        objectness: float, num_classes: int) -> np.ndarray:
    """RefineDet's DetectionOutput composed from two runs of the real Caffe's 3-bottom layer.

    RefineDet's C++ (sfzhang15/RefineDet detection_output_layer.cpp, bbox_util.cpp) differs from
    SSD's in two steps only: OSGetConfidenceScores gives every prior whose ARM foreground
    probability is below objectness_score the scores (1, 0, 0, ...), and CasRegDecodeBBoxesAll
    decodes the ODM offsets against the priors moved by the ARM offsets (same variances).
    Caffe moves the priors for us (a layer whose NMS keeps every box, in prior order), the
    score rule is applied here, and Caffe's own layer does the rest.
    """
    n, p4 = arm_loc.shape[0], prior.shape[2]
    p = p4 // 4
    assert n == 1, "one image: the moved priors are per image"
    decode = ('layer { name: "l" type: "Input" top: "l" input_param { shape { dim: %d dim: %d } } }'
              'layer { name: "c" type: "Input" top: "c" input_param { shape { dim: %d dim: %d } } }'
              'layer { name: "p" type: "Input" top: "p" input_param { shape { dim: 1 dim: 2 '
              'dim: %d } } }'
              'layer { name: "d" type: "DetectionOutput" bottom: "l" bottom: "c" bottom: "p" '
              'top: "d" detection_output_param { num_classes: 2 '
              'code_type: CENTER_SIZE nms_param { nms_threshold: 1.0 } } }') % (n, p4, n, 2 * p, p4)
    (tmp / "decode.prototxt").write_text(decode)
    order = np.zeros((1, p, 2), F32)  # class 1 scores fall with the prior index
    order[0, :, 1] = 1.0 - np.arange(p, dtype=np.float64) / (p + 1)
    order = order.reshape(1, -1)
    _, out = caffe_forward(tmp / "decode.prototxt", {"l": arm_loc, "c": order, "p": prior},
                           blobs=["d"])
    moved = out["d"].reshape(-1, 7)
    assert moved.shape[0] == p and np.all(np.diff(moved[:, 2]) < 0)
    moved_prior = prior.copy()
    moved_prior[0, 0] = moved[:, 3:].reshape(-1)
    conf = odm_conf.reshape(n, p, num_classes).copy()
    easy = arm_conf.reshape(n, p, 2)[:, :, 1] < F32(objectness)
    conf[easy] = 0
    conf[..., 0][easy] = 1
    head = ('layer { name: "l" type: "Input" top: "l" input_param { shape { dim: %d dim: %d } } }'
            'layer { name: "c" type: "Input" top: "c" input_param { shape { dim: %d dim: %d } } }'
            'layer { name: "p" type: "Input" top: "p" input_param { shape { dim: 1 dim: 2 '
            'dim: %d } } }'
            'layer { name: "d" type: "DetectionOutput" bottom: "l" bottom: "c" bottom: "p" '
            'top: "d" detection_output_param { %s } }') % (n, p4, n, p * num_classes, p4, dp_text)
    (tmp / "odm.prototxt").write_text(head)
    _, out = caffe_forward(tmp / "odm.prototxt", {"l": odm_loc, "c": conf.reshape(n, -1),
                                                  "p": moved_prior}, blobs=["d"])
    return out["d"]


@pytest.mark.caffe_ref
def test_zoo_refinedet_detection_out_row_for_row(zoo: Path, tmp_path: Path) -> None:
    proto = zoo / "refinedet_vgg16_320_voc" / "deploy.prototxt"
    text = proto.read_text()
    ref_proto = tmp_path / "ref.prototxt"
    ref_proto.write_text(drop_layer(text, "detection_out"))
    bottoms = ["odm_loc", "odm_conf_flatten", "arm_priorbox", "arm_conf_flatten", "arm_loc"]
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 320, 320)).astype(F32)
    weights = tmp_path / "w.caffemodel"
    _, ref = caffe_forward(ref_proto, {"data": x}, seed=5, save_weights=weights, blobs=bottoms)
    block = re.search(r"detection_output_param\s*\{(.*?)\n  \}", text, re.S).group(1)
    dp_text = re.sub(r"objectness_score:\s*[\d.]+", "", block)
    expected = refinedet_reference(tmp_path, dp_text, *(ref[b] for b in bottoms),
                                   objectness=0.01, num_classes=21)
    module = detection_module(proto, {"data": x})
    assert module.objectness_score == pytest.approx(0.01)
    assert_same_rows(module.detect(*(ref[b] for b in bottoms)), expected)
    got = ours(proto, {"data": x}, bottoms + ["detection_out"], weights)
    for b in bottoms:
        scale = float(np.abs(ref[b]).max())
        assert float(np.abs(got[b] - ref[b]).max()) <= 1e-4 * scale, b
    assert_same_rows(got["detection_out"], expected, atol=2e-5)
    print(f"refinedet: {expected.shape[2]} rows equal, {tied_scores(expected)} with tied scores")


# ----------------------------------------------------------------------------------------------
# DetectionOutput fields and edge cases, small nets against the real Caffe
# ----------------------------------------------------------------------------------------------

def det_prototxt(n: int, num_priors: int, num_classes: int, n_loc: int, params: str) -> str:
    """Three Input layers (loc, conf, prior) feeding one DetectionOutput."""
    return (
        f'layer {{ name: "loc" type: "Input" top: "loc" input_param {{ shape {{ dim: {n} '
        f'dim: {num_priors * n_loc * 4} }} }} }}\n'
        f'layer {{ name: "conf" type: "Input" top: "conf" input_param {{ shape {{ dim: {n} '
        f'dim: {num_priors * num_classes} }} }} }}\n'
        f'layer {{ name: "prior" type: "Input" top: "prior" input_param {{ shape {{ dim: 1 '
        f'dim: 2 dim: {num_priors * 4} }} }} }}\n'
        f'layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
        f'bottom: "prior" top: "det" detection_output_param {{ {params} }} }}\n')


def det_inputs(rng: np.random.Generator, n: int, num_priors: int, num_classes: int,
               n_loc: int, *, levels: int = 0) -> dict[str, np.ndarray]:
    """Priors in a grid of overlapping boxes, offsets, softmax scores (quantised: ties)."""
    cx, cy = rng.uniform(0.1, 0.9, (2, num_priors))
    w, h = rng.uniform(0.05, 0.4, (2, num_priors))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    var = np.tile(rng.uniform(0.05, 0.3, 4), (num_priors, 1))
    prior = np.stack([boxes.reshape(-1), var.reshape(-1)]).reshape(1, 2, -1).astype(F32)
    loc = rng.normal(0, 0.5, (n, num_priors * n_loc * 4)).astype(F32)
    logits = rng.normal(0, 1.5, (n, num_priors, num_classes))
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if levels:
        conf = np.round(conf * levels) / levels
    return {"loc": loc, "conf": conf.reshape(n, -1).astype(F32), "prior": prior}


CASES = {
    # name: (detection_output_param text, batch, priors, classes, share_location, score levels)
    "center_size": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 top_k: 50 } "
                    "keep_top_k: 30 confidence_threshold: 0.05", 2, 120, 5, True, 0),
    "corner": ("code_type: CORNER nms_param { nms_threshold: 0.3 } confidence_threshold: 0.1",
               1, 80, 4, True, 0),
    "corner_size": ("code_type: CORNER_SIZE nms_param { nms_threshold: 0.5 top_k: 20 } "
                    "keep_top_k: 25", 1, 80, 4, True, 0),
    "variance_in_target": ("code_type: CENTER_SIZE variance_encoded_in_target: true "
                           "nms_param { nms_threshold: 0.45 } confidence_threshold: 0.02",
                           1, 60, 3, True, 0),
    "corner_variance_in_target": ("code_type: CORNER variance_encoded_in_target: true "
                                  "nms_param { nms_threshold: 0.45 }", 1, 40, 3, True, 0),
    "share_location_false": ("share_location: false code_type: CENTER_SIZE "
                             "nms_param { nms_threshold: 0.45 top_k: 30 } keep_top_k: 40 "
                             "confidence_threshold: 0.05", 2, 60, 4, False, 0),
    "share_location_false_background_2": ("share_location: false background_label_id: 2 "
                                          "code_type: CORNER_SIZE nms_param { nms_threshold: 0.4 }"
                                          " confidence_threshold: 0.1", 1, 50, 4, False, 0),
    "no_background": ("share_location: false background_label_id: -1 code_type: CENTER_SIZE "
                      "nms_param { nms_threshold: 0.45 } keep_top_k: 50 "
                      "confidence_threshold: 0.05", 1, 60, 3, False, 0),
    "eta_below_1": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.8 eta: 0.9 } "
                    "confidence_threshold: 0.05", 1, 150, 3, True, 0),
    "top_k_minus_1_keep_top_k_large": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.5 "
                                       "top_k: -1 } keep_top_k: 100000", 1, 60, 3, True, 0),
    "keep_top_k_zero": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.5 } keep_top_k: 0",
                        2, 30, 3, True, 0),
    "top_k_zero": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.5 top_k: 0 }",
                   1, 30, 3, True, 0),
    "nothing_above_threshold": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 } "
                                "confidence_threshold: 0.999", 3, 40, 4, True, 0),
    "no_threshold": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 top_k: 40 } "
                     "keep_top_k: 45", 1, 60, 3, True, 0),
    "ties_keep_top_k": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.6 top_k: 100 } "
                        "keep_top_k: 57 confidence_threshold: 0.01", 2, 300, 6, True, 8),
    "ties_many_small_sort": ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.9 } "
                             "keep_top_k: 13 confidence_threshold: 0.01", 1, 40, 3, True, 4),
    "ties_share_false": ("share_location: false code_type: CORNER nms_param { "
                         "nms_threshold: 0.7 top_k: 60 } keep_top_k: 70", 1, 120, 5, False, 5),
}


@pytest.mark.caffe_ref
@pytest.mark.parametrize("case", sorted(CASES))
def test_detection_output_fields_against_caffe(tmp_path: Path, case: str) -> None:
    params, n, num_priors, num_classes, share, levels = CASES[case]
    params = f"num_classes: {num_classes} {params}"
    n_loc = 1 if share else num_classes
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(n, num_priors, num_classes, n_loc, params))
    inputs = det_inputs(np.random.default_rng(len(case)), n, num_priors, num_classes, n_loc,
                        levels=levels)
    _, ref = caffe_forward(proto, inputs, blobs=["det"])
    got = ours(proto, inputs, ["det"])
    assert_same_rows(got["det"], ref["det"])
    if levels:
        assert tied_scores(ref["det"]) > 10  # the case is about ties: make sure there are some
    if case == "nothing_above_threshold":
        expected = np.full((n, 7), -1, F32)
        expected[:, 0] = np.arange(n)
        np.testing.assert_array_equal(got["det"].reshape(-1, 7), expected)


@pytest.mark.caffe_ref
def test_detection_output_without_nms_param_is_ssd_default_nms(tmp_path: Path) -> None:
    # weiliu89's SSD reads nms_param's defaults (nms_threshold 0.3, no top_k) when the message is
    # absent; brocolli-caffe skips NMS there. We follow SSD: the reference runs with the defaults
    # written out.
    n, p, c = 1, 80, 4
    inputs = det_inputs(np.random.default_rng(9), n, p, c, 1)
    ours_proto, ref_proto = tmp_path / "a.prototxt", tmp_path / "b.prototxt"
    base = f"num_classes: {c} code_type: CENTER_SIZE confidence_threshold: 0.05 "
    ours_proto.write_text(det_prototxt(n, p, c, 1, base))
    ref_proto.write_text(det_prototxt(n, p, c, 1, base + "nms_param { nms_threshold: 0.3 }"))
    _, ref = caffe_forward(ref_proto, inputs, blobs=["det"])
    assert_same_rows(ours(ours_proto, inputs, ["det"])["det"], ref["det"])


def test_detection_output_clip_against_opencv(tmp_path: Path) -> None:
    # `clip` exists only in OpenCV's schema (field 1000): the decoded boxes are clamped to [0, 1]
    # before NMS. OpenCV orders rows by score across classes and pads to keep_top_k rows with
    # zeros, so the comparison sorts the rows and drops OpenCV's padding.
    opencv_ref = pytest.importorskip("opencv_ref")
    n, p, c = 1, 60, 3
    inputs = det_inputs(np.random.default_rng(4), n, p, c, 1)
    inputs["loc"] *= 4  # push boxes out of the image
    params = (f"num_classes: {c} share_location: true background_label_id: 0 "
              "code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 } "
              "keep_top_k: 200 confidence_threshold: 0.05 clip: true")
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(n, p, c, 1, params))
    try:
        ref = opencv_ref.run_opencv(proto, None, inputs, ["det"])["det"].reshape(-1, 7)
    except opencv_ref.OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    got = ours(proto, inputs, ["det"])["det"].reshape(-1, 7)
    assert got[:, 3:].min() >= 0 and got[:, 3:].max() <= 1
    assert np.any(got[:, 3:] == 0) or np.any(got[:, 3:] == 1)  # clipping happened
    ref = ref[ref[:, 2] > 0]
    key = lambda a: np.lexsort((-a[:, 2], a[:, 1], a[:, 0]))  # noqa: E731
    assert got.shape == ref.shape
    np.testing.assert_allclose(got[key(got)], ref[key(ref)], rtol=0, atol=1e-6)


def test_detection_output_shared_locations_without_background_is_refused(tmp_path: Path) -> None:
    # SSD's DecodeBBoxesAll skips the shared location label -1 when it equals
    # background_label_id, and the layer then aborts ("Could not find location predictions for
    # label -1"; measured with the reference Caffe). We refuse the net at build time instead.
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(1, 10, 3, 1, "num_classes: 3 background_label_id: -1 "
                                               "nms_param { nms_threshold: 0.45 }"))
    with pytest.raises(LayerError, match="background_label_id: -1 with share_location: true"):
        build_net(proto)


def test_detection_output_refuses_onnx_export(tmp_path: Path) -> None:
    from landmarknet.export import ExportError, export_onnx
    n, p, c = 1, 20, 3
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(n, p, c, 1, f"num_classes: {c} nms_param {{ }}"))
    net = build_net(proto)
    with pytest.raises(ExportError, match="DetectionOutput cannot be exported to ONNX"):
        export_onnx(net, tmp_path / "det.onnx")


def test_detection_output_fields_of_the_forks_parse(tmp_path: Path) -> None:
    # Every DetectionOutputParameter field that SSD, RefineDet and OpenCV's face detector files
    # use; file-writing and drawing fields are accepted with a warning, never silently.
    params = ('num_classes: 2 share_location: true background_label_id: 0 '
              'nms_param { nms_threshold: 0.45 top_k: 400 eta: 1.0 } '
              'save_output_param { output_directory: "/nonexistent/out" output_name_prefix: "x_" '
              'output_format: "VOC" label_map_file: "labelmap.prototxt" '
              'name_size_file: "names.txt" num_test_image: 10 } '
              'code_type: CENTER_SIZE variance_encoded_in_target: false keep_top_k: 200 '
              'confidence_threshold: 0.2 visualize: false visualize_threshold: 0.6 '
              'save_file: "out.avi" clip: 1')
    proto = tmp_path / "det.prototxt"
    proto.write_text(det_prototxt(1, 10, 2, 1, params))
    with pytest.warns(UserWarning) as record:
        net = build_net(proto)
    text = " ".join(str(w.message) for w in record)
    assert "save_output_param is ignored" in text and "visualize" in text
    module = [m for m in net.modules() if type(m).__name__ == "DetectionOutput"][0]
    assert module.clip and module.keep_top_k == 200 and module.top_k == 400


# ----------------------------------------------------------------------------------------------
# PriorBox, Normalize, Permute against the real Caffe
# ----------------------------------------------------------------------------------------------

PRIOR_PARAMS = [
    "min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false variance: 0.1 "
    "variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5",
    "min_size: 60 max_size: 111 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: true "
    "variance: 0.1",
    "min_size: 32 min_size: 64 min_size: 128 clip: false step: 32",
    "min_size: 20.7 max_size: 45.9 aspect_ratio: 2.5 aspect_ratio: 2.5 aspect_ratio: 1 "
    "flip: false clip: false",
    "min_size: 16 img_size: 100 step_h: 7 step_w: 9 offset: 0.25 clip: false",
    "min_size: 16 max_size: 40 img_h: 90 img_w: 120 step: 10 offset: 0 clip: false "
    "aspect_ratio: 0.5",
    "min_size: 50 aspect_ratio: 3 flip: true",  # clip left to the default
]


@pytest.mark.caffe_ref
def test_prior_box_fields_against_caffe(tmp_path: Path) -> None:
    # clip is given explicitly except in the last layer: the reference fork defaults it to true
    # (like OpenCV and SSD before weiliu89's commit c35c2dbc), SSD's head to false; the test
    # writes that layer's clip out for the reference.
    layers = ['layer { name: "feat" type: "Input" top: "feat" input_param { shape { dim: 1 '
              'dim: 4 dim: 5 dim: 7 } } }',
              'layer { name: "img" type: "Input" top: "img" input_param { shape { dim: 1 '
              'dim: 3 dim: 75 dim: 110 } } }']
    for i, p in enumerate(PRIOR_PARAMS):
        layers.append(f'layer {{ name: "pb{i}" type: "PriorBox" bottom: "feat" bottom: "img" '
                      f'top: "pb{i}" prior_box_param {{ {p} }} }}')
    text = "\n".join(layers)
    proto, ref_proto = tmp_path / "pb.prototxt", tmp_path / "pb_ref.prototxt"
    proto.write_text(text)
    ref_proto.write_text(text.replace("min_size: 50 aspect_ratio: 3 flip: true",
                                      "min_size: 50 aspect_ratio: 3 flip: true clip: false"))
    rng = np.random.default_rng(0)
    inputs = {"feat": rng.normal(size=(1, 4, 5, 7)).astype(F32),
              "img": rng.normal(size=(1, 3, 75, 110)).astype(F32)}
    names = [f"pb{i}" for i in range(len(PRIOR_PARAMS))]
    _, ref = caffe_forward(ref_proto, inputs, blobs=names)
    got = ours(proto, inputs, names)
    for name in names:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


NORM_PARAMS = [
    "across_spatial: false channel_shared: false",
    "across_spatial: true channel_shared: true",
    "across_spatial: true channel_shared: false eps: 0.001",
    "across_spatial: false channel_shared: true eps: 1e-4",
]


@pytest.mark.caffe_ref
def test_normalize_and_permute_against_caffe(tmp_path: Path) -> None:
    layers = ['layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
              'dim: 6 dim: 5 dim: 4 } } }']
    for i, p in enumerate(NORM_PARAMS):
        layers.append(f'layer {{ name: "n{i}" type: "Normalize" bottom: "x" top: "n{i}" '
                      f'norm_param {{ {p} scale_filler {{ type: "constant" value: 20 }} }} }}')
    orders = ["order: 0 order: 2 order: 3 order: 1", "order: 3 order: 1 order: 0 order: 2",
              "order: 0 order: 1 order: 2 order: 3", "order: 1 order: 0"]
    for i, o in enumerate(orders):
        layers.append(f'layer {{ name: "p{i}" type: "Permute" bottom: "x" top: "p{i}" '
                      f'permute_param {{ {o} }} }}')
    proto = tmp_path / "np.prototxt"
    proto.write_text("\n".join(layers))
    x = np.random.default_rng(3).normal(0, 1, (2, 6, 5, 4)).astype(F32)
    x[1, :, 2, 3] = 0  # a zero vector: eps decides
    names = [f"n{i}" for i in range(len(NORM_PARAMS))] + [f"p{i}" for i in range(len(orders))]
    weights = tmp_path / "w.caffemodel"
    _, ref = caffe_forward(proto, {"x": x}, seed=7, save_weights=weights, blobs=names)
    got = ours(proto, {"x": x}, names, weights)
    for name in names:
        assert got[name].shape == ref[name].shape, name
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-6, atol=1e-6, err_msg=name)
