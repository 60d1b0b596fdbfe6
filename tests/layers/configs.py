"""A small configuration for every registered layer type, for the registry battery.

Each entry is a whole net (inputs, the layer under test, and where it needs them the layers that
make its bottoms) small enough to build, run, emit and export in well under a second, and says
how to fill inputs that are not arbitrary reals (labels, probabilities, points). A new layer
type needs an entry here; ``test_every_registered_type_has_a_config`` says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LayerConfig:
    """A net that holds the type under test, and how to fill its inputs."""

    text: str
    #: input name -> "label:K" (integers 0..K-1), "unit" (uniform in (0.05, 0.95)),
    #: "positive" (uniform in (0.5, 1.5)), "prob" (rows summing to one), "rois:N:S" (regions
    #: [batch index < N, x1, y1, x2, y2], corners in (-S/4, 5S/4) pixels), "im_info:H:W:S"
    #: (the row [H, W, S]); others: randn.
    feeds: dict[str, str] = field(default_factory=dict)
    layer: str = "x"  # the name of the layer under test


def _inputs(shapes: dict[str, tuple[int, ...]]) -> str:
    return "".join(f'input: "{n}" input_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n'
                   for n, s in shapes.items())


def one(type_name: str, shapes: dict[str, tuple[int, ...]], params: str = "", *,
        tops: int = 1, feeds: dict[str, str] | None = None, before: str = "") -> LayerConfig:
    """A net of inputs ``shapes`` and one layer 'x' of the type reading all of them."""
    bottoms = " ".join(f'bottom: "{n}"' for n in shapes)
    top_text = " ".join(f'top: "x{i or ""}"' for i in range(tops))
    return LayerConfig(
        _inputs(shapes) + before
        + f'layer {{ name: "x" type: "{type_name}" {bottoms} {top_text} {params} }}\n',
        feeds or {})


def custom(text: str, feeds: dict[str, str] | None = None) -> LayerConfig:
    """A net written out in full; its layer under test is named 'x'."""
    return LayerConfig(text, feeds or {})


def python(layer: str, shapes: dict[str, tuple[int, ...]], params: dict | None = None, *,
           tops: int = 1, feeds: dict[str, str] | None = None) -> LayerConfig:
    """A Python layer of the project's landmark module."""
    param_str = json.dumps(json.dumps(params or {}))
    return one("Python", shapes, f'python_param {{ module: "landmarknet.layers.landmark" '
                                 f'layer: "{layer}" param_str: {param_str} }}',
               tops=tops, feeds=feeds)


X = {"data": (2, 3, 5, 6)}
V = {"data": (4, 6)}
POOL_MASK = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
             'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')

