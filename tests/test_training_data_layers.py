"""Training nets of SSD and OpenPose: their data layers parse and become the net's inputs.

The data layers read databases (LMDB) that a prototxt does not contain, so landmarknet makes
their tops net inputs, sized as the forks' C++ sizes them where the prototxt tells: SSD's
AnnotatedData (annotated_data_layer.cpp: the crop or resize_param's size; the box list
(1, 1, boxes, 8)), OpenPose's CPMData (cpm_data_layer.cpp: in TRAIN, the label is
2 * (num_parts + 1) maps of crop / stride) and OPData (oPDataLayer.cpp: 3-channel crops in
TRAIN). The expected shapes below restate those C++ rules; the nets are written in the forks'
own field names and values (MobileNet-SSD's train.prototxt, ZheC's pose_train_test.prototxt).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from landmarknet.build import build_net
from landmarknet.errors import GraphError, PrototxtError

SSD_DATA = '''
layer {
  name: "data" type: "AnnotatedData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param {
    scale: 0.007843 mirror: true mean_value: 127.5 mean_value: 127.5 mean_value: 127.5
    resize_param { prob: 1.0 resize_mode: WARP height: 96 width: 128 interp_mode: LINEAR
                   interp_mode: AREA interp_mode: NEAREST interp_mode: CUBIC
                   interp_mode: LANCZOS4 }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32.0 contrast_prob: 0.5
                    contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18.0
                    saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5
                    random_order_prob: 0.0 }
    expand_param { prob: 0.5 max_expand_ratio: 4.0 }
  }
  data_param { source: "trainval_lmdb/" batch_size: 4 backend: LMDB }
  annotated_data_param {
    batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler { sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5
                              max_aspect_ratio: 2.0 }
                    sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1
                    max_trials: 50 }
    label_map_file: "labelmap.prototxt"
  }
}
'''

SSD_HEAD = '''
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 stride: 8 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loc" type: "Convolution" bottom: "conv" top: "loc"
        convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "conf" type: "Convolution" bottom: "conv" top: "conf"
        convolution_param { num_output: 9 kernel_size: 1 } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "prior" type: "PriorBox" bottom: "conv" bottom: "data" top: "prior"
        prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: false clip: false
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc_flat" bottom: "conf_flat"
        bottom: "prior" bottom: "label" top: "mbox_loss" include { phase: TRAIN }
        propagate_down: true propagate_down: true propagate_down: false
        propagate_down: false loss_param { normalization: VALID }
        multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX
          loc_weight: 1.0 num_classes: 3 share_location: true match_type: PER_PREDICTION
          overlap_threshold: 0.5 use_prior_for_matching: true background_label_id: 0
          use_difficult_gt: true neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE
          ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.prototxt"
    path.write_text(text)
    return path


def test_ssd_training_net_parses_builds_and_trains(tmp_path):
    """MobileNet-SSD's data layer (every SSD transformer and sampler field) on a small head:
    the inputs are (batch, 3, resize height, width) and the (1, 1, boxes, 8) box list, and the
    box count may change from batch to batch."""
    net = build_net(write(tmp_path, SSD_DATA + SSD_HEAD), phase="train")
    shapes = {i.name: i.shape for i in net.caffe_graph.inputs}
    assert shapes == {"data": (4, 3, 96, 128), "label": (1, 1, 1, 8)}
    gen = torch.Generator().manual_seed(0)
    for n_boxes in (3, 7):
        label = torch.tensor([[i % 4, 1 + i % 2, i, 0.1 + 0.05 * i, 0.2, 0.5 + 0.05 * i, 0.7, 0]
                              for i in range(n_boxes)], dtype=torch.float32)[None, None]
        out = net.run({"data": torch.randn(4, 3, 96, 128, generator=gen), "label": label},
                      blobs=["mbox_loss"])
        loss = out["mbox_loss"]
        loss.backward()
        assert torch.isfinite(loss) and float(loss.detach()) > 0
        grad = net.get_submodule("loc").weight.grad
        assert grad is not None and grad.abs().sum() > 0
        net.zero_grad()


def test_ssd_fields_are_still_checked(tmp_path):
    """Reading SSD's fields does not make the reader lenient: a misspelt one is still an error
    naming the line."""
    text = SSD_DATA.replace("max_expand_ratio", "max_expand_ration") + SSD_HEAD
    with pytest.raises(PrototxtError, match="max_expand_ration"):
        build_net(write(tmp_path, text), phase="train")


CPM_DATA = '''
layer {
  name: "data" type: "CPMData" top: "data" top: "label"
  data_param { source: "/home/zhecao/COCO_kpt/lmdb_trainVal" batch_size: 10 backend: LMDB }
  cpm_transform_param { stride: 8 max_rotate_degree: 40 visualize: false crop_size_x: 368
    crop_size_y: 368 scale_prob: 1 scale_min: 0.5 scale_max: 1.1 target_dist: 0.6
    center_perterb_max: 40 do_clahe: false num_parts: 56 np_in_lmdb: 17 }
}
layer { name: "vec_weight" type: "Slice" bottom: "label" top: "vec_weight" top: "heat_weight"
        top: "vec_temp" top: "heat_temp"
        slice_param { slice_point: 38 slice_point: 57 slice_point: 95 axis: 1 } }
layer { name: "label_heat" type: "Eltwise" bottom: "heat_weight" bottom: "heat_temp"
        top: "label_heat" eltwise_param { operation: PROD } }
layer { name: "image" type: "Slice" bottom: "data" top: "image" top: "center_map"
        slice_param { slice_point: 3 axis: 1 } }
layer { name: "silence2" type: "Silence" bottom: "center_map" }
layer { name: "conv" type: "Convolution" bottom: "image" top: "conv"
        convolution_param { num_output: 19 kernel_size: 3 stride: 8 pad: 1 } }
layer { name: "weight_stage1_L2" type: "Eltwise" bottom: "conv" bottom: "heat_weight"
        top: "weight_stage1_L2" eltwise_param { operation: PROD } }
layer { name: "loss_stage1_L2" type: "EuclideanLoss" bottom: "weight_stage1_L2"
        bottom: "label_heat" top: "loss_stage1_L2" loss_weight: 1 }
'''


def test_openpose_cpm_training_net(tmp_path):
    """ZheC's OpenPose training data layer: in TRAIN the label is 2 * (56 + 1) = 114 maps of
    368 / 8 = 46; the images keep the record's channels, which only the database knows."""
    path = write(tmp_path, CPM_DATA)
    with pytest.raises(GraphError, match="--input-shape data="):
        build_net(path, phase="train")
    net = build_net(path, phase="train", input_shapes={"data": (10, 6, 368, 368)})
    shapes = {i.name: i.shape for i in net.caffe_graph.inputs}
    assert shapes == {"data": (10, 6, 368, 368), "label": (10, 114, 46, 46)}
    out = net.run({"data": torch.randn(10, 6, 368, 368), "label": torch.rand(10, 114, 46, 46)},
                  blobs=["loss_stage1_L2"])
    assert torch.isfinite(out["loss_stage1_L2"])
    # in TEST the C++ takes the record's own size: unknown until it is given
    with pytest.raises(GraphError, match="label"):
        build_net(path, phase="test", input_shapes={"data": (1, 6, 368, 368)})


