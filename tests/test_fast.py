"""Inference speed modes give eager's numbers; the bench command and scripts run.

Nothing here is timed: the speed modes are checked for their outputs (fp32 modes to 1e-5
relative, the Winograd kernels to 1e-4, bf16 to bf16's precision), BatchNorm folding for what
it folds and what it must leave alone, `landmarknet bench --json` for its keys, and
benchmarks/bench_gpu.py --smoke for running to the end on CPU.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landmarknet.build import build_net
from landmarknet.cli.main import main
from landmarknet.fast import (FastConv, FastError, fold_batchnorm, mode_name,
                              optimize_for_inference, parse_mode, time_calls,
                              winograd_conv3x3, winograd_weights)
from landmarknet.layers.conv import CaffeConvolution
from landmarknet.models import MODELS_DIR
from landmarknet.params import load_weights, randomize

REPO = Path(__file__).resolve().parent.parent
FP32_TOL = 1e-5       # same convolutions, another order of summation
WINOGRAD_TOL = 1e-4   # Winograd F(4x4, 3x3) rounds differently
BF16_TOL = 5e-2       # bfloat16 keeps 8 bits of mantissa

# conv+BN+Scale+ReLU (folded, fused), conv+BN alone, conv+Scale (no bias), a conv whose raw
# output a second layer also reads (must not fold), 3x3/1x1/7x7/strided convolutions, a pool,
# a concat and a fully connected head: every rewrite the speed modes make, on a tiny net.
NET = """name: "fastnet"
input: "data" input_shape { dim: 2 dim: 3 dim: 20 dim: 20 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" }
layer { name: "conv3" type: "Convolution" bottom: "bn2" top: "conv3"
        convolution_param { num_output: 6 kernel_size: 1 bias_term: false } }
layer { name: "scale3" type: "Scale" bottom: "conv3" top: "scale3" }
layer { name: "relu3" type: "ReLU" bottom: "scale3" top: "scale3" }
layer { name: "conv4" type: "Convolution" bottom: "scale3" top: "conv4"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1 } }
layer { name: "bn4" type: "BatchNorm" bottom: "conv4" top: "bn4" }
layer { name: "cat" type: "Concat" bottom: "bn4" bottom: "conv4" top: "cat" }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv5" type: "Convolution" bottom: "pool" top: "conv5"
        convolution_param { num_output: 7 kernel_size: 7 pad: 3 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "conv6" type: "Convolution" bottom: "conv5" top: "conv6"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv6" top: "fc"
        inner_product_param { num_output: 3 } }
