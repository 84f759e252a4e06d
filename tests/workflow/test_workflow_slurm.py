"""The smoke workflow through a real single-node SLURM cluster, with the project's profile (profiles/slurm).

The module fixture brings the cluster up with scripts/slurm-cluster.sh (installing SLURM on a fresh Debian machine)
and stops it afterwards if it started it; the tests skip, saying why, only where no cluster can be started here
(not root, no apt-get) or where ENF_NO_SLURM is set (a machine that must not be changed). Through SLURM (`--jobs 2`)
the smoke configuration makes Table 1 for a subset of its rows (E-NF and simple dynamics on DW4, E-NF on LJ13:
every rule of a Table 1 cell, data to MLflow; the local end-to-end test makes all three tables), with one MLflow
run per training job and every training job visibly a SLURM job; then a training job
cancelled with scancel must be reported as failed and finish from its checkpoint when the workflow is run again.
The machine has no GPUs: ENF_SLURM_GPUS=0 is the profile's CPU fallback. Every snakemake call runs under
`timeout -s KILL`, because the executor can wait forever on a broken status query.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SmokeChecks

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "slurm-cluster.sh"
PROFILE = ROOT / "profiles" / "slurm"
RUN_LIMIT = 1200  # seconds: hard limit for one snakemake invocation through SLURM (about 6 min on 2 idle cores)
KILLED = (-9, 137)  # the exit status of a run that `timeout -s KILL` stopped
# The profile's first status check comes 10 s after a submission (kind to a real cluster's controller); each
# check that finds nothing finished adds 10 s more. On this one-node test cluster, first look after 2 s.
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "2")
# Sessions of this test on one machine hold this file's lock shared while they use the cluster; the one that started
# the cluster stops it only if it can then take the lock exclusively (no other session is using it).
USERS = Path("/tmp/enf-slurm-test.users")
#: The Table 1 cells run through SLURM: both kinds of field (equivariant and not) and both particle systems.
SLURM_CELLS = frozenset({("dw4", "enf", "100"), ("dw4", "simple_dynamics", "100"), ("lj13", "enf", "10")})
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def _cluster(command: str, limit: int) -> subprocess.CompletedProcess:
    """scripts/slurm-cluster.sh COMMAND under a hard time limit."""
    return subprocess.run(["timeout", "-s", "KILL", str(limit), str(CLUSTER), command], capture_output=True,
                          text=True)


def _default_partition() -> str:
    """The cluster's default partition (marked '*' by sinfo)."""
    names = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0].rstrip("*"))


def _cancel_jobs_under(workdir: Path) -> None:
    """Cancel the SLURM jobs still queued or running in workdir (left behind when a run hits its time limit)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True).stdout
    ids = [line.split()[0] for line in out.splitlines() if len(line.split()) == 2 and
           line.split()[1].startswith(str(workdir))]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


@pytest.fixture(scope="module")
def slurm_partition() -> Iterator[str]:
    """A running single-node SLURM cluster (started here if need be, then stopped again); yields its partition."""
    if not CLUSTER.is_file():
        pytest.fail(f"{CLUSTER} is missing")
    with open(USERS if os.geteuid() == 0 else os.devnull, "a") as users:  # only root starts and stops clusters
        fcntl.flock(users, fcntl.LOCK_SH)
        started = False
        if _cluster("status", 60).returncode != 0:
            if os.environ.get("ENF_NO_SLURM"):
                pytest.skip("ENF_NO_SLURM is set: no SLURM cluster is installed or started")
            if os.geteuid() != 0:
                pytest.skip("no SLURM cluster running, and starting one needs root (scripts/slurm-cluster.sh start)")
            t0 = time.perf_counter()
            res = _cluster("start", 600)
            if res.returncode == 3:  # the script's "cannot run here": not root, no apt-get
                pytest.skip(f"cannot start a SLURM cluster here: {res.stderr.strip().splitlines()[-1]}")
            assert res.returncode == 0, f"scripts/slurm-cluster.sh start failed (exit {res.returncode}):\n{res.stderr}"
            started = "already up" not in res.stderr  # else another session started it meanwhile
            print(f"SLURM cluster up after {time.perf_counter() - t0:.0f} s: {res.stderr.strip().splitlines()[-1]}")
        try:
            yield _default_partition()
        finally:
            if started:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    print("SLURM cluster left running: another test session is using it")
                else:
                    res = _cluster("stop", 120)
                    assert res.returncode == 0, f"scripts/slurm-cluster.sh stop failed:\n{res.stderr}"


def slurm_snakemake(workdir: Path, partition: str, smoke_checks: SmokeChecks, *args: str,
                    popen: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    """The README's cluster command on the smoke config, under `timeout -s KILL RUN_LIMIT`."""
    cmd = ["timeout", "-s", "KILL", str(RUN_LIMIT), sys.executable, "-m", "snakemake", "--snakefile",
           str(ROOT / "Snakefile"), "--directory", str(workdir), "--profile", str(PROFILE), "--configfile",
           str(smoke_checks.config), *args]
    env = {**os.environ, **smoke_checks.pinned_env, "ENF_SLURM_PARTITION": partition, "ENF_SLURM_GPUS": "0"}
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_LIMIT + 60)


