"""User-facing errors: one clear line, non-zero exit, never a bare traceback."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input from the user (file, flag, schedule, checkpoint). Printed as one line."""


def cli_main(func: F) -> F:
    """Decorate a CLI ``main``: UserError -> 'error: …' on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
