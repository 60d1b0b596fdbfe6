"""ONNX export through torch's exporter, checked at once in ONNX Runtime against our forward.

torch 2.13 offers two exporters: the ``torch.export``-based one (``dynamo=True``, the default)
needs the ``onnxscript`` package, which is not a dependency of landmarknet; the TorchScript-based
one (``dynamo=False``) needs nothing beyond torch and onnx and handles every layer we build
(Caffe's pooling geometry is plain pad/pool ops, shapes are traced as constants except the batch
when ``dynamic_batch`` is asked for). We use the TorchScript exporter; ``exporter="dynamo"``
selects the other one when onnxscript is installed.

The opset defaults to 19: ONNX Runtime computes ceil-mode AveragePool correctly only from opset
19 on (docs/tools.md, "Opset"), and Caffe rounds pooling up by default.

``--via caffe2onnx`` (``caffe2onnx_crosscheck``) runs the independent caffe2onnx converter on
the same prototxt and caffemodel and compares both ONNX files in ONNX Runtime. caffe2onnx pins
onnx==1.6.0, which does not build on modern Python; installed with ``pip install --no-deps
caffe2onnx`` it works with the current onnx, in a subprocess with
``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` (its generated ``_pb2`` needs it; docs/tools.md).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from landmarknet.build import CaffeNet
from landmarknet.errors import LandmarknetError
from landmarknet.layers.registry import OnnxRule, registration_of

DEFAULT_OPSET = 19
DEFAULT_TOL = 1e-4  # relative: max |onnx - ours| / max |ours|
# Layers whose output can saturate (random weights drive a Softmax to one-hot, a Sigmoid to 0/1)
# say so in their registration (OnnxRule.saturating): a check on their output alone can pass
# whatever the weights, so the check also compares the blobs that feed them. Layers that only
# move values (OnnxRule.moves_values) are looked through.
MAX_PROBES = 16
CAFFE2ONNX_INSTALL = "pip install --no-deps caffe2onnx"


class ExportError(LandmarknetError):
    """The export failed, or the exported model does not match our forward."""


@dataclass
class OutputCheck:
    """One output compared between a reference and a candidate."""

    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    max_abs_ref: float
    #: Set when the plain comparison failed and the net ran again in float64: how far the
    #: candidate's and our own float32 values each are from that answer (max abs).
    candidate_vs_f64: float | None = None
    ours_vs_f64: float | None = None

    @property
    def rel(self) -> float:
        """max |diff| / max |ref| (the diff itself when the reference is all zeros)."""
        return self.max_abs_diff / self.max_abs_ref if self.max_abs_ref > 0 else self.max_abs_diff

    def within_float32(self, tol: float) -> bool:
        """Our own float32 values miss the float64 answer by more than the tolerance (and the
        default one: a stricter --tol is not loosened on a well-conditioned net), and the
        candidate is no further from it than twice that: the difference is the net's float32
        conditioning (random weights in a deep net can make float32 itself wrong in the third
        digit), not a conversion error."""
        if self.candidate_vs_f64 is None or self.ours_vs_f64 is None:
            return False
        if self.ours_vs_f64 <= max(tol, DEFAULT_TOL) * self.max_abs_ref:
            return False
        return self.candidate_vs_f64 <= 2 * self.ours_vs_f64 + tol * self.max_abs_ref

    def passes(self, tol: float) -> bool:
        """Within the tolerance, or within float32's own error on this net."""
        return self.rel <= tol or self.within_float32(tol)

    def line(self, tol: float) -> str:
        """'prob  1x1000  max abs diff 1.2e-07  relative 3.4e-07  ok'."""
        shape = "x".join(map(str, self.shape))
        if self.rel <= tol:
            verdict = "ok"
        elif self.within_float32(tol):
            verdict = (f"ok: float32 conditioning (from the float64 answer: ours "
                       f"{self.ours_vs_f64:.3g}, this {self.candidate_vs_f64:.3g})")
        else:
            verdict = f"FAIL (> {tol:g})"
            if self.candidate_vs_f64 is not None:
                verdict += (f"; from the float64 answer: ours {self.ours_vs_f64:.3g}, this "
                            f"{self.candidate_vs_f64:.3g}")
        return (f"{self.name}  {shape}  max abs diff {self.max_abs_diff:.3g}  "
                f"relative {self.rel:.3g}  {verdict}")


