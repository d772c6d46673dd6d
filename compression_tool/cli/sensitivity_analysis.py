"""sensitivity_analysis.py: the sensitivity analysis of `pruning.py --mode sa`, with its own --help."""
from __future__ import annotations

import sys
from typing import List, Optional

from compression_tool.cli.pruning import run_sa
from compression_tool.io.errors import cli_main


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--mode" in args:  # accepted for the seed tool's users: `sensitivity_analysis.py --mode sa …`
        i = args.index("--mode")
        args = args[:i] + args[i + 2:]
    run_sa(args, prog="sensitivity_analysis.py")


if __name__ == "__main__":
    main()
