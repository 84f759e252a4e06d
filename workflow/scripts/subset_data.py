"""Put a data set's splits where the jobs read them: hard links to the generated files, or their first N samples.

The paper's configuration links every split unchanged (no copy). Reduced budgets may keep only the first N
samples of a split (`data.<set>.subset` in the config), e.g. a small validation set so that validating every
epoch stays cheap; every array whose first axis is the sample axis is cut, other arrays are kept. meta.json is
copied with a "subset" entry recording what was cut.
Usage: subset_data.py --source DIR --out DIR [--train N] [--valid N] [--test N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link src to dst (copy when linking is impossible), replacing dst."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def cut(src: Path, dst: Path, n: int) -> dict[str, int]:
    """Write the first n samples of every per-sample array of src to dst; return the sizes before and after."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    total = arrays["positions"].shape[0]
    if n > total:
        raise SystemExit(f"subset_data: {src} holds {total} samples, fewer than the {n} asked for")
    out = {key: (arr[:n] if arr.ndim > 0 and arr.shape[0] == total else arr) for key, arr in arrays.items()}
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **out)
    os.replace(tmp, dst)
    return {"of": int(total), "kept": int(n)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True)
    parser.add_argument("--out", required=True)
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=None, help=f"keep the first N {split} samples")
    args = parser.parse_args(argv)
    source, out = Path(args.source), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {}
    for split in SPLITS:
        n = getattr(args, split)
        if n is None:
            link_or_copy(source / f"{split}.npz", out / f"{split}.npz")
        else:
            record[split] = cut(source / f"{split}.npz", out / f"{split}.npz", n)
            print(f"{split}: kept the first {n} of {record[split]['of']} samples")
    meta = json.loads((source / "meta.json").read_text())
    meta["subset"] = record or None
    meta["subset_source"] = str(source)
    tmp = out / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "meta.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