def test_openpose_opdata_training_net(tmp_path):
    """openpose_caffe_train's OPData: 3-channel crops in TRAIN; the label's channel count
    depends on the OpenPose model it names, so it must be given."""
    text = ('layer { name: "data" type: "OPData" top: "data" top: "label" '
            'data_param { source: "lmdb" batch_size: 2 backend: LMDB } '
            'op_transform_param { stride: 8 crop_size_x: 320 crop_size_y: 240 '
            'models: "COCO_25B_23;COCO_25B_17" sources: "a;b" probabilities: "0.5;0.5" } }\n'
            'layer { name: "s" type: "Silence" bottom: "data" bottom: "label" }\n')
    path = write(tmp_path, text)
    with pytest.raises(GraphError, match="label"):
        build_net(path, phase="train")
    net = build_net(path, phase="train", input_shapes={"label": (2, 170, 30, 40)})
    shapes = {i.name: i.shape for i in net.caffe_graph.inputs}
    assert shapes == {"data": (2, 3, 240, 320), "label": (2, 170, 30, 40)}



def test_readme_training_loop_lowers_the_ssd_loss(tmp_path):
    """The README's loop (load_caffe in TRAIN, CaffeSolver, net.loss) on the small SSD net:
    twenty SGD steps on one batch must lower MultiBoxLoss (matching, mining and the gradients
    reach the heads and the trunk)."""
    import landmarknet as lm
    from landmarknet.caffe.prototxt import read_solver
    from landmarknet.solver import CaffeSolver
    proto = write(tmp_path, SSD_DATA + SSD_HEAD)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{proto}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 type: "SGD" '
        'weight_decay: 0.0005 max_iter: 20')
    net = lm.load_caffe(proto, phase="train", seed=1)
    solver = CaffeSolver(read_solver(tmp_path / "solver.prototxt"), net)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 96, 128, generator=gen)
    boxes = torch.tensor([[i, 1 + i % 2, 0, 0.2, 0.25, 0.6, 0.75, 0] for i in range(4)],
                         dtype=torch.float32)[None, None]
    losses = []
    for _ in range(20):
        solver.zero_grad()
        loss = net.loss(net.run({"data": images, "label": boxes}))
        loss.backward()
        solver.apply_update()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses  # 6.40 -> 4.49 here


