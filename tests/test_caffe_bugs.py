"""Issue 13, point 5: BatchNorm on 1x1 maps, the SE-ResNeXt mismatch, inputs without dims,
automatic tops of loss layers, ContrastiveLoss.

References: the real Caffe (brocolli-caffe 9.0.2, tests/reference/real_caffe.py) wherever it
runs the case: forward, loss, BatchNorm statistics and every gradient, with the weights that
Caffe itself drew and wrote. OpenCV 4.x where Caffe refuses what OpenCV accepts (an input
declared without dims) and for the fork layer Axpy, which the reference Caffe does not have;
there the SENet fork's C++ (axpy_layer.cpp: ``a * bottom[1] + bottom[2]``) is restated in numpy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net, read_net
from landmarknet.cli.main import main as cli_main
from landmarknet.errors import GraphError, LayerError, ShapeError
from landmarknet.graph import module_name
from landmarknet.params import randomize, save_weights
from opencv_ref import OpenCVUnavailable, run_opencv
from reference.compare import rel_err
from reference.ours import run_backward
from reference.real_caffe import run_caffe

FWD_TOL = 1e-5  # forward, relative to the blob's largest magnitude
GRAD_TOL = 1e-4  # gradients: float32 sums in another order


def opencv_or_skip(*args, **kwargs):
    try:
        return run_opencv(*args, **kwargs)
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV with a Caffe importer is unavailable: {exc}")


# ----------------------------------------------------------------------------------------------
# one forward + backward in the reference Caffe and in landmarknet, same weights
# ----------------------------------------------------------------------------------------------

def caffe_backward(tmp_path: Path, text: str, arrays: dict[str, np.ndarray], phase: str,
                   seed: int = 0):
    """Run the net in the reference Caffe: (meta, arrays, prototxt path, weights Caffe drew)."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    weights = tmp_path / "caffe.caffemodel"
    meta, out = run_caffe("backward", {"prototxt": str(proto), "phase": phase, "seed": seed,
                                       "save_weights": str(weights)}, arrays)
    return meta, out, proto, weights


def ours_backward(proto: Path, weights: Path, arrays: dict[str, np.ndarray], phase: str,
                  blobs: list[str]):
    """(net, {blob: data}, loss, {input: grad}) from landmarknet with Caffe's weights."""
    net, out, inputs, loss = run_backward(proto, weights, arrays, phase, blobs)
    data = {k: v.detach().numpy() for k, v in out.items()}
    grads = {k: (v.grad.numpy() if v.grad is not None else np.zeros_like(arrays[k]))
             for k, v in inputs.items()}
    return net, data, loss, grads


def compare_with_caffe(tmp_path: Path, text: str, arrays: dict[str, np.ndarray], phase: str,
                       *, grad_inputs: tuple[str, ...] = (), seed: int = 0,
                       grad_tol: float = GRAD_TOL) -> tuple[dict[str, float], dict]:
    """Every named blob, the loss, every parameter gradient and the diffs of ``grad_inputs``
    must match the reference Caffe; returns the errors measured and Caffe's meta."""
    meta, out, proto, weights = caffe_backward(tmp_path, text, arrays, phase, seed)
    names = [n for n in meta["blobs"] if "_split_" not in n and n != "(automatic)"]
    net, data, loss, grads = ours_backward(proto, weights, arrays, phase, names)
    index = {n: i for i, n in enumerate(meta["blobs"])}
    errors: dict[str, float] = {}
    for name in names:
        errors[name] = rel_err(data[name], out[f"data{index[name]}"])
        assert errors[name] <= FWD_TOL, f"blob {name}: relative error {errors[name]:.3g}"
    errors["loss"] = abs(loss - meta["loss"]) / max(abs(meta["loss"]), 1e-12)
    assert errors["loss"] <= FWD_TOL, (loss, meta["loss"])
    for name in grad_inputs:
        ref = out[f"diff{index[name]}"]
        assert np.abs(ref).max() > 0, f"Caffe's diff of {name} is all zeros: nothing is tested"
        errors[f"d {name}"] = rel_err(grads[name], ref)
        assert errors[f"d {name}"] <= grad_tol, f"diff of {name}: {errors[f'd {name}']:.3g}"
    for k, (layer, j, _shape) in enumerate(meta["params"]):
        module = module_name(layer)
        info = net.layers[module]
        tensor = net.blob_tensor(module, j)
        if info.node.type == "BatchNorm":  # statistics after the forward (TRAIN updates them)
            errors[f"{layer}[{j}]"] = rel_err(tensor.detach().numpy(), out[f"pdata{k}"])
            assert errors[f"{layer}[{j}]"] <= FWD_TOL, f"{layer} blob {j}"
            continue
        grad = tensor.grad.numpy() if tensor.grad is not None else np.zeros(tensor.shape)
        errors[f"d {layer}[{j}]"] = rel_err(grad.reshape(out[f"pdiff{k}"].shape),
                                            out[f"pdiff{k}"])
        assert errors[f"d {layer}[{j}]"] <= grad_tol, \
            f"gradient of {layer} blob {j}: {errors[f'd {layer}[{j}]']:.3g}"
    return errors, meta