@pytest.fixture(scope="module")
def slurm_smoke(slurm_partition: str, smoke_checks: SmokeChecks,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The working directory and the output of one complete smoke run through SLURM."""
    workdir = tmp_path_factory.mktemp("slurm_smoke")
    subset = workdir / "slurm_cells.yaml"
    models = sorted(m for ds, m, _ in SLURM_CELLS if ds == "dw4")
    subset.write_text(f"experiments:\n  dw4:\n    models: [{', '.join(models)}]\n")
    out_dir = smoke_checks.out
    targets = [f"{out_dir}/tables/table1.md", f"{out_dir}/figures/table1_nll.png",
               *(f"{out_dir}/tracking/{ds}/{m}/n{n}/seed0/mlflow.json" for ds, m, n in sorted(SLURM_CELLS))]
    start = time.perf_counter()
    try:
        # successful jobs' SLURM logs are kept, as the evidence that SLURM ran them
        res = slurm_snakemake(workdir, slurm_partition, smoke_checks, "--configfile", str(smoke_checks.config),
                              str(subset), "--jobs", "2", "--slurm-keep-successful-logs", *FAST_STATUS, "--",
                              *targets)
        out = res.stdout + res.stderr
        (workdir / "slurm_smoke_run.log").write_text(out)
        (workdir / "slurm_smoke_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        assert res.returncode == 0, f"exit {res.returncode} ({KILLED}: killed at {RUN_LIMIT} s):\n{out[-6000:]}"
        yield workdir, out
    finally:
        _cancel_jobs_under(workdir)


def test_smoke_through_slurm_makes_table1(slurm_smoke: tuple[Path, str], smoke_checks: SmokeChecks) -> None:
    """Through SLURM the smoke run makes Table 1 as it does locally, with every cell it ran measured."""
    smoke_checks.table1(slurm_smoke[0], SLURM_CELLS)
    assert {(p.parts[-4], p.parts[-3], p.parts[-2][1:]) for p in smoke_checks.trained_runs(slurm_smoke[0])} == (
        SLURM_CELLS)


def test_smoke_through_slurm_one_mlflow_run_per_training_job(slurm_smoke: tuple[Path, str],
                                                             smoke_checks: SmokeChecks) -> None:
    """MLflow logging stays correct when the jobs run elsewhere: one finished run per training job."""
    smoke_checks.one_mlflow_run_per_training_job(slurm_smoke[0])


def test_training_jobs_ran_as_slurm_jobs(slurm_smoke: tuple[Path, str], smoke_checks: SmokeChecks) -> None:
    """Every training job was an sbatch job whose SLURM log shows it running that training; logging stayed local."""
    workdir, out = slurm_smoke
    submitted = {m.group(1): (m.group(2), Path(m.group(3))) for m in SUBMITTED.finditer(out)}
    slurm_train = {}
    for block in out.split("\nrule train:")[1:]:
        job = re.search(r"jobid: (\d+)", block).group(1)
        wildcards = re.search(r"wildcards: (.*)", block).group(1)
        assert job in submitted, f"training job {job} ({wildcards}) was not submitted to SLURM"
        slurm_id, log = submitted[job]
        assert log.is_file() and log.stem == slurm_id, log
        text = log.read_text()
        assert "rule train:" in text and wildcards in text and "--executor slurm-jobstep" in text, text[-2000:]
        slurm_train[wildcards] = slurm_id
    trained = smoke_checks.trained_runs(workdir)
    assert len(slurm_train) == len(trained) > 0
    assert len(set(slurm_train.values())) == len(trained)  # one SLURM job per training
    assert "\nlocalrule train:" not in out and "\nlocalrule evaluate:" not in out
    assert "\nlocalrule track:" in out and "\nlocalrule tables:" in out  # MLflow and tables on the submitting host


def _slurm_job_of(wildcards: str) -> tuple[str, str] | None:
    """(job id, state) of the SLURM job running the training with these wildcards (from its comment), if any."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        job_id, state, comment = line.split("|", 2)
        if comment == f"rule_train_wildcards_{wildcards}" and state in ("PENDING", "RUNNING"):
            return job_id, state
    return None


def test_cancelled_training_fails_then_resumes_from_its_checkpoint(slurm_smoke: tuple[Path, str],
                                                                  slurm_partition: str, smoke_checks: SmokeChecks,
                                                                  tmp_path: Path) -> None:
    """scancel a running training job: the workflow reports it failed; run again, it resumes from state/last.pt."""
    workdir = slurm_smoke[0]
    longer = tmp_path / "longer.yaml"  # a new budget: this training is rerun, for 6 epochs
    longer.write_text('experiments:\n  dw4:\n    budgets:\n      "100": {epochs: 6, eval_every: 1, '
                      'batch_size: 100}\n')
    run_dir = workdir / smoke_checks.out / "runs" / "dw4" / "enf" / "n100" / "seed0"
    target = str((run_dir / "metrics.json").relative_to(workdir))
    # no resubmission (the profile resubmits training up to 10 times: --preemptible-retries), so the failure shows
    args = ["--configfile", str(smoke_checks.config), str(longer), "--retries", "0", "--preemptible-retries", "0",
            "--jobs", "1", *FAST_STATUS, "--", target]
    state = run_dir / "state" / "last.pt"
    t0 = time.time()
    proc = slurm_snakemake(workdir, slurm_partition, smoke_checks, *args, popen=True)
    cancelled = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            job = _slurm_job_of("dw4_enf_100_0")
            if job and job[1] == "RUNNING" and state.is_file() and state.stat().st_mtime > t0:  # an epoch saved
                subprocess.run(["scancel", job[0]], check=True)
                cancelled = job[0]
                break
            time.sleep(0.2)
        out = proc.communicate(timeout=RUN_LIMIT + 60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        _cancel_jobs_under(workdir)
    assert cancelled, f"no running training job with a saved epoch to cancel:\n{out[-4000:]}"
    assert proc.returncode not in (0, *KILLED), out[-4000:]
    assert f"SLURM-job '{cancelled}' failed" in out and "CANCELLED" in out, out[-4000:]
    assert "Error in rule train" in out, out[-4000:]
    assert state.is_file() and not (run_dir / "metrics.json").exists()

    res = slurm_snakemake(workdir, slurm_partition, smoke_checks, *args)
    again = res.stdout + res.stderr
    assert res.returncode == 0, again[-4000:]
    assert SUBMITTED.search(again), again[-4000:]  # the rerun went through SLURM too
    log = (workdir / smoke_checks.out / "logs" / "train" / "dw4" / "enf" / "n100" / "seed0.log").read_text()
    assert "resum" in log, log[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 6


def test_cluster_script_is_idempotent(slurm_partition: str) -> None:
    """`status` reports the running cluster up; `start` then says so and changes nothing."""
    status = _cluster("status", 60)
    assert status.returncode == 0 and "cluster: up" in status.stdout, status.stdout
    res = _cluster("start", 60)
    assert res.returncode == 0 and "already up" in res.stderr, res.stderr
