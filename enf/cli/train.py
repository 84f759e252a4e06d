"""`enf train`: train a flow on a data set, select the best validation epoch, write a run directory."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from enf.cli.common import add_device, require_int
from enf.config import OBJECTIVES, load_yaml, parse_set, resolve
from enf.errors import EnfError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a flow (resumes from RUN_DIR/state/last.pt if present)",
                              description=__doc__)
    p.add_argument("--dataset", required=True, help="dw4, lj13, qm9_positional or qm9")
    p.add_argument("--model", default="enf", help="enf, gnf, gnf_att, gnf_att_aug, simple_dynamics, "
                                                  "kernel_dynamics")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="folder with train/valid/test.npz")
    p.add_argument("--n-train", type=int, default=None, help="use the first N training samples")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--epochs", type=int, default=None, help="override the protocol's budget")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="training objective (default: maximum likelihood)")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="partial config merged over defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. train.lr=1e-3 (repeatable)")
    add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-test", action="store_true",
                   help="do not evaluate the test split at the end (leave it to `enf evaluate`, as the workflow does)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from enf.data.datasets import SPLITS, split_path
    from enf.io import check_paths
    from enf.training import RUN_FILES, train

    check_paths({"--data": [args.data, *(split_path(args.data, s) for s in SPLITS)], "--config": args.config},
                dirs={"--out": (args.out, RUN_FILES)})
    cfg = resolved_config(args)
    train(cfg, args.data, args.out, progress=not args.no_progress, test=not args.no_test)
    return 0


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's config from the parsed arguments: the defaults, --config, --set and the options that set keys."""
    require_int("--n-train", args.n_train)
    sets = parse_set(args.set)
    extra: dict = {"train": {}}
    if args.seed is not None:
        extra["train"]["seed"] = args.seed
    if args.epochs is not None:
        extra["train"]["epochs"] = args.epochs
    if args.device is not None:
        extra["train"]["device"] = args.device
    if args.objective is not None:
        extra["train"]["objective"] = args.objective
    return resolve(args.dataset, args.model, args.n_train, load_yaml(args.config) if args.config else None,
                   sets, extra)


class _Refusing(argparse.ArgumentParser):
    """A parser whose usage errors raise EnfError, for callers that report them their own way."""

    def error(self, message: str) -> NoReturn:
        raise EnfError(f"enf train: {message}")


def config_from_argv(argv: list[str]) -> dict[str, Any]:
    """The resolved config of `enf train ARGV`, without training: the workflow checks its settings with it."""
    parser = _Refusing(prog="enf")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return resolved_config(parser.parse_args(["train", *argv]))
