"""Weights between a built net and files: Caffe blobs by layer name, with a report.

Caffe copies trained weights by matching layer names (Net::CopyTrainedLayersFrom): a layer of the
file that the net lacks is ignored, a layer of the net that the file lacks keeps its fillers, and a
blob whose shape differs is an error. ``load_blobs`` does the same and says what happened.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from landmarknet import memory
from landmarknet.build import CaffeNet
from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.weights import LayerBlobs, read_weights, write_weights
from landmarknet.errors import WeightsError
from landmarknet.graph import layer_name_of
from landmarknet.layers.random_weights import DEFAULT as DEFAULT_RANDOM
from landmarknet.layers.registry import registration_of

PT_SUFFIXES = (".pt", ".pth")


@dataclass
class CopyReport:
    """What a copy by layer name did."""

    copied: list[str] = field(default_factory=list)
    missing_in_file: list[str] = field(default_factory=list)  # net layers with blobs, not in file
    unused_in_file: list[str] = field(default_factory=list)  # file layers the net does not have
    mismatched: list[str] = field(default_factory=list)  # human-readable shape/count problems
    reshaped: list[str] = field(default_factory=list)  # legacy shapes accepted by element count
    skipped: list[str] = field(default_factory=list)  # layers left out on purpose (copy_layers)
    nonfinite: list[str] = field(default_factory=list)  # copied blobs holding NaN or inf

    @property
    def ok(self) -> bool:
        """True when every net layer got its blobs, nothing mismatched and all are finite."""
        return not (self.missing_in_file or self.mismatched or self.nonfinite)

    def problems(self, fit: "FitPolicy") -> list[str]:
        """What makes this copy unacceptable under ``fit`` (empty: acceptable)."""
        out = []
        if self.mismatched and not fit.allow_mismatch:
            out.append(f"{len(self.mismatched)} layer(s) do not fit (allow with "
                       "--allow-mismatch, or strict=False in Python)")
        if self.missing_in_file and not fit.allow_missing:
            out.append(f"{len(self.missing_in_file)} layer(s) of the net are not in the file "
                       "(they would keep their random fillers; allow with --allow-missing, or "
                       "copy chosen layers with --copy-layers)")
        if not self.copied and (self.missing_in_file or self.mismatched or self.unused_in_file):
            out.append("no layer of the file fits the net (is it the weights of another net?)")
        if self.nonfinite and not fit.allow_nonfinite:
            out.append(f"{len(self.nonfinite)} blob(s) hold NaN or infinite values (allow with "
                       "--allow-nonfinite)")
        return out

    def render(self) -> str:
        """A short multi-line text for the terminal."""
        lines = [f"copied {len(self.copied)} layer(s)"]
        for title, items in (("missing in the file (keep their fillers)", self.missing_in_file),
                             ("in the file but not in the net (ignored)", self.unused_in_file),
                             ("shape or count mismatches (not copied)", self.mismatched),
                             ("legacy shapes reshaped", self.reshaped),
                             ("left out on request", self.skipped),
                             ("blobs with NaN or infinite values", self.nonfinite)):
            if items:
                lines.append(f"{title}: {len(items)}")
                lines += [f"  - {x}" for x in items[:50]]
                if len(items) > 50:
                    lines.append(f"  ... and {len(items) - 50} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class FitPolicy:
    """Which imperfect copies are accepted: Caffe accepts none of a shape mismatch."""

    allow_missing: bool = False  # net layers the file lacks keep their fillers
    allow_mismatch: bool = False  # layers whose blobs do not fit keep their fillers
    allow_nonfinite: bool = False  # NaN / inf values are copied as they are


#: The policy load_weights applies when its caller does not say: the CLI sets it for code it
#: reaches only indirectly (training's initial weights).
_FIT_POLICY: contextvars.ContextVar[FitPolicy] = contextvars.ContextVar(
    "landmarknet_fit_policy", default=FitPolicy())


@contextlib.contextmanager
def fit_policy(policy: FitPolicy) -> Iterator[None]:
    """Within the block, load_weights calls that give no policy of their own use ``policy``."""
    token = _FIT_POLICY.set(policy)
    try:
        yield
    finally:
        _FIT_POLICY.reset(token)


def net_blobs(net: CaffeNet) -> list[LayerBlobs]:
    """The net's blobs as Caffe layers hold them (every layer with blobs, in net order)."""
    out = []
    for module, info in net.layers.items():
        if not info.blobs:
            continue
        arrays = [net.blob_tensor(module, i).detach().cpu().numpy().astype(np.float32, copy=True)
                  for i in range(len(info.blobs))]
        out.append(LayerBlobs(info.node.name, info.node.type, arrays))
    return out


