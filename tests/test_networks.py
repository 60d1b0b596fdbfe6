"""The generated networks (prototxt/<net>/): current, buildable, trainable, within budget.

Every net is read from its committed prototxt (not from the generator), built in TRAIN and
TEST phase and as deploy, and run forward and backward on the CPU with batch 2.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net, count_params
from landmarknet.caffe.prototxt import read_net, read_solver
from landmarknet.graph import NetState, layer_included
from landmarknet.netspec import GENERATOR_COMMAND
from landmarknet.nets import NETWORKS, VAL_SIZES, generated_files
from landmarknet.nets.squeezenet import BACKBONE_LAST
from landmarknet.params import copy_selector, load_blobs, net_blobs

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(NETWORKS)
HEATMAP = [n for n in NAMES if NETWORKS[n].family == "heatmap"]
SQUEEZE = [n for n in NAMES if NETWORKS[n].family == "squeeze"]
BUDGET_BYTES = 15e6  # "< 15 MB of float32 weights"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for these small batches: on a busy 2-core runner, OpenMP threads
    spinning against other processes made this module 3-7x slower (not faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tool():
    spec = importlib.util.spec_from_file_location("generate_prototxt",
                                                  ROOT / "tools" / "generate_prototxt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _path(name: str, what: str) -> Path:
    return ROOT / "prototxt" / name / f"{what}.prototxt"


#: Heatmap nets are fully convolutional: the fast tests run them on 48x48 images (12x12 maps),
#: a fifth of the compute at 112; the slow test and the shape tests use the real sizes.
FAST_SIZE = 48


def _input_shapes(parsed, phase: str, batch: int, size: int | None = None,
                  ) -> dict[str, tuple[int, ...]]:
    out = {}
    for layer in parsed.net.layer:
        if layer.type == "Input" and layer_included(layer, NetState(phase)):
            for top, shape in zip(layer.top, layer.input_param.shape):
                dims = [batch, *list(shape.dim)[1:]]
                if size and len(dims) == 4:  # data, heatmaps: scale H, W
                    dims[2:] = [d * size // parsed_size(parsed) for d in dims[2:]]
                out[top] = tuple(dims)
    return out


def parsed_size(parsed) -> int:
    """The side of the 'data' input of a parsed train_val net."""
    for layer in parsed.net.layer:
        if layer.type == "Input" and "data" in layer.top:
            return int(layer.input_param.shape[list(layer.top).index("data")].dim[2])
    raise AssertionError("no data input")


def _build(name: str, phase: str = "train", batch: int = 2, seed: int = 0,
           size: int | None = None):
    parsed = read_net(_path(name, "train_val"))
    return build_net(parsed, phase=phase, input_shapes=_input_shapes(parsed, phase, batch, size),
                     seed=seed)


@functools.lru_cache(maxsize=None)
def _reference(name: str):
    """The TEST-phase net at batch 1 and real size, built once per session (never trained)."""
    return _build(name, "test", batch=1)


def _fast_size(name: str) -> int | None:
    return FAST_SIZE if name in HEATMAP else None


def _inputs(net, seed: int = 0) -> list[torch.Tensor]:
    """Plausible inputs by blob name: images, heatmaps in [0, 1], unit-coordinate targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in net.input_names:
        shape = net.blob_shapes[name]
        if name == "data":
            t = torch.randn(shape, generator=g)
        elif name == "box":
            t = torch.tensor([0.5, 0.5, 0.8, 0.8]) + 0.05 * torch.randn(shape, generator=g)
        elif name == "angle":
            t = 0.2 * torch.randn(shape, generator=g)
        else:  # heatmaps, points
            t = 0.2 + 0.6 * torch.rand(shape, generator=g)
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Generated files are current


def test_generated_prototxt_files_are_current():
    stale = []
    for rel, text in generated_files().items():
        path = ROOT / rel
        if not path.is_file():
            stale.append(f"{rel} (missing)")
        elif path.read_text() != text:
            stale.append(rel)
    assert not stale, (f"generated files are out of date: {', '.join(stale)}; regenerate with "
                       f"`{GENERATOR_COMMAND}`")