def _input(tops: dict[str, tuple[int, ...]]) -> str:
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in tops.values())
    return ('layer { name: "in" type: "Input" '
            + " ".join(f'top: "{t}"' for t in tops) + f" input_param {{ {shapes} }} }}\n")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# 1. BatchNorm on 1x1 maps, and BatchNorm/Scale/Bias on bottoms of every rank Caffe allows
# ----------------------------------------------------------------------------------------------

def _bn_net(shape: tuple[int, ...]) -> str:
    return ('name: "bn"\nforce_backward: true\n' + _input({"x": shape, "t": shape})
            + 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }\n'
            + 'layer { name: "sc" type: "Scale" bottom: "y" top: "y" '
              'scale_param { bias_term: true } }\n'
            # sum((y - t)^2) from layers without Caffe's legacy 4-axis accessors
            + 'layer { name: "d" type: "Eltwise" bottom: "y" bottom: "t" top: "d" '
              'eltwise_param { coeff: 1 coeff: -1 } }\n'
            + 'layer { name: "loss" type: "Reduction" bottom: "d" top: "loss" loss_weight: 1 '
              'reduction_param { operation: SUMSQ } }\n')


# (1, C, 1, 1) is the map behind a global pooling with batch 1: it failed to build before.
BN_CASES = [((1, 8, 1, 1), "test"), ((1, 8, 1, 1), "train"), ((3, 8, 1, 1), "train"),
            ((4, 8), "test"), ((4, 8), "train"), ((1, 8), "train"), ((2, 8, 5), "train"),
            ((2, 4, 3, 2, 2), "train"), ((2, 4, 3, 5), "test")]


def test_batch_norm_on_a_1x1_map_builds_in_both_phases():
    text = _input({"x": (1, 16, 7, 7)}) + (
        'layer { name: "gap" type: "Pooling" bottom: "x" top: "gap" '
        'pooling_param { pool: AVE global_pooling: true } }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "gap" top: "gap" }\n')
    for phase in ("test", "train"):
        net = build_net(parse_net(text), phase=phase)
        assert net.blob_shapes[net.caffe_graph.latest["gap"]] == (1, 16, 1, 1)


@pytest.mark.caffe_ref
@pytest.mark.parametrize("shape, phase", BN_CASES, ids=[f"{'x'.join(map(str, s))}-{p}"
                                                        for s, p in BN_CASES])
def test_batch_norm_scale_any_rank_match_caffe(tmp_path, shape, phase):
    rng = np.random.default_rng(5)
    arrays = {"x": rng.normal(0.3, 1.5, shape).astype(np.float32),
              "t": rng.normal(0, 1, shape).astype(np.float32)}
    # One value per channel in TRAIN (N = 1 on a 1x1 map): the output is 0 and so is every
    # diff below it, in Caffe as here; the statistics and the Scale gradients still count.
    degenerate = phase == "train" and np.prod(shape) // shape[1] == 1
    compare_with_caffe(tmp_path, _bn_net(shape), arrays, phase,
                       grad_inputs=() if degenerate else ("x",))


def test_batch_norm_refuses_a_1d_bottom_as_caffe_does():
    # Caffe: LayerSetUp takes 1 channel, then Reshape's CHECK on shape(1) aborts (measured).
    text = _input({"x": (6,)}) + 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }\n'
    with pytest.raises(ShapeError, match="2 or more axes"):
        build_net(parse_net(text))


