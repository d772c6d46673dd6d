"""The command lines' argument parser: a bad flag is one 'error:' line (via UserError and cli_main), not argparse's
usage block; and the one helper that fixes the torch thread count (``--threads``)."""
from __future__ import annotations

import argparse
from typing import NoReturn, Optional

from compression_tool.io.errors import UserError

DEFAULT_THREADS = 1


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")


def add_threads_arg(p: argparse.ArgumentParser, default: Optional[int] = DEFAULT_THREADS) -> None:
    p.add_argument("--threads", type=int, default=default,
                   help=f"torch intra-op threads (default {default}: seeded runs give the same numbers on any "
                        "machine, and no spin-waiting on shared cores)")


def apply_threads(n: Optional[int]) -> int:
    """Fix torch's intra-op thread count (``--threads``); returns the count now in force."""
    import torch

    if n is not None:
        if n < 1:
            raise UserError(f"--threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()
