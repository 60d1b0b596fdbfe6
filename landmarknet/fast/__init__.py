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
                  request, see kernels.TUNE_KERNELS); a kernel whose output differs from
                  the direct convolution by more than 1e-4 relative is never chosen
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

from landmarknet.fast.fold import fold_batchnorm
from landmarknet.fast.kernels import KERNELS, FastConv, fuse_convolutions, tune_convolutions
from landmarknet.fast.modes import (AUTO_CANDIDATES, AUTO_COMPILE_CANDIDATES, FLAGS, PRESETS,
                                    FastError, mode_name, parse_mode)
from landmarknet.fast.runner import FastNet, conv_kernel_report, optimize_for_inference
from landmarknet.fast.timing import time_calls
from landmarknet.fast.winograd import winograd_conv3x3, winograd_weights

__all__ = ["FLAGS", "PRESETS", "AUTO_CANDIDATES", "AUTO_COMPILE_CANDIDATES", "KERNELS",
           "FastError", "FastNet", "FastConv", "parse_mode", "mode_name", "fold_batchnorm",
           "fuse_convolutions", "tune_convolutions", "optimize_for_inference",
           "winograd_conv3x3", "winograd_weights", "time_calls", "conv_kernel_report"]
