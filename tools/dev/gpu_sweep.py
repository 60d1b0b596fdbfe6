#!/usr/bin/env python3
"""Train several solver variants at once on one lent GPU, sized to a wall-clock budget.

A device call has at most 10 minutes, so the runs' lengths are set from a measured rate, not
guessed: every job first runs ``--probe`` iterations, all at once (the same contention as the
real runs); each job's rate then sets its ``max_iter`` to fill the time left (capped by the
job's own ``max_iter``), its solver is rewritten with the lr steps scaled to the new length,
and all jobs train at once. Each bundle is evaluated (``landmarknet evaluate --json``) and
logs, curves and metrics are packed into ``OUT/sweep.tgz``; of the jobs marked ``keep``, the
``--keep`` best caffemodels of each (val set, solver) are copied to OUT too (the device returns
at most 8 files).

    python tools/dev/gpu_sweep.py jobs.json --deadline 540 --out $OUT

jobs.json: ``{"common": [args...], "jobs": [{"name", "solver", "data", "val", "set": {solver
field: value}, "args": [...], "max_iter": N, "keep": bool, "weights": path, "eval_data", "eval_args"}, ...], "eval_args":
[...]}``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


def train_cmd(job: dict, solver: Path, out: Path, common: list[str], extra: list[str]) -> list:
    cmd = [sys.executable, "-m", "landmarknet.cli.main", "train", "--solver", str(solver),
           "--data", job["data"], "--out", str(out), "--no-progress", *common,
           *job.get("args", []), *extra]
    if job.get("val"):
        cmd += ["--val", job["val"]]
    if job.get("weights"):
        cmd += ["--weights", job["weights"]]
    return cmd


def write_solver(job: dict, max_iter: int, folder: Path, display: int = 100,
                 tag: str = "") -> Path:
    """The job's solver with its overrides, lr steps scaled to max_iter, one final snapshot."""
    from landmarknet.caffe.prototxt import read_solver, to_text
    sp = read_solver(Path(job["solver"]))
    old = sp.max_iter or max_iter
    for key, value in job.get("set", {}).items():
        setattr(sp, key, value)
    if sp.stepsize:
        sp.stepsize = max(1, int(sp.stepsize * max_iter / old))
    steps = [max(1, int(v * max_iter / old)) for v in sp.stepvalue]
    del sp.stepvalue[:]
    sp.stepvalue.extend(steps)
    sp.max_iter = max_iter
    sp.snapshot = max_iter
    sp.test_interval = max(100, max_iter // 4)
    sp.display = display
    sp.average_loss = display
    path = folder / f"{job['name']}{tag}_solver.prototxt"
    path.write_text(to_text(sp))
    return path


def rate_from_log(csv_path: Path) -> float:
    rows = [r for r in csv.DictReader(open(csv_path)) if r.get("it_per_s")]
    rates = [float(r["it_per_s"]) for r in rows[1:]] or [float(r["it_per_s"]) for r in rows]
    return statistics.median(rates) if rates else 0.0


def run_all(cmds: dict[str, list], logs: Path, deadline: float) -> dict[str, int]:
    procs = {}
    for name, cmd in cmds.items():
        f = open(logs / f"{name}.txt", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), f)
    codes = {}
    while procs:
        for name in list(procs):
            p, f = procs[name]
            if p.poll() is not None:
                codes[name] = p.returncode
                f.close()
                del procs[name]
        if time.time() > deadline:
            for name, (p, f) in procs.items():
                p.kill()
                codes[name] = -9
                f.close()
            log(f"deadline: killed {sorted(procs)}")
            break
        time.sleep(1)
    return codes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jobs", type=Path)
    ap.add_argument("--deadline", type=float, default=540, help="seconds from start for all")
    ap.add_argument("--probe", type=int, default=300, help="probe iterations per job")
    ap.add_argument("--eval-reserve", type=float, default=75, help="seconds kept for evaluation")
    ap.add_argument("--keep", type=int, default=3,
                    help="caffemodels brought back per val set and solver (best first)")
    ap.add_argument("--min-iter", type=int, default=200, help="shorter runs are skipped")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/sweep_out")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/sweep"))
    args = ap.parse_args()
    spec = json.loads(args.jobs.read_text())
    common, jobs = spec.get("common", []), spec["jobs"]
    work, out = args.work, args.out
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    end = T0 + args.deadline

    # 1. probe: every job at once, a few hundred iterations, no val
    probe = {j["name"]: train_cmd(j, write_solver(j, args.probe, work, max(1, args.probe // 10), "_probe"),
                                  work / "probe" / j["name"], common,
                                  ["--test-interval", "0", "--snapshot", "0"]) for j in jobs}
    for j in jobs:
        (work / "probe" / j["name"]).mkdir(parents=True, exist_ok=True)
    codes = run_all(probe, work / "logs", T0 + args.deadline / 3)
    rates = {}
    for j in jobs:
        logs = list((work / "probe" / j["name"]).glob("*_log.csv"))
        rates[j["name"]] = rate_from_log(logs[0]) if logs and codes[j["name"]] == 0 else 0.0
        log(f"probe {j['name']}: exit {codes[j['name']]}, {rates[j['name']]:.1f} it/s")
    shutil.rmtree(work / "probe", ignore_errors=True)

    # 2. size and run
    left = end - time.time() - args.eval_reserve - 30  # 30 s: start-up of the runs
    cmds, sizes = {}, {}
    for j in jobs:
        r = rates[j["name"]]
        if r <= 0:
            continue
        n = int(min(j.get("max_iter", 10 ** 9), r * left * 0.9))
        n = n // 100 * 100 if n >= 1000 else n
        if n < args.min_iter:
            log(f"skip {j['name']}: {n} iterations would not teach anything")
            continue
        sizes[j["name"]] = n
        solver = write_solver(j, n, work)
        cmds[j["name"]] = train_cmd(j, solver, work / "runs" / j["name"], common, [])
        log(f"run {j['name']}: {n} iterations ({r:.1f} it/s probed)")
    codes = run_all(cmds, work / "logs", end - args.eval_reserve)

    # 3. evaluate the bundles (CPU, in parallel)
    results = {}
    evals = {}
    for j in jobs:
        name = j["name"]
        bundles = list((work / "runs" / name).glob("*_bundle"))
        if codes.get(name) == 0 and bundles:
            cmd = [sys.executable, "-m", "landmarknet.cli.main", "evaluate", str(bundles[0]),
                   "--data", j.get("eval_data", j.get("val")), "--json"]
            cmd += spec.get("eval_args", []) + j.get("eval_args", [])
            evals[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)
    for name, p in evals.items():
        try:
            o, e = p.communicate(timeout=max(5, end - time.time()))
            results[name] = json.loads(o[o.index("{"):]) if p.returncode == 0 else \
                {"error": e[-500:]}
        except Exception as exc:  # noqa: BLE001 - report and go on
            p.kill()
            results[name] = {"error": str(exc)}
    summary = {"rates": rates, "iters": sizes, "exit": codes, "eval": results}
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    # the best `--keep` candidates (jobs marked "keep") of each (val set, solver), by NME_io,
    # come back as caffemodels (NMEs of different sets or nets do not rank against each other)
    groups: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for j in jobs:
        if j.get("keep") and "nme_io" in results.get(j["name"], {}):
            key = (j.get("eval_data", j.get("val", "")), j["solver"])
            groups.setdefault(key, []).append((results[j["name"]]["nme_io"], j["name"]))
    for ranked in groups.values():
        for _, name in sorted(ranked)[:args.keep]:
            for f in (work / "runs" / name).glob("*_bundle/*.caffemodel"):
                shutil.copy(f, out / f"{name}.caffemodel")
    with tarfile.open(out / "sweep.tgz", "w:gz") as tar:
        tar.add(work / "summary.json", "summary.json")
        tar.add(work / "logs", "logs")
        for j in jobs:
            run = work / "runs" / j["name"]
            for pat in ("*_log.csv", "*_curves.png", "*_bundle/model.json"):
                for f in run.glob(pat):
                    tar.add(f, f"runs/{j['name']}/{f.relative_to(run)}")
        for f in work.glob("*[!e]_solver.prototxt"):
            tar.add(f, f"solvers/{f.name}")
    print("| job | it/s (probe) | iterations | exit | NME_io | AUC@0.08 | FR@0.10 |")
    print("|---|---|---|---|---|---|---|")
    for j in jobs:
        n = j["name"]
        m = results.get(n, {})
        print(f"| {n} | {rates.get(n, 0):.1f} | {sizes.get(n, '-')} | {codes.get(n, '-')} | "
              f"{m.get('nme_io', m.get('error', '-'))} | {m.get('auc08', '-')} | "
              f"{m.get('fr10', '-')} |")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
