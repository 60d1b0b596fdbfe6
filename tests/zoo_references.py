"""Which reference checks each deploy net of the shared zoo, and how (used by
tests/test_real_caffe_zoo.py and tools/dev/zoo_compat_table.py).

The references are the real Caffe of `make caffe-ref` (an SSD fork, tests/reference/real_caffe.py)
and OpenCV 4.x's Caffe importer (tests/opencv_ref.py). Where a reference lacks one fork layer,
it runs a *variant* of the file, and landmarknet the file itself:

* ``grouped``: DepthwiseConvolution / ConvolutionDepthwise become a plain Convolution with
  ``group: num_output`` (what those fork layers compute: one filter per channel; their weight
  blob has the grouped convolution's shape, so the .caffemodel fits both);
* ``trunk``: the net without its DetectionOutput layer, for nets whose detection head needs
  another fork's C++ (RefineDet's ARM filtering, FaceBoxes' densified priors). landmarknet then
  builds the trunk as well.

A blob agrees when ``max |ours - ref| / max |ref| <= REL_TOL`` and the shapes are equal.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import read_net
from landmarknet.params import load_weights, randomize, save_weights
from opencv_ref import OpenCVFailed, run_opencv
from reference.compare import rel_err
from reference.real_caffe import caffe_forward, map_layers, without_layers

REL_TOL = 1e-4
INPUT_SEED = 3
WEIGHT_SEED = 0
DEPTHWISE_TYPES = ("DepthwiseConvolution", "ConvolutionDepthwise")


@dataclass(frozen=True)
class ZooNet:
    """One deploy net and how each reference runs it."""

    rel: str                     # prototxt under the zoo
    shapes: dict                 # input shapes (smaller than the file's where the net allows)
    model: str | None = None     # shipped .caffemodel under the zoo
    caffe: str = "as is"         # the reference Caffe runs: "as is", "grouped", "trunk" or ""
    opencv: str = ""             # OpenCV runs ("as is", "grouped" or ""), in the test file
    compare_priors: bool = True  # False: the file's PriorBox semantics are another fork's
    min_detections: int = 0      # detection_out must hold at least this many real rows
    caffe_refusal: str = ""      # what the reference Caffe says about the file itself
    opencv_refusal: str = ""     # what OpenCV says about it (with weights, where needed)
    opencv_skip: tuple = ()      # layers where OpenCV is known to differ from the fork's Caffe
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.rel.split("/")[0]


# Shapes: smaller than the files' where the net is fully convolutional or pools globally, so
# that everything runs in a few minutes on two cores; nets with a fixed-size InnerProduct or a
# fixed pooling kernel keep their size. SSD nets run two images (DetectionOutput's image ids).
ZOO = [
    ZooNet("mtcnn_det1/det1.prototxt", {"data": (1, 3, 31, 43)}, "mtcnn_det1/det1.caffemodel"),
    ZooNet("mtcnn_det2/det2.prototxt", {"data": (3, 3, 24, 24)}, "mtcnn_det2/det2.caffemodel"),
    ZooNet("mtcnn_det3/det3.prototxt", {"data": (2, 3, 48, 48)}, "mtcnn_det3/det3.caffemodel"),
    ZooNet("caffe_onnx_test_tiny/test.prototxt", {"data": (1, 3, 64, 64)},
           "caffe_onnx_test_tiny/test.caffemodel"),
    ZooNet("ultraface_slim320/slim-320.prototxt", {"input": (1, 3, 240, 320)},
           "ultraface_slim320/slim-320.caffemodel"),
    ZooNet("squeezenet_v1.0/deploy.prototxt", {"data": (1, 3, 163, 163)}),
    ZooNet("squeezenet_v1.1/deploy.prototxt", {"data": (1, 3, 163, 163)}),
    ZooNet("bvlc_googlenet/deploy.prototxt", {"data": (1, 3, 224, 224)}),
    ZooNet("resnet_50/ResNet-50-deploy.prototxt", {"data": (1, 3, 224, 224)}),
    ZooNet("mobilenet_v1/mobilenet_deploy.prototxt", {"data": (1, 3, 128, 128)}),
    ZooNet("legacy_input_dim_caffenet/deploy.prototxt", {"data": (1, 3, 227, 227)}),
    ZooNet("legacy_v1_lenet/lenet.prototxt", {"data": (2, 1, 28, 28)}),
    ZooNet("mnist_lenet/lenet.prototxt", {"data": (2, 1, 28, 28)}),
    ZooNet("cifar10_quick/cifar10_quick.prototxt", {"data": (2, 3, 32, 32)}),
    ZooNet("hed/deploy.prototxt", {"data": (1, 3, 128, 160)}),
    ZooNet("openpose_face/pose_deploy.prototxt", {"image": (1, 3, 96, 112)}),
    ZooNet("se_resnet50_shicai/se_resnet_50_v1_deploy.prototxt", {"data": (1, 3, 129, 129)}),
    ZooNet("ssd300_vgg_voc/deploy.prototxt", {"data": (2, 3, 300, 300)}, min_detections=10,
           note="save_output_param removed for Caffe (it would delete its output_directory)"),
    ZooNet("mobilenetv2_ssdlite_voc/deploy.prototxt", {"data": (2, 3, 300, 300)},
           min_detections=10),
    ZooNet("refinedet_vgg16_320_voc/deploy.prototxt", {"data": (1, 3, 320, 320)},
           caffe="trunk", opencv="as is", min_detections=10, opencv_skip=("detection_out",),
           caffe_refusal='no field named "objectness_score"',
           note="the fork's DetectionOutput has no objectness_score (RefineDet's own fork); "
                "OpenCV's RefineDet boxes differ from RefineDet's C++, which "
                "tests/test_ssd.py (test_zoo_refinedet_detection_out_row_for_row) rebuilds from "
                "two runs of the reference Caffe: detection_out is checked there"),
    ZooNet("faceboxes/deploy.prototxt", {"data": (2, 3, 256, 320)}, caffe="trunk",
           compare_priors=False,
           caffe_refusal="Number of priors must match number of location predictions",
           opencv_refusal="(numPriors * _numLocClasses * 4) == total(inputs[0], 1)",
           note="21 anchors per cell need FaceBoxes' own densified PriorBox; SSD's makes 3"),
    ZooNet("mobilenetv2_yolov3/mobilenet_v2_yolov3.prototxt", {"data": (1, 3, 160, 224)},
           caffe="grouped", caffe_refusal="Unknown layer type: ConvolutionDepthwise",
           opencv_refusal='Can\'t create layer "layer74-upsample" of type "Upsample"'),
    ZooNet("dwconv_mobilenet/depthwised_mobilenet_deploy.prototxt", {"data": (1, 3, 128, 128)},
           caffe="grouped", caffe_refusal="Unknown layer type: DepthwiseConvolution",
           opencv_refusal='of type "DepthwiseConvolution"'),
    ZooNet("shufflenet_v2_1x/shufflenet_v2_1x-deploy.prototxt", {"data": (1, 3, 224, 224)},
           caffe="", opencv="grouped", caffe_refusal='no field named "shuffle_channel_param"',
           opencv_refusal='of type "DepthwiseConvolution"'),
    ZooNet("pspnet50_ade20k/pspnet50_ADE20K_473.prototxt", {"data": (1, 3, 473, 473)},
           caffe="", caffe_refusal='no field named "interp_param"',
           opencv_refusal="UnknownField should have at least 2 items",
           note="fork BN (bn_param) and Interp: no reference runs it"),
    ZooNet("tsn_bn_inception_rgb/tsn_bn_inception_rgb_deploy.prototxt",
           {"data": (1, 3, 224, 224)}, caffe="", caffe_refusal="Unknown layer type: BN",
           opencv_refusal="UnknownField should have at least 2 items",
           note="fork BN (bn_param): no reference runs it"),
]


# -- variants --------------------------------------------------------------------------------
def _depthwise_as_grouped(block: str, kind: str | None) -> str:
    if kind not in DEPTHWISE_TYPES:
        return block
    block = re.sub(r"(\btype\s*:\s*[\"'])" + kind + r"([\"'])", r"\1Convolution\2", block, count=1)
    if not re.search(r"\bgroup\s*:", block):
        block = re.sub(r"(\bnum_output\s*:\s*(\d+))", r"\1 group: \2", block, count=1)
    return block


def write_variant(prototxt: Path, variant: str, folder: Path) -> Path:
    """The file a reference runs: the prototxt itself ("as is") or a variant in folder."""
    if variant == "as is":
        return prototxt
    text = prototxt.read_text(encoding="utf-8")
    if variant == "trunk":
        text = without_layers(text, "DetectionOutput")
    elif variant == "grouped":
        text = map_layers(text, _depthwise_as_grouped)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    out = folder / f"{variant}_{prototxt.name}"
    out.write_text(text, encoding="utf-8")
    return out


def ours_file(case: ZooNet, zoo: Path, caffe_file: Path) -> Path:
    """What landmarknet builds: the file itself, or the trunk when Caffe runs the trunk."""
    return caffe_file if case.caffe == "trunk" else zoo / case.rel


# -- comparisons -----------------------------------------------------------------------------
def seeded_inputs(shapes: dict) -> dict[str, np.ndarray]:
    """Uniform inputs in [-1, 1): non-trivial, the same on both sides."""
    rng = np.random.default_rng(INPUT_SEED)
    return {k: rng.uniform(-1, 1, v).astype(np.float32) for k, v in shapes.items()}


def prior_derived(meta: dict) -> set[str]:
    """Blobs written by PriorBox layers or computed from them (in Caffe's layer order)."""
    derived: set[str] = set()
    for layer in meta["layers"]:
        if layer["type"] == "PriorBox" or derived.intersection(layer["bottoms"]):
            derived.update(layer["tops"])
    return derived


def compared_blobs(meta: dict, case: ZooNet) -> list[str]:
    """Caffe's blobs in creation order, without the copies its Split layers make (and without
    the prior boxes where the file means another fork's PriorBox)."""
    skip = {t for layer in meta["layers"] if layer["type"] == "Split" for t in layer["tops"]}
    if not case.compare_priors:
        skip |= prior_derived(meta)
    return [b for b in meta["blobs"] if b not in skip]


Row = tuple[str, "str | float"]


def rows_against(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], names: list[str],
                 who: str) -> list[Row]:
    """(blob, relative error or what is wrong) for each name, in order."""
    rows: list[Row] = []
    for name in names:
        if name not in ours:
            rows.append((name, "missing in landmarknet"))
        elif ours[name].shape != ref[name].shape:
            rows.append((name, f"shape {tuple(ours[name].shape)} != {who}'s {ref[name].shape}"))
        else:
            rows.append((name, rel_err(ours[name], ref[name])))
    return rows


