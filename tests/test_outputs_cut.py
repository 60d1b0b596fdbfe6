"""``--outputs`` / ``Graph.cut_to``: a net ended at chosen blobs, the layers it no longer needs
left out (SSD exported without its DetectionOutput, a trunk run alone)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarknet.build import build_from_graph, build_net, net_graph
from landmarknet.cli.main import main
from landmarknet.errors import GraphError
from landmarknet.params import randomize

NET = """name: "cut"
input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
input: "side" input_shape { dim: 2 dim: 5 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
layer { name: "side_fc" type: "InnerProduct" bottom: "side" top: "side_fc"
        inner_product_param { num_output: 2 } }
"""


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "cut.prototxt"
    path.write_text(NET)
    return path


def test_cut_keeps_what_the_outputs_need(net_file):
    graph = net_graph(net_file).cut_to(["conv1", "fc"])
    assert [n.name for n in graph.nodes] == ["conv1", "relu1", "conv2", "fc"]
    assert [i.name for i in graph.inputs] == ["data"]  # 'side' feeds nothing that is kept
    # conv1 is consumed by conv2 and still an output, at its last value (after relu1, in place)
    assert [graph.blob_of[t] for t in graph.outputs()] == ["conv1", "fc"]
    assert graph.outputs()[0] == net_graph(net_file).latest["conv1"]
    assert "prob" not in graph.latest and "side_fc" not in graph.latest


def test_cut_net_computes_the_full_nets_blobs(net_file):
    full = build_net(net_file)
    randomize(full, 3)
    cut = build_from_graph(net_graph(net_file).cut_to(["conv1", "fc"]))
    cut.load_state_dict({k: v for k, v in full.state_dict().items()
                         if not k.startswith(("prob", "side_fc"))})
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = full.run({"data": x, "side": torch.zeros(2, 5)}, blobs=["conv1", "fc"])
        got = cut(data=x)
    assert list(got) == ["conv1", "fc"]
    assert (want["conv1"] >= 0).all() and (want["conv1"] == 0).any()  # relu1 applied
    for name in got:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


def test_cut_errors(net_file):
    with pytest.raises(GraphError, match=r"no blob named 'conv3'.*did you mean conv2, conv1"):
        net_graph(net_file).cut_to(["conv3"])
    with pytest.raises(GraphError, match="at least one blob"):
        net_graph(net_file).cut_to([])


def test_export_suggests_and_takes_outputs_before_detection_output(zoo, tmp_path, capsys):
    proto = zoo / "mobilenetv2_ssdlite_voc" / "deploy.prototxt"
    onnx_path = tmp_path / "ssd.onnx"
    base = ["export", str(proto), "--random-weights", "0", "-o", str(onnx_path)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--outputs mbox_loc,mbox_conf_flatten,mbox_priorbox`" in err
    assert main(base + ["--outputs", "mbox_loc,mbox_conf_flatten,mbox_priorbox"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "detection_out" not in out  # checked in ONNX Runtime
    import onnx
    model = onnx.load(str(onnx_path))
    assert [o.name for o in model.graph.output] == ["mbox_loc", "mbox_conf_flatten",
                                                    "mbox_priorbox"]


def test_build_outputs_option(net_file, capsys):
    assert main(["build", str(net_file), "--outputs", "conv2"]) == 0
    printed = capsys.readouterr().out
    assert "outputs: conv2 2x2x5x5" in printed and "prob" not in printed
    assert main(["build", str(net_file), "--outputs", "conv9"]) == 2
    assert "no blob named 'conv9'" in capsys.readouterr().err
