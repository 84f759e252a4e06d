"""DW4 test-split check: each checkpoint's NLL on a split, the split's own floor and the model's KL.

For the exact target density p = exp(-E)/Z, -log p(x) = E(x) + log Z, so on any split
    NLL = mean(-log q) = [mean(E) + log Z] + mean(log p - log q)   (the split's floor + the model's KL estimate).
The floor term is what even p itself would score on that split; the KL term is the model's own error, and its
per-sample values vary far less than the NLL's. Standard errors are clustered by MCMC chain (samples of one chain
are correlated): a split's sample k is draw k // chains of chain k % chains.

usage: python analyse.py RESULTS_DIR DATA_DIR:NAME:SPLIT ... > summary.md
(RESULTS_DIR holds the `enf evaluate --per-sample` files CHECKPOINT_NAME.npz)
"""

import json
import sys
from pathlib import Path

import numpy as np

LOG_Z = 29.667232232920078  # DW4 by quadrature on the zero-centre-of-mass subspace (benchmarks/physical_floor.py)


def clustered(values: np.ndarray, chains: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error with samples of one chain as one cluster."""
    ids = np.unique(chains)
    sums = np.array([values[chains == c].sum() for c in ids])
    counts = np.array([(chains == c).sum() for c in ids])
    mean = sums.sum() / counts.sum()
    resid = sums - mean * counts
    se = np.sqrt(len(ids) / (len(ids) - 1) * (resid**2).sum()) / counts.sum()
    return float(mean), float(se)


def main(results: Path, splits: list[str]) -> None:
    rows = []
    for spec in splits:
        data_dir, name, split = spec.split(":")
        data = np.load(Path(data_dir) / f"{split}.npz")
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
        n_chains = meta["splits"][split]["chains"]
        for f in sorted(results.glob(f"*_{name}.npz")):
            per = np.load(f)
            idx, nll = per["index"], per["nll"].mean(1)
            energy = data["energy"][idx]
            chains = idx % n_chains
            rows.append((f.stem.removesuffix(f"_{name}"), name, len(idx), n_chains,
                         clustered(nll, chains), clustered(nll, np.arange(len(idx))),
                         clustered(energy + LOG_Z, chains), clustered(nll - energy - LOG_Z, chains)))
    print("| checkpoint | split | n | chains | NLL +- SE (chain-clustered; iid) "
          "| split's floor mean(E) + log Z | KL = NLL - floor |")
    print("|---|---|---|---|---|---|---|")
    for ck, name, n, c, (m, s), (_, s_iid), (fl, fl_se), (kl, kl_se) in rows:
        print(f"| {ck} | {name} | {n} | {c} | {m:.3f} +- {s:.3f} ({s_iid:.3f}) "
              f"| {fl:.3f} +- {fl_se:.3f} | {kl:.3f} +- {kl_se:.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
