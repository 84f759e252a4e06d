"""Live MLflow runs (workflow/scripts/track_mlflow.py live): a training's run appears while it trains, grows with
its history, survives a kill and resume without a point logged twice, and becomes the run the track step completes;
an unusable store never fails the job. No real training: the tests write history rows as `enf train` would."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from enf.training.history import StepHistory, read_steps

ROOT = Path(__file__).resolve().parents[2]
TRACK = ROOT / "workflow" / "scripts" / "track_mlflow.py"
sys.path.insert(0, str(TRACK.parent))

import prepare_run_dir  # noqa: E402
import track_mlflow  # noqa: E402

KEY = "unit:dw4/enf/n100/seed0"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh MLflow store with its experiment (made once: creating the schema takes seconds; tests copy it)."""
    root = tmp_path_factory.mktemp("store")
    assert track_mlflow.main(["init", "--uri", f"sqlite:///{root}/mlflow.db", "--experiment", "enf-test",
                              "--out", str(root / "init.json")]) == 0
    return root / "mlflow.db"


@pytest.fixture
def uri(empty_store: Path, tmp_path: Path) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@functools.cache
def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def job_runs(uri: str, key: str = KEY, deleted: bool = False) -> list[Any]:
    from mlflow.entities import ViewType

    c = client(uri)
    experiment = c.get_experiment_by_name("enf-test")
    return c.search_runs([experiment.experiment_id], filter_string=f"tags.job_key = '{key}'",
                         run_view_type=ViewType.ALL if deleted else ViewType.ACTIVE_ONLY)


def points(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every point of a metric, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


class FakeTraining:
    """Writes a run directory as `enf train` does, without training: config, history_steps.csv rows, results."""

    def __init__(self, run_dir: Path, steps_per_epoch: int = 3, loss0: float = 10.0) -> None:
        self.run_dir = run_dir
        self.per_epoch = steps_per_epoch
        self.loss0 = loss0
        self.history = StepHistory(run_dir / "history_steps.csv")
        self.step = 0
        run_dir.mkdir(parents=True, exist_ok=True)

    def start(self, resume_step: int | None = None) -> None:
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump({"dataset": "dw4", "model": {"name": "enf"},
                                                                  "train": {"lr": 5e-4, "seed": 0}}))
        self.history.start(resume_step)
        self.step = resume_step or 0

    def epoch(self, epoch: int) -> None:
        """The steps of one epoch and its validation."""
        for _ in range(self.per_epoch):
            self.step += 1
            self.history.append({"step": self.step, "epoch": epoch, "time": time.time(), "seconds": 0.01,
                                 "train_loss": self.loss0 - 0.1 * self.step, "train_nll": self.loss0 - 0.1 * self.step,
                                 "train_reg": 0.0, "nfe": 14, "grad_norm": 1.5, "clipped": 0, "lr": 5e-4})
        self.history.append({"step": self.step, "epoch": epoch, "time": time.time(), "val_nll": self.loss0 - epoch,
                             "val_nll_sem": 0.1, "val_nfe": 20, "val_seconds": 0.02})

    def finish(self) -> None:
        """What `enf train` writes at the end (metrics.json last) and the evaluation the track step attaches."""
        (self.run_dir / "history.csv").write_text("epoch,train_loss,val_nll,seconds\n0,9.0,8.0,0.1\n")
        (self.run_dir / "metrics.json").write_text(json.dumps({"dataset": "dw4", "model": "enf", "best_epoch": 0,
                                                               "best_val_nll": 8.0, "train_seconds": 0.5,
                                                               "code_version": "enf test", "seed": 0}))
        (self.run_dir / "test.json").write_text(json.dumps({"nll": 8.0, "nll_sem": 0.1, "n": 40, "seconds": 1.0}))


def watcher(uri: str, run_dir: Path, *extra: str) -> track_mlflow.LiveWatcher:
    args = track_mlflow.build_parser().parse_args(
        ["live", "--uri", uri, "--experiment", "enf-test", "--run-dir", str(run_dir), "--name", "unit run",
         "--job-key", KEY, "--tag", "dataset=dw4", "--lock-timeout", "20", *extra])
    return track_mlflow.LiveWatcher(args)


