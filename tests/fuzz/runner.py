"""Run one ``landmarknet`` command line isolated, and judge how it ended.

Every fuzz case goes through :func:`run_cli`: a child process under a memory limit
(RLIMIT_AS) and a timeout. It must end in a result (exit 0) or in one clear error (exit 2,
``landmarknet CMD: error: ...``), never in a Python traceback, a signal, another status or a
hang; :meth:`Outcome.problem` says which of these happened.

Two ways to start the child (``LANDMARKNET_FUZZ_ISOLATION``):

* ``fork`` (default): a fork server (forkserver.py) imports landmarknet and torch once, then
  forks a child per case, which runs ``landmarknet.cli.main.main(argv)``: milliseconds per start;
* ``exec``: ``python -m landmarknet.cli.main ARGV`` per case, exactly as a user runs it (about
  3 s per start on two loaded cores; the CI runs a few cases this way to keep both honest).
"""
from __future__ import annotations

import atexit
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = int(float(os.environ.get("LANDMARKNET_FUZZ_MEMORY_GB", "4")) * 2**30)
TIMEOUT = float(os.environ.get("LANDMARKNET_FUZZ_TIMEOUT", "60"))
#: The error line may quote the input, but never at length (a 100 KB message is a finding).
MAX_ERROR_CHARS = 4000


@dataclass
class Outcome:
    """How one run ended."""

    argv: list[str]
    status: int | None  # exit status, None when killed by a signal
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_line(self) -> str | None:
        """The ``landmarknet CMD: error: ...`` text (to the end of stderr), if any."""
        m = re.search(r"^landmarknet [\w-]+: error: .*", self.stderr, re.M | re.S)
        return m.group(0).strip() if m else None

    def partial_failure(self) -> bool:
        """``detect`` over several inputs goes on past one it cannot read and exits 1, each
        such input named with its reason on stderr ('N could not be read'): a clear result."""
        return (self.status == 1 and bool(self.argv) and self.argv[0] == "detect"
                and re.search(r"^\d+ input\(s\) in .* \d+ could not be read", self.stderr, re.M)
                is not None and re.search(r"^detect: .+: ", self.stderr, re.M) is not None)

    def problem(self) -> str | None:
        """None when the run ended well (a result, or one clear error); else what went wrong."""
        if self.timed_out:
            return f"hang: no result after {self.seconds:.0f} s"
        if self.signal is not None:
            return f"killed by signal {signal.Signals(self.signal).name}"
        if "Traceback (most recent call last)" in self.stderr:
            return "Python traceback:\n" + self.stderr[-3000:]
        if self.partial_failure():
            return None
        if self.status not in (0, 2):
            return f"exit status {self.status}:\n{self.stderr[-2000:]}"
        if self.status == 2:
            err = self.error_line
            if err is None:
                return f"exit 2 without a 'landmarknet CMD: error:' line:\n{self.stderr[-2000:]}"
            if len(err) > MAX_ERROR_CHARS:
                return f"error message of {len(err)} characters: {err[:300]}..."
        return None

    def summary(self, tmp: str | os.PathLike | None = None) -> str:
        """The error line (or 'ok'), with the scratch folder's path cut out, for the docs."""
        text = self.error_line or ("ok" if self.status == 0 else self.problem() or "")
        if tmp is not None:
            text = text.replace(str(tmp).rstrip("/") + "/", "")
        return text


def _limit_memory() -> None:  # preexec_fn of the exec mode
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.setpgid(0, 0)


class _ForkServer:
    """The fork server process (forkserver.py), started on first use."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(ROOT), os.environ.get("PYTHONPATH", "")]))
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("forkserver.py"))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            atexit.register(self.stop)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def run(self, req: dict) -> dict:
        with self.lock:
            proc = self.start()
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the fuzz fork server died")
            return json.loads(line)


_SERVER = _ForkServer()


def isolation() -> str:
    """'fork' or 'exec' (LANDMARKNET_FUZZ_ISOLATION)."""
    mode = os.environ.get("LANDMARKNET_FUZZ_ISOLATION", "fork")
    if mode not in ("fork", "exec"):
        raise ValueError(f"LANDMARKNET_FUZZ_ISOLATION must be fork or exec, got {mode!r}")
    return mode


def run_cli(argv: list[str], cwd: str | os.PathLike, *, timeout: float | None = None,
            mode: str | None = None) -> Outcome:
    """Run ``landmarknet ARGV`` in ``cwd`` in a child under the memory limit and a timeout."""
    timeout = timeout or TIMEOUT
    mode = mode or isolation()
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="fuzzrun") as io_dir:
        out, err = Path(io_dir, "stdout"), Path(io_dir, "stderr")
        if mode == "fork":
            r = _SERVER.run({"argv": argv, "cwd": str(cwd), "timeout": timeout,
                             "mem": MEMORY_LIMIT, "out": str(out), "err": str(err)})
            status, sig, timed_out, seconds = r["status"], r["signal"], r["timed_out"], r["seconds"]
        else:
            status, sig, timed_out, seconds = _exec(argv, cwd, timeout, out, err)
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return Outcome(argv, status, sig, timed_out, read(out), read(err), seconds)


def _exec(argv, cwd, timeout, out: Path, err: Path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "landmarknet.cli.main", *argv], cwd=cwd,
                                stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_limit_memory)
        timed_out = False
        try:
            proc.wait(timeout=timeout + 5)  # + the interpreter's start
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    rc = proc.returncode
    return (rc if rc >= 0 else None), (-rc if rc < 0 else None), timed_out, \
        round(time.monotonic() - t0, 3)
