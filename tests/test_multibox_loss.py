"""SSD's MultiBoxLoss against the reference Caffe (an SSD-based fork: brocolli-caffe 9.0.2).

Each case is a small net of Input layers (location predictions, confidences, priors, ground
truth) feeding MultiBoxLoss, run once forward and backward in the real Caffe and in landmarknet
with the same numbers. The location and confidence inputs pass through a Scale layer of weight 1
so that Caffe back-propagates to them (force_backward would also ask MultiBoxLoss for gradients
of the priors and labels, which it refuses). Compared: the loss, and the gradients of the
location and confidence blobs element for element: which priors were matched and mined shows in
which gradients are non-zero, so a different pick fails the test.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.errors import LayerError
from landmarknet.params import save_weights
from reference.compare import rel_err
from reference.ours import run_backward
from reference.real_caffe import run_caffe

LOSS_TOL = 2e-6
GRAD_TOL = 1e-5  # relative to the largest gradient magnitude


def make_priors(rng: np.random.Generator, n_priors: int, crossing: bool = True) -> np.ndarray:
    """(1, 2, 4 P): prior corners (a few crossing the image border) and SSD's variances."""
    cx, cy = rng.uniform(0.05, 0.95, (2, n_priors))
    w, h = rng.uniform(0.08, 0.6, (2, n_priors))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    if not crossing:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (n_priors, 1))
    return np.stack([boxes.reshape(-1), var.reshape(-1)])[None].astype(np.float32)


def make_truth(rng: np.random.Generator, per_image: list[int], num_classes: int,
               background: int = 0, difficult: float = 0.2, padding: int = 1) -> np.ndarray:
    """(1, 1, G, 8) rows [image, class, instance, xmin, ymin, xmax, ymax, difficult] plus
    ``padding`` rows of image -1 (what AnnotatedData writes for an empty batch)."""
    rows = []
    classes = [c for c in range(num_classes) if c != background]
    for image, count in enumerate(per_image):
        for k in range(count):
            cx, cy = rng.uniform(0.15, 0.85, 2)
            w, h = rng.uniform(0.1, 0.5, 2)
            rows.append([image, rng.choice(classes), k, max(cx - w / 2, 0.0),
                         max(cy - h / 2, 0.0), min(cx + w / 2, 1.0), min(cy + h / 2, 1.0),
                         float(rng.random() < difficult)])
    rows += [[-1, -1, -1, -1, -1, -1, -1, -1]] * padding
    return np.array(rows, np.float32)[None, None]


def net_text(n: int, n_priors: int, num_classes: int, n_gt: int, params: str,
             loc_classes: int = 1, extra: str = "") -> str:
    loc = n_priors * loc_classes * 4
    conf = n_priors * num_classes

    def inp(name, shape):
        dims = " ".join(f"dim: {d}" for d in shape)
        return f'layer {{ name: "{name}" type: "Input" top: "{name}" ' \
               f'input_param {{ shape {{ {dims} }} }} }}\n'

    def scale(src, dst):
        return (f'layer {{ name: "{dst}" type: "Scale" bottom: "{src}" top: "{dst}" '
                f'scale_param {{ axis: 0 num_axes: 1 }} }}\n')
    return ('name: "mbox"\n' + inp("loc_in", (n, loc)) + inp("conf_in", (n, conf))
            + inp("prior", (1, 2, n_priors * 4)) + inp("label", (1, 1, n_gt, 8))
            + scale("loc_in", "loc") + scale("conf_in", "conf")
            + 'layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" '
              'bottom: "prior" bottom: "label" top: "mbox_loss" '
            + extra + f' multibox_loss_param {{ num_classes: {num_classes} {params} }} }}\n')


def unit_scale_weights(proto: Path, arrays: dict[str, np.ndarray], path: Path) -> None:
    """A caffemodel with both Scale weights 1 (the inputs pass unchanged)."""
    net = build_net(proto, phase="train", input_shapes={k: v.shape for k, v in arrays.items()})
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    save_weights(net, path)


