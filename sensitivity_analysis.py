#!/usr/bin/env python
"""Sensitivity analysis CLI: the same as ``python pruning.py --mode sa …`` (all of its flags apply)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pruning  # noqa: E402

if __name__ == "__main__":
    pruning.main(["--mode", "sa", *sys.argv[1:]])