def track(uri: str, run_dir: Path, out: Path, *extra: str) -> dict:
    """The track step, as the workflow's track rule calls it (in this process: faster than a new one)."""
    assert track_mlflow.main(["train", "--uri", uri, "--experiment", "enf-test", "--run-dir", str(run_dir),
                              "--name", "unit run", "--job-key", KEY, "--evaluation", str(run_dir / "test.json"),
                              "--tag", "model=enf", "--param", "budget_note=unit", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_a_live_run_grows_while_training_and_the_track_step_completes_it(uri: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    training = FakeTraining(run_dir)
    live = watcher(uri, run_dir)
    live.poll()  # at the job's start, before any iteration: the run is there already
    [run] = job_runs(uri)
    assert run.info.status == "RUNNING" and run.info.run_name == "unit run"
    assert run.data.tags["history_origin"] == "pending" and run.data.tags["dataset"] == "dw4"
    training.start()
    training.epoch(0)
    live.poll()
    assert [s for s, _ in points(uri, run.info.run_id, "train_loss")] == [1, 2, 3]
    assert points(uri, run.info.run_id, "val_nll") == [(3, 10.0)]
    assert client(uri).get_run(run.info.run_id).data.params["train.lr"] == "0.0005"  # the config, live too
    training.epoch(1)
    live.poll()
    assert [s for s, _ in points(uri, run.info.run_id, "train_loss")] == [1, 2, 3, 4, 5, 6]
    first_time = read_steps(run_dir / "history_steps.csv")[0]["time"]
    first_point = min(client(uri).get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    assert first_point.timestamp == int(first_time * 1000)  # the training's own time
    training.finish()
    live.finish()
    assert client(uri).get_run(run.info.run_id).info.status == "FINISHED"

    out = track(uri, run_dir, tmp_path / "mlflow.json")
    assert out["run_id"] == run.info.run_id and out["completed_live_run"] and not out["superseded"]
    [done] = job_runs(uri)
    assert done.info.status == "FINISHED" and done.info.start_time == run.info.start_time
    assert done.data.params["workflow.budget_note"] == "unit" and done.data.metrics["best_val_nll"] == 8.0
    assert done.data.tags["model"] == "enf" and done.data.tags["rule"] == "train"
    assert [s for s, _ in points(uri, run.info.run_id, "train_loss")] == [1, 2, 3, 4, 5, 6]  # each step once
    assert [s for s, _ in points(uri, run.info.run_id, "val_nll")] == [3, 6]
    artifacts = {a.path for a in client(uri).list_artifacts(run.info.run_id)}
    assert {"history_steps.csv", "metrics.json", "config.yaml"} <= artifacts
    [evaluation] = job_runs(uri, f"{KEY}#eval0")
    assert evaluation.data.tags["mlflow.parentRunId"] == run.info.run_id

    again = track(uri, run_dir, tmp_path / "again.json")  # the track step rerun: the same run, completed again
    assert again["run_id"] == run.info.run_id and len(job_runs(uri)) == 1
    assert len(points(uri, run.info.run_id, "train_loss")) == 6


def test_killed_and_resumed_the_run_continues_without_a_point_twice(uri: str, tmp_path: Path) -> None:
    """The explicit rule: the file's rows after the saved state are replaced by the resumed training's; in MLflow a
    (metric, step) is logged once, the first time: the redone steps keep the points of the killed attempt."""
    run_dir = tmp_path / "run"
    assert prepare_run_dir.prepare(run_dir, "key") == "fresh"
    first = FakeTraining(run_dir)
    live = watcher(uri, run_dir)
    first.start()
    first.epoch(0)
    (run_dir / "state").mkdir()
    (run_dir / "state" / "last.pt").write_text("saved after epoch 0, at step 3")
    first.epoch(1)  # steps 4-6 and their validation: redone after the kill
    with open(run_dir / "history_steps.csv", "a") as handle:
        handle.write("7,2,17")  # and step 7, killed while its line was written
    live.poll()
    live.stop_reason = "signal"
    live.finish()
    [run] = job_runs(uri)
    assert run.info.status == "KILLED"
    assert points(uri, run.info.run_id, "train_loss")[-1][0] == 6  # half a line is not a row

    assert prepare_run_dir.prepare(run_dir, "key") == "resume"  # the job again, as the train rule runs it
    live = watcher(uri, run_dir)
    live.poll()
    assert client(uri).get_run(run.info.run_id).info.status == "RUNNING"
    resumed = FakeTraining(run_dir, loss0=20.0)  # other values, to tell the attempts apart
    resumed.start(resume_step=3)
    assert [r["step"] for r in read_steps(run_dir / "history_steps.csv")] == [1, 2, 3, 3]
    for epoch in (1, 2):
        resumed.epoch(epoch)
        live.poll()
    resumed.finish()
    live.finish()
    assert [r.info.run_id for r in job_runs(uri)] == [run.info.run_id]
    loss = points(uri, run.info.run_id, "train_loss")
    assert [s for s, _ in loss] == list(range(1, 10))
    assert [v for _, v in loss][3:6] == pytest.approx([9.6, 9.5, 9.4])  # steps 4-6: the first attempt's points
    assert [v for _, v in loss][6:] == pytest.approx([19.3, 19.2, 19.1])  # steps 7-9: the resumed training's
    assert [s for s, _ in points(uri, run.info.run_id, "val_nll")] == [3, 6, 9]
    rows = read_steps(run_dir / "history_steps.csv")  # the file: the resumed training's rows replace the tail
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 10))
    assert [r["train_loss"] for r in rows if "train_loss" in r][3:6] == pytest.approx([19.6, 19.5, 19.4])

    out = track(uri, run_dir, tmp_path / "mlflow.json")
    assert out["run_id"] == run.info.run_id and out["completed_live_run"]
    assert points(uri, run.info.run_id, "train_loss") == loss
    assert client(uri).get_run(run.info.run_id).info.status == "FINISHED"


def test_a_training_started_afresh_gets_a_new_run_and_the_old_one_goes(uri: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    old = FakeTraining(run_dir)
    live = watcher(uri, run_dir)
    old.start()
    old.epoch(0)
    old.finish()
    live.poll()
    live.finish()
    track(uri, run_dir, tmp_path / "old.json")
    [old_run] = job_runs(uri)
    (run_dir / "state").mkdir()
    (run_dir / "state" / "last.pt").write_text("x")
    assert prepare_run_dir.prepare(run_dir, "other settings") == "stale"  # new settings: the state goes...
    assert not (run_dir / "history_steps.csv").exists()  # ...and the history with it
    (run_dir / "metrics.json").unlink()  # Snakemake removes a job's outputs before it runs it again

    live = watcher(uri, run_dir)
    live.poll()
    [new_run] = job_runs(uri)
    assert new_run.info.run_id != old_run.info.run_id and new_run.data.tags["history_origin"] == "pending"
    assert client(uri).get_run(old_run.info.run_id).info.lifecycle_stage == "deleted"
    assert not job_runs(uri, f"{KEY}#eval0") and job_runs(uri, f"{KEY}#eval0", deleted=True)  # its evaluation too
    new = FakeTraining(run_dir)
    new.start()
    new.epoch(0)
    live.poll()
    [run] = job_runs(uri)
    assert run.info.run_id == new_run.info.run_id
    assert run.data.tags["history_origin"] == str(read_steps(run_dir / "history_steps.csv")[0]["time"])
    assert [s for s, _ in points(uri, run.info.run_id, "train_loss")] == [1, 2, 3]


def test_without_a_watcher_the_track_step_logs_every_iteration(uri: str, tmp_path: Path, monkeypatch) -> None:
    """mlflow.live: false, or a store the job could not reach: the track step does everything, as before."""
    monkeypatch.setattr(track_mlflow.StepReader, "chunk", 300)  # a long history, read a piece at a time
    run_dir = tmp_path / "run"
    training = FakeTraining(run_dir)
    training.start()
    training.epoch(0)
    training.epoch(1)
    training.finish()
    out = track(uri, run_dir, tmp_path / "mlflow.json")
    assert not out["completed_live_run"]
    [run] = job_runs(uri)
    assert run.info.status == "FINISHED" and run.data.tags["history_origin"] != "pending"
    assert [s for s, _ in points(uri, run.info.run_id, "train_loss")] == [1, 2, 3, 4, 5, 6]
    assert run.info.start_time <= int(read_steps(run_dir / "history_steps.csv")[0]["time"] * 1000)


def test_long_trainings_are_thinned_and_keep_their_last_iteration() -> None:
    kept = [s for s in range(1, 250_001) if track_mlflow.kept_step(s)]
    assert kept[:10_000] == list(range(1, 10_001))
    assert kept[10_000:10_003] == [10_010, 10_020, 10_030] and 100_100 in kept and 100_010 not in kept
    assert len(kept) == 10_000 + 9_000 + 1_500

    class Recorder:
        def __init__(self) -> None:
            self.batches: list[tuple[list, list]] = []

        def log_batch(self, run_id: str, metrics: list = (), tags: list = (), **kwargs: Any) -> None:
            self.batches.append((list(metrics), list(tags)))

    rows = [{"step": str(s), "time": "1.0", "train_loss": "1.5"} for s in range(10_001, 10_016)]
    recorder = Recorder()
    logged, count = track_mlflow.sync_steps(recorder, "run", rows, None, last_train=rows[-1])  # type: ignore[arg-type]
    assert logged == (10_010, 0) and count == 2
    assert sorted(m.step for b in recorder.batches for m in b[0]) == [10_010, 10_015]
    assert recorder.batches[-1][1][0].value == "10010:train"


def test_the_reader_follows_appends_and_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "history_steps.csv"
    reader = track_mlflow.StepReader(path)
    assert reader.read() == (False, [])
    history = StepHistory(path)
    history.start(None)
    history.append({"step": 1, "epoch": 0, "time": 5.0, "train_loss": 1.0})
    with open(path, "a") as handle:
        handle.write("2,0,6.0,0.9")  # a line being written
    rewritten, rows = reader.read()
    assert rewritten and [r["step"] for r in rows] == ["1"] and reader.origin == "5.0"
    with open(path, "a") as handle:
        handle.write(",,,,,,,,,,,,\n")
    assert [r["step"] for r in reader.read()[1]] == ["2"]
    history.start(1)  # a resume: the file is replaced
    rewritten, rows = reader.read()
    assert rewritten and [r["step"] for r in rows] == ["1"] and reader.origin == "5.0"
    for step in range(2, 40):
        history.append({"step": step, "epoch": 0, "time": 5.0 + step, "train_loss": 1.0})
    reader.chunk = 100  # a few rows a read
    pieces = [reader.read()[1]]
    while reader.more:
        pieces.append(reader.read()[1])
    assert len(pieces) > 5 and [r["step"] for piece in pieces for r in piece] == [str(s) for s in range(2, 40)]
    assert reader.last_train["step"] == "39"


def test_experiments_are_typed_as_model_training(uri: str, tmp_path: Path) -> None:
    """MLflow 3 opens an experiment on its runs table, not the GenAI overview, when it has this tag."""
    c = client(uri)
    assert c.get_experiment_by_name("enf-test").tags["mlflow.experimentKind"] == "custom_model_development"
    old = c.create_experiment("made-before")  # an experiment an earlier version made, untyped: typed on next use
    assert track_mlflow.main(["init", "--uri", uri, "--experiment", "made-before", "--out",
                              str(tmp_path / "init.json")]) == 0
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    c.set_experiment_tag(old, "mlflow.experimentKind", "genai_development")  # someone's own choice is kept
    assert track_mlflow.main(["init", "--uri", uri, "--experiment", "made-before", "--out",
                              str(tmp_path / "init.json")]) == 0
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "genai_development"


# -- as the train rule runs it: in the background of the job's shell -------------------------------------------

FAKE_TRAINER = """
import json, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_mlflow_live import FakeTraining
t = FakeTraining(Path({run_dir!r}), steps_per_epoch=2)
t.start()
for epoch in range({epochs}):
    t.epoch(epoch)
    time.sleep({pause})
t.finish()
"""


def rule_shell(uri: str, run_dir: Path, log: Path, epochs: int, pause: float, *extra: str) -> list[str]:
    """The train rule's shell command, with a fake `enf train`."""
    import shlex

    trainer = FAKE_TRAINER.format(tests=str(Path(__file__).parent), run_dir=str(run_dir), epochs=epochs, pause=pause)
    live = [sys.executable, str(TRACK), "live", "--uri", uri, "--experiment", "enf-test", "--run-dir", str(run_dir),
            "--name", "unit run", "--job-key", KEY, *extra]
    command = (f"( {{ {shlex.join(live)} & }} && {shlex.join([sys.executable, '-c', trainer])} ) "
               f"> {shlex.quote(str(log))} 2>&1")
    return ["bash", "-c", f"set -euo pipefail; {command}"]


def wait_for_watcher(log: Path, limit: float = 60) -> str:
    """The job's log once the watcher has stopped (it outlives the job's shell by a moment)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        text = log.read_text()
        if "[track_mlflow live] stopped" in text:
            return text
        time.sleep(0.3)
    raise AssertionError(f"the watcher did not stop:\n{log.read_text()[-3000:]}")


def test_beside_a_job_the_run_grows_and_ends_with_it(uri: str, tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    job = subprocess.Popen(rule_shell(uri, run_dir, log, 12, 1.0, "--interval", "1"), env=ENV)
    seen = []
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline:
        runs = job_runs(uri)
        if runs:
            seen.append(len(points(uri, runs[0].info.run_id, "train_loss")))
        time.sleep(1.0)
    assert job.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert len(set(seen)) >= 3 and seen == sorted(seen), seen  # the curve grew while the job ran
    text = wait_for_watcher(log)
    [run] = job_runs(uri)
    assert run.info.status == "FINISHED", text[-3000:]
    assert [s for s, _ in points(uri, run.info.run_id, "train_loss")] == list(range(1, 25))
    assert "[track_mlflow live] created run" in text and "[track_mlflow live] warning" not in text, text[-3000:]


@pytest.mark.parametrize("store", ["damaged", "unreachable"])
def test_an_unusable_store_never_fails_the_job(tmp_path: Path, store: str) -> None:
    """The watcher warns once in the job's log, keeps out of the job's way and exits 0 itself."""
    if store == "damaged":
        db = tmp_path / "mlflow.db"
        db.write_bytes(os.urandom(20000))
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        db = blocker / "mlflow.db"
    log = tmp_path / "train.log"
    res = subprocess.run(rule_shell(f"sqlite:///{db}", tmp_path / "run", log, 2, 1.0, "--interval", "1"),
                         env=ENV, timeout=120)
    assert res.returncode == 0, log.read_text()[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    text = wait_for_watcher(log)
    warnings = [line for line in text.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(db) in warnings[0] and "Traceback" not in text, text[-3000:]
    if store == "damaged":
        assert db.stat().st_size == 20000  # left as it was

    parent = subprocess.Popen(["sleep", "2"])  # the watcher alone: its own exit status
    alone = subprocess.run([sys.executable, str(TRACK), "live", "--uri", f"sqlite:///{db}", "--experiment", "enf-test",
                            "--run-dir", str(tmp_path / "run"), "--name", "n", "--job-key", KEY, "--interval", "1",
                            "--parent-pid", str(parent.pid)], capture_output=True, text=True, timeout=60, env=ENV)
    parent.wait()
    assert alone.returncode == 0 and "warning" in alone.stderr and "Traceback" not in alone.stderr, alone.stderr
