"""Every bad input of tests/bad_inputs.py: its exit status, a clear message, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from bad_inputs import CASES
from fuzz.runner import run_cli
from landmarknet.cli.main import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.md"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_clear_error(case, tmp_path, capsys):
    argv = case.make(tmp_path)
    if case.isolated:  # a hang, a recursion or a memory bomb must not take pytest down
        out = run_cli(argv, tmp_path, timeout=30)
        assert out.problem() is None, out.problem()
        status, err = out.status, out.stderr
    else:
        capsys.readouterr()
        status = main(argv)  # any exception other than ours escapes here and fails the test
        err = capsys.readouterr().err
    assert status == case.status, err
    assert case.expect in err, err
    assert "unpickled!" not in err


def test_docs_table_lists_every_case():
    text = DOC.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/bad_inputs.md lacks {missing}: run python tools/dev/gen_bad_inputs_doc.py"
