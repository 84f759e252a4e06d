"""QM9 speed on this CPU: seconds per training iteration (batch 128), test-set evaluation per batch of 128
molecules with the authors' estimator (one Gaussian Hutchinson probe, dopri5 at rtol = atol = 1e-4) using their
released weights, and molecules sampled per second. Prints a table and writes a CSV under benchmarks/results/.

Both wall-clock and process CPU seconds are reported: on a shared machine the CPU time is the fairer figure.
Run single-threaded for a per-core comparison:  OMP_NUM_THREADS=1 python benchmarks/bench_qm9.py --data DIR
(`--device cuda` times enf on a GPU instead; benchmarks/bench_gpu.sh runs it with the other GPU checks).

With --authors EN_FLOWS_CHECKOUT (a clone of vgsatorras/en_flows) the authors' own code evaluates the same test
molecules with the same released weights in this process, timed in turns with enf (benchmarks/authors_qm9.py);
without it, the time their code took on one core of this machine kind when measured earlier. --eval-subset
picks the molecules: a seeded random draw from the test split (default; the same molecules as `enf evaluate --n N
--seed S`) or its first N, which are small molecules because the split is stored in size order.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "resources" / "pretrained" / "en_flows_qm9"
#: The authors' code on one core of this machine kind, per batch of 128 QM9 test molecules (one Gaussian
#: Hutchinson probe, dopri5 1e-4, about 160 function evaluations per solve), as measured earlier
#: with their repository, vgsatorras/en_flows at commit 2fd18bf; the fallback when --authors does not
#: measure them here.
AUTHORS_EVAL_SECONDS = (270.0, 500.0)
EVAL_BATCH = 128
CPU = torch.device("cpu")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run fn once; return its result, wall seconds and process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_training(data_dir: Path, iterations: int, seed: int, adjoint: bool | None,
                   device: torch.device = CPU) -> list[dict[str, Any]]:
    """Fresh protocol-size E-NF on QM9: forward, Hutchinson trace, regulariser, backward, AdamW step."""
    from enf.config import resolve
    from enf.data.datasets import DATASETS, load_split
    from enf.evaluation import batches, to_device
    from enf.models import build_model
    from enf.training import AdaptiveClipper

    torch.manual_seed(seed)
    cfg = resolve("qm9", "enf")
    if adjoint is not None:
        cfg["flow"]["adjoint"] = adjoint
    spec = DATASETS.get("qm9")
    train = load_split(spec, data_dir / "train.npz", 2048)
    model = build_model(cfg)
    model.initialize(batches(train, 128)[0], train)
    model.to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-12, amsgrad=True)
    clipper = AdaptiveClipper(3000.0)
    rows = []
    order = torch.randperm(train["positions"].shape[0])
    for i, batch in enumerate(batches(train, 128, order, drop_last=True)[:iterations]):
        batch = to_device(batch, device)

        def step(batch: dict[str, torch.Tensor] = batch) -> float:
            optim.zero_grad(set_to_none=True)
            out = model.nll(batch, trace="hutchinson")
            loss = out["nll"].mean() + 1e-3 * out["reg"].mean()
            loss.backward()
            clipper(model.clip_parameters())
            optim.step()
            return float(loss.detach())

        loss, wall, cpu = timed(step)
        rows.append({"measurement": f"training iteration {i + 1} (batch 128, fresh model)", "value": wall,
                     "unit": "s/iteration", "wall_s": wall, "cpu_s": cpu, "nfe": model.last_nfe,
                     "notes": f"loss {loss:.2f}; adjoint={cfg['flow']['adjoint']}"})
    return rows


def eval_molecules(test: dict[str, torch.Tensor], n: int, subset: str,
                   seed: int) -> tuple[dict[str, torch.Tensor], str]:
    """The evaluation benchmark's molecules: a seeded random draw of n (as `enf evaluate --n`) or the first n."""
    from enf.errors import EnfError
    from enf.evaluation import batches

    total = test["positions"].shape[0]
    if n > total:
        raise EnfError(f"asked for {n} test molecules but the split holds {total}")
    if subset == "first":
        return batches(test, n)[0], f"the first {n} of {total} (small: the split is in size order)"
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return batches(test, n, pick)[0], f"{n} of {total} drawn at random (seed {seed})"