def test_check_lists_stale_missing_and_orphaned_files(tmp_path):
    """What `generate_prototxt.py --check` reports, on a scratch copy of two files."""
    tool = _tool()
    files = {"prototxt/a/deploy.prototxt": "x\n", "prototxt/a/solver.prototxt": "y\n"}
    (tmp_path / "prototxt" / "a").mkdir(parents=True)
    (tmp_path / "prototxt" / "a" / "deploy.prototxt").write_text("x\n")
    assert tool.stale(files, tmp_path) == ["prototxt/a/solver.prototxt"]
    (tmp_path / "prototxt" / "a" / "solver.prototxt").write_text("edited by hand\n")
    (tmp_path / "prototxt" / "old").mkdir()
    (tmp_path / "prototxt" / "old" / "deploy.prototxt").write_text("# GENERATED by `x`\n")
    bad = tool.stale(files, tmp_path)
    assert bad[0] == "prototxt/a/solver.prototxt" and bad[1].startswith("prototxt/old/deploy")


def test_every_network_has_its_three_files():
    for name in NAMES:
        for what in ("train_val", "deploy", "solver"):
            assert _path(name, what).is_file(), f"prototxt/{name}/{what}.prototxt is missing"
        head = _path(name, "train_val").read_text()[:600]
        assert "GENERATED by" in head and GENERATOR_COMMAND in head


@pytest.mark.slow
def test_docs_are_current():
    text = _tool().networks_markdown()
    doc = ROOT / "docs" / "networks.md"
    assert doc.is_file() and doc.read_text() == text, \
        f"docs/networks.md is out of date; regenerate with `{GENERATOR_COMMAND}`"


# ---------------------------------------------------------------------------------------------
# Build, forward, backward


@pytest.mark.parametrize("name", NAMES)
def test_train_phase_forward_backward(name):
    _check_train_step(_build(name, "train", size=_fast_size(name)), name)


@pytest.mark.slow
@pytest.mark.parametrize("name", HEATMAP)
def test_train_phase_forward_backward_full_size(name):
    _check_train_step(_build(name, "train"), name)


def _check_train_step(net, name: str) -> None:
    cfg = NETWORKS[name].config
    out = net(*_inputs(net))
    losses = {k: v for k, v in out.items() if k.endswith("loss")}
    if name in HEATMAP:
        assert sorted(losses) == [f"stage{t}_loss" for t in range(1, cfg.stages + 1)]
    else:
        expected = ({"loss"} | ({"global_loss", "local_loss"} if cfg.fusion else set())
                    | ({"box_loss", "angle_loss"} if cfg.align else set()))
        assert set(losses) == expected
        if cfg.attention:
            w = out["loss_region_weights"]
            assert w.shape == (2, len(cfg.regions))
            assert torch.allclose(w.mean(dim=1), torch.ones(2), atol=1e-5)  # mean one
        else:
            assert "loss_region_weights" not in out
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v) and v > 0, k
    total = net.loss(out)
    total.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    if name in HEATMAP:
        first = "conv1" if cfg.trunk == "mobile" else "conv1_1"
    else:
        first = "align_conv1" if cfg.align else "conv1"
    assert torch.count_nonzero(net.get_submodule(first).weight.grad) > 0


@pytest.mark.parametrize("name", NAMES)
def test_test_phase_forward(name):
    net = _build(name, "test", size=_fast_size(name))
    assert not net.training
    from landmarknet.layers.norm import CaffeBatchNorm
    for m in net.modules():
        if isinstance(m, CaffeBatchNorm):
            # TEST uses the stored statistics; fresh blobs are zeros, i.e. variance 0, which
            # scales by 1/sqrt(eps) per layer (as Caffe would) and overflows 20 layers deep:
            # give them what a trained net's look like (mean 0, variance 1).
            m.mean.zero_()
            m.variance.fill_(1.0)
            m.scale_factor.fill_(1.0)
    with torch.no_grad():
        out = net(*_inputs(net, seed=1))
    assert out and all(torch.isfinite(v).all() for v in out.values())
    assert any(k.endswith("loss") for k in out)  # losses run in TEST too