"""

CPU_MODES = {  # mode -> tolerance against eager
    "inference": 0.0,
    "inference+channels_last": FP32_TOL,
    "inference+fold": FP32_TOL,
    "inference+channels_last+fold": FP32_TOL,
    "inference+channels_last+fuse": FP32_TOL,
    "inference+channels_last+tune": WINOGRAD_TOL,
    "inference+fold+jit": FP32_TOL,
    "inference+channels_last+fold+jit": FP32_TOL,
    "fast": WINOGRAD_TOL,
    "auto": WINOGRAD_TOL,
    "inference+bf16": BF16_TOL,
    "inference+bf16+channels_last+fold": BF16_TOL,
}


@pytest.fixture(scope="module")
def prototxt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fast") / "fastnet.prototxt"
    path.write_text(NET)
    return path


@pytest.fixture(scope="module")
def net(prototxt):
    n = build_net(prototxt)
    randomize(n, 7)  # BatchNorm statistics with a scale factor other than 1
    return n.eval()


def _rel(ref: dict, got: dict) -> float:
    assert set(ref) == set(got)
    worst = 0.0
    for k in ref:
        assert got[k].shape == ref[k].shape and got[k].dtype == torch.float32, k
        scale = ref[k].abs().max().item()
        worst = max(worst, (got[k] - ref[k]).abs().max().item() / scale)
    return worst


def _eager(net, x):
    with torch.no_grad():
        return net(x)


# ---------------------------------------------------------------------------------------------
# Modes


def test_parse_mode_presets_and_errors():
    assert parse_mode("eager") == frozenset()
    assert parse_mode("tune") == {"tune", "fuse", "fold"}
    assert mode_name(parse_mode("fast", "cpu")) == "inference+channels_last+fold+fuse+tune"
    assert "cuda_graph" in parse_mode("fast", "cuda")
    for bad, msg in [("inference+warp", "unknown mode flag"), ("cuda_graph", "CUDA device"),
                     ("bf16+tune", "float32"), ("jit+compile", "jit"), ("fuse+compile", "fuse")]:
        with pytest.raises(FastError, match=msg):
            parse_mode(bad, "cpu")
    with pytest.raises(FastError, match="CPU kernels"):
        parse_mode("tune", "cuda")


@pytest.mark.parametrize("mode", list(CPU_MODES))
def test_mode_equals_eager(net, mode):
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    ref = _eager(net, x)
    fast = optimize_for_inference(net, mode, x, tune_rounds=1, auto_repeats=1)
    got = fast(x)
    assert _rel(ref, got) <= CPU_MODES[mode], fast.describe()
    # a second, different input through the same prepared net (no stale buffers)
    x2 = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    assert _rel(_eager(net, x2), fast(x2)) <= CPU_MODES[mode]


def test_other_batch_than_the_example_still_runs(net):
    fast = optimize_for_inference(net, "fast", torch.randn(2, 3, 20, 20), tune_rounds=1)
    x = torch.randn(5, 3, 20, 20)
    assert _rel(_eager(net, x), fast(x)) <= WINOGRAD_TOL


def test_the_net_itself_is_left_alone(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mods = dict(net.named_modules())
    optimize_for_inference(net, "inference+channels_last+tune", torch.randn(2, 3, 20, 20),
                           tune_rounds=1)
    assert dict(net.named_modules()).keys() == mods.keys()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert v.is_contiguous(), k


def test_fast_net_checks_its_inputs(net):
    fast = optimize_for_inference(net, "inference", torch.randn(2, 3, 20, 20))
    with pytest.raises(FastError, match="1 input"):
        fast(torch.randn(2, 3, 20, 20), torch.randn(1))


def test_auto_reports_what_it_measured(net):
    fast = optimize_for_inference(net, "auto", torch.randn(2, 3, 20, 20), tune_rounds=1,
                                  auto_repeats=1)
    assert fast.timings and fast.mode in {mode_name(parse_mode(m)) for m in fast.timings}


@pytest.mark.slow
def test_compile_equals_eager(net):
    pytest.importorskip("torch._inductor")
    x = torch.randn(2, 3, 20, 20)
    try:
        fast = optimize_for_inference(net, "inference+fold+compile", x)
    except Exception as exc:  # no C++ compiler here: say so rather than fail
        pytest.skip(f"torch.compile is unavailable here: {type(exc).__name__}: {exc}")
    assert _rel(_eager(net, x), fast(x)) <= FP32_TOL
    both = optimize_for_inference(net, "auto-compile", x, tune_rounds=1, auto_repeats=1)
    assert "inference+channels_last+fold+compile" in both.timings
    assert _rel(_eager(net, x), both(x)) <= WINOGRAD_TOL


# ---------------------------------------------------------------------------------------------
# BatchNorm folding


def test_fold_batchnorm_folds_exactly_what_it_may(net):
    import copy
    gm = copy.deepcopy(net).eval()
    folded = fold_batchnorm(gm)
    # bn1+scale1 into conv1, bn2 into conv2, scale3 into conv3; bn4 stays: conv4's raw output
    # is also concatenated
    assert sorted(folded) == ["bn1", "bn2", "scale1", "scale3"]
    assert "bn4" in dict(gm.named_modules())
    assert gm.conv3.bias is not None  # Scale without bias still gives the conv a (zero) bias
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        assert _rel(net(x), gm(x)) <= FP32_TOL


def test_fold_leaves_batch_statistics_alone(prototxt):
    n = build_net(prototxt)
    randomize(n, 3)
    n.train()  # BatchNorm without use_global_stats uses batch statistics in train mode
    import copy
    gm = copy.deepcopy(n)
    assert fold_batchnorm(gm) == ["scale3"]


def test_fold_keeps_shared_weights_of_other_layers():
    text = """name: "shared"
