"""The house rule of docs/architecture.md, checked: the three rooms of landmarknet depend one way.

The engine (Caffe formats, graph, layers, build, weights, solver) imports nothing from the
tools over a built net or from the landmark application; the tools import nothing from the
application. Every module of the package belongs to exactly one room, so a new module has to
be placed (and the docs' table with it). Imports are read from the source (ast), lazy ones
inside functions included: a lazy import still ties the rooms together.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import landmarknet

PACKAGE = Path(landmarknet.__file__).parent

#: room -> the top-level modules and sub-packages of landmarknet in it (docs/architecture.md).
ROOMS = {
    "engine": {"caffe", "graph", "input_shapes", "layers", "build", "params", "solver", "fillers",
               "memory", "errors", "paths", "jsontext", "runtime", "python_layers"},
    "tools": {"analyze", "render", "export", "emit", "fast", "bench", "layer_docs"},
    "app": {"nets", "netspec", "data", "train", "infer", "detect", "metrics", "decode", "smoothing",
            "models", "bundle", "api", "cli", "preprocess"},
}
ORDER = {"engine": 0, "tools": 1, "app": 2}
#: Crossings against the flow, each with its reason.
ALLOWED = {
    ("landmarknet.bench", "landmarknet.infer"): "bench MODEL accepts an installed bundle's name",
    ("landmarknet.bench", "landmarknet.models"): "bench MODEL accepts an installed bundle's name",
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "landmarknet" or len(parts) < 2:
        return None
    return next((r for r, tops in ROOMS.items() if parts[1] in tops), None)


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = ("landmarknet",) + f.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return found


def test_every_module_is_in_one_room():
    tops = {m.split(".")[1] for m in _modules() if m.count(".") >= 1}
    placed = [t for r in ROOMS.values() for t in r]
    assert len(placed) == len(set(placed)), "a module is in two rooms"
    assert tops <= set(placed), f"place these in a room (and in docs/architecture.md): " \
                                f"{sorted(tops - set(placed))}"


def test_imports_run_one_way():
    wrong = []
    for module, path in _modules().items():
        here = _room(module)
        if here is None:
            continue
        for target, line in _imports(path):
            there = _room(target)
            if there is None or ORDER[there] <= ORDER[here]:
                continue
            key = (module, ".".join(target.split(".")[:2]))
            if key not in ALLOWED:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports "
                             f"{target} ({there})")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_the_check_sees_a_crossing(tmp_path, monkeypatch):
    """The checker itself: an engine module importing the application is reported."""
    fake = tmp_path / "landmarknet"
    (fake / "caffe").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "caffe" / "__init__.py").write_text("def f():\n    from landmarknet.detect import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    try:
        test_imports_run_one_way()
    except AssertionError as exc:
        assert "caffe/__init__.py:2: engine imports landmarknet.detect (app)" in str(exc)
    else:
        raise AssertionError("the crossing was not reported")


def test_the_docs_name_every_room_member():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [t for r in ROOMS.values() for t in r
               if f"`{t}" not in text and f"{t}/" not in text and f"{t}.py" not in text]
    assert not missing, f"docs/architecture.md does not mention {missing}"
