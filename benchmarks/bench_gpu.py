"""GPU inference throughput and model FLOPs utilisation (MFU) of the three landmark nets.

    python benchmarks/bench_gpu.py --out gpu_bench.json          # one H200: about 6-8 minutes
    python benchmarks/bench_gpu.py --smoke --out /tmp/smoke.json  # tiny sizes; runs on CPU too

One process prints, in this order:

1. the matmul ceiling: a large bf16 ``torch.matmul`` (8192^3), median of many, in TFLOP/s;
2. per net (heatmap4_68 first: the MFU goal is >= 40 % for it at large batch), a throughput
   sweep over batch sizes (default 1 .. 4096) for each configuration: fp32 eager, fp32
   channels_last, fp32 channels_last + CUDA graph, bf16 channels_last, bf16 + CUDA graph, bf16
   + torch.compile, bf16 + torch.compile in reduce-overhead mode (CUDA graphs inside), bf16
   with cuDNN's fused convolution+bias+ReLU + CUDA graph (the other nets: the first five);
   every non-eager configuration also folds BatchNorm into the convolutions (landmarknet.fast);
3. MFU = 2 x MACs/image x images/s / the measured bf16 matmul ceiling, and against the dense
   bf16 datasheet peak (--peak-tflops, default 989.4 for H100/H200 SXM), with the best MFU per
   net and whether the goal is met.

Inputs are random tensors already on the GPU (no host-to-device copies); fp32 convolutions use
cuDNN with TF32 as PyTorch's default allows (``torch.backends.cudnn.allow_tf32``, recorded);
``cudnn.benchmark`` is on. Each configuration is checked once against fp32 eager (max relative
output difference). Each point is timed after warm-up calls (which compile / capture), median
of up to --repeats calls or --point-seconds, whichever comes first; the whole run stops
starting new points after --budget seconds (rows then say "skipped: time budget"). Every
configuration runs inside try/except: an error (out of memory, a compile failure) is printed
as a row and the run goes on. All rows go to --out as JSON, rewritten after every net.

MACs per image come from landmarknet.analyze (the same count as ``landmarknet visualize``).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from landmarknet.bench import environment, load_model, random_batch  # noqa: E402
from landmarknet.fast import optimize_for_inference  # noqa: E402
from landmarknet.models import MODELS_DIR  # noqa: E402

NETS = {"heatmap4_68": MODELS_DIR / "heatmap4_68",
        "heatmap3_68": ROOT / "prototxt" / "heatmap3_68" / "deploy.prototxt",
        "squeeze77": MODELS_DIR / "squeeze77",
        "heatmap4_5": MODELS_DIR / "heatmap4_5"}
DEFAULT_NETS = "heatmap4_68,heatmap3_68,squeeze77"
#: (label, landmarknet.fast mode, dtype); the goal net gets all, the others the first five.
CONFIGS = [
    ("fp32 eager", "eager", "fp32"),
    ("fp32 channels_last", "inference+fold+channels_last", "fp32"),
    ("bf16 channels_last", "inference+fold+bf16+channels_last", "bf16"),
    ("bf16 cl + CUDA graph", "inference+fold+bf16+channels_last+cuda_graph", "bf16"),
    ("bf16 cl + compile + CUDA graphs", "inference+fold+bf16+channels_last+compile+cuda_graph",
     "bf16"),
    ("fp32 cl + CUDA graph", "inference+fold+channels_last+cuda_graph", "fp32"),
    ("bf16 cl + compile", "inference+fold+bf16+channels_last+compile", "bf16"),
    ("bf16 cl + cuDNN conv+ReLU + CUDA graph",
     "inference+fuse+bf16+channels_last+cuda_graph", "bf16"),
]
OTHER_NET_CONFIGS = 5
DEFAULT_BATCHES = "1,4,16,64,256,1024,2048,4096"
PEAK_BF16_TFLOPS = 989.4  # H100/H200 SXM dense bf16 (datasheet)
GOAL_MFU = 0.40


def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, n: int, dtype: torch.dtype, seconds: float,
                   max_iters: int = 50) -> dict:
    """Median TFLOP/s of an n x n x n matmul (groups of 5 products timed together)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    times, start = [], time.perf_counter()
    group = 5
    while len(times) < max_iters and (time.perf_counter() - start < seconds or len(times) < 3):
        t0 = time.perf_counter()
        for _ in range(group):
            torch.matmul(a, b)
        sync(device)
        times.append((time.perf_counter() - t0) / group)
    med = statistics.median(times)
    del a, b
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "median_s": med,
            "tflops": 2 * n ** 3 / med / 1e12, "samples": len(times)}


