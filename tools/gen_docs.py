#!/usr/bin/env python3
"""Regenerate every generated document (``make docs``), or check that none is stale.

    python tools/gen_docs.py                    # write what changed
    python tools/gen_docs.py --check            # write nothing; exit 1 naming each stale file
    python tools/gen_docs.py --only layers,bad-inputs
    python tools/gen_docs.py --fuzz             # also rerun the fuzz draw of docs/bad_inputs.md

The generated documents, each from its own generator:

  layers      docs/layers.md            the layer registry (landmarknet.layer_docs)
  networks    prototxt/*, docs/networks.md  landmarknet/nets (tools/generate_prototxt.py)
  bad-inputs  docs/bad_inputs.md        the cases of tests/bad_inputs.py, run through the CLI
  zoo         docs/caffe_compat.md's zoo table  every net of ../shared/zoo against OpenCV and
                                        the reference Caffe (needs `make caffe-ref`; ~3 min)

A generator whose inputs are not on this machine (the reference Caffe, ../shared/zoo) is
skipped with a note, in both modes. Screenshots (tools/dev/doc_screenshots.py) are pictures
taken through Chromium and are not part of this.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tools" / "dev")]

#: Text that differs between machines and runs, replaced before comparing (never when writing).
#: bad-inputs: the memory a machine has available when a case ran.
MEMORY = [(re.compile(r"the limit of [\d.]+ [kMGT]?B \(the memory available"),
           "the limit of <available memory> (the memory available")]
#: zoo: the largest difference a comparison found moves in its last digit between runs (7.2e-07
#: then 7.3e-07); the verdict and the number of blobs compared are what the table asserts.
MAX_ERROR = [(re.compile(r"max \d\.\de[-+]\d\d"), "max <error>")]


@dataclass
class Generator:
    """One generated document: the files it owns and how to produce their text."""

    name: str
    produce: Callable[[argparse.Namespace], dict[str, str]]
    missing: Callable[[], str | None] = lambda: None  # why it cannot run here, or None
    volatile: list = field(default_factory=list)  # (pattern, placeholder) ignored by --check


def _layers(args: argparse.Namespace) -> dict[str, str]:
    from landmarknet.layer_docs import render
    return {"docs/layers.md": render()}


def _networks(args: argparse.Namespace) -> dict[str, str]:
    from landmarknet.nets.docs import expected
    return expected(docs=True)


def _bad_inputs(args: argparse.Namespace) -> dict[str, str]:
    import contextlib
    import io

    from gen_bad_inputs_doc import document
    with contextlib.redirect_stdout(io.StringIO()):  # the cases' own output
        return {"docs/bad_inputs.md": document(fuzz=args.fuzz)}


def _zoo(args: argparse.Namespace) -> dict[str, str]:
    from zoo_compat_table import document
    return {"docs/caffe_compat.md": document()}


def _zoo_missing() -> str | None:
    from landmarknet.paths import shared_dir
    from reference.real_caffe import CaffeUnavailable, caffe_ref_python
    if not (shared_dir() / "zoo").is_dir():
        return f"no zoo at {shared_dir() / 'zoo'}"
    try:
        caffe_ref_python()
    except CaffeUnavailable as exc:
        return str(exc)
    return None


GENERATORS = [Generator("layers", _layers), Generator("networks", _networks),
              Generator("bad-inputs", _bad_inputs, volatile=MEMORY),
              Generator("zoo", _zoo, _zoo_missing, volatile=MAX_ERROR)]


def comparable(text: str, volatile: list) -> str:
    """``text`` with the parts that move between runs (``volatile``) replaced by placeholders."""
    for pattern, placeholder in volatile:
        text = pattern.sub(placeholder, text)
    return text


def stale_files(files: dict[str, str], volatile: list = (), root: Path = ROOT) -> list[str]:
    """The paths of ``files`` whose text under ``root`` is missing or differs (``volatile``
    parts aside)."""
    return [rel for rel, text in files.items()
            if not (root / rel).is_file()
            or comparable((root / rel).read_text(), volatile) != comparable(text, volatile)]


def orphans() -> list[str]:
    """Generated-looking prototxt files that no generator writes any more."""
    from landmarknet.nets.docs import expected, stale
    return [p for p in stale(expected(docs=False), ROOT) if "no generator" in p]


def write(files: dict[str, str], volatile: list = ()) -> list[str]:
    """Write the files whose text changed (atomically); return their paths."""
    written = []
    for rel in stale_files(files, volatile):
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(files[rel])
        tmp.replace(path)
        written.append(rel)
    return written


def main(argv: list[str] | None = None) -> int:
    """Regenerate (or --check) the documents; 1 when --check finds a stale file."""
    names = [g.name for g in GENERATORS]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(
        __doc__.splitlines()[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 and name every stale or missing file")
    ap.add_argument("--only", default=",".join(names), metavar="A,B",
                    help=f"these generators only (of {', '.join(names)})")
    ap.add_argument("--fuzz", action="store_true",
                    help="rerun the fuzz draw for docs/bad_inputs.md (minutes; default: keep "
                         "its summary)")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        ap.error(f"--only: unknown generator(s) {', '.join(unknown)}; choose from "
                 f"{', '.join(names)}")
    stale = []
    for gen in (g for g in GENERATORS if g.name in chosen):
        why = gen.missing()
        if why:
            print(f"{gen.name}: skipped ({why})")
            continue
        files = gen.produce(args)
        changed = (stale_files(files, gen.volatile) if args.check
                   else write(files, gen.volatile))
        stale += changed
        verb = "stale" if args.check else "wrote"
        print(f"{gen.name}: {len(files)} file(s), "
              + (f"{verb} {', '.join(changed)}" if changed else "up to date"))
    left = orphans() if "networks" in chosen else []
    if left and not args.check:
        print("generated prototxt that nothing writes any more (delete them):\n"
              + "\n".join(f"  {p}" for p in left))
    stale += left if args.check else []
    if args.check and stale:
        print("stale generated files (run `make docs` or `python tools/gen_docs.py`):\n"
              + "\n".join(f"  {p}" for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