CONFIGS: dict[str, LayerConfig] = {
    # activations
    "AbsVal": one("AbsVal", X),
    "BNLL": one("BNLL", X),
    "Clip": one("Clip", X, "clip_param { min: -0.5 max: 0.7 }"),
    "Dropout": one("Dropout", X, "dropout_param { dropout_ratio: 0.3 }"),
    "ELU": one("ELU", X, "elu_param { alpha: 0.7 }"),
    "Exp": one("Exp", X, "exp_param { base: 2 scale: 0.5 shift: 0.1 }"),
    "HardSigmoid": one("HardSigmoid", X, "hardsigmoid_param { alpha: 0.3 beta: 0.4 }"),
    "HardSwish": one("HardSwish", X),
    "Log": one("Log", X, "log_param { base: 10 scale: 2 shift: 0.5 }",
               feeds={"data": "positive"}),
    "PReLU": one("PReLU", X),
    "Power": one("Power", X, "power_param { power: 2 scale: 0.5 shift: 1 }"),
    "ReLU": one("ReLU", X, "relu_param { negative_slope: 0.1 }"),
    "ReLU6": one("ReLU6", X),
    "Sigmoid": one("Sigmoid", X),
    "Swish": one("Swish", X, "swish_param { beta: 1.5 }"),
    "TanH": one("TanH", X),
    "Threshold": one("Threshold", X, "threshold_param { threshold: 0.1 }"),
    # convolution family
    "Convolution": one("Convolution", X, "convolution_param { num_output: 4 kernel_size: 3 "
                                         "stride: 2 pad: 1 }"),
    "ConvolutionDepthwise": one("ConvolutionDepthwise", X, "convolution_param { kernel_size: 3 "
                                                           "pad: 1 }"),
    "DepthwiseConvolution": one("DepthwiseConvolution", X,
                                "convolution_param { num_output: 3 group: 3 kernel_size: 3 }"),
    "Deconvolution": one("Deconvolution", X, "convolution_param { num_output: 2 kernel_size: 4 "
                                             "stride: 2 pad: 1 }"),
    "InnerProduct": one("InnerProduct", X, "inner_product_param { num_output: 5 }"),
    "Embed": one("Embed", {"data": (2, 3)}, "embed_param { num_output: 4 input_dim: 6 }",
                 feeds={"data": "label:6"}),
    # pooling
    "Pooling": one("Pooling", X, "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"),
    "SPP": one("SPP", X, "spp_param { pyramid_height: 2 }"),
    # normalisation
    "BatchNorm": one("BatchNorm", X),
    "BN": one("BN", X, "bn_param { momentum: 0.9 eps: 1e-5 }"),
    "Bias": one("Bias", X),
    "LRN": one("LRN", X, "lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 }"),
    "MVN": one("MVN", X),
    "Normalize": one("Normalize", X, "norm_param { across_spatial: false }"),
    "Scale": one("Scale", X, "scale_param { bias_term: true }"),
    # shape and merge
    "ArgMax": one("ArgMax", X, "argmax_param { top_k: 2 out_max_val: true }"),
    "Axpy": one("Axpy", {"a": (2, 3, 1, 1), "data": (2, 3, 5, 6), "y": (2, 3, 5, 6)}),
    "Concat": one("Concat", {"data": (2, 3, 5, 6), "b": (2, 3, 2, 6)}, "concat_param { axis: 2 }"),
    "Crop": one("Crop", {"data": (2, 3, 7, 8), "ref": (2, 3, 5, 6)},
                "crop_param { axis: 2 offset: 1 offset: 2 }"),
    "Eltwise": one("Eltwise", {"data": (2, 3, 5, 6), "b": (2, 3, 5, 6)},
                   "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }"),
    "Flatten": one("Flatten", X),
    "Interp": one("Interp", X, "interp_param { zoom_factor: 2 }"),
    "Resize": one("Resize", X, "resize_param { height: 8 width: 11 }"),
    "BilinearInterpolate": one("BilinearInterpolate", X,
                               "bilinear_interpolate_param { dst_h: 8 dst_w: 4 }"),
    "Unsqueeze": one("Unsqueeze", X, "unsqueeze_param { dim: -2 }"),
    "MaxUnPool": custom(_inputs(X) + POOL_MASK
                        + 'layer { name: "x" type: "MaxUnPool" bottom: "pool" bottom: "mask" '
                          'top: "x" max_unpool_param { dst_h: 5 dst_w: 6 } }\n'),
    "Pad": one("Pad", X, "pad_param { pad_u: 1 pad_d: 2 pad_l: 3 pad_r: 0 pad_value: 1.5 }"),
    "Parameter": custom('layer { name: "x" type: "Parameter" top: "x" '
                        'parameter_param { shape { dim: 2 dim: 3 } } }\n'),
    "Permute": one("Permute", X, "permute_param { order: 0 order: 2 order: 3 order: 1 }"),
    "PixelShuffle": one("PixelShuffle", {"data": (2, 8, 3, 4)},
                        "pixelshuffle_param { upscale_factor: 2 }"),
    "Reduction": one("Reduction", X, "reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }"),
    "Reshape": one("Reshape", X, "reshape_param { shape { dim: 0 dim: -1 dim: 6 } }"),
    "ShuffleChannel": one("ShuffleChannel", {"data": (2, 6, 3, 4)},
                          "shuffle_channel_param { group: 3 }"),
    "Silence": custom(_inputs(X) + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                      'layer { name: "x" type: "Silence" bottom: "data" }\n'),
    "Slice": one("Slice", X, "slice_param { axis: 1 slice_point: 1 }", tops=2),
    "Softmax": one("Softmax", X),
    "Split": one("Split", X, tops=2),
    "Tile": one("Tile", X, "tile_param { axis: 1 tiles: 2 }"),
    "Upsample": one("Upsample", X, "upsample_param { scale: 2 }"),
    # losses and metrics
    "Accuracy": one("Accuracy", {"data": (6, 5), "label": (6,)}, "accuracy_param { top_k: 2 }",
                    feeds={"label": "label:5"}),
    "ContrastiveLoss": one("ContrastiveLoss", {"data": (4, 5), "b": (4, 5), "sim": (4,)},
                           feeds={"sim": "label:2"}),
    "EuclideanLoss": one("EuclideanLoss", {"data": (4, 6), "b": (4, 6)}),
    "HingeLoss": one("HingeLoss", {"data": (4, 5), "label": (4,)}, feeds={"label": "label:5"}),
    "MultinomialLogisticLoss": one("MultinomialLogisticLoss", {"data": (4, 5), "label": (4,)},
                                   feeds={"data": "prob", "label": "label:5"}),
    "SigmoidCrossEntropyLoss": one("SigmoidCrossEntropyLoss", {"data": (4, 5), "t": (4, 5)},
                                   feeds={"t": "label:2"}),
    "SoftmaxWithLoss": one("SoftmaxWithLoss", {"data": (4, 5), "label": (4,)},
                           feeds={"label": "label:5"}),
    # data
    "MatWrite": custom(_inputs(X) + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                       'layer { name: "x" type: "MatWrite" bottom: "data" '
                       'mat_write_param { prefix: "/nonexistent/fc8/" } }\n'),
    "Python:spatial_dropout.SpatialDropoutLayer": one(
        "Python", X, 'python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" '
        'param_str: "{\'phase\': \'TEST\', \'p\': \'0.1\'}" }'),
    "DummyData": custom('layer { name: "x" type: "DummyData" top: "x" top: "x1" '
                        'dummy_data_param { shape { dim: 2 dim: 3 } '
                        'data_filler { type: "gaussian" std: 0.5 } '
                        'data_filler { type: "constant" value: 0.25 } } }\n'),
    # SSD detection
    "PriorBox": one("PriorBox", {"feat": (1, 2, 3, 4), "img": (1, 3, 24, 32)},
                    "prior_box_param { min_size: 6 max_size: 12 aspect_ratio: 2 flip: true "
                    "clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }"),
    "DetectionOutput": custom(
        _inputs({"feat": (1, 2, 3, 3), "img": (1, 3, 30, 30), "loc": (1, 36), "conf": (1, 18)})
        + 'layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "img" top: "prior" '
          'prior_box_param { min_size: 10 variance: 0.1 variance: 0.1 variance: 0.2 '
          'variance: 0.2 } }\n'
        + 'layer { name: "x" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
          'bottom: "prior" top: "x" detection_output_param { num_classes: 2 '
          'share_location: true background_label_id: 0 code_type: CENTER_SIZE '
          'keep_top_k: 5 confidence_threshold: 0.01 nms_param { nms_threshold: 0.45 } } }\n',
        feeds={"conf": "unit"}),
    # eric612/MobileNet-YOLO's heads: raw YOLO maps (1, num_box * (5 + classes), H, W)
    "YoloDetectionOutput": one(
        "YoloDetectionOutput", {"h1": (1, 14, 3, 3), "h2": (1, 14, 5, 5)},
        "yolo_detection_output_param { num_classes: 2 num_box: 2 confidence_threshold: 0.2 "
        "nms_threshold: 0.45 biases: 1.08 biases: 1.19 biases: 3.42 biases: 4.41 }"),
    "Yolov3DetectionOutput": one(
        "Yolov3DetectionOutput", {"h1": (1, 14, 2, 3), "h2": (1, 14, 4, 6)},
        "yolov3_detection_output_param { num_classes: 2 num_box: 2 confidence_threshold: 0.3 "
        "nms_threshold: 0.45 biases: 10 biases: 14 biases: 23 biases: 27 biases: 37 "
        "biases: 58 biases: 81 biases: 82 mask: 2 mask: 3 mask: 0 mask: 1 anchors_scale: 32 "
        "anchors_scale: 16 mask_group_num: 2 }"),
    # the R-CNN family's region pooling: a feature map and regions [batch, x1, y1, x2, y2]
    "ROIPooling": one("ROIPooling", {"data": (2, 3, 6, 8), "rois": (4, 5)},
                      "roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 }",
                      feeds={"rois": "rois:2:16"}),
    "PSROIPooling": one("PSROIPooling", {"data": (2, 18, 6, 8), "rois": (4, 5)},
                        "psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 "
                        "group_size: 3 }", feeds={"rois": "rois:2:16"}),
    # Faster R-CNN's region proposals: RPN scores (1, 2A, H, W) as probabilities, deltas
    # (1, 4A, H, W), im_info [height, width, scale] of a 64 x 80 image
    "Proposal": one("Proposal", {"cls": (1, 18, 4, 5), "bbox": (1, 36, 4, 5), "im_info": (1, 3)},
                    "proposal_param { feat_stride: 16 post_nms_topn: 20 }", tops=2,
                    feeds={"cls": "unit", "im_info": "im_info:64:80:1"}),
    "Python:rpn.proposal_layer.ProposalLayer": one(
        "Python", {"cls": (1, 18, 4, 5), "bbox": (1, 36, 4, 5), "im_info": (1, 3)},
        'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
        'param_str: "\'feat_stride\': 16" }', feeds={"cls": "unit", "im_info": "im_info:64:80:1"}),
    "Correlation1D": one("Correlation1D", {"a": (1, 3, 5, 9), "b": (1, 3, 5, 9)},
                         "correlation_param { kernel_size: 1 max_displacement: 2 pad: 2 "
                         "stride_2: 1 single_direction: 1 }"),
    "ChannelNorm": one("ChannelNorm", X),
    "Mish": one("Mish", X),
    # CTPN's Caffe: Lstm (clip bottom of 0/1), Transpose, Reverse
    "Lstm": one("Lstm", {"data": (3, 2, 4), "clip": (3, 2)}, "lstm_param { num_output: 5 }",
                feeds={"clip": "label:2"}),
    "Transpose": one("Transpose", X, "transpose_param { dim: 3 dim: 2 dim: 0 dim: 1 }"),
    "Reverse": one("Reverse", X, "reverse_param { axis: 2 }"),
    # BVLC Caffe's recurrent layers: x (T, N, ...), cont (T, N) of 0/1 sequence indicators;
    # LSTM with a static input and exposed states (h0, c0 in; h, hT, cT out)
    "LSTM": one("LSTM", {"data": (3, 2, 4), "cont": (3, 2), "xs": (2, 3), "h0": (1, 2, 5),
                         "c0": (1, 2, 5)}, "recurrent_param { num_output: 5 expose_hidden: true }",
                tops=3, feeds={"cont": "label:2"}),
    "RNN": one("RNN", {"data": (3, 2, 2, 3), "cont": (3, 2)}, "recurrent_param { num_output: 4 }",
               feeds={"cont": "label:2"}),
    "LSTMUnit": one("LSTMUnit", {"data": (1, 2, 3), "gates": (1, 2, 12), "cont": (1, 2)},
                    tops=2, feeds={"cont": "label:2"}),
    # the project's landmark layers (Python layers)
    "Python": python("RegionPool", {"data": (2, 4, 5, 5), "logits": (2, 3, 5, 5)}),
    "Python:RegionPool": python("RegionPool", {"data": (2, 4, 5, 5), "logits": (2, 3, 5, 5)}),
    "Python:RegionFusion": python("RegionFusion", {"data": (2, 10), "local": (2, 10)},
                                  {"regions": {"a": "0-1", "b": "2-4"}}),
    "Python:AffineAlign": python("AffineAlign", {"data": (2, 3, 12, 10), "box": (2, 4),
                                                 "angle": (2, 1)},
                                 {"height": 8, "width": 6}, tops=2,
                                 feeds={"box": "unit"}),
    "Python:InverseAffinePoints": python("InverseAffinePoints", {"data": (2, 6),
                                                                 "theta": (2, 6)}),
    "Python:HeatmapToPoints": python("HeatmapToPoints", {"data": (2, 4, 6, 5)}),
    "Python:AdaptiveWingLoss": python("AdaptiveWingLoss", {"data": (2, 3, 6, 6),
                                                           "t": (2, 3, 6, 6)},
                                      feeds={"t": "unit"}),
    "Python:RegionWeightedEuclideanLoss": python(
        "RegionWeightedEuclideanLoss", {"data": (2, 10), "t": (2, 10), "w": (2, 2)},
        {"regions": {"a": "0-1", "b": "2-4"}, "min_weight": 0.25}, feeds={"w": "unit"}),
    # BVLC Caffe's Im2col (conv), BatchReindex and Filter (shape), InfogainLoss (loss; H as a
    # third bottom, probabilities in bottom 0) and the HDF5Output sink (data)
    "Im2col": one("Im2col", X, "convolution_param { kernel_size: 3 stride: 2 pad: 1 }"),
    "BatchReindex": one("BatchReindex", {"data": (3, 2, 4), "idx": (5,)},
                        feeds={"idx": "label:3"}),
    "Filter": one("Filter", {"data": (6, 3, 4), "b": (6, 5), "sel": (6, 1)}, tops=2,
                  feeds={"sel": "label:2"}),
    "InfogainLoss": one("InfogainLoss", {"data": (4, 5), "label": (4,), "H": (1, 1, 5, 5)},
                        feeds={"data": "prob", "label": "label:5", "H": "unit"}),
    "HDF5Output": custom(_inputs({"data": (2, 3, 5, 6), "label": (2, 1)})
                         + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                         'layer { name: "x" type: "HDF5Output" bottom: "data" bottom: "label" '
                         'hdf5_output_param { file_name: "/nonexistent/out.h5" } }\n'),
    # FlowNet2's layers (optical_flow): two maps correlated, maps accumulated at one size, an
    # image warped by a flow, a resize on the fork's grid, the TEST mean subtraction
    "Correlation": one("Correlation", {"a": (2, 3, 7, 8), "b": (2, 3, 7, 8)},
                       "correlation_param { pad: 2 kernel_size: 3 max_displacement: 2 "
                       "stride_1: 1 stride_2: 2 }"),
    "Accum": one("Accum", {"a": (2, 2, 3, 4), "b": (2, 3, 6, 8)},
                 "accum_param { top_height: 7 top_width: 9 }"),
    "FlowWarp": one("FlowWarp", {"data": (2, 3, 5, 6), "flow": (2, 2, 5, 6)}),
    "Resample": one("Resample", {"data": (2, 3, 5, 6)},
                    "resample_param { width: 4 height: 3 type: LINEAR antialias: true }"),
    "DataAugmentation": one("DataAugmentation", {"data": (2, 3, 5, 6)},
                            "augmentation_param { recompute_mean: 1000 mean_per_pixel: false }"),
    # brocolli's SSD Caffe: SmoothL1Loss (loss) and BatchNormKyle with its alpha/beta (norm)
    "SmoothL1Loss": one("SmoothL1Loss", {"data": (4, 3, 2, 2), "t": (4, 3, 2, 2)}),
    "BatchNormKyle": one("BatchNormKyle", X, "batch_norm_param { use_alpha_beta: true "
                                             "eps: 0.001 moving_average_fraction: 0.9 }"),
    # SSD's DetectionEvaluate (detection): detection rows (1, 1, D, 7) and ground truth rows
    # (1, 1, G, 8) of zeros and ones, so image ids and labels are 0 or 1, never background 2
    "DetectionEvaluate": one("DetectionEvaluate", {"det": (1, 1, 6, 7), "gt": (1, 1, 4, 8)},
                             "detection_evaluate_param { num_classes: 3 "
                             "background_label_id: 2 }",
                             feeds={"det": "label:2", "gt": "label:2"}),
    # SSD's MultiBoxLoss (detection): ground-truth rows of zeros and ones (images 0/1, classes
    # 0/1 with background 2, corner offsets: CORNER coding accepts degenerate boxes)
    "MultiBoxLoss": custom(
        _inputs({"feat": (1, 2, 3, 3), "img": (1, 3, 30, 30), "loc": (2, 36), "conf": (2, 27),
                 "gt": (1, 1, 4, 8)})
        + 'layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "img" top: "prior" '
          'prior_box_param { min_size: 10 variance: 0.1 variance: 0.1 variance: 0.2 '
          'variance: 0.2 } }\n'
        + 'layer { name: "x" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" '
          'bottom: "prior" bottom: "gt" top: "x" multibox_loss_param { num_classes: 3 '
          'background_label_id: 2 overlap_threshold: 0.3 } }\n',
        feeds={"gt": "label:2"}),
    # DeepLab v2's SegAccuracy (loss family): scores and labels 0..3 of 4 classes
    "SegAccuracy": one("SegAccuracy", {"data": (2, 4, 3, 5), "label": (2, 1, 3, 5)},
                       "seg_accuracy_param { ignore_label: 255 }", feeds={"label": "label:4"}),
    # ydwen/caffe-face's CenterLoss (loss): features and labels 0..2 of 3 classes
    "CenterLoss": one("CenterLoss", {"data": (4, 6), "label": (4, 1, 1, 1)},
                      "center_loss_param { num_output: 3 center_filler { type: 'gaussian' } }",
                      feeds={"label": "label:3"}),
}