def bad_rows(rows: list[Row]) -> list[Row]:
    """Rows that fail: a message, or an error above REL_TOL."""
    return [(b, e) for b, e in rows if isinstance(e, str) or e > REL_TOL]


def worst(rows: list[Row]) -> float:
    """The largest numeric relative error of the rows."""
    return max((e for _, e in rows if not isinstance(e, str)), default=0.0)


@dataclass
class Comparison:
    """One net against one reference: the rows, the reference's blobs, and what ran."""

    label: str
    rows: list[Row]
    ref: dict[str, np.ndarray]
    ours: dict[str, np.ndarray]
    names: list[str]
    inputs: list[str]
    unreached: list[str] = field(default_factory=list)  # layers OpenCV cannot address


def compare_with_caffe(case: ZooNet, zoo: Path, tmp: Path, shipped: bool = False) -> Comparison:
    """Caffe (seeded random weights it writes itself, or the shipped ones) against landmarknet
    loading the same weights strictly; every blob."""
    caffe_file = write_variant(zoo / case.rel, case.caffe, tmp)
    inputs = seeded_inputs(case.shapes)
    if shipped:
        weights = zoo / case.model
        meta, ref = caffe_forward(caffe_file, inputs, weights=weights)
    else:
        weights = tmp / "caffe_random.caffemodel"
        meta, ref = caffe_forward(caffe_file, inputs, seed=WEIGHT_SEED, save_weights=weights)
    names = compared_blobs(meta, case)
    net = build_net(ours_file(case, zoo, caffe_file), input_shapes=case.shapes)
    load_weights(net, weights, strict=True)
    known = [n for n in names if n in net.caffe_graph.latest]
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run(inputs, blobs=known).items()}
    kind = "shipped" if shipped else "random"
    label = f"{case.rel} [{case.caffe}] vs reference Caffe, {kind} weights"
    return Comparison(label, rows_against(ours, ref, names, "Caffe"), ref, ours, names,
                      list(meta["inputs"]))


