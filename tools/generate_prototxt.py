#!/usr/bin/env python3
"""Write every generated prototxt (prototxt/<net>/{train_val,deploy,solver}.prototxt) and
docs/networks.md from the generators in landmarknet/nets (landmarknet.nets.docs).

    python tools/generate_prototxt.py            # write what changed
    python tools/generate_prototxt.py --check    # exit 1 listing stale or missing files
    python tools/generate_prototxt.py --no-docs  # prototxt only (docs build every net: slower)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landmarknet.netspec import GENERATOR_COMMAND  # noqa: E402
from landmarknet.nets import docs  # noqa: E402
from landmarknet.nets.docs import DOCS, expected, networks_markdown  # noqa: E402,F401


def stale(files: dict[str, str], root: Path = ROOT) -> list[str]:
    """Generated paths that are missing or differ under ``root`` (see landmarknet.nets.docs)."""
    return docs.stale(files, root)


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) every generated file; 1 when --check finds stale ones."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 and list the files that are stale or missing")
    ap.add_argument("--no-docs", action="store_true", help=f"leave {DOCS} alone")
    args = ap.parse_args(argv)
    files = expected(docs=not args.no_docs)
    if args.check:
        bad = stale(files)
        if bad:
            print("stale generated files (regenerate with "
                  f"`{GENERATOR_COMMAND}`):\n" + "\n".join(f"  {p}" for p in bad))
            return 1
        print(f"{len(files)} generated files are up to date")
        return 0
    written = 0
    for rel, text in files.items():
        path = ROOT / rel
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written += 1
        print(f"wrote {rel}")
    print(f"{written} of {len(files)} files written ({len(files) - written} unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