def _targets(net: CaffeNet) -> dict[str, str]:
    """Caffe layer name -> module; the first layer of a repeated name wins, as in Caffe."""
    out: dict[str, str] = {}
    for module, info in net.layers.items():
        out.setdefault(info.node.name, module)
    return out


def load_blobs(net: CaffeNet, layers: Iterable[LayerBlobs], *, strict: bool = False,
               select: Callable[[str], bool] | None = None, source: str = "weights",
               fit: FitPolicy | None = None) -> CopyReport:
    """Copy blobs into the net by layer name; ``strict`` raises WeightsError with the report
    when the copy is not acceptable under ``fit`` (default: the current fit_policy)."""
    report = CopyReport()
    targets = _targets(net)
    seen: set[str] = set()
    for src in layers:
        module = targets.get(src.name)
        if module is None:
            if src.blobs:
                report.unused_in_file.append(src.name)
            continue
        if select is not None and not select(src.name):
            report.skipped.append(src.name)
            seen.add(src.name)
            continue
        info = net.layers[module]
        seen.add(src.name)
        if len(src.blobs) != len(info.blobs):
            report.mismatched.append(f"{src.name}: the file has {len(src.blobs)} blob(s), the "
                                     f"layer ({info.node.type}) has {len(info.blobs)}")
            continue
        pending = []
        for i, (arr, slot) in enumerate(zip(src.blobs, info.blobs)):
            want = tuple(slot.shape)
            if tuple(arr.shape) != want:
                legacy = arr.size == math.prod(want) and _legacy_compatible(arr.shape, want)
                adapted = (slot.adapt(np.asarray(arr)) if slot.adapt is not None and not legacy
                           else None)
                if legacy:
                    report.reshaped.append(f"{src.name}[{i}]: {list(arr.shape)} -> {list(want)}")
                    arr = arr.reshape(want)
                elif adapted is not None and tuple(adapted.shape) == want:
                    report.reshaped.append(f"{src.name}[{i}]: {list(arr.shape)} -> {list(want)} "
                                           f"(adapted as the layer's Caffe code does)")
                    arr = adapted
                else:
                    report.mismatched.append(f"{src.name}[{i}]: file {list(arr.shape)}, net "
                                             f"{list(want)}")
                    pending = None
                    break
            pending.append((i, arr))
        if pending is None:
            continue
        with torch.no_grad():
            for i, arr in pending:
                t = net.blob_tensor(module, i)
                t.copy_(torch.from_numpy(np.array(arr, order="C")).to(t.dtype))  # keeps 0-d
                bad = _nonfinite_text(t)
                if bad:
                    report.nonfinite.append(f"{src.name}[{i}]: {bad}")
        report.copied.append(src.name)
    for module, info in net.layers.items():
        name = info.node.name
        if info.blobs and name not in seen and targets.get(name) == module:
            if select is None or select(name):
                report.missing_in_file.append(name)
    problems = report.problems(fit or _FIT_POLICY.get())
    if strict and problems:
        raise WeightsError(f"{source} does not fit the net: {'; '.join(problems)}\n"
                           f"{report.render()}")
    return report


def nonfinite_blobs(layers: Iterable[LayerBlobs]) -> list[str]:
    """'layer[i]: 3 NaN of 100 values' for every blob of a file holding NaN or inf."""
    out = []
    for layer in layers:
        for i, arr in enumerate(layer.blobs):
            text = _nonfinite_text(torch.from_numpy(np.asarray(arr)))
            if text:
                out.append(f"{layer.name}[{i}]: {text}")
    return out


def _nonfinite_text(t: torch.Tensor) -> str:
    """'3 NaN, 1 inf of 1,000 values' for a tensor with non-finite values, else ''."""
    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return ""
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    parts = [f"{nan} NaN"] * bool(nan) + [f"{inf} infinite"] * bool(inf)
    return f"{', '.join(parts)} of {t.numel():,} values"


def _legacy_compatible(file_shape: tuple[int, ...], net_shape: tuple[int, ...]) -> bool:
    """Old files store 1-D and 2-D blobs as 4-D with leading ones, e.g. (1, 1, N, K)."""
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
    return squeeze(file_shape) == squeeze(net_shape)


# ---------------------------------------------------------------------------------------------
# Files


