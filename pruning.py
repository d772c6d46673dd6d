#!/usr/bin/env python
"""Pruning: sensitivity analysis, schedule-driven thinning, ratio search, fine-tuning — see `python pruning.py
--help`. The command line lives in compression_tool.cli.pruning."""
from compression_tool.cli.pruning import main

if __name__ == "__main__":
    main()