@dataclass
class ExportReport:
    """What ``export_onnx`` did and found."""

    path: Path
    opset: int
    dynamic_batch: bool
    tol: float
    checks: list[OutputCheck] = field(default_factory=list)  # the net's outputs
    probes: dict[str, str] = field(default_factory=dict)  # inner blob (SSA name) -> why checked
    probe_checks: list[OutputCheck] = field(default_factory=list)
    extra_batch: int | None = None  # the second batch size checked with --dynamic-batch
    extra_checks: list[OutputCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    export_seconds: float = 0.0
    check_seconds: float = 0.0

    @property
    def all_checks(self) -> list[OutputCheck]:
        """Outputs and inner blobs, at every batch size checked."""
        return self.checks + self.probe_checks + self.extra_checks

    @property
    def ok(self) -> bool:
        """Every compared blob within the tolerance (or float32's own error on the net)."""
        return all(c.passes(self.tol) for c in self.all_checks)

    @property
    def max_rel(self) -> float:
        """The worst relative difference."""
        return max((c.rel for c in self.all_checks), default=0.0)

    def render(self) -> str:
        """Lines for the terminal."""
        lines = [f"exported {self.path} (opset {self.opset}"
                 + (", dynamic batch" if self.dynamic_batch else "")
                 + f") in {self.export_seconds:.1f} s"]
        if self.checks:
            lines.append("ONNX Runtime vs landmarknet on a seeded random input:")
            lines += ["  " + c.line(self.tol) for c in self.checks]
        if self.probe_checks:
            lines.append("and the blobs that feed saturating outputs (a one-hot softmax agrees "
                         "whatever the weights):")
            lines += ["  " + c.line(self.tol) + f"  [{self.probes[c.name]}]"
                      for c in self.probe_checks]
        if self.extra_checks:
            lines.append(f"again at batch {self.extra_batch}:")
            lines += ["  " + c.line(self.tol) for c in self.extra_checks]
        lines += [f"note: {n}" for n in self.notes]
        if self.checks:
            why = ("; over it only where our own float32 is as far from float64"
                   if self.ok and self.max_rel > self.tol else "")
            lines.append(("PASS" if self.ok else "FAIL") + f": max relative difference "
                         f"{self.max_rel:.3g} (tolerance {self.tol:g}{why})")
        return "\n".join(lines)


@contextlib.contextmanager
def _quiet_output():
    """Send this process's stdout and stderr (the file descriptors: C++ writes too) to a
    temporary file for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


class _TupleOutputs(nn.Module):
    """Positional inputs -> a tuple of outputs in a fixed order (what the exporter wants);
    ``probes`` adds inner blobs (SSA names) after the outputs, for the check."""

    def __init__(self, net: CaffeNet, names: Sequence[str], probes: Sequence[str] = ()) -> None:
        super().__init__()
        self.net = net
        self.names = list(names)
        self.probes = list(probes)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.probes:
            out = self.net(*inputs)
            return tuple(out[n] for n in self.names)
        named = dict(zip(self.net.input_names, inputs))
        out = self.net.run(named, blobs=self.names + self.probes)
        return tuple(out[n] for n in self.names + self.probes)


def saturation_probes(net: CaffeNet, names: Sequence[str]) -> dict[str, str]:
    """Inner blobs (SSA names) that feed a saturating layer on the way to an output, with why.

    Walks back from each output through layers that only move values; each saturating layer
    met adds its bottom (and the walk goes on through it: Softmax after Sigmoid adds both).
    """
    producer = {top: info.node for info in net.layers.values() for top in info.node.tops}
    outputs = {net.caffe_graph.latest.get(n, n) for n in names}
    probes: dict[str, str] = {}
    todo = list(outputs)
    seen: set[str] = set()
    while todo and len(probes) < MAX_PROBES:
        blob = todo.pop()
        node = producer.get(blob)
        if blob in seen or node is None:
            continue
        seen.add(blob)
        rule = _onnx_rule(node)
        if rule.saturating:
            for b in node.bottoms:
                if b in producer and b not in outputs and b not in probes:
                    probes[b] = f"input of {node.type} layer '{node.name}'"
            todo.extend(node.bottoms)
        elif rule.moves_values:
            todo.extend(node.bottoms)
    return probes


def _onnx_rule(node) -> OnnxRule:
    """The export rule of a layer's type (the default rule for unregistered types)."""
    reg = registration_of(node.type, node.param)
    return reg.onnx if reg is not None else OnnxRule()


def not_exportable_layers(net: CaffeNet) -> list[str]:
    """'name (type): reason' for each layer that its registration declares not exportable."""
    out = []
    for info in net.layers.values():
        rule = _onnx_rule(info.node)
        reason = rule.not_exportable or (rule.refuses(info.node.param) if rule.refuses else None)
        if reason:
            out.append(f"'{info.node.name}' ({info.node.type}): {reason}")
    return out


def _cut_hint(net: CaffeNet) -> str:
    """How to export the rest: the --outputs that end the net just before the refused layers
    (their bottoms, plus the net's other outputs)."""
    graph = net.caffe_graph
    refused = [info.node for info in net.layers.values() if _onnx_rule(info.node).not_exportable
               or (_onnx_rule(info.node).refuses
                   and _onnx_rule(info.node).refuses(info.node.param))]
    made_by_refused = {t for n in refused for t in n.tops}
    ends = [b for n in refused for b in n.bottoms if b not in made_by_refused]
    ends += [t for t in graph.outputs() if t not in made_by_refused]
    names = list(dict.fromkeys(graph.blob_of[b] for b in ends))
    if not names:
        return ""
    return (". To export the net without them: `landmarknet export ... --outputs "
            + ",".join(names) + "` (Python: build_from_graph(net_graph(...).cut_to([...])))")


def output_names(net: CaffeNet) -> list[str]:
    """The blobs the net returns, in order."""
    out_node = next(n for n in net.graph.nodes if n.op == "output")
    return list(out_node.args[0].keys())


def input_shapes(net: CaffeNet) -> dict[str, tuple[int, ...]]:
    """Input blob -> shape, in forward order."""
    return {i.name: tuple(int(d) for d in i.shape) for i in net.caffe_graph.inputs}


def random_inputs(net: CaffeNet, seed: int = 0, batch: int | None = None
                  ) -> dict[str, np.ndarray]:
    """Seeded float32 inputs of the net's input shapes (batch optional): standard normal,
    except where a layer reading the input says what its values mean (``OnnxRule.example_input``:
    regions for ROIPooling, for instance)."""
    rng = np.random.default_rng(seed)
    readers = _example_readers(net)
    out = {}
    for name, shape in input_shapes(net).items():
        if batch is not None:
            shape = (batch, *shape[1:])
        values = None
        for rule, info, index in readers.get(name, ()):
            images = batch if batch is not None else int(info.bottom_shapes[0][0])
            values = rule.example_input(info.node.param, index, shape, info.bottom_shapes,
                                        images, rng)
            if values is not None:
                break
        if values is None:
            values = rng.standard_normal(shape)
        out[name] = np.asarray(values, dtype=np.float32)
    return out


def _example_readers(net: CaffeNet) -> dict[str, list]:
    """Input blob -> (rule, layer info, bottom index) of each layer reading it whose export
    rule gives example values."""
    inputs = set(input_shapes(net))
    out: dict[str, list] = {}
    for info in net.layers.values():
        rule = _onnx_rule(info.node)
        if rule.example_input is None:
            continue
        for index, bottom in enumerate(info.node.bottoms):
            if bottom in inputs:  # the input itself (an in-place layer before would rename it)
                out.setdefault(bottom, []).append((rule, info, index))
    return out


def compare(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
            names: Sequence[str] | None = None, *, allow_reshape: bool = False
            ) -> list[OutputCheck]:
    """Per-output max abs diff between two dicts of arrays (shapes must agree, or only the
    element count with ``allow_reshape``: other converters drop or add unit axes)."""
    checks = []
    for name in names or list(ref):
        a = np.asarray(ref[name], dtype=np.float64)
        b = np.asarray(got[name], dtype=np.float64)
        if a.shape != b.shape and allow_reshape and a.size == b.size:
            b = b.reshape(a.shape)
        if a.shape != b.shape:
            raise ExportError(f"output '{name}': shape {list(b.shape)} against the reference's "
                              f"{list(a.shape)}")
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if np.isnan(diff):
            same_nan = np.array_equal(np.isnan(a), np.isnan(b))
            finite = ~np.isnan(a)
            diff = float(np.max(np.abs(a[finite] - b[finite]))) if same_nan and finite.any() \
                else (0.0 if same_nan else float("inf"))
        ref_max = float(np.nanmax(np.abs(a))) if a.size and not np.isnan(a).all() else 0.0
        checks.append(OutputCheck(name, tuple(a.shape), diff, ref_max))
    return checks


def our_outputs(net: CaffeNet, feeds: Mapping[str, np.ndarray],
                names: Sequence[str] | None = None, probes: Sequence[str] = ()
                ) -> dict[str, np.ndarray]:
    """Our forward in eval mode, as numpy; ``probes`` adds those inner blobs."""
    was_training = net.training
    net.eval()
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    try:
        with torch.no_grad():
            out = net.run(tensors)
            if probes:
                out.update(net.run(tensors, blobs=list(probes)))
    finally:
        net.train(was_training)
    return {k: v.detach().cpu().numpy() for k, v in out.items()
            if names is None or k in names or k in probes}


def judge_by_float64(net: CaffeNet, feeds: Mapping[str, np.ndarray], probes: Sequence[str],
                     ours: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                     checks: Sequence[OutputCheck], tol: float) -> None:
    """For checks over the tolerance, run the net once more in float64 on the same inputs and
    record how far the candidate's and our float32 values (``ours``, the check's reference)
    each are from it (OutputCheck's ``within_float32`` then decides). Nothing is recorded when
    the net cannot run in float64 (a layer computing in float32 on purpose, or no memory): the
    FAIL stands."""
    failed = [c for c in checks if c.rel > tol]
    if not failed:
        return
    names = [c.name for c in failed]
    dtypes = {k: t.dtype for k, t in [*net.named_parameters(), *net.named_buffers()]}
    try:
        net.double()  # in place and back (float32 -> float64 -> float32 is exact)
        exact = our_outputs(net, {k: np.asarray(v, np.float64) for k, v in feeds.items()},
                            names, probes)
    except (RuntimeError, TypeError, ValueError, MemoryError, LandmarknetError):
        return
    finally:
        _restore_dtypes(net, dtypes)
    for c in failed:
        if c.name not in exact or exact[c.name].shape != np.shape(got[c.name]):
            continue
        truth = exact[c.name].astype(np.float64)
        c.ours_vs_f64 = float(np.max(np.abs(ours[c.name] - truth))) if truth.size else 0.0
        c.candidate_vs_f64 = float(np.max(np.abs(np.asarray(got[c.name], np.float64) - truth))
                                   ) if truth.size else 0.0


def _restore_dtypes(net: torch.nn.Module, dtypes: Mapping[str, torch.dtype]) -> None:
    """Put every parameter and buffer back to its recorded dtype (``Module.double()`` changes
    parameters in place but replaces buffers, so both are looked up again by name)."""
    for prefix, module in net.named_modules():
        for group in (module._parameters, module._buffers):
            for name, t in group.items():
                key = f"{prefix}.{name}" if prefix else name
                if t is not None and key in dtypes and t.dtype != dtypes[key]:
                    if isinstance(t, torch.nn.Parameter):
                        t.data = t.data.to(dtypes[key])
                    else:
                        group[name] = t.to(dtypes[key])


def ort_session(path: str | os.PathLike, *, quiet: bool = False):
    """An ONNX Runtime CPU session (warnings off; errors too when ``quiet``: the caller
    reports them)."""
    import onnxruntime as ort
    from landmarknet.runtime import ort_session_options
    opts = ort_session_options()
    opts.log_severity_level = 4 if quiet else 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_outputs(path: str | os.PathLike, feeds: Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
    """Run an ONNX file in ONNX Runtime; feeds by input name."""
    sess = ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values))


