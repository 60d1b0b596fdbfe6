"""The CPU policy of every command: how many threads, and denormal numbers flushed to zero.

Two things make a CPU run many times slower than it should be, and neither shows in the code:

* **Denormal numbers.** Trained weights can drive activations below float32's normal range
  (about 1.2e-38); x86 cores without flush-to-zero take a microcode slow path for every such
  value (measured on an Intel Xeon: a shipped heatmap net 221 ms eager, 35 ms with flushing).
  Flushing them to zero changes results by less than 1e-37 absolute, far below any tolerance,
  so inference flushes them: torch's ``set_flush_denormal`` (the FTZ/DAZ bits of the calling
  thread, inherited by the threads it starts later: hence set before any parallel work) and
  ONNX Runtime's ``session.set_denormal_as_zero``.
* **Oversubscription.** torch, OpenCV and ONNX Runtime each start a thread per core; on a
  machine where another process keeps a core busy, spinning OpenMP threads wait for the one
  that is descheduled, and a run slows down far more than in proportion. Every command sets
  the thread count of all three deliberately (``--threads``, default: the cores this process
  may run on, ``os.sched_getaffinity``), and OpenMP threads sleep at once instead of spinning
  when idle (``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: it must be set before torch
  is imported, so :func:`prefer_passive_openmp` runs first thing in the CLI).
"""
from __future__ import annotations

import os

__all__ = ["usable_cores", "prefer_passive_openmp", "set_threads", "flush_denormals",
           "apply_cpu_policy", "ort_session_options"]


def usable_cores() -> int:
    """The number of cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def prefer_passive_openmp() -> None:
    """Let idle OpenMP threads sleep rather than spin (unless the user chose); call it before
    torch is imported, since OpenMP reads the variable once."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int) -> None:
    """The same intra-op thread count for torch and OpenCV (ONNX Runtime takes it per session,
    see :func:`ort_session_options`)."""
    import torch
    torch.set_num_threads(threads)
    try:
        import cv2
        cv2.setNumThreads(threads)
    except ImportError:
        pass


def flush_denormals(enabled: bool = True) -> bool:
    """Flush denormal float32 values to zero in torch's CPU kernels; False where the CPU
    cannot (torch then leaves them as they are)."""
    import torch
    return bool(torch.set_flush_denormal(enabled))


def apply_cpu_policy(threads: int | None = None, *, flush: bool = True) -> int:
    """Threads for torch and OpenCV (default: the usable cores) and, with ``flush``, denormals
    flushed to zero; returns the thread count."""
    threads = threads or usable_cores()
    set_threads(threads)
    if flush:
        flush_denormals(True)
    return threads


def ort_session_options(threads: int | None = None, *, flush: bool = True):
    """ONNX Runtime session options with the same policy: intra-op threads (default: the
    usable cores), one inter-op thread, denormals as zero."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1
    if flush:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    return opts
