#!/usr/bin/env python
"""Script form of ``landmarknet train`` (same arguments); works under torchrun for DDP."""
import sys

from landmarknet.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
