"""MLflow logging of the workflow (workflow/scripts/track_mlflow.py): concurrent writers, re-logging, contents."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TRACK = ROOT / "workflow" / "scripts" / "track_mlflow.py"
sys.path.insert(0, str(TRACK.parent))

import track_mlflow  # noqa: E402


def fake_run_dir(root: Path, epochs: int = 3) -> Path:
    """A run directory as `enf train` leaves it (config, metrics, history), without training anything."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"dataset": "dw4", "model": {"name": "enf", "hidden_nf": 32},
                                                      "train": {"lr": 5e-4, "seed": 0}, "flow": {"rtol": 1e-4}}))
    (root / "metrics.json").write_text(json.dumps({"dataset": "dw4", "model": "enf", "test_nll": 8.1,
                                                   "test_nll_sem": 0.1, "best_epoch": 1, "train_seconds": 3.0,
                                                   "code_version": "enf test", "seed": 0}))
    with open(root / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "train_loss", "val_nll", "nfe", "lr", "seconds"])
        writer.writeheader()
        for e in range(epochs):
            writer.writerow({"epoch": e, "train_loss": 9 - e, "val_nll": "" if e % 2 else 9.5 - e, "nfe": 14,
                             "lr": 5e-4, "seconds": 1.0})
    (root / "test.json").write_text(json.dumps({"nll": 8.0, "nll_sem": 0.1, "n": 40, "trace": "exact",
                                                "probes": 1, "seconds": 1.0}))
    return root


def log_cmd(uri: str, run_dir: Path, key: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(TRACK), "train", "--uri", uri, "--experiment", "enf-test",
            "--artifact-root", str(out.parent / "artifacts"), "--run-dir", str(run_dir), "--name", key,
            "--job-key", key, "--evaluation", str(run_dir / "test.json"), "--tag", f"wildcards={key}",
            "--out", str(out), *extra]


def runs(uri: str, *extra: str) -> list[dict]:
    out = subprocess.run([sys.executable, str(TRACK), "runs", "--uri", uri, "--experiment", "enf-test", *extra],
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_many_concurrent_loggers_on_a_fresh_store_lose_nothing(tmp_path: Path) -> None:
    """8 jobs finishing at once on a store nobody created yet: no crash, no lock error, 8 + 8 runs."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(8):
        run_dir = fake_run_dir(tmp_path / f"run{i}")
        procs.append(subprocess.Popen(log_cmd(uri, run_dir, f"job{i}", tmp_path / f"out{i}.json"), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)[-4000:]
    listed = runs(uri)
    train = [r for r in listed if r["tags"]["rule"] == "train"]
    assert sorted(r["tags"]["job_key"] for r in train) == [f"job{i}" for i in range(8)]
    assert len([r for r in listed if r["tags"]["rule"] == "evaluate"]) == 8
    run = train[0]
    assert run["status"] == "FINISHED" and run["n_params"] >= 5
    assert run["n_metrics"] >= 6  # final metrics + per-epoch series (latest values)


def test_relogging_a_job_supersedes_its_old_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = fake_run_dir(tmp_path / "run")
    for i in range(2):
        subprocess.run(log_cmd(uri, run_dir, "same-job", tmp_path / f"out{i}.json"), check=True, timeout=300,
                       capture_output=True)
    live = runs(uri)
    assert len([r for r in live if r["tags"]["rule"] == "train"]) == 1
    everything = runs(uri, "--all")
    assert len([r for r in everything if r["tags"]["rule"] == "train"]) == 2
    second = json.loads((tmp_path / "out1.json").read_text())
    assert second["superseded"] and second["run_id"] in {r["run_id"] for r in live}


def test_training_payload_reads_a_run_directory(tmp_path: Path) -> None:
    payload = track_mlflow.training_payload(fake_run_dir(tmp_path / "run", epochs=4))
    assert payload["params"]["model.hidden_nf"] == 32 and payload["params"]["train.lr"] == 5e-4
    assert payload["metrics"]["test_nll"] == 8.1 and "seed" not in payload["metrics"]
    steps = sorted({s for k, _, _, s in payload["series"] if k == "train_loss"})
    assert steps == [0, 1, 2, 3]
    assert sorted(s for k, _, _, s in payload["series"] if k == "val_nll") == [0, 2]  # blanks skipped
    assert payload["tags"]["code_version"] == "enf test"


def test_lock_errors_are_retried_and_others_are_not() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert track_mlflow.with_retry(flaky, base=0.001) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        track_mlflow.with_retry(lambda: (_ for _ in ()).throw(ValueError("no")), base=0.001)