@pytest.mark.parametrize("name", NAMES)
def test_deploy_net(name):
    """Deploy: one Input 'data' 1x3xSxS, no losses; outputs as documented; batch 2 works;
    the train net's weights load into it by name with nothing missing."""
    cfg = NETWORKS[name].config
    parsed = read_net(_path(name, "deploy"))
    types = [lp.type for lp in parsed.net.layer]
    assert not any("Loss" in t for t in types)
    assert not any(lp.type == "Python" and "Loss" in lp.python_param.layer
                   for lp in parsed.net.layer)
    net = build_net(parsed)
    s = cfg.align_input if getattr(cfg, "align", False) else cfg.input_size
    assert net.input_names == ["data"] and net.blob_shapes["data"] == (1, 3, s, s)
    with torch.no_grad():
        out = net(torch.randn(1, 3, s, s))
    if name in HEATMAP:
        h = cfg.input_size // 4
        assert {k: tuple(v.shape) for k, v in out.items()} == \
            {f"stage{cfg.stages}_maps": (1, cfg.points + 1, h, h)}
    else:
        assert {k: tuple(v.shape) for k, v in out.items()} == {"pred_points": (1, 2 * cfg.points)}
    report = load_blobs(net, net_blobs(_reference(name)), strict=True)
    assert report.ok and not report.mismatched
    assert count_params(net) * 4 < BUDGET_BYTES


def test_heatmap_sizes_are_stride_4():
    for name in HEATMAP:
        net = _reference(name)
        cfg = NETWORKS[name].config
        h = cfg.input_size // 4
        for t in range(1, cfg.stages + 1):
            assert net.blob_shapes[f"stage{t}_maps"] == (1, cfg.points + 1, h, h), name
    assert NETWORKS["heatmap4_68"].config.input_size // 4 == 28
    assert NETWORKS["heatmap4_68_160"].config.input_size // 4 == 40


@pytest.mark.parametrize("kernels", ["7x7", "separable"])
def test_stage_convs_sets_the_refinement_stage_depth(kernels):
    from dataclasses import replace
    from landmarknet.nets.heatmap import BASE, heatmap_net
    cfg = replace(BASE, name="probe", stage_kernels=kernels, stage_convs=3)
    names = [layer.name for layer in heatmap_net(cfg, deploy=True).net.layer]
    stage2 = [n for n in names if re.fullmatch(r"stage2_conv\d+", n)]
    # three stage convolutions, then the head's 1x1 layer (the maps layer is stage2_maps)
    assert stage2 == [f"stage2_conv{i}" for i in range(1, 5)], stage2
    with pytest.raises(ValueError):
        replace(BASE, name="probe", stage_convs=0)


# ---------------------------------------------------------------------------------------------
# Parameters: budget, lr_mult / decay_mult, copying 68 -> 77


@pytest.mark.parametrize("name", NAMES)
def test_parameter_budget(name):
    assert count_params(_reference(name)) * 4 < BUDGET_BYTES  # deploy: in test_deploy_net


