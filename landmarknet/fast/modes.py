"""Speed-mode names: the flags, the presets, what ``auto`` measures, and parsing a mode text."""
from __future__ import annotations

from typing import Iterable

import torch

from landmarknet.errors import LandmarknetError

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


class FastError(LandmarknetError):
    """A speed mode that cannot be built for this net or device (the message says why)."""



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