def opencv_layers(net) -> list[str]:
    """Layers OpenCV can address by name: every layer with a top, the input layers aside."""
    return [i.node.name for i in net.layers.values() if i.node.tops and i.node.type != "Input"]


def reference_weights(case: ZooNet, zoo: Path, tmp: Path) -> Path:
    """Seeded random weights for the file: written by the reference Caffe when it runs the net
    (or a variant of it), else by landmarknet's .caffemodel writer."""
    prototxt = zoo / case.rel
    weights = tmp / "weights.caffemodel"
    if case.caffe:
        caffe_forward(write_variant(prototxt, case.caffe, tmp), seeded_inputs(case.shapes),
                      seed=WEIGHT_SEED, save_weights=weights)
    else:
        net = build_net(prototxt, input_shapes=case.shapes)
        randomize(net, seed=WEIGHT_SEED)
        save_weights(net, weights, read_net(prototxt).net)
    return weights


def canonical_detections(rows: np.ndarray) -> np.ndarray:
    """detection_out rows sorted by image, label, score (descending) and box: OpenCV orders
    them by score across labels, SSD-Caffe by label first."""
    flat = rows.reshape(-1, 7)
    order = np.lexsort((flat[:, 6], flat[:, 5], flat[:, 4], flat[:, 3], -flat[:, 2], flat[:, 1],
                        flat[:, 0]))
    return flat[order].reshape(rows.shape)


