"""`enf sample`: draw samples from a checkpoint by the reverse solve, written in the data format."""

from __future__ import annotations

import argparse

from enf.cli.common import add_device, require_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="sample from a checkpoint", description=__doc__)
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--n", required=True, type=int, help="number of samples")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from enf.device import choose_device
    from enf.io import check_paths, save_npz
    from enf.models.checkpoints import load_model

    require_int("--n", args.n)
    require_int("--batch-size", args.batch_size)
    check_paths({"--checkpoint": args.checkpoint}, {"--out": args.out})
    device, device_reason = choose_device(args.device or "auto", "--device")
    model, _ = load_model(args.checkpoint, device)
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    parts: dict[str, list[np.ndarray]] = {}
    with tqdm(total=args.n, desc="sampling", mininterval=2.0) as bar:
        for start in range(0, args.n, args.batch_size):
            n = min(args.batch_size, args.n - start)
            out = model.sample(n, generator=generator)
            for key, value in out.items():
                parts.setdefault(key, []).append(value.detach().cpu().numpy())
            bar.update(n)
    arrays = {key: np.concatenate(values) for key, values in parts.items()}
    save_npz(args.out, **arrays)
    failed = int(arrays["failed"].sum()) if "failed" in arrays else 0
    print(f"wrote {args.n} samples to {args.out} ({failed} failed solves; device {device}: {device_reason})")
    return 0
