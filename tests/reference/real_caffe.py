"""A real Caffe as the reference: the build of tools/caffe_ref/build.sh, run in a subprocess.

Caffe aborts the whole process on any error (glog ``CHECK``), so every job runs in a child
process: ``<caffe venv>/bin/python _caffe_worker.py REQUEST.json`` with the built ``pycaffe`` on
``PYTHONPATH``. A job is a module ``_caffe_job_<name>.py`` in this folder with a function
``run(caffe, request: dict, arrays: dict[str, np.ndarray]) -> (dict, dict[str, np.ndarray])``;
JSON and ``.npz`` files carry the request and the results (never pickles).

Where the build is: ``$LANDMARKNET_CAFFE_REF`` or ``.caffe-ref`` in the repository (``make
caffe-ref`` builds it). Without a build, :func:`run_caffe` raises :class:`CaffeUnavailable`;
tests skip on it unless ``LANDMARKNET_REQUIRE_CAFFE_REF=1`` (CI) turns the skip into a failure.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["CaffeUnavailable", "CaffeFailed", "caffe_ref_home", "caffe_ref_python", "run_caffe",
           "caffe_forward", "caffe_load", "without_blocks", "without_layers", "map_layers",
           "CAFFE_REF_ENV", "REQUIRE_ENV"]

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CAFFE_REF_ENV = "LANDMARKNET_CAFFE_REF"
REQUIRE_ENV = "LANDMARKNET_REQUIRE_CAFFE_REF"
EXIT_FAILED = 4  # the job raised a Python exception (Caffe's own errors abort: a signal)


class CaffeUnavailable(RuntimeError):
    """The reference Caffe has not been built (run ``make caffe-ref``)."""


class CaffeFailed(RuntimeError):
    """The reference Caffe refused the job or crashed; the message quotes its log."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message + (("\n" + log[-4000:]) if log else ""))
        self.log = log


def caffe_ref_home() -> Path:
    """The folder that tools/caffe_ref/build.sh filled."""
    env = os.environ.get(CAFFE_REF_ENV)
    return Path(env) if env else REPO_ROOT / ".caffe-ref"


def caffe_ref_python() -> tuple[Path, Path]:
    """(interpreter, pycaffe folder) of the build, or CaffeUnavailable."""
    home = caffe_ref_home()
    python = home / "venv" / "bin" / "python"
    pycaffe = home / "src" / "python"
    if not python.exists() or not (pycaffe / "caffe" / "_caffe.so").exists():
        raise CaffeUnavailable(f"no reference Caffe in {home} (run `make caffe-ref`, or set "
                               f"{CAFFE_REF_ENV} to the folder tools/caffe_ref/build.sh made)")
    return python, pycaffe


# Blocks whose only effect in Caffe is on the file system: DetectionOutput's save_output_param
# makes the SSD fork DELETE and recreate `output_directory` (a path of its author's machine in
# public deploy files) and abort when its label map is missing. The numbers do not depend on it.
SIDE_EFFECT_BLOCKS = ("save_output_param",)


def without_blocks(text: str, names: tuple[str, ...] = SIDE_EFFECT_BLOCKS) -> str:
    """The prototxt ``text`` without the ``name { ... }`` blocks named (strings and comments
    are honoured when matching braces)."""
    out, i, n = [], 0, len(text)
    while i < n:
        match = _block_start(text, i, names)
        if match is None:
            out.append(text[i:])
            break
        start, body = match
        out.append(text[i:start])
        i = _block_end(text, body)
    return "".join(out)


def map_layers(text: str, rewrite: Callable[[str, str | None], str]) -> str:
    """The prototxt ``text`` with each top-level ``layer { }`` block replaced by
    ``rewrite(block, its type)`` (return the block itself to keep it, "" to drop it)."""
    out, i = [], 0
    while True:
        match = _block_start(text, i, ("layer",))
        if match is None:
            out.append(text[i:])
            return "".join(out)
        start, body = match
        end = _block_end(text, body)
        block = text[start:end]
        out.append(text[i:start] + rewrite(block, _type_of(block)))
        i = end


def without_layers(text: str, layer_type: str) -> str:
    """The prototxt ``text`` without its top-level ``layer { type: "<layer_type>" ... }``."""
    return map_layers(text, lambda block, kind: "" if kind == layer_type else block)


def _type_of(block: str) -> str | None:
    """The ``type`` of one ``layer { }`` block, read at its own level (not in nested blocks)."""
    inner = block[block.index("{") + 1:block.rindex("}")]
    depth, top_level = 0, []
    for c in inner:
        depth += (c == "{") - (c == "}")
        if depth == 0 and c != "}":
            top_level.append(c)
    found = re.search(r"(?:^|\s)type\s*:\s*[\"']?([\w.]+)", "".join(top_level))
    return found.group(1) if found else None


