"""What the CPU policy (landmarknet.runtime) buys: denormal flushing and thread handling.

Runs `landmarknet bench` (batch 1, eager / fast / ONNX Runtime / OpenCV DNN) in fresh
processes pinned to the same cores, under each configuration:

  policy       flush denormals, OMP_WAIT_POLICY=PASSIVE, threads = usable cores (the default
               on a busy machine)
  no-flush     --keep-denormals
  spin-omp     GOMP_SPINCOUNT=100000 (idle OpenMP threads spin ~0.1 ms, then sleep: the default
               on a quiet machine, see landmarknet.runtime)
  active-omp   OMP_WAIT_POLICY=ACTIVE (OpenMP threads spin while idle: torch's own default)
and each of them again with another process keeping one of those cores busy (`+busy`).

    python benchmarks/bench_cpu_policy.py [--models heatmap4_68,...] [--cores 0,1]
                                          [--configs policy,no-flush] [--repeats 20]
Prints one table: median ms per backend, and each configuration's ratio to `policy`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ["heatmap4_68_bn", "heatmap4_68", "heatmap4_5", "squeeze77"]  # installed bundle names
BACKENDS = "eager,fast,onnxruntime,opencv"
CONFIGS = {  # name -> (extra CLI arguments, extra environment)
    "policy": ([], {"OMP_WAIT_POLICY": "PASSIVE"}),
    "no-flush": (["--keep-denormals"], {"OMP_WAIT_POLICY": "PASSIVE"}),
    "spin-omp": ([], {"GOMP_SPINCOUNT": "100000"}),
    "active-omp": ([], {"OMP_WAIT_POLICY": "ACTIVE"}),
}


def busy_process(core: int) -> subprocess.Popen:
    """A process spinning on one core (the 'loaded machine')."""
    code = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def bench(model: str, cores: set[int], args: list[str], env: dict, repeats: int) -> dict:
    """One `landmarknet bench --json` run pinned to ``cores``; returns backend -> median ms."""
    cmd = [sys.executable, "-c",
           f"import os, sys; os.sched_setaffinity(0, {sorted(cores)!r}); "
           "from landmarknet.cli.main import main; sys.exit(main())",
           "bench", model, "--batch", "1", "--backends", BACKENDS, "--repeats", str(repeats),
           "--json", *args]
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full_env.update(env)
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"bench failed for {model} {args} {env}:\n{out.stderr[-2000:]}")
    rows = json.loads(out.stdout)["rows"]
    return {r["backend"]: r["median_ms"] for r in rows}


def main() -> int:
    """Run the matrix and print the table."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--cores", default="0,1", help="cores the benchmark may use")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--no-busy", action="store_true", help="skip the loaded-machine runs")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    cores = {int(c) for c in a.cores.split(",")}
    results = []
    for model in a.models.split(","):
        for name in a.configs.split(","):
            extra, env = CONFIGS[name]
            for busy in ([False] if a.no_busy else [False, True]):
                proc = busy_process(min(cores)) if busy else None
                try:
                    time.sleep(0.2 if busy else 0)
                    ms = bench(model, cores, extra, env, a.repeats)
                finally:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
                label = name + ("+busy" if busy else "")
                results.append((Path(model).name, label, ms))
                print(f"{Path(model).name:16s} {label:18s} " + "  ".join(
                    f"{b} {v:.2f}" if v else f"{b} -" for b, v in ms.items()), flush=True)
    print("\nmedian ms at batch 1 (ratio to the default policy on the same load)")
    backends = list(results[0][2]) if results else []
    print(f"| model | config | {' | '.join(backends)} | fastest landmarknet / OpenCV |")
    print("|---|---|" + "---:|" * (len(backends) + 1))
    base = {(m, busy): ms for m, label, ms in results for busy in [label.endswith("+busy")]
            if label.split("+")[0] == "policy"}
    for model, label, ms in results:
        ref = base.get((model, label.endswith("+busy")), {})
        cells = []
        for b in backends:
            v = ms.get(b)
            r = ref.get(b)
            cells.append("-" if not v else f"{v:.2f}" + (f" ({v / r:.2f}x)" if r and label
                                                         .split("+")[0] != "policy" else ""))
        ours = [ms[b] for b in ms if b.startswith("landmarknet") and ms[b]]
        cv = ms.get("opencv dnn")
        ratio = f"{min(ours) / cv:.2f}" if ours and cv else "-"
        print(f"| {model} | {label} | {' | '.join(cells)} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
