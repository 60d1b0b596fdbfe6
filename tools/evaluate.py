#!/usr/bin/env python
"""Script form of ``landmarknet evaluate`` (same arguments)."""
import sys

from landmarknet.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
