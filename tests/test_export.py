"""ONNX export: ONNX Runtime must match our forward within 1e-4 relative on real nets (with their
trained weights where the zoo has them), with the opset, names and batch handling we promise."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.cli import main as cli_main
from landmarknet.export import (CAFFE2ONNX_INSTALL, DEFAULT_OPSET, ExportError,
                                caffe2onnx_crosscheck, compare, export_onnx, ort_outputs,
                                random_inputs, run_caffe2onnx)
from landmarknet.params import load_weights, randomize

TOL = 1e-4
REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "prototxt").glob("*/deploy.prototxt"))

# AVE pooling whose last window is clipped (ceil rounding), with and without padding.
CEIL_AVE = """name: "ceil_ave"
input: "data" input_shape { dim: 1 dim: 2 dim: 7 dim: 7 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "pool_pad" type: "Pooling" bottom: "conv" top: "pool_pad"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_far" type: "Pooling" bottom: "conv" top: "pool_far"
        pooling_param { pool: AVE kernel_size: 2 stride: 3 } }
"""


def _export_and_check(net, tmp_path, **kw):
    rep = export_onnx(net, tmp_path / "model.onnx", **kw)
    print(f"\n[{net.caffe_graph.name}]\n" + rep.render())
    assert rep.checks, "nothing was compared"
    assert rep.ok, rep.render()
    assert rep.max_rel <= TOL
    return rep


@pytest.mark.parametrize("name", ["mtcnn_det1/det1", "mtcnn_det2/det2", "mtcnn_det3/det3"])
def test_mtcnn_with_trained_weights(zoo, tmp_path, name):
    net = build_net(zoo / f"{name}.prototxt")
    report = load_weights(net, zoo / f"{name}.caffemodel", strict=True)
    assert report.ok
    rep = _export_and_check(net, tmp_path)
    model = onnx.load(str(rep.path))
    assert model.opset_import[0].version == DEFAULT_OPSET >= 19
    assert [i.name for i in model.graph.input] == net.input_names
    assert [o.name for o in model.graph.output] == [c.name for c in rep.checks]
    # trained weights give non-trivial outputs (the comparison is not of zeros)
    assert all(c.max_abs_ref > 1e-3 for c in rep.checks)


def test_dynamic_batch_is_checked_at_two_batch_sizes(zoo, tmp_path):
    net = build_net(zoo / "mtcnn_det2/det2.prototxt")
    load_weights(net, zoo / "mtcnn_det2/det2.caffemodel", strict=True)
    rep = _export_and_check(net, tmp_path, dynamic_batch=True)
    assert rep.extra_batch == 2 and rep.extra_checks
    feeds = random_inputs(net, seed=5, batch=4)
    out = ort_outputs(rep.path, feeds)
    assert all(v.shape[0] == 4 for v in out.values())


def test_ceil_mode_average_pooling_at_the_default_opset(tmp_path):
    net = build_net(parse_net(CEIL_AVE, path="ceil_ave.prototxt"))
    randomize(net, 0)
    assert [tuple(net.blob_shapes[b]) for b in ("pool", "pool_pad", "pool_far")] == \
        [(1, 3, 3, 3), (1, 3, 4, 4), (1, 3, 3, 3)]
    rep = _export_and_check(net, tmp_path)
    assert not rep.notes
    # an older opset is allowed but the report warns about the AVE layers
    old = export_onnx(net, tmp_path / "old.onnx", opset=17)
    assert any("pool_pad" in n for n in old.notes)


def test_a_wrong_model_fails_the_check(zoo, tmp_path):
    """The check compares real numbers: perturb the ONNX weights and it must fail."""
    net = build_net(zoo / "mtcnn_det1/det1.prototxt")
    load_weights(net, zoo / "mtcnn_det1/det1.caffemodel", strict=True)
    rep = export_onnx(net, tmp_path / "m.onnx")
    model = onnx.load(str(rep.path))
    init = next(t for t in model.graph.initializer if len(t.dims) == 4)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr *= 1.01
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    feeds = random_inputs(net)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.run(feeds).items()}
    checks = compare(ours, ort_outputs(tmp_path / "bad.onnx", feeds))
    assert max(c.rel for c in checks) > TOL


def test_squeezenet(zoo, tmp_path):
    net = build_net(_logits(zoo / "squeezenet_v1.1/deploy.prototxt"),
                    input_shapes={"data": (1, 3, 227, 227)})
    assert net.layers and list(net.layers.values())[-1].node.type != "Softmax"
    randomize(net, 0)
    _export_and_check(net, tmp_path)


def _logits(path: Path):
    """The net without its final Softmax layers, so that a saturated softmax of random weights
    cannot hide a difference in the logits (the outputs are then the logits)."""
    from landmarknet.caffe.prototxt import read_net
    parsed = read_net(path)
    while parsed.net.layer and parsed.net.layer[-1].type == "Softmax":
        del parsed.net.layer[-1]
        parsed.layer_lines.pop()
    return parsed


@pytest.mark.slow
@pytest.mark.parametrize("path", ["bvlc_googlenet/deploy.prototxt",
                                  "resnet_50/ResNet-50-deploy.prototxt",
                                  "mobilenet_v1/mobilenet_deploy.prototxt",
                                  "squeezenet_v1.0/deploy.prototxt",
                                  "ultraface_slim320/slim-320.prototxt",
                                  "hed/deploy.prototxt"])
def test_zoo_nets(zoo, tmp_path, path):
    net = build_net(_logits(zoo / path))
    name = net.input_names[0]
    shape = net.caffe_graph.inputs[0].shape
    if shape[0] != 1 or "hed" in path:  # batch 1 (and a smaller HED) keep the test quick
        size = (1, *shape[1:]) if "hed" not in path else (1, 3, 128, 128)
        net = build_net(_logits(zoo / path), input_shapes={name: size})
    weights = zoo / path.replace(".prototxt", ".caffemodel")
    if weights.exists():
        load_weights(net, weights, strict=True)
    else:
        randomize(net, 0)
    _export_and_check(net, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_nets(tmp_path, path):
    net = build_net(path)
    randomize(net, 0)
    _export_and_check(net, tmp_path)


def test_shipped_net_when_present(tmp_path):
    path = REPO / "prototxt/heatmap4_68/deploy.prototxt"
    if not path.exists():
        pytest.skip(f"{path} is not generated yet (tools/generate_prototxt.py)")
    net = build_net(path)
    randomize(net, 0)
    _export_and_check(net, tmp_path)


def _cli(args, monkeypatch):
    monkeypatch.setitem(cli_main.SUBCOMMANDS, "export", "landmarknet.cli.export")
    return cli_main.main(["export", *args])


def test_cli_reports_the_differences(zoo, tmp_path, monkeypatch, capsys):
    out = tmp_path / "det3.onnx"
    code = _cli([str(zoo / "mtcnn_det3/det3.prototxt"), "--weights",
                 str(zoo / "mtcnn_det3/det3.caffemodel"), "-o", str(out)], monkeypatch)
    text = capsys.readouterr().out
    assert code == 0, text
    assert out.exists() and "PASS" in text
    for blob in ("conv6-2", "conv6-3", "prob1"):
        assert f"  {blob}  " in text and "max abs diff" in text
    # an impossible tolerance makes the same export fail with exit status 1
    code = _cli([str(zoo / "mtcnn_det3/det3.prototxt"), "--weights",
                 str(zoo / "mtcnn_det3/det3.caffemodel"), "-o", str(out), "--tol", "0"],
                monkeypatch)
    text = capsys.readouterr().out
    assert code == 1 and "FAIL" in text


def test_cli_needs_weights_or_a_seed(zoo, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _cli([str(zoo / "mtcnn_det1/det1.prototxt"), "-o", str(tmp_path / "x.onnx")],
             monkeypatch)
    assert "--weights" in capsys.readouterr().err


def test_caffe2onnx_missing_says_how_to_install(tmp_path, monkeypatch):
    import landmarknet.export as ex
    monkeypatch.setattr(ex.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ExportError) as err:
        run_caffe2onnx("a.prototxt", "a.caffemodel", tmp_path / "x.onnx")
    assert CAFFE2ONNX_INSTALL in str(err.value)


def test_cli_via_caffe2onnx_fails_early_when_missing(zoo, tmp_path, monkeypatch, capsys):
    import landmarknet.export as ex
    monkeypatch.setattr(ex.importlib.util, "find_spec", lambda name: None)
    out = tmp_path / "det1.onnx"
    code = _cli([str(zoo / "mtcnn_det1/det1.prototxt"), "--weights",
                 str(zoo / "mtcnn_det1/det1.caffemodel"), "-o", str(out), "--via",
                 "caffe2onnx"], monkeypatch)
    assert code == 2 and not out.exists()
    assert CAFFE2ONNX_INSTALL in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("caffe2onnx") is None,
                    reason=f"caffe2onnx is not installed ({CAFFE2ONNX_INSTALL})")
def test_caffe2onnx_cross_check(zoo, tmp_path):
    proto = zoo / "caffe_onnx_test_tiny/test.prototxt"
    weights = zoo / "caffe_onnx_test_tiny/test.caffemodel"
    net = build_net(proto)
    load_weights(net, weights, strict=True)
    rep = _export_and_check(net, tmp_path)
    cross = caffe2onnx_crosscheck(net, proto, weights, rep.path)
    print(cross.render())
    assert cross.ok and cross.vs_ours and cross.vs_torch
    assert np.isfinite([c.max_abs_diff for c in cross.vs_ours]).all()


# A classifier whose random logits are so large that its softmax is one-hot whatever the weights:
# a check on `prob` alone passes even when the logits are wrong.
SATURATED = """name: "saturated"
input: "data" input_shape { dim: 2 dim: 8 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "scale" type: "Power" bottom: "fc" top: "fc" power_param { scale: 1000 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_check_compares_the_blob_before_a_saturating_output(tmp_path):
    net = build_net(parse_net(SATURATED))
    randomize(net, 0)
    rep = _export_and_check(net, tmp_path)
    assert [c.name for c in rep.checks] == ["prob"]
    # the in-place `fc` written by `scale` feeds the Softmax: it is checked, under its SSA name
    probes = [c.name for c in rep.probe_checks]
    assert len(probes) == 1 and net.caffe_graph.blob_of[probes[0]] == "fc", probes
    assert "input of Softmax layer 'prob'" in rep.render()
    # the probe is an output only while checking: the file keeps the net's outputs
    model = onnx.load(str(rep.path))
    assert [o.name for o in model.graph.output] == ["prob"]


def test_saturated_softmax_hides_wrong_logits_but_the_probe_does_not(tmp_path, monkeypatch):
    """With a 1 % error in the exported weights the saturated `prob` still agrees to 1e-4;
    the compared pre-softmax blob does not, so the export check fails as it must."""
    import landmarknet.export as ex
    net = build_net(parse_net(SATURATED))
    randomize(net, 0)
    real = ex.ort_outputs

    def perturbed(path, feeds):
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.ndim == 2:
                init.CopyFrom(onnx.numpy_helper.from_array(arr * 1.01, init.name))
        onnx.save(model, str(tmp_path / "bad.onnx"))
        return real(tmp_path / "bad.onnx", feeds)

    monkeypatch.setattr(ex, "ort_outputs", perturbed)
    rep = export_onnx(net, tmp_path / "m.onnx")
    assert [c.name for c in rep.checks] == ["prob"]
    assert rep.checks[0].rel <= TOL  # saturated: blind to the error
    assert rep.probe_checks[0].rel > TOL
    assert not rep.ok and rep.max_rel > TOL


def test_no_probe_for_nets_without_saturating_outputs(tmp_path):
    net = build_net(parse_net(CEIL_AVE))
    randomize(net, 0)
    rep = _export_and_check(net, tmp_path)
    assert rep.probes == {}


# BatchNorm with use_global_stats: false normalises with the batch's own statistics at TEST too
# (OpenCV's layer_batch_norm_local_stats net)
LOCAL_STATS_BN = """name: "bn_local_stats"
input: "data" input_shape { dim: 2 dim: 3 dim: 5 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn"
        batch_norm_param { use_global_stats: false } }
"""


def test_batch_norm_with_batch_statistics_exports_the_batch_statistics(tmp_path):
    net = build_net(parse_net(LOCAL_STATS_BN, path="bn.prototxt"))
    randomize(net, 0)  # running statistics far from the batch's: using them would show
    rep = _export_and_check(net, tmp_path, dynamic_batch=True)
    assert rep.extra_checks
    feeds = random_inputs(net, seed=4)
    out = ort_outputs(rep.path, feeds)["bn"]
    # each channel normalised over (N, H, W): mean 0, biased variance 1 (eps 1e-5)
    assert np.allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(out.var(axis=(0, 2, 3)), 1, atol=1e-3)


# Two large inner products that nearly cancel: float32 itself is wrong in the third digit here
CANCELLING = """name: "cancelling"
input: "data" input_shape { dim: 2 dim: 64 }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
        inner_product_param { num_output: 4 bias_term: false } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b"
        inner_product_param { num_output: 4 bias_term: false } }
layer { name: "diff" type: "Eltwise" bottom: "a" bottom: "b" top: "diff"
        eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
"""


def test_a_difference_within_float32s_own_error_passes_and_a_larger_one_fails():
    from landmarknet.export import DEFAULT_TOL, judge_by_float64, our_outputs
    net = build_net(parse_net(CANCELLING, path="c.prototxt"))
    rng = np.random.default_rng(0)
    w = rng.uniform(500, 1000, (4, 64)).astype(np.float32)
    with torch.no_grad():
        dict(net.named_parameters())["a.weight"].copy_(torch.from_numpy(w))
        dict(net.named_parameters())["b.weight"].copy_(torch.from_numpy(w + np.float32(1e-2)))
    feeds = {"data": rng.uniform(0.5, 1.5, (2, 64)).astype(np.float32)}
    ours = our_outputs(net, feeds, ["diff"])["diff"]
    exact = (feeds["data"].astype(np.float64) @ (w.astype(np.float64) - (w + np.float32(1e-2))
                                                  .astype(np.float64)).T)
    spread = float(np.abs(ours - exact).max())
    assert spread / np.abs(exact).max() > 1e-4  # float32 really is off by more than the tolerance
    for shift, passes in ((spread, True), (50 * spread, False)):
        got = {"diff": exact + shift}  # a candidate that far from the float64 answer
        checks = compare({"diff": ours}, got, ["diff"])
        assert checks[0].rel > DEFAULT_TOL
        judge_by_float64(net, feeds, [], {"diff": ours}, got, checks, DEFAULT_TOL)
        assert checks[0].ours_vs_f64 == pytest.approx(spread, rel=1e-6)
        assert checks[0].passes(DEFAULT_TOL) is passes
        assert ("float32 conditioning" in checks[0].line(DEFAULT_TOL)) is passes
    # the float64 run leaves the net as it was
    assert all(p.dtype == torch.float32 for p in net.parameters())
    np.testing.assert_array_equal(our_outputs(net, feeds, ["diff"])["diff"], ours)