# Scale and Bias broadcasting (scale_layer.cpp / bias_layer.cpp): learned blobs over axis and
# num_axes, and second bottoms, on 2-, 3- and 4-D bottoms; gradients to both bottoms.
BROADCAST_NET = 'name: "bcast"\nforce_backward: true\n' + _input(
    {"x2": (4, 6), "x3": (2, 3, 5), "x4": (2, 3, 4, 5), "g2": (2, 3), "g34": (3, 4),
     "b6": (6,)}) + """
layer { name: "s2" type: "Scale" bottom: "x2" top: "s2" scale_param { bias_term: true } }
layer { name: "b2" type: "Bias" bottom: "s2" top: "b2" bias_param { axis: -1 } }
layer { name: "s3" type: "Scale" bottom: "x3" top: "s3" scale_param { axis: 1 num_axes: 2 } }
layer { name: "s3all" type: "Scale" bottom: "s3" top: "s3all" scale_param { num_axes: -1 } }
layer { name: "s3one" type: "Scale" bottom: "s3all" top: "s3one"
        scale_param { num_axes: 0 bias_term: true } }
layer { name: "gate" type: "Scale" bottom: "x4" bottom: "g2" top: "gate" scale_param { axis: 0 } }
layer { name: "gate_b" type: "Scale" bottom: "gate" bottom: "g34" top: "gate_b"
        scale_param { axis: 1 bias_term: true } }
layer { name: "plus" type: "Bias" bottom: "b2" bottom: "b6" top: "plus" bias_param { axis: 1 } }
layer { name: "l2" type: "Reduction" bottom: "plus" top: "l2"
        reduction_param { operation: SUMSQ } }
layer { name: "l3" type: "Reduction" bottom: "s3one" top: "l3"
        reduction_param { operation: SUMSQ } }
layer { name: "l4" type: "Reduction" bottom: "gate_b" top: "l4"
        reduction_param { operation: SUMSQ } }
layer { name: "sum" type: "Eltwise" bottom: "l2" bottom: "l3" bottom: "l4" top: "sum"
        loss_weight: 1 }
"""


@pytest.mark.caffe_ref
@pytest.mark.parametrize("phase", ["test", "train"])
def test_scale_bias_broadcast_rules_match_caffe(tmp_path, phase):
    rng = np.random.default_rng(11)
    arrays = {"x2": (4, 6), "x3": (2, 3, 5), "x4": (2, 3, 4, 5), "g2": (2, 3), "g34": (3, 4),
              "b6": (6,)}
    arrays = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in arrays.items()}
    compare_with_caffe(tmp_path, BROADCAST_NET, arrays, phase,
                       grad_inputs=("x2", "x3", "x4", "g2", "g34", "b6"))


def test_scale_gate_of_shape_nc11_with_axis_0_is_refused_clearly():
    # BVLC's scale_layer.cpp checks every axis of bottom[1] against bottom[0] from `axis`:
    # (N, C, 1, 1) against (N, C, H, W) fails. (The reference fork has the check commented out
    # and then scales only the first N*C elements; OpenCV finds the axes whose product matches.)
    text = _input({"x": (2, 3, 4, 5), "g": (2, 3, 1, 1)}) + (
        'layer { name: "mul" type: "Scale" bottom: "x" bottom: "g" top: "y" '
        'scale_param { axis: 0 } }\n')
    with pytest.raises(ShapeError, match=r"\(2, 3, 1, 1\) does not match .* from axis 0"):
        build_net(parse_net(text))


# ----------------------------------------------------------------------------------------------
# 2. SE-ResNeXt: grouped convolution, BatchNorm, the SE gate (Scale axis 0, or Axpy)
# ----------------------------------------------------------------------------------------------

