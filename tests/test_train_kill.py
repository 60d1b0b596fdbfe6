"""Training survives SIGKILL: kill `landmarknet train` at random moments, resume, compare.

A tiny heatmap net (tests/test_train.py's) on 16 faces trains 40 iterations with a snapshot
every 5. The run is killed with SIGKILL during steps and while a snapshot is being written (the
moment a temp file appears), then resumed from its newest state file, until it finishes. After
every kill: every snapshot on disk reads back whole (writes are atomic: temp file, fsync,
rename), at most one snapshot interval of work is lost, and the run that went through the kills
ends with the same final weights, byte for byte, as a run never interrupted. Corrupted state
files give an error naming the file.
"""
from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from landmarknet.caffe.weights import read_weights
from landmarknet.cli.main import main
from test_train import tiny_net

ROOT = Path(__file__).resolve().parent.parent
MAX_ITER, SNAP = 40, 5
SEED = int(os.environ.get("LANDMARKNET_KILL_SEED", "17"))


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory) -> Path:
    """A folder with the tiny net's solver and 16 train / 4 val faces of ytf68 (links)."""
    root = tmp_path_factory.mktemp("kill")
    for split, n in (("train", 16), ("val", 4)):
        (root / "data" / split).mkdir(parents=True)
        for pts in sorted((data_dir / "ytf68" / split).glob("*.pts"))[:n]:
            for f in (pts, pts.with_suffix(".jpg")):
                (root / "data" / split / f.name).symlink_to(f)
    tiny_net(root, k=68, size=32, batch=4)
    return root


def _argv(root: Path, out: Path, resume: Path | None = None) -> list[str]:
    argv = ["train", "--solver", str(root / "solver.prototxt"), "--data", str(root / "data"),
            "--out", str(out), "--workers", "0", "--no-progress", "--threads", "1",
            "--max-iter", str(MAX_ITER), "--snapshot", str(SNAP), "--test-interval", "20"]
    return argv + (["--resume", str(resume)] if resume else [])


def _start(root: Path, out: Path, resume: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "landmarknet.cli.main", *_argv(root, out, resume)],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _temp_files(out: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(out) if e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _iterations_done(out: Path) -> int:
    """Iterations the run finished, from its CSV log (a row per iteration: display 1)."""
    log = out / "tiny_log.csv"
    if not log.exists():
        return 0
    done = 0
    with open(log, newline="") as f:
        for row in csv.DictReader(f):
            try:
                if row.get("loss"):
                    done = max(done, int(row["iter"]) + 1)
            except (TypeError, ValueError):  # the row the kill cut in half
                pass
    return done


def _states(out: Path) -> dict[int, Path]:
    return {int(p.name.split("_iter_")[1].split(".")[0]): p for p in out.glob("*.state.pt")}


def _check_snapshots_whole(out: Path) -> None:
    """Every snapshot file that carries a final name reads back completely."""
    for p in out.glob("*.state.pt"):
        st = torch.load(p, map_location="cpu", weights_only=True)
        assert st["iter"] == int(p.name.split("_iter_")[1].split(".")[0]), p
    for p in out.glob("*.caffemodel"):
        assert read_weights(p), p


def _kill(proc: subprocess.Popen, out: Path, mode: str, rng: random.Random) -> bool:
    """SIGKILL the run in ``mode`` ('snapshot': as soon as a temp file appears; 'step': at a
    random moment once training runs); False if it finished first."""
    deadline = time.monotonic() + 120
    if mode == "step":
        while _iterations_done(out) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        before = set(_temp_files(out))  # leftovers of earlier kills
        while proc.poll() is None and time.monotonic() < deadline:
            if set(_temp_files(out)) - before:
                break
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_sigkill_at_random_moments_then_resume(setup):
    rng = random.Random(SEED)
    ref = setup / "ref"
    assert main(_argv(setup, ref)) == 0
    out = setup / "killed"
    kills: list[tuple[str, int, int]] = []  # (mode, iterations done, newest state)
    resume = None
    for attempt in range(8):
        proc = _start(setup, out, resume)
        mode = "snapshot" if attempt % 2 == 0 else "step"
        if attempt >= 5 or not _kill(proc, out, mode, rng):
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()
            break
        done = _iterations_done(out)
        _check_snapshots_whole(out)
        states = _states(out)
        newest = max(states, default=0)
        assert done - newest <= SNAP, f"killed at {done}, newest state {newest}"
        kills.append((mode, done, newest))
        resume = states.get(newest)
    else:
        pytest.fail("the run never finished")
    assert len(kills) >= 3, kills
    assert any(mode == "snapshot" for mode, _, _ in kills), kills
    final = f"tiny_iter_{MAX_ITER}.caffemodel"
    assert (out / final).read_bytes() == (ref / final).read_bytes(), kills


@pytest.fixture(scope="module")
def real_state(setup) -> Path:
    """A genuine state file of the tiny net (2 iterations)."""
    out = setup / "short"
    argv = _argv(setup, out)
    argv[argv.index("--max-iter") + 1] = "2"
    assert main(argv) == 0
    return out / "tiny_iter_2.state.pt"


@pytest.mark.parametrize("kind", ["truncated", "empty", "foreign", "random", "caffemodel",
                                  "wrong-types"])
def test_corrupted_state_names_the_file(setup, real_state, kind, tmp_path, capsys):
    bad = tmp_path / f"{kind}.state.pt"
    if kind == "truncated":
        bad.write_bytes(real_state.read_bytes()[: real_state.stat().st_size // 2])
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "foreign":
        torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, bad)
    elif kind == "random":
        bad.write_bytes(random.Random(0).randbytes(5000))
    elif kind == "caffemodel":
        bad.write_bytes(real_state.with_name("tiny_iter_2.caffemodel").read_bytes())
    else:
        st = torch.load(real_state, weights_only=True)
        st["net"] = [1, 2, 3]
        torch.save(st, bad)
    capsys.readouterr()
    assert main(_argv(setup, tmp_path / "out", bad)) == 2
    err = capsys.readouterr().err
    assert f"landmarknet train: error: --resume {bad}" in err, err
    assert "Traceback" not in err


def test_device_without_cuda_is_a_clear_error(setup, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this torch has a GPU")
    argv = _argv(setup, tmp_path / "out") + ["--device", "cuda"]
    assert main(argv) == 2
    assert "--device 'cuda': " in capsys.readouterr().err
