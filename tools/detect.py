#!/usr/bin/env python3
"""Faces and landmarks in images, folders and videos: ``landmarknet detect`` as a script.

    python tools/detect.py samples/ -o out/ [--model NAME] [--detector mtcnn|haar] [--json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from landmarknet.cli import detect  # noqa: E402
from landmarknet.errors import LandmarknetError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse like ``landmarknet detect`` and run it; errors become one line and exit status 2."""
    parser = argparse.ArgumentParser(prog="tools/detect.py", description=detect.__doc__,
                                     epilog=detect.EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    detect.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return detect.run(args)
    except LandmarknetError as exc:
        print(f"detect: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
