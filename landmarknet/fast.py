"""Inference speed modes: a built net made faster for inference, with the same numbers.

``optimize_for_inference(net, mode, example_inputs)`` returns a :class:`FastNet`, a callable
``fast(*inputs) -> {blob: tensor}`` like the net's own forward (inputs positional in
``net.input_names`` order, outputs float32 NCHW). The net itself is never changed: every mode
works on a copy. A mode is a ``+``-joined set of flags, or a preset name:

================  ==========================================================================
flag              what it does
================  ==========================================================================
``inference``     run under ``torch.inference_mode`` (the eager baseline uses ``no_grad``)
``channels_last`` weights and inputs in NHWC memory order (oneDNN's and cuDNN's native one)
``fold``          BatchNorm (+ Scale/Bias) folded into the preceding Convolution, in float64:
                  ``W' = W * a``, ``b' = b * a + c`` with Caffe's statistics ``blob / s``
``fuse``          (implies ``fold``) each Convolution (+ the ReLU that follows it) becomes
                  one call: on CPU (fp32) prepacked oneDNN (weights reordered once, ReLU
                  fused), on CUDA cuDNN's fused convolution + bias + ReLU
``tune``          (CPU, fp32; implies ``fuse``) each convolution measured on the example
                  input with every kernel that applies, the fastest kept: prepacked oneDNN
                  or Winograd F(4x4, 3x3) (3x3 stride 1: 4x fewer multiply-adds; NNPACK on
                  request, see TUNE_KERNELS); a kernel whose output differs from the direct
                  convolution by more than 1e-4 relative is never chosen
``jit``           ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``
``compile``       ``torch.compile`` (inductor; weights frozen as constants on CPU); with
                  ``cuda_graph`` the ``reduce-overhead`` mode (CUDA graphs inside)
``bf16``          weights and inputs in bfloat16 (outputs returned as float32)
``cuda_graph``    (CUDA) the forward captured once per input shape and replayed
================  ==========================================================================

Presets: ``eager`` (no flag), ``fast`` (``inference+channels_last+tune`` on CPU,
``inference+bf16+channels_last+cuda_graph`` on CUDA) and ``auto``: the candidate modes of the
device (:data:`AUTO_CANDIDATES`) are each built and timed on ``example_inputs`` and the fastest
is returned; its ``timings`` say what was measured. ``auto-compile`` measures the torch.compile
candidates too. Speed modes are chosen for the shapes of ``example_inputs``; other shapes still
run (``cuda_graph`` captures again, ``tune`` keeps its choices).

Numerics: ``inference``, ``channels_last``, ``fold``, ``fuse``, ``jit`` and ``compile`` compute
the same convolutions in another order (differences of a few float32 ulps, 1e-5 relative on
the shipped nets); Winograd and NNPACK round differently (1e-5 .. 1e-4 relative; OpenCV DNN
uses Winograd for its 3x3 convolutions too); ``bf16`` has bfloat16's 8-bit mantissa (about
1e-2 relative). tests/test_fast.py checks each mode against the eager net.
"""
from __future__ import annotations

import contextlib
import copy
import math
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from landmarknet.build import CaffeNet
from landmarknet.errors import LandmarknetError
from landmarknet.layers.activation import ReLU
from landmarknet.layers.conv import CaffeConvolution
from landmarknet.layers.norm import CaffeBatchNorm, CaffeBias, CaffeScale

FLAGS = ("inference", "channels_last", "fold", "fuse", "tune", "jit", "compile", "bf16",
         "cuda_graph")
