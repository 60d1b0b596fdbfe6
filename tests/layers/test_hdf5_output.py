"""HDF5Output (landmarknet/layers/data.py): a sink that consumes (data, label) and writes nothing.

BVLC Caffe's hdf5_output_layer.cpp writes bottom 0 as dataset "data" and bottom 1 as "label" of
hdf5_output_param.file_name (truncated when the net is set up; a second forward of the same net
aborts, the datasets existing already). landmarknet accepts the layer as MatWrite is accepted: it
warns, writes no file, and the bottoms stay reachable by name. The reference Caffe shows what the
file would have held: the same arrays our net gives for those blobs.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from layers.checker import assert_refused, run_layer

NET = """
layer { name: "in" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 1 } } }
layer { name: "r" type: "ReLU" bottom: "x" top: "r" }
layer { name: "s" type: "Scale" bottom: "y" top: "ys" scale_param { axis: 0 num_axes: 0 } }
layer { name: "out" type: "HDF5Output" bottom: "r" bottom: "ys"
        hdf5_output_param { file_name: "FILE" } }
"""


def test_builds_with_a_warning_and_writes_nothing(tmp_path) -> None:
    target = tmp_path / "out.h5"
    with pytest.warns(UserWarning, match=r"layer 'out' \(HDF5Output\): accepted as a sink that "
                                         r"writes nothing.*'r', 'ys'.*'data' and 'label'"):
        net = build_net(parse_net(NET.replace("FILE", str(target))))
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        outputs = net(x=x, y=torch.ones(3, 1))
        blobs = net.run({"x": x, "y": torch.ones(3, 1)}, blobs=["r", "ys"])
    assert outputs == {}  # both bottoms are consumed, as in Caffe: no net outputs
    torch.testing.assert_close(blobs["r"], torch.relu(x))
    assert not target.exists()


def test_module_returns_no_tops() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs, _, _ = run_layer("HDF5Output", 'hdf5_output_param { file_name: "o.h5" }',
                               [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)], n_tops=0)
    assert outs == []


def test_bad_inputs_name_the_layer() -> None:
    fields = 'hdf5_output_param { file_name: "o.h5" }'
    assert_refused("HDF5Output", fields, [(2, 3)], n_tops=0, match="needs 2 bottom")
    assert_refused("HDF5Output", fields, [(2, 3), (2,)], n_tops=1, match="no tops")
    assert_refused("HDF5Output", "", [(2, 3), (2,)], n_tops=0,
                   match="hdf5_output_param.file_name is required")
    assert_refused("HDF5Output", fields, [(2, 3), (3,)], n_tops=0, match="same first axis")
    assert_refused("HDF5Output", fields, [(2, 3, 1, 1, 1), (2,)], n_tops=0,
                   match="bottom 0 (data) must have 1 to 4 axes")


@pytest.mark.caffe_ref
def test_real_caffe_writes_the_blobs_our_net_gives(tmp_path) -> None:
    import h5py

    from reference.real_caffe import caffe_forward

    target = tmp_path / "caffe.h5"
    text = NET.replace("FILE", str(target))
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    rng = np.random.default_rng(60)
    arrays = {"x": rng.normal(size=(3, 2, 4)).astype(np.float32),
              "y": rng.integers(0, 5, (3, 1)).astype(np.float32)}
    weights = tmp_path / "caffe.caffemodel"
    caffe_forward(proto, arrays, blobs=["r"], save_weights=weights)
    with h5py.File(target, "r") as f:
        assert sorted(f) == ["data", "label"]
        data, label = f["data"][...], f["label"][...]
    # Caffe writes each bottom as a legacy 4-D (N, C, H, W) dataset
    assert data.shape == (3, 2, 4, 1) and label.shape == (3, 1, 1, 1)

    from landmarknet.params import load_weights
    with pytest.warns(UserWarning, match="HDF5Output"):
        net = build_net(parse_net(text))
    load_weights(net, weights, strict=False)  # the Scale's random weight, as Caffe drew it
    target.unlink()
    with torch.no_grad():
        ours = net.run({k: torch.tensor(v) for k, v in arrays.items()}, blobs=["r", "ys"])
    np.testing.assert_array_equal(ours["r"].numpy(), data.reshape(3, 2, 4))
    np.testing.assert_allclose(ours["ys"].numpy(), label.reshape(3, 1), rtol=1e-6)
    assert not target.exists()
