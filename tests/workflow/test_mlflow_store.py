"""The MLflow store of the workflow (workflow/scripts/track_mlflow.py) survives concurrent creation and refuses
damaged stores with one line (exit status 2), leaving them as they were."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRACK = ROOT / "workflow" / "scripts" / "track_mlflow.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_workflow_mlflow import fake_run_dir, log_cmd  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _track(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRACK), *args], capture_output=True, text=True, timeout=300, env=ENV)


def _init(db: Path, out: Path) -> subprocess.CompletedProcess:
    return _track("init", "--uri", f"sqlite:///{db}", "--experiment", "enf-test", "--out", str(out))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one logged job (made once; tests work on copies)."""
    root = tmp_path_factory.mktemp("store")
    res = subprocess.run(log_cmd(f"sqlite:///{root}/mlflow.db", fake_run_dir(root / "run"), "job0",
                                 root / "out.json"), capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return root / "mlflow.db"


def test_two_unlocked_writers_on_a_fresh_store_both_succeed(tmp_path: Path) -> None:
    """--no-lock skips the lock around writes, not around creating the store: both jobs log, the store stays usable."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    procs = [subprocess.Popen(log_cmd(uri, fake_run_dir(tmp_path / f"run{i}"), f"job{i}", tmp_path / f"out{i}.json",
                                      "--no-lock"), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)[-4000:]
    listed = json.loads(_track("runs", "--uri", uri, "--experiment", "enf-test").stdout)
    assert sorted(r["tags"]["job_key"] for r in listed if r["tags"]["rule"] == "train") == ["job0", "job1"]
    assert _init(tmp_path / "mlflow.db", tmp_path / "init.json").returncode == 0
    assert not list(tmp_path.glob(".mlflow.db.*"))


def _damaged(store: Path, tmp_path: Path, kind: str) -> Path:
    db = tmp_path / "mlflow.db"
    data = store.read_bytes()
    if kind == "garbage":
        db.write_bytes(os.urandom(20000))
    elif kind == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif kind == "damaged page":  # the tail of the runs table's page, where its rows are, overwritten
        con = sqlite3.connect(store)
        page = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        con.close()
        damaged = bytearray(data)
        start = page * size - size // 4
        damaged[start: page * size] = b"\xa5" * (size // 4)
        db.write_bytes(bytes(damaged))
    elif kind == "half-made":  # what a creation killed mid-way used to leave
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        con.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
        con.commit()
        con.close()
    else:
        shutil.copy(store, db)
    return db


@pytest.mark.parametrize("kind, message", [
    ("garbage", "not a usable sqlite database"),
    ("truncated", "not a usable sqlite database"),
    ("damaged page", "damaged (sqlite quick_check"),
    ("half-made", "not a complete MLflow store"),
])
@pytest.mark.parametrize("command", ["init", "train", "runs"])
def test_a_bad_store_is_refused_in_one_line_and_left_alone(good_store: Path, tmp_path: Path, kind: str,
                                                           message: str, command: str) -> None:
    db = _damaged(good_store, tmp_path, kind)
    before = _sha(db)
    uri = f"sqlite:///{db}"
    if command == "init":
        res = _init(db, tmp_path / "init.json")
    elif command == "train":
        res = subprocess.run(log_cmd(uri, fake_run_dir(tmp_path / "run"), "job9", tmp_path / "out.json"),
                             capture_output=True, text=True, timeout=300, env=ENV)
    else:
        res = _track("runs", "--uri", uri, "--experiment", "enf-test")
    err = res.stderr.strip()
    assert res.returncode == 2, err[-3000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err[-3000:]
    assert message in err and str(db) in err
    assert _sha(db) == before
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "init.json").exists()


def test_a_killed_creators_leftover_is_cleared(tmp_path: Path) -> None:
    """A store is created under a temporary name and renamed when complete; a killed creator's file is removed."""
    leftover = tmp_path / ".mlflow.db.999999.creating"
    leftover.write_bytes(b"half a schema")
    res = _init(tmp_path / "mlflow.db", tmp_path / "init.json")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not leftover.exists() and (tmp_path / "mlflow.db").stat().st_size > 0
    con = sqlite3.connect(tmp_path / "mlflow.db")
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    con.close()
