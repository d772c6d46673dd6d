#!/usr/bin/env python
"""Sensitivity CSV + target -> Distiller-style YAML schedule — see `python pruning_analysis_tools/auto_make_yaml.py
--help`. The command line lives in compression_tool.cli.auto_make_yaml."""
from compression_tool.cli.auto_make_yaml import main

if __name__ == "__main__":
    main()
