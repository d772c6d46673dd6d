"""Train the embedded default model (digits_net on scikit-learn's digits).

    python -m compression_tool.cli.default_model --output work_space/checkpoints/digits_net.pth
"""
from __future__ import annotations

import argparse
from pathlib import Path

from compression_tool.apps.default_model import train_default
from compression_tool.cli.parser import ArgumentParser, add_threads_arg, apply_threads
from compression_tool.io.errors import UserError, cli_main


@cli_main
def main(argv=None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="work_space/checkpoints/digits_net.pth", help="checkpoint to write")
    p.add_argument("--epochs", type=int, default=5, help="training epochs over the 1,438 training digits")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, init and shuffling")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    add_threads_arg(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    print(f"checkpoint: {train_default(Path(args.output), args.epochs, args.seed, args.force)}")


if __name__ == "__main__":
    main()
