"""Memory budgets: what a net will need, known before anything is allocated.

The builder learns every blob's shape on the ``meta`` device, so the bytes a net needs (its
parameters and buffers, and its activations: every top blob, as Caffe keeps them all) are known
before a single real tensor exists. A net that asks for more than the budget is refused with
the layer that asks for the most, instead of torch's "DefaultCPUAllocator: can't allocate
memory" from deep inside a converter, or the kernel's OOM killer.

The budget is ``--max-memory`` (``max_memory=`` in Python, or the ``memory_limit`` block), by
default the memory this machine has available now (``MemAvailable`` in /proc/meminfo), or the
free memory of the CUDA device the net is built on.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from dataclasses import dataclass
from typing import Iterator

import torch

from landmarknet.errors import LandmarknetError

#: ``memory_limit(None)``: the machine's available memory; 0: no limit.
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "landmarknet_memory_limit", default=None)

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryLimitError(LandmarknetError):
    """A net, a weights file or an image that would need more memory than the budget."""


def parse_size(text: str) -> int:
    """'16G', '512M', '1.5GB', '2e9', '0' or 'none' (no limit) -> bytes (0: no limit)."""
    t = text.strip().upper().replace("IB", "").rstrip("B") if text else ""
    if t in ("NONE", "0", "UNLIMITED", "OFF"):
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d*)?(?:E\d+)?)\s*([KMGT]?)", t)
    if m is None or len(text) > 32:
        raise ValueError(f"expected a size such as 8G, 512M or 2e9 bytes ('none': no limit), "
                         f"got {text[:32]!r}")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"a memory size must be at least 1 byte, got {text!r}")
    return int(value)


def format_size(n: float) -> str:
    """Bytes for people: '80 GB', '1.2 MB', '512 B' (powers of 1000, as disks and RAM ads)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            v = n / size
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
    return f"{int(n)} B"


@contextlib.contextmanager
def memory_limit(limit: int | None) -> Iterator[None]:
    """Within the block, builds that give no max_memory use ``limit`` bytes (0: no limit,
    None: the machine's available memory)."""
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes free for a net on ``device`` now; None when the system does not say."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):  # no CUDA here: the build itself will say so
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_limit(max_memory: int | None, device: str | torch.device = "cpu",
                  ) -> tuple[int | None, str]:
    """The budget in bytes (None: unlimited) and where it comes from, for messages."""
    if max_memory is None:
        max_memory = _LIMIT.get()
        if max_memory is None:
            avail = available_memory(device)
            where = "the memory available on this machine now" if torch.device(device).type \
                != "cuda" else f"the free memory of {device}"
            return avail, f"{where}; set another with --max-memory"
        return (max_memory or None), "--max-memory"
    return (max_memory or None), "--max-memory"


@dataclass
class Demand:
    """One thing a net allocates: a layer's blobs or a layer's outputs."""

    layer: str
    type: str
    what: str  # "weights" or "outputs"
    bytes: int
    values: int


@dataclass
class MemoryEstimate:
    """What a net needs, in bytes, and its largest single demand."""

    params: int
    activations: int
    factor: int  # 2 for training (every blob gets a gradient, as Caffe's diff), else 1
    largest: Demand | None

    @property
    def total(self) -> int:
        """Bytes the net needs in all."""
        return (self.params + self.activations) * self.factor

    def summary(self) -> str:
        """'1.2 GB (weights 1 GB, outputs of all layers 200 MB)'."""
        text = (f"{format_size(self.total)} (weights {format_size(self.params)}, outputs of "
                f"all layers {format_size(self.activations)}")
        if self.factor == 2:
            text += ", times 2 for their gradients in training"
        return text + ")"


def check(estimate: MemoryEstimate, max_memory: int | None, device: str | torch.device,
          what: str = "the net") -> None:
    """Raise MemoryLimitError when the estimate exceeds the budget."""
    limit, source = resolve_limit(max_memory, device)
    if limit is None or estimate.total <= limit:
        return
    big = estimate.largest
    head = ""
    if big is not None and big.what == "input":
        head = (f"input '{big.layer}' ({big.type}) needs "
                f"{format_size(big.bytes * estimate.factor)} ({big.values:,} values); ")
    elif big is not None:
        head = (f"layer '{big.layer}' ({big.type}) needs {format_size(big.bytes * estimate.factor)}"
                f" for its {big.what} ({big.values:,} values); ")
    raise MemoryLimitError(f"{head}{what} needs {estimate.summary()}, more than the limit of "
                           f"{format_size(limit)} ({source}); nothing was allocated")
