#!/usr/bin/env python
"""The Distiller-fork compression_tool's entry point: ``python main.py --mode sa|prune|finetune|test …`` runs
pruning.py / test_module.evaluate with its flags mapped (docs/coming_from.md). The mapping lives in
compression_tool.cli.legacy."""
from compression_tool.cli.legacy import main

if __name__ == "__main__":
    main()
