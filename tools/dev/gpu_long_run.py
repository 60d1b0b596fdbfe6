#!/usr/bin/env python3
"""Train runs longer than one device call: start them in one call, resume them in the next.

A device call lasts at most 10 minutes; a 20-30k-iteration run needs two. The first call
(``start``) probes every job's rate (all jobs at once, as in ``gpu_sweep.py``), sizes each run
to fill ``--budget`` seconds of training over all calls, writes its solver (lr steps scaled to
the new length, a snapshot every ``--snapshot`` iterations) and trains until its deadline; the
newest ``.state.pt`` of every job, its solver and its log are packed into ``OUT/carry.tgz``.
Bring that file back into a git-ignored folder and carry it to the next call (``resume``),
which continues every job exactly (``landmarknet train --resume``) and, for the jobs that
finish, returns the final caffemodel (the bundles' model.json and the logs in ``logs.tgz``:
a call returns at most 8 files); jobs still short of their length are packed into
``carry.tgz`` again.

    python tools/dev/gpu_long_run.py jobs.json start --budget 950 --deadline 560 --out $OUT
    python tools/dev/gpu_long_run.py jobs.json resume --carry .devcarry/long/carry.tgz \\
        --deadline 560 --out $OUT

jobs.json has gpu_sweep.py's format (``common``, ``jobs`` with name/solver/data/val/set/args/
max_iter).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_sweep import T0, log, rate_from_log, run_all, train_cmd, write_solver  # noqa: E402

WORK = Path("/tmp/long")


def newest_state(run: Path) -> Path | None:
    """The state file of the highest iteration in a run folder."""
    states = [(int(m.group(1)), p) for p in run.glob("*_iter_*.state.pt")
              if (m := re.search(r"_iter_(\d+)\.state\.pt$", p.name))]
    return max(states)[1] if states else None


def pack_unfinished(jobs: list[dict], sizes: dict[str, int], out: Path) -> list[str]:
    """carry.tgz: each unfinished job's newest state, its solver and its log; the names."""
    packed = []
    with tarfile.open(out / "carry.tgz", "w:gz") as tar:
        tar.add(WORK / "sizes.json", "sizes.json")
        for j in jobs:
            name = j["name"]
            run = WORK / "runs" / name
            state = newest_state(run)
            if state is None or list(run.glob("*_bundle/model.json")):
                continue
            tar.add(WORK / f"{name}_solver.prototxt", f"{name}_solver.prototxt")
            tar.add(state, f"runs/{name}/{state.name}")
            for f in run.glob("*_log.csv"):
                tar.add(f, f"runs/{name}/{f.name}")
            packed.append(f"{name} at {state.name} of {sizes.get(name)}")
    return packed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jobs", type=Path)
    ap.add_argument("phase", choices=("start", "resume"))
    ap.add_argument("--deadline", type=float, default=560, help="seconds from start")
    ap.add_argument("--budget", type=float, default=950,
                    help="start: training seconds the runs get over all calls")
    ap.add_argument("--probe", type=int, default=300, help="start: probe iterations per job")
    ap.add_argument("--snapshot", type=int, default=500, help="snapshot interval")
    ap.add_argument("--carry", type=Path, help="resume: the carry.tgz of the last call")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    spec = json.loads(args.jobs.read_text())
    common, jobs = spec.get("common", []), spec["jobs"]
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    end = T0 + args.deadline - 25  # packing the states and copying out
    snap = ["--snapshot", str(args.snapshot)]
    cmds = {}
    if args.phase == "start":
        probe = {}
        for j in jobs:
            folder = WORK / "probe" / j["name"]
            folder.mkdir(parents=True, exist_ok=True)
            probe[j["name"]] = train_cmd(j, write_solver(j, args.probe, WORK, max(1, args.probe // 10),
                                                      "_probe"),
                                         folder, common, ["--test-interval", "0",
                                                          "--snapshot", "0"])
        codes = run_all(probe, WORK / "logs", T0 + 150)
        sizes = {}
        for j in jobs:
            name = j["name"]
            logs = list((WORK / "probe" / name).glob("*_log.csv"))
            rate = rate_from_log(logs[0]) if logs and codes[name] == 0 else 0.0
            n = int(min(j.get("max_iter", 30000), rate * args.budget * 0.9))
            n = n // args.snapshot * args.snapshot
            log(f"probe {name}: exit {codes[name]}, {rate:.1f} it/s -> {n} iterations")
            if n >= 2 * args.snapshot:
                sizes[name] = n
                solver = write_solver(j, n, WORK)
                cmds[name] = train_cmd(j, solver, WORK / "runs" / name, common, snap)
        (WORK / "sizes.json").write_text(json.dumps(sizes))
    else:
        with tarfile.open(args.carry) as tar:
            tar.extractall(WORK, filter="data")
        sizes = json.loads((WORK / "sizes.json").read_text())
        for j in jobs:
            name = j["name"]
            state = newest_state(WORK / "runs" / name)
            if state is not None:
                cmds[name] = train_cmd(j, WORK / f"{name}_solver.prototxt",
                                       WORK / "runs" / name, common,
                                       snap + ["--resume", str(state)])
                log(f"resume {name} from {state.name} of {sizes[name]}")
    codes = run_all(cmds, WORK / "logs", end)
    log(f"exit codes {codes}")
    # the device returns at most 8 files: the caffemodels alone, the rest in logs.tgz
    for f in WORK.glob("runs/*/*_bundle/*.caffemodel"):
        shutil.copy(f, args.out / f"{f.parents[1].name}.caffemodel")
    log(f"unfinished: {pack_unfinished(jobs, sizes, args.out)}")
    with tarfile.open(args.out / "logs.tgz", "w:gz") as tar:
        tar.add(WORK / "logs", "logs")
        for f in [*WORK.glob("runs/*/*_log.csv"), *WORK.glob("runs/*/*_bundle/model.json")]:
            tar.add(f, str(f.relative_to(WORK)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
