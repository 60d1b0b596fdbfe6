"""Inference benchmarks of one net: landmarknet eager and fast, ONNX Runtime, OpenCV DNN.

``run_bench(model, ...)`` returns one :class:`Row` per backend and batch size. ``model`` is a
bundle folder (``deploy.prototxt`` + ``.caffemodel`` [+ ``model.json``]) or a ``.prototxt``
(seeded random weights then). Backends:

``eager``        the built net as it is, ``net(x)`` under ``torch.no_grad()``
``fast``         :func:`landmarknet.fast.optimize_for_inference` (``mode``, default ``auto``:
                 the fastest candidate of the device, measured on this batch)
``onnxruntime``  ONNX Runtime (CPU provider) on our ONNX export of the same net and batch
``opencv``       ``cv2.dnn.readNetFromCaffe`` on the same prototxt and a .caffemodel (the
                 bundle's, or the random weights written by ``save_weights``); Caffe ``Python``
                 layers, which OpenCV cannot run by itself, are registered as OpenCV custom
                 layers (``cv2.dnn_registerLayer``) that call landmarknet's implementation, as
                 Caffe itself would call the layer's Python code

Every backend runs with the same number of threads (``torch.set_num_threads``,
``cv2.setNumThreads``, ORT ``intra_op_num_threads``). Per batch size all backends are timed in
the same rounds (each round calls each backend once: load from other processes falls on all
alike), after ``warmup`` calls each; the median over rounds is reported, with the largest
relative difference of the outputs from eager's on the same input (``max |d| / max |eager|``
over outputs). A backend that cannot run (no ONNX Runtime, OpenCV refusing a layer, no CUDA)
is a row with ``skipped`` saying why, never an exception.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from landmarknet.build import CaffeNet, build_from_graph, net_graph
from landmarknet.graph import Graph
from landmarknet.runtime import ort_session_options, set_threads
from landmarknet.errors import LandmarknetError

BACKENDS = ("eager", "fast", "onnxruntime", "opencv")
BACKEND_LABELS = {"eager": "landmarknet eager", "fast": "landmarknet fast",
                  "onnxruntime": "onnxruntime", "opencv": "opencv dnn"}


class BenchError(LandmarknetError):
    """A benchmark that cannot be set up as asked (bad model path, batch, device...)."""


@dataclass
class Row:
    """One measured (or skipped) configuration."""

    backend: str
    device: str
    batch: int
    dtype: str
    median_ms: float | None
    images_per_s: float | None
    skipped: str | None = None
    max_rel_diff: float | None = None
    mode: str = ""
    note: str = ""
    repeats: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, "") or k in (
            "median_ms", "images_per_s")}


@dataclass
class BenchModel:
    """A net to benchmark: prototxt, weights file (None: random), the built net at batch 1."""

    name: str
    prototxt: Path
    weights: Path | None
    net: CaffeNet
    seed: int = 0
    macs_per_image: int = 0

    @property
    def input_names(self) -> list[str]:
        return list(self.net.input_names)

    def input_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.net.blob_shapes[name])

    def at_batch(self, batch: int) -> CaffeNet:
        """The same net (same weights) built for inputs of this batch size."""
        shapes = {n: (batch,) + self.input_shape(n)[1:] for n in self.input_names}
        # The graph of the batch-1 net: neither parsed nor filtered again.
        net = build_from_graph(self.net.caffe_graph, input_shapes=shapes)
        net.load_state_dict(self.net.state_dict())
        return net.eval()


def load_model(model: str | os.PathLike, *, seed: int = 0) -> BenchModel:
    """A bundle name or folder, or a prototxt -> BenchModel (batch 1, eval mode)."""
    from landmarknet.params import load_weights, randomize
    path = Path(model)
    weights: Path | None = None
    if not path.exists():
        from landmarknet.infer import ModelError
        from landmarknet.models import resolve_bundle
        try:
            path = resolve_bundle(model)
        except ModelError as exc:
            raise BenchError(f"{exc}; or give a .prototxt") from None
    if path.is_dir():
        if (path / "model.json").is_file():
            from landmarknet.infer import ModelSpec
            spec = ModelSpec.read(path)
            spec.verify()
            prototxt, weights, name = spec.prototxt, spec.weights, spec.name
        else:
            prototxt = path / "deploy.prototxt"
            found = sorted(path.glob("*.caffemodel"))
            if not prototxt.is_file() or len(found) != 1:
                raise BenchError(f"{path}: a model folder needs deploy.prototxt and one "
                                 f".caffemodel (or a model.json naming them)")
            weights, name = found[0], path.name
    elif path.is_file():
        if path.suffix.lower() != ".prototxt":
            raise BenchError(f"{path}: give a bundle folder or a .prototxt (got a "
                             f"{path.suffix or 'suffix-less'} file)")
        prototxt, name = path, path.parent.name if path.stem == "deploy" else path.stem
    else:
        raise BenchError(f"{path}: no such model folder or prototxt")
    graph = net_graph(prototxt)  # parsed and filtered once, built once at batch 1
    net = build_from_graph(graph, input_shapes=_batch_one(graph))
    if weights is not None:
        load_weights(net, weights, strict=True)
    else:
        randomize(net, seed)
    net.eval()
    return BenchModel(name, prototxt, weights, net, seed, macs_per_image(net))


def _batch_one(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Shapes that make the graph's declared inputs batch 1 (unknown shapes stay unknown)."""
    return {i.name: (1, *i.shape[1:]) for i in graph.inputs if i.shape and i.shape[0] != 1}


