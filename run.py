#!/usr/bin/env python
"""The three-step pipeline: train, prune, fine-tune — see `python run.py --help`. The command line lives in
compression_tool.cli.run."""
from compression_tool.cli.run import main

if __name__ == "__main__":
    main()
