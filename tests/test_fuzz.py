"""Fuzzing the CLI: seeded, mutated inputs of every kind end in a result or one clear error.

Cases come from tests/fuzz/cases.py (prototxt text, .caffemodel/HDF5/.pt weights, solvers,
model bundles, images); each runs in a child process under a memory limit and a timeout
(tests/fuzz/runner.py). A Python traceback, a signal, an exit status other than 0 or 2, an exit 2
without a ``landmarknet CMD: error:`` line, an error message of kilobytes or a hang fails it.

CI runs DEFAULT_CASES cases; more with ``LANDMARKNET_FUZZ_CASES=2000`` (the big zoo nets join
the sources), another draw with ``LANDMARKNET_FUZZ_SEED``; ``LANDMARKNET_FUZZ_ISOLATION=exec``
starts a fresh interpreter per case instead of forking a warm one.
"""
from __future__ import annotations

import pytest

from fuzz.cases import GOOD, Unavailable, generate
from fuzz.runner import run_cli

CASES = generate()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fuzz_case_ends_cleanly(case, tmp_path):
    try:
        argv = case.make(tmp_path)
    except Unavailable as exc:
        pytest.skip(str(exc))
    out = run_cli(argv, tmp_path, timeout=case.timeout)
    problem = out.problem()
    assert problem is None, f"landmarknet {' '.join(map(str, argv))}\n{problem}"


def test_exec_and_fork_isolation_agree(tmp_path):
    """The fork server runs the same CLI as a fresh `python -m landmarknet.cli.main`."""
    (tmp_path / "good.prototxt").write_text(GOOD)
    (tmp_path / "bad.prototxt").write_text(GOOD.replace("kernel_size: 3", "kernel_sise: 3"))
    for name in ("good.prototxt", "bad.prototxt"):
        fork = run_cli(["build", name, "--json"], tmp_path, mode="fork")
        exe = run_cli(["build", name, "--json"], tmp_path, mode="exec")
        assert (fork.status, fork.stdout, fork.error_line) == \
            (exe.status, exe.stdout, exe.error_line), (fork, exe)
        assert fork.problem() is None


def test_runner_sees_tracebacks_signals_and_hangs(tmp_path):
    """The judge itself: a crash, a signal and a hang are each reported (not passed)."""
    from fuzz.runner import Outcome
    tb = Outcome([], 1, None, False, "", "Traceback (most recent call last):\n  x\nKeyError: 1", 0.1)
    assert "traceback" in tb.problem()
    assert "SIGSEGV" in Outcome([], None, 11, False, "", "", 0.1).problem()
    assert "hang" in Outcome([], None, 9, True, "", "", 60).problem()
    assert "without" in Outcome([], 2, None, False, "", "usage: oops", 0.1).problem()
    long = Outcome([], 2, None, False, "", "landmarknet build: error: " + "9" * 10000, 0.1)
    assert "characters" in long.problem()
    assert Outcome([], 2, None, False, "", "landmarknet build: error: x.prototxt:3: bad", 0.1
                   ).problem() is None
    (tmp_path / "good.prototxt").write_text(GOOD)
    out = run_cli(["build", "good.prototxt"], tmp_path, timeout=0.01)  # builds take longer
    assert out.timed_out and "hang" in out.problem()
