"""Generated documentation stays in step with the code."""
from __future__ import annotations

from pathlib import Path

import pytest

from landmarknet.layer_docs import render

ROOT = Path(__file__).resolve().parent.parent


def test_layer_reference_is_current():
    current = (ROOT / "docs" / "layers.md").read_text()
    assert current == render(), ("docs/layers.md is stale: run "
                                 "`python -m landmarknet.layer_docs > docs/layers.md`")


def test_layer_reference_covers_the_issue_list():
    text = (ROOT / "docs" / "layers.md").read_text()
    wanted = """Input DummyData Convolution Deconvolution Pooling InnerProduct ReLU PReLU ELU Sigmoid
    TanH AbsVal BNLL Power Exp Log Clip Swish Threshold Dropout BatchNorm Scale Bias Eltwise Concat
    Slice Split Flatten Reshape Crop Softmax LRN MVN Reduction ArgMax Silence Tile Permute
    EuclideanLoss SoftmaxWithLoss SigmoidCrossEntropyLoss Accuracy Python Normalize PriorBox
    DetectionOutput Upsample Interp ReLU6 ShuffleChannel Axpy""".split()
    missing = [t for t in wanted if f"`{t}`" not in text and t != "Input"]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------
# `make docs` / tools/gen_docs.py --check


def _gen_docs():
    """tools/gen_docs.py as a module."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gen_docs_check_passes_on_the_fast_documents():
    """The command `make docs-check` runs, on the documents that take seconds to make."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check",
                           "--only", "layers,bad-inputs"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "layers: 1 file(s), up to date" in proc.stdout
    assert "bad-inputs: 1 file(s), up to date" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["networks", "zoo"])
def test_gen_docs_check_passes_on_the_slow_documents(name, capsys):
    """networks builds every net (about a minute); zoo needs the reference Caffe (3 minutes)."""
    tool = _gen_docs()
    gen = next(g for g in tool.GENERATORS if g.name == name)
    why = gen.missing()
    if why:
        pytest.skip(why)
    status = tool.main(["--check", "--only", name])
    assert status == 0, capsys.readouterr().err


def test_gen_docs_check_names_the_stale_file(tmp_path, monkeypatch, capsys):
    tool = _gen_docs()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "layers.md").write_text(render().replace("Convolution", "Convolutoin"))
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool.stale_files, "__defaults__", ((), tmp_path))
    assert tool.main(["--check", "--only", "layers"]) == 1
    assert "docs/layers.md" in capsys.readouterr().err
    (tmp_path / "docs" / "layers.md").unlink()  # a missing file is stale too
    assert tool.main(["--check", "--only", "layers"]) == 1
    assert tool.main(["--only", "layers"]) == 0  # writing makes it current
    assert (tmp_path / "docs" / "layers.md").read_text() == render()
    assert tool.main(["--check", "--only", "layers"]) == 0


def test_gen_docs_ignores_only_what_moves_between_runs():
    tool = _gen_docs()
    here = "more than the limit of 24.2 GB (the memory available on this machine now"
    there = "more than the limit of 3.5 GB (the memory available on this machine now"
    assert tool.comparable(here, tool.MEMORY) == tool.comparable(there, tool.MEMORY)
    assert here != there and tool.comparable(here, []) != tool.comparable(there, [])
    assert tool.comparable(here, tool.MEMORY) != \
        tool.comparable(here.replace("more", "less"), tool.MEMORY)
    assert tool.comparable("the limit of 24.2 GB (--max-memory)", tool.MEMORY) != \
        tool.comparable("the limit of 3.5 GB (--max-memory)", tool.MEMORY)  # set by the case
    row = "| agrees, 134 blobs, max 7.3e-07 |"
    assert tool.comparable(row, tool.MAX_ERROR) == \
        tool.comparable(row.replace("7.3e-07", "7.2e-07"), tool.MAX_ERROR)
    assert tool.comparable(row, tool.MAX_ERROR) != \
        tool.comparable(row.replace("agrees, 134", "differs in 1/134"), tool.MAX_ERROR)


TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py"))


@pytest.mark.parametrize("script", TOOLS)
def test_tool_script_is_documented_and_answers_help(script):
    """tools/*.py: a docstring saying what the script is, and --help that works from anywhere."""
    import ast
    import subprocess
    import sys
    path = ROOT / "tools" / script
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"{script} needs a docstring"
    proc = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                          timeout=300, cwd="/")
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr
