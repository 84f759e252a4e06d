"""Arguments and checks shared by several sub-commands."""

from __future__ import annotations

import argparse

from enf.errors import EnfError


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or auto (default: the run's config, normally auto)")


def require_int(option: str, value: int | None, minimum: int = 1) -> None:
    """Refuse an integer option below `minimum` (None means not given) before any work."""
    if value is not None and value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise EnfError(f"{option} must be {what}, got {value}")