@pytest.mark.parametrize("name", NAMES)
def test_macs_agree_with_torch_flop_counter(name):
    """landmarknet.analyze's convolution/FC MACs against torch's own FLOP counter (which
    counts 2 per multiply-accumulate), each layer's module run alone on its bottom shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    from landmarknet.analyze import analyze

    net = _reference(name)
    rows = [r for r in analyze(net).rows
            if r.type in ("Convolution", "Deconvolution", "InnerProduct")]
    assert rows
    for r in rows:
        module = net.get_submodule(r.module)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*(torch.zeros(s) for s in r.in_shapes))
        assert r.macs == counter.get_total_flops() // 2, r.name


def test_lr_and_decay_multipliers_reach_param_groups():
    net = _reference("heatmap4_68_hourglass")
    groups = {(g["lr_mult"], g["decay_mult"]): g for g in net.param_groups(0.01, 5e-4)}
    assert set(groups) == {(1, 1), (2, 0), (0, 0)}
    ids = {key: {id(p) for p in g["params"]} for key, g in groups.items()}
    assert id(net.get_submodule("conv1_1").weight) in ids[(1, 1)]
    assert id(net.get_submodule("conv1_1").bias) in ids[(2, 0)]
    assert id(net.get_submodule("stage4_maps").bias) in ids[(2, 0)]
    assert id(net.get_submodule("up5").weight) in ids[(0, 0)]  # fixed bilinear upsampling
    assert groups[(2, 0)]["lr"] == pytest.approx(0.02) and groups[(2, 0)]["weight_decay"] == 0
    assert groups[(1, 1)]["weight_decay"] == pytest.approx(5e-4)
    assert groups[(0, 0)]["lr"] == 0
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == count_params(net)

    sq = _reference("squeeze77")
    groups = {(g["lr_mult"], g["decay_mult"]): {id(p) for p in g["params"]}
              for g in sq.param_groups(0.01)}
    scale = sq.get_submodule("conv1/scale")
    assert id(scale.weight) in groups[(1, 0)] and id(scale.bias) in groups[(1, 0)]
    assert id(sq.get_submodule("conv1").weight) in groups[(1, 1)]
    bn = sq.get_submodule("conv1/bn")
    assert not list(bn.parameters())  # statistics are buffers, never optimised


def test_copy_backbone_from_squeeze68_into_squeeze77():
    src = _build("squeeze68", "train", batch=1, seed=1)
    dst = _build("squeeze77", "train", batch=1, seed=2)
    before = dst.get_submodule("conv10").weight.detach().clone()
    report = load_blobs(dst, net_blobs(src), select=copy_selector(upto=BACKBONE_LAST, net=dst))
    backbone = ["conv1", "conv1/bn", "conv1/scale"] + [
        f"fire{i}/{part}" for i in range(2, 10)
        for part in ("squeeze1x1", "expand1x1", "expand3x3")]
    assert report.copied == backbone
    assert not report.mismatched and not report.missing_in_file
    assert {"conv10", "local/jaw", "fusion_gate", "attention_expand"} <= set(report.skipped)
    for layer in ("conv1", "fire9/expand3x3"):
        assert torch.equal(dst.get_submodule(layer).weight, src.get_submodule(layer).weight)
    assert torch.equal(dst.get_submodule("conv1/bn").mean, src.get_submodule("conv1/bn").mean)
    assert torch.equal(dst.get_submodule("conv10").weight, before)  # heads keep their fillers
    # Copying everything instead stops at the heads whose shapes differ (136 vs 154 outputs).
    full = load_blobs(_build("squeeze77", "train", batch=1, seed=3), net_blobs(src))
    assert any(m.startswith("conv10") for m in full.mismatched)
    assert "local/forehead" in full.missing_in_file


# ---------------------------------------------------------------------------------------------
# Solvers and Caffe compatibility


@pytest.mark.parametrize("name", NAMES)
def test_solver(name):
    sp = read_solver(_path(name, "solver"))
    assert sp.net == f"prototxt/{name}/train_val.prototxt" and (ROOT / sp.net).is_file()
    assert sp.type in ("Adam", "SGD") and sp.base_lr > 0 and sp.max_iter > max(sp.stepvalue)
    cfg = NETWORKS[name].config
    assert sp.test_iter[0] * cfg.test_batch >= VAL_SIZES[NETWORKS[name].dataset]


@pytest.mark.parametrize("name", NAMES)
def test_losses_carry_explicit_loss_weights(name):
    """Caffe gives Python layers no default loss weight: every loss says its own."""
    parsed = read_net(_path(name, "train_val"))
    losses = [lp for lp in parsed.net.layer
              if "Loss" in lp.type or (lp.type == "Python" and "Loss" in lp.python_param.layer)]
    assert losses
    for lp in losses:
        assert len(lp.loss_weight) == len(lp.top) and lp.loss_weight[0] > 0, lp.name
        assert not lp.include and not lp.exclude, f"{lp.name} must run in TRAIN and TEST"


# ---------------------------------------------------------------------------------------------
# Training moves each loss (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["heatmap3_68", "squeeze77_align"])
def test_a_few_steps_lower_every_loss(name):
    torch.manual_seed(0)
    net = _build(name, "train", batch=2)
    inputs = _inputs(net, seed=3)
    opt = torch.optim.Adam(net.param_groups(1e-4 if name in HEATMAP else 1e-3))
    first = None
    for _ in range(15):
        out = net(*inputs)
        losses = {k: float(v.detach()) for k, v in out.items() if k.endswith("loss")}
        first = first or losses
        opt.zero_grad()
        net.loss(out).backward()
        opt.step()
    with torch.no_grad():
        out = net(*inputs)
    last = {k: float(v) for k, v in out.items() if k.endswith("loss")}
    # Box and angle also serve the landmark loss (through the warp), so only the landmark
    # losses must fall one by one; the weighted total must fall too.
    for k in first:
        if k not in ("box_loss", "angle_loss"):
            assert last[k] < first[k], f"{k}: {first[k]:.4g} -> {last[k]:.4g}"
    assert float(net.loss(out)) < sum(_weights(net)[k] * v for k, v in first.items())
    assert np.isfinite(list(last.values())).all()


def _weights(net) -> dict[str, float]:
    """Loss blob -> its loss_weight."""
    out = {}
    for info in net.layers.values():
        for top, w in zip(info.node.param.top, info.loss_weights):
            if w:
                out[top] = w
    return out
