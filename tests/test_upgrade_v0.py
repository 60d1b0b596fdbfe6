"""V0 (pre-2014) nets: upgraded as Caffe's UpgradeV0Net does, checked against OpenCV DNN.

OpenCV vendors Caffe's upgrade code and reads V0 prototxts itself, so it is an independent
reference for the whole chain V0 -> V1 -> V2 -> layers. One OpenCV deviation shapes the test:
OpenCV's V0 upgrade takes the blobs of the OUTER ``layers`` entry and drops those of the nested
V0 ``layer`` (where V0 Caffe wrote them), so OpenCV reads the weights from a V2 .caffemodel of the
same blobs (it matches layers by name), while we also read a genuine V0 .caffemodel.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.prototxt import PrototxtWarning, parse_net, read_net
from landmarknet.caffe.upgrade_v0 import _FIELDS, _GENERAL, V0_TYPES
from landmarknet.caffe.weights import read_caffemodel, write_caffemodel
from landmarknet.cli.main import main
from landmarknet.errors import PrototxtError, WeightsError
from landmarknet.params import load_weights, net_blobs, randomize
from opencv_ref import OpenCVFailed, OpenCVUnavailable, run_opencv

REL_TOL = 1e-4

# A small V0 net touching every upgrade path that matters for inference: padding layers merged
# into a conv (pad 2), a MAX pool (pad 1), a grouped conv and an AVE pool; in-place layers; two
# branches concatenated; LRN, dropout, flatten, innerproduct with and without bias, softmax.
V0_NET = """name: "v0_small"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 15 input_dim: 15
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 2
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
          weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 3 stride: 2 }
         bottom: "pad2" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.75 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "pad3" type: "padding" pad: 1 } bottom: "norm1" top: "pad3" }
layers { layer { name: "conv2a" type: "conv" num_output: 6 kernelsize: 3 group: 2 }
         bottom: "pad3" top: "conv2a" }
layers { layer { name: "conv2b" type: "conv" num_output: 4 kernelsize: 1 }
         bottom: "norm1" top: "conv2b" }
layers { layer { name: "sig2b" type: "sigmoid" } bottom: "conv2b" top: "conv2b" }
layers { layer { name: "tanh2a" type: "tanh" } bottom: "conv2a" top: "conv2a" }
layers { layer { name: "cat" type: "concat" concat_dim: 1 }
         bottom: "conv2a" bottom: "conv2b" top: "cat" }