def test_ssd_video_data_layer_takes_the_resize_size(tmp_path):
    """SSD's VideoData (webcam demo nets): frames through the data transformer, so the
    resize_param size and data_param's batch size, 3 channels."""
    text = ('layer { name: "data" type: "VideoData" top: "data" transform_param { '
            'mean_value: 104 mean_value: 117 mean_value: 123 resize_param { prob: 1 '
            'resize_mode: WARP height: 300 width: 300 interp_mode: LINEAR } } '
            'data_param { batch_size: 1 } video_data_param { video_type: WEBCAM device_id: 0 } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    net = build_net(write(tmp_path, text))
    assert {i.name: i.shape for i in net.caffe_graph.inputs} == {"data": (1, 3, 300, 300)}


def test_eric612_multiscale_data_layer(tmp_path):
    """eric612/MobileNet-YOLO's AnnotatedData: several resize_param (one drawn per batch) and
    its YOLO sampling fields. The first size stands for the input; the fields change no shape."""
    text = ('layer { name: "data" type: "AnnotatedData" top: "data" top: "label" '
            'include { phase: TRAIN } transform_param { scale: 0.007843 '
            'resize_param { prob: 0.5 resize_mode: WARP height: 320 width: 320 '
            'interp_mode: LINEAR } resize_param { prob: 0.5 resize_mode: WARP height: 416 '
            'width: 416 interp_mode: LINEAR } } data_param { source: "lmdb" batch_size: 2 } '
            'annotated_data_param { yolo_data_type: 1 yolo_data_jitter: 0.3 '
            'label_map_file: "labelmap.prototxt" } }\n'
            'layer { name: "s" type: "Silence" bottom: "data" bottom: "label" }\n')
    net = build_net(write(tmp_path, text), phase="train")
    assert {i.name: i.shape for i in net.caffe_graph.inputs} == \
        {"data": (2, 3, 320, 320), "label": (1, 1, 1, 8)}


def test_a_given_batch_is_the_batch_of_the_data_layers_other_tops(tmp_path):
    """--input-shape data=2,... on a layer whose label came from its batch_size: the label
    follows (Caffe feeds one batch through both tops); AnnotatedData's box list does not."""
    path = write(tmp_path, CPM_DATA)
    net = build_net(path, phase="train", input_shapes={"data": (2, 6, 368, 368)})
    assert {i.name: i.shape for i in net.caffe_graph.inputs}["label"] == (2, 114, 46, 46)
    text = ('layer { name: "mnist" type: "Data" top: "data" top: "label" '
            'data_param { source: "lmdb" batch_size: 128 } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
            'inner_product_param { num_output: 10 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
            'top: "loss" }\n')
    net = build_net(write(tmp_path, text), phase="train", input_shapes={"data": (8, 1, 28, 28)})
    assert {i.name: i.shape for i in net.caffe_graph.inputs} == \
        {"data": (8, 1, 28, 28), "label": (8,)}
    net = build_net(write(tmp_path, SSD_DATA + SSD_HEAD), phase="train",
                    input_shapes={"data": (2, 3, 96, 128)})
    assert {i.name: i.shape for i in net.caffe_graph.inputs}["label"] == (1, 1, 1, 8)
