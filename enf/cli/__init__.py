"""The `enf` command line: one sub-command per module of this package (data, train, evaluate, sample, ...).

Each sub-command module defines `add_parser(subparsers)`, which registers its parser and sets `func` to a
function taking the parsed arguments. An `EnfError` becomes a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from enf.errors import EnfError

# Sub-command modules, in the order `enf --help` lists them.
COMMANDS = ("data", "train", "evaluate", "sample", "analyze", "import_en_flows")


def build_parser() -> argparse.ArgumentParser:
    from enf import __version__

    parser = argparse.ArgumentParser(prog="enf", description="E(n) Equivariant Normalizing Flows")
    parser.add_argument("--version", action="version", version=f"enf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"enf.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"enf.cli.{name}":
                continue  # a sub-command still being built in this checkout
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except EnfError as err:
        print(f"enf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"enf {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
