"""Command lines: parse arguments, call one application function, print. The repository's top-level scripts
(pruning.py, run.py, …) are shims onto these modules.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: OpenMP threads that spin-wait for
work slow everything down on cores shared with other jobs. It has to happen before torch is imported, which is why
it lives here: every CLI imports ``compression_tool.cli`` before torch.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
