"""The MLflow dashboard itself, in a real browser: `mlflow server --workers 1` on a store holding a live training run
(made by track_mlflow.py live from history rows), its pages loaded by a headless Chromium and read from the DOM.

The module fixture uses Debian's `chromium`, installing it with apt-get when missing (as root on Debian, as
tests/workflow/test_workflow_slurm.py installs SLURM); the tests skip, saying why, where it cannot be had (not root,
no apt-get, no network) or where ENF_NO_BROWSER is set (a machine that must not be changed).

MLflow 3.17 chooses an experiment's first page by the browser's workflow type ("GenAI" unless the user picked
"Model training", kept in the browser's local storage) and the URL's `workflowType`; the experiment's tag
mlflow.experimentKind types it as model training for the rest of the UI. The links this project documents carry
`?workflowType=machine_learning`, and land on the runs table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TRACK = ROOT / "workflow" / "scripts" / "track_mlflow.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(TRACK.parent))

import track_mlflow  # noqa: E402
from test_mlflow_live import KEY, FakeTraining, watcher  # noqa: E402

MLFLOW = Path(sys.executable).with_name("mlflow")
ML = "workflowType=machine_learning"


@pytest.fixture(scope="module")
def chromium() -> str:
    """The path of a Chromium, installed with apt-get if needed and possible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("ENF_NO_BROWSER"):
        pytest.skip("ENF_NO_BROWSER is set: no browser is installed on this machine")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no chromium, and it cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = subprocess.run(["timeout", "900", "apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        update = subprocess.run(["timeout", "300", "apt-get", "update"], capture_output=True, text=True, env=env)
        res = subprocess.run(["timeout", "900", "apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                             capture_output=True, text=True, env=env) if update.returncode == 0 else update
    found = shutil.which("chromium")
    if res.returncode != 0 or not found:
        pytest.skip(f"apt-get could not install chromium: {(res.stderr or res.stdout).strip()[-300:]}")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[dict]:
    """A store with one training running (its watcher has logged two epochs), served by `mlflow server`."""
    root = tmp_path_factory.mktemp("dashboard")
    uri = f"sqlite:///{root}/mlflow.db"
    assert track_mlflow.main(["init", "--uri", uri, "--experiment", "enf-test", "--out", str(root / "init.json")]) == 0
    training = FakeTraining(root / "run")
    live = watcher(uri, root / "run")
    training.start()
    training.epoch(0)
    training.epoch(1)
    live.poll()
    experiment_id = json.loads((root / "init.json").read_text())["experiment_id"]
    port = _free_port()
    server = subprocess.Popen([str(MLFLOW), "server", "--backend-store-uri", uri, "--default-artifact-root",
                               (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((root / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield {"url": url, "experiment_id": experiment_id, "run_id": live.run_id, "root": root, "chromium": chromium}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def page_text(dashboard: dict, fragment: str) -> str:
    """The text of a dashboard page once its scripts have run (headless Chromium, fresh profile, DOM dump)."""
    profile = dashboard["root"] / f"profile-{time.monotonic_ns()}"
    res = subprocess.run([dashboard["chromium"], "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                          "--dump-dom", f"{dashboard['url']}/{fragment}"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", res.stdout))


def test_the_rest_api_shows_a_typed_experiment_and_a_running_run(dashboard: dict) -> None:
    with urllib.request.urlopen(f"{dashboard['url']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=enf-test",
                                timeout=30) as answer:
        experiment = json.load(answer)["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    with urllib.request.urlopen(f"{dashboard['url']}/api/2.0/mlflow/runs/get?run_id={dashboard['run_id']}",
                                timeout=30) as answer:
        run = json.load(answer)["run"]
    assert run["info"]["status"] == "RUNNING"
    assert {"key": "job_key", "value": KEY} in run["data"]["tags"]
    assert {m["key"]: m["step"] for m in run["data"]["metrics"]}["train_loss"] == 6


def test_the_experiment_opens_on_its_runs_table_with_the_live_run(dashboard: dict) -> None:
    text = page_text(dashboard, f"#/experiments/{dashboard['experiment_id']}?{ML}")
    assert "enf-test" in text and "unit run" in text, text[-3000:]
    assert "Run Name" in text and "Detect Issues" not in text, text[-3000:]  # the runs table, not the GenAI overview


def test_the_run_page_shows_its_metrics_while_it_runs(dashboard: dict) -> None:
    text = page_text(dashboard, f"#/experiments/{dashboard['experiment_id']}/runs/{dashboard['run_id']}?{ML}")
    assert "unit run" in text and "train_loss" in text and "val_nll" in text, text[-3000:]