def macs_per_image(net: CaffeNet) -> int:
    """Multiply-accumulates of one image (landmarknet.analyze's count / batch)."""
    from landmarknet.analyze import analyze
    stats = analyze(net)
    batch = stats.batch or 1
    return int(stats.totals.macs // batch)


def parse_batches(text: str) -> list[int]:
    """'1,32' -> [1, 32] (positive, no duplicates)."""
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise BenchError(f"--batch expects sizes like 1,32; got {text!r}") from None
    if not out or min(out) <= 0:
        raise BenchError(f"--batch expects positive sizes like 1,32; got {text!r}")
    return list(dict.fromkeys(out))


def random_batch(model: BenchModel, batch: int, seed: int = 0) -> list[torch.Tensor]:
    """Seeded N(0, 1) inputs of the net's input shapes at this batch."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((batch,) + model.input_shape(n)[1:], generator=gen)
            for n in model.input_names]


def rel_diff(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float | None:
    """max over common outputs of max |got - ref| / max |ref|."""
    worst = None
    for k, r in ref.items():
        if k not in got:
            continue
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(got[k], dtype=np.float64).reshape(r.shape)
        scale = np.abs(r).max() if r.size else 0.0
        d = np.abs(g - r).max() if r.size else 0.0
        v = float(d / scale) if scale > 0 else float(d)
        worst = v if worst is None else max(worst, v)
    return worst


def _np(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Backends: each returns (call, outputs-as-numpy-of-one-call, mode, note) or raises _Skip
# ---------------------------------------------------------------------------------------------

class _Skip(Exception):
    """This backend cannot run here; the message says why."""


@dataclass
class _Prepared:
    call: Callable[[], object]
    outputs: Callable[[], dict[str, np.ndarray]]
    mode: str = ""
    note: str = ""


def _eager(net: CaffeNet, xs: list[torch.Tensor]) -> _Prepared:
    def call():
        with torch.no_grad():
            return net(*xs)
    return _Prepared(call, lambda: _np(call()), "eager")


def _fast(net: CaffeNet, xs: list[torch.Tensor], mode: str, device: torch.device) -> _Prepared:
    from landmarknet.fast import optimize_for_inference
    fast = optimize_for_inference(net, mode, xs, device=device)

    def call():
        return fast(*xs)
    note = fast.describe()
    if fast.timings:
        note += "; auto: " + ", ".join(f"{m} {t:.2f} ms" for m, t in fast.timings.items())
    return _Prepared(call, lambda: _np(call()), fast.mode, note)


def _onnxruntime(net: CaffeNet, xs: list[torch.Tensor], threads: int, tmp: Path,
                 batch: int) -> _Prepared:
    try:
        import onnxruntime as ort
    except ImportError:
        raise _Skip("onnxruntime is not installed (pip install onnxruntime)") from None
    from landmarknet.export import export_onnx
    path = tmp / f"model_b{batch}.onnx"
    try:
        export_onnx(net, path, check=False)
    except LandmarknetError as exc:
        raise _Skip(f"ONNX export failed: {exc}") from None
    opts = ort_session_options(threads)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        raise _Skip(f"ONNX Runtime cannot load the export: {exc}") from None
    names = [o.name for o in sess.get_outputs()]
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)}

    def call():
        return sess.run(names, feeds)
    return _Prepared(call, lambda: dict(zip(names, call())), "CPUExecutionProvider",
                     f"ORT {ort.__version__}, opset export, ORT_ENABLE_ALL")


# OpenCV custom layers for Caffe "Python" layers: one registration per process; each OpenCV
# layer instance takes the next landmarknet module with the same (module, layer, param_str).
_PY_LAYERS: dict[tuple[str, str, str], list[torch.nn.Module]] = {}
_PY_NEXT: dict[tuple[str, str, str], int] = {}
_PY_REGISTERED = False


class _OpenCVPythonLayer:
    """An OpenCV DNN custom layer running a Caffe Python layer through landmarknet."""

    def __init__(self, params, blobs) -> None:
        key = (str(params.get("module", "")), str(params.get("layer", "")),
               str(params.get("param_str", "")))
        mods = _PY_LAYERS.get(key)
        if not mods:
            raise RuntimeError(f"no landmarknet implementation registered for Python layer "
                               f"{key[1]!r} of module {key[0]!r}")
        i = _PY_NEXT.get(key, 0)
        self.module = mods[i % len(mods)]
        _PY_NEXT[key] = i + 1

    def _run(self, arrays):
        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        # OpenCV's Python binding reads a 3-D array (N, R, C) as a 2-D image of C channels;
        # a trailing axis of 1 keeps it an N-D blob (the layers after it flatten from axis 1).
        return [o.float().numpy()[..., None] if o.dim() == 3 else o.float().numpy()
                for o in outs]

    def getMemoryShapes(self, inputs):  # noqa: N802 - OpenCV's name
        outs = self._run([np.zeros(tuple(s), np.float32) for s in inputs])
        return [list(o.shape) for o in outs]

    def forward(self, inputs):
        return self._run(inputs)


def _register_python_layers(net: CaffeNet) -> int:
    global _PY_REGISTERED
    import cv2
    _PY_LAYERS.clear()
    _PY_NEXT.clear()
    n = 0
    for module, info in net.layers.items():
        if info.node.type != "Python":
            continue
        pp = info.node.param.python_param
        key = (pp.module, pp.layer, pp.param_str)
        _PY_LAYERS.setdefault(key, []).append(net.get_submodule(module))
        n += 1
    if n and not _PY_REGISTERED:
        cv2.dnn_registerLayer("Python", _OpenCVPythonLayer)
        _PY_REGISTERED = True
    return n


def _opencv(model: BenchModel, net: CaffeNet, xs: list[torch.Tensor], threads: int,
            tmp: Path) -> _Prepared:
    try:
        import cv2
    except ImportError:
        raise _Skip("OpenCV (cv2) is not installed") from None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise _Skip(f"this OpenCV ({cv2.__version__}) has no Caffe importer "
                    "(opencv-python-headless<5 has it)")
    weights = model.weights
    if weights is None or weights.suffix.lower() != ".caffemodel":
        from landmarknet.params import save_weights
        weights = tmp / "model.caffemodel"
        save_weights(model.net, weights, model.net.net_param)
    n_py = _register_python_layers(model.net)
    cv2.setNumThreads(threads)
    try:
        cvnet = cv2.dnn.readNetFromCaffe(str(model.prototxt), str(weights))
    except cv2.error as exc:
        raise _Skip(f"cv2.dnn.readNetFromCaffe refuses the net: {_cv_msg(exc)}") from None
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    arrays = [np.ascontiguousarray(x.numpy()) for x in xs]
    in_names = model.input_names
    outs = _opencv_outputs(net)  # our output blob -> the OpenCV layer that writes it

    def call():
        for name, a in zip(in_names, arrays):
            cvnet.setInput(a, name)
        return cvnet.forward(list(outs.values()))

    try:
        call()
    except cv2.error as exc:
        raise _Skip(f"OpenCV DNN cannot run the net: {_cv_msg(exc)}") from None

    def outputs():
        return dict(zip(outs.keys(), call()))
    note = f"OpenCV {cv2.__version__}"
    if n_py:
        note += f"; {n_py} Caffe Python layer(s) as OpenCV custom layers calling landmarknet"
    return _Prepared(call, outputs, "DNN_BACKEND_OPENCV", note)


def _cv_msg(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _opencv_outputs(net: CaffeNet) -> dict[str, str]:
    """Output blob -> name of the layer whose first top writes it last (OpenCV's address)."""
    with torch.no_grad():
        names = list(net(*[torch.zeros(net.blob_shapes[n]) for n in net.input_names]).keys())
    g = net.caffe_graph
    writer: dict[str, str] = {}
    for node in g.nodes:
        if node.tops:
            writer[g.blob_of[node.tops[0]]] = node.name
    return {b: writer[b] for b in names if b in writer}


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def run_bench(model: str | os.PathLike | BenchModel, *, device: str = "cpu",
              batches: Sequence[int] = (1, 32), backends: Sequence[str] = BACKENDS,
              threads: int | None = None, repeats: int = 20, warmup: int = 3,
              max_seconds: float | None = None, mode: str = "auto", seed: int = 0,
              log: Callable[[str], None] | None = None) -> list[Row]:
    """Build every backend per batch size, time them in the same rounds; one Row each."""
    from landmarknet.fast import time_calls
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise BenchError(f"unknown backend(s) {', '.join(bad)}; choose from {', '.join(BACKENDS)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: this torch build sees no CUDA device "
                         f"(torch {torch.__version__})")
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda, got {device!r}")
    if repeats < 1 or warmup < 0:
        raise BenchError("repeats must be >= 1 and warmup >= 0")
    bm = model if isinstance(model, BenchModel) else load_model(model, seed=seed)
    threads = threads or torch.get_num_threads()
    set_threads(threads)
    log = log or (lambda s: None)
    rows: list[Row] = []
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    with tempfile.TemporaryDirectory(prefix="landmarknet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for batch in batches:
            net = bm.at_batch(batch)
            xs_cpu = random_batch(bm, batch, seed)
            prepared: dict[str, _Prepared] = {}
            skipped: dict[str, str] = {}
            for b in backends:
                log(f"{bm.name} batch {batch}: preparing {b}")
                try:
                    if b == "eager":
                        netd = net.to(dev)
                        xs = [x.to(dev) for x in xs_cpu]
                        prepared[b] = _eager(netd, xs)
                    elif b == "fast":
                        prepared[b] = _fast(net, [x.to(dev) for x in xs_cpu], mode, dev)
                    elif dev.type != "cpu":
                        raise _Skip(f"{b} is benchmarked on CPU only")
                    elif b == "onnxruntime":
                        prepared[b] = _onnxruntime(net.cpu(), xs_cpu, threads, tmp, batch)
                    elif b == "opencv":
                        prepared[b] = _opencv(bm, net.cpu(), xs_cpu, threads, tmp)
                except _Skip as exc:
                    skipped[b] = str(exc)
                except Exception as exc:  # noqa: BLE001 - a backend failing is a row, not a crash
                    skipped[b] = f"failed: {type(exc).__name__}: {exc}"
                    log(traceback.format_exc())
            ref = None
            if "eager" in prepared:
                ref = prepared["eager"].outputs()
            else:
                with torch.no_grad():
                    ref = _np(net.cpu()(*xs_cpu))
            diffs: dict[str, float | None] = {}
            for b, p in list(prepared.items()):
                try:
                    diffs[b] = rel_diff(ref, p.outputs())
                except Exception as exc:  # noqa: BLE001
                    skipped[b] = f"failed: {type(exc).__name__}: {exc}"
                    del prepared[b]
            log(f"{bm.name} batch {batch}: timing {', '.join(prepared)}")
            times = time_calls({b: p.call for b, p in prepared.items()}, repeats=repeats,
                               warmup=warmup, max_seconds=max_seconds, sync=sync)
            for b in backends:
                label = BACKEND_LABELS[b]
                if b in skipped:
                    rows.append(Row(label, dev.type, batch, "fp32", None, None, skipped[b]))
                    continue
                p = prepared[b]
                ms = 1e3 * statistics.median(times[b])
                dtype = "bf16" if "bf16" in p.mode else "fp32"
                rows.append(Row(label, dev.type, batch, dtype, round(ms, 4),
                                round(batch / (ms / 1e3), 2), None,
                                None if diffs.get(b) is None else float(f"{diffs[b]:.3g}"),
                                p.mode, p.note, len(times[b])))
            del prepared
    return rows


def environment(threads: int | None = None) -> dict:
    """Versions and machine, for the record."""
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "threads": threads or torch.get_num_threads(),
           "cpu": _cpu_model(), "cores": os.cpu_count()}
    for mod in ("cv2", "onnxruntime", "onnx"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rows_json(rows: Sequence[Row], **extra) -> str:
    """``{"rows": [...], ...extra}`` as indented JSON (NaN timings as null)."""
    from landmarknet.jsontext import json_text
    return json_text({"rows": [r.as_dict() for r in rows], **extra}, indent=1)


def render_table(rows: Sequence[Row], *, ratio_to: str | None = "opencv dnn",
                 notes: bool = True) -> str:
    """A plain-text table; 'vs <ratio_to>' = median_ms / that backend's at the same batch
    and device (below 1: faster)."""
    ref = {(r.device, r.batch): r.median_ms for r in rows
           if r.backend == ratio_to and r.median_ms}
    head = f"{'backend':<18} {'device':<6} {'batch':>5} {'dtype':<5} {'median ms':>10} " \
           f"{'images/s':>10} {'max rel diff':>12}"
    if ratio_to:
        head += f" {'vs ' + ratio_to.split()[0]:>10}"
    lines = [head, "-" * len(head)]
    foot = []
    for r in rows:
        if r.median_ms is None:
            lines.append(f"{r.backend:<18} {r.device:<6} {r.batch:>5} {r.dtype:<5} "
                         f"{'skipped':>10}  {r.skipped}")
            continue
        diff = "-" if r.max_rel_diff is None else f"{r.max_rel_diff:.1e}"
        line = (f"{r.backend:<18} {r.device:<6} {r.batch:>5} {r.dtype:<5} {r.median_ms:>10.2f} "
                f"{r.images_per_s:>10.1f} {diff:>12}")
        if ratio_to:
            base = ref.get((r.device, r.batch))
            line += f" {r.median_ms / base:>10.2f}" if base else f" {'-':>10}"
        lines.append(line)
        if notes and r.note and (r.backend, r.note) not in [(b, n) for b, n in foot]:
            foot.append((r.backend, r.note))
    if notes and foot:
        lines.append("")
        lines += [f"{b}: {n}" for b, n in foot]
    return "\n".join(lines)


__all__ = ["BACKENDS", "BenchError", "Row", "BenchModel", "load_model", "macs_per_image",
           "parse_batches", "set_threads", "random_batch", "rel_diff", "run_bench",
           "environment", "rows_json", "render_table"]
