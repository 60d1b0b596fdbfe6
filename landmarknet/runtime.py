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
  may run on, ``os.sched_getaffinity``), and how idle OpenMP threads wait is chosen by the
  machine's load now (:func:`choose_openmp_waiting`, first thing in the CLI: OpenMP reads it
  once, when torch is imported; 50 ms of /proc/stat). On a busy machine they sleep at once (``OMP_WAIT_POLICY=PASSIVE``):
  spinning threads waiting for a descheduled peer made a run 5-45x slower. On a quiet one they
  spin briefly before sleeping (``GOMP_SPINCOUNT=100000``, about a tenth of a millisecond):
  a small net at batch 1 is a chain of short parallel regions, and waking sleeping threads
  for each of them doubled its time (light3w_68 on two cores: 3.4 ms spinning, 6.5-9.5 ms
  passive). Either is left alone when the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``.
"""
from __future__ import annotations

import os
import time

__all__ = ["usable_cores", "busy_cores", "choose_openmp_waiting", "machine_is_quiet",
           "set_threads", "flush_denormals", "apply_cpu_policy", "ort_session_options"]


def usable_cores() -> int:
    """The number of cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Spin iterations of an idle OpenMP thread before it sleeps on a quiet machine (libgomp's
#: GOMP_SPINCOUNT): long enough to bridge the gaps between one layer and the next, short enough
#: to give the core back between calls.
QUIET_SPINCOUNT = "100000"


def busy_cores(window: float = 0.05) -> float | None:
    """How many cores other processes keep busy now: the non-idle share of all CPU time over
    ``window`` seconds (/proc/stat, Linux), times the number of CPUs; None where unknown.
    Instantaneous on purpose: the load average still counts a run that ended a minute ago."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle
    try:
        t0, i0 = sample()
        time.sleep(window)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    return (1.0 - (i1 - i0) / (t1 - t0)) * (os.cpu_count() or 1)


def machine_is_quiet(busy: float | None = None) -> bool:
    """True when other processes keep less than half a core busy (``busy``: that many cores
    instead of a measurement, :func:`busy_cores`). Unknown: not quiet."""
    if busy is None:
        busy = busy_cores()
    return busy is not None and busy < 0.5


def choose_openmp_waiting(busy: float | None = None) -> str:
    """Set how idle OpenMP threads wait, by how busy the machine is now (module doc; ``busy``:
    cores kept busy by others, measured when None), unless the user chose; returns what was
    decided ("user", "spin" or "passive"). Call it before torch is imported: OpenMP reads
    these variables once."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "user"
    if machine_is_quiet(busy):
        os.environ["GOMP_SPINCOUNT"] = QUIET_SPINCOUNT
        return "spin"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"


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
