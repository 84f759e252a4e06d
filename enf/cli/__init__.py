"""The `enf` command line: one sub-command per module of this package (data, train, evaluate, sample, ...).

Each sub-command module defines `add_parser(subparsers)`, which registers its parser and sets `func` to a
function taking the parsed arguments. An `EnfError` becomes a one-line message and exit status 2, and so does a
usage error. Every command checks its output paths (`enf.io.check_paths`) before it starts work.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from enf.errors import EnfError

# Sub-command modules, in the order `enf --help` lists them.
COMMANDS = ("data", "train", "evaluate", "sample", "analyze", "import_en_flows")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2), like every other refusal of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from enf import __version__

    parser = Parser(prog="enf", description="E(n) Equivariant Normalizing Flows")
    parser.add_argument("--version", action="version", version=f"enf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"enf.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except EnfError as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"enf {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"enf {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
