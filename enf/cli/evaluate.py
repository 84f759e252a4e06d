"""`enf evaluate`: mean test NLL (nats per sample) of a checkpoint on a data file, with its standard error."""

from __future__ import annotations

import argparse
from pathlib import Path

from enf.cli.common import add_device, require_int
from enf.config import TRACES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="test NLL of a checkpoint", description=__doc__)
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--data", required=True, metavar="FILE.npz")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.add_argument("--trace", choices=TRACES, default=None,
                   help="default: the run's flow.trace_eval")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per sample (averaged)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n", type=int, default=None,
                   help="evaluate N samples drawn at random (seeded by --seed) from the file; not the first N, "
                        "because QM9's split is in index order, small molecules first")
    p.add_argument("--seed", type=int, default=0, help="seed of the Hutchinson probes")
    p.add_argument("--per-sample", default=None, metavar="FILE.npz",
                   help="also save every sample's NLL per probe ('nll', n x probes) and its row in --data "
                        "('index'), for paired comparisons of estimators on the same samples")
    add_device(p)
    # -- Boltzmann-generator evaluation (enf/evaluation/boltzmann/) --
    p.add_argument("--boltzmann", type=int, default=0, metavar="N",
                   help="DW4/LJ13: also reverse ESS from N model samples, forward ESS on the data, energy and "
                        "pair-distance histograms (JSON key 'boltzmann', figure OUT_boltzmann.png)")
    p.add_argument("--boltzmann-trace", choices=TRACES, default="exact",
                   help="trace for the model's log-density in the Boltzmann evaluation (default: exact)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from enf.data.datasets import DATASETS, load_split
    from enf.device import choose_device
    from enf.errors import EnfError
    from enf.evaluation import batches, evaluate_nll
    from enf.io import check_paths, save_npz, sha256_file, write_json
    from enf.models.checkpoints import load_model
    from enf.version import code_version

    for option, value, minimum in (("--n", args.n, 1), ("--probes", args.probes, 1),
                                   ("--batch-size", args.batch_size, 1), ("--boltzmann", args.boltzmann, 0)):
        require_int(option, value, minimum)
    outputs = {"--out": args.out, "--per-sample": args.per_sample}
    if args.boltzmann:
        out = Path(args.out)
        outputs["--out (its Boltzmann figure)"] = out.with_name(f"{out.stem}_boltzmann.png")
    check_paths({"--checkpoint": args.checkpoint, "--data": args.data}, outputs)
    device, device_reason = choose_device(args.device or "auto", "--device")
    model, payload = load_model(args.checkpoint, device)
    cfg = payload["config"]
    spec = DATASETS.get(cfg["dataset"])
    dtype = next(model.parameters()).dtype
    data = load_split(spec, args.data, None, dtype)
    total = data["positions"].shape[0]
    if args.n is not None and args.n > total:
        raise EnfError(f"{args.data}: asked for {args.n} samples but the file holds {total}")
    subset = f"all {total}"
    rows = torch.arange(total)
    if args.n is not None and args.n < total:
        pick = torch.randperm(total, generator=torch.Generator().manual_seed(args.seed))[: args.n].sort().values
        data, rows = batches(data, args.n, pick)[0], pick
        subset = f"{args.n} of {total} drawn at random (seed {args.seed})"
    torch.manual_seed(args.seed)
    trace = args.trace or cfg["flow"]["trace_eval"]
    result = evaluate_nll(model, data, args.batch_size or cfg["train"]["eval_batch_size"], trace,
                          probes=args.probes, device=device, keep_samples=args.per_sample is not None)
    if args.per_sample is not None:
        save_npz(args.per_sample, nll=result.pop("samples").numpy(), index=rows.numpy())
        result["per_sample"] = str(Path(args.per_sample))
    result.update(checkpoint=str(Path(args.checkpoint)), data=str(Path(args.data)),
                  data_sha256=sha256_file(args.data), dataset=cfg["dataset"], model=cfg["model"]["name"],
                  seed=args.seed, subset=subset, code_version=code_version(), device=str(device))
    if args.boltzmann:  # Boltzmann-generator evaluation (enf/evaluation/boltzmann/)
        from enf.evaluation.boltzmann import evaluate_for_cli

        result["boltzmann"] = evaluate_for_cli(model, cfg, data, args.data, args.boltzmann, args.out,
                                               args.boltzmann_trace, args.seed, args.batch_size)
    write_json(args.out, result)
    print(f"NLL {result['nll']:.4f} +- {result['nll_sem']:.4f} (n={result['n']}, trace {trace}, "
          f"{result['seconds']:.1f} s, device {device}: {device_reason})")
    return 0