def _pt_to_layers(net: CaffeNet, path: Path) -> list[LayerBlobs]:
    """A PyTorch state_dict file (loaded with weights_only=True) as Caffe layers."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; say which file
        raise WeightsError(f"{path}: not a loadable PyTorch state_dict ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict (a dict of tensors), got "
                           f"{type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: expected a state_dict (names to tensors), but entry "
                               f"{str(key)[:80]!r} is a {type(key).__name__} -> "
                               f"{type(value).__name__}")
        if value.is_complex() or value.is_sparse:
            raise WeightsError(f"{path}: entry {key[:80]!r} is a {value.dtype} "
                               f"{value.layout} tensor; Caffe blobs are dense real numbers")
    out = []
    used: set[str] = set()
    for module, info in net.layers.items():
        keys = [f"{module}.{slot.attr}" for slot in info.blobs]
        if not keys:
            continue
        if not all(k in state for k in keys):
            continue
        used.update(keys)
        out.append(LayerBlobs(info.node.name, info.node.type,
                              [state[k].detach().cpu().float().numpy() for k in keys]))
    for key in state:
        if key not in used:
            layer = layer_name_of(key.rsplit(".", 1)[0])
            out.append(LayerBlobs(layer, "?", [np.asarray(state[key].detach().cpu().float())]))
    return out


def read_net_weights(net: CaffeNet, path: str | os.PathLike) -> list[LayerBlobs]:
    """Any supported weights file as Caffe layers (.caffemodel, .h5/.hdf5, .pt/.pth)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if not path.is_file():  # a folder, or a FIFO that would block the read forever
        raise WeightsError(f"{path}: not a regular file (a folder, FIFO, socket or device)")
    if path.suffix.lower() in PT_SUFFIXES:
        return _pt_to_layers(net, path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        check_hdf5_size(path)
    return read_weights(path)


def check_hdf5_size(path: Path) -> None:
    """Refuse (MemoryLimitError) an HDF5 file whose datasets would decompress beyond budget.

    A few kilobytes of gzip can declare terabytes of zeros; the declared sizes are in the
    file's metadata, read here before any dataset is. Unreadable files are left to the reader,
    which says what is wrong with them.
    """
    try:
        import h5py
    except ImportError:
        return
    datasets: list[tuple[str, int]] = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: datasets.append(
                (name, int(obj.size) * obj.dtype.itemsize))
                if isinstance(obj, h5py.Dataset) else None)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError):
        return
    total = sum(n for _, n in datasets)
    limit, source = memory.resolve_limit(None)
    if limit is not None and total > limit:
        name, biggest = max(datasets, key=lambda d: d[1])
        raise memory.MemoryLimitError(
            f"{path}: its datasets declare {memory.format_size(total)} (the largest, '{name}', "
            f"{memory.format_size(biggest)}), more than the limit of "
            f"{memory.format_size(limit)} ({source}); nothing was read")


def load_weights(net: CaffeNet, path: str | os.PathLike, *, strict: bool = True,
                 select: Callable[[str], bool] | None = None,
                 fit: FitPolicy | None = None) -> CopyReport:
    """Load a weights file into the net by layer name (see load_blobs).

    Strict by default, as Caffe: a blob of another shape, a net layer the file lacks, a file
    that fits no layer, or NaN/inf values raise WeightsError with the report, unless ``fit``
    (or the current fit_policy) allows it; ``select`` copies chosen layers only.
    ``strict=False`` never raises for the fit and returns the report.
    """
    return load_blobs(net, read_net_weights(net, path), strict=strict, select=select,
                      source=str(path), fit=fit)


def save_weights(net: CaffeNet, path: str | os.PathLike,
                 net_param: caffe_pb2.NetParameter | None = None) -> None:
    """Save the net's weights as .caffemodel, .h5/.hdf5 or .pt/.pth, by extension."""
    path = Path(path)
    try:
        if path.suffix.lower() in PT_SUFFIXES:
            tmp = path.with_name(path.name + ".tmp")
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
            os.replace(tmp, path)
            return
        write_weights(path, net_blobs(net), net_param)
    except OSError as exc:  # a folder that does not exist, no permission, a full disk
        raise WeightsError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except ValueError as exc:  # the format cannot hold the net (an HDF5 path from a name)
        raise WeightsError(f"{path}: cannot write: {exc}") from None


def copy_selector(names: Iterable[str] | None = None, upto: str | None = None,
                  net: CaffeNet | None = None) -> Callable[[str], bool]:
    """Which layers to copy: the named ones, or every layer up to and including ``upto``."""
    if names is not None:
        wanted = set(names)
        return lambda name: name in wanted
    if upto is not None:
        if net is None:
            raise ValueError("copy up to a layer needs the target net")
        order = [info.node.name for info in net.layers.values()]
        if upto not in order:
            raise WeightsError(f"--copy-layers: no layer named '{upto}' in the target net")
        keep = set(order[:order.index(upto) + 1])
        return lambda name: name in keep
    return lambda name: True