def export_onnx(net: CaffeNet, path: str | os.PathLike, *, opset: int | None = None,
                dynamic_batch: bool = False, check: bool = True, seed: int = 0,
                tol: float = DEFAULT_TOL, exporter: str = "torchscript") -> ExportReport:
    """Export ``net`` (its current weights, eval mode) to ONNX and check it in ONNX Runtime.

    ``opset`` None means DEFAULT_OPSET, raised to the first opset that has every operator the
    net needs (AffineAlign's affine_grid needs 20), with a note in the report. Inputs and
    outputs keep their Caffe blob names. Raises ExportError when the export fails; a check
    beyond ``tol`` is reported in the returned report (``report.ok``), not raised.
    """
    if opset is None:
        try:
            return export_onnx(net, path, opset=DEFAULT_OPSET, dynamic_batch=dynamic_batch,
                               check=check, seed=seed, tol=tol, exporter=exporter)
        except ExportError as exc:
            needed = _needed_opset(exc)
            if needed is None or needed <= DEFAULT_OPSET:
                raise
            rep = export_onnx(net, path, opset=needed, dynamic_batch=dynamic_batch,
                              check=check, seed=seed, tol=tol, exporter=exporter)
            rep.notes.insert(0, f"exported at opset {needed}: opset {DEFAULT_OPSET} lacks "
                                f"{_operator_of(exc)}")
            return rep
    path = Path(path)
    if opset < 7:
        raise ExportError(f"opset {opset} is too old; use {DEFAULT_OPSET} or later")
    if dynamic_batch:
        fixed = [f"'{info.node.name}' ({info.node.type}): {_onnx_rule(info.node).fixed_batch}"
                 for info in net.layers.values() if _onnx_rule(info.node).fixed_batch]
        if fixed:
            raise ExportError("--dynamic-batch cannot be used with " + "; ".join(fixed)
                              + ". Export without --dynamic-batch (one file per shape)")
    blocked = not_exportable_layers(net)
    if blocked:  # the registrations say why; say it before torch's exporter fails somewhere deep
        raise ExportError("cannot export: " + "; ".join(b.rstrip(".") for b in blocked)
                          + _cut_hint(net))
    report = ExportReport(path, opset, dynamic_batch, tol)
    if opset < 19:
        ave = ceil_ave_pooling_layers(net)
        if ave:
            report.notes.append(
                f"opset {opset} < 19: ONNX Runtime releases before the opset-19 AveragePool "
                f"fix round ceil-mode average pooling wrongly (this check uses the installed "
                f"one); layers affected: {', '.join(ave[:8])}"
                + (" ..." if len(ave) > 8 else ""))
    names = output_names(net)
    ins = list(input_shapes(net))
    feeds = random_inputs(net, seed)
    # The check compares the blobs feeding saturating outputs too; they are extra outputs of
    # the exported graph while checking and are dropped from the file afterwards.
    report.probes = saturation_probes(net, names) if check else {}
    probes = list(report.probes)
    wrapper = _TupleOutputs(net, names, probes)
    was_training = net.training
    net.eval()
    t0 = time.perf_counter()
    dyn = None
    if dynamic_batch:
        dyn = {n: {0: "batch"} for n in ins}
        dyn.update({n: {0: "batch"} for n in names})
    try:
        args = tuple(torch.from_numpy(feeds[n]) for n in ins)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The TorchScript exporter logs its whole IR (from C++) when an operator is missing;
        # the exception says what matters, so its output is swallowed.
        with warnings.catch_warnings(), _quiet_output():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                # Placeholder names first: the exporter refuses names such as '374' (it uses
                # numbers for its own values); the Caffe names are put back below.
                tmp_in = [f"lnet_input_{i}" for i in range(len(ins))]
                tmp_out = [f"lnet_output_{i}" for i in range(len(names) + len(probes))]
                tmp_dyn = None
                if dyn is not None:
                    tmp_dyn = {n: {0: "batch"} for n in tmp_in + tmp_out}
                torch.onnx.export(wrapper, args, str(path), opset_version=opset, dynamo=False,
                                  input_names=tmp_in, output_names=tmp_out,
                                  dynamic_axes=tmp_dyn, do_constant_folding=True)
            elif exporter == "dynamo":
                if importlib.util.find_spec("onnxscript") is None:
                    raise ExportError("the dynamo exporter needs the onnxscript package "
                                      "(pip install onnxscript); the default torchscript "
                                      "exporter needs nothing more")
                shapes = None
                if dynamic_batch:
                    batch = torch.export.Dim("batch")
                    shapes = tuple({0: batch} for _ in ins)
                torch.onnx.export(wrapper, args, str(path), opset_version=opset, dynamo=True,
                                  input_names=ins, output_names=names + probes,
                                  dynamic_shapes=shapes)
            else:
                raise ExportError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many types; say which net and why
        raise ExportError(f"torch.onnx.export failed for net '{net.caffe_graph.name}': "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        net.train(was_training)
    report.export_seconds = time.perf_counter() - t0
    import onnx
    probe_names = [f"probe:{p}" for p in probes]
    if exporter == "torchscript":
        model = onnx.load(str(path))
        rename_values(model, {**dict(zip(tmp_in, ins)),
                              **dict(zip(tmp_out, names + probe_names))})
        onnx.save(model, str(path))
    elif probes:
        model = onnx.load(str(path))
        rename_values(model, dict(zip(probes, probe_names)))
        onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: the exported model is not valid ONNX: {exc}") from exc
    if not check:
        return report
    t0 = time.perf_counter()
    ref = our_outputs(net, feeds, names, probes)
    got = ort_outputs(path, feeds)
    got.update({p: got.pop(q) for p, q in zip(probes, probe_names)})
    report.checks = compare(ref, got, names)
    report.probe_checks = compare(ref, got, probes) if probes else []
    judge_by_float64(net, feeds, probes, ref, got, report.checks + report.probe_checks, tol)
    if dynamic_batch:
        b0 = next(iter(feeds.values())).shape[0]
        b1 = b0 + 1
        feeds2 = random_inputs(net, seed + 1, batch=b1)
        try:
            ref2 = our_outputs(net, feeds2, names, probes)
        except (LandmarknetError, RuntimeError) as exc:
            report.notes.append(f"not checked at batch {b1}: our own net does not run at that "
                                f"batch ({exc})")
        else:
            try:
                got2 = ort_outputs(path, feeds2)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ExportError(f"{path}: ONNX Runtime cannot run the dynamic-batch model at "
                                  f"batch {b1}: {exc}") from exc
            got2.update({p: got2.pop(q) for p, q in zip(probes, probe_names)})
            report.extra_batch = b1
            report.extra_checks = compare(ref2, got2, names + probes)
            judge_by_float64(net, feeds2, probes, ref2, got2, report.extra_checks, tol)
    report.check_seconds = time.perf_counter() - t0
    if probes:
        drop_outputs(path, probe_names)
    return report


def drop_outputs(path: str | os.PathLike, names: Sequence[str]) -> None:
    """Remove graph outputs (the check's inner blobs) from an ONNX file; the values stay
    computed, since the real outputs depend on them."""
    import onnx
    model = onnx.load(str(path))
    keep = [o for o in model.graph.output if o.name not in set(names)]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _needed_opset(exc: BaseException) -> int | None:
    """The opset an UnsupportedOperatorError says an operator needs ('added in version 20')."""
    import re
    m = re.search(r"added in version (\d+)", str(exc))
    return int(m.group(1)) if m else None


def _operator_of(exc: BaseException) -> str:
    import re
    m = re.search(r"operator '([^']+)'", str(exc))
    return m.group(1) if m else "an operator"


def rename_values(model, mapping: Mapping[str, str]) -> None:
    """Rename graph values (inputs, outputs, node edges) in place; a value that already has a
    wanted name is renamed out of the way first."""
    g = model.graph
    everything = ({i.name for i in g.input} | {o.name for o in g.output}
                  | {t.name for t in g.initializer} | {v.name for v in g.value_info}
                  | {x for n in g.node for x in list(n.input) + list(n.output)})
    full = dict(mapping)
    taken = set(everything) | set(mapping.values())
    for new in mapping.values():
        if new in everything and new not in mapping:
            k, alt = 1, f"{new}__lnet"
            while alt in taken:
                k, alt = k + 1, f"{new}__lnet{k}"
            full[new] = alt
            taken.add(alt)

    def ren(name: str) -> str:
        return full.get(name, name)

    for n in g.node:
        n.input[:] = [ren(x) if x else x for x in n.input]
        n.output[:] = [ren(x) for x in n.output]
    for coll in (g.input, g.output, g.value_info, g.initializer):
        for v in coll:
            v.name = ren(v.name)


def ceil_ave_pooling_layers(net: CaffeNet) -> list[str]:
    """Names of layers that ONNX Runtime before the opset-19 fix computes wrongly (AVE pooling
    that rounds up and is not global), as their registrations tell."""
    out = []
    for info in net.layers.values():
        wrong = _onnx_rule(info.node).wrong_before_opset19
        if wrong is not None and wrong(info.node.param):
            out.append(info.node.name)
    return out


# ---------------------------------------------------------------------------------------------
# caffe2onnx cross-check


@dataclass
class CrossCheck:
    """caffe2onnx's ONNX against ours (and against landmarknet's forward)."""

    onnx_path: Path
    vs_ours: list[OutputCheck]
    vs_torch: list[OutputCheck]
    matched_by: str  # "name" or "position"
    tol: float
    note: str = ""

    @property
    def ok(self) -> bool:
        """Both comparisons within the tolerance."""
        return all(c.rel <= self.tol for c in self.vs_ours + self.vs_torch)

    def render(self) -> str:
        """Lines for the terminal."""
        lines = [f"caffe2onnx wrote {self.onnx_path} (outputs matched by {self.matched_by})"]
        if self.note:
            lines.append(f"note: {self.note}")
        lines += [
                 "caffe2onnx's ONNX vs ours (ONNX Runtime, same input):"]
        lines += ["  " + c.line(self.tol) for c in self.vs_ours]
        lines.append("caffe2onnx's ONNX vs landmarknet's forward:")
        lines += ["  " + c.line(self.tol) for c in self.vs_torch]
        lines.append(("AGREE" if self.ok else "DISAGREE") + " (tolerance "
                     f"{self.tol:g} relative)")
        return "\n".join(lines)


#: Opsets tried, in order, when ONNX Runtime refuses what caffe2onnx stamped (it stamps the
#: installed onnx's default opset and IR version, which ONNX Runtime may not know yet): 21 keeps
#: the modern op semantics it was given; 11 is the opset of onnx 1.6, the version caffe2onnx was
#: written for (its Dropout still has a ``ratio`` attribute, removed in opset 12).
C2O_OPSETS = (21, 11)


def make_ort_loadable(path: str | os.PathLike) -> str:
    """Restamp a caffe2onnx model's opset/IR version until ONNX Runtime loads it ('' if as is)."""
    import onnx
    try:
        ort_session(path, quiet=True)
        return ""
    except Exception:  # onnxruntime's own exception types; try the rewrites below
        pass
    original = onnx.load(str(path))
    stamped = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), 0)
    errors = []
    for opset in C2O_OPSETS:
        model = onnx.ModelProto()
        model.CopyFrom(original)
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = min(o.version, opset)
        model.ir_version = min(model.ir_version,
                               onnx.helper.find_min_ir_version_for(list(model.opset_import)))
        onnx.save(model, str(path))
        try:
            ort_session(path, quiet=True)
        except Exception as exc:  # onnxruntime's own exception types
            errors.append(f"opset {opset}: {str(exc).splitlines()[0][:300]}")
            continue
        return (f"caffe2onnx stamped IR version {original.ir_version} and opset {stamped}, "
                f"which this ONNX Runtime does not load; restamped as IR "
                f"{model.ir_version}, opset {opset}")
    onnx.save(original, str(path))
    raise ExportError(f"caffe2onnx's model {path} does not load in ONNX Runtime, even "
                      "restamped: " + "; ".join(errors))


