"""FastNet and optimize_for_inference: a copy of a built net prepared in a speed mode, or the
fastest of the device's candidate modes (``auto``)."""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from landmarknet.build import CaffeNet
from landmarknet.fast.fold import fold_batchnorm
from landmarknet.fast.kernels import FastConv, fuse_convolutions, tune_convolutions
from landmarknet.fast.modes import (AUTO_CANDIDATES, AUTO_COMPILE_CANDIDATES, AUTO_MODES,
                                    FastError, mode_name, parse_mode)
from landmarknet.fast.timing import time_calls

class _TupleOut(nn.Module):
    """net(*x) -> tuple of outputs in a fixed order (for jit.trace and CUDA graphs)."""

    def __init__(self, net: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.net, self.names = net, list(names)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(*xs)
        return tuple(out[n] for n in self.names)


class _CudaGraphRunner:
    """Captures ``fn`` once per input shapes/dtypes and replays it."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], warmup: int = 2) -> None:
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = tuple((tuple(x.shape), x.dtype, x.stride()) for x in xs)
        entry = self.graphs.get(key)
        if entry is None:
            static_in = [x.clone() for x in xs]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.fn(*static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(*static_in)
            entry = self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        for s, x in zip(static_in, xs):
            s.copy_(x)
        graph.replay()
        return static_out


@dataclass
class FastNet:
    """A net prepared for inference: ``fast(*inputs) -> {blob: float32 tensor}``."""

    fn: Callable[..., tuple[torch.Tensor, ...]]
    flags: frozenset[str]
    device: torch.device
    input_names: list[str]
    output_names: list[str]
    module: nn.Module | None = None
    plan: dict[str, str] = field(default_factory=dict)  # FastConv module -> kernel ('tune')
    folded: list[str] = field(default_factory=list)  # folded-away BatchNorm/Scale modules
    timings: dict[str, float] = field(default_factory=dict)  # 'auto': mode -> median ms
    build_seconds: float = 0.0
    copy_outputs: bool = True

    @property
    def mode(self) -> str:
        return mode_name(self.flags)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """An input as the mode wants it: device, dtype, memory format."""
        x = torch.as_tensor(x).to(self.device)
        if "bf16" in self.flags and x.is_floating_point():
            x = x.to(torch.bfloat16)
        if "channels_last" in self.flags and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise FastError(f"the net takes {len(self.input_names)} input(s) "
                            f"({', '.join(self.input_names)}), got {len(inputs)}")
        xs = [self.prepare(x) for x in inputs]
        ctx = torch.inference_mode() if "inference" in self.flags else torch.no_grad()
        with ctx:
            outs = self.fn(*xs)
            res = {}
            for name, y in zip(self.output_names, outs):
                if y.is_floating_point() and y.dtype != torch.float32:
                    y = y.float()
                elif self.copy_outputs and "cuda_graph" in self.flags:
                    y = y.clone()  # the graph's static output is overwritten by the next replay
                res[name] = y.contiguous()
        return res

    def describe(self) -> str:
        """One line: mode, kernels chosen, folded layers."""
        parts = [self.mode]
        if self.plan:
            counts: dict[str, int] = {}
            for k in self.plan.values():
                counts[k] = counts.get(k, 0) + 1
            parts.append("convs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if self.folded:
            parts.append(f"folded {len(self.folded)} BatchNorm/Scale layer(s)")
        return "; ".join(parts)


def _output_names(net: CaffeNet, example: Sequence[torch.Tensor]) -> list[str]:
    with torch.no_grad():
        return list(net(*example).keys())


def _example(net: CaffeNet, example_inputs, device: torch.device) -> list[torch.Tensor]:
    if example_inputs is None:
        gen = torch.Generator().manual_seed(0)
        shapes = [net.blob_shapes[n] for n in net.input_names]
        return [torch.randn(s, generator=gen).to(device) for s in shapes]
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = [example_inputs]
    if isinstance(example_inputs, Mapping):
        example_inputs = [example_inputs[n] for n in net.input_names]
    return [torch.as_tensor(x).to(device) for x in example_inputs]


def _net_device(net: nn.Module) -> torch.device:
    for t in list(net.parameters()) + list(net.buffers()):
        return t.device
    return torch.device("cpu")


def optimize_for_inference(net: CaffeNet, mode: str = "auto",
                           example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
                           *, device: str | torch.device | None = None,
                           tune_rounds: int = 5, auto_repeats: int = 5,
                           kernels: Sequence[str] | None = None) -> FastNet:
    """A FastNet for ``net`` in ``mode`` (see the module docstring); ``net`` is left as is.

    ``example_inputs`` (positional tensors, one tensor, or a dict by input name; default: the
    prototxt's input shapes, seeded random) are what ``tune``, ``jit``, ``auto`` and
    ``cuda_graph`` measure, trace or capture. ``kernels`` limits what ``tune`` may choose.
    """
    dev = torch.device(device) if device is not None else _net_device(net)
    example = _example(net, example_inputs, dev)
    if mode in AUTO_MODES:
        return _auto(net, example, dev, tune_rounds, auto_repeats, kernels,
                     with_compile=mode == "auto-compile")
    flags = parse_mode(mode, dev)
    t0 = time.perf_counter()
    gm = copy.deepcopy(net).to(dev).eval()
    for p in gm.parameters():
        p.requires_grad_(False)
    names = _output_names(gm, example)
    folded = fold_batchnorm(gm) if "fold" in flags else []
    plan: dict[str, str] = {}
    if "fuse" in flags:
        fuse_convolutions(gm, "mkldnn" if dev.type == "cpu" else "cudnn")
    if "bf16" in flags:
        gm = gm.to(torch.bfloat16)
    if "channels_last" in flags:
        gm = gm.to(memory_format=torch.channels_last)
    fast = FastNet(fn=lambda *xs: (), flags=flags, device=dev, input_names=list(net.input_names),
                   output_names=names, module=gm, folded=folded)
    xs = [fast.prepare(x) for x in example]
    if "tune" in flags:
        plan = tune_convolutions(gm, xs, rounds=tune_rounds, kernels=kernels)
    elif "fuse" in flags:
        plan = {n: m.impl for n, m in gm.named_modules() if isinstance(m, FastConv)}
    fast.plan = plan
    wrapped = _TupleOut(gm, names).eval()
    fn: Callable = wrapped
    if "jit" in flags:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapped, tuple(xs), check_trace=False)
            traced = torch.jit.freeze(traced.eval())
            fn = torch.jit.optimize_for_inference(traced)
    if "compile" in flags:
        fn = _compiled(gm, names, xs, dev, "cuda_graph" in flags, "inference" in flags)
    elif "cuda_graph" in flags:
        fn = _CudaGraphRunner(fn)
    fast.fn = fn
    with contextlib.ExitStack() as stack:  # first call: compiles, captures, warms up
        stack.enter_context(torch.inference_mode() if "inference" in flags else torch.no_grad())
        fn(*xs)
    fast.build_seconds = time.perf_counter() - t0
    return fast


def _compiled(gm: nn.Module, names: Sequence[str], xs: Sequence[torch.Tensor],
              dev: torch.device, graphs: bool, inference: bool) -> Callable:
    """``gm`` torch.compile'd and compiled now, under the grad mode it will be called in
    (inference tensors and normal ones are different guards) and, on CPU, with inductor's
    freezing (weights as constants, oneDNN weight prepacking). The GraphModule itself is
    compiled, not a wrapper: its generated forward is a code object of its own, so compiled
    nets do not share dynamo's per-code recompile budget."""
    import torch._inductor.config as inductor_config
    mode = "reduce-overhead" if graphs else None
    compiled = torch.compile(gm, mode=mode)  # static first; a new batch size -> dynamic batch
    patch = inductor_config.patch(freezing=True) if dev.type == "cpu" else contextlib.nullcontext()
    grad = torch.inference_mode() if inference else torch.no_grad()
    with patch, grad, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled(*xs)
        compiled(*xs)

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = compiled(*args)
        return tuple(out[n] for n in names)
    return fn


def _auto(net: CaffeNet, example: list[torch.Tensor], dev: torch.device, tune_rounds: int,
          repeats: int, kernels, with_compile: bool = False) -> FastNet:
    """Build every candidate of the device, time them together, keep the fastest."""
    built: dict[str, FastNet] = {}
    errors: dict[str, str] = {}
    modes = AUTO_CANDIDATES.get(dev.type, AUTO_CANDIDATES["cpu"])
    if with_compile:
        modes += AUTO_COMPILE_CANDIDATES.get(dev.type, ())
    for mode in modes:
        try:
            built[mode] = optimize_for_inference(net, mode, example, device=dev,
                                                 tune_rounds=tune_rounds, kernels=kernels)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot be built is skipped
            errors[mode] = f"{type(exc).__name__}: {exc}"
    if not built:
        raise FastError("no inference mode could be built: " +
                        "; ".join(f"{m}: {e}" for m, e in errors.items()))
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    times = time_calls({m: (lambda f=f: f(*example)) for m, f in built.items()},
                       repeats=repeats, warmup=1, sync=sync)
    med = {m: 1e3 * statistics.median(v) for m, v in times.items()}
    best = min(med, key=med.get)
    fast = built[best]
    fast.timings = med
    return fast


def conv_kernel_report(fast: FastNet) -> list[dict]:
    """Per FastConv: module, kernel chosen, measured ms per kernel (after 'tune')."""
    rows = []
    if fast.module is None:
        return rows
    for name, mod in fast.module.named_modules():
        if isinstance(mod, FastConv):
            rows.append({"module": name, "weight": list(mod.weight.shape), "kernel": mod.impl,
                         "times_ms": {k: round(v, 4) for k, v in mod.times_ms.items()}})
    return rows