def in_turns(steps: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[Any, float, float]]:
    """Each step's last result and median wall and CPU seconds, timed in turns (one of each per round, the order
    rotating) so that a change in the machine's load hits every contender alike."""
    labels = list(steps)
    runs: dict[str, list[tuple[Any, float, float]]] = {k: [] for k in labels}
    for r in range(max(rounds, 1)):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            runs[label].append(timed(steps[label]))
            print(f"  {label}: {runs[label][-1][1]:.1f} s wall, {runs[label][-1][2]:.1f} s CPU", file=sys.stderr,
                  flush=True)
    return {k: (v[-1][0], statistics.median(x[1] for x in v), statistics.median(x[2] for x in v))
            for k, v in runs.items()}


def bench_evaluation(data_dir: Path, seed: int, grouped_only: bool, subset: str = "random", n: int = EVAL_BATCH,
                     authors: Path | None = None, rounds: int = 1, device: torch.device = CPU) -> list[dict[str, Any]]:
    """The released model on n test molecules (batches of 128), the authors' estimator and tolerance; with
    `authors` (a checkout of theirs) their own code evaluates the same molecules, timed in turns with enf's."""
    from enf.data.datasets import DATASETS, load_split
    from enf.evaluation import batches, evaluate_nll
    from enf.models.pretrained import load_en_flows

    model, _ = load_en_flows(RELEASE / "flow.pt", RELEASE / "dequantizer.pt", RELEASE / "args.json")
    model.to(device)
    test, which = eval_molecules(load_split(DATASETS.get("qm9"), data_dir / "test.npz"), n, subset, seed)
    grouped = model.group_size
    steps: dict[str, Callable[[], tuple[float, float, float]]] = {}  # each returns NLL mean, its SE, NFE per solve
    for group in ((grouped,) if grouped_only else (grouped, None)):
        def enf_step(group: int | None = group) -> tuple[float, float, float]:
            model.group_size = group
            torch.manual_seed(seed)
            res = evaluate_nll(model, test, EVAL_BATCH, "hutchinson", device=device)
            return res["nll"], res["nll_sem"], res["nfe_per_solve"]

        label = f"sorted by size, solved in groups of {group}" if group else "one padded solve per batch"
        steps[f"enf evaluation, {n} test molecules ({label})"] = enf_step
    authors_label = f"authors' code, {n} test molecules (one padded solve per batch; measured beside)"
    if authors is not None:
        from authors_qm9 import AuthorsCheckoutError, evaluation_step  # benchmarks/authors_qm9.py

        if torch.get_num_threads() != 1:
            print(f"warning: timing with {torch.get_num_threads()} threads; set OMP_NUM_THREADS=1 for a per-core "
                  "comparison", file=sys.stderr)
        try:
            their_step = evaluation_step(authors, batches(test, EVAL_BATCH), seed)
        except AuthorsCheckoutError as err:
            raise SystemExit(f"--authors: {err}") from err

        def authors_step() -> tuple[float, float, float]:
            out = their_step()
            nll = out["nll"]
            sem = float(nll.std() / len(nll) ** 0.5) if len(nll) > 1 else float("nan")
            return float(nll.mean()), sem, out["nfe_per_solve"]

        steps[authors_label] = authors_step
    rows = []
    for label, ((nll, sem, nfe), wall, cpu) in in_turns(steps, rounds).items():
        theirs = label == authors_label
        how = "their compute_loss_and_nll, regulariser integrated as in their test loop" if theirs else "enf"
        rows.append({"measurement": label, "value": wall, "unit": f"s/{n} molecules", "wall_s": wall, "cpu_s": cpu,
                     "nfe": nfe, "notes": f"NLL {nll:.2f} +- {sem:.2f}; {how}; Gaussian "
                                          f"Hutchinson, dopri5 1e-4; batches of {EVAL_BATCH}; molecules: {which}; "
                                          f"median of {max(rounds, 1)} round(s) in turns"})
    if authors is not None:
        their_cpu = next(row["cpu_s"] for row in rows if row["measurement"] == authors_label)
        for row in rows:
            if row["measurement"] != authors_label:
                row["notes"] += f"; {their_cpu / row['cpu_s']:.2f}x the authors' speed (CPU s)"
    else:
        lo, hi = AUTHORS_EVAL_SECONDS
        rows.append({"measurement": "authors' code, 128 test molecules (quoted)", "value": lo,
                     "unit": "s/batch of 128", "wall_s": None, "cpu_s": None, "nfe": 160,
                     "notes": f"{lo:.0f} to {hi:.0f} s on one core (measured earlier), same estimator and tolerance"})
    return rows


