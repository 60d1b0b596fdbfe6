#!/usr/bin/env python3
"""Build a net from its prototxt: ``landmarknet build`` as a script.

    python tools/build_from_prototxt.py NET.prototxt [--weights W] [--save OUT]
        [--emit-python OUT.py]

Same arguments as the subcommand (``python tools/build_from_prototxt.py --help``);
errors are one line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from landmarknet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
