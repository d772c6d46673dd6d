#!/usr/bin/env python
"""Unstructured-sparsity training (PaddleSlim-style) — the command line is compression_tool.cli.train_sparse."""
from compression_tool.cli.train_sparse import main

if __name__ == "__main__":
    main()
