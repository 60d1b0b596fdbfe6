"""CaffeSolver against an independent float64 numpy re-implementation of BVLC Caffe's solvers.

The reference (``CaffeRef``) is written from Caffe's C++ (sgd_solver.cpp ApplyUpdate /
ClipGradients / Normalize / Regularize / GetLearningRate, and each solver's ComputeUpdateValue),
keeps multistep's ``current_step_`` as a counter like Caffe does, and takes its multipliers and
hyper-parameters from literals in this file, not from the code under test. Both sides are fed the
same gradients (computed by torch on the solver's weights, copied to numpy).
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net, parse_solver
from landmarknet.errors import SolverError
from landmarknet.solver import CaffeSolver, SolverWarning, settings_summary, training_plan

# Warnings these tests provoke on purpose (each is asserted in its own test below).
pytestmark = pytest.mark.filterwarnings("ignore:solver field 'stepvalue'",
                                        "ignore:Adam without 'momentum'")

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 6 dim: 4 } shape { dim: 6 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: -0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

# (module, blob index) -> (lr_mult, decay_mult), as written in NET above.
MULTS = {("ip1", 0): (1.0, 1.0), ("ip1", 1): (2.0, 0.0),
         ("ip2", 0): (1.0, 1.0), ("ip2", 1): (2.0, 0.0)}

# Hyper-parameters per solver type (written twice on purpose: prototxt text and python dict).
TYPES = {
    "SGD": dict(base_lr=0.05, momentum=0.9),
    "Nesterov": dict(base_lr=0.05, momentum=0.9),
    "AdaGrad": dict(base_lr=0.05, delta=1e-6),
    "RMSProp": dict(base_lr=0.01, rms_decay=0.95, delta=1e-6),
    "AdaDelta": dict(base_lr=1.0, momentum=0.95, delta=1e-6),
    "Adam": dict(base_lr=0.01, momentum=0.9, momentum2=0.999, delta=1e-8),
}
POLICIES = {
    "step": dict(lr_policy="step", gamma=0.5, stepsize=8),
    "multistep": dict(lr_policy="multistep", gamma=0.3, stepvalue=[5, 12, 12, 20]),
}


def solver_text(fields: dict) -> str:
    lines = []
    for k, v in fields.items():
        for item in (v if isinstance(v, list) else [v]):
            lines.append(f'{k}: "{item}"' if isinstance(item, str) else f"{k}: {item!r}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The independent reference


class CaffeRef:
    """Caffe's SGDSolver family in float64 numpy, one ApplyUpdate per ``step``."""

    def __init__(self, cfg: dict, weights: dict, mults: dict):
        self.cfg = {"momentum": 0.0, "momentum2": 0.999, "rms_decay": 0.99, "delta": 1e-8,
                    "weight_decay": 0.0, "regularization_type": "L2", "clip_gradients": -1.0,
                    "iter_size": 1, **cfg}
        self.w = {k: np.array(v, dtype=np.float64) for k, v in weights.items()}
        self.mults = mults
        self.hist = {k: np.zeros_like(v) for k, v in self.w.items()}
        self.hist2 = {k: np.zeros_like(v) for k, v in self.w.items()}
        self.iter = 0
        self.current_step = 0
        self.clipped = 0

    def rate(self) -> float:  # GetLearningRate, with multistep's stateful counter
        c = self.cfg
        pol, base, it = c["lr_policy"], c["base_lr"], self.iter
        if pol == "fixed":
            return base
        if pol == "step":
            self.current_step = it // c["stepsize"]
            return base * c["gamma"] ** self.current_step
        if pol == "multistep":
            sv = c["stepvalue"]
            if self.current_step < len(sv) and it >= sv[self.current_step]:
                self.current_step += 1
            return base * c["gamma"] ** self.current_step
        raise AssertionError(pol)

    def step(self, grads: dict) -> None:
        c = self.cfg
        rate = self.rate()
        diff = {k: np.array(g, dtype=np.float64) for k, g in grads.items()}
        if c["clip_gradients"] >= 0:  # ClipGradients: before the per-param loop
            l2 = math.sqrt(sum(float((d * d).sum()) for d in diff.values()))
            if l2 > c["clip_gradients"]:
                self.clipped += 1
                for k in diff:
                    diff[k] *= c["clip_gradients"] / l2
        for k in self.w:
            lr_mult, decay_mult = self.mults[k]
            d, w = diff[k], self.w[k]
            if c["iter_size"] != 1:  # Normalize
                d *= 1.0 / c["iter_size"]
            local_decay = c["weight_decay"] * decay_mult  # Regularize
            if local_decay:
                d += local_decay * (w if c["regularization_type"] == "L2" else np.sign(w))
            lr = rate * lr_mult
            h, h2, m = self.hist[k], self.hist2[k], c["momentum"]
            t = c["type"]
            if t == "SGD":
                h[...] = lr * d + m * h
                upd = h.copy()
            elif t == "Nesterov":
                old = h.copy()
                h[...] = lr * d + m * h
                upd = (1 + m) * h - m * old
            elif t == "AdaGrad":
                h += d ** 2
                upd = lr * d / (np.sqrt(h) + c["delta"])
            elif t == "RMSProp":
                r = c["rms_decay"]
                h[...] = (1 - r) * d ** 2 + r * h
                upd = lr * d / (np.sqrt(h) + c["delta"])
            elif t == "AdaDelta":
                h[...] = (1 - m) * d ** 2 + m * h
                d = d * np.sqrt((h2 + c["delta"]) / (h + c["delta"]))
                h2[...] = (1 - m) * d ** 2 + m * h2
                upd = lr * d
            elif t == "Adam":
                b1, b2, tt = m, c["momentum2"], self.iter + 1
                corr = math.sqrt(1 - b2 ** tt) / (1 - b1 ** tt)
                h[...] = (1 - b1) * d + b1 * h
                h2[...] = (1 - b2) * d ** 2 + b2 * h2
                upd = lr * corr * h / (np.sqrt(h2) + c["delta"])
            else:
                raise AssertionError(t)
            w -= upd
        self.iter += 1