def se_resnext_block(n: int, c: int, hw: int, gate: str, phase_loss: bool) -> str:
    """A ResNeXt bottleneck (grouped 3x3, group 32) with a squeeze-and-excitation gate.

    gate: "ip" (InnerProduct squeeze/excite, (N, C) gate, Scale axis 0, as shicai's SENet),
    "conv" (1x1 convolutions, (N, C, 1, 1) gate reshaped to (N, C), then Scale axis 0),
    "axpy" (1x1 convolutions and hujie-frank's Axpy, as in his SE-ResNeXt-50).
    """
    mid = 64
    text = 'name: "se_resnext"\nforce_backward: true\n' + _input({"data": (n, c, hw, hw)})
    for name, bottom, out, extra in (("red", "data", mid, "kernel_size: 1"),
                                     ("grp", "red", mid, "kernel_size: 3 pad: 1 group: 32"),
                                     ("inc", "grp", c, "kernel_size: 1")):
        text += (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                 f'convolution_param {{ num_output: {out} bias_term: false {extra} }} }}\n'
                 f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" '
                 f'batch_norm_param {{ use_global_stats: true }} }}\n'
                 f'layer {{ name: "{name}/sc" type: "Scale" bottom: "{name}" top: "{name}" '
                 'scale_param { bias_term: true } }\n')
        if name != "inc":
            text += (f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" '
                     f'top: "{name}" }}\n')
    text += ('layer { name: "gap" type: "Pooling" bottom: "inc" top: "gap" '
             'pooling_param { pool: AVE global_pooling: true } }\n')
    kind = "InnerProduct" if gate == "ip" else "Convolution"
    param = "inner_product_param" if gate == "ip" else "convolution_param"
    ksize = "" if gate == "ip" else " kernel_size: 1"
    text += (f'layer {{ name: "down" type: "{kind}" bottom: "gap" top: "down" '
             f'{param} {{ num_output: 8{ksize} }} }}\n'
             'layer { name: "down/relu" type: "ReLU" bottom: "down" top: "down" }\n'
             f'layer {{ name: "up" type: "{kind}" bottom: "down" top: "up" '
             f'{param} {{ num_output: {c}{ksize} }} }}\n'
             'layer { name: "prob" type: "Sigmoid" bottom: "up" top: "up" }\n')
    if gate == "axpy":
        text += ('layer { name: "res" type: "Axpy" bottom: "up" bottom: "inc" bottom: "data" '
                 'top: "res" }\n')
    else:
        gate_blob = "up"
        if gate == "conv":
            text += ('layer { name: "flat" type: "Reshape" bottom: "up" top: "flat" '
                     'reshape_param { shape { dim: 0 dim: -1 } } }\n')
            gate_blob = "flat"
        text += (f'layer {{ name: "mul" type: "Scale" bottom: "inc" bottom: "{gate_blob}" '
                 'top: "mul" scale_param { axis: 0 } }\n'
                 'layer { name: "res" type: "Eltwise" bottom: "mul" bottom: "data" '
                 'top: "res" }\n')
    text += 'layer { name: "res/relu" type: "ReLU" bottom: "res" top: "res" }\n'
    if phase_loss:
        text += ('layer { name: "l" type: "Reduction" bottom: "res" top: "l" '
                 'reduction_param { operation: SUMSQ coeff: 0.01 } loss_weight: 1 }\n')
    return text


@pytest.mark.caffe_ref
@pytest.mark.parametrize("gate", ["ip", "conv"])
def test_se_resnext_block_matches_caffe(tmp_path, gate):
    rng = np.random.default_rng(2)
    arrays = {"data": rng.uniform(-1, 1, (2, 64, 6, 6)).astype(np.float32)}
    compare_with_caffe(tmp_path, se_resnext_block(2, 64, 6, gate, True), arrays, "test",
                       grad_inputs=("data",))