def feed(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """An input of ``shape`` filled as ``kind`` says (see LayerConfig.feeds)."""
    if kind.startswith("label:"):
        return torch.randint(0, int(kind.split(":")[1]), shape, generator=gen).float()
    if kind == "unit":
        return 0.05 + 0.9 * torch.rand(shape, generator=gen)
    if kind == "positive":
        return 0.5 + torch.rand(shape, generator=gen)
    if kind.startswith("rois:"):
        batch, size = (int(v) for v in kind.split(":")[1:])
        index = torch.randint(0, batch, (shape[0], 1), generator=gen).float()
        corners = (torch.rand((shape[0], 2, 2), generator=gen) * 1.5 - 0.25) * size
        lo, hi = corners.min(dim=1).values, corners.max(dim=1).values  # (x1, y1), (x2, y2)
        return torch.cat([index, lo, hi], dim=1).reshape(shape)
    if kind.startswith("im_info:"):  # one row [height, width, scale]
        return torch.tensor([float(v) for v in kind.split(":")[1:]]).reshape(shape)
    if kind == "prob":
        return torch.softmax(torch.randn(shape, generator=gen), dim=-1)
    return torch.randn(shape, generator=gen)


#: More configurations of types whose emitters and export rules branch on their parameters:
#: name -> (type, config). The emit and ONNX tests run over these as well.
VARIANTS: dict[str, tuple[str, LayerConfig]] = {
    "Pooling/STOCHASTIC": ("Pooling", one("Pooling", {"data": (2, 3, 5, 6)},
                                          "pooling_param { pool: STOCHASTIC kernel_size: 2 "
                                          "stride: 2 }", feeds={"data": "positive"})),
    "Pooling/MAX-mask": ("Pooling", one("Pooling", X, "pooling_param { pool: MAX kernel_size: 3 "
                                                      "stride: 2 pad: 1 }", tops=2)),
    "Pooling/global": ("Pooling", one("Pooling", X, "pooling_param { pool: MAX "
                                                    "global_pooling: true }")),
    "SPP/AVE": ("SPP", one("SPP", {"data": (2, 3, 9, 7)}, "spp_param { pyramid_height: 3 "
                                                          "pool: AVE }")),
    "ReLU6/brocolli": ("ReLU6", one("ReLU6", X, "relu6_param { negative_slope: 0.1 "
                                                "threshold: 0.75 }")),
    "ReLU6/threshold": ("ReLU6", one("ReLU6", X, "relu6_param { threshold: 0.75 }")),
    "Dropout/no-scale-train": ("Dropout", one("Dropout", X, "dropout_param { dropout_ratio: 0.3 "
                                                            "scale_train: false }")),
    "Upsample/SegNet": ("Upsample", custom(
        _inputs({"data": (2, 3, 6, 8)})
        + 'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
          'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        + 'layer { name: "x" type: "Upsample" bottom: "pool" bottom: "mask" top: "x" '
          'upsample_param { scale: 2 } }\n')),
    "BN/SegNet": ("BN", one("BN", X, "bn_param { bn_mode: INFERENCE }")),
    "SmoothL1Loss/faster-rcnn": ("SmoothL1Loss", one(
        "SmoothL1Loss", {"data": (4, 3, 2, 2), "t": (4, 3, 2, 2), "w_in": (4, 3, 2, 2),
                         "w_out": (4, 3, 2, 2)}, "smooth_l1_loss_param { sigma: 3 }",
        feeds={"w_in": "label:2", "w_out": "positive"})),
    "SmoothL1Loss/fast-rcnn": ("SmoothL1Loss", one(
        "SmoothL1Loss", {"data": (4, 6), "t": (4, 6), "w": (4, 6)}, feeds={"w": "label:2"})),
    "DummyData/uniform": ("DummyData", custom(
        'layer { name: "x" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 '
        'dim: 3 } data_filler { type: "uniform" min: -1 max: 2 } } }\n')),
    "DummyData/constant": ("DummyData", custom(
        'layer { name: "x" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 '
        'dim: 3 } data_filler { type: "constant" value: 0.5 } } }\n')),
    "InnerProduct/transpose": ("InnerProduct", one("InnerProduct", V, "inner_product_param { "
                                                   "num_output: 3 transpose: true }")),
    "SoftmaxWithLoss/prob-top": ("SoftmaxWithLoss", one(
        "SoftmaxWithLoss", {"data": (4, 5), "label": (4,)}, "loss_param { ignore_label: 2 }",
        tops=2, feeds={"label": "label:5"})),
    "Python:HeatmapToPoints/argmax": ("Python:HeatmapToPoints", python(
        "HeatmapToPoints", {"data": (2, 4, 6, 5)}, {"mode": "argmax"})),
}