def compare_with_opencv(case: ZooNet, zoo: Path, tmp: Path) -> Comparison:
    """OpenCV on the file (or its variant) against landmarknet on the file: every layer's first
    top (see reference_weights for the weights). detection_out is compared as a set of rows."""
    prototxt = zoo / case.rel
    inputs = seeded_inputs(case.shapes)
    weights = reference_weights(case, zoo, tmp)
    net = build_net(prototxt, input_shapes=case.shapes)
    load_weights(net, weights, strict=True)
    tops = {i.node.name: net.caffe_graph.blob_of[i.node.tops[0]] for i in net.layers.values()
            if i.node.tops}
    ref, unreached = run_opencv_by_layer(write_variant(prototxt, case.opencv, tmp), weights,
                                         inputs, opencv_layers(net), tops)
    layers = [n for n in opencv_layers(net) if n not in unreached and n not in case.opencv_skip]
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run_layers(inputs, layers).items()}
    if "detection_out" in layers:
        ours["detection_out"] = canonical_detections(ours["detection_out"])
        ref["detection_out"] = canonical_detections(ref["detection_out"])
    label = f"{case.rel} [{case.opencv}] vs OpenCV, random weights"
    return Comparison(label, rows_against(ours, ref, layers, "OpenCV"), ref, ours, layers, [],
                      unreached)


def run_opencv_by_layer(prototxt: Path, weights: Path, inputs: dict[str, np.ndarray],
                        layers: list[str], tops: dict[str, str]
                        ) -> tuple[dict[str, np.ndarray], list[str]]:
    """OpenCV's output of each layer, by layer name; and the layers it cannot address. OpenCV
    names some outputs after their blob instead (a net output whose top is not the layer's
    name), so a layer it does not find is asked for by its top, then left out."""
    def reachable(names: list[str]) -> bool:
        try:
            run_opencv(prototxt, weights, inputs, names, timeout=300)
            return True
        except OpenCVFailed as exc:
            if "Requested object was not found" not in str(exc):
                raise
            return False

    try:
        return run_opencv(prototxt, weights, inputs, layers, timeout=300), []
    except OpenCVFailed as exc:
        if "Requested object was not found" not in str(exc):
            raise
    missing, todo = [], [layers]
    while todo:  # bisect: a few runs find the few names OpenCV lacks
        part = todo.pop()
        if reachable(part):
            continue
        if len(part) == 1:
            missing.append(part[0])
        else:
            todo += [part[:len(part) // 2], part[len(part) // 2:]]
    alias = {n: tops[n] for n in missing if n in tops and reachable([tops[n]])}
    unreached = [n for n in missing if n not in alias]
    asked = [alias.get(n, n) for n in layers if n not in unreached]
    out = run_opencv(prototxt, weights, inputs, asked, timeout=300)
    by_layer = {n: out[alias.get(n, n)] for n in layers if n not in unreached}
    return by_layer, unreached


def detection_problem(ours: np.ndarray, ref: np.ndarray, min_rows: int) -> str | None:
    """detection_out row for row: same shape, image ids and labels equal, scores and boxes
    within REL_TOL; None when they agree."""
    if ours.shape != ref.shape:
        return f"detection_out shape {ours.shape} != {ref.shape}"
    ours, ref = ours.reshape(-1, 7), ref.reshape(-1, 7)
    real = int((ref[:, 0] >= 0).sum())
    if real < min_rows:
        return f"only {real} detections: the comparison would be vacuous"
    rows = np.flatnonzero((ours[:, :2] != ref[:, :2]).any(axis=1)
                          | (np.abs(ours[:, 2:] - ref[:, 2:]) > REL_TOL).any(axis=1))
    if len(rows):
        i = rows[0]
        return (f"{len(rows)} of {len(ref)} rows differ; first row {i}: ours {ours[i].tolist()}"
                f" reference {ref[i].tolist()}")
    return None