def caffe2onnx_available() -> bool:
    """Whether the caffe2onnx package can be imported by this interpreter."""
    return importlib.util.find_spec("caffe2onnx") is not None


def run_caffe2onnx(prototxt: str | os.PathLike, caffemodel: str | os.PathLike,
                   out_path: str | os.PathLike, *, timeout: float = 600) -> Path:
    """Convert with caffe2onnx in a subprocess (pure-Python protobuf, as it needs)."""
    if not caffe2onnx_available():
        raise ExportError("--via caffe2onnx needs the caffe2onnx package, which is not "
                          f"installed. Install it with `{CAFFE2ONNX_INSTALL}` (--no-deps: its "
                          "pinned onnx==1.6.0 does not build on modern Python, and it works with "
                          "the onnx landmarknet already has)")
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    cmd = [sys.executable, "-m", "caffe2onnx.convert", "--prototxt", str(prototxt),
           "--caffemodel", str(caffemodel), "--onnx", str(out_path)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExportError(f"caffe2onnx did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0 or not Path(out_path).is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ExportError(f"caffe2onnx failed (exit {proc.returncode}) on {prototxt}:\n{tail}")
    return Path(out_path)


def caffe2onnx_crosscheck(net: CaffeNet, prototxt: str | os.PathLike,
                          caffemodel: str | os.PathLike | None, our_onnx: str | os.PathLike,
                          out_path: str | os.PathLike | None = None, *, seed: int = 0,
                          tol: float = DEFAULT_TOL) -> CrossCheck:
    """Run caffe2onnx on prototxt + caffemodel and compare its ONNX with ours and our forward.

    Without a .caffemodel (weights from .pt/.h5, or random), the net's current weights are
    written to a temporary .caffemodel first, so both converters see the same numbers.
    """
    with tempfile.TemporaryDirectory(prefix="lnet-c2o-") as tmp:
        if caffemodel is None or Path(caffemodel).suffix.lower() != ".caffemodel":
            from landmarknet.params import save_weights
            caffemodel = Path(tmp) / "weights.caffemodel"
            save_weights(net, caffemodel, net.net_param)  # the net's own parse, not a re-read
        out = Path(out_path) if out_path else Path(our_onnx).with_suffix(".caffe2onnx.onnx")
        run_caffe2onnx(prototxt, caffemodel, out)
    note = make_ort_loadable(out)
    feeds = random_inputs(net, seed)
    theirs_sess = ort_session(out, quiet=True)
    their_inputs = [i.name for i in theirs_sess.get_inputs()]
    mapped = dict(feeds)
    if not set(their_inputs) <= set(feeds):
        if len(their_inputs) == len(feeds):
            mapped = {t: v for t, v in zip(their_inputs, feeds.values())}
        else:
            raise ExportError(f"caffe2onnx's model has inputs {their_inputs}, ours "
                              f"{list(feeds)}: cannot feed both the same data")
    try:
        theirs = dict(zip([o.name for o in theirs_sess.get_outputs()],
                          theirs_sess.run(None, {k: mapped[k] for k in their_inputs})))
    except Exception as exc:  # onnxruntime's own exception types
        theirs_shapes = [list(i.shape) for i in theirs_sess.get_inputs()]
        ours_shapes = [list(v.shape) for v in feeds.values()]
        hint = ""
        if theirs_shapes != ours_shapes:
            hint = (f" Its inputs have shapes {theirs_shapes}, ours {ours_shapes}: build with "
                    "--input-shape to match.")
        raise ExportError(f"caffe2onnx's model fails in ONNX Runtime (a caffe2onnx problem, "
                          f"not ours).{hint} {str(exc).strip()[:600]}") from exc
    ours = ort_outputs(our_onnx, feeds)
    torch_out = our_outputs(net, feeds)
    common = [n for n in ours if n in theirs]
    matched_by = "name"
    if not common:
        if len(ours) != len(theirs):
            raise ExportError(f"no output names in common (ours {list(ours)}, caffe2onnx "
                              f"{list(theirs)}) and different counts: cannot compare")
        theirs = {o: v for o, v in zip(ours, theirs.values())}
        common = list(ours)
        matched_by = "position"
    vs_ours = compare({n: ours[n] for n in common}, {n: theirs[n] for n in common},
                      allow_reshape=True)
    vs_torch = compare({n: torch_out[n] for n in common}, {n: theirs[n] for n in common},
                       allow_reshape=True)
    return CrossCheck(out, vs_ours, vs_torch, matched_by, tol, note)
