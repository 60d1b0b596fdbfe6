#!/usr/bin/env python3
"""Faces and landmarks in images, folders and videos: ``landmarknet detect`` as a script.

    python tools/detect.py samples/ -o out/ [--model NAME] [--detector mtcnn|haar] [--json]

Same arguments as the subcommand (``python tools/detect.py --help``);
errors are one line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from landmarknet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["detect", *sys.argv[1:]]))
