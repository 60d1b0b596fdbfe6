"""A process that imports landmarknet once and forks one child per CLI run (see runner.py).

Starting Python and importing torch takes seconds on a loaded two-core machine; forking a
process that already imported them takes milliseconds, so a few hundred fuzz cases fit in CI.
Protocol: one JSON request per stdin line ``{"argv", "cwd", "timeout", "mem", "out", "err"}``;
one JSON reply per stdout line ``{"status", "signal", "timed_out", "seconds"}``.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

from landmarknet.runtime import choose_openmp_waiting

choose_openmp_waiting()  # as landmarknet.cli.main does, before torch is imported

import torch  # noqa: E402,F401 - imported once here so that each child starts warm

import landmarknet.build  # noqa: E402,F401
import landmarknet.caffe.weights  # noqa: E402,F401
from landmarknet.cli.main import main  # noqa: E402


def _warm_up() -> None:
    """Load what every build loads lazily (shape inference on meta tensors pulls in dynamo's
    decompositions: 3 s), without running a CPU kernel: OpenMP is not fork-safe once used."""
    import importlib
    for name in ("torch._dynamo", "torch._decomp.decompositions", "torch.fx", "numpy", "PIL.Image",
                 "landmarknet.params", "landmarknet.graph", "landmarknet.analyze",
                 *(m for m in __import__("landmarknet.cli.main", fromlist=["x"]).SUBCOMMANDS.values())):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    x = torch.empty(2, 3, 8, 8, device="meta")
    torch.nn.functional.conv2d(x, torch.empty(4, 3, 3, 3, device="meta"))
    torch.nn.functional.linear(x.flatten(1), torch.empty(5, 192, device="meta"),
                               torch.empty(5, device="meta"))


_warm_up()


def _child(req: dict) -> None:
    """In the forked child: limit memory, redirect output, run the CLI, exit with its status."""
    os.setpgid(0, 0)  # its own process group: a timeout kills the graphviz it may start too
    resource.setrlimit(resource.RLIMIT_AS, (req["mem"], req["mem"]))
    for fd, name in ((1, req["out"]), (2, req["err"])):
        f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(os.devnull)
    status = 1
    try:
        os.chdir(req["cwd"])
        status = main(req["argv"])
    except SystemExit as exc:  # argparse
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - print it exactly as Python would, and fail
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status or 0) & 0xFF)


def _serve_one(req: dict) -> dict:
    """Fork, wait up to the timeout (then kill the child's group), describe how it ended."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(req)
    deadline = t0 + req["timeout"]
    timed_out = False
    while True:
        done, wstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            for target in (-pid, pid):
                try:
                    os.kill(target, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _, wstatus = os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    return {"status": os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None,
            "signal": os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None,
            "timed_out": timed_out, "seconds": round(time.monotonic() - t0, 3)}


def serve() -> None:
    """Answer requests until stdin closes."""
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_serve_one(json.loads(line))), flush=True)


if __name__ == "__main__":
    serve()
