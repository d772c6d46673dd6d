"""Command lines: parse arguments, call one application function, print. The repository's top-level scripts
(pruning.py, run.py, …) are shims onto these modules."""
