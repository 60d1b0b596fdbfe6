"""Timing several callables fairly against each other (shared by ``auto`` and the benchmarks)."""
from __future__ import annotations

import time
from typing import Callable, Mapping

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