def compare(tmp_path: Path, text: str, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Loss and the two gradients against the reference Caffe; returns the errors."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    weights = tmp_path / "unit.caffemodel"
    unit_scale_weights(proto, arrays, weights)
    meta, out = run_caffe("backward", {"prototxt": str(proto), "phase": "train",
                                       "weights": str(weights)}, arrays)
    index = {name: i for i, name in enumerate(meta["blobs"])}
    net, data, inputs, loss = run_backward(proto, weights, arrays, "train", ["loc", "conf"],
                                           retain_grads=True)
    errors = {"loss": abs(loss - meta["loss"]) / max(abs(meta["loss"]), 1e-12)}
    assert errors["loss"] <= LOSS_TOL, (loss, meta["loss"])
    for blob in ("loc", "conf"):
        ref = out[f"diff{index[blob]}"]
        grad = data[blob].grad
        ours = np.zeros_like(ref) if grad is None else grad.numpy()
        errors[blob] = rel_err(ours, ref)
        # the same priors matched and mined: the same gradients are exactly zero
        assert np.array_equal(ours == 0, ref == 0), f"{blob}: other rows picked"
        assert errors[blob] <= GRAD_TOL, f"{blob}: relative error {errors[blob]:.3g}"
    return errors


def case(seed: int, n: int = 3, n_priors: int = 60, num_classes: int = 4,
         per_image: list[int] | None = None, loc_classes: int = 1, crossing: bool = True,
         conf: np.ndarray | None = None, background: int = 0, difficult: float = 0.2):
    rng = np.random.default_rng(seed)
    per_image = [3, 1, 0][:n] if per_image is None else per_image
    arrays = {
        "loc_in": rng.normal(0, 1.0, (n, n_priors * loc_classes * 4)).astype(np.float32),
        "conf_in": (rng.normal(0, 2.0, (n, n_priors * num_classes)).astype(np.float32)
                    if conf is None else conf),
        "prior": make_priors(rng, n_priors, crossing),
        "label": make_truth(rng, per_image, num_classes, background, difficult),
    }
    return arrays


SSD = ("loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0 share_location: true "
       "match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true "
       "background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3.0 neg_overlap: 0.5 "
       "code_type: CENTER_SIZE ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE")

VARIANTS = {
    "ssd_defaults": (SSD, {}),
    "schema_defaults": ("", {}),  # CORNER code, PER_PREDICTION, MAX_NEGATIVE
    "bipartite": (SSD.replace("PER_PREDICTION", "BIPARTITE"), {}),
    "low_threshold": (SSD.replace("overlap_threshold: 0.5", "overlap_threshold: 0.2"), {}),
    "no_mining": (SSD.replace("MAX_NEGATIVE", "NONE"), {}),
    "corner": (SSD.replace("CENTER_SIZE", "CORNER"), {}),
    "corner_size": (SSD.replace("CENTER_SIZE", "CORNER_SIZE"), {}),
    "variance_in_target": (SSD + " encode_variance_in_target: true", {}),
    "l2_loss_weight_2": (SSD.replace("SMOOTH_L1", "L2").replace("loc_weight: 1.0",
                                                                 "loc_weight: 2.0"), {}),
    "decoded_matching": (SSD.replace("use_prior_for_matching: true",
                                     "use_prior_for_matching: false"), {}),
    "cross_boundary": (SSD.replace("ignore_cross_boundary_bbox: false",
                                   "ignore_cross_boundary_bbox: true"), {}),
    "bp_inside": (SSD.replace("CENTER_SIZE", "CORNER") + " bp_inside: true", {}),
    "no_difficult": (SSD.replace("use_difficult_gt: true", "use_difficult_gt: false"),
                     {"difficult": 0.5}),
    "neg_ratio_half": (SSD.replace("neg_pos_ratio: 3.0", "neg_pos_ratio: 0.5")
                       .replace("neg_overlap: 0.5", "neg_overlap: 0.3"), {}),
    "logistic": (SSD.replace("SOFTMAX", "LOGISTIC"), {}),
    "agnostic": (SSD + " map_object_to_agnostic: true", {"num_classes": 2}),
    "background_2": (SSD.replace("background_label_id: 0", "background_label_id: 2"),
                     {"background": 2}),
    "many_images": (SSD, {"n": 5, "per_image": [2, 0, 4, 1, 0], "n_priors": 80}),
}


@pytest.mark.caffe_ref
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_multibox_loss_matches_caffe(tmp_path, name):
    params, kwargs = VARIANTS[name]
    n_args = {k: kwargs[k] for k in ("n", "per_image", "n_priors", "num_classes", "background",
                                     "difficult") if k in kwargs}
    arrays = case(7, **n_args)
    n, n_priors = arrays["loc_in"].shape[0], arrays["prior"].shape[2] // 4
    num_classes = arrays["conf_in"].shape[1] // n_priors
    text = net_text(n, n_priors, num_classes, arrays["label"].shape[2], params)
    compare(tmp_path, text, arrays)


@pytest.mark.caffe_ref
@pytest.mark.parametrize("normalization", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_normalization_modes(tmp_path, normalization):
    arrays = case(11)
    text = net_text(3, 60, 4, arrays["label"].shape[2], SSD,
                    extra=f"loss_param {{ normalization: {normalization} }}")
    compare(tmp_path, text, arrays)


@pytest.mark.caffe_ref
def test_unshared_locations(tmp_path):
    """share_location: false (one box per class and prior), no mining (the C++ needs shared
    locations to mine)."""
    rng = np.random.default_rng(3)
    arrays = case(3)
    arrays["loc_in"] = rng.normal(0, 1, (3, 60 * 4 * 4)).astype(np.float32)
    params = SSD.replace("share_location: true", "share_location: false") \
        .replace("MAX_NEGATIVE", "NONE")
    for matching in ("true", "false"):
        text = net_text(3, 60, 4, arrays["label"].shape[2],
                        params.replace("use_prior_for_matching: true",
                                       f"use_prior_for_matching: {matching}"), loc_classes=4)
        compare(tmp_path, text, arrays)


@pytest.mark.caffe_ref
def test_tied_losses_mine_as_caffe_sorts(tmp_path):
    """All confidences equal: every candidate negative has the same loss, so which ones are
    mined is decided by libstdc++'s std::sort alone (many more candidates than picks)."""
    arrays = case(5, n_priors=120, conf=np.zeros((3, 120 * 4), np.float32),
                  per_image=[2, 3, 1])
    text = net_text(3, 120, 4, arrays["label"].shape[2], SSD)
    compare(tmp_path, text, arrays)


@pytest.mark.caffe_ref
def test_propagate_down_drops_a_term(tmp_path):
    """propagate_down false on the confidences removes their term from the loss itself."""
    arrays = case(9)
    extra = "propagate_down: true propagate_down: false propagate_down: false " \
            "propagate_down: false"
    text = net_text(3, 60, 4, arrays["label"].shape[2], SSD, extra=extra)
    errors = compare(tmp_path, text, arrays)
    assert errors["loss"] <= LOSS_TOL


@pytest.mark.caffe_ref
def test_batch_without_ground_truth(tmp_path):
    """No box in the batch: no matches, no mining; the loss is 0 and so are the gradients."""
    arrays = case(2, per_image=[0, 0, 0])
    text = net_text(3, 60, 4, arrays["label"].shape[2], SSD)
    compare(tmp_path, text, arrays)


# ----------------------------------------------------------------------------------------------
# refusals (no reference needed: these configurations are refused before anything runs)
# ----------------------------------------------------------------------------------------------

def build_with(tmp_path: Path, params: str, **kwargs):
    arrays = case(1)
    text = net_text(3, 60, 4, arrays["label"].shape[2], params, **kwargs)
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    return build_net(proto, phase="train",
                     input_shapes={k: v.shape for k, v in arrays.items()})


@pytest.mark.parametrize("params, message", [
    (SSD.replace("MAX_NEGATIVE", "HARD_EXAMPLE"), "HARD_EXAMPLE"),
    (SSD + " nms_param { nms_threshold: 0.45 }", "nms_param"),
    (SSD.replace("SOFTMAX", "LOGISTIC").replace("MAX_NEGATIVE", "NONE"), "LOGISTIC"),
    (SSD.replace("background_label_id: 0", "background_label_id: 4"), "background_label_id"),
    (SSD + " do_neg_mining: false", "do_neg_mining"),
])
def test_refused_configurations_name_the_field(tmp_path, params, message):
    with pytest.raises(LayerError, match=message):
        build_with(tmp_path, params)


def test_missing_num_classes_and_wrong_shapes(tmp_path):
    arrays = case(1)
    text = net_text(3, 60, 4, arrays["label"].shape[2], SSD)
    proto = tmp_path / "net.prototxt"
    proto.write_text(re.sub(r"num_classes: \d+", "", text))
    with pytest.raises(LayerError, match="num_classes is required"):
        build_net(proto, phase="train", input_shapes={k: v.shape for k, v in arrays.items()})
    proto.write_text(text.replace("num_classes: 4", "num_classes: 5"))
    with pytest.raises(LayerError, match="confidences per image"):
        build_net(proto, phase="train", input_shapes={k: v.shape for k, v in arrays.items()})


def test_background_box_in_the_data_is_an_error(tmp_path):
    net = build_with(tmp_path, SSD)
    arrays = case(1)
    arrays["label"][0, 0, 0, 1] = 0  # a box labelled background
    with pytest.raises(LayerError, match="background class"):
        net.run({k: torch.from_numpy(v) for k, v in arrays.items()}, blobs=["mbox_loss"])


# ----------------------------------------------------------------------------------------------
# a whole SSD net: the zoo's MobileNetV2-SSDLite deploy turned into its training net
# ----------------------------------------------------------------------------------------------

HEAD_ONLY = ("mbox_conf_reshape", "mbox_conf_sigmoid", "mbox_conf_flatten", "detection_out")


@pytest.mark.caffe_ref
def test_ssdlite_training_net_matches_caffe(tmp_path, zoo):
    """MobileNetV2-SSDLite (chuanqi305) with its post-processing replaced by MultiBoxLoss, as its
    training net has it: Caffe's seeded random weights, two images, boxes of several classes.
    The loss and the gradients reaching the two heads must match the reference Caffe."""
    from reference.real_caffe import map_layers
    deploy = (zoo / "mobilenetv2_ssdlite_voc" / "deploy.prototxt").read_text()
    text = map_layers(deploy, lambda block, kind: "" if re.search(
        r'name:\s*"(%s)"' % "|".join(HEAD_ONLY), block) else block)
    rng = np.random.default_rng(21)
    label = make_truth(rng, [3, 2], 21, difficult=0.0)
    text += ('layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 '
             f'dim: 1 dim: {label.shape[2]} dim: 8 }} }} }}\n'
             'layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" '
             'bottom: "mbox_conf" bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss" '
             'propagate_down: true propagate_down: true propagate_down: false '
             f'propagate_down: false multibox_loss_param {{ num_classes: 21 {SSD} }} }}\n')
    text = text.replace("dim: 1\n  dim: 3\n  dim: 300", "dim: 2\n  dim: 3\n  dim: 300", 1)
    proto = tmp_path / "train.prototxt"
    proto.write_text(text)
    arrays = {"data": rng.normal(0, 1, (2, 3, 300, 300)).astype(np.float32), "label": label}
    weights = tmp_path / "caffe.caffemodel"
    meta, out = run_caffe("backward", {"prototxt": str(proto), "phase": "train", "seed": 3,
                                       "save_weights": str(weights)}, arrays)
    net, data, inputs, loss = run_backward(proto, weights, arrays, "train",
                                           ["mbox_loc", "mbox_conf"], retain_grads=True)
    assert abs(loss - meta["loss"]) <= 1e-4 * abs(meta["loss"]), (loss, meta["loss"])
    index = {name: i for i, name in enumerate(meta["blobs"])}
    for blob in ("mbox_loc", "mbox_conf"):
        ref = out[f"diff{index[blob]}"]
        ours = data[blob].grad.numpy()
        assert np.array_equal(ours == 0, ref == 0), f"{blob}: other priors matched or mined"
        assert rel_err(ours, ref) <= 1e-4, blob


@pytest.mark.caffe_ref
@pytest.mark.parametrize("match", ["PER_PREDICTION", "BIPARTITE"])
def test_tied_overlaps_match_as_caffe(tmp_path, match):
    """Duplicated priors and duplicated ground-truth boxes: every overlap ties with another,
    so only the C++'s iteration order (lowest prior, then lowest box) decides the matches."""
    arrays = case(13, n_priors=40, per_image=[4, 2, 3])
    prior = arrays["prior"].reshape(2, 40, 4)
    prior[:, 20:] = prior[:, :20]  # priors 20-39 repeat 0-19
    arrays["prior"] = prior.reshape(1, 2, 160)
    label = arrays["label"]
    label[0, 0, 1, 3:7] = label[0, 0, 0, 3:7]  # image 0: box 1 repeats box 0
    label[0, 0, 5, 3:7] = label[0, 0, 4, 3:7]  # image 1: box 1 repeats box 0
    text = net_text(3, 40, 4, label.shape[2], SSD.replace("PER_PREDICTION", match)
                    .replace("overlap_threshold: 0.5", "overlap_threshold: 0.3"))
    compare(tmp_path, text, arrays)