layers { layer { name: "pad4" type: "padding" pad: 1 } bottom: "cat" top: "pad4" }
layers { layer { name: "pool2" type: "pool" pool: AVE kernelsize: 3 stride: 2 }
         bottom: "pad4" top: "pool2" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool2" top: "pool2" }
layers { layer { name: "flat" type: "flatten" } bottom: "pool2" top: "flat" }
layers { layer { name: "fc1" type: "innerproduct" num_output: 7 } bottom: "flat" top: "fc1" }
layers { layer { name: "bnll" type: "bnll" } bottom: "fc1" top: "fc1" }
layers { layer { name: "fc2" type: "innerproduct" num_output: 5 biasterm: false }
         bottom: "fc1" top: "fc2" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc2" top: "prob" }
"""

# The same net as a modern (V2) prototxt, written by hand from Caffe's upgrade rules.
V2_NET = """name: "v0_small"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 15 dim: 15 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 8 pad: 2 kernel_size: 5 stride: 2
                            weight_filler { type: "gaussian" std: 0.01 }
                            bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX pad: 1 kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "conv2a" type: "Convolution" bottom: "norm1" top: "conv2a"
        convolution_param { num_output: 6 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "conv2b" type: "Convolution" bottom: "norm1" top: "conv2b"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "sig2b" type: "Sigmoid" bottom: "conv2b" top: "conv2b" }
layer { name: "tanh2a" type: "TanH" bottom: "conv2a" top: "conv2a" }
layer { name: "cat" type: "Concat" bottom: "conv2a" bottom: "conv2b" top: "cat"
        concat_param { concat_dim: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "cat" top: "pool2"
        pooling_param { pool: AVE pad: 1 kernel_size: 3 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool2" top: "pool2"
        dropout_param { dropout_ratio: 0.3 } }
layer { name: "flat" type: "Flatten" bottom: "pool2" top: "flat" }
layer { name: "fc1" type: "InnerProduct" bottom: "flat" top: "fc1"
        inner_product_param { num_output: 7 } }
layer { name: "bnll" type: "BNLL" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 5 bias_term: false } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""

# Layers compared with OpenCV (by layer name: in-place layers give the blob after them).
COMPARED = ["conv1", "relu1", "pool1", "norm1", "tanh2a", "sig2b", "cat", "pool2", "flat",
            "bnll", "fc2", "prob"]


def write_v0_caffemodel(path: Path, net_name: str, layers: list[tuple[str, str, list]]) -> None:
    """A .caffemodel as V0 Caffe wrote it: ``layers { layer { name type blobs } }``, blobs
    with the legacy 4-D num/channels/height/width shape (1-D and 2-D padded with leading 1s)."""
    model = caffe_pb2.NetParameter(name=net_name)
    for name, v0_type, blobs in layers:
        entry = model.layers.add()
        entry.layer.name = name
        entry.layer.type = v0_type
        for arr in blobs:
            dims = (1,) * (4 - arr.ndim) + tuple(arr.shape)
            blob = entry.layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2],
                                         width=dims[3])
            blob.data.extend(np.asarray(arr, np.float32).ravel().tolist())
    path.write_bytes(model.SerializeToString())


_V2_TO_V0 = {"Convolution": "conv", "InnerProduct": "innerproduct"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The V0 prototxt, seeded random blobs as a V0 and as a V2 .caffemodel, and an input."""
    d = tmp_path_factory.mktemp("v0")
    proto = d / "v0.prototxt"
    proto.write_text(V0_NET)
    ref_net = build_net(proto)
    randomize(ref_net, seed=11)
    blobs = net_blobs(ref_net)
    v0_layers = [(lb.name, _V2_TO_V0[lb.type], lb.blobs) for lb in blobs]
    v0_layers.insert(0, ("pad1", "padding", []))  # V0 files held padding layers too, blob-less
    write_v0_caffemodel(d / "v0.caffemodel", "v0_small", v0_layers)
    write_caffemodel(d / "v2.caffemodel", blobs)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 3, 15, 15)).astype(np.float32)
    return proto, d / "v0.caffemodel", d / "v2.caffemodel", x


def _run(net, x):
    with torch.no_grad():
        return {k: v.numpy() for k, v in net.run_layers({"data": x}, COMPARED).items()}


def test_v0_net_with_v0_weights_matches_opencv(files):
    proto, v0_model, v2_model, x = files
    net = build_net(proto)
    report = load_weights(net, v0_model, strict=True)
    assert sorted(report.copied) == ["conv1", "conv2a", "conv2b", "fc1", "fc2"]
    assert "fc1[0]: [1, 1, 7, 90] -> [7, 90]" in report.reshaped  # legacy 4-D V0 blob shapes
    ours = _run(net, x)
    try:
        ref = run_opencv(proto, v2_model, {"data": x}, COMPARED)
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer is unavailable: {exc}")
    for name in COMPARED:
        assert ours[name].shape == ref[name].shape, (name, ours[name].shape, ref[name].shape)
        scale = float(np.abs(ref[name]).max())
        err = float(np.abs(ours[name].astype(np.float64) - ref[name]).max()) / scale
        assert err <= REL_TOL, f"{name}: relative error {err:.3g}"
    # The padding layers really were merged: conv1 is 8x8 only with pad 2 (15 + 4 - 5) / 2 + 1.
    assert ours["conv1"].shape == (2, 8, 8, 8)


def test_opencv_drops_the_blobs_of_a_v0_caffemodel(files):
    """docs/caffe_compat.md, OpenCV deviation 15: the reason OpenCV gets the V2 file above."""
    proto, v0_model, _, x = files
    try:
        with pytest.raises(OpenCVFailed, match="blobs.empty"):
            run_opencv(proto, v0_model, {"data": x}, ["conv1"])
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer is unavailable: {exc}")


def test_v0_and_v2_caffemodels_of_the_same_blobs_load_the_same(files):
    proto, v0_model, v2_model, x = files
    a, b = build_net(proto), build_net(proto)
    load_weights(a, v0_model, strict=True)
    load_weights(b, v2_model, strict=True)
    out_a, out_b = _run(a, x), _run(b, x)
    for name in COMPARED:
        assert np.array_equal(out_a[name], out_b[name]), name
    got = read_caffemodel(v0_model)
    assert [(lb.name, lb.type) for lb in got][:3] == [
        ("pad1", "padding"), ("conv1", "Convolution"), ("conv2a", "Convolution")]


def test_upgraded_net_equals_the_hand_written_v2_net():
    v0, v2 = parse_net(V0_NET, path="v0.prototxt"), parse_net(V2_NET)
    assert len(v0.net.layer) == len(v2.net.layer)
    for a, b in zip(v0.net.layer, v2.net.layer, strict=True):
        assert a == b, f"{a.name}:\n{a}\n---\n{b}"
    assert v0.net == v2.net
    # Source lines follow the kept entries (the padding layers are gone, the Input is made up).
    lines = V0_NET.splitlines()
    assert v0.layer_lines[0] is None
    for i, layer in enumerate(v0.net.layer[1:], start=1):
        line = lines[v0.layer_lines[i] - 1]
        assert line.startswith("layers {")
        nested = "\n".join(lines[v0.layer_lines[i] - 1:v0.layer_lines[i] + 1])
        assert f'name: "{layer.name}"' in nested, (layer.name, line)
    assert any("4 padding layer(s) merged" in n for n in v0.notes), v0.notes


def test_every_v0_field_is_mapped_as_caffe_does():
    """Data-layer, window, HDF5, loss and filler fields land where UpgradeV0LayerParameter puts
    them; fields the type does not use are dropped with a warning naming file, line, layer."""
    text = """
layers { layer { name: "d" type: "data" source: "db" batchsize: 8 rand_skip: 3 scale: 0.5
                 meanfile: "m.binaryproto" cropsize: 11 mirror: true } top: "x" top: "y" }
layers { layer { name: "im" type: "images" source: "l.txt" batchsize: 2 shuffle_images: true
                 new_height: 4 new_width: 5 rand_skip: 1 } top: "i" top: "il" }
layers { layer { name: "w" type: "window_data" source: "w.txt" batchsize: 3
                 det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.5
                 det_context_pad: 16 det_crop_mode: "square" } top: "wd" top: "wl" }
layers { layer { name: "h" type: "hdf5_data" source: "h.txt" batchsize: 4 } top: "hd" }
layers { layer { name: "p" type: "pool" pool: STOCHASTIC kernelsize: 2 } bottom: "x" top: "p" }
layers { layer { name: "n" type: "lrn" k: 2 } bottom: "p" top: "n" }
layers { layer { name: "ho" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
         bottom: "n" bottom: "y" }
layers { layer { name: "ig" type: "infogain_loss" source: "H.binaryproto" }
         bottom: "n" bottom: "y" }
layers { layer { name: "r" type: "relu" num_output: 3 new_num: 2 } bottom: "n" top: "r" }
"""
    expected = """
layer { name: "d" type: "Data" top: "x" top: "y"
        transform_param { scale: 0.5 mirror: true crop_size: 11 mean_file: "m.binaryproto" }
        data_param { source: "db" batch_size: 8 rand_skip: 3 } }
layer { name: "im" type: "ImageData" top: "i" top: "il"
        image_data_param { source: "l.txt" batch_size: 2 rand_skip: 1 shuffle: true
                           new_height: 4 new_width: 5 } }
layer { name: "w" type: "WindowData" top: "wd" top: "wl"
        window_data_param { source: "w.txt" batch_size: 3 fg_threshold: 0.6 bg_threshold: 0.4
                            fg_fraction: 0.5 context_pad: 16 crop_mode: "square" } }
layer { name: "h" type: "HDF5Data" top: "hd" hdf5_data_param { source: "h.txt" batch_size: 4 } }
layer { name: "p" type: "Pooling" bottom: "x" top: "p"
        pooling_param { pool: STOCHASTIC kernel_size: 2 } }
layer { name: "n" type: "LRN" bottom: "p" top: "n" lrn_param { k: 2 } }
layer { name: "ho" type: "HDF5Output" bottom: "n" bottom: "y"
        hdf5_output_param { file_name: "o.h5" } }
layer { name: "ig" type: "InfogainLoss" bottom: "n" bottom: "y"
        infogain_loss_param { source: "H.binaryproto" } }
layer { name: "r" type: "ReLU" bottom: "n" top: "r" }
"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = parse_net(text, path="old.prototxt").net
    assert got == parse_net(expected).net, got
    messages = [str(w.message) for w in caught if issubclass(w.category, PrototxtWarning)]
    assert messages == [
        "old.prototxt:16 (layer 'r'): V0 field 'num_output' is not used by a 'relu' layer (only "
        "by conv, innerproduct); dropped, as Caffe's V0 upgrade does",
        "old.prototxt:16 (layer 'r'): V0 field 'new_num' has no V1 equivalent; dropped, as "
        "Caffe's V0 upgrade does"]


def test_the_tables_cover_the_schema():
    """Every V0 field is mapped, copied or known to be dropped; every target exists in V1."""
    dropped = {"new_num", "new_channels"}
    v0_fields = {f.name for f in caffe_pb2.V0LayerParameter.DESCRIPTOR.fields}
    assert v0_fields == set(_FIELDS) | _GENERAL | dropped
    v1 = caffe_pb2.V1LayerParameter.DESCRIPTOR
    for targets in _FIELDS.values():
        for kind, target in targets.items():
            assert kind == "*" or kind in V0_TYPES
            param, _, name = target.partition(".")
            msg = v1.fields_by_name[param].message_type
            assert not name or name in msg.fields_by_name, target
    for v1_name in V0_TYPES.values():
        caffe_pb2.V1LayerParameter.LayerType.Value(v1_name)  # raises if absent


def test_padding_warnings():
    text = """input: "x" input_dim: 1 input_dim: 1 input_dim: 5 input_dim: 5
layers { layer { name: "p" type: "padding" pad: 2 } bottom: "x" top: "px" }
layers { layer { name: "c" type: "conv" num_output: 1 kernelsize: 3 pad: 1 } bottom: "px" top: "c" }
layers { layer { name: "dead" type: "padding" pad: 1 } bottom: "c" top: "unused" }
"""
    with pytest.warns(PrototxtWarning) as record:
        net = parse_net(text, path="n.prototxt").net
    messages = [str(w.message) for w in record]
    assert ("n.prototxt:3 (layer 'c'): pad 1 replaced by pad 2 of padding layer n.prototxt:2 "
            "(layer 'p'), as Caffe's V0 upgrade does") in messages
    assert ("n.prototxt:4 (layer 'dead'): padding layer read by no conv or pool layer; dropped, "
            "as Caffe's V0 upgrade does") in messages
    assert [layer.name for layer in net.layer] == ["input", "c"]
    assert list(net.layer[1].convolution_param.pad) == [2]
    assert list(net.layer[1].bottom) == ["x"]


HEAD = 'input: "x" input_dim: 1 input_dim: 2 input_dim: 6 input_dim: 6\n'


@pytest.mark.parametrize("body, line, layer, words", [
    ('layers { layer { name: "fc" type: "innerprod" num_output: 2 } bottom: "x" top: "y" }',
     2, "fc", ["unknown V0 layer type 'innerprod'", "Did you mean 'innerproduct'?"]),
    ('layers { layer { name: "c" type: "Convolution" } bottom: "x" top: "y" }',
     2, "c", ["unknown V0 layer type 'Convolution'", "Did you mean 'conv'?"]),
    ('layers { layer { name: "c" } bottom: "x" top: "y" }', 2, "c", ["without a 'type'"]),
    ('layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" }\n'
     'layers { layer { name: "r" type: "relu" } bottom: "px" top: "r" }',
     3, "r", ["padding layer <text>:2 (layer 'p')", "not into a 'relu' layer"]),
    ('layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" }\n'
     'layers { layer { name: "p2" type: "padding" pad: 1 } bottom: "px" top: "ppx" }',
     3, "p2", ["not into a 'padding' layer"]),
    ('layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "a" top: "b" }\n'
     'layers { layer { name: "c" type: "conv" num_output: 1 kernelsize: 1 } bottom: "a" top: "c" }',
     2, "p", ["1 bottom(s) and 2 top(s)", "exactly one of each"]),
    ('layers { layer { name: "s" type: "split" } bottom: "x" top: "x1" top: "x2" }\n'
     'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x1" bottom: "x2" top: "a" }\n'
     'layers { layer { name: "q" type: "pool" kernelsize: 1 } bottom: "a" top: "q" }',
     3, "p", ["2 bottom(s) and 1 top(s)"]),
    ('layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" }\n'
     'layers { layer { name: "c" type: "conv" num_output: 1 kernelsize: 1 } bottom: "px" '
     'bottom: "x" top: "c" }',
     3, "c", ["has 2 bottoms", "exactly one"]),
    ('layers { layer { name: "r" type: "relu" } bottom: "nowhere" top: "r" }',
     2, "r", ["bottom 'nowhere' is written by no earlier layer", "Unknown blob input"]),
    ('layers { layer { name: "r" type: "relu" } bottom: "x" top: "r" }\n'
     'layers { name: "r2" type: RELU bottom: "r" top: "r2" }',
     3, "r2", ["mixes V0", "no nested 'layer'"]),
    ('layers { layer { name: "r" type: "relu" } name: "outer" type: RELU bottom: "x" top: "r" }',
     2, "r", ["sets V1 field(s) name, type beside its nested 'layer'"]),
])
def test_what_caffe_refuses_is_an_error_with_its_place(body, line, layer, words):
    with pytest.raises(PrototxtError) as info:
        parse_net(HEAD + body + "\n")
    err = info.value
    assert (err.line, err.layer) == (line, layer), str(err)
    for w in words:
        assert w in str(err), str(err)


def test_v0_and_v2_layers_in_one_file_is_an_error():
    with pytest.raises(PrototxtError, match="mixes new-style 'layer'"):
        parse_net('layer { name: "a" type: "ReLU" }\n'
                  'layers { layer { name: "b" type: "relu" } }')


def test_a_v0_file_builds_from_the_command_line(tmp_path, capsys):
    proto = tmp_path / "v0.prototxt"
    proto.write_text(V0_NET)
    assert main(["build", str(proto)]) == 0
    read_net(proto)  # and the file reads without a warning
    bad = tmp_path / "bad.prototxt"
    bad.write_text(HEAD + 'layers { layer { name: "z" type: "zeropad" } bottom: "x" top: "y" }\n')
    capsys.readouterr()
    assert main(["build", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2 (layer 'z'): unknown V0 layer type 'zeropad'" in err, err


# --- V0 .caffemodel files whose legacy entries Caffe's upgrade would read differently -------


def test_v0_caffemodel_entry_with_v1_blobs_too_is_an_error(tmp_path):
    model = caffe_pb2.NetParameter()
    entry = model.layers.add()
    entry.layer.name = "c"
    entry.layer.type = "conv"
    entry.layer.blobs.add(num=1, channels=1, height=1, width=1).data.append(1.0)
    entry.blobs.add(num=1, channels=1, height=1, width=1).data.append(2.0)
    path = tmp_path / "both.caffemodel"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(WeightsError) as info:
        read_caffemodel(path)
    msg = str(info.value)
    assert str(path) in msg and "layer #0 'c'" in msg
    assert "both a nested V0 layer and V1 blobs" in msg


def test_v0_caffemodel_mixing_v0_and_v1_entries_is_an_error(tmp_path):
    model = caffe_pb2.NetParameter()
    entry = model.layers.add()
    entry.layer.name = "a"
    entry.layer.type = "relu"
    model.layers.add(name="b", type=caffe_pb2.V1LayerParameter.RELU)
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(WeightsError) as info:
        read_caffemodel(path)
    msg = str(info.value)
    assert str(path) in msg and "mixes V0" in msg and "layer #1 'b'" in msg
