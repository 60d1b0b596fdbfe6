#!/usr/bin/env python3
"""Regenerate the zoo table of docs/caffe_compat.md: each deploy net of ../shared/zoo, the layer
types and fork fields it needs, and how landmarknet compares with OpenCV 4.x and with the
reference Caffe of `make caffe-ref` (developer tool; runs every comparison, about 3 minutes).

    LANDMARKNET_CAFFE_REF=~/.cache/landmarknet/caffe-ref \\
        .venv/bin/python tools/dev/zoo_compat_table.py [--write]

Without --write it prints the table; with it, replaces the text between the zoo-table markers
in docs/caffe_compat.md. The comparisons are those of tests/test_real_caffe_zoo.py
(tests/zoo_references.py); OpenCV is also tried on the nets that the tests check with Caffe.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from landmarknet.caffe.prototxt import read_net  # noqa: E402
from landmarknet.paths import shared_dir  # noqa: E402
from opencv_ref import OpenCVFailed  # noqa: E402
from reference.real_caffe import CaffeFailed  # noqa: E402
from zoo_references import (ZOO, ZooNet, bad_rows, compare_with_caffe,  # noqa: E402
                            compare_with_opencv, detection_problem, worst)

DOC = ROOT / "docs" / "caffe_compat.md"
BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"

# The layer types BVLC Caffe 1.0 registers; anything else is a fork's.
BVLC_TYPES = set("""AbsVal Accuracy ArgMax BatchNorm BatchReindex Bias BNLL Clip Concat
ContrastiveLoss Convolution Crop Data Deconvolution Dropout DummyData Eltwise ELU Embed
EuclideanLoss Exp Filter Flatten HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss
InnerProduct Input Log LRN LSTM LSTMUnit MemoryData MultinomialLogisticLoss MVN Parameter Pooling
Power PReLU Python Recurrent Reduction ReLU Reshape RNN Scale Sigmoid SigmoidCrossEntropyLoss
Silence Slice Softmax SoftmaxWithLoss Split SPP Swish TanH Threshold Tile WindowData""".split())

TOKEN = re.compile(r"#[^\n]*|\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|[{}:]|[^\s{}:#\"']+")


def bvlc_schema(shared: Path) -> dict[tuple[str, str], str]:
    """(message, field) -> field type, from ../shared/caffe_fields.tsv (BVLC's schema)."""
    rows = (shared / "caffe_fields.tsv").read_text().splitlines()[1:]
    return {(r[0], r[1]): r[4] for r in (line.split("\t") for line in rows) if len(r) > 4}


def fork_fields(text: str, schema: dict[tuple[str, str], str]) -> list[str]:
    """Fields of the prototxt that BVLC's schema lacks: ``field`` or ``block.field``, and for a
    block BVLC lacks altogether, ``block{the fields used in it}``."""
    tokens = [t for t in TOKEN.findall(text) if not t.startswith("#")]
    # each open block: (BVLC message type or None, field name, fields used when unknown)
    stack: list[tuple[str | None, str, list[str] | None]] = [("NetParameter", "", None)]
    found: dict[str, list[str] | None] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "}":
            stack.pop()
            i += 1
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        opens = nxt == "{" or (nxt == ":" and i + 2 < len(tokens) and tokens[i + 2] == "{")
        msg, where, used = stack[-1]
        known = msg is not None and (msg, tok) in schema
        child_used: list[str] | None = None
        if msg is None:
            if used is not None and tok not in used:
                used.append(tok)
        elif not known:
            name = f"{where}.{tok}" if where and where not in ("layer", "layers") else tok
            child_used = found.setdefault(name, []) if opens else None
            found.setdefault(name, None)
        if opens:
            stack.append((schema.get((msg, tok)) if known else None, tok, child_used))
            i += 2 if nxt == "{" else 3
        else:
            i += 3 if nxt == ":" else 1
    return [f"{k}{{{', '.join(v)}}}" if v else k for k, v in found.items()]


def layer_types(prototxt: Path) -> list[str]:
    """The net's layer types in order of first use, fork types marked with *."""
    net = read_net(prototxt, strict=False).net
    seen: list[str] = []
    for layer in net.layer:
        if layer.type not in seen:
            seen.append(layer.type)
    return [t if t in BVLC_TYPES else f"{t}*" for t in seen]


def verdict(run) -> str:
    """One table cell: agrees (max error), differs (first blob), or refused (why)."""
    try:
        result, case = run()
    except CaffeFailed as exc:
        return "refused: " + _first_line(str(exc.log) or str(exc))
    except OpenCVFailed as exc:
        return "refused: " + _first_line(str(exc))
    except Exception as exc:  # noqa: BLE001 - landmarknet's own failure is a table entry too
        return f"landmarknet fails: {type(exc).__name__}: {_short(str(exc))}"
    bad = bad_rows(result.rows)
    if "detection_out" in result.names and not bad:
        problem = detection_problem(result.ours["detection_out"],
                                    result.ref["detection_out"], case.min_detections)
        if problem:
            return f"differs: detection_out ({_short(problem)})"
    if bad:
        blob, err = bad[0]
        what = err if isinstance(err, str) else f"{err:.2g}"
        return f"differs in {len(bad)}/{len(result.rows)} blobs, first `{blob}` ({_short(what)})"
    unreached = f" ({len(result.unreached)} not addressable)" if result.unreached else ""
    return f"agrees, {len(result.rows)} blobs{unreached}, max {worst(result.rows):.1e}"


def _first_line(log: str) -> str:
    """The telling part of a reference's error log."""
    for key in ("Can't create layer", "UnknownField should", "Assertion failed", "Check failed",
                "no field named", "Unknown layer type", "Requested", "error:"):
        for line in log.splitlines():
            if key in line:
                return _short(line[line.index(key):])
    return _short(log.strip().splitlines()[-1] if log.strip() else "?")


def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= n else text[:n - 3] + "..."


def row(case: ZooNet, zoo: Path, schema: dict, tmp: Path) -> str:
    """One markdown row for one net."""
    prototxt = zoo / case.rel
    types = ", ".join(layer_types(prototxt))
    forks = ", ".join(f"`{f}`" for f in fork_fields(prototxt.read_text(), schema)) or "none"
    opencv_case = case if case.opencv else dataclasses.replace(case, opencv="as is")
    opencv = verdict(lambda: (compare_with_opencv(opencv_case, zoo, tmp / "cv"), case))
    if case.opencv_skip and opencv.startswith("agrees"):
        skipped = ", ".join(f"`{b}`" for b in case.opencv_skip)
        opencv += f" ({skipped} not compared: see where OpenCV differs)"
    if opencv_case.opencv != "as is":
        opencv = f"{opencv} ({opencv_case.opencv}); as is: refused ({case.opencv_refusal})"
    if case.caffe:
        caffe = verdict(lambda: (compare_with_caffe(case, zoo, tmp / "caffe"), case))
        if case.caffe != "as is":
            caffe = f"{caffe} ({case.caffe}); as is: refused ({case.caffe_refusal})"
        if case.model:
            shipped = verdict(lambda: (compare_with_caffe(case, zoo, tmp / "w", True), case))
            caffe += f"; shipped weights: {shipped}"
    else:
        caffe = f"refused: {case.caffe_refusal}"
    return f"| {case.id} | {types} | {forks} | {opencv} | {caffe} |"


def table(zoo: Path, shared: Path) -> str:
    """The whole markdown table."""
    schema = bvlc_schema(shared)
    lines = ["| net | layer types (* = fork) | fields BVLC lacks | OpenCV 4.x | reference Caffe |",
             "|---|---|---|---|---|"]
    for case in ZOO:
        with tempfile.TemporaryDirectory() as tmp:
            for sub in ("cv", "caffe", "w"):
                (Path(tmp) / sub).mkdir()
            lines.append(row(case, zoo, schema, Path(tmp)))
            print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


def document(old: str | None = None) -> str:
    """docs/caffe_compat.md (``old``, default the current file) with a fresh zoo table."""
    shared = shared_dir()
    doc = DOC.read_text() if old is None else old
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + table(shared / "zoo", shared) + "\n" + doc[end:]


def main(argv: list[str] | None = None) -> int:
    """Print the table, or with --write put it into docs/caffe_compat.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update docs/caffe_compat.md")
    args = ap.parse_args(argv)
    if not args.write:
        shared = shared_dir()
        print(table(shared / "zoo", shared))
        return 0
    DOC.write_text(document())
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