PRESETS = {
    "eager": {"cpu": "", "cuda": ""},
    "fast": {"cpu": "inference+channels_last+tune",
             "cuda": "inference+bf16+channels_last+cuda_graph"},
}
#: What ``mode="auto"`` measures, per device type; ``"auto-compile"`` adds the torch.compile
#: candidates (2-10 s of compiling per shape here, a C++ compiler needed on CPU). On the
#: 2-core CPU of docs/performance.md compile won on squeeze77 (4.0 against 4.6 ms) and was
#: level with ``fuse`` on the heatmap nets (45-46 ms, ``tune`` 38-39), so it is worth
#: measuring, not worth always paying.
AUTO_CANDIDATES = {
    "cpu": ("inference+channels_last+tune", "inference+channels_last+fuse",
            "inference+channels_last+fold+jit"),
    "cuda": ("inference+bf16+channels_last+cuda_graph", "inference+bf16+channels_last",
             "inference+channels_last+cuda_graph"),
}
AUTO_COMPILE_CANDIDATES = {
    "cpu": ("inference+channels_last+fold+compile",),
    "cuda": ("inference+fold+bf16+channels_last+compile+cuda_graph",),
}
AUTO_MODES = ("auto", "auto-compile")
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


class FastError(LandmarknetError):
    """A speed mode that cannot be built for this net or device (the message says why)."""


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------

def parse_mode(mode: str, device: str | torch.device = "cpu") -> frozenset[str]:
    """'inference+fold' or a preset -> the set of flags, implied flags added; checked."""
    dev = torch.device(device).type
    text = PRESETS[mode].get(dev, PRESETS[mode]["cpu"]) if mode in PRESETS else mode
    flags = {f.strip() for f in text.split("+") if f.strip()}
    unknown = sorted(flags - set(FLAGS))
    if unknown:
        raise FastError(f"unknown mode flag(s) {', '.join(unknown)} in {mode!r}; flags are "
                        f"{', '.join(FLAGS)}, presets {', '.join(PRESETS)} and 'auto'")
    if "tune" in flags:
        flags.add("fuse")
    if "fuse" in flags:
        flags.add("fold")
        if "tune" in flags and dev != "cpu":
            raise FastError(f"mode {mode!r}: 'tune' chooses among CPU kernels (oneDNN, "
                            f"Winograd, NNPACK); on {dev} use fuse, channels_last, bf16, "
                            "compile, cuda_graph")
        if "bf16" in flags and dev == "cpu":
            raise FastError(f"mode {mode!r}: the CPU 'fuse'/'tune' kernels are float32; "
                            "drop bf16")
    if "cuda_graph" in flags and dev != "cuda":
        raise FastError(f"mode {mode!r}: CUDA graphs need a CUDA device, not {dev}")
    if "jit" in flags and ("fuse" in flags or "compile" in flags):
        raise FastError(f"mode {mode!r}: 'jit' goes with neither 'fuse'/'tune' nor 'compile'")
    if "compile" in flags and "fuse" in flags:
        raise FastError(f"mode {mode!r}: 'compile' does its own fusion; drop 'fuse'/'tune'")
    return frozenset(flags)


def mode_name(flags: Iterable[str]) -> str:
    """The canonical text of a flag set (FLAGS order), 'eager' for none."""
    s = set(flags)
    return "+".join(f for f in FLAGS if f in s) or "eager"


# ---------------------------------------------------------------------------------------------
# BatchNorm / Scale folding
# ---------------------------------------------------------------------------------------------

def _batchnorm_affine(bn: CaffeBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) in float64 with ``bn(x) = a * x + c`` per channel (global statistics)."""
    s = bn.scale_factor.detach().double()
    factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
    mean = bn.mean.detach().double() * factor
    var = bn.variance.detach().double() * factor
    a = 1.0 / torch.sqrt(var + bn.eps)
    return a, -mean * a


def _foldable(gm: fx.GraphModule, node: fx.Node, channels: int) -> tuple[str, nn.Module] | None:
    """('bn'|'scale'|'bias', module) when ``node`` is a per-channel affine layer of one bottom
    that can be folded into a convolution of ``channels`` outputs; else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    mod = gm.get_submodule(node.target)
    if isinstance(mod, CaffeBatchNorm):
        use_global = mod.use_global_stats
        if use_global is False or (use_global is None and mod.training):
            return None  # batch statistics: not an affine map of x
        return ("bn", mod) if mod.channels == channels else None
    if isinstance(mod, CaffeScale):
        if mod.weight is None or mod.axis != 1 or tuple(mod.weight.shape) != (channels,):
            return None
        if mod.bias is not None and tuple(mod.bias.shape) != (channels,):
            return None
        return "scale", mod
    if isinstance(mod, CaffeBias):
        if mod.bias is None or mod.axis != 1 or tuple(mod.bias.shape) != (channels,):
            return None
        return "bias", mod
    return None


