#!/usr/bin/env python3
"""Export to ONNX, checked in ONNX Runtime: ``landmarknet export`` as a script.

    python tools/export_onnx.py NET.prototxt --weights W -o model.onnx
        [--opset N] [--dynamic-batch] [--via caffe2onnx]

Same arguments as the subcommand (``python tools/export_onnx.py --help``);
errors are one line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from landmarknet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
