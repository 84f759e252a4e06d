"""`enf import-en-flows`: turn the authors' released QM9 weights into an enf run directory.

The run directory (checkpoint.pt, config.yaml, import.json) works with `enf evaluate`, `enf sample` and
`enf analyze` like any trained run. Files that do not fit enf's QM9 model are refused, and nothing is written.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-en-flows", help="import the authors' released QM9 E-NF weights",
                              description=__doc__)
    p.add_argument("--flow", required=True, metavar="FILE", help="their flow state dict (flow.npy / flow.pt)")
    p.add_argument("--dequantizer", required=True, metavar="FILE", help="their dequantizer state dict")
    p.add_argument("--args", default=None, metavar="FILE.json",
                   help="their training arguments as JSON (default: args.json beside --flow)")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from enf.io import check_paths
    from enf.models.pretrained import RUN_FILES, import_en_flows

    args_file = args.args if args.args is not None else Path(args.flow).parent / "args.json"
    check_paths({"--flow": args.flow, "--dequantizer": args.dequantizer, "--args": args_file},
                dirs={"--out": (args.out, RUN_FILES)})
    out = import_en_flows(args.flow, args.dequantizer, args.out, args.args)
    print(f"imported {args.flow} and {args.dequantizer} into {out / 'checkpoint.pt'}")
    return 0
