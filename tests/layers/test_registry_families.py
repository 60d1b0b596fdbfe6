"""Every built-in type is registered in its family (layers/<family>.py), with an origin and a
one-line summary."""
from __future__ import annotations

from landmarknet.layers.registry import registered_types

#: the families of the activation, shape, loss, detection and roi files
FAMILIES = {
    "activation": {"ReLU", "ReLU6", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power",
                   "Exp", "Log", "Clip", "Swish", "Threshold", "Dropout",
                   "Python:spatial_dropout.SpatialDropoutLayer"},
    "shape": {"Eltwise", "Concat", "Slice", "Split", "Flatten", "Reshape", "Crop", "Softmax",
              "Reduction", "ArgMax", "Silence", "Tile", "Parameter", "Permute",
              "ShuffleChannel", "Upsample", "Interp", "Axpy"},
    "loss": {"EuclideanLoss", "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "Accuracy",
             "HingeLoss", "MultinomialLogisticLoss"},
    "detection": {"PriorBox", "DetectionOutput", "YoloDetectionOutput", "Yolov3DetectionOutput",
                  "MultiBoxLoss", "DetectionEvaluate"},
    "roi": {"ROIPooling", "PSROIPooling", "Proposal", "Python:rpn.proposal_layer.ProposalLayer"},
}


def test_registry_families_origins_and_summaries() -> None:
    regs = registered_types()
    for family, types in FAMILIES.items():
        for t in types:
            assert t in regs, t
            assert regs[t].family == family, t
            assert regs[t].summary and "\n" not in regs[t].summary, t
    for t in ("ReLU6", "Permute", "ShuffleChannel", "Upsample", "Interp", "Axpy", "PriorBox",
              "DetectionOutput", "ROIPooling", "PSROIPooling", "Proposal",
              "Python:rpn.proposal_layer.ProposalLayer",
              "Python:spatial_dropout.SpatialDropoutLayer", "MatWrite"):
        assert regs[t].origin != "BVLC Caffe", t
    assert regs["PriorBox"].origin == regs["DetectionOutput"].origin == "SSD (weiliu89/caffe)"
    assert regs["YoloDetectionOutput"].origin == regs["Yolov3DetectionOutput"].origin \
        == "MobileNet-YOLO (eric612/MobileNet-YOLO)"
    assert regs["Softmax"].origin == "BVLC Caffe"


def test_registered_types_and_families():
    regs = registered_types()
    expect = {"Convolution": "conv", "Deconvolution": "conv", "InnerProduct": "conv",
              "Embed": "conv", "Pooling": "pool", "SPP": "pool", "BatchNorm": "norm",
              "Scale": "norm", "Bias": "norm", "LRN": "norm", "MVN": "norm", "Normalize": "norm"}
    for type_, family in expect.items():
        assert regs[type_].family == family
        assert regs[type_].summary, f"{type_} has no one-line summary"
    assert regs["Normalize"].origin == "SSD (weiliu89/caffe)"
    assert regs["Convolution"].origin == "BVLC Caffe"