input: "data" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
        param { name: "w" } param { name: "b" }
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "a" top: "a" }
layer { name: "c" type: "Convolution" bottom: "a" top: "c" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 2 kernel_size: 1 } }
"""
    from landmarknet.caffe.prototxt import parse_net
    n = build_net(parse_net(text))
    randomize(n, 1)
    n.eval()
    x = torch.randn(1, 2, 6, 6)
    fast = optimize_for_inference(n, "inference+fold", x)
    assert fast.folded == ["bn"]
    assert _rel(_eager(n, x), fast(x)) <= FP32_TOL


def test_squeeze77_batchnorm_folds_exactly():
    net = build_net(MODELS_DIR / "squeeze77" / "deploy.prototxt")
    load_weights(net, MODELS_DIR / "squeeze77" / "squeeze77.caffemodel", strict=True)
    net.eval()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    fast = optimize_for_inference(net, "inference+fold", x)
    assert sorted(fast.folded) == ["conv1/bn", "conv1/scale"]
    assert _rel(_eager(net, x), fast(x)) <= FP32_TOL
    fused = optimize_for_inference(net, "inference+channels_last+fuse", x)
    assert _rel(_eager(net, x), fused(x)) <= FP32_TOL


@pytest.mark.slow
def test_heatmap4_68_fast_modes_equal_eager():
    net = build_net(MODELS_DIR / "heatmap4_68" / "deploy.prototxt")
    load_weights(net, MODELS_DIR / "heatmap4_68" / "heatmap4_68.caffemodel", strict=True)
    net.eval()
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    ref = _eager(net, x)
    for mode, tol in [("inference+channels_last+fuse", FP32_TOL), ("fast", WINOGRAD_TOL),
                      ("inference+bf16+channels_last", BF16_TOL)]:
        fast = optimize_for_inference(net, mode, x, tune_rounds=1)
        assert _rel(ref, fast(x)) <= tol, mode


# ---------------------------------------------------------------------------------------------
# Kernels


@pytest.mark.parametrize("shape,pad", [((1, 3, 3, 3), 0), ((2, 5, 9, 13), 1), ((1, 4, 5, 4), 2),
                                       ((3, 16, 28, 28), 1), ((1, 7, 8, 8), 1)])
def test_winograd_matches_direct_convolution(shape, pad):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen)
    w = torch.randn(6, shape[1], 3, 3, generator=gen)
    b = torch.randn(6, generator=gen)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=pad)
    for xin in (x, x.contiguous(memory_format=torch.channels_last)):
        for bias, relu in ((b, False), (None, False), (b, True)):
            got = winograd_conv3x3(xin, winograd_weights(w), bias, (pad, pad), relu)
            want = ref if bias is not None else ref - b.double().view(1, -1, 1, 1)
            want = want.clamp_min(0) if relu else want
            assert got.shape == want.shape
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert (got.double() - want).abs().max() / want.abs().max() <= WINOGRAD_TOL


@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 1), (7, 1, 3), (1, 1, 0), (3, 2, 0)])
def test_every_fastconv_kernel_matches_conv2d(kernel, stride, pad):
    conv = CaffeConvolution.__new__(CaffeConvolution)
    torch.nn.Module.__init__(conv)
    gen = torch.Generator().manual_seed(kernel)
    conv.weight = torch.nn.Parameter(torch.randn(6, 5, kernel, kernel, generator=gen))
    conv.bias = torch.nn.Parameter(torch.randn(6, generator=gen))
    conv.stride, conv.padding, conv.dilation, conv.groups = (stride,) * 2, (pad,) * 2, (1, 1), 1
    x = torch.randn(2, 5, 15, 15, generator=gen)
    ref = F.relu(F.conv2d(x, conv.weight, conv.bias, stride, pad))
    fc = FastConv(conv, relu=True, name="c")
    assert "aten" in fc.kernels() and ("winograd" in fc.kernels()) == (kernel == 3 and stride == 1)
    for k in fc.kernels():
        fc.set_impl(k, tuple(x.shape))
        with torch.inference_mode():
            got = fc(x.contiguous(memory_format=torch.channels_last))
        tol = FP32_TOL if k in ("mkldnn", "aten") else WINOGRAD_TOL
        assert (got - ref).abs().max() / ref.abs().max() <= tol, k
    with pytest.raises(FastError, match="does not apply"):
        fc.set_impl("nonsense")


def test_time_calls_gives_every_function_its_repeats():
    calls = {"a": 0, "b": 0}

    def f(k):
        calls[k] += 1
    out = time_calls({"a": lambda: f("a"), "b": lambda: f("b")}, repeats=5, warmup=1, blocks=2)
    assert [len(v) for v in out.values()] == [5, 5]
    assert all(t >= 0 for v in out.values() for t in v)
    assert calls["a"] == calls["b"] >= 6


# ---------------------------------------------------------------------------------------------
# The bench command and scripts


def test_bench_cli_json(prototxt, capsys):
    rc = main(["bench", str(prototxt), "--json", "--repeats", "2", "--warmup", "0",
               "--batch", "1,2", "--threads", "1", "--mode", "inference+channels_last+fuse"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [
        (b, n) for n in (1, 2)
        for b in ("landmarknet eager", "landmarknet fast", "onnxruntime", "opencv dnn")]
    for r in rows:
        assert {"backend", "device", "batch", "dtype", "median_ms", "images_per_s"} <= set(r)
        assert r["device"] == "cpu" and r["dtype"] == "fp32"
        if r.get("skipped"):
            assert r["median_ms"] is None and r["images_per_s"] is None
            continue
        assert r["median_ms"] > 0 and r["images_per_s"] > 0
        assert r["max_rel_diff"] <= WINOGRAD_TOL, r  # every backend computes the same net
    assert doc["macs_per_image"] > 0 and doc["environment"]["threads"] == 1


def test_bench_cli_table(prototxt, capsys):
    assert main(["bench", str(prototxt), "--repeats", "1", "--warmup", "0", "--batch", "1",
                 "--backends", "eager,fast", "--mode", "inference"]) == 0
    out = capsys.readouterr().out
    assert "landmarknet eager" in out and "landmarknet fast" in out and "median ms" in out


@pytest.mark.parametrize("argv,msg", [
    (["--batch", "0"], "positive"),
    (["--batch", "a,b"], "sizes like"),
    (["--backends", "eager,tensorrt"], "unknown backend"),
    (["--mode", "warp"], "unknown mode flag"),
    (["--threads", "0"], "at least 1"),
])
def test_bench_cli_bad_arguments(prototxt, capsys, argv, msg):
    assert main(["bench", str(prototxt)] + argv) == 2
    assert msg in capsys.readouterr().err


def test_bench_cli_cuda_without_cuda(prototxt, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", str(prototxt), "--device", "cuda", "--repeats", "1"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bench_cli_bad_model(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing.prototxt")]) == 2
    assert "no such model" in capsys.readouterr().err
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert main(["bench", str(tmp_path / "weights.bin")]) == 2
    assert ".prototxt" in capsys.readouterr().err
    assert main(["bench", str(tmp_path)]) == 2
    assert "deploy.prototxt" in capsys.readouterr().err


def test_bench_unavailable_backend_is_a_skipped_row(prototxt, monkeypatch):
    from landmarknet import bench
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    rows = bench.run_bench(prototxt, batches=[1], repeats=1, warmup=0, threads=1,
                           backends=("eager", "onnxruntime"))
    assert rows[1].skipped and "onnxruntime" in rows[1].skipped and rows[1].median_ms is None


def test_opencv_runs_squeeze77_python_layers_as_custom_layers():
    from landmarknet import bench
    rows = bench.run_bench(MODELS_DIR / "squeeze77", batches=[1], repeats=1, warmup=0,
                           threads=1, backends=("eager", "opencv"))
    cv = rows[1]
    assert cv.skipped is None, cv.skipped
    assert "Python layer" in cv.note
    assert cv.max_rel_diff <= 1e-4


def _run_gpu_smoke(tmp_path, extra):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke",
                           "--device", "cpu", "--out", str(out)] + extra,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["matmul_bf16"]["tflops"] > 0
    return doc, proc.stdout


def test_bench_gpu_smoke_runs_on_cpu(tmp_path):
    doc, text = _run_gpu_smoke(tmp_path, ["--nets", "squeeze77", "--batches", "1"])
    measured = [r for r in doc["rows"] if "median_ms" in r]
    assert {r["config"] for r in measured} >= {"fp32 eager", "fp32 channels_last",
                                               "bf16 channels_last"}
    for r in measured:
        assert r["images_per_s"] > 0 and r["mfu_vs_peak"] >= 0
    # CUDA-only configurations are error rows, not a crash
    assert any("CUDA" in r.get("error", "") for r in doc["rows"])
    assert "best per net" in text


@pytest.mark.slow
def test_bench_gpu_smoke_all_nets_on_cpu(tmp_path):
    doc, _ = _run_gpu_smoke(tmp_path, [])
    assert {r["net"] for r in doc["rows"]} == {"heatmap4_68", "heatmap3_68", "squeeze77"}
    assert doc["goal"]["net"] == "heatmap4_68"


@pytest.mark.slow
def test_bench_cpu_script_runs(tmp_path):
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cpu.py"),
                           "--nets", "squeeze77", "--batches", "1", "--repeats", "1",
                           "--warmup", "0", "--ablation", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| squeeze77 |" in proc.stdout
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 4 and doc["ablation"]
    assert all(np.isfinite(r["median_ms"]) for r in doc["ablation"] if "median_ms" in r)
