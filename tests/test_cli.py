"""The command-line contract of the core: build, forward, convert."""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.cli.main import main
from landmarknet.params import load_weights, net_blobs

TINY = """name: "tiny"
input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    return path


def test_build_json_contract(tiny, capsys):
    assert main(["build", str(tiny), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"] == {"data": [1, 3, 12, 12]}
    assert out["outputs"] == {"prob": [1, 5]}
    # conv 4*3*3*3+4, bn 3 blobs are statistics (not learnable), scale 4+4, fc 5*4*5*5+5
    assert out["params"] == 112 + 8 + 505
    names = [row["name"] for row in out["layers"]]
    assert names == ["input", "conv1", "bn1", "scale1", "relu1", "pool1", "fc", "prob"]
    assert out["layers"][1]["tops"] == {"conv1": [1, 4, 10, 10]}


def test_build_random_weights_properties_and_save_formats(tiny, tmp_path, capsys):
    for ext in ("caffemodel", "h5", "pt"):
        out = tmp_path / f"w.{ext}"
        assert main(["build", str(tiny), "--random-weights", "3", "--save", str(out)]) == 0
        assert out.stat().st_size > 0
    capsys.readouterr()
    model = caffe_pb2.NetParameter.FromString((tmp_path / "w.caffemodel").read_bytes())
    bn = next(l for l in model.layer if l.name == "bn1")
    mean, var, factor = (np.array(b.data) for b in bn.blobs)
    assert factor[0] != pytest.approx(1.0)  # the third blob is exercised
    assert np.all((var / factor[0] >= 0.5 - 1e-6) & (var / factor[0] <= 1.5 + 1e-6))
    with h5py.File(tmp_path / "w.h5") as fh:  # Caffe's HDF5 layout: data/<layer>/<blob index>
        np.testing.assert_allclose(fh["data/bn1/2"][()], factor)
    state = torch.load(tmp_path / "w.pt", weights_only=True)  # keys are module.attr
    np.testing.assert_allclose(state["bn1.variance"].numpy(), var, rtol=1e-6)
    np.testing.assert_allclose(state["bn1.scale_factor"].numpy(), factor, rtol=1e-6)


def test_convert_round_trip_keeps_every_blob(tiny, tmp_path, capsys):
    src = tmp_path / "a.caffemodel"
    assert main(["build", str(tiny), "--random-weights", "9", "--save", str(src)]) == 0
    h5, pt, back = tmp_path / "b.h5", tmp_path / "c.pt", tmp_path / "d.caffemodel"
    assert main(["convert", str(src), str(h5)]) == 0
    assert main(["convert", str(h5), str(pt), "--prototxt", str(tiny)]) == 0
    assert main(["convert", str(pt), str(back), "--prototxt", str(tiny)]) == 0
    capsys.readouterr()
    first = caffe_pb2.NetParameter.FromString(src.read_bytes())
    last = caffe_pb2.NetParameter.FromString(back.read_bytes())
    for a in first.layer:
        b = next(l for l in last.layer if l.name == a.name)
        for x, y in zip(a.blobs, b.blobs):
            assert list(x.shape.dim) == list(y.shape.dim)
            np.testing.assert_array_equal(np.array(x.data), np.array(y.data))


def test_forward_saves_outputs_and_named_blobs(tiny, tmp_path, capsys):
    weights = tmp_path / "w.caffemodel"
    assert main(["build", str(tiny), "--random-weights", "1", "--save", str(weights)]) == 0
    x = np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert main(["forward", str(tiny), "--weights", str(weights), "--input",
                 f"data={tmp_path / 'x.npy'}", "--output", str(out), "--blobs", "conv1,prob"]) == 0
    capsys.readouterr()
    saved = np.load(out)
    assert sorted(saved.files) == ["conv1", "prob"]
    assert saved["prob"].shape == (2, 5)  # the batch of the .npy, not of the prototxt
    np.testing.assert_allclose(saved["prob"].sum(axis=1), 1.0, rtol=1e-5)
    assert saved["conv1"].min() >= 0  # 'conv1' is the blob after the in-place ReLU, as in Caffe
    net = build_net(tiny, input_shapes={"data": x.shape})
    load_weights(net, weights, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x))["prob"].numpy(), saved["prob"],
                                   rtol=1e-6)


def test_convert_copy_layers_reports(tiny, tmp_path, capsys):
    src = tmp_path / "a.caffemodel"
    assert main(["build", str(tiny), "--random-weights", "2", "--save", str(src)]) == 0
    capsys.readouterr()
    out = tmp_path / "part.caffemodel"
    assert main(["convert", str(src), str(out), "--prototxt", str(tiny),
                 "--copy-layers", "upto:scale1"]) == 0
    text = capsys.readouterr().out
    assert "copied 3 layer(s)" in text and "left out on request: 1" in text
    net = build_net(tiny)
    blobs = {lb.name: lb.blobs for lb in net_blobs(net)}
    load_weights(net, out, strict=True)
    copied = {lb.name: lb.blobs for lb in net_blobs(net)}
    src_blobs = {lb.name: lb.blobs for lb in __import__(
        "landmarknet.caffe.weights", fromlist=["read_caffemodel"]).read_caffemodel(src)}
    np.testing.assert_array_equal(copied["conv1"][0], src_blobs["conv1"][0])
    assert not np.array_equal(copied["fc"][0], src_blobs["fc"][0])  # fc kept its fillers
    assert set(blobs) == set(copied)


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer {\n  name: "a"\n  typo_field: 1\n}\n')
    proc = subprocess.run([sys.executable, "-m", "landmarknet.cli.main", "build", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}:3:3 (layer 'a'): unknown field 'typo_field'" in proc.stderr