def time_point(fn, device: torch.device, warmup: int, repeats: int, seconds: float) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out, start = [], time.perf_counter()
    while len(out) < repeats and (not out or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def rel_diff(ref: dict, got: dict) -> float:
    worst = 0.0
    for k, r in ref.items():
        g = got[k].float()
        scale = r.abs().max().item()
        d = (g - r.float()).abs().max().item()
        worst = max(worst, d / scale if scale > 0 else d)
    return worst


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_net(name: str, model, device: torch.device, configs, batches: list[int], args,
              deadline: float, ceiling: float, rows: list[dict]) -> None:
    macs = model.macs_per_image
    net = model.net.to(device).eval()
    ref_x = [x.to(device) for x in random_batch(model, batches[0], seed=1)]
    with torch.no_grad():
        ref = net(*ref_x)
    for label, mode, dtype in configs:
        base = {"net": name, "config": label, "mode": mode, "dtype": dtype,
                "device": device.type, "macs_per_image": macs}
        if time.perf_counter() > deadline:
            for b in batches:
                rows.append({**base, "batch": b, "skipped": "time budget"})
            log(f"{name:<12} {label:<38} skipped: time budget")
            continue
        if device.type != "cuda" and ("compile" in mode and not args.compile_on_cpu):
            for b in batches:
                rows.append({**base, "batch": b, "skipped": "compile is not run on CPU "
                             "(minutes on a small CPU; --compile-on-cpu to force)"})
            log(f"{name:<12} {label:<38} skipped: compile on CPU")
            continue
        fast = None
        try:
            t0 = time.perf_counter()
            fast = optimize_for_inference(net, mode, ref_x, device=device)
            build_s = time.perf_counter() - t0
            diff = rel_diff(ref, fast(*ref_x))
            log(f"{name:<12} {label:<38} built in {build_s:.1f} s, max rel diff {diff:.2e} "
                f"vs fp32 eager ({fast.describe()})")
        except Exception as exc:  # noqa: BLE001 - one configuration failing is a row
            err = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            for b in batches:
                rows.append({**base, "batch": b, "error": f"build: {err}"})
            log(f"{name:<12} {label:<38} ERROR building: {err}")
            if args.verbose:
                traceback.print_exc()
            del fast
            free(device)
            continue
        oom = False
        for b in batches:
            row = {**base, "batch": b, "max_rel_diff": diff, "build_s": round(build_s, 2)}
            if oom:
                row["skipped"] = "a smaller batch ran out of memory"
            elif time.perf_counter() > deadline:
                row["skipped"] = "time budget"
            else:
                try:
                    xs = [x.to(device) for x in random_batch(model, b, seed=2)]
                    ts = time_point(lambda: fast(*xs), device, args.warmup, args.repeats,
                                    args.point_seconds)
                    med = statistics.median(ts)
                    ips = b / med
                    tflops = 2 * macs * ips / 1e12
                    row.update(median_ms=round(med * 1e3, 4), images_per_s=round(ips, 1),
                               tflops=round(tflops, 3), samples=len(ts),
                               mfu_vs_matmul=round(tflops / ceiling, 4) if ceiling else None,
                               mfu_vs_peak=round(tflops / args.peak_tflops, 4))
                    del xs
                except torch.cuda.OutOfMemoryError as exc:
                    oom = True
                    row["error"] = f"out of memory: {str(exc).splitlines()[0][:200]}"
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    if args.verbose:
                        traceback.print_exc()
                if hasattr(fast.fn, "graphs"):  # CUDA graph pools of a finished batch size
                    fast.fn.graphs.clear()
                free(device)
            rows.append(row)
            log(_line(row))
        del fast
        free(device)
        if "compile" in mode:
            torch._dynamo.reset()


def _line(r: dict) -> str:
    head = f"{r['net']:<12} {r['config']:<38} {r['batch']:>5}"
    if "median_ms" in r:
        mfu = f"{100 * r['mfu_vs_matmul']:6.1f}%" if r.get("mfu_vs_matmul") else "     -"
        return (f"{head} {r['median_ms']:>10.3f} ms {r['images_per_s']:>11.1f} img/s "
                f"{r['tflops']:>8.2f} TFLOP/s  MFU {mfu} (peak {100 * r['mfu_vs_peak']:5.1f}%)")
    return f"{head}  {r.get('error') or 'skipped: ' + r.get('skipped', '?')}"


def summary(rows: list[dict], ceiling: float, args) -> tuple[list[str], dict]:
    lines = ["", "best per net (MFU against the measured bf16 matmul ceiling "
             f"{ceiling:.1f} TFLOP/s; datasheet peak {args.peak_tflops:g}):"]
    goal = {}
    for net in dict.fromkeys(r["net"] for r in rows):
        ok = [r for r in rows if r["net"] == net and "median_ms" in r]
        if not ok:
            lines.append(f"  {net}: no measurement")
            continue
        best = max(ok, key=lambda r: r["images_per_s"])
        lines.append(f"  {net}: {best['images_per_s']:.0f} images/s, {best['tflops']:.1f} "
                     f"TFLOP/s, MFU {100 * (best['mfu_vs_matmul'] or 0):.1f}% of the matmul "
                     f"ceiling ({100 * best['mfu_vs_peak']:.1f}% of peak) at batch "
                     f"{best['batch']}, {best['config']}")
        if net == "heatmap4_68":
            mfu = best["mfu_vs_matmul"] or 0
            goal = {"net": net, "mfu": mfu, "goal": GOAL_MFU, "met": mfu >= GOAL_MFU,
                    "config": best["config"], "batch": best["batch"]}
            lines.append(f"  goal >= {100 * GOAL_MFU:.0f}% MFU for heatmap4_68 at large batch: "
                         f"{'met' if goal['met'] else 'NOT met'} ({100 * mfu:.1f}%)")
    return lines, goal


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu_bench.json"), help="JSON of all rows")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--batches", default=None, help=f"default {DEFAULT_BATCHES}")
    ap.add_argument("--nets", default=DEFAULT_NETS,
                    help=f"comma-separated from {', '.join(NETS)} (default {DEFAULT_NETS})")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds after which no new point starts (default 400; smoke 120)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per point (20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per point (3)")
    ap.add_argument("--point-seconds", type=float, default=None,
                    help="stop timing a point after this long (default 1.5)")
    ap.add_argument("--matmul-n", type=int, default=None, help="ceiling matmul size (8192)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_BF16_TFLOPS)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (batches 1,2; 2 repeats; 256 matmul): checks that the "
                         "script runs, on any device")
    ap.add_argument("--compile-on-cpu", action="store_true",
                    help="also run the torch.compile configurations on a CPU device")
    ap.add_argument("--all-configs", action="store_true",
                    help="every configuration for every net (default: all for heatmap4_68)")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    args = ap.parse_args()
    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.smoke:
        batches = [int(b) for b in (args.batches or "1,2").split(",")]
        args.repeats = args.repeats or 2
        args.point_seconds = args.point_seconds or 0.2
        args.warmup = min(args.warmup, 1)
        budget = args.budget or 120.0
        mm_n = args.matmul_n or 256
    else:
        batches = [int(b) for b in (args.batches or DEFAULT_BATCHES).split(",")]
        args.repeats = args.repeats or 20
        args.point_seconds = args.point_seconds or 1.5
        budget = args.budget or 400.0
        mm_n = args.matmul_n or 8192
    deadline = t_start + budget
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = environment()
    env.update(device=str(device), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
               matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
               cudnn_benchmark=torch.backends.cudnn.benchmark,
               cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None)
    log(f"device {device} ({env.get('gpu', env['cpu'])}), torch {env['torch']}, cudnn "
        f"{env['cudnn']}, TF32 convs {env['cudnn_allow_tf32']}; batches {batches}; budget "
        f"{budget:.0f} s")
    result: dict = {"environment": env, "batches": batches, "rows": []}

    def save() -> None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1, default=str))
        except OSError as exc:
            log(f"cannot write {args.out}: {exc}")

    ceiling = None
    try:
        mm = matmul_ceiling(device, mm_n, torch.bfloat16, 3.0 if not args.smoke else 0.2)
        ceiling = mm["tflops"]
        result["matmul_bf16"] = mm
        log(f"matmul ceiling: bf16 {mm_n}^3 {mm['tflops']:.1f} TFLOP/s (median of "
            f"{mm['samples']} groups of 5; datasheet peak {args.peak_tflops:g})")
        mm32 = matmul_ceiling(device, mm_n, torch.float32, 2.0 if not args.smoke else 0.2, 20)
        result["matmul_fp32"] = mm32
        log(f"matmul fp32 {mm_n}^3 {mm32['tflops']:.1f} TFLOP/s (TF32 matmul "
            f"{env['matmul_allow_tf32']})")
    except Exception as exc:  # noqa: BLE001
        log(f"matmul ceiling: ERROR {type(exc).__name__}: {exc}")
        result["matmul_error"] = str(exc)
    free(device)
    save()

    log(f"{'net':<12} {'configuration':<38} {'batch':>5} {'median':>13} {'throughput':>17} "
        f"{'achieved':>16}  MFU vs matmul (vs peak)")
    for i, name in enumerate(args.nets.split(",")):
        try:
            model = load_model(NETS[name])
            log(f"{name}: {model.macs_per_image / 1e9:.3f} GMACs/image")
            configs = CONFIGS if (i == 0 or args.all_configs) else CONFIGS[:OTHER_NET_CONFIGS]
            bench_net(name, model, device, configs, batches, args, deadline, ceiling,
                      result["rows"])
        except Exception as exc:  # noqa: BLE001
            log(f"{name}: ERROR {type(exc).__name__}: {exc}")
            result["rows"].append({"net": name, "error": f"{type(exc).__name__}: {exc}"})
            if args.verbose:
                traceback.print_exc()
        free(device)
        save()
    lines, goal = summary(result["rows"], ceiling or math.nan, args)
    for line in lines:
        log(line)
    result["goal"] = goal
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    save()
    log(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