def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold BatchNorm / Scale / Bias chains into the Convolution before them, IN PLACE.

    A chain is folded when each layer is the only user of the one before it (so no other
    layer, and no net output, sees the convolution's raw output). The folded convolution gets
    new Parameter objects (weights shared with other layers through ``param { name }`` stay
    untouched). Returns the names of the folded-away modules.
    """
    folded: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1:
            continue
        conv = gm.get_submodule(node.target)
        if not isinstance(conv, CaffeConvolution):
            continue
        k = conv.weight.shape[0]
        chain: list[tuple[fx.Node, str, nn.Module]] = []
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.args[:1] != (cur,):
                break
            hit = _foldable(gm, nxt, k)
            if hit is None:
                break
            chain.append((nxt, *hit))
            cur = nxt
        if not chain:
            continue
        a = torch.ones(k, dtype=torch.float64, device=conv.weight.device)
        c = torch.zeros_like(a)
        for _, kind, mod in chain:  # y = a*x + c, then the next layer on y
            if kind == "bn":
                a2, c2 = _batchnorm_affine(mod)
            elif kind == "scale":
                a2 = mod.weight.detach().double()
                c2 = mod.bias.detach().double() if mod.bias is not None else torch.zeros_like(a)
            else:
                a2, c2 = torch.ones_like(a), mod.bias.detach().double()
            a, c = a * a2, c * a2 + c2
        w = conv.weight.detach().double() * a.view(-1, 1, 1, 1)
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
        dtype = conv.weight.dtype
        conv.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        conv.bias = nn.Parameter((b * a + c).to(dtype), requires_grad=False)
        last = chain[-1][0]
        last.replace_all_uses_with(node)
        for n, _, _ in reversed(chain):
            gm.graph.erase_node(n)
            folded.append(str(n.target))
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


# ---------------------------------------------------------------------------------------------
# Convolution kernels
# ---------------------------------------------------------------------------------------------

# Winograd F(4x4, 3x3) (Lavin & Gray 2016; points 0, +-1, +-2, inf), in float64.
_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                   dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                  dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
_WINO_M = 4  # output tile
_WINO_A = 6  # input tile


_KBT = torch.kron(_BT, _BT)  # (36, 36): B^T d B of a 6x6 tile as one product
_KAT = torch.kron(_AT, _AT)  # (16, 36): A^T m A


def winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> U (36, C, K): ``G g G^T`` of each filter, index ``xi * 6 + nu``."""
    k, c = weight.shape[:2]
    u = torch.einsum("xi,kcij,yj->xyck", _G, weight.detach().double().cpu(), _G)
    return u.reshape(_WINO_A * _WINO_A, c, k).to(weight.dtype).contiguous()


class _Scratch(threading.local):
    """Per-thread scratch buffers shared by all Winograd layers (they run one after another):
    large temporaries are allocated once instead of per call (fresh pages cost a page fault
    each, and glibc returns big blocks to the system between calls)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, slot: str, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        key = (slot, like.dtype, like.device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):  # usable both inside and outside inference mode
                buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self.buffers[key] = buf
        return buf[:n].view(*shape)


_SCRATCH = _Scratch()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None,
                     pad: tuple[int, int], relu: bool) -> torch.Tensor:
    """3x3 stride-1 convolution of (N, C, H, W) by Winograd F(4x4, 3x3); channels_last out.

    The 6x6 input tiles (stride 4; channels contiguous) are gathered as (36, tiles x C) and
    transformed by one (36 x 36) product ``kron(B^T, B^T)``, multiplied by the pre-transformed
    weights ``u`` as 36 batched (tiles x C) @ (C x K) products (4x fewer multiply-adds than
    the direct 3x3 convolution), and transformed back by one (16 x 36) product to 4x4 outputs.
    """
    m, a = _WINO_M, _WINO_A
    n, c, h, w = x.shape
    k = u.shape[2]
    ph, pw = pad
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-ho // m), -(-wo // m)
    hp, wp = th * m + 2, tw * m + 2
    p = n * th * tw
    xh = x.permute(0, 2, 3, 1)  # NHWC view (a copy only when x is not channels_last)
    xp = F.pad(xh, (0, 0, pw, wp - w - pw, ph, hp - h - ph)).contiguous()
    tiles = xp.as_strided((a, a, n, th, tw, c),
                          (wp * c, c, hp * wp * c, m * wp * c, m * c, 1))
    gathered = _SCRATCH.get("tiles", (a, a, n, th, tw, c), x)
    gathered.copy_(tiles)
    v = _SCRATCH.get("v", (a * a, p * c), x)
    torch.matmul(_KBT.to(x.dtype), gathered.view(a * a, p * c), out=v)   # (36, P*C)
    prod = _SCRATCH.get("prod", (a * a, p, k), x)
    torch.bmm(v.view(a * a, p, c), u, out=prod)                           # (36, P, K)
    y = _SCRATCH.get("y", (m * m, p * k), x)
    torch.matmul(_KAT.to(x.dtype), prod.view(a * a, p * k), out=y)       # (16, P*K): (r, s)
    y = y.view(m, m, n, th, tw, k).permute(2, 3, 0, 4, 1, 5)             # (N, i, r, j, s, K)
    out = torch.empty((n, ho, wo, k), dtype=x.dtype, device=x.device)
    if (ho, wo) == (th * m, tw * m):  # whole tiles: (N, i, r, j, s, K) is out's own order
        dst = out.view(n, th, m, tw, m, k)
    else:
        y = y.reshape(n, th * m, tw * m, k)[:, :ho, :wo]
        dst = out
    if bias is not None:
        torch.add(y, bias, out=dst)
    else:
        dst.copy_(y)
    if relu:
        out.relu_()
    return out.permute(0, 3, 1, 2)


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


# ---------------------------------------------------------------------------------------------
# The fast net
# ---------------------------------------------------------------------------------------------

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


def time_calls(fns: Mapping[str, Callable[[], object]], *, repeats: int = 10, warmup: int = 2,
               max_seconds: float | None = None, sync: Callable[[], None] | None = None,
               blocks: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` timed calls each.

    After ``warmup`` untimed calls of each, the timed calls come in ``blocks`` blocks: in each
    block every function runs in turn (the order rotating from block to block), one untimed
    call first and then its share of the repeats back to back. Blocks spread load from other
    processes over all functions; the untimed call at each switch keeps one backend's thread
    pool, still spinning after its last call (OpenMP, ONNX Runtime, OpenCV all spin a while),
    from slowing the next backend's timed calls. ``max_seconds`` stops early (after at least
    one timed call each).
    """
    sync = sync or (lambda: None)
    names = list(fns)
    for k in names:
        for _ in range(warmup):
            fns[k]()
        sync()
    out: dict[str, list[float]] = {k: [] for k in names}
    repeats = max(1, repeats)
    blocks = max(1, min(blocks, repeats))
    start = time.perf_counter()
    for b in range(blocks):
        share = repeats // blocks + (1 if b < repeats % blocks else 0)
        order = names[b % len(names):] + names[:b % len(names)] if names else []
        for k in order:
            if b > 0 or warmup == 0 or len(names) > 1:
                fns[k]()  # switch-over call, untimed
                sync()
            for _ in range(share):
                t0 = time.perf_counter()
                fns[k]()
                sync()
                out[k].append(time.perf_counter() - t0)
                if max_seconds is not None and time.perf_counter() - start > max_seconds \
                        and all(out.values()):
                    break
        if max_seconds is not None and time.perf_counter() - start > max_seconds \
                and all(out[k] for k in names):
            break
    return out


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


__all__ = ["FLAGS", "PRESETS", "AUTO_CANDIDATES", "AUTO_COMPILE_CANDIDATES", "KERNELS",
           "FastError", "FastNet", "FastConv", "parse_mode", "mode_name", "fold_batchnorm",
           "fuse_convolutions", "tune_convolutions", "optimize_for_inference",
           "winograd_conv3x3", "winograd_weights", "time_calls", "conv_kernel_report"]
