#!/usr/bin/env python3
"""Write docs/bad_inputs.md: run every case of tests/bad_inputs.py and the seeded fuzz cases of
tests/fuzz/cases.py, and record what they print.

    python tools/dev/gen_bad_inputs_doc.py            # the CI's fuzz draw (a few minutes)
    python tools/dev/gen_bad_inputs_doc.py --no-fuzz  # the named cases only; keeps the old summary
    LANDMARKNET_FUZZ_CASES=2000 python tools/dev/gen_bad_inputs_doc.py   # a bigger draw
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from bad_inputs import CASES  # noqa: E402
from fuzz.cases import Unavailable, case_count, case_seed, generate, summary_rows  # noqa: E402
from fuzz.runner import run_cli  # noqa: E402

from landmarknet.cli.main import main as cli_main  # noqa: E402

DOC = ROOT / "docs" / "bad_inputs.md"
FUZZ_HEADING = "## Fuzzing"


def _portable(text: str, tmp: str) -> str:
    """The message without this machine's paths: the case's temporary folder dropped, the
    checkout written as <repo> (a fresh clone elsewhere must generate the same page)."""
    return text.replace(tmp + "/", "").replace(str(ROOT), "<repo>").strip()


def run_case(case) -> tuple[int | None, str]:
    """Run one case in a scratch folder; return exit status and stderr (paths shortened)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = case.make(Path(tmp))
        if case.isolated:
            out = run_cli(argv, tmp, timeout=30)
            text = out.problem() or out.error_line or out.stderr
            return out.status, _portable(text, tmp)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli_main(argv)
        return status, _portable(err.getvalue(), tmp)


def case_rows() -> list[str]:
    """The table of named cases."""
    rows = ["# Bad inputs and what they give", "",
            "Each row is a test (`tests/test_bad_inputs.py`, cases in `tests/bad_inputs.py`): the",
            "command exits with the status shown (2: an error) and prints the message below, never a",
            "traceback. Isolated cases run in a child process under a memory limit and a timeout.",
            "Regenerate with `python tools/dev/gen_bad_inputs_doc.py`.", "",
            "| case | input | exit | message |", "|---|---|---|---|"]
    for case in CASES:
        status, err = run_case(case)
        if status == 0 and case.status == 0:
            err = "\n".join(line for line in err.splitlines() if line.startswith("warning"))[:300]
        msg = err.replace("|", "\\|").replace("\n", "<br>")
        rows.append(f"| `{case.id}` | {case.what} | {status} | {msg} |")
    return rows


def fuzz_section() -> list[str]:
    """Run the seeded fuzz draw; a summary per family and mutation, and any problem found."""
    n, seed = case_count(), case_seed()
    outcomes, problems, skipped = [], [], 0
    for case in generate(n, seed):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                argv = case.make(Path(tmp))
            except Unavailable:
                skipped += 1
                continue
            out = run_cli(argv, tmp, timeout=case.timeout)
            outcomes.append((case, out, out.summary(tmp)))
            if out.problem() is not None:
                first = out.problem().strip().splitlines()
                last = first[-1] if len(first) > 1 else first[0]
                problems.append(f"| `{case.id}` | {first[0]} | "
                                f"{re.sub(r'/tmp/[^ ]*/', '', last)[:200]} |".replace("\n", " "))
    rows = [FUZZ_HEADING, "",
            f"`tests/test_fuzz.py` runs {n} seeded cases (seed {seed}; `LANDMARKNET_FUZZ_CASES`,",
            "`LANDMARKNET_FUZZ_SEED`) from `tests/fuzz/cases.py`: mutated prototxts (prototxt/ and",
            "the zoo), `.caffemodel`, HDF5 and `.pt` weights, solvers, model bundles (`model.json`)",
            "and images, each through the CLI in a child process (4 GB address space, 60 s). A",
            "case passes when it ends in a result (exit 0) or one clear error (exit 2); a traceback,",
            "a signal, another status or a hang fails it.", "",
            f"{len(outcomes)} cases run, {skipped} skipped (no ../shared), "
            f"{len(problems)} with a problem.", "",
            "| family | mutation | cases | result | clear error | problem | example message |",
            "|---|---|---|---|---|---|---|", *summary_rows(outcomes)]
    if problems:
        rows += ["", "### Open problems", "", "| case | what | last line |", "|---|---|---|",
                 *problems]
    return rows


def document(fuzz: bool = True, old: str | None = None) -> str:
    """The text of docs/bad_inputs.md; without ``fuzz`` the fuzz summary of ``old`` (default:
    the current file) is kept as it is."""
    rows = case_rows()
    if fuzz:
        tail = fuzz_section()
    else:
        old = (DOC.read_text() if DOC.exists() else "") if old is None else old
        tail = old[old.index(FUZZ_HEADING):].rstrip("\n").splitlines() \
            if FUZZ_HEADING in old else []
    return "\n".join(rows + ([""] + tail if tail else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Regenerate the document."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-fuzz", action="store_true", help="keep the fuzz summary as it is")
    args = ap.parse_args(argv)
    DOC.write_text(document(fuzz=not args.no_fuzz))
    print(f"wrote docs/bad_inputs.md ({len(CASES)} cases"
          + ("" if args.no_fuzz else ", fuzz summary") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
