"""Faster R-CNN's region proposal layer (landmarknet/layers/roi.py, end of the file) against
independent references.

References: ``reference.proposal_ref`` (a loop-for-loop numpy restatement of py-faster-rcnn's
TEST path: generate_anchors, bbox_transform_inv, clip_boxes, _filter_boxes, the sort and the
NMS) and OpenCV 4.x DNN's ``Proposal`` type, on inputs where OpenCV's known differences (no
min_size filter, zero-padded rows, its order among equal scores) do not matter.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.errors import LayerError
from landmarknet.layers.registry import LayerSpec, converter_for
from layers.checker import (assert_bad_parameters_name_the_layer, assert_refused, layer_spec,
                            run_layer, seeded, to_numpy)
from reference import proposal_ref as P

A = 9
H, W = 14, 19


def _python_text(param_str: str = "'feat_stride': 16") -> str:
    escaped = param_str.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return ('python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
            f'param_str: "{escaped}" }}')


def _inputs(seed: int, n_anchors: int = A, height: int = H, width: int = W,
            spread: float = 0.3, ties: bool = False):
    rng = seeded(seed)
    cls = rng.random((1, 2 * n_anchors, height, width)).astype(np.float32)
    if ties:  # a few score levels: many equal scores, at the pre_nms cut and in the NMS
        cls = (np.round(cls * 4) / 4).astype(np.float32)
    bbox = (rng.standard_normal((1, 4 * n_anchors, height, width)) * spread).astype(np.float32)
    return cls, bbox


def _ours(text: str, inputs, type_: str = "Python"):
    (rois, scores), _, _ = run_layer(type_, text, list(inputs), n_tops=2)
    return to_numpy(rois), to_numpy(scores)


def _same(ours, ref) -> None:
    rois, scores = ours
    ref_rois, ref_scores = ref
    assert rois.shape == ref_rois.shape and scores.shape == ref_scores.shape
    np.testing.assert_array_equal(rois, ref_rois)  # the same float32 operations: exact
    np.testing.assert_array_equal(scores, ref_scores)


def test_default_anchors_are_py_faster_rcnns() -> None:
    # generate_anchors() as py-faster-rcnn's docstring prints it (base 16, ratios 0.5/1/2,
    # scales 8/16/32; 11.5 rounds to 12 as np.round does)
    known = np.array([[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                      [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                      [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]],
                     np.float64)
    np.testing.assert_array_equal(P.anchors(), known)
    spec = layer_spec("Python", _python_text(), [(1, 18, 2, 2), (1, 36, 2, 2), (1, 3)])
    module = converter_for(spec)(spec).module
    np.testing.assert_array_equal(np.array(module.anchors), known)


@pytest.mark.parametrize("info", [[224, 300, 1.0], [224, 300, 0.6]], ids=["scale1", "scale0.6"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_py_faster_rcnn(info, seed) -> None:
    cls, bbox = _inputs(seed)
    im_info = np.array([info], np.float32)
    ref = P.proposals(cls, bbox, im_info)
    assert len(ref[0]) == 300  # more survivors than post_nms_topn: cut to 300
    assert len(P.proposals(cls, bbox, im_info, cfg=(6000, 0, 0.7, 16))[0]) > 300
    _same(_ours(_python_text(), (cls, bbox, im_info)), ref)


def test_one_top_gives_the_rois_alone() -> None:
    cls, bbox = _inputs(2)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    (rois,), _, _ = run_layer("Python", _python_text(), [cls, bbox, im_info])
    np.testing.assert_array_equal(to_numpy(rois), P.proposals(cls, bbox, im_info)[0])


def test_without_ties_the_original_quicksort_gives_the_same() -> None:
    # numpy's default argsort (what py-faster-rcnn calls) orders distinct scores the same way
    cls, bbox = _inputs(3)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    assert len(np.unique(cls[0, A:])) == cls[0, A:].size
    _same(_ours(_python_text(), (cls, bbox, im_info)),
          P.proposals(cls, bbox, im_info, kind="quicksort"))


@pytest.mark.parametrize("param_str,scales,ratios", [
    ("'feat_stride': 16 \n'scales': !!python/tuple [4, 8, 16, 32]", (4, 8, 16, 32), (0.5, 1, 2)),
    ("'feat_stride': 16\n'scales': (8, 16, 32)", (8, 16, 32), (0.5, 1, 2)),
    ("{'feat_stride': 16, 'scales': [2, 6], 'ratios': [0.25, 1, 3]}", (2, 6), (0.25, 1, 3)),
    ("feat_stride: 16, ratios: (1,)", (8, 16, 32), (1,)),
], ids=["coco-yaml-tuple", "tuple", "dict-literal", "bare-keys"])
def test_param_str_scales_and_ratios(param_str, scales, ratios) -> None:
    n = len(scales) * len(ratios)
    cls, bbox = _inputs(4, n_anchors=n)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    _same(_ours(_python_text(param_str), (cls, bbox, im_info)),
          P.proposals(cls, bbox, im_info, scales=scales, ratios=ratios))


def test_feat_stride_other_than_16() -> None:
    cls, bbox = _inputs(5, height=7, width=10)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    _same(_ours(_python_text("'feat_stride': 32"), (cls, bbox, im_info)),
          P.proposals(cls, bbox, im_info, feat_stride=32))


def test_min_size_filter_removes_boxes() -> None:
    # shrinking deltas make many small boxes: at scale 2 the threshold is 32 pixels
    cls, bbox = _inputs(6, spread=0.3)
    bbox[0, 2::4] -= 2.0
    bbox[0, 3::4] -= 1.5
    im_info = np.array([[224, 300, 2.0]], np.float32)
    ref = P.proposals(cls, bbox, im_info, cfg=(6000, 0, 0.7, 16))
    unfiltered = P.proposals(cls, bbox, im_info, cfg=(6000, 0, 0.7, 0))
    assert len(ref[0]) < len(unfiltered[0])
    widths = ref[0][:, 3] - ref[0][:, 1] + 1
    heights = ref[0][:, 4] - ref[0][:, 2] + 1
    assert (widths >= 32).all() and (heights >= 32).all()
    _same(_ours(_python_text(), (cls, bbox, im_info)), P.proposals(cls, bbox, im_info))


def test_fewer_survivors_than_post_nms_gives_fewer_rows() -> None:
    # a 3 x 4 map (108 anchors) on a small image: NMS leaves far fewer than 300
    cls, bbox = _inputs(7, height=3, width=4)
    im_info = np.array([[48, 64, 1.0]], np.float32)
    ref = P.proposals(cls, bbox, im_info)
    assert 0 < len(ref[0]) < 300
    _same(_ours(_python_text(), (cls, bbox, im_info)), ref)


def test_nothing_survives_gives_zero_rows() -> None:
    cls, bbox = _inputs(8, height=2, width=2)
    im_info = np.array([[10, 12, 1.0]], np.float32)  # every box is under 16 pixels
    rois, scores = _ours(_python_text(), (cls, bbox, im_info))
    assert rois.shape == (0, 5) and scores.shape == (0, 1)
    assert len(P.proposals(cls, bbox, im_info)[0]) == 0


def test_tied_scores_follow_a_stable_descending_sort() -> None:
    # landmarknet's documented tie rule: numpy's argsort(kind='stable')[::-1], in both sorts
    cls, bbox = _inputs(9, ties=True)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    text = _python_text()
    ours = _ours(text, (cls, bbox, im_info))
    _same(ours, P.proposals(cls, bbox, im_info))
    # the ties do decide something here: another tie rule keeps other boxes at the cut
    spec = layer_spec("Proposal", "proposal_param { pre_nms_topn: 500 post_nms_topn: 200 }",
                      [cls.shape, bbox.shape, (1, 3)], 2)
    module = converter_for(spec)(spec).module
    rois, scores = module(*(torch.from_numpy(x) for x in (cls, bbox, im_info)))
    ref = P.proposals(cls, bbox, im_info, cfg=(500, 200, 0.7, 16))
    _same((to_numpy(rois), to_numpy(scores)), ref)
    ascending = P.proposals(cls, bbox, im_info, cfg=(500, 200, 0.7, 16), kind="stable",
                            tie_order="ascending")
    assert not np.array_equal(ascending[0], ref[0])


def test_train_phase_takes_the_train_config() -> None:
    spec = layer_spec("Python", _python_text(), [(1, 18, 4, 4), (1, 36, 4, 4), (1, 3)])
    spec = LayerSpec(spec.name, spec.type, spec.param, spec.bottom_shapes, 1, phase="train")
    module = converter_for(spec)(spec).module
    assert (module.pre_nms_topn, module.post_nms_topn) == (12000, 2000)
    spec = LayerSpec(spec.name, spec.type, spec.param, spec.bottom_shapes, 1, phase="test")
    module = converter_for(spec)(spec).module
    assert (module.pre_nms_topn, module.post_nms_topn) == (6000, 300)


def test_6000_boxes_through_the_nms_without_a_post_cut() -> None:
    # a 38 x 63 map (21546 anchors), no cut after the NMS: every one of the 6000 boxes before
    # the cut goes through the NMS loop (its speed: benchmarks/bench_roi.py)
    cls, bbox = _inputs(10, height=38, width=63, spread=0.5)
    im_info = np.array([[600, 1000, 1.0]], np.float32)
    spec = layer_spec("Proposal", "proposal_param { post_nms_topn: 0 }",
                      [cls.shape, bbox.shape, (1, 3)], 2)
    module = converter_for(spec)(spec).module
    rois, scores = module(*[torch.from_numpy(x) for x in (cls, bbox, im_info)])
    ref = P.proposals(cls, bbox, im_info, cfg=(6000, 0, 0.7, 16))
    _same((to_numpy(rois), to_numpy(scores)), ref)
    assert len(ref[0]) > 300


# ----------------------------------------------------------------------------------------------
# the Proposal type (proposal_param, as OpenCV reads it)
# ----------------------------------------------------------------------------------------------

PROPOSAL_CASES = [
    ("defaults", "proposal_param { }", {}, [224, 300, 1.0]),
    ("all fields", "proposal_param { feat_stride: 16 base_size: 16 min_size: 8 ratio: 0.5 "
                   "ratio: 1 ratio: 2 scale: 4 scale: 8 scale: 16 pre_nms_topn: 1000 "
                   "post_nms_topn: 120 nms_thresh: 0.6 }",
     dict(scales=(4, 8, 16), cfg=(1000, 120, np.float32(0.6), 8)), [224, 300, 0.6]),
    ("base 8", "proposal_param { base_size: 8 scale: 2 scale: 4 scale: 8 }",
     dict(base_size=8, scales=(2, 4, 8)), [224, 300, 1.0]),
]


@pytest.mark.parametrize("case", PROPOSAL_CASES, ids=[c[0] for c in PROPOSAL_CASES])
def test_proposal_type_matches_py_faster_rcnn(case) -> None:
    _, text, kwargs, info = case
    cls, bbox = _inputs(11)
    im_info = np.array([info], np.float32)
    _same(_ours(text, (cls, bbox, im_info), "Proposal"),
          P.proposals(cls, bbox, im_info, **kwargs))


# ----------------------------------------------------------------------------------------------
# bad input: a LayerError that names the layer
# ----------------------------------------------------------------------------------------------

GOOD = [(1, 18, 4, 5), (1, 36, 4, 5), (1, 3)]
BAD = [
    ("Python", _python_text("'feat_stride': __import__('os').getcwd()"), GOOD, "param_str"),
    ("Python", _python_text("'feat_stride': 16; import os"), GOOD, "param_str"),
    ("Python", _python_text("'scales': (8, 16, 32)"), GOOD, "feat_stride"),
    ("Python", _python_text("'feat_stride': 16\n'anchor_sizes': [1, 2]"), GOOD, "anchor_sizes"),
    ("Python", _python_text("'feat_stride': 16\n'scales': ['a']"), GOOD, "scales"),
    ("Python", _python_text("'feat_stride': -16"), GOOD, "feat_stride"),
    ("Python", _python_text("'feat_stride': [16, 8]"), GOOD, "one number"),
    ("Python", _python_text("'feat_stride': 16\n'feat_stride': 8"), GOOD, "twice"),
    ("Python", _python_text(), [(2, 18, 4, 5), (2, 36, 4, 5), (2, 3)], "batch size"),
    ("Python", _python_text(), [(1, 16, 4, 5), (1, 36, 4, 5), (1, 3)], "2A = 18"),
    ("Python", _python_text(), [(1, 18, 4, 5), (1, 32, 4, 5), (1, 3)], "4A = 36"),
    ("Python", _python_text("'feat_stride': 16\n'scales': (8, 16)"), GOOD, "2A = 12"),
    ("Python", _python_text(), [(1, 18, 4, 5), (1, 36, 5, 5), (1, 3)], "H x W"),
    ("Python", _python_text(), [(1, 18, 4, 5), (1, 36, 4, 5), (1, 2)], "im_info"),
    ("Python", _python_text(), [(18, 4, 5), (1, 36, 4, 5), (1, 3)], "(1, 2A, H, W)"),
    ("Python", _python_text(), GOOD[:2], "bottom"),
    ("Proposal", "proposal_param { feat_stride: 0 }", GOOD, "feat_stride"),
    ("Proposal", "proposal_param { scale: -1 }", GOOD, "scale"),
    ("Proposal", "proposal_param { ratio: 1 }", GOOD, "2A = 6"),
    ("Proposal", "proposal_param { }", [(3, 18, 4, 5), (3, 36, 4, 5), (3, 3)], "batch size"),
]


@pytest.mark.parametrize("type_,text,shapes,word", BAD,
                         ids=[f"{b[0]}-{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_layers_are_refused_by_name(type_, text, shapes, word) -> None:
    assert_refused(type_, text, shapes, match=word)
    assert_bad_parameters_name_the_layer(type_, text, shapes, word)


def test_three_tops_are_refused() -> None:
    assert_refused("Python", _python_text(), GOOD, n_tops=3, match="1 or 2 tops")


def test_a_batch_of_two_at_run_time_names_the_layer() -> None:
    spec = layer_spec("Python", _python_text(), GOOD)
    module = converter_for(spec)(spec).module
    cls, bbox = _inputs(12, height=4, width=5)
    with pytest.raises(LayerError, match="layer 'l'.*single-image"):
        module(torch.from_numpy(np.concatenate([cls, cls])),
               torch.from_numpy(np.concatenate([bbox, bbox])), torch.ones(2, 3))


# ----------------------------------------------------------------------------------------------
# in a net, and OpenCV 4.x's Proposal type
# ----------------------------------------------------------------------------------------------

def _net(layer: str, height: int = H, width: int = W) -> str:
    return f"""name: "rpn_like"
