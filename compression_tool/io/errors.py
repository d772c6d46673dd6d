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
    """Decorate a CLI ``main``: UserError -> 'error: …' on stderr and exit code 2. Errors of the environment that
    no check caught (a full disk, a file that is not UTF-8 text) are one line too (exit code 1), never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except UnicodeDecodeError as exc:
            print(f"error: an input file is not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
