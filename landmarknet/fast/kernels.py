"""FastConv (a Convolution + ReLU with a choice of kernel), fusing a net's convolutions into
FastConvs (the ``fuse`` flag) and timing their kernels to keep the fastest (the ``tune`` flag)."""
from __future__ import annotations

import time
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from landmarknet.fast.modes import FastError
from landmarknet.fast.winograd import winograd_conv3x3, winograd_weights
from landmarknet.layers.activation import ReLU
from landmarknet.layers.conv import CaffeConvolution

#: Convolution kernels a FastConv can run, and those ``tune`` tries by default. NNPACK is left
#: out by default: alone it beats oneDNN on the 7x7 stage convolutions (0.35 against 0.53 ms)
#: and on 3x3 ones at 56x56 and 112x112, but inside a whole net it was slower each time
#: (its own thread pool and OpenMP's spinning threads compete for the cores between layers:
#: heatmap4_68 batch 1, 48-51 ms with it against 46-47 ms without), which per-layer timing
#: cannot see.
KERNELS = ("mkldnn", "winograd", "nnpack", "aten")
TUNE_KERNELS = ("mkldnn", "winograd")
TUNE_TOL = 1e-4  # relative (max |diff| / max |direct|) above which a kernel is rejected
#: Another kernel replaces the first candidate (prepacked oneDNN) only when it measures at most
#: this fraction of its time: alone, with its weights hot in cache, Winograd looks better than
#: it does inside the net (its transformed weights are 4x larger); marginal wins (conv2_1 of
#: heatmap4_68: 0.86) turned into whole-net losses on heatmap3_68 (46 against 43 ms).
TUNE_MARGIN = 0.8


def _mkldnn_ok() -> bool:
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


def _nnpack_ok() -> bool:
    try:
        return bool(torch.backends.nnpack.is_available())  # also initialises NNPACK
    except Exception:  # noqa: BLE001 - a build without NNPACK raises various errors
        return False