def bench_sampling(n: int, seed: int, device: torch.device = CPU) -> list[dict[str, Any]]:
    """Molecules per second from the released model: M ~ p(M), reverse solve, decoding."""
    from enf.models.pretrained import load_en_flows

    model, _ = load_en_flows(RELEASE / "flow.pt", RELEASE / "dequantizer.pt", RELEASE / "args.json")
    model.to(device)
    out, wall, cpu = timed(lambda: model.sample(n, generator=torch.Generator().manual_seed(seed)))
    failed = int(out["failed"].sum())
    return [{"measurement": f"sampling {n} molecules (released model)", "value": n / wall, "unit": "molecules/s",
             "wall_s": wall, "cpu_s": cpu, "nfe": model.last_nfe,
             "notes": f"{n / cpu:.2f} molecules per CPU second; {failed} failed solves; batches of "
                      f"{model.sample_batch_size} sorted by size"}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="QM9 split folder (train/valid/test.npz)")
    parser.add_argument("--iterations", type=int, default=3, help="training iterations to time")
    parser.add_argument("--sample-n", type=int, default=128, help="molecules to sample")
    parser.add_argument("--skip", nargs="*", default=[], choices=("train", "eval", "sample"))
    parser.add_argument("--grouped-only", action="store_true", help="skip the ungrouped evaluation")
    parser.add_argument("--eval-subset", choices=("random", "first"), default="random",
                        help="evaluation molecules: a random draw from the test split (seeded by --seed) or its "
                             "first ones (small molecules: the split is in size order)")
    parser.add_argument("--eval-n", type=int, default=EVAL_BATCH, help="test molecules to evaluate (batches of 128)")
    parser.add_argument("--eval-rounds", type=int, default=1, help="evaluation rounds timed in turns (median)")
    parser.add_argument("--authors", type=Path, default=None, metavar="CHECKOUT",
                        help="a checkout of vgsatorras/en_flows: time their evaluation of the same molecules beside "
                             f"enf's (otherwise their earlier measured time, {AUTHORS_EVAL_SECONDS[0]:.0f} s)")
    parser.add_argument("--adjoint", choices=("config", "on", "off"), default="config",
                        help="training gradients: the QM9 config's choice, adjoint, or direct back-propagation")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N (the authors' code is timed on the CPU only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "qm9.csv")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.authors is not None and device.type != "cpu":
        parser.error("--authors times both codes on the CPU: leave --device at cpu")

    rows: list[dict[str, Any]] = []
    if "eval" not in args.skip:
        rows += bench_evaluation(args.data, args.seed, args.grouped_only, args.eval_subset, args.eval_n,
                                 args.authors, args.eval_rounds, device)
    if "sample" not in args.skip:
        rows += bench_sampling(args.sample_n, args.seed, device)
    if "train" not in args.skip and args.iterations > 0:
        adjoint = None if args.adjoint == "config" else args.adjoint == "on"
        rows += bench_training(args.data, args.iterations, args.seed, adjoint, device)
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} thread(s)"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    for row in rows:
        row["machine"] = machine
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["measurement", "value", "unit", "wall_s", "cpu_s", "nfe", "notes", "machine"]
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print("| measurement | value | unit | wall s | CPU s | NFE | notes |\n|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
        print(f"| {r['measurement']} | {fmt(r['value'])} | {r['unit']} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | "
              f"{fmt(r['nfe'])} | {r['notes']} |")
    print(f"({machine}; written to {args.out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
