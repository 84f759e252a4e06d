"""End to end: config/smoke.yaml in a temporary directory, then reruns, MLflow, the dashboard and a resume.

One module-scoped run of the whole smoke workflow (the costly part, a few minutes on 2 cores) feeds every test
here: all three tables exist and say what produced them; MLflow holds one live run per training job; the
dashboard's REST API lists them; a second invocation has nothing to do; changing one model's settings reruns only
that model's jobs and the tables; `--forcerun` works; a training job killed mid-way resumes when the workflow is
started again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SmokeChecks

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "Snakefile"

# Debugging aid: ENF_E2E_CONFIG=path runs these tests on another (smoke-like, name: smoke) config file.
SMOKE = Path(os.environ.get("ENF_E2E_CONFIG") or ROOT / "config" / "smoke.yaml")
OUT = "results/smoke"


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    counts = {}
    for line in output.split("Job stats:")[-1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def smk_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
            "--configfile", str(SMOKE), *args]


# The code versions are pinned, so that edits of enf made while the tests run do not count as code changes.
PINNED = {"OMP_NUM_THREADS": "1", "ENF_CODE_VERSION": "e2e-1", "ENF_DATA_CODE_VERSION": "e2e-data-1"}


def run_smk(workdir: Path, *args: str, timeout: int = 900, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **PINNED, **env_extra}
    return subprocess.run(smk_cmd(workdir, *args), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of one complete smoke run."""
    workdir = tmp_path_factory.mktemp("smoke")
    start = time.perf_counter()
    res = run_smk(workdir, "--cores", "2", "--scheduler", "greedy", "--keep-going", "--quiet", "rules",
                  timeout=1800)
    (workdir / "smoke_run.log").write_text(res.stdout + res.stderr)
    assert res.returncode == 0, res.stderr[-6000:]
    (workdir / "smoke_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return workdir


def test_smoke_makes_all_three_tables(smoke: Path, smoke_checks: SmokeChecks) -> None:
    smoke_checks.three_tables(smoke)


def test_one_mlflow_run_per_training_job(smoke: Path, smoke_checks: SmokeChecks) -> None:
    smoke_checks.one_mlflow_run_per_training_job(smoke)
    smoke_checks.watched_while_training(smoke)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_lists_the_runs(smoke: Path) -> None:
    """The README's dashboard command, checked through its REST API."""
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", "sqlite:///results/mlflow.db",
                               "--workers", "1", "--host", "127.0.0.1", "--port", str(port)], cwd=smoke,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/experiments/get-by-name?experiment_name=enf-smoke",
                                            timeout=10) as resp:
                    experiment = json.load(resp)["experiment"]
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(server.stderr.read().decode()[-3000:] if server.poll() is not None
                                         else "dashboard did not answer") from None
                time.sleep(1)
        body = json.dumps({"experiment_ids": [experiment["experiment_id"]], "max_results": 1000,
                           "filter": "tags.rule = 'train'"}).encode()
        req = urllib.request.Request(f"{url}/runs/search", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            listed = json.load(resp).get("runs", [])
        trained = list((smoke / OUT / "runs").rglob("metrics.json"))
        assert len(listed) == len(trained)
    finally:
        os.killpg(server.pid, signal.SIGINT)  # the server's own Ctrl-C path (SIGTERM can leave it hanging)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def test_second_invocation_has_nothing_to_do(smoke: Path) -> None:
    res = run_smk(smoke, "-n")
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr


def test_changing_one_model_reruns_only_its_jobs_and_the_tables(smoke: Path, tmp_path: Path) -> None:
    override = tmp_path / "override.yaml"
    override.write_text("models:\n  enf: {label: E-NF, set: {train.lr: 0.001}}\n")
    res = run_smk(smoke, "-n", "--configfile", str(SMOKE), str(override))
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout + res.stderr
    counts = job_counts(text)
    n_enf = len(list((smoke / OUT / "runs").glob("*/enf/*/*/metrics.json")))
    assert counts["train"] == n_enf and counts["evaluate"] == n_enf and counts["track"] == n_enf
    assert counts["tables"] == 3 and "data_mcmc" not in counts and "data_qm9pack" not in counts
    for block in text.split("rule train:")[1:]:
        assert "model=enf," in block.split("wildcards:")[1].splitlines()[0]


def test_editing_enf_reruns_model_jobs_but_not_data(smoke: Path) -> None:
    """A new enf source hash (here: a new pinned version) reruns training and what follows, not the data."""
    res = run_smk(smoke, "-n", "--quiet", "rules", ENF_CODE_VERSION="e2e-2")
    counts = job_counts(res.stdout + res.stderr)
    n_runs = len(list((smoke / OUT / "runs").rglob("metrics.json")))
    assert counts.get("train") == n_runs and counts.get("tables") == 3
    assert "data_mcmc" not in counts and "data_qm9pack" not in counts and "data_split" not in counts


def test_forcerun_of_a_rule(smoke: Path) -> None:
    res = run_smk(smoke, "-n", "--quiet", "rules", "--forcerun", "tables")
    counts = job_counts(res.stdout + res.stderr)
    assert counts.get("tables") == 3 and "train" not in counts and "evaluate" not in counts


def test_report_with_captions(smoke: Path) -> None:
    res = run_smk(smoke, "--report", "report.html")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (smoke / "report.html").stat().st_size > 10_000


def _train_process(snakemake: subprocess.Popen, run_dir: str) -> int | None:
    """The pid of the `enf train` process under our snakemake process (children listed through /proc)."""
    import psutil

    try:
        children = psutil.Process(snakemake.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if " train " in cmd and run_dir in cmd and "prepare_run_dir" not in cmd and "gpu_slot" not in cmd:
            return child.pid
    return None


def test_killed_training_job_resumes_when_started_again(smoke: Path, tmp_path: Path) -> None:
    override = tmp_path / "longer.yaml"
    override.write_text('experiments:\n  dw4:\n    budgets:\n      "100": {epochs: 6, eval_every: 1, '
                        'batch_size: 100}\n')
    run_dir = f"{OUT}/runs/dw4/enf/n100/seed0"
    target = f"{run_dir}/metrics.json"
    args = ["--cores", "1", "--configfile", str(SMOKE), str(override), "--", target]
    env = {**os.environ, **PINNED}
    proc = subprocess.Popen(smk_cmd(smoke, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    state = smoke / run_dir / "state" / "last.pt"
    deadline = time.monotonic() + 600
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        pid = _train_process(proc, run_dir)
        if pid and state.is_file():  # at least one epoch of the new training saved
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    out = proc.communicate(timeout=300)[0]
    assert killed, out[-3000:]
    assert proc.returncode != 0 and state.is_file()
    res = run_smk(smoke, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (smoke / OUT / "logs" / "train" / "dw4" / "enf" / "n100" / "seed0.log").read_text()
    assert "resume" in log
    metrics = json.loads((smoke / target).read_text())
    assert metrics["epochs"] == 6
