#!/usr/bin/env python3
"""Draw a net: ``landmarknet visualize`` as a script.

    python tools/visualize_net.py NET.prototxt [--phase test|train]
        [--format html|svg|png|pdf|dot|json|csv|md] [-o OUT]

Same arguments as the subcommand (``python tools/visualize_net.py --help``);
errors are one line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from landmarknet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["visualize", *sys.argv[1:]]))
