"""What every complete smoke run must show, run locally (test_workflow_e2e.py) or through SLURM (…_slurm.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


class SmokeChecks:
    """The smoke configuration's outputs and the checks both end-to-end tests make on them (one definition)."""

    # Debugging aid: ENF_E2E_CONFIG=path runs the end-to-end tests on another (smoke-like, name: smoke) config.
    config = Path(os.environ.get("ENF_E2E_CONFIG") or ROOT / "config" / "smoke.yaml")
    out = "results/smoke"
    experiment = "enf-smoke"
    track = ROOT / "workflow" / "scripts" / "track_mlflow.py"
    # The code versions are pinned, so that edits of enf made while the tests run do not count as code changes.
    pinned_env = {"OMP_NUM_THREADS": "1", "ENF_CODE_VERSION": "e2e-1", "ENF_DATA_CODE_VERSION": "e2e-data-1"}

    def trained_runs(self, workdir: Path) -> list[Path]:
        """The run directories of the training jobs that finished (each has its metrics.json)."""
        return sorted(p.parent for p in (workdir / self.out / "runs").rglob("metrics.json"))

    def mlflow_runs(self, workdir: Path) -> list[dict]:
        """Every live MLflow run of the smoke experiment in the workdir's store (through track_mlflow.py)."""
        out = subprocess.run([sys.executable, str(self.track), "runs", "--uri",
                              f"sqlite:///{workdir}/results/mlflow.db", "--experiment", self.experiment],
                             capture_output=True, text=True, timeout=300, check=True)
        return json.loads(out.stdout)

    #: Table 1's trained cells of the smoke configuration (dataset, model, n_train).
    table1_cells = frozenset({("dw4", m, "100") for m in ("gnf", "gnf_att", "gnf_att_aug", "simple_dynamics",
                                                          "kernel_dynamics", "enf")} | {("lj13", "enf", "10")})

    def table1(self, workdir: Path, expected: frozenset[tuple[str, str, str]]) -> None:
        """Table 1 in every format, labelled as the smoke configuration, with its figure and every expected
        trained cell measured (the paper's rows are printed regardless, so their presence proves nothing)."""
        tables = workdir / self.out / "tables"
        self._labelled(tables, "table1")
        assert (workdir / self.out / "figures" / "table1_nll.png").is_file()
        measured = pd.read_csv(tables / "table1.csv", dtype={"n_train": str})
        measured = measured[(measured["metric"] == "nll") & (measured["kind"] == "trained")]
        cells = {(row.dataset, row.model, row.n_train) for row in measured.itertuples()
                 if math.isfinite(row.mean) and row.n_seeds >= 1}
        assert expected <= cells, expected - cells

    def three_tables(self, workdir: Path) -> None:
        """Tables 1-3 in every format, labelled as the smoke configuration; every trained Table 1 cell measured."""
        self.table1(workdir, self.table1_cells)
        tables = workdir / self.out / "tables"
        for table in ("table2", "table3"):
            self._labelled(tables, table)
        assert "E-NF" in (tables / "table1.md").read_text() and "Kernel dynamics" in (tables / "table1.md").read_text()
        assert 'every model with settings {"model.hidden_nf": 16' in (tables / "table2.md").read_text()  # smoke.yaml

    @staticmethod
    def _labelled(tables: Path, table: str) -> None:
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{table}.{ext}").is_file(), (table, ext)
        md = (tables / f"{table}.md").read_text()
        assert "Configuration: smoke" in md and "SMOKE TEST" in md and "Deviations from the protocol" in md

    def one_mlflow_run_per_training_job(self, workdir: Path) -> list[dict]:
        """One finished MLflow run per training job, each with its evaluation nested under it; returns them."""
        trained = self.trained_runs(workdir)
        runs = self.mlflow_runs(workdir)
        train_runs = [r for r in runs if r["tags"].get("rule") == "train"]
        assert len(train_runs) == len(trained) > 0
        keys = {r["tags"]["job_key"] for r in train_runs}
        assert len(keys) == len(train_runs)  # one live run per job
        for run in train_runs:
            assert run["status"] == "FINISHED" and run["n_params"] > 20 and run["n_metrics"] > 5
            assert run["tags"]["config_name"] == "smoke" and run["tags"]["code_version"].startswith("enf ")
        evals = [r for r in runs if r["tags"].get("rule") == "evaluate"]
        assert len(evals) >= len(train_runs) and all(r["parent"] for r in evals)
        return train_runs

    def watched_while_training(self, workdir: Path) -> None:
        """Beside every training job the live watcher reached the store, logged its run and stopped cleanly.

        Checked on local runs: in a SLURM job the end of the job may end the watcher before its last line."""
        logs = sorted((workdir / self.out / "logs" / "train").rglob("*.log"))
        assert logs
        for log in logs:
            text = log.read_text()
            assert "[track_mlflow live] following" in text and "[track_mlflow live] stopped: run" in text, (
                log, text[-2000:])
            assert "[track_mlflow live] warning" not in text, (log, text[-2000:])


@pytest.fixture(scope="session")
def smoke_checks() -> SmokeChecks:
    """The shared smoke-run checks (a fixture, since test modules cannot import a conftest reliably)."""
    return SmokeChecks()
