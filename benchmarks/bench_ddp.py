#!/usr/bin/env python
"""Multi-GPU scaling of training: the same solver on 1 GPU and, through torchrun, on N GPUs.

Each run is a real ``landmarknet train`` (CPU input pipeline, bf16, channels_last, no val) of
``--iters`` iterations at ``--batch`` images per GPU; its summary's ``it_per_s`` (the loop's
own clock) gives images/s = it/s x batch x GPUs. Prints one table and the scaling factor
(images/s on N GPUs over images/s on one). Example (2 x H200):

    python benchmarks/bench_ddp.py --data ../shared/data/ytf68/train --gpus 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def run(gpus: int, args) -> dict:
    train = ["tools/train_heatmaps.py", "--solver", str(args.solver), "--data", str(args.data),
             "--device", "cuda", "--amp", "--channels-last", "--pipeline", "cpu",
             "--workers", str(max(2, args.cpus // gpus - 1)), "--batch-size", str(args.batch),
             "--max-iter", str(args.iters), "--test-interval", "0", "--snapshot", "0",
             "--no-progress", "--out", f"/tmp/bench_ddp_{gpus}"]
    cmd = ([sys.executable, *train] if gpus == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={gpus}", *train])
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
               NVSHMEM_DISABLE_NVLS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = p.stdout
    if p.returncode != 0 or "{" not in out:
        return {"gpus": gpus, "error": (p.stderr or out)[-800:]}
    summary, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])  # rank 0's summary
    ips = summary["it_per_s"] * args.batch * gpus
    return {"gpus": gpus, "it_per_s": summary["it_per_s"], "images_per_s": ips,
            "iters": summary["iters"], "seconds": summary["seconds"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solver", type=Path, default=Path("prototxt/heatmap4_68/solver.prototxt"))
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="images per GPU per step")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = [run(1, args), run(args.gpus, args)]
    print(f"\ntraining scaling: {args.solver}, batch {args.batch} per GPU, {args.iters} "
          "iterations")
    print("| GPUs | it/s | images/s | scaling |")
    print("|---|---|---|---|")
    base = rows[0].get("images_per_s")
    for r in rows:
        if "error" in r:
            print(f"| {r['gpus']} | error: {r['error'][-300:]!r} | | |")
            continue
        scale = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['gpus']} | {r['it_per_s']:.1f} | {r['images_per_s']:.0f} | {scale} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
