"""Every deliberate error reaches the user of the CLI as one clear message.

Each case drives one `landmarknet` command into one error class and checks three things: the
command exits non-zero, stderr is one message naming the file / layer / field / option at fault,
and no traceback is printed. A spy on the command function records the exception that was
raised, so a case fails when the command gives the right words through the wrong error class
(or through a stray ValueError that happened to be caught somewhere).

tests/test_bad_inputs.py covers many more broken inputs through `landmarknet build`; this file
covers the breadth: every command, every error class it can raise.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

import landmarknet
from landmarknet.bench import BenchError
from landmarknet.cli import main as cli_main
from landmarknet.cli.common import UsageError
from landmarknet.errors import (DataError, GraphError, LandmarknetError, LayerError, PrototxtError,
                                ShapeError, SolverError, WeightsError)
from landmarknet.infer import ModelError
from landmarknet.memory import MemoryLimitError
from landmarknet.render.layout import LayoutError
from landmarknet.train import TrainingError

GOOD = """name: "good"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 } }
"""
SYNTAX = 'name: "x"\ninput: "data"\nlayer { name: "a" typo: 3 }\n'
MISSING_BOTTOM = """name: "x"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "nope" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 } }
"""
UNKNOWN_TYPE = GOOD + 'layer { name: "weird" type: "Frobnicate" bottom: "conv1" top: "w" }\n'
BAD_SHAPES = GOOD + ('layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "conv1" '
                     'top: "sum" }\n')
TRAIN_NET = GOOD.replace(
    'input: "data"', 'input: "label" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }\ninput: "data"'
) + 'layer { name: "loss" type: "EuclideanLoss" bottom: "conv1" bottom: "label" top: "loss" }\n'
SOLVER_NO_POLICY = 'net: "net.prototxt"\nbase_lr: 0.01\nmax_iter: 1\n'
SOLVER_MISSING_NET = 'net: "absent.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n'


@dataclass
class Case:
    """A command line that must fail with ``error`` and a message containing ``expect``."""

    id: str
    error: type[BaseException] | None  # None: the command handles its error itself
    make: Callable[[Path], list[str]]
    expect: str
    env: dict[str, str] = field(default_factory=dict)


def _file(d: Path, name: str, text: str | bytes) -> str:
    path = d / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


CASES = [
    # build: the engine's errors, one per stage of the flow
    Case("build-prototxt", PrototxtError,
         lambda d: ["build", _file(d, "syntax.prototxt", SYNTAX)], "syntax.prototxt:3"),
    Case("build-graph", GraphError,
         lambda d: ["build", _file(d, "net.prototxt", MISSING_BOTTOM)], "nope"),
    Case("build-layer", LayerError,
         lambda d: ["build", _file(d, "net.prototxt", UNKNOWN_TYPE)], "Frobnicate"),
    Case("build-shape", ShapeError,
         lambda d: ["build", _file(d, "net.prototxt", BAD_SHAPES)], "layer 'sum'"),
    Case("build-weights", WeightsError,
         lambda d: ["build", _file(d, "net.prototxt", GOOD), "--weights",
                    _file(d, "junk.caffemodel", b"\x00\x01junk")], "junk.caffemodel"),
    Case("build-memory", MemoryLimitError,
         lambda d: ["build", _file(d, "net.prototxt", GOOD), "--max-memory", "1K"], "--max-memory"),
    # forward
    Case("forward-usage", UsageError,
         lambda d: ["forward", _file(d, "net.prototxt", GOOD)], "--weights"),
    Case("forward-weights", WeightsError,
         lambda d: ["forward", _file(d, "net.prototxt", GOOD), "--weights",
                    _file(d, "w.h5", b"not hdf5 at all")], "w.h5"),
    Case("forward-prototxt", PrototxtError,
         lambda d: ["forward", str(d / "absent.prototxt"), "--random-weights", "1"],
         "absent.prototxt"),
    # convert
    Case("convert-weights", WeightsError,
         lambda d: ["convert", _file(d, "junk.caffemodel", b"\x00\x01junk"), str(d / "o.h5")],
         "junk.caffemodel"),
    Case("convert-unwritable", WeightsError,
         lambda d: ["convert", _weights(d), str(_blocked(d) / "o.h5")], "blocked/o.h5"),
    Case("convert-usage", UsageError,
         lambda d: ["convert", _file(d, "w.pt", b"x"), str(d / "o.caffemodel")], "--prototxt"),
    # train
    Case("train-solver", SolverError,
         lambda d: ["train", "--solver", _file(d, "solver.prototxt", SOLVER_NO_POLICY),
                    "--data", str(d)], "lr_policy"),
    Case("train-missing-net", TrainingError,
         lambda d: ["train", "--solver", _file(d, "solver.prototxt", SOLVER_MISSING_NET),
                    "--data", str(d)], "absent.prototxt"),
    Case("train-data", DataError,
         lambda d: ["train", "--solver", _solver_with_net(d), "--data", str(d / "nodata"),
                    "--no-progress", "--workers", "0"], "nodata"),
    Case("train-unwritable", TrainingError,
         lambda d: ["train", "--solver", _solver_with_net(d), "--data", str(d),
                    "--out", str(_blocked(d) / "run")], "blocked/run"),
    # evaluate
    Case("evaluate-data", DataError,
         lambda d: ["evaluate", "heatmap4_68_bn", "--data", str(d / "nodata")],
         "nodata"),
    Case("evaluate-model", ModelError,
         lambda d: ["evaluate", str(d / "nomodel"), "--data", str(d)], "nomodel"),
    # detect reports bad images itself (one line per picture, exit 1) and keeps going
    Case("detect-image", None,
         lambda d: ["detect", _file(d, "broken.png", b"not a png"), "-o", str(d / "out")],
         "broken.png"),
    Case("detect-model", ModelError,
         lambda d: ["detect", _file(d, "broken.png", b"x"), "--model", str(d / "nomodel")],
         "nomodel"),
    # visualize
    Case("visualize-layout", LayoutError,
         lambda d: ["visualize", _file(d, "net.prototxt", GOOD), "-o", str(d / "n.svg"),
                    "--layout", "builtin"], "LANDMARKNET_MAX_LAYOUT",
         env={"LANDMARKNET_MAX_LAYOUT": "lots"}),
    Case("visualize-unwritable", UsageError,
         lambda d: ["visualize", _file(d, "net.prototxt", GOOD), "--layout", "builtin",
                    "-o", str(_blocked(d) / "n.svg")], "blocked/n.svg"),
    Case("visualize-usage", UsageError,
         lambda d: ["visualize", _file(d, "net.prototxt", GOOD), "-o", str(d / "n.weird")],
         "n.weird"),
    # export
    Case("export-usage", UsageError,
         lambda d: ["export", _file(d, "net.prototxt", GOOD), "--random-weights", "1",
                    "-o", str(d / "n.txt")], "n.txt"),
    Case("export-prototxt", PrototxtError,
         lambda d: ["export", _file(d, "syntax.prototxt", SYNTAX), "--random-weights", "1",
                    "-o", str(d / "n.onnx")],
         "syntax.prototxt:3"),
    # bench
    Case("bench-model", BenchError,
         lambda d: ["bench", str(d / "nonet.prototxt")], "nonet.prototxt"),
    Case("bench-usage", UsageError,
         lambda d: ["bench", _file(d, "net.prototxt", GOOD), "--repeats", "0"], "--repeats"),
    # models --verify lists every bundle and names the file that fails its sha256 (exit 1)
    Case("models-checksum", None, lambda d: _verify_tampered_bundle(d),
         "mine/model.json", env={"LANDMARKNET_MODELS": "{tmp}/models"}),
]


def _verify_tampered_bundle(d: Path) -> list[str]:
    """`models --verify` over a user bundle whose MANIFEST lists another sha256 for its
    model.json (LANDMARKNET_MODELS points at d/models)."""
    (d / "models" / "mine").mkdir(parents=True)
    _file(d / "models" / "mine", "model.json", '{"name": "mine", "scheme": 68}')
    _file(d / "models", "MANIFEST", "0" * 64 + "  ./mine/model.json\n")
    return ["models", "--verify"]


def _blocked(d: Path) -> Path:
    """A path under which nothing can be written: its parent is a regular file."""
    _file(d, "blocked", "a file, not a folder")
    return d / "blocked"


def _weights(d: Path) -> str:
    """A small valid .caffemodel (written through `landmarknet build`)."""
    net, out = _file(d, "w.prototxt", GOOD), d / "w.caffemodel"
    assert cli_main.main(["build", net, "--random-weights", "1", "--save", str(out)]) == 0
    return str(out)


def _solver_with_net(d: Path) -> str:
    """A valid solver next to a valid net, so that training stops at the data."""
    _file(d, "net.prototxt", TRAIN_NET)
    return _file(d, "solver.prototxt", SOLVER_MISSING_NET.replace("absent", "net"))


def run_cli(argv: list[str], monkeypatch) -> tuple[int, BaseException | None]:
    """``landmarknet ARGV`` in this process; its exit status and the exception it raised."""
    seen: dict[str, BaseException] = {}
    real_parser = cli_main.make_parser

    def spying_parser():
        parser = real_parser()
        parse = parser.parse_args

        def parse_args(args=None, namespace=None):
            ns = parse(args, namespace)
            command = ns.func

            def recorded(a):
                try:
                    return command(a)
                except BaseException as exc:
                    seen["error"] = exc
                    raise
            ns.func = recorded
            return ns
        parser.parse_args = parse_args
        return parser

    monkeypatch.setattr(cli_main, "make_parser", spying_parser)
    status = cli_main.main(argv)
    return status, seen.get("error")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_command_error_is_one_clear_message(case, tmp_path, monkeypatch, capsys):
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    argv = case.make(tmp_path)
    status, error = run_cli(argv, monkeypatch)
    captured = capsys.readouterr()
    err, out = (text.replace(str(tmp_path) + "/", "") for text in (captured.err, captured.out))
    assert status != 0, err
    assert "Traceback" not in err + out
    if case.error is None:  # handled inside the command (a report), not by main's catch-all
        assert error is None
        assert case.expect in err + out, err + out
        return
    assert case.expect in err, err
    assert isinstance(error, case.error), f"{type(error).__name__}: {error}"
    # main prints exactly the exception's text, once, behind the command's name
    lines = [line for line in err.splitlines() if line.startswith("landmarknet ")]
    assert lines == [f"landmarknet {argv[0]}: error: {str(error).splitlines()[0]}"
                     .replace(str(tmp_path) + "/", "")], err


def test_every_command_has_an_error_case():
    """A new subcommand needs its cases here."""
    commands = {c.id.split("-")[0] for c in CASES}
    assert set(cli_main.SUBCOMMANDS) <= commands


def _exception_classes() -> list[type]:
    """Every public exception class defined in the landmarknet package (warnings and private
    classes used for control flow inside one module, such as bench's _Skip, left out)."""
    found = {}
    for info in pkgutil.walk_packages(landmarknet.__path__, "landmarknet."):
        if info.name.endswith("caffe_pb2"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and not issubclass(obj, Warning) and not name.startswith("_")
                    and obj.__module__ == info.name):
                found[f"{info.name}.{name}"] = obj
    return [found[k] for k in sorted(found)]


def test_every_landmarknet_exception_derives_from_landmarknet_error():
    classes = _exception_classes()
    assert len(classes) >= 20  # the walk found the package's classes at all
    strays = [f"{c.__module__}.{c.__name__}" for c in classes
              if not issubclass(c, LandmarknetError)]
    assert strays == []


def test_real_process_prints_no_traceback(tmp_path):
    """The installed entry point, as a user runs it: exit 2, one line, no traceback."""
    net = _file(tmp_path, "net.prototxt", UNKNOWN_TYPE)
    env = {**os.environ, "LANDMARKNET_MAX_LAYOUT": "lots"}
    proc = subprocess.run([sys.executable, "-m", "landmarknet.cli.main", "visualize", net,
                           "-o", str(tmp_path / "n.svg")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Frobnicate" in proc.stderr or "LANDMARKNET_MAX_LAYOUT" in proc.stderr


def test_errors_page_lists_every_class():
    """docs/errors.md has a row for every public exception class of the package."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    missing = sorted({c.__name__ for c in _exception_classes()} - set(re.findall(r"`(\w+)`", text)))
    assert missing == [], f"docs/errors.md lacks {missing}"
