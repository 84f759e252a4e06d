"""Shared fixtures: one torch thread per test worker, float64 helpers, tiny data sets on disk."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

# With a CPU-only torch on a machine whose environment gives a GPU (CUDA_VISIBLE_DEVICES, SLURM's GPU variables),
# every `enf` run would refuse to start (enf/device.py); the tests check results, not devices, so there they run on
# the CPU (inherited by the commands and workflows they start). tests/test_device.py clears it for its own cases.
if torch.version.cuda is None:
    os.environ.setdefault("ENF_ALLOW_CPU", "1")

#: Modules that take minutes, longest first. scripts/run-tests.sh runs pytest-xdist without its reordering
#: by test count (`--no-loadscope-reorder`), so these start at once on their own workers instead of last.
LONGEST_FIRST = ("test_workflow_slurm.py", "test_workflow_e2e.py", "test_workflow_mlflow.py", "test_pretrained.py",
                 "test_workflow_dryrun.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


@pytest.fixture(autouse=True)
def _seeded(request: pytest.FixtureRequest) -> None:
    """Seed torch and numpy from the test's id: its random draws no longer depend on which worker runs it after what."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)


def write_particle_data(root: Path, n_particles: int, n_dim: int, sizes: dict[str, int], seed: int = 0) -> Path:
    """Gaussian blobs in the particle-data format (centre of mass removed): fast stand-ins for MCMC data."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        x = rng.normal(size=(n, n_particles, n_dim)) * 1.5
        x -= x.mean(axis=1, keepdims=True)
        np.savez(root / f"{split}.npz", positions=x.astype(np.float32))
    return root


@pytest.fixture
def dw4_dir(tmp_path: Path) -> Path:
    return write_particle_data(tmp_path / "dw4", 4, 2, {"train": 64, "valid": 32, "test": 32})
