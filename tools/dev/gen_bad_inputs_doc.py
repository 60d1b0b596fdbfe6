#!/usr/bin/env python3
"""Write docs/bad_inputs.md: run every case of tests/bad_inputs.py and record what it prints."""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from bad_inputs import CASES  # noqa: E402

from landmarknet.cli.main import main  # noqa: E402


def run_case(case) -> tuple[int, str]:
    """Run one case in a scratch folder; return exit status and stderr (paths shortened)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = case.make(Path(tmp))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
        return status, err.getvalue().replace(tmp + "/", "").strip()


def main_doc() -> None:
    """Regenerate the table."""
    rows = ["# Bad inputs and what they give", "",
            "Each row is a test (`tests/test_bad_inputs.py`, cases in `tests/bad_inputs.py`): the",
            "command exits with status 2 and prints the message below, never a traceback.",
            "Regenerate with `python tools/dev/gen_bad_inputs_doc.py`.", "",
            "| case | input | exit | message |", "|---|---|---|---|"]
    for case in CASES:
        status, err = run_case(case)
        msg = err.replace("|", "\\|").replace("\n", "<br>")
        rows.append(f"| `{case.id}` | {case.what} | {status} | {msg} |")
    (ROOT / "docs" / "bad_inputs.md").write_text("\n".join(rows) + "\n")
    print(f"wrote docs/bad_inputs.md ({len(CASES)} cases)")


if __name__ == "__main__":
    main_doc()
