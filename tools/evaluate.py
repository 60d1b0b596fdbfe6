#!/usr/bin/env python3
"""NME / AUC / failure rate of a model bundle: ``landmarknet evaluate`` as a script.

    python tools/evaluate.py MODEL --data FOLDER [--partition val] [--json] [--plot CED.png]

Same arguments as the subcommand (``python tools/evaluate.py --help``);
errors are one line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from landmarknet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
