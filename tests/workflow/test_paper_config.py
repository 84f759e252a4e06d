"""The paper configuration and enf's own protocol defaults say the same thing (two places, one protocol).

`config/config.yaml` hands the workflow's jobs their budgets explicitly; `enf train` alone resolves them from
`enf/data/datasets.py`. A protocol fix made in one place only would make the workflow and the command line train
different models: this test fails first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from enf.config import resolve
from enf.data.datasets import DATASETS

ROOT = Path(__file__).resolve().parents[2]
PAPER = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
CELLS = [(ds, str(n)) for ds, exp in PAPER["experiments"].items() for n in exp["n_train"]]


@pytest.mark.parametrize("dataset, n", CELLS, ids=[f"{ds}-n{n}" for ds, n in CELLS])
def test_paper_budgets_are_enfs_protocol_budgets(dataset: str, n: str) -> None:
    budget = PAPER["experiments"][dataset]["budgets"][n]
    train = resolve(dataset, "enf", None if n == "all" else int(n))["train"]
    for key, value in budget.items():
        assert train[key] == value, f"{dataset} n={n}: config.yaml {key}={value}, enf resolves {train[key]}"


def test_paper_training_sizes_are_enfs() -> None:
    for dataset, exp in PAPER["experiments"].items():
        spec = DATASETS.get(dataset)
        if spec.budgets:
            assert sorted(spec.budgets) == sorted(int(n) for n in exp["n_train"]), dataset