def _axpy_numpy(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """axpy_layer.cpp (hujie-frank/SENet): top = y, then caffe_axpy(a[n, c], x[n, c], top)."""
    top = y.astype(np.float64).copy()
    n, c = x.shape[:2]
    scale = a.reshape(n, c)
    for i in range(n):
        for j in range(c):
            top[i, j] += scale[i, j] * x[i, j]
    return top


def test_se_resnext_axpy_is_the_senet_fork_and_opencv_swaps_its_inputs(tmp_path):
    """The SE-ResNeXt mismatch: OpenCV 4.x reads Axpy as ``a * bottom[2] + bottom[1]``.

    hujie-frank's SE-ResNeXt-50 (the public SE-ResNeXt Caffe nets) applies the gate with the
    fork layer Axpy; its C++ computes ``a * bottom[1] + bottom[2]`` (gate times the residual
    branch, plus the shortcut), which we do. OpenCV's importer builds Scale(bottom[2], a) +
    bottom[1] instead, so it gates the shortcut; on the whole net that gives OpenCV's
    relative difference 1.0 on `prob`. With bottoms 1 and 2 swapped in OpenCV's copy of the
    file, OpenCV and we agree.
    """
    text = se_resnext_block(1, 64, 7, "axpy", False)
    proto = tmp_path / "axpy.prototxt"
    proto.write_text(text)
    swapped = tmp_path / "axpy_swapped.prototxt"
    swapped.write_text(text.replace('bottom: "up" bottom: "inc" bottom: "data"',
                                    'bottom: "up" bottom: "data" bottom: "inc"'))
    net = build_net(proto)
    randomize(net, seed=4)
    weights = tmp_path / "w.caffemodel"
    save_weights(net, weights, read_net(proto).net)
    x = np.random.default_rng(8).uniform(-1, 1, (1, 64, 7, 7)).astype(np.float32)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run({"data": x}, blobs=["up", "inc", "res"]).items()}
    # The layer itself against the fork's C++ restated (before the in-place ReLU).
    with torch.no_grad():
        res = net.run_layers({"data": x}, ["res"])["res"].numpy()
    assert rel_err(res, _axpy_numpy(ours["up"], ours["inc"], x)) <= FWD_TOL
    ref = opencv_or_skip(swapped, weights, {"data": x}, ["res/relu"])["res/relu"]
    assert rel_err(ours["res"], ref) <= FWD_TOL
    plain = opencv_or_skip(proto, weights, {"data": x}, ["res/relu"])["res/relu"]
    assert rel_err(ours["res"], plain) > 0.1  # OpenCV's reading really is another function


# ----------------------------------------------------------------------------------------------
# 3. Inputs without dims
# ----------------------------------------------------------------------------------------------

BARE_INPUT = """name: "bare"
input: "data"
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_bare_input_build_names_the_input_and_the_flag(tmp_path, capsys):
    proto = tmp_path / "bare.prototxt"
    proto.write_text(BARE_INPUT)
    with pytest.raises(GraphError, match=r"input 'data' has no dims.*--input-shape data="):
        build_net(proto)
    net = build_net(proto, input_shapes={"data": (2, 3, 9, 11)})
    assert net.blob_shapes["pool"] == (2, 4, 4, 5)
    assert cli_main(["build", str(proto)]) == 2
    assert "input 'data' has no dims" in capsys.readouterr().err


def test_bare_input_forward_takes_the_shape_from_the_npy_and_matches_opencv(tmp_path):
    proto = tmp_path / "bare.prototxt"
    proto.write_text(BARE_INPUT)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 10, 13)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    weights = tmp_path / "w.caffemodel"
    net = build_net(proto, input_shapes={"data": x.shape})
    randomize(net, seed=2)
    save_weights(net, weights, read_net(proto).net)
    out = tmp_path / "out.npz"
    assert cli_main(["forward", str(proto), "--weights", str(weights), "--input",
                     f"data={tmp_path / 'x.npy'}", "--output", str(out)]) == 0
    with np.load(out) as got:
        ours = got["pool"]
    assert ours.shape == (1, 4, 4, 6)  # Caffe rounds pooling up: ceil((11 - 2) / 2) + 1
    ref = opencv_or_skip(proto, weights, {"data": x}, ["pool"])["pool"]
    assert rel_err(ours, ref) <= FWD_TOL


BARE_BESIDE_LAYER = """name: "bare_beside_layer"
input: "data"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "loss" type: "Reduction" bottom: "conv" top: "loss" loss_weight: 1
        reduction_param { operation: SUMSQ } }
