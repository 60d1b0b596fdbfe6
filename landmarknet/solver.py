"""Caffe's solvers on torch tensors: the update of BVLC Caffe's ``SGDSolver`` family, exactly.

``CaffeSolver(param, net)`` takes a ``SolverParameter`` (``read_solver``) and a built ``CaffeNet``.
The training loop runs ``zero_grad()``, then forward + backward ``iter_size`` times (gradients sum
in ``.grad``, as Caffe's diffs accumulate), then ``apply_update()``. That call does what
``SGDSolver::ApplyUpdate`` plus ``++iter_`` do, in Caffe's order::

    rate = GetLearningRate(iter)                  # lr policy, from base_lr
    ClipGradients()                               # on the SUMMED diffs, before normalisation
    for each learnable blob:
        Normalize          g /= iter_size
        Regularize         g += weight_decay*decay_mult * w       (L2)   or * sign(w) (L1)
        ComputeUpdateValue u = f_type(g, history, local_rate = rate*lr_mult)
    w -= u;  iter += 1

Caffe keeps the learning rate *inside* the SGD momentum history (``v = m*v + lr*g``), so its SGD
differs from ``torch.optim.SGD`` whenever the rate changes; that is why this is not a torch
optimizer. ``.grad`` is left as the caller summed it; the update works on copies.

``training_plan(param)`` gathers the fields the training loop (not the update) honours;
``settings_summary(param)`` says, for every SolverParameter field, who honours it or why not.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import SolverError

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
_HISTORIES = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}
STATE_FORMAT = "landmarknet.solver/1"


class SolverWarning(UserWarning):
    """A solver setting we accept but that probably does not do what the file's author meant."""


# ---------------------------------------------------------------------------------------------
# Checks and the learning rate


def _need(param: caffe_pb2.SolverParameter, field: str, why: str) -> None:
    if not param.HasField(field):
        raise SolverError(f"solver field '{field}' is required {why}")


def _check_policy(param: caffe_pb2.SolverParameter) -> None:
    """Raise SolverError, naming the field, for a policy Caffe would reject or misapply."""
    policy = param.lr_policy
    if not param.HasField("lr_policy"):
        raise SolverError("solver field 'lr_policy' is missing (Caffe has no default); "
                          f"use one of {', '.join(LR_POLICIES)}")
    if policy not in LR_POLICIES:
        hint = next((p for p in LR_POLICIES if p.lower() == policy.lower()), None)
        raise SolverError(f"solver field 'lr_policy': unknown learning rate policy '{policy}'"
                          + (f" (did you mean '{hint}'? Caffe is case-sensitive)" if hint else "")
                          + f"; known: {', '.join(LR_POLICIES)}")
    why = f"by lr_policy '{policy}'"
    if policy in ("step", "exp", "inv", "multistep", "sigmoid"):
        _need(param, "gamma", why)
        if param.gamma < 0:  # Caffe: CHECK_GE(gamma, 0)
            raise SolverError(f"solver field 'gamma' is {param.gamma}; Caffe requires gamma >= 0 "
                              f"for lr_policy '{policy}'")
    if policy in ("step", "sigmoid"):
        _need(param, "stepsize", why)
        if param.stepsize <= 0:  # Caffe: CHECK_GT(stepsize, 0)
            raise SolverError(f"solver field 'stepsize' is {param.stepsize}; it must be > 0 "
                              f"for lr_policy '{policy}'")
    if policy in ("inv", "poly"):
        _need(param, "power", why)
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError("solver field 'max_iter' must be > 0 for lr_policy 'poly' "
                          f"(it is {param.max_iter})")
    if policy == "multistep":
        if not param.stepvalue:
            raise SolverError("solver field 'stepvalue' is required by lr_policy 'multistep' "
                              "(give one 'stepvalue: N' line per step)")


def _multistep_count(stepvalues, it: int) -> int:
    """Caffe's ``current_step_`` for multistep after GetLearningRate ran at iterations 0..it:
    it rises by at most one per call, when ``iter >= stepvalue[current_step]``."""
    count, at = 0, -1
    for sv in stepvalues:
        at = max(int(sv), at + 1)  # the iteration at which this step is taken
        if at > it:
            break
        count += 1
    return count