# ---------------------------------------------------------------------------------------------
# Helpers


def make_net(seed: int = 0):
    torch.manual_seed(seed)
    return build_net(parse_net(NET), phase="train")


def batch(step: int, k: int):
    rng = np.random.default_rng(1000 * step + k)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = (rng.normal(size=(6, 3)) * (1 + 3 * (step % 3 == 0))).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def backward(net, solver, step: int, iter_size: int) -> None:
    solver.zero_grad()
    for k in range(iter_size):
        x, y = batch(step, k)
        net.loss(net(x, y)).backward()


def weights(net) -> dict:
    return {k: net.blob_tensor(*k).detach().double().numpy().copy() for k in MULTS}


def grads(net) -> dict:
    return {k: net.blob_tensor(*k).grad.detach().double().numpy().copy() for k in MULTS}


def assert_close(net, ref: CaffeRef, step: int, rtol: float = 1e-5) -> None:
    for k, w in weights(net).items():
        err = np.linalg.norm(w - ref.w[k]) / np.linalg.norm(ref.w[k])
        assert err <= rtol, f"step {step}, blob {k}: relative error {err:.2e}"


# ---------------------------------------------------------------------------------------------
# Every type x changing lr policy, with weight decay, iter_size 2 and active clipping


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("stype", list(TYPES))
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per-blob"])
def test_matches_numpy_caffe(stype, policy, foreach):
    if not foreach and stype not in ("SGD", "Adam"):
        pytest.skip("only SGD and Adam have two code paths")
    fields = {"type": stype, **TYPES[stype], **POLICIES[policy], "weight_decay": 0.01,
              "iter_size": 2, "clip_gradients": 6.0, "max_iter": 30}
    net = make_net()
    solver = CaffeSolver(parse_solver(solver_text(fields)), net)
    solver.foreach = foreach
    ref = CaffeRef(fields, weights(net), MULTS)
    rates = set()
    for step in range(30):
        backward(net, solver, step, 2)
        g = grads(net)
        rates.add(round(solver.apply_update(), 12))
        ref.step(g)
        assert_close(net, ref, step)
    assert solver.iter == 30
    assert len(rates) >= 3, "the learning rate must change during the run"
    assert 0 < ref.clipped < 30, f"clipping active on {ref.clipped}/30 steps: adjust the clip"


def test_l1_regularization_matches_reference():
    fields = {"type": "SGD", "base_lr": 0.05, "momentum": 0.8, "lr_policy": "step",
              "gamma": 0.5, "stepsize": 7, "weight_decay": 0.05, "regularization_type": "L1"}
    net = make_net(3)
    solver = CaffeSolver(parse_solver(solver_text(fields)), net)
    ref = CaffeRef(fields, weights(net), MULTS)
    for step in range(20):
        backward(net, solver, step, 1)
        g = grads(net)
        solver.apply_update()
        ref.step(g)
        assert_close(net, ref, step)


