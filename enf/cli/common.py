"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or auto (default: the run's config, normally auto)")
