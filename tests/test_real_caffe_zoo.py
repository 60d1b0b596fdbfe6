"""Every deploy net of the shared zoo against a real Caffe, or OpenCV where that Caffe lacks one.

The reference Caffe is the SSD-based fork that `make caffe-ref` builds (docs/caffe_compat.md,
"The reference Caffe"). For each net it runs (tests/zoo_references.py says which file and why):

* Caffe fills the net with seeded random weights of order one and writes them as a .caffemodel;
  landmarknet builds the net, loads that file strictly and runs the same seeded inputs;
* EVERY blob Caffe holds after the forward pass must equal landmarknet's blob of the same name
  (in-place blobs hold their last value; the copies made by Caffe's inserted Split layers are
  left out) within 1e-4 relative, with the same shape. That covers the pre-softmax blobs of nets
  whose outputs saturate, and DetectionOutput's rows, which are also compared row for row;
* nets that ship a .caffemodel run again with their real weights.

The fork has no ConvolutionDepthwise, DepthwiseConvolution, ShuffleChannel, Interp, registered
BN, nor RefineDet's or FaceBoxes' detection heads: those nets run as variants (grouped
convolution for the depthwise layers, the trunk before DetectionOutput) and/or against OpenCV
4.x. Each such claim ("the reference refuses this file, because ...") is itself tested, so the
table cannot go stale silently.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from opencv_ref import OpenCVFailed, OpenCVUnavailable, run_opencv
from reference.real_caffe import CaffeFailed, caffe_load
from zoo_references import (REL_TOL, ZOO, Comparison, ZooNet, bad_rows, compare_with_caffe,
                            compare_with_opencv, detection_problem, reference_weights,
                            seeded_inputs, worst)

CAFFE_CASES = [pytest.param(c, id=c.id) for c in ZOO if c.caffe]
SHIPPED_CASES = [pytest.param(c, id=c.id) for c in ZOO if c.caffe and c.model]
OPENCV_CASES = [pytest.param(c, id=c.id, marks=[pytest.mark.caffe_ref] if c.caffe else [])
                for c in ZOO if c.opencv]
CAFFE_REFUSED = [pytest.param(c, id=c.id) for c in ZOO if c.caffe_refusal]
OPENCV_REFUSED = [pytest.param(c, id=c.id, marks=[pytest.mark.caffe_ref] if c.caffe else [])
                  for c in ZOO if c.opencv_refusal]


def assert_agrees(result: Comparison, case: ZooNet) -> None:
    """Every blob within REL_TOL (the message names the first that diverges), something
    computed varies, and detection_out agrees row for row."""
    bad = bad_rows(result.rows)
    assert result.rows, f"{result.label}: nothing compared"
    assert not bad, (f"{result.label}: {len(bad)} of {len(result.rows)} blobs differ; first: "
                     f"{bad[0][0]} ({bad[0][1]}); the first {min(len(bad), 12)}: {bad[:12]}")
    computed = [b for b in result.names if b not in result.inputs and result.ref[b].size]
    assert any(np.ptp(result.ref[b]) > 0 for b in computed), \
        f"{result.label}: every compared blob is constant"
    if "detection_out" in result.names:
        problem = detection_problem(result.ours["detection_out"], result.ref["detection_out"],
                                    case.min_detections)
        assert problem is None, f"{result.label}: {problem}"
    unreached = f"; OpenCV cannot address {result.unreached}" if result.unreached else ""
    print(f"{result.label}: {len(result.rows)} blobs agree within {REL_TOL:g}, "
          f"max relative error {worst(result.rows):.2e}{unreached}")


@pytest.mark.slow
@pytest.mark.caffe_ref
@pytest.mark.parametrize("case", CAFFE_CASES)
def test_zoo_net_matches_real_caffe(zoo, tmp_path, case):
    assert_agrees(compare_with_caffe(case, zoo, tmp_path), case)


@pytest.mark.slow
@pytest.mark.caffe_ref
@pytest.mark.parametrize("case", SHIPPED_CASES)
def test_zoo_net_matches_real_caffe_shipped_weights(zoo, tmp_path, case):
    assert_agrees(compare_with_caffe(case, zoo, tmp_path, shipped=True), case)


@pytest.mark.slow
@pytest.mark.parametrize("case", OPENCV_CASES)
def test_zoo_net_matches_opencv(zoo, tmp_path, case):
    try:
        result = compare_with_opencv(case, zoo, tmp_path)
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer is unavailable: {exc}")
    assert_agrees(result, case)


@pytest.mark.caffe_ref
@pytest.mark.parametrize("case", CAFFE_REFUSED)
def test_reference_caffe_refuses_file(zoo, case):
    """Keeps the table honest: the reference Caffe refuses the file itself, and why."""
    with pytest.raises(CaffeFailed, match=re.escape(case.caffe_refusal)):
        caffe_load(zoo / case.rel)


@pytest.mark.parametrize("case", OPENCV_REFUSED)
def test_opencv_refuses_file(zoo, tmp_path, case):
    """Keeps the table honest: OpenCV 4.x refuses the file itself, and why (given seeded weights
    where some reference runs the net, so that OpenCV gets as far as it can)."""
    weights = reference_weights(case, zoo, tmp_path) if case.caffe or case.opencv else None
    try:
        with pytest.raises(OpenCVFailed, match=re.escape(case.opencv_refusal)):
            run_opencv(zoo / case.rel, weights, seeded_inputs(case.shapes))
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer is unavailable: {exc}")


def test_zoo_deploy_nets_all_listed(zoo):
    """Every deploy net of the zoo's MANIFEST is in the table, with at least one way to check
    it or a stated reason why none exists."""
    rows = [line.split("\t") for line in (zoo / "MANIFEST.tsv").read_text().splitlines()[1:]]
    deploy = {r[0] for r in rows if len(r) > 5 and r[5] == "deploy"}
    listed = {c.rel for c in ZOO}
    assert deploy == listed, (sorted(deploy - listed), sorted(listed - deploy))
    for case in ZOO:
        assert case.caffe or case.opencv or case.note, case.rel