def test_l1_and_l2_decay_by_hand_without_gradients():
    # No backward at all: Caffe's diff is 0, weight decay alone moves blobs with decay_mult 1.
    for reg, expect in (("L1", lambda w: w - 0.5 * 0.1 * np.sign(w)),
                        ("L2", lambda w: w - 0.5 * 0.1 * w)):
        net = make_net(1)
        before = weights(net)
        solver = CaffeSolver(parse_solver(f'type: "SGD" base_lr: 0.5 lr_policy: "fixed" '
                                          f'weight_decay: 0.1 regularization_type: "{reg}"'), net)
        solver.zero_grad()
        solver.apply_update()
        after = weights(net)
        np.testing.assert_allclose(after[("ip1", 0)], expect(before[("ip1", 0)]), rtol=1e-6)
        np.testing.assert_array_equal(after[("ip1", 1)], before[("ip1", 1)])  # decay_mult 0
        assert not np.array_equal(after[("ip1", 0)], before[("ip1", 0)])


def test_torch_sgd_differs_when_lr_changes_but_ours_matches():
    fields = {"type": "SGD", "base_lr": 0.05, "momentum": 0.9, "lr_policy": "step",
              "gamma": 0.1, "stepsize": 5, "weight_decay": 0.01}
    ours, theirs = make_net(2), make_net(2)
    solver = CaffeSolver(parse_solver(solver_text(fields)), ours)
    ref = CaffeRef(fields, weights(ours), MULTS)
    groups = theirs.param_groups(base_lr=0.05, weight_decay=0.01)
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    torch_err = []
    for step in range(15):
        backward(ours, solver, step, 1)
        g = grads(ours)
        solver.apply_update()
        ref.step(g)
        assert_close(ours, ref, step)
        # torch.optim.SGD fed the very same gradients, lr set from the same policy
        rate = 0.05 * 0.1 ** (step // 5)
        for group in opt.param_groups:
            group["lr"] = rate * group["lr_mult"]
        for k in MULTS:
            theirs.blob_tensor(*k).grad = torch.from_numpy(g[k]).float()
        opt.step()
        w = theirs.blob_tensor("ip2", 0).detach().double().numpy()
        torch_err.append(np.linalg.norm(w - ref.w[("ip2", 0)]) / np.linalg.norm(ref.w[("ip2", 0)]))
    assert max(torch_err[:5]) < 1e-5  # same update while the rate is constant
    assert max(torch_err[5:]) > 1e-2  # then torch's momentum carries the old rate's steps


# ---------------------------------------------------------------------------------------------
# Learning rate policies: literal values


def _lr(text: str, it: int) -> float:
    net = make_net()
    return CaffeSolver(parse_solver('type: "SGD" base_lr: 0.1 ' + text), net).lr_at(it)


@pytest.mark.parametrize("text,values", [
    ('lr_policy: "fixed"', {0: 0.1, 7: 0.1, 100000: 0.1}),
    ('lr_policy: "step" gamma: 0.5 stepsize: 10', {0: 0.1, 9: 0.1, 10: 0.05, 25: 0.025}),
    ('lr_policy: "exp" gamma: 0.9', {0: 0.1, 1: 0.09, 2: 0.081, 10: 0.03486784401}),
    ('lr_policy: "inv" gamma: 0.0001 power: 0.75',
     {0: 0.1, 10000: 0.05946035575, 30000: 0.03535533906}),
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: 5 stepvalue: 8',
     {0: 0.1, 4: 0.1, 5: 0.01, 7: 0.01, 8: 0.001, 100: 0.001}),
    # Caffe takes at most one step per iteration: a repeated stepvalue lands one later.
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: 5 stepvalue: 5',
     {4: 0.1, 5: 0.01, 6: 0.001}),
    ('lr_policy: "poly" power: 2 max_iter: 100', {0: 0.1, 50: 0.025, 90: 0.001, 100: 0.0}),
    ('lr_policy: "sigmoid" gamma: 0.1 stepsize: 50',
     {0: 0.000669285092, 50: 0.05, 100: 0.0993307149}),
])
def test_lr_policies_literal(text, values):
    for it, expected in values.items():
        assert _lr(text, it) == pytest.approx(expected, rel=1e-6, abs=1e-12), (text, it)


