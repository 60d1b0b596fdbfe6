"""What made big nets build in linear time must not change what they compute: shapes reused
between identical layers, SSA names of blobs rewritten many times, repeated layer names.
(Timings live in benchmarks/bench_build.py, not here.)"""
from __future__ import annotations

import gc

import torch

from landmarknet.build import _WatchedSpec, build_net
from landmarknet.graph import NetState, build_graph


def test_identical_layers_on_different_shapes_get_their_own_shapes(tmp_path):
    """Shape reuse is keyed on the bottoms' shapes too: the same pooling twice in a row halves
    twice, and the same convolution on 3 and on 4 channels makes different weights."""
    text = """input: "data" input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "p1" type: "Pooling" bottom: "data" top: "p1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "p2" type: "Pooling" bottom: "p1" top: "p2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "c1" type: "Convolution" bottom: "p2" top: "c1"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 4 kernel_size: 1 } }
"""
    (tmp_path / "n.prototxt").write_text(text)
    net = build_net(tmp_path / "n.prototxt")
    assert [info.top_shapes[0] for info in net.layers.values()] == [
        (1, 3, 8, 8), (1, 3, 4, 4), (1, 4, 4, 4), (1, 4, 4, 4)]
    assert net.get_submodule("c1").weight.shape == (4, 3, 1, 1)
    assert net.get_submodule("c2").weight.shape == (4, 4, 1, 1)
    x = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(1, 3, 16, 16)
    assert net.run({"data": x}, blobs=["p2"])["p2"].shape == (1, 3, 4, 4)


def test_a_converter_that_reads_the_graph_is_noticed():
    """Converters that look around their layer (PriorBox) are never given reused shapes."""
    spec = _WatchedSpec("l", "ReLU", None, [(1,)], 1, "test", None, "graph", "node")
    assert not spec.context_read
    assert spec.name == "l" and not spec.context_read
    assert spec.node == "node" and spec.context_read


def test_thousands_of_in_place_layers_with_one_name(tmp_path):
    """Caffe tolerates repeated layer names; each write gets its own SSA version, in order."""
    n = 3000
    text = 'input: "x" input_shape { dim: 1 dim: 2 }\n' + "".join(
        'layer { name: "step" type: "Power" bottom: "x" top: "x" '
        'power_param { shift: 1 } }\n' for _ in range(n))
    (tmp_path / "n.prototxt").write_text(text)
    graph = build_graph(tmp_path / "n.prototxt", NetState())
    tops = [node.tops[0] for node in graph.nodes]
    assert len(set(tops)) == n and tops[:3] == ["x@step", "x@step#2", "x@step#3"]
    assert len({node.module for node in graph.nodes}) == n
    net = build_net(tmp_path / "n.prototxt")
    assert float(net.run({"x": torch.zeros(1, 2)})["x"][0, 0]) == n  # n shifts by one


def test_build_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    (tmp_path / "n.prototxt").write_text('input: "x" input_shape { dim: 1 }\n'
                                         'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    assert gc.isenabled()
    build_net(tmp_path / "n.prototxt")
    assert gc.isenabled()
    gc.disable()
    try:
        build_net(tmp_path / "n.prototxt")
        assert not gc.isenabled()
    finally:
        gc.enable()