def _block_start(text: str, pos: int, names: tuple[str, ...]) -> tuple[int, int] | None:
    """(start of the first ``name {`` at or after pos, index after its brace), or None."""
    best = None
    for name in names:
        k = pos
        while (k := text.find(name, k)) >= 0:
            j = k + len(name)
            while j < len(text) and text[j] in " \t\r\n:":
                j += 1
            before_ok = k == 0 or not (text[k - 1].isalnum() or text[k - 1] == "_")
            if before_ok and j < len(text) and text[j] == "{":
                if best is None or k < best[0]:
                    best = (k, j + 1)
                break
            k += len(name)
    return best


def _block_end(text: str, pos: int) -> int:
    """Index after the brace that closes the block whose body starts at pos."""
    depth, i = 1, pos
    while i < len(text) and depth:
        c = text[i]
        if c in "\"'":
            end = text.find(c, i + 1)
            while end > 0 and text[end - 1] == "\\":
                end = text.find(c, end + 1)
            i = end if end > 0 else len(text)
        elif c == "#":
            nl = text.find("\n", i)
            i = nl if nl > 0 else len(text)
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        i += 1
    return i


def _harmless_prototxt(path: str, tmpdir: Path) -> str:
    """``path``, or a copy in tmpdir without the blocks that touch the file system."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not any(name in text for name in SIDE_EFFECT_BLOCKS):
        return str(Path(path).resolve())  # the child runs in a temporary folder
    copy = tmpdir / ("net_" + Path(path).name)
    copy.write_text(without_blocks(text), encoding="utf-8")
    return str(copy)


def run_caffe(job: str, request: dict, arrays: dict[str, np.ndarray] | None = None,
              timeout: float = 900) -> tuple[dict, dict[str, np.ndarray]]:
    """Run ``_caffe_job_<job>.run`` in the reference Caffe; returns its (JSON, arrays).

    A ``prototxt`` in the request is first stripped of ``save_output_param`` (see
    SIDE_EFFECT_BLOCKS), which would make Caffe delete folders named in the file.
    """
    python, pycaffe = caffe_ref_python()
    with tempfile.TemporaryDirectory(prefix="caffe_ref_") as tmp:
        tmpdir = Path(tmp)
        if request.get("prototxt"):
            request = dict(request, prototxt=_harmless_prototxt(str(request["prototxt"]), tmpdir))
        req = dict(request, job=job, inputs=str(tmpdir / "in.npz"),
                   result=str(tmpdir / "out.json"), outputs=str(tmpdir / "out.npz"),
                   workdir=str(tmpdir))
        np.savez(req["inputs"], **(arrays or {}))
        (tmpdir / "request.json").write_text(json.dumps(req))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pycaffe), str(HERE)]),
                   GLOG_minloglevel="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONHOME", None)
        try:
            proc = subprocess.run([str(python), str(HERE / "_caffe_worker.py"),
                                   str(tmpdir / "request.json")], env=env, capture_output=True,
                                  text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise CaffeFailed(f"reference Caffe job {job!r} timed out after {timeout} s") from exc
        log = proc.stderr + proc.stdout
        if proc.returncode < 0:
            raise CaffeFailed(f"reference Caffe aborted ({signal.Signals(-proc.returncode).name})"
                              f" in job {job!r}", log)
        if proc.returncode != 0:
            raise CaffeFailed(f"reference Caffe job {job!r} failed (exit {proc.returncode})", log)
        meta = json.loads((tmpdir / "out.json").read_text())
        with np.load(req["outputs"], allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
        return meta, out


def caffe_forward(prototxt: str | Path, inputs: dict[str, np.ndarray], *,
                  weights: str | Path | None = None, seed: int = 0,
                  save_weights: str | Path | None = None, phase: str = "test",
                  blobs: list[str] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Forward pass in the reference Caffe (job ``forward``): (meta, {blob name: array}).

    With ``weights=None`` Caffe fills the net with seeded random weights
    (``_caffe_job_forward.randomize``) and, given ``save_weights``, writes them as a
    .caffemodel for landmarknet to load: the weights then come from Caffe itself.
    """
    request = {"prototxt": str(prototxt), "phase": phase, "seed": seed,
               "weights": str(Path(weights).resolve()) if weights else None,
               "save_weights": str(Path(save_weights).resolve()) if save_weights else None,
               "blobs": blobs}
    meta, out = run_caffe("forward", request, inputs)
    return meta, {name: out[f"b{i}"] for i, name in enumerate(meta["blobs"])}


def caffe_load(prototxt: str | Path, phase: str = "test") -> dict:
    """Build the net in the reference Caffe without running it (job ``load``): its layers (in
    Caffe's order, inserted Split layers included) and blob shapes; CaffeFailed if refused."""
    meta, _ = run_caffe("load", {"prototxt": str(prototxt), "phase": phase}, timeout=300)
    return meta
