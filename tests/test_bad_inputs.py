"""Every bad input of tests/bad_inputs.py: exit status 2, a clear message, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from bad_inputs import CASES
from landmarknet.cli.main import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.md"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_clear_error(case, tmp_path, capsys):
    argv = case.make(tmp_path)
    capsys.readouterr()
    status = main(argv)  # any exception other than ours escapes here and fails the test
    err = capsys.readouterr().err
    assert status == 2, err
    assert case.expect in err, err
    assert "unpickled!" not in err


def test_docs_table_lists_every_case():
    text = DOC.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/bad_inputs.md lacks {missing}: run python tools/dev/gen_bad_inputs_doc.py"