class FastConv(nn.Module):
    """A Caffe Convolution (+ ReLU) for inference with a choice of kernel.

    ``impl``: 'mkldnn' (weights reordered once for oneDNN, ReLU fused, channels_last out),
    'winograd' (F(4x4, 3x3), 3x3 stride 1 only), 'nnpack' (torch's NNPACK binding: Winograd
    for 3x3, FFT for larger kernels; NCHW), 'cudnn' (CUDA: ``torch.cudnn_convolution_relu``,
    convolution, bias and ReLU in one cuDNN call instead of a convolution, a broadcast bias
    add and a ReLU pass), 'aten' (F.conv2d, the reference).
    """

    def __init__(self, conv: CaffeConvolution, relu: bool, name: str = "") -> None:
        super().__init__()
        self.name = name
        # buffers, so that .to(dtype / device / memory_format) converts them
        self.register_buffer("weight", conv.weight.detach().clone(), persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone(),
                             persistent=False)
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.dilation, self.groups = tuple(conv.dilation), conv.groups
        self.relu = relu
        self.impl = "aten"
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}
        self._wino = None
        self.times_ms: dict[str, float] = {}

    def kernels(self) -> list[str]:
        """The kernels that apply to this layer, on its device, in this build."""
        out = []
        if self.weight.is_cuda:
            if self.relu and hasattr(torch, "cudnn_convolution_relu"):
                out.append("cudnn")
            return out + ["aten"]
        if self.weight.dtype != torch.float32:
            return ["aten"]
        if _mkldnn_ok():
            out.append("mkldnn")
        kh, kw = self.weight.shape[2:]
        plain = self.dilation == (1, 1) and self.groups == 1
        if plain and (kh, kw) == (3, 3) and self.stride == (1, 1):
            out.append("winograd")
        if plain and self.stride == (1, 1) and _nnpack_ok():
            out.append("nnpack")
        out.append("aten")
        return out

    def set_impl(self, impl: str, input_shape: Sequence[int] | None = None) -> None:
        """Choose the kernel (and prepare its weights)."""
        if impl not in self.kernels():
            raise FastError(f"layer '{self.name}': kernel {impl!r} does not apply "
                            f"(available: {', '.join(self.kernels())})")
        if impl == "mkldnn" and input_shape is not None:
            self._packed_weight(tuple(input_shape))
        elif impl == "winograd" and self._wino is None:
            self._wino = winograd_weights(self.weight)
        self.impl = impl

    def _packed_weight(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weights reordered for oneDNN for inputs of this shape (oneDNN picks the blocked
        layout by input size; without it, it picks a much slower one), cached per shape."""
        packed = self._packed.get(shape)
        if packed is None:
            if len(self._packed) >= 4:
                self._packed.clear()
            packed = self._packed[shape] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, list(self.padding), list(self.stride), list(self.dilation),
                self.groups, list(shape))
        return packed

    def release(self) -> None:
        """Drop the prepared weights of the kernels not in use."""
        if self.impl != "mkldnn":
            self._packed = {}
        if self.impl != "winograd":
            self._wino = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.impl
        if impl == "mkldnn":
            return torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(tuple(x.shape)), self.bias, list(self.padding),
                list(self.stride), list(self.dilation), self.groups,
                "relu" if self.relu else "none", [], "")
        if impl == "winograd":
            return winograd_conv3x3(x, self._wino, self.bias, self.padding, self.relu)
        if impl == "cudnn":  # one cuDNN call: convolution + bias + ReLU
            try:
                return torch.cudnn_convolution_relu(x, self.weight, self.bias,
                                                    list(self.stride), list(self.padding),
                                                    list(self.dilation), self.groups)
            except RuntimeError as exc:  # this cuDNN / dtype has no such fused kernel
                warnings.warn(f"layer '{self.name}': cuDNN's fused convolution+ReLU failed "
                              f"({str(exc).splitlines()[0][:120]}); using F.conv2d + relu_")
                self.impl = "aten"
        if impl == "nnpack":  # NCHW in and out: back to channels_last, as the others give
            y = torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias,
                                                  list(self.padding), list(self.stride))
            y = y.contiguous(memory_format=torch.channels_last)
        else:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                         self.groups)
        return y.relu_() if self.relu else y

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, stride={self.stride}, pad={self.padding}, "
                f"relu={self.relu}, impl={self.impl}")


def fuse_convolutions(gm: fx.GraphModule, impl: str = "mkldnn") -> list[str]:
    """Replace each single-bottom 2-D Convolution (and a ReLU that is its only user, slope 0)
    by a FastConv, IN PLACE; returns the FastConv module names."""
    made = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1:
            continue
        conv = gm.get_submodule(node.target)
        if not isinstance(conv, CaffeConvolution) or conv.weight.dim() != 4:
            continue
        relu_node = None
        if len(node.users) == 1:
            nxt = next(iter(node.users))
            if (nxt.op == "call_module" and nxt.args == (node,) and not nxt.kwargs
                    and isinstance(gm.get_submodule(nxt.target), ReLU)
                    and gm.get_submodule(nxt.target).negative_slope == 0.0):
                relu_node = nxt
        fc = FastConv(conv, relu_node is not None, name=str(node.target))
        avail = fc.kernels()
        fc.set_impl(impl if impl in avail else avail[0])
        gm.add_submodule(str(node.target), fc)  # replaces the CaffeConvolution
        if relu_node is not None:
            relu_node.replace_all_uses_with(node)
            gm.graph.erase_node(relu_node)
        made.append(str(node.target))
    if made:
        gm.graph.lint()
        gm.recompile()
    return made


def _rel_diff(ref: torch.Tensor, got: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    d = (ref.float() - got.float()).abs().max().item()
    return d / scale if scale > 0 else d


class _Tuner(fx.Interpreter):
    """Runs the graph once; at each FastConv, times its kernels on the real input (the output
    of the kernels chosen before it) and keeps the fastest that agrees with F.conv2d."""

    def __init__(self, gm: fx.GraphModule, rounds: int = 5,
                 kernels: Sequence[str] | None = None) -> None:
        super().__init__(gm)
        self.rounds, self.only = rounds, kernels

    def call_module(self, target, args, kwargs):
        mod = self.module.get_submodule(target)
        if not isinstance(mod, FastConv):
            return super().call_module(target, args, kwargs)
        x = args[0]
        only = TUNE_KERNELS if self.only is None else self.only
        cands = [k for k in mod.kernels() if k in only]
        mod.set_impl("aten")
        ref = mod(x)
        ok: dict[str, float] = {}
        times: dict[str, list[float]] = {}
        for k in cands:
            try:
                mod.set_impl(k, tuple(x.shape))
                got = mod(x)
            except Exception:  # noqa: BLE001 - a kernel that fails here is not chosen
                continue
            if got.shape == ref.shape and _rel_diff(ref, got) <= TUNE_TOL:
                ok[k] = 0.0
                times[k] = []
        for _ in range(self.rounds):  # interleaved, so that noise hits every kernel alike
            for k in ok:
                mod.set_impl(k, tuple(x.shape))
                mod(x)
                t0 = time.perf_counter()
                mod(x)
                times[k].append(time.perf_counter() - t0)
        mod.times_ms = {k: 1e3 * min(v) for k, v in times.items()}
        best = min(mod.times_ms, key=mod.times_ms.get) if mod.times_ms else "aten"
        first = next(iter(mod.times_ms), best)
        if mod.times_ms.get(best, 0.0) > TUNE_MARGIN * mod.times_ms.get(first, 0.0):
            best = first
        mod.set_impl(best, tuple(x.shape))
        mod.release()
        return mod(x)


def tune_convolutions(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], *,
                      rounds: int = 5, kernels: Sequence[str] | None = None) -> dict[str, str]:
    """Choose each FastConv's kernel by timing on ``example_inputs``; returns {module: kernel}."""
    with torch.inference_mode():
        _Tuner(gm, rounds, kernels).run(*example_inputs)
    return {n: m.impl for n, m in gm.named_modules() if isinstance(m, FastConv)}