@pytest.mark.parametrize("text,field", [
    ('type: "Sgd" base_lr: 0.1 lr_policy: "fixed"', "'type'"),
    ('type: "LBFGS" base_lr: 0.1 lr_policy: "fixed"', "'type'"),
    ('base_lr: 0.1 lr_policy: "cosine"', "'lr_policy'"),
    ('base_lr: 0.1', "'lr_policy'"),
    ('lr_policy: "fixed"', "'base_lr'"),
    ('base_lr: 0.1 lr_policy: "step" gamma: 0.1', "'stepsize'"),
    ('base_lr: 0.1 lr_policy: "step" stepsize: 10', "'gamma'"),
    ('base_lr: 0.1 lr_policy: "exp"', "'gamma'"),
    ('base_lr: 0.1 lr_policy: "inv" gamma: 0.1', "'power'"),
    ('base_lr: 0.1 lr_policy: "poly" power: 1', "'max_iter'"),
    ('base_lr: 0.1 lr_policy: "multistep" gamma: 0.1', "'stepvalue'"),
    ('base_lr: 0.1 lr_policy: "sigmoid" gamma: 0.1', "'stepsize'"),
    ('base_lr: 0.1 lr_policy: "fixed" regularization_type: "L3" weight_decay: 1',
     "'regularization_type'"),
    ('type: "AdaGrad" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9', "'momentum'"),
    ('type: "RMSProp" base_lr: 0.1 lr_policy: "fixed" rms_decay: 1.5', "'rms_decay'"),
    ('base_lr: 0.1 lr_policy: "fixed" iter_size: 0', "'iter_size'"),
])
def test_bad_settings_name_the_field(text, field):
    with pytest.raises(SolverError, match=field):
        CaffeSolver(parse_solver(text), make_net())


def test_suspect_settings_warn():
    with pytest.warns(SolverWarning, match="stepvalue"):
        CaffeSolver(parse_solver('base_lr: 0.1 lr_policy: "multistep" gamma: 0.1 '
                                 'stepvalue: 5 stepvalue: 5'), make_net())
    with pytest.warns(SolverWarning, match="momentum"):
        CaffeSolver(parse_solver('type: "Adam" base_lr: 0.1 lr_policy: "fixed"'), make_net())


def test_case_mismatch_gets_a_hint():
    with pytest.raises(SolverError, match="did you mean 'Adam'"):
        CaffeSolver(parse_solver('type: "adam" base_lr: 0.1 lr_policy: "fixed"'), make_net())


# ---------------------------------------------------------------------------------------------
# State round trip, sharing, summary, plan


