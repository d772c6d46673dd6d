#!/usr/bin/env python
"""Plot a sensitivity CSV — see `python pruning_analysis_tools/plot_csv.py --help`. The command line lives in
compression_tool.cli.plot_csv."""
from compression_tool.cli.plot_csv import main

if __name__ == "__main__":
    main()
