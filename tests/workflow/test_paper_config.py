"""The paper configuration trains at the paper's protocol budgets, which enf declares once.

`config/config.yaml` gives no budgets: the workflow fills `experiments.<set>.budgets` from enf's `DatasetSpec`
(enf/data/datasets.py), where `enf train` alone resolves them too. The protocol's numbers are written out here
once more, as the independent statement of the paper's protocol that the declarations are checked against.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from enf.config import resolve
from enf.data.datasets import BUDGET_KEYS, DATASETS

ROOT = Path(__file__).resolve().parents[2]
PAPER = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

#: The paper's protocol: per data set and training size, the epochs, evaluation cadence and batch size.
PROTOCOL = {
    "dw4": {"100": {"epochs": 1000, "eval_every": 20, "batch_size": 100},
            "1000": {"epochs": 300, "eval_every": 5, "batch_size": 100},
            "10000": {"epochs": 50, "eval_every": 1, "batch_size": 100},
            "100000": {"epochs": 6, "eval_every": 1, "batch_size": 100}},
    "lj13": {"10": {"epochs": 500, "eval_every": 10, "batch_size": 10},
             "100": {"epochs": 1000, "eval_every": 25, "batch_size": 100},
             "1000": {"epochs": 300, "eval_every": 5, "batch_size": 100},
             "10000": {"epochs": 50, "eval_every": 1, "batch_size": 100}},
    "qm9": {"all": {"epochs": 100, "batch_size": 128}},
    "qm9_positional": {"all": {"epochs": 1000, "batch_size": 128}},
}
CELLS = [(ds, n) for ds, sizes in PROTOCOL.items() for n in sizes]


def test_paper_config_runs_the_protocols_cells_and_leaves_budgets_to_enf() -> None:
    assert {ds: [str(n) for n in exp["n_train"]] for ds, exp in PAPER["experiments"].items()} == \
        {ds: list(sizes) for ds, sizes in PROTOCOL.items()}
    assert not any(exp.get("budgets") for exp in PAPER["experiments"].values())


@pytest.mark.parametrize("dataset, n", CELLS, ids=[f"{ds}-n{n}" for ds, n in CELLS])
def test_enfs_protocol_budgets_are_the_papers(dataset: str, n: str) -> None:
    size = None if n == "all" else int(n)
    assert DATASETS.get(dataset).protocol_budget(size) == PROTOCOL[dataset][n]
    for model in PAPER["experiments"][dataset]["models"]:
        train = resolve(dataset, model, size)["train"]
        assert {key: train[key] for key in PROTOCOL[dataset][n]} == PROTOCOL[dataset][n], (dataset, n, model)


def test_a_budget_declares_only_budget_keys() -> None:
    for name in DATASETS.names():
        for size in (None, 10, 100, 1000, 10_000, 100_000):
            assert set(DATASETS.get(name).protocol_budget(size)) <= set(BUDGET_KEYS)


def test_training_sizes_with_budgets_are_the_papers() -> None:
    for dataset, exp in PAPER["experiments"].items():
        spec = DATASETS.get(dataset)
        if spec.budgets:
            assert sorted(spec.budgets) == sorted(int(n) for n in exp["n_train"]), dataset