input: "cls" input_shape {{ dim: 1 dim: 18 dim: {height} dim: {width} }}
input: "bbox" input_shape {{ dim: 1 dim: 36 dim: {height} dim: {width} }}
input: "im_info" input_shape {{ dim: 1 dim: 3 }}
{layer}
"""


PY_LAYER = ('layer { name: "proposal" type: "Python" bottom: "cls" bottom: "bbox" '
            'bottom: "im_info" top: "rois" top: "scores" ' + _python_text() + " }")


def test_in_a_net_the_top_shapes_are_the_post_nms_bound() -> None:
    net = build_net(parse_net(_net(PY_LAYER), path="net.prototxt"))
    info = net.layers["proposal"]
    assert [tuple(s) for s in info.top_shapes] == [(300, 5), (300, 1)]
    cls, bbox = _inputs(13)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    with torch.no_grad():
        out = net(*(torch.from_numpy(x) for x in (cls, bbox, im_info)))
    _same((to_numpy(out["rois"]), to_numpy(out["scores"])), P.proposals(cls, bbox, im_info))


def _opencv(text: str, inputs) -> np.ndarray:
    cv = pytest.importorskip("opencv_ref")
    try:
        return cv.run_opencv_text(text, None, dict(zip(("cls", "bbox", "im_info"), inputs)),
                                  ["proposal"])["proposal"]
    except cv.OpenCVUnavailable as exc:
        pytest.skip(str(exc))


CV_PARAMS = ("proposal_param { feat_stride: 16 base_size: 16 min_size: 0 ratio: 0.5 ratio: 1 "
             "ratio: 2 scale: 8 scale: 16 scale: 32 pre_nms_topn: 6000 post_nms_topn: 300 "
             "nms_thresh: 0.7 }")
CV_LAYER = ('layer { name: "proposal" type: "Proposal" bottom: "cls" bottom: "bbox" '
            f'bottom: "im_info" top: "rois" {CV_PARAMS} }}')


@pytest.mark.parametrize("seed,info", [(0, [224, 300, 1.0]), (1, [224, 300, 0.6]),
                                       (2, [223, 301, 2.0])])
def test_opencv_gives_the_same_proposals_where_it_follows(seed, info) -> None:
    # min_size 0 (OpenCV ignores min_size), distinct scores (no ties), more than 300 survivors
    cls, bbox = _inputs(seed)
    im_info = np.array([info], np.float32)
    theirs = _opencv(_net(CV_LAYER), (cls, bbox, im_info)).reshape(-1, 5)
    (ours,), _, _ = run_layer("Proposal", CV_PARAMS, [cls, bbox, im_info])
    ours = to_numpy(ours)
    assert ours.shape == theirs.shape == (300, 5)
    # the same boxes in the same order; OpenCV rounds a few corners 1 ulp differently (its
    # centre/size arithmetic differs in order from bbox_transform_inv's)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)


def test_opencv_ignores_min_size_and_pads_rows() -> None:
    # What differs: OpenCV never filters by min_size (nor reads im_info[2]) and always returns
    # post_nms_topn rows, the unused ones zero.
    cls, bbox = _inputs(7, height=3, width=4)
    bbox[0, 2::4] -= 1.0
    im_info = np.array([[48, 64, 1.0]], np.float32)
    text = _net(CV_LAYER.replace("min_size: 0", "min_size: 16"), 3, 4)
    theirs = _opencv(text, (cls, bbox, im_info)).reshape(-1, 5)
    ours = P.proposals(cls, bbox, im_info)[0]
    unfiltered = P.proposals(cls, bbox, im_info, cfg=(6000, 300, 0.7, 0))[0]
    assert len(ours) < len(unfiltered) < 300
    assert theirs.shape == (300, 5)
    np.testing.assert_allclose(theirs[:len(unfiltered)], unfiltered, rtol=1e-6, atol=1e-4)
    assert not theirs[len(unfiltered):].any()


def test_an_overlap_equal_to_the_threshold_does_not_suppress() -> None:
    # [0, 0, 9, 9] and [0, 0, 9, 4] (+1 areas 100 and 50) overlap exactly 0.5: the default GPU
    # NMS and py_cpu_nms keep both at 0.5 ('>' suppresses), the Cython cpu_nms would not
    from landmarknet.layers.roi import _greedy_nms
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4], [1, 0, 9, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    ref = P.nms(boxes, scores, 0.5)
    assert ref == [0, 1]  # the third overlaps the first 0.9
    kept = _greedy_nms(torch.from_numpy(boxes), torch.tensor(0.5), 0)
    assert kept.tolist() == ref


def test_opencv_rounds_anchor_sizes_half_up_and_truncates_im_info() -> None:
    # base 18, ratio 0.5: width 25, height 25 * 0.5 = 12.5, which generate_anchors' np.round
    # makes 12 and OpenCV's floor(x + 0.5) 13; and OpenCV clips to int(im_info) - 1
    cls, bbox = _inputs(0)
    no_filter = (6000, 300, 0.7, 0)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    theirs = _opencv(_net(CV_LAYER.replace("base_size: 16", "base_size: 18")),
                     (cls, bbox, im_info)).reshape(-1, 5)
    ours = P.proposals(cls, bbox, im_info, cfg=no_filter, base_size=18)[0]
    half_up = P.proposals(cls, bbox, im_info, cfg=no_filter, base_size=18, rounding="half_up")[0]
    assert P.anchors(18)[0, 1] == -39 and P.anchors(18, rounding="half_up")[0, 1] == -43
    assert not np.allclose(theirs[:len(ours)], ours, atol=1e-4)
    np.testing.assert_allclose(theirs[:len(half_up)], half_up, rtol=1e-6, atol=1e-4)
    fractional = np.array([[223.5, 300.5, 1.0]], np.float32)
    theirs = _opencv(_net(CV_LAYER), (cls, bbox, fractional)).reshape(-1, 5)
    assert P.proposals(cls, bbox, fractional, cfg=no_filter)[0][:, 4].max() == 222.5
    truncated = P.proposals(cls, bbox, np.array([[223, 300, 1.0]], np.float32), cfg=no_filter)[0]
    np.testing.assert_allclose(theirs[:len(truncated)], truncated, rtol=1e-6, atol=1e-4)


def test_opencv_keeps_the_earlier_of_equal_scores_at_the_cut() -> None:
    # OpenCV sorts with std::stable_sort: equal scores stay in anchor order, so at the
    # pre_nms_topn cut the earlier anchors survive (landmarknet, like a stable argsort()[::-1],
    # keeps the later ones). The boxes it keeps are those of that rule; the order of its rows
    # among equal scores is its own.
    cls, bbox = _inputs(5, ties=True)
    im_info = np.array([[224, 300, 1.0]], np.float32)
    layer = CV_LAYER.replace("pre_nms_topn: 6000", "pre_nms_topn: 100").replace(
        "post_nms_topn: 300", "post_nms_topn: 50")
    theirs = _opencv(_net(layer), (cls, bbox, im_info)).reshape(-1, 5)
    cfg = (100, 50, 0.7, 0)
    earlier = P.proposals(cls, bbox, im_info, cfg=cfg, tie_order="ascending")[0]
    ours = P.proposals(cls, bbox, im_info, cfg=cfg)[0]

    def rows(a):
        return sorted(map(tuple, np.round(a, 2).tolist()))

    assert (np.abs(theirs).sum(1) > 0).sum() == len(earlier)
    assert rows(theirs[:len(earlier)]) == rows(earlier)
    assert rows(ours) != rows(earlier)
