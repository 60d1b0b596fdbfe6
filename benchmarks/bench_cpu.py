"""CPU inference table: landmarknet eager and fast, ONNX Runtime, OpenCV DNN on the three nets.

    .venv/bin/python benchmarks/bench_cpu.py [--threads 2] [--repeats 20] [--repeats-large 6]
                                             [--nets heatmap4_68,heatmap3_68,squeeze77,heatmap4_5]
                                             [--batches 1,32] [--ablation] [--compile] [--json OUT]

One process, one table: for each net and batch size every backend is built, checked against
eager (max relative output difference) and timed in the same rounds with the same thread count
(landmarknet.bench.run_bench); batch 1 is latency, batch 32 throughput. The "landmarknet
fast" row is ``--mode auto-compile``: the fastest of landmarknet.fast's CPU candidates
(Winograd-tuned, fused oneDNN, jit, torch.compile), measured on that batch. ``ratio`` is median ms /
OpenCV DNN's at the same batch (below 1: faster than OpenCV). ``--ablation`` adds a table of
what each landmarknet speed mode buys over eager (landmarknet.fast flags, one at a time and
together; ``--compile`` adds torch.compile, 10-60 s of compiling per net and batch here).
Nets: heatmap4_68 (shipped, landmarknet/models/), prototxt/heatmap3_68 (random weights, written
as a caffemodel for OpenCV), squeeze77 (shipped; its two Caffe Python layers run in OpenCV as
custom layers calling landmarknet's code), heatmap4_5 (shipped, 5 points). Never fails
on a timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from landmarknet.bench import (environment, load_model, random_batch, render_table,  # noqa: E402
                               run_bench, set_threads)
from landmarknet.fast import optimize_for_inference, time_calls  # noqa: E402
from landmarknet.models import MODELS_DIR  # noqa: E402

NETS = {"heatmap4_68": MODELS_DIR / "heatmap4_68",
        "heatmap3_68": ROOT / "prototxt" / "heatmap3_68" / "deploy.prototxt",
        "squeeze77": MODELS_DIR / "squeeze77",
        "heatmap4_5": MODELS_DIR / "heatmap4_5"}

ABLATION = ("eager", "inference", "inference+channels_last", "inference+fold",
            "inference+channels_last+fold", "inference+channels_last+fuse",
            "inference+channels_last+tune", "inference+fold+jit",
            "inference+channels_last+fold+jit")
COMPILE = ("inference+fold+compile", "inference+channels_last+fold+compile")


def ablation(model, batch: int, repeats: int, with_compile: bool) -> list[dict]:
    """Each speed mode of landmarknet.fast against eager, timed together."""
    net = model.at_batch(batch)
    xs = random_batch(model, batch)
    with torch.no_grad():
        ref = net(*xs)
    fns, rows = {}, {}
    for mode in ABLATION + (COMPILE if with_compile else ()):
        try:
            t0 = time.perf_counter()
            if mode == "eager":
                def call(net=net):
                    with torch.no_grad():
                        return net(*xs)
                fn, desc = call, "eager"
            else:
                fast = optimize_for_inference(net, mode, xs)
                fn, desc = (lambda f=fast: f(*xs)), fast.describe()
            out = fn()
            err = max(float((out[k].float() - ref[k]).abs().max() / ref[k].abs().max())
                      for k in ref)
            fns[mode] = fn
            rows[mode] = {"mode": mode, "batch": batch, "describe": desc, "max_rel_diff": err,
                          "build_s": round(time.perf_counter() - t0, 2)}
        except Exception as exc:  # noqa: BLE001 - a mode that fails is a row
            rows[mode] = {"mode": mode, "batch": batch, "error": f"{type(exc).__name__}: {exc}"}
    times = time_calls(fns, repeats=repeats, warmup=2)
    base = 1e3 * statistics.median(times["eager"]) if "eager" in times else None
    for mode, ts in times.items():
        ms = 1e3 * statistics.median(ts)
        rows[mode].update(median_ms=round(ms, 3), images_per_s=round(batch / ms * 1e3, 2),
                          speedup=round(base / ms, 3) if base else None)
    return list(rows.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds at batch 1")
    ap.add_argument("--repeats-large", type=int, default=6, help="timed rounds at batch > 1")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--ablation", action="store_true", help="also time each speed mode")
    ap.add_argument("--compile", action="store_true", help="ablation: add torch.compile")
    ap.add_argument("--mode", default="auto-compile",
                    help="landmarknet fast row: auto-compile (default: the fastest of the CPU "
                         "candidates, torch.compile included) or any landmarknet.fast mode")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    set_threads(args.threads)
    env = environment(args.threads)
    print(f"{env['cpu']}, {env['cores']} cores, {args.threads} thread(s) for every backend; "
          f"python {env['python']}, torch {env['torch']}, OpenCV {env['cv2']}, onnxruntime "
          f"{env['onnxruntime']}, onnx {env['onnx']}", flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    all_rows, abl, per_net = [], [], []
    for name in args.nets.split(","):
        model = load_model(NETS[name])
        weights = model.weights.relative_to(ROOT) if model.weights else "random (seed 0)"
        print(f"{name}: {model.macs_per_image / 1e9:.3g} GMACs/image, weights {weights}",
              file=sys.stderr, flush=True)
        rows = []
        for b in batches:
            reps = args.repeats if b == 1 else args.repeats_large
            rows += run_bench(model, batches=[b], threads=args.threads, repeats=reps,
                              warmup=args.warmup if b == 1 else 1, mode=args.mode)
        per_net.append((name, model, rows))
        print(render_table(rows, notes=False), file=sys.stderr, flush=True)
        for r in rows:
            d = r.as_dict()
            d["net"] = name
            all_rows.append(d)
        if args.ablation:
            for b in batches:
                reps = args.repeats if b == 1 else args.repeats_large
                res = ablation(model, b, reps, args.compile)
                print(f"\n{name} batch {b}: landmarknet speed modes")
                print(f"{'mode':<38} {'median ms':>10} {'images/s':>9} {'vs eager':>9} "
                      f"{'max rel diff':>12}")
                for r in res:
                    if "error" in r:
                        print(f"{r['mode']:<38} error: {r['error']}")
                        continue
                    print(f"{r['mode']:<38} {r['median_ms']:>10.2f} {r['images_per_s']:>9.1f} "
                          f"{r['speedup']:>8.2f}x {r['max_rel_diff']:>12.1e}")
                for r in res:
                    if "describe" in r and r["describe"] != r["mode"]:
                        print(f"  {r['mode']}: {r['describe']}")
                    r["net"] = name
                abl += res
                sys.stdout.flush()
    print()
    print(combined_table(per_net))
    if args.json:
        args.json.write_text(json.dumps({"rows": all_rows, "ablation": abl, "environment": env},
                                        indent=1))
        print(f"\nwrote {args.json}")
    return 0


def combined_table(per_net) -> str:
    """One markdown table of every net; ratio = median ms / OpenCV DNN's at the same batch."""
    lines = ["| net | GMACs/img | backend | batch | median ms | images/s | vs OpenCV | "
             "max rel diff |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    notes = []
    for name, model, rows in per_net:
        ref = {r.batch: r.median_ms for r in rows if r.backend == "opencv dnn" and r.median_ms}
        for r in rows:
            if r.median_ms is None:
                lines.append(f"| {name} | {model.macs_per_image / 1e9:.2f} | {r.backend} | "
                             f"{r.batch} | skipped | | | {r.skipped} |")
                continue
            ratio = f"{r.median_ms / ref[r.batch]:.2f}" if r.batch in ref else "-"
            diff = "-" if r.max_rel_diff is None else f"{r.max_rel_diff:.1e}"
            lines.append(f"| {name} | {model.macs_per_image / 1e9:.2f} | {r.backend} | "
                         f"{r.batch} | {r.median_ms:.2f} | {r.images_per_s:.1f} | {ratio} | "
                         f"{diff} |")
            if r.backend == "landmarknet fast":
                notes.append(f"{name} batch {r.batch} fast: {r.note}")
    return "\n".join(lines + [""] + notes)


if __name__ == "__main__":
    sys.exit(main())