@pytest.mark.parametrize("stype", ["SGD", "AdaDelta", "Adam"])
def test_state_dict_round_trip_is_exact(stype, tmp_path):
    fields = {"type": stype, **TYPES[stype], **POLICIES["multistep"], "weight_decay": 0.01,
              "iter_size": 2, "clip_gradients": 6.0}
    param = parse_solver(solver_text(fields))
    straight = make_net()
    s1 = CaffeSolver(param, straight)
    for step in range(20):
        backward(straight, s1, step, 2)
        s1.apply_update()

    first = make_net()
    s2 = CaffeSolver(param, first)
    for step in range(10):
        backward(first, s2, step, 2)
        s2.apply_update()
    path = tmp_path / "state.pt"
    torch.save({"weights": first.state_dict(), "solver": s2.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    resumed = make_net(seed=99)  # different initial weights: everything must come from the file
    resumed.load_state_dict(saved["weights"])
    s3 = CaffeSolver(param, resumed)
    s3.load_state_dict(saved["solver"])
    assert s3.iter == 10 and s3.lr == s2.lr
    for step in range(10, 20):
        backward(resumed, s3, step, 2)
        s3.apply_update()
    assert s3.iter == 20
    for k in MULTS:
        assert torch.equal(resumed.blob_tensor(*k), straight.blob_tensor(*k)), k


def test_state_of_another_type_is_refused():
    net = make_net()
    sgd = CaffeSolver(parse_solver('type: "SGD" base_lr: 0.1 lr_policy: "fixed"'), net)
    adam = CaffeSolver(parse_solver('type: "Adam" base_lr: 0.1 lr_policy: "fixed"'), net)
    with pytest.raises(SolverError, match="type"):
        adam.load_state_dict(sgd.state_dict())


SHARED = """
input: "x" input_shape { dim: 2 dim: 3 }
layer { name: "fc_a" type: "InnerProduct" bottom: "x" top: "a"
        param { name: "W" } param { name: "B" decay_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fc_b" type: "InnerProduct" bottom: "x" top: "b"
        param { name: "W" lr_mult: 3 } param { name: "B" }
        inner_product_param { num_output: 4 } }
"""


def test_shared_blob_updated_once_with_caffe_multipliers():
    net = build_net(parse_net(SHARED), phase="train")
    solver = CaffeSolver(parse_solver('type: "SGD" base_lr: 0.1 lr_policy: "fixed"'), net)
    # Net::AppendParam: the sharer's explicit lr_mult 3 applies, the owner wrote none.
    assert [(b.layer, b.index, b.lr_mult, b.decay_mult) for b in solver.blobs] == \
        [("fc_a", 0, 3.0, 1.0), ("fc_a", 1, 1.0, 0.0)]
    w0 = net.get_submodule("fc_a").weight.detach().clone()
    x = torch.randn(2, 3)
    solver.zero_grad()
    out = net(x)
    (out["a"].sum() + out["b"].sum()).backward()
    g = net.get_submodule("fc_a").weight.grad.clone()
    solver.apply_update()
    torch.testing.assert_close(net.get_submodule("fc_b").weight, w0 - 0.1 * 3 * g)
    bad = SHARED.replace('param { name: "B" }', 'param { name: "B" decay_mult: 1 }')
    with pytest.raises(SolverError, match="decay_mult"):
        CaffeSolver(parse_solver('base_lr: 0.1 lr_policy: "fixed"'),
                    build_net(parse_net(bad), phase="train"))


def test_settings_summary_covers_every_field():
    param = parse_solver('base_lr: 0.1 lr_policy: "fixed" solver_mode: GPU device_id: 1 '
                         'snapshot_diff: true layer_wise_reduce: false')
    rows = {r["field"]: r for r in settings_summary(param)}
    assert set(rows) == {f.name for f in param.DESCRIPTOR.fields}
    for name in ("solver_mode", "device_id", "snapshot_diff", "debug_info", "layer_wise_reduce"):
        assert rows[name]["handled_by"] == "ignored" and rows[name]["note"], name
    assert rows["device_id"]["set"] and rows["device_id"]["value"] == 1
    assert rows["solver_mode"]["value"] == "GPU"
    for name in ("clip_gradients", "iter_size", "momentum", "weight_decay", "type"):
        assert "solver" in rows[name]["handled_by"], name
    assert "hdf5" in rows["snapshot_format"]["note"].lower()
    with pytest.warns(SolverWarning, match="snapshot_diff"):
        CaffeSolver(param, make_net())


def test_training_plan(tmp_path):
    solver_file = tmp_path / "solver.prototxt"
    (tmp_path / "train.prototxt").write_text(NET)
    text = ('net: "train.prototxt" test_iter: 7 test_interval: 50 base_lr: 0.1 '
            'lr_policy: "fixed" max_iter: 1000 display: 20 average_loss: 10 snapshot: 200 '
            'iter_size: 4 test_initialization: false snapshot_format: HDF5')
    solver_file.write_text(text)
    plan = training_plan(parse_solver(text), solver_file)
    assert {k: plan[k] for k in ("max_iter", "display", "average_loss", "test_interval",
                                 "test_iter", "test_initialization", "snapshot", "iter_size",
                                 "random_seed", "snapshot_format", "snapshot_suffix")} == {
        "max_iter": 1000, "display": 20, "average_loss": 10, "test_interval": 50,
        "test_iter": [7], "test_initialization": False, "snapshot": 200, "iter_size": 4,
        "random_seed": None, "snapshot_format": "hdf5", "snapshot_suffix": ".caffemodel.h5"}
    # snapshot_prefix unset: Caffe uses the solver file without its extension
    assert plan["snapshot_prefix"] == str(tmp_path / "solver")
    assert plan["train_net"] == str(tmp_path / "train.prototxt")
    assert [t["test_iter"] for t in plan["test_nets"]] == [7]
    assert training_plan(parse_solver('base_lr: 0.1 lr_policy: "fixed" random_seed: 5'))[
        "random_seed"] == 5
    with pytest.raises(SolverError, match="test_iter"):
        training_plan(parse_solver('test_net: "a" test_net: "b" test_iter: 3 test_interval: 5 '
                                   'base_lr: 0.1 lr_policy: "fixed"'))