def learning_rate(param: caffe_pb2.SolverParameter, it: int, *, check: bool = True) -> float:
    """Caffe's ``SGDSolver::GetLearningRate`` at iteration ``it`` (checks the policy's fields
    unless ``check`` is False)."""
    if check:
        _check_policy(param)
    base, policy = param.base_lr, param.lr_policy
    if it < 0:
        raise SolverError(f"iteration {it} is negative")
    if policy == "fixed":
        return base
    if policy == "step":
        return base * param.gamma ** (it // param.stepsize)
    if policy == "exp":
        return base * param.gamma ** it
    if policy == "inv":
        return base * (1.0 + param.gamma * it) ** (-param.power)
    if policy == "multistep":
        return base * param.gamma ** _multistep_count(param.stepvalue, it)
    if policy == "poly":
        if it > param.max_iter:
            raise SolverError(f"lr_policy 'poly' is undefined past max_iter ({param.max_iter}); "
                              f"asked for iteration {it}")
        return base * (1.0 - it / param.max_iter) ** param.power
    # sigmoid
    z = -param.gamma * (it - param.stepsize)
    return 0.0 if z > 700 else base / (1.0 + math.exp(z))


def check_solver(param: caffe_pb2.SolverParameter) -> list[str]:
    """Raise SolverError for settings Caffe rejects (or that we cannot honour); return warnings
    (also issued with ``warnings.warn``) for settings we accept but suspect."""
    notes: list[str] = []
    if param.type not in SOLVER_TYPES:
        hint = next((t for t in SOLVER_TYPES if t.lower() == param.type.lower()), None)
        raise SolverError(f"solver field 'type': unknown solver type '{param.type}'"
                          + (f" (did you mean '{hint}'? Caffe is case-sensitive)" if hint else "")
                          + f"; known: {', '.join(SOLVER_TYPES)}")
    _need(param, "base_lr", "(Caffe would silently train with a learning rate of 0)")
    _check_policy(param)
    if param.regularization_type not in ("L1", "L2"):
        raise SolverError(f"solver field 'regularization_type': unknown regularization "
                          f"'{param.regularization_type}'; Caffe knows 'L2' and 'L1'")
    if param.iter_size < 1:
        raise SolverError(f"solver field 'iter_size' is {param.iter_size}; it must be >= 1")
    if param.average_loss < 1:
        raise SolverError(f"solver field 'average_loss' is {param.average_loss}; it must be >= 1")
    if param.type in ("AdaGrad", "RMSProp") and param.momentum != 0:
        raise SolverError(f"solver field 'momentum' is {param.momentum}: momentum cannot be used "
                          f"with {param.type} (Caffe refuses it too)")
    if param.type == "RMSProp" and not 0 <= param.rms_decay < 1:
        raise SolverError(f"solver field 'rms_decay' is {param.rms_decay}; it must be in [0, 1)")
    if param.type in ("AdaGrad", "RMSProp", "AdaDelta", "Adam") and param.delta <= 0:
        raise SolverError(f"solver field 'delta' is {param.delta}; {param.type} divides by "
                          "sqrt(history) + delta, so it must be > 0")
    if param.type in ("AdaDelta", "Adam") and not param.HasField("momentum"):
        notes.append(f"{param.type} without 'momentum': Caffe uses momentum 0 (typical values "
                     f"are {'0.95' if param.type == 'AdaDelta' else '0.9'})")
    if param.type == "AdaDelta" and param.base_lr != 1.0:
        notes.append(f"AdaDelta with base_lr {param.base_lr}: Caffe multiplies AdaDelta's step "
                     "by the learning rate (1.0 is the usual value)")
    sv = list(param.stepvalue)
    if param.lr_policy == "multistep" and any(b <= a for a, b in zip(sv, sv[1:])):
        notes.append(f"solver field 'stepvalue' {sv} is not strictly increasing; Caffe takes "
                     "at most one step per iteration, and so do we")
    if param.snapshot_diff:
        notes.append("snapshot_diff: true is ignored (snapshots hold weights only)")
    if param.debug_info:
        notes.append("debug_info: true is ignored (no per-layer debug log)")
    for n in notes:
        warnings.warn(n, SolverWarning, stacklevel=3)
    return notes


# ---------------------------------------------------------------------------------------------
# Learnable blobs with Caffe's multipliers


@dataclass
class LearnableBlob:
    """One of Caffe's ``learnable_params``: owned (not shared-from) learnable blob of a layer."""

    name: str  # the parameter's name in the net ("conv1.weight")
    layer: str  # Caffe layer name
    module: str
    index: int  # blob index inside the layer
    tensor: torch.nn.Parameter
    lr_mult: float
    decay_mult: float


def learnable_blobs(net) -> list[LearnableBlob]:
    """The net's learnable blobs in layer order, each once, with Caffe's lr/decay multipliers.

    A shared blob (``param { name }`` on several layers) takes the first explicitly written
    lr_mult / decay_mult among the owner and its sharers (owner first), 1.0 when none writes
    one; two different explicit values are an error, as in Caffe's ``Net::AppendParam``.
    """
    blobs: dict[tuple[str, int], LearnableBlob] = {}
    explicit: dict[tuple[str, int], dict[str, float]] = {}
    for module, info in net.layers.items():
        for i, slot in enumerate(info.blobs):
            if not slot.learnable:
                continue
            spec = info.param_spec(i)
            key = info.shared_from.get(i, (module, i))
            if key == (module, i):
                blobs[key] = LearnableBlob(f"{module}.{slot.attr}", info.node.name, module, i,
                                           net.blob_tensor(module, i), 1.0, 1.0)
                explicit[key] = {}
            elif key not in blobs:
                raise SolverError(f"layer '{info.node.name}' shares blob {i} with "
                                  f"{key[0]}/{key[1]}, which is not a learnable blob")
            seen = explicit[key]
            for field in ("lr_mult", "decay_mult"):
                if not spec.HasField(field):
                    continue
                value = getattr(spec, field)
                if field in seen and seen[field] != value:
                    raise SolverError(f"shared param '{spec.name}' has mismatched {field}: "
                                      f"{seen[field]} and {value} (layer '{info.node.name}')")
                seen[field] = value
                setattr(blobs[key], field, float(value))
    return list(blobs.values())


# ---------------------------------------------------------------------------------------------
# The solver


class CaffeSolver:
    """Caffe's SGD / Nesterov / AdaGrad / RMSProp / AdaDelta / Adam update on a CaffeNet."""

    def __init__(self, param: caffe_pb2.SolverParameter, net) -> None:
        self.param = caffe_pb2.SolverParameter()
        self.param.CopyFrom(param)
        self.notes = check_solver(self.param)
        self.net = net
        self.type = self.param.type
        self.blobs = learnable_blobs(net)
        if not self.blobs:
            raise SolverError("the net has no learnable blobs: nothing to train")
        self._iter = 0
        #: SGD and Adam use multi-tensor kernels (same numbers; set False for the per-blob path).
        self.foreach = True
        self.last_lr: float | None = None
        self.last_grad_norm: torch.Tensor | None = None  # L2 norm before clipping (when clipping)
        self._history = [[torch.zeros_like(b.tensor, memory_format=torch.preserve_format)
                          .detach() for _ in range(_HISTORIES[self.type])] for b in self.blobs]

    # -- bookkeeping ----------------------------------------------------------------------------
    @property
    def iter(self) -> int:
        """Number of updates applied so far (Caffe's ``iter_``)."""
        return self._iter

    @property
    def lr(self) -> float:
        """The rate the next ``apply_update`` will use (Caffe logs it as 'lr = ')."""
        return self.lr_at(self._iter)

    def lr_at(self, it: int) -> float:
        """Caffe's GetLearningRate at iteration ``it``."""
        return learning_rate(self.param, it, check=False)

    def zero_grad(self) -> None:
        """Forget the gradients (Caffe's ClearParamDiffs), before the iter_size backward passes."""
        for b in self.blobs:
            b.tensor.grad = None

    # -- the update -----------------------------------------------------------------------------
    @torch.no_grad()
    def apply_update(self) -> float:
        """One Caffe iteration's update from the summed ``.grad``; returns the rate used."""
        p = self.param
        rate = self.lr_at(self._iter)
        grads = []
        for b in self.blobs:
            g = b.tensor.grad
            # Caffe does not back-propagate into blobs with lr_mult 0: their diff stays 0.
            if g is None or b.lr_mult == 0:
                g = torch.zeros_like(b.tensor)
            grads.append(g.detach().to(b.tensor.dtype))
        if p.clip_gradients >= 0:  # ClipGradients, on the summed diffs
            norm = torch.sqrt(sum((g.double().square().sum().to(grads[0].device)
                                   for g in grads), torch.zeros((), dtype=torch.float64,
                                                                device=grads[0].device)))
            self.last_grad_norm = norm
            clip = float(p.clip_gradients)
            scale = torch.where(norm > clip, clip / norm, torch.ones_like(norm))
            grads = [g * scale.to(device=g.device, dtype=g.dtype) for g in grads]
        if self.type in ("SGD", "Adam") and self.foreach:
            self._apply_foreach(grads, rate)
            self._iter += 1
            self.last_lr = rate
            return rate
        for b, g, hist in zip(self.blobs, grads, self._history):
            w = b.tensor
            if p.iter_size != 1:  # Normalize
                g = g * (1.0 / p.iter_size)
            local_decay = p.weight_decay * b.decay_mult  # Regularize
            if local_decay:
                g = g + local_decay * (w if p.regularization_type == "L2" else torch.sign(w))
            w.sub_(self._update_value(g, hist, rate * b.lr_mult))
        self._iter += 1
        self.last_lr = rate
        return rate

    def _apply_foreach(self, grads: list[torch.Tensor], rate: float) -> None:
        """SGD and Adam for all blobs at once with multi-tensor (``_foreach``) kernels.

        The same arithmetic as the per-blob path (Normalize, Regularize, ComputeUpdateValue),
        grouped by (lr_mult, decay_mult): a handful of kernel launches per group instead of
        about ten per blob, which is most of a small net's step time on a GPU.
        """
        p = self.param
        groups: dict[tuple[float, float], list[int]] = {}
        for i, b in enumerate(self.blobs):
            groups.setdefault((b.lr_mult, b.decay_mult), []).append(i)
        for (lr_mult, decay_mult), idx in groups.items():
            w = [self.blobs[i].tensor for i in idx]
            g = [grads[i] for i in idx]
            if p.iter_size != 1:
                g = torch._foreach_mul(g, 1.0 / p.iter_size)
            local_decay = p.weight_decay * decay_mult
            if local_decay:
                reg = w if p.regularization_type == "L2" else torch._foreach_sign(w)
                g = torch._foreach_add(g, reg, alpha=local_decay)
            local_rate = rate * lr_mult
            if self.type == "SGD":
                h = [self._history[i][0] for i in idx]
                torch._foreach_mul_(h, p.momentum)
                torch._foreach_add_(h, g, alpha=local_rate)
                torch._foreach_sub_(w, h)
                continue
            m = [self._history[i][0] for i in idx]
            v = [self._history[i][1] for i in idx]
            b1, b2 = p.momentum, p.momentum2
            step = self._iter + 1
            correction = math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
            torch._foreach_mul_(m, b1)
            torch._foreach_add_(m, g, alpha=1.0 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_add_(v, torch._foreach_mul(g, g), alpha=1.0 - b2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, p.delta)
            upd = torch._foreach_mul(m, local_rate * correction)
            torch._foreach_div_(upd, denom)
            torch._foreach_sub_(w, upd)

    def _update_value(self, g: torch.Tensor, hist: list[torch.Tensor],
                      local_rate: float) -> torch.Tensor:
        """ComputeUpdateValue of the solver type: the amount subtracted from the weights."""
        p, t = self.param, self.type
        if t == "SGD":
            h, = hist
            h.mul_(p.momentum).add_(g, alpha=local_rate)
            return h
        if t == "Nesterov":
            h, = hist
            old = h.clone()
            h.mul_(p.momentum).add_(g, alpha=local_rate)
            return (1.0 + p.momentum) * h - p.momentum * old
        if t == "AdaGrad":
            h, = hist
            h.add_(g * g)
            return local_rate * g / (h.sqrt() + p.delta)
        if t == "RMSProp":
            h, = hist
            h.mul_(p.rms_decay).add_(g * g, alpha=1.0 - p.rms_decay)
            return local_rate * g / (h.sqrt() + p.delta)
        if t == "AdaDelta":
            h_g, h_u = hist
            h_g.mul_(p.momentum).add_(g * g, alpha=1.0 - p.momentum)
            u = g * torch.sqrt((h_u + p.delta) / (h_g + p.delta))
            h_u.mul_(p.momentum).add_(u * u, alpha=1.0 - p.momentum)
            return local_rate * u
        # Adam: Caffe folds the bias correction into the rate, with t = iter + 1.
        m, v = hist
        b1, b2 = p.momentum, p.momentum2
        step = self._iter + 1
        correction = math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).add_(g * g, alpha=1.0 - b2)
        return (local_rate * correction) * m / (v.sqrt() + p.delta)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Iteration and history tensors by parameter name (plain types: torch.load-safe)."""
        return {"format": STATE_FORMAT, "type": self.type, "lr_policy": self.param.lr_policy,
                "iter": int(self._iter),
                "history": {b.name: [h.detach().clone() for h in hist]
                            for b, hist in zip(self.blobs, self._history)}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output; the net must have the same learnable blobs."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SolverError(f"not a solver state of format {STATE_FORMAT}")
        if state["type"] != self.type:
            raise SolverError(f"the solver state is of type '{state['type']}' but the solver "
                              f"field 'type' is '{self.type}'")
        if state.get("lr_policy") != self.param.lr_policy:
            warnings.warn(f"the solver state was saved with lr_policy '{state.get('lr_policy')}'"
                          f", this solver uses '{self.param.lr_policy}'", SolverWarning,
                          stacklevel=2)
        history = state["history"]
        names = [b.name for b in self.blobs]
        missing = [n for n in names if n not in history]
        extra = [n for n in history if n not in names]
        if missing or extra:
            raise SolverError(f"the solver state does not fit the net: missing {missing}, "
                              f"unknown {extra}")
        for b, hist in zip(self.blobs, self._history):
            saved = history[b.name]
            if len(saved) != len(hist):
                raise SolverError(f"'{b.name}': {len(saved)} history tensors saved, "
                                  f"{len(hist)} expected")
            for h, s in zip(hist, saved):
                if tuple(s.shape) != tuple(h.shape):
                    raise SolverError(f"'{b.name}': history of shape {list(s.shape)} saved, "
                                      f"the blob has shape {list(h.shape)}")
        for b, hist in zip(self.blobs, self._history):
            for h, s in zip(hist, history[b.name]):
                h.copy_(s)
        self._iter = int(state["iter"])

    def settings_summary(self) -> list[dict]:
        """See the module function ``settings_summary``."""
        return settings_summary(self.param)


# ---------------------------------------------------------------------------------------------
# What the training loop honours, and a summary of every field

# field -> (who honours it, what we do)
_HANDLING: dict[str, tuple[str, str]] = {
    "type": ("solver", "update rule (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)"),
    "solver_type": ("parser", "deprecated enum, upgraded to 'type' when the file is read"),
    "base_lr": ("solver", "rate of every lr policy"),
    "lr_policy": ("solver", "Caffe's GetLearningRate"),
    "gamma": ("solver", "lr policies step, exp, inv, multistep, sigmoid"),
    "power": ("solver", "lr policies inv, poly"),
    "stepsize": ("solver", "lr policies step, sigmoid"),
    "stepvalue": ("solver", "lr policy multistep (at most one step per iteration, as Caffe)"),
    "max_iter": ("plan", "iterations to run; also the horizon of lr policy poly"),
    "momentum": ("solver", "SGD/Nesterov momentum (rate kept inside the history), AdaDelta's "
                           "decay, Adam's beta1"),
    "momentum2": ("solver", "Adam's beta2"),
    "rms_decay": ("solver", "RMSProp's decay"),
    "delta": ("solver", "AdaGrad/RMSProp/AdaDelta/Adam epsilon"),
    "weight_decay": ("solver", "times each blob's decay_mult, added to the gradient"),
    "regularization_type": ("solver", "L2 (w) or L1 (sign(w)) weight decay"),
    "clip_gradients": ("solver", "global L2 norm of the summed gradients, before iter_size "
                                 "normalisation and weight decay (Caffe's order)"),
    "iter_size": ("solver+plan", "backward passes per update; gradients are summed then "
                                 "divided by iter_size"),
    "display": ("plan", "log every N iterations"),
    "average_loss": ("plan", "the logged loss is the mean of the last N iterations"),
    "test_iter": ("plan", "batches per test pass, one entry per test net"),
    "test_interval": ("plan", "test every N iterations (0: never)"),
    "test_initialization": ("plan", "also test before the first update"),
    "test_compute_loss": ("plan", "compute the test nets' loss"),
    "snapshot": ("plan", "snapshot every N iterations (0: never)"),
    "snapshot_prefix": ("plan", "snapshot path prefix; <prefix>_iter_N.caffemodel and a "
                                ".solverstate.pt file (not Caffe's .solverstate)"),
    "snapshot_after_train": ("plan", "snapshot at the end of training"),
    "snapshot_format": ("plan", "BINARYPROTO: .caffemodel; HDF5: .caffemodel.h5 (our HDF5 "
                                "writer, Caffe's layout). The solver state is always our "
                                "torch file"),
    "random_seed": ("plan", "seed of torch/numpy/random when >= 0 (Caffe's -1: unseeded)"),
    "weights": ("plan", "weights copied by layer name before training (as caffe train "
                        "--weights)"),
    "net": ("plan", "train/test net file"),
    "net_param": ("plan", "inline train/test net"),
    "train_net": ("plan", "train net file"),
    "train_net_param": ("plan", "inline train net"),
    "test_net": ("plan", "test net files"),
    "test_net_param": ("plan", "inline test nets"),
    "train_state": ("plan", "net state (phase, level, stages) of the train net"),
    "test_state": ("plan", "net states of the test nets"),
    "snapshot_diff": ("ignored", "snapshots hold weights only, never gradients"),
    "solver_mode": ("ignored", "the device is chosen by the trainer (GPU when present)"),
    "device_id": ("ignored", "the device is chosen by the trainer (--device, torchrun)"),
    "debug_info": ("ignored", "no per-layer debug log"),
    "layer_wise_reduce": ("ignored", "multi-GPU overlap is DDP's business; no numeric effect"),
}


def _value(param: caffe_pb2.SolverParameter, field: str):
    value = getattr(param, field)
    fd = param.DESCRIPTOR.fields_by_name[field]
    if fd.is_repeated:
        if fd.message_type is not None:
            return f"[{len(value)} message(s)]"
        return list(value)
    if fd.message_type is not None:
        return "<message>" if param.HasField(field) else None
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    return value


def settings_summary(param: caffe_pb2.SolverParameter) -> list[dict]:
    """One row per SolverParameter field: ``{"field", "value", "set", "handled_by", "note"}``.

    ``handled_by`` is "solver" (the update), "plan" (the training loop, via training_plan),
    "parser" (upgraded when read) or "ignored" (with the reason in ``note``).
    """
    rows = []
    for fd in param.DESCRIPTOR.fields:
        handled_by, note = _HANDLING.get(
            fd.name, ("ignored", "not a BVLC Caffe solver field we know; no effect"))
        is_set = (len(getattr(param, fd.name)) > 0 if fd.is_repeated
                  else param.HasField(fd.name))
        rows.append({"field": fd.name, "value": _value(param, fd.name), "set": is_set,
                     "handled_by": handled_by, "note": note})
    return rows


def _resolve(path: str, solver_path: str | os.PathLike | None) -> str:
    """Caffe opens net files relative to the working directory; when the file is not there but
    is beside the solver file, use that one."""
    if not path or os.path.isabs(path) or os.path.exists(path) or solver_path is None:
        return path
    beside = Path(solver_path).parent / path
    return str(beside) if beside.exists() else path


def training_plan(param: caffe_pb2.SolverParameter,
                  solver_path: str | os.PathLike | None = None) -> dict:
    """The fields the training loop honours, with Caffe's defaults and rules applied.

    Keys: max_iter, display, average_loss, test_interval, test_iter (list), test_initialization,
    test_compute_loss, snapshot, snapshot_prefix, snapshot_after_train, snapshot_format
    ("binaryproto" | "hdf5"), snapshot_suffix (".caffemodel" | ".caffemodel.h5"), random_seed
    (None when < 0), iter_size, weights (list), train_net (path, NetParameter or None),
    train_state (NetState or None), test_nets (list of {"source", "test_iter", "state"}).
    """
    check_solver(param)
    # snapshot_prefix: Caffe's UpgradeSnapshotPrefixProperty (unset: the solver file without its
    # extension; a directory: the solver file's stem inside it).
    prefix = param.snapshot_prefix
    if solver_path is not None:
        sp = Path(solver_path)
        if not param.HasField("snapshot_prefix"):
            prefix = str(sp.with_suffix(""))
        elif os.path.isdir(prefix):
            prefix = str(Path(prefix) / sp.stem)
    # The train net: exactly one of train_net_param, train_net, net_param, net (Caffe's check).
    train_sources = [f for f in ("train_net_param", "train_net", "net_param", "net")
                     if param.HasField(f)]
    if len(train_sources) > 1:
        raise SolverError(f"solver fields {train_sources}: give only one train net")
    train_net = None
    if train_sources:
        f = train_sources[0]
        train_net = getattr(param, f) if f.endswith("param") else _resolve(getattr(param, f),
                                                                            solver_path)
    # Test nets: test_net_param, then test_net, then the generic net for the remaining test_iter.
    sources: list = list(param.test_net_param) + [_resolve(p, solver_path)
                                                  for p in param.test_net]
    generic = param.net_param if param.HasField("net_param") else (
        _resolve(param.net, solver_path) if param.HasField("net") else None)
    if generic is not None:
        sources += [generic] * max(0, len(param.test_iter) - len(sources))
    if len(param.test_iter) != len(sources):
        raise SolverError(f"solver field 'test_iter' has {len(param.test_iter)} entries for "
                          f"{len(sources)} test net(s): give one per test net")
    if sources and param.test_interval <= 0:
        raise SolverError("solver field 'test_interval' must be > 0 when there are test nets "
                          "(Caffe's check)")
    if param.test_state and len(param.test_state) != len(sources):
        raise SolverError(f"solver field 'test_state' has {len(param.test_state)} entries for "
                          f"{len(sources)} test net(s)")
    test_nets = [{"source": s, "test_iter": int(n),
                  "state": param.test_state[i] if param.test_state else None}
                 for i, (s, n) in enumerate(zip(sources, param.test_iter))]
    hdf5 = param.snapshot_format == caffe_pb2.SolverParameter.HDF5
    return {
        "max_iter": int(param.max_iter),
        "display": int(param.display),
        "average_loss": int(param.average_loss),
        "test_interval": int(param.test_interval),
        "test_iter": [int(n) for n in param.test_iter],
        "test_initialization": bool(param.test_initialization),
        "test_compute_loss": bool(param.test_compute_loss),
        "snapshot": int(param.snapshot),
        "snapshot_prefix": prefix,
        "snapshot_after_train": bool(param.snapshot_after_train),
        "snapshot_format": "hdf5" if hdf5 else "binaryproto",
        "snapshot_suffix": ".caffemodel.h5" if hdf5 else ".caffemodel",
        "random_seed": int(param.random_seed) if param.random_seed >= 0 else None,
        "iter_size": int(param.iter_size),
        "weights": [_resolve(w, solver_path) for w in param.weights],
        "train_net": train_net,
        "train_state": param.train_state if param.HasField("train_state") else None,
        "test_nets": test_nets,
    }
