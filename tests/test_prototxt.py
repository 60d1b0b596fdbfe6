"""Reading prototxt as Caffe does: legacy upgrades, aliases, strictness, errors with places."""
from __future__ import annotations

import warnings

import pytest

from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.prototxt import PrototxtWarning, parse_net, parse_solver, read_net, read_solver
from landmarknet.errors import PrototxtError


def test_v1_lenet_upgrades_to_bvlc_modern_lenet(zoo):
    """BVLC ships LeNet in both formats: our V1 upgrade must give the modern file's layers."""
    old = read_net(zoo / "legacy_v1_lenet/lenet.prototxt").net
    new = read_net(zoo / "mnist_lenet/lenet.prototxt").net
    assert [l.type for l in old.layer] == [l.type for l in new.layer]
    assert [list(l.top) for l in old.layer] == [list(l.top) for l in new.layer]
    # The Input layer: same shape; Caffe's upgrade names it "input", the modern file "data".
    assert list(old.layer[0].input_param.shape[0].dim) == [64, 1, 28, 28]
    assert old.layer[0].name == "input"
    for a, b in zip(old.layer[1:], new.layer[1:]):
        assert a.name == b.name
        assert list(a.bottom) == list(b.bottom)
        for f in ("convolution_param", "pooling_param", "inner_product_param"):
            assert getattr(a, f) == getattr(b, f), (a.name, f)
        assert [p.lr_mult for p in a.param] == [p.lr_mult for p in b.param]


def test_v1_weight_decay_and_param_names_become_param_specs():
    text = """
    layers { name: "fc" type: INNER_PRODUCT bottom: "x" top: "y"
             blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
             param: "shared_w" param: "shared_b"
             inner_product_param { num_output: 3 } }
    """
    layer = parse_net(text).net.layer[0]
    assert layer.type == "InnerProduct"
    assert [(p.name, p.lr_mult, p.decay_mult) for p in layer.param] == [
        ("shared_w", 1.0, 1.0), ("shared_b", 2.0, 0.0)]


def test_input_dim_and_input_shape_become_one_input_layer():
    dims = parse_net('input: "a" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 7 '
                     'input: "b" input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1').net
    assert dims.layer[0].type == "Input" and list(dims.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in dims.layer[0].input_param.shape] == [[1, 3, 5, 7], [2, 1, 1, 1]]
    shapes = parse_net('input: "a" input_shape { dim: 4 dim: 2 }').net
    assert list(shapes.layer[0].input_param.shape[0].dim) == [4, 2]


@pytest.mark.parametrize("text, message", [
    ('input: "a" input_dim: 1 input_dim: 3', "need 4 input_dim values"),
    ('input: "a" input_shape { dim: 1 } input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1',
     "either input_shape or input_dim"),
])
def test_bad_legacy_inputs(text, message):
    with pytest.raises(PrototxtError, match=message):
        parse_net(text)


def test_ceil_mode_alias_maps_to_round_mode_with_a_warning():
    text = """layer { name: "p" type: "Pooling" bottom: "x" top: "y"
              pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }"""
    with pytest.warns(PrototxtWarning, match="ceil_mode: false"):
        layer = parse_net(text, path="net.prototxt").net.layer[0]
    assert layer.pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    with pytest.warns(PrototxtWarning):
        layer = parse_net(text.replace("false", "true")).net.layer[0]
    assert layer.pooling_param.round_mode == caffe_pb2.PoolingParameter.CEIL


def test_unknown_field_names_file_line_column_and_layer():
    text = 'name: "n"\nlayer {\n  name: "conv9"\n  type: "Convolution"\n  wieght: 3\n}\n'
    with pytest.raises(PrototxtError) as err:
        parse_net(text, path="my.prototxt")
    e = err.value
    assert (e.path, e.line, e.column, e.layer) == ("my.prototxt", 5, 3, "conv9")
    assert "wieght" in str(e) and "--lenient" in str(e)


def test_lenient_skips_unknown_fields_with_one_warning_each():
    text = ('layer { name: "a" type: "ReLU" bottom: "x" top: "x" foo: 1 bar { baz: "q" } '
            'relu_param { negative_slope: 0.5 extra: [1, 2] } }')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = parse_net(text, strict=False).net.layer[0]
    msgs = [str(w.message) for w in caught if w.category is PrototxtWarning]
    assert len(msgs) == 3 and all("layer 'a'" in m for m in msgs)
    assert ["foo" in msgs[0], "bar" in msgs[1], "extra" in msgs[2]] == [True] * 3
    assert layer.relu_param.negative_slope == 0.5  # the known fields around them survive


def test_mixed_layer_and_layers_is_an_error():
    text = 'layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }'
    with pytest.raises(PrototxtError, match="mixes new-style 'layer'.*legacy 'layers'") as err:
        parse_net(text, path="mixed.prototxt")
    assert err.value.line == 2


def test_syntax_errors_carry_line_and_column():
    with pytest.raises(PrototxtError) as err:
        parse_net('layer {\n  name: "a"\n  pooling_param { pool: MAXX }\n}', path="p.prototxt")
    assert err.value.line == 3 and "MAXX" in str(err.value)
    with pytest.raises(PrototxtError, match="end of file"):
        parse_net('layer { name: "a" ')


def test_single_quoted_one_line_style_of_hed(zoo):
    net = read_net(zoo / "hed/deploy.prototxt").net
    names = [l.name for l in net.layer]
    assert names.count("crop") == 5  # HED repeats the layer name 'crop'; Caffe keeps them all
    conv = next(l for l in net.layer if l.name == "conv1_1")
    assert list(conv.convolution_param.pad) == [35]
    assert conv.convolution_param.engine == caffe_pb2.ConvolutionParameter.CAFFE


def test_binary_file_is_refused_as_prototxt(zoo):
    with pytest.raises(PrototxtError, match="binary file"):
        read_net(zoo / "mtcnn_det1/det1.caffemodel")


def test_solver_reading_and_solver_type_upgrade(zoo):
    adam = read_solver(zoo / "mnist_lenet/lenet_solver_adam.prototxt")
    assert adam.type == "Adam" and adam.momentum2 == pytest.approx(0.999)
    legacy = parse_solver('base_lr: 0.1 solver_type: NESTEROV lr_policy: "fixed"')
    assert legacy.type == "Nesterov" and not legacy.HasField("solver_type")
    with pytest.raises(PrototxtError, match="contradicts"):
        parse_solver('solver_type: ADAM type: "SGD"')


def test_every_zoo_prototxt_parses(zoo):
    files = sorted(zoo.glob("*/*.prototxt"))
    assert len(files) >= 30
    for f in files:
        if "solver" in f.name:
            read_solver(f)
        else:
            net = read_net(f, strict="slim-320" not in f.name).net
            assert len(net.layer) > 0, f


def test_a_forks_enum_value_is_named_and_skipped_with_lenient():
    """R-FCN's 'normalization: PRE_FIXED': strict names value, field and the values Caffe
    knows; lenient skips the field with a warning and keeps the rest of the block."""
    text = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "a" bottom: "b" '
            'loss_param { normalization: PRE_FIXED ignore_label: 255 } }\n')
    with pytest.raises(PrototxtError, match=r"value 'PRE_FIXED' of field 'normalization' in "
                                            r"LossParameter .*FULL, VALID, BATCH_SIZE, NONE"):
        parse_net(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = parse_net(text, strict=False).net
    assert any("skipped field 'normalization'" in str(w.message) for w in caught)
    lp = net.layer[0].loss_param
    assert not lp.HasField("normalization") and lp.ignore_label == 255
