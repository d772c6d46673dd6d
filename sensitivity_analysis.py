#!/usr/bin/env python
"""Sensitivity analysis (the same as pruning.py --mode sa) — see `python sensitivity_analysis.py --help`. The command
line lives in compression_tool.cli.sensitivity_analysis."""
from compression_tool.cli.sensitivity_analysis import main

if __name__ == "__main__":
    main()