def layer_selector(spec: str, net: CaffeNet) -> Callable[[str], bool]:
    """``A,B,...`` (layer names) or ``upto:NAME`` as a predicate on layer names; names that
    the net does not have are an error (a typo must not select nothing)."""
    if spec.startswith("upto:"):
        return copy_selector(upto=spec[5:], net=net)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    known = {info.node.name for info in net.layers.values()}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise WeightsError(f"no layer named {unknown or spec!r} in the net (give A,B,... or "
                           "upto:NAME)")
    return copy_selector(names=names)


@dataclass
class Conversion:
    """What convert_weights wrote: the layer count, and the copy report when a net was used."""

    output: Path
    layers: int
    report: CopyReport | None = None


def convert_weights(source: str | os.PathLike, output: str | os.PathLike, *,
                    prototxt: str | os.PathLike | None = None, phase: str = "test",
                    input_shapes: dict | None = None, copy_layers: str | None = None,
                    seed: int = 0, fit: FitPolicy | None = None,
                    max_memory: int | None = None) -> Conversion:
    """Weights from ``source`` to ``output`` (formats by extension: .caffemodel, .h5, .pt).

    Without ``prototxt`` the Caffe blobs go across as they are; with it they are first loaded
    into that net by layer name (``copy_layers``: ``A,B,...`` or ``upto:NAME``), which .pt
    files and partial copies need. Weights that do not fit raise WeightsError unless ``fit``
    (or the current fit_policy) allows it.
    """
    source, output = Path(source), Path(output)
    needs_net = (source.suffix in PT_SUFFIXES or output.suffix in PT_SUFFIXES
                 or copy_layers is not None)
    if needs_net and prototxt is None:
        raise WeightsError(f"{source} -> {output}: PyTorch files and copy_layers need the "
                           "prototxt (the net that maps layer names to module parameters)")
    if prototxt is None:
        return _convert_blobs(source, output, fit or _FIT_POLICY.get())
    return _convert_through_net(source, output, prototxt, phase=phase,
                                input_shapes=input_shapes, copy_layers=copy_layers, seed=seed,
                                fit=fit, max_memory=max_memory)


def _convert_blobs(source: Path, output: Path, fit: FitPolicy) -> Conversion:
    """Caffe blobs from one file to another, no net involved."""
    if source.suffix.lower() in (".h5", ".hdf5") and source.is_file():
        check_hdf5_size(source)
    layers = read_weights(source)
    bad = nonfinite_blobs(layers)
    if bad and not fit.allow_nonfinite:
        raise WeightsError(f"{source}: {len(bad)} blob(s) hold NaN or infinite values "
                           "(allow with --allow-nonfinite):\n"
                           + "\n".join(f"  - {b}" for b in bad[:50]))
    try:
        write_weights(output, layers)
    except OSError as exc:  # a folder that does not exist, no permission, a full disk
        raise WeightsError(f"{output}: cannot write: {exc.strerror or exc}") from None
    except ValueError as exc:  # a layer name the format cannot hold
        raise WeightsError(f"{output}: cannot write: {exc}") from None
    return Conversion(output, len(layers))


def _convert_through_net(source: Path, output: Path, prototxt: str | os.PathLike, *,
                         phase: str, input_shapes: dict | None, copy_layers: str | None,
                         seed: int, fit: FitPolicy | None,
                         max_memory: int | None) -> Conversion:
    """Load ``source`` into the net of ``prototxt`` by layer name, then save it as ``output``."""
    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import read_net

    parsed = read_net(prototxt)
    net = build_net(parsed, phase=phase, input_shapes=dict(input_shapes or {}), seed=seed,
                    max_memory=max_memory)
    # A name the net lacks is an error (a typo must not select nothing).
    select = layer_selector(copy_layers, net) if copy_layers else None
    report = load_weights(net, source, select=select, fit=fit)
    save_weights(net, output, parsed.net)
    return Conversion(output, len(net_blobs(net)), report)


# ---------------------------------------------------------------------------------------------
# Random weights for testing


@torch.no_grad()
def randomize(net: CaffeNet, seed: int) -> None:
    """Seeded random blobs keeping activations of order one, whatever the fillers say: each
    layer's type draws its blobs by its registered rule (landmarknet.layers.random_weights)."""
    gen = torch.Generator().manual_seed(seed)
    for module, info in net.layers.items():
        tensors = [net.blob_tensor(module, i) for i in range(len(info.blobs))]
        shapes = [None if i in info.shared_from else tuple(t.shape)
                  for i, t in enumerate(tensors)]
        reg = registration_of(info.node.type, info.node.param)
        rule = (reg.random if reg is not None and reg.random is not None else DEFAULT_RANDOM)
        for t, value in zip(tensors, rule(shapes, gen)):
            if value is not None:
                t.copy_(value.to(t.dtype))
