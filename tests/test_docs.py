"""Generated documentation stays in step with the code."""
from __future__ import annotations

from pathlib import Path

from landmarknet.layer_docs import render

ROOT = Path(__file__).resolve().parent.parent


def test_layer_reference_is_current():
    current = (ROOT / "docs" / "layers.md").read_text()
    assert current == render(), ("docs/layers.md is stale: run "
                                 "`python -m landmarknet.layer_docs > docs/layers.md`")


def test_layer_reference_covers_the_issue_list():
    text = (ROOT / "docs" / "layers.md").read_text()
    wanted = """Input DummyData Convolution Deconvolution Pooling InnerProduct ReLU PReLU ELU Sigmoid
    TanH AbsVal BNLL Power Exp Log Clip Swish Threshold Dropout BatchNorm Scale Bias Eltwise Concat
    Slice Split Flatten Reshape Crop Softmax LRN MVN Reduction ArgMax Silence Tile Permute
    EuclideanLoss SoftmaxWithLoss SigmoidCrossEntropyLoss Accuracy Python Normalize PriorBox
    DetectionOutput Upsample Interp ReLU6 ShuffleChannel Axpy""".split()
    missing = [t for t in wanted if f"`{t}`" not in text and t != "Input"]
    assert not missing, missing