"""


@pytest.mark.caffe_ref
def test_bare_input_beside_an_input_layer_is_dropped_as_caffe_does(tmp_path):
    parsed = read_net(_write(tmp_path / "n.prototxt", BARE_BESIDE_LAYER))
    assert not parsed.net.input and [layer.name for layer in parsed.net.layer][0] == "data"
    arrays = {"data": np.random.default_rng(4).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)}
    compare_with_caffe(tmp_path, BARE_BESIDE_LAYER, arrays, "test")


# ----------------------------------------------------------------------------------------------
# 4. Loss layers without a top
# ----------------------------------------------------------------------------------------------

AUTO_TOP_NET = 'name: "auto_top"\nforce_backward: true\n' + _input(
    {"x": (4, 6), "label": (4,), "t": (4, 6), "sim": (4,)}) + """
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 6 } }
layer { name: "cls" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" }
layer { name: "reg" type: "EuclideanLoss" bottom: "ip" bottom: "t" loss_weight: 0.5 }
layer { name: "pair" type: "Slice" bottom: "ip" top: "a" top: "b" slice_param { slice_point: 3 } }
layer { name: "con" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" }
"""


def _auto_top_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)
    x = rng.normal(0, 1, (4, 6)).astype(np.float32)
    return {"x": x, "label": np.array([0, 3, 1, 5], np.float32),
            "t": rng.normal(0, 1, (4, 6)).astype(np.float32),
            "sim": np.array([1, 0, 0, 1], np.float32)}


@pytest.mark.caffe_ref
def test_loss_layers_without_top_get_caffe_automatic_tops(tmp_path):
    errors, meta = compare_with_caffe(tmp_path, AUTO_TOP_NET, _auto_top_arrays(), "train",
                                      grad_inputs=("x",), seed=3)
    # Caffe: three anonymous tops named "(automatic)", loss weights 1, 0.5 and 1; the total
    # loss it returns sums all three, and so does ours (checked in compare_with_caffe).
    auto = [w for n, w in zip(meta["blobs"], meta["loss_weights"]) if n == "(automatic)"]
    assert auto == [1.0, 0.5, 1.0]
    assert errors["loss"] <= FWD_TOL


def test_automatic_tops_are_loss_only():
    net = build_net(parse_net(AUTO_TOP_NET), phase="train")
    tops = {info.node.name: (info.node.tops, info.loss_weights) for info in net.layers.values()}
    assert tops["cls"] == (["cls (automatic)"], [1.0])
    assert tops["reg"] == (["reg (automatic)"], [0.5])
    assert net.caffe_graph.outputs() == []  # as Caffe: no net output, no later bottom
    out = net.run({k: torch.from_numpy(v) for k, v in _auto_top_arrays().items()})
    assert sorted(out) == ["cls (automatic)", "con (automatic)", "reg (automatic)"]
    reader = AUTO_TOP_NET + ('layer { name: "p" type: "Power" bottom: "cls (automatic)" '
                             'top: "p" }\n')
    with pytest.raises(GraphError, match="not produced by any earlier layer"):
        build_net(parse_net(reader), phase="train")
    # Accuracy is no LossLayer: Caffe refuses it without a top, and so do we.
    acc = AUTO_TOP_NET + 'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" }\n'
    with pytest.raises(LayerError, match="needs 1 to 2 tops, got 0"):
        build_net(parse_net(acc), phase="train")


# ----------------------------------------------------------------------------------------------
# 5. ContrastiveLoss
# ----------------------------------------------------------------------------------------------

def _contrastive_net(margin: float, legacy: bool) -> str:
    return ('name: "contrastive"\nforce_backward: true\n'
            + _input({"a": (8, 3), "b": (8, 3), "sim": (8,)})
            + 'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" '
              f'bottom: "sim" top: "loss" contrastive_loss_param {{ margin: {margin} '
              f'legacy_version: {str(legacy).lower()} }} }}\n')


def _pairs() -> dict[str, np.ndarray]:
    """Pairs at chosen distances: similar ones, dissimilar ones well inside the margin, just
    inside it, outside it, and very close (d = 0.01, where Caffe's 1e-4 matters)."""
    rng = np.random.default_rng(13)
    a = rng.normal(0, 1, (8, 3))
    direction = rng.normal(0, 1, (8, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    dist = np.array([0.3, 1.2, 0.01, 0.02, 0.5, 0.95, 1.5, 0.7])
    b = a + direction * dist[:, None]
    # static_cast<int>: 0.5 truncates to 0 (dissimilar), -1 and 2 are "similar".
    sim = np.array([1, 1, 0, 0.5, 0, 0, 0, -1])
    return {"a": a.astype(np.float32), "b": b.astype(np.float32),
            "sim": sim.astype(np.float32)}


@pytest.mark.caffe_ref
@pytest.mark.parametrize("margin, legacy", [(1.0, False), (0.8, False), (1.0, True),
                                            (2.0, True)])
def test_contrastive_loss_matches_caffe_forward_and_backward(tmp_path, margin, legacy):
    arrays = _pairs()
    errors, _ = compare_with_caffe(tmp_path, _contrastive_net(margin, legacy), arrays,
                                   "train", grad_inputs=("a", "b"), grad_tol=1e-5)
    assert errors["d a"] <= 1e-5 and errors["d b"] <= 1e-5


@pytest.mark.caffe_ref
def test_contrastive_gradient_is_caffes_not_the_exact_derivative(tmp_path):
    """Caffe divides by d + 1e-4 for dissimilar pairs: at d = 0.01 that is 1 % off the exact
    derivative of its own forward. The check above would catch an exact gradient."""
    arrays = _pairs()
    meta, out, _, _ = caffe_backward(tmp_path, _contrastive_net(1.0, False), arrays, "train")
    caffe_da = out[f"diff{meta['blobs'].index('a')}"]
    a = torch.tensor(arrays["a"], dtype=torch.float64, requires_grad=True)
    d = torch.linalg.norm(a - torch.tensor(arrays["b"], dtype=torch.float64), dim=1)
    same = torch.tensor(arrays["sim"]).to(torch.int64) != 0
    exact = torch.where(same, d * d, torch.clamp(1.0 - d, min=0) ** 2).sum() / 8 / 2
    exact.backward()
    assert rel_err(a.grad.numpy(), caffe_da) > 1e-3


SIAMESE_TRAIN = """name: "siamese_train_test"
layer { name: "pair_data" type: "Input" top: "pair_data" top: "sim"
        input_param { shape { dim: 6 dim: 2 dim: 12 dim: 12 } shape { dim: 6 } } }
layer { name: "slice_pair" type: "Slice" bottom: "pair_data" top: "data" top: "data_p"
        slice_param { slice_dim: 1 slice_point: 1 } }
""" + "".join(f"""
layer {{ name: "conv1{s}" type: "Convolution" bottom: "data{s}" top: "conv1{s}"
        param {{ name: "conv1_w" lr_mult: 1 }} param {{ name: "conv1_b" lr_mult: 2 }}
        convolution_param {{ num_output: 4 kernel_size: 3 stride: 1 }} }}
layer {{ name: "pool1{s}" type: "Pooling" bottom: "conv1{s}" top: "pool1{s}"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1{s}" type: "InnerProduct" bottom: "pool1{s}" top: "ip1{s}"
        param {{ name: "ip1_w" lr_mult: 1 }} param {{ name: "ip1_b" lr_mult: 2 }}
        inner_product_param {{ num_output: 10 }} }}
layer {{ name: "relu1{s}" type: "ReLU" bottom: "ip1{s}" top: "ip1{s}" }}
layer {{ name: "feat{s}" type: "InnerProduct" bottom: "ip1{s}" top: "feat{s}"
        param {{ name: "feat_w" lr_mult: 1 }} param {{ name: "feat_b" lr_mult: 2 }}
        inner_product_param {{ num_output: 2 }} }}
""" for s in ("", "_p")) + """
layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p" bottom: "sim"
        top: "loss" contrastive_loss_param { margin: 1 } }
"""


@pytest.mark.caffe_ref
def test_siamese_train_net_builds_and_matches_caffe(tmp_path):
    """A net shaped like BVLC's examples/siamese (shared weights by param name, Slice of the
    pair, ContrastiveLoss): TRAIN-phase loss and every (shared) parameter gradient."""
    rng = np.random.default_rng(21)
    arrays = {"pair_data": rng.uniform(0, 1, (6, 2, 12, 12)).astype(np.float32),
              "sim": np.array([1, 0, 0, 1, 0, 1], np.float32)}
    errors, _ = compare_with_caffe(tmp_path, SIAMESE_TRAIN, arrays, "train", seed=6)
    assert errors["d feat[0]"] <= GRAD_TOL and errors["d conv1[0]"] <= GRAD_TOL


def test_contrastive_loss_shape_errors():
    for a, b, s, match in (((4, 3, 2, 1), (4, 3, 2, 1), (4,), "same N and C"),
                           ((4, 3), (4, 2), (4,), "same N and C"),
                           ((4, 3), (4, 3), (4, 2), "one label per pair")):
        text = _input({"a": a, "b": b, "s": s}) + (
            'layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" }\n')
        with pytest.raises(ShapeError, match=match):
            build_net(parse_net(text), phase="train")

