#!/usr/bin/env python3
"""Train from a solver.prototxt: ``landmarknet train`` as a script (works under torchrun).

    python tools/train_heatmaps.py --solver prototxt/NET/solver.prototxt --data FOLDER
        [--weights W] [--resume STATE] [--device cuda]

Same arguments as the subcommand (``python tools/train_heatmaps.py --help``);
errors are one line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from landmarknet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
