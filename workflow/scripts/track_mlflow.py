"""Log workflow jobs to MLflow: one run per training job, live while it trains, one nested run per evaluation.

The `enf` library never imports mlflow; this script reads what a job leaves on disk (run directory, evaluation
JSON, sample analysis) and logs it. Sub-commands:

  init   create the tracking store (sqlite schema) and the experiment once, before any job logs to it
  live   run beside `enf train` (the train rule starts it in the background): follow the run directory's
         history_steps.csv and keep one MLflow run of the job (tag job_key) in step with it every --interval
         seconds (status RUNNING; step = global iteration; the training's own timestamps); stop when the
         job's shell ends or on SIGTERM, marking the run FINISHED (metrics.json written), else FAILED or KILLED.
         It never fails the job: every error is a warning in the job's log and the track step does the rest.
  train  log a training run directory (params = flattened resolved config, per-iteration metrics from
         history_steps.csv with step = iteration, or per-epoch ones from history.csv with step = epoch for run
         directories without it, final metrics from metrics.json, artifacts, tags) into the run `live` made
         for the same training, or a new one, and mark it FINISHED; nested under it, one run per
         `--evaluation` JSON (with its `--analysis` JSON and `--samples`)
  runs   print the runs of an experiment as JSON (used by tests and for quick checks)

One run per training: a run holds the tag history_origin, the time of the first row of history_steps.csv, which
tells one training (with its resumptions) from another of the same job. `live` and `train` continue the run of
the job_key whose history_origin is the file's, else create one and soft-delete the job's other runs.

Each metric point once: the run's tag history_logged_through records the last history row logged (its step, and
whether it is the step's training or its validation row); a later row is logged, an earlier or equal one never
again. A resumed training rewrites history_steps.csv without the rows after its saved state and redoes those
iterations: the redone rows a watcher had already logged are not logged twice (the points logged are those of the
first attempt, equal to the redone ones when the resume is exact, as it is on the CPU). Rows are logged with their
own timestamps, so that logging a row again is a no-op for the store. Beyond FULL_RESOLUTION_STEPS iterations the
training rows are thinned (every 10th step up to 10 x that, every 100th beyond, ...; the last always), to keep
long trainings' stores small; validation rows are all logged. The file itself keeps every row.

Concurrency: with a sqlite store, every write happens under an exclusive lock on `<db>.lock` (fcntl), and
each client call is retried with exponential backoff when sqlite reports "database is locked", so many
jobs finishing at once (`--cores all`) neither lose a run nor crash. Re-logging the same job (same
`--job-key`) soft-deletes the runs it supersedes, so the dashboard shows one live run per job.

Safety: a new sqlite store is created under the lock (even with --no-lock) in a temporary file that is renamed
into place only when its schema is complete, so that concurrent or killed creators never leave a half-made store;
an existing store must pass sqlite's integrity check and hold MLflow's tables before anything is written to it.
Every store error ends the script with one line naming the store (exit status 2), except in `live`, which exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the enf of this checkout, installed or not
from enf.io import as_number, pid_alive  # noqa: E402  (light: no torch)

LOCK_ERRORS = ("database is locked", "database table is locked", "database is busy", "unable to open database")
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000

#: The per-iteration history `enf train` appends to as it trains (enf/training/history.py) and the metrics logged
#: from it.
STEP_FILE = "history_steps.csv"
TRAIN_METRICS = ("train_loss", "train_nll", "train_reg", "train_transport_cost", "train_pairing_seconds", "nfe",
                 "grad_norm", "lr", "seconds")
VALID_METRICS = ("val_nll", "val_nll_sem", "val_nfe", "val_seconds", "epoch")
FULL_RESOLUTION_STEPS = 10_000
ORIGIN_TAG = "history_origin"
LOGGED_TAG = "history_logged_through"
PENDING = "pending"  # the history_origin of a run whose training has not finished its first iteration yet
#: MLflow 3 opens an experiment on its runs table, not the GenAI overview, when it is typed as model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


# -- store access -----------------------------------------------------------------------------------------

class StoreError(Exception):
    """A tracking store that cannot be used; the message names it and says what to do."""


#: Tables every MLflow tracking store has (a store without them is foreign or half-made).
STORE_TABLES = ("alembic_version", "experiments", "runs", "metrics", "params", "tags")


def normalise_uri(uri: str) -> str:
    """Make a relative sqlite path absolute (jobs may run in another working directory)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, or None for other stores (e.g. an http tracking server)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = 600.0, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive fcntl lock beside a sqlite store (no-op for server URIs or when disabled)."""
    db = sqlite_path(uri)
    if db is None or not enabled:
        yield
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        handle = open(f"{db}.lock", "a+")
    except OSError as err:
        raise StoreError(f"{db}: cannot create its lock file ({err.strerror or err})") from None
    with handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"{db}: could not lock {db}.lock within {timeout:.0f} s") from None
                time.sleep(0.05 + 0.1 * random.random())
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_lock_error(err: BaseException) -> bool:
    """True for the transient errors of a busy sqlite database."""
    text = f"{type(err).__name__}: {err}".lower()
    return any(marker in text for marker in LOCK_ERRORS)


def with_retry(fn: Callable[..., Any], *args: Any, attempts: int = 10, base: float = 0.2, **kwargs: Any) -> Any:
    """Call fn, retrying with exponential backoff (plus jitter) while the store reports a lock."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # sqlalchemy / sqlite3 / MlflowException all carry the message
            if attempt == attempts - 1 or not is_lock_error(err):
                raise
            delay = base * 2**attempt * (1 + random.random())
            print(f"[track_mlflow] store busy ({err.__class__.__name__}); retry {attempt + 1} in {delay:.1f} s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


class RetryingClient:
    """An MlflowClient whose every call is retried on sqlite lock errors; other failures become a StoreError."""

    def __init__(self, uri: str, attempts: int = 10) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.attempts = attempts
        self.client = self._call("open", MlflowClient, tracking_uri=uri)

    def _call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return with_retry(fn, *args, attempts=self.attempts, **kwargs)
        except Exception as err:  # mlflow, sqlalchemy and sqlite3 all raise their own types
            raise StoreError(f"{self.uri}: {name} failed ({type(err).__name__}: {first_line(err)})") from None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self._call(name, method, *args, **kwargs)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error message (sqlalchemy appends SQL and links)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:500] if lines else type(err).__name__


def prepare_store(uri: str, artifact_root: str | None = None, create: bool = True, timeout: float = 600.0) -> bool:
    """Make a sqlite store usable: create it if missing (safely), check an existing one; False if absent.

    Runs under the store's lock whatever --no-lock says: creating the schema is never left to two processes.
    """
    db = sqlite_path(uri)
    if db is None:
        return True
    with store_lock(uri, timeout=timeout):
        if not db.exists() or db.stat().st_size == 0:
            if not create:
                return False
            create_store(db, artifact_root)
        check_store(db)
    return True


def create_store(db: Path, artifact_root: str | None) -> None:
    """Create the MLflow schema in a temporary file beside `db`, then rename it into place (caller holds the lock)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for leftover in db.parent.glob(f".{db.name}.*.creating"):  # a creator killed before its rename
        leftover.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
    root = Path(artifact_root).resolve().as_uri() if artifact_root else Path("mlruns").resolve().as_uri()
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", root)
        store.engine.dispose()
        os.replace(tmp, db)
    except Exception as err:  # mlflow, sqlalchemy or the file system
        raise StoreError(f"{db}: could not create the MLflow store ({type(err).__name__}: {first_line(err)})") from None
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}-journal").unlink(missing_ok=True)


def check_store(db: Path) -> None:
    """Refuse a file that is not an intact MLflow sqlite store, before anything is written to it."""
    advice = "move it aside (or restore a backup) and rerun; a new store is created in its place"
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=60)
        try:
            rows = [str(row[0]) for row in con.execute("PRAGMA quick_check(3)")]
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as err:
        raise StoreError(f"{db}: not a usable sqlite database ({first_line(err)}); {advice}") from None
    if rows != ["ok"]:
        problems = [line.strip() for row in rows for line in row.splitlines() if line.strip() and "***" not in line]
        raise StoreError(f"{db}: damaged (sqlite quick_check: {'; '.join(problems)[:400]}); {advice}")
    missing = [name for name in STORE_TABLES if name not in tables]
    if missing:
        raise StoreError(f"{db}: not a complete MLflow store (no table {', '.join(missing)}); {advice}")


def ensure_experiment(client: RetryingClient, name: str, artifact_root: str | None) -> str:
    """Return the id of experiment `name`, creating it (with its artifact location) if needed; a model-training
    experiment (EXPERIMENT_KIND_TAG), unless someone typed it otherwise."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id
    location = None
    if artifact_root:
        root = Path(artifact_root).resolve() / name
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})


# -- reading a job's files ----------------------------------------------------------------------------------

def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists and scalars become leaves."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def read_history(path: Path) -> list[dict[str, str]]:
    """Rows of history.csv (empty list when the file is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class StepReader:
    """Follows a history_steps.csv: `read` returns the rows added since the last call, or all rows again after the
    file was rewritten (a training starting or resuming replaces it); a line without its newline waits. A read
    returns at most about `chunk` bytes of rows (`more` then says that there are more), so that a long training's
    file is never held in memory whole."""

    chunk = 8 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reset()

    def reset(self) -> None:
        """Forget what was read: the next `read` returns every row."""
        self.inode: int | None = None
        self.offset = 0
        self.header: list[str] | None = None
        self.origin: str | None = None  # the `time` of the file's first row: which training wrote it
        self.last_train: dict[str, str] | None = None
        self.more = False

    def read(self) -> tuple[bool, list[dict[str, str]]]:
        """(whether the file was replaced since the last read, the new rows)."""
        try:
            st = self.path.stat()
        except OSError:
            rewritten = self.inode is not None
            self.reset()
            return rewritten, []
        rewritten = st.st_ino != self.inode or st.st_size < self.offset
        if rewritten:
            self.reset()
            self.inode = st.st_ino
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.chunk)
        except OSError:
            self.more = False
            return rewritten, []
        self.more = len(data) == self.chunk
        data = data[: data.rfind(b"\n") + 1]
        self.offset += len(data)
        lines = data.decode("utf-8", errors="replace").splitlines()
        if self.header is None and lines:
            self.header = next(csv.reader([lines[0]]))
            lines = lines[1:]
        rows = [dict(zip(self.header or [], values)) for values in csv.reader(lines) if values]
        rows = [row for row in rows if row_position(row) is not None]
        if rows and self.origin is None:
            self.origin = rows[0].get("time") or None
        for row in rows:
            if row_position(row)[1] == 0:
                self.last_train = row
        return rewritten, rows


def history_start(path: Path) -> float | None:
    """When the training of a history_steps.csv began (unix seconds): its first row's time less that iteration's
    seconds; None without rows. Reads the first row only."""
    try:
        with open(path, newline="") as handle:
            row = next(csv.DictReader(handle), None)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    when = as_number(row.get("time")) if row else None
    return None if when is None else when - (as_number(row.get("seconds")) or 0.0)


def row_position(row: dict[str, str]) -> tuple[int, int] | None:
    """Where a history row stands: (step, 0) for an iteration, (step, 1) for the validation after it."""
    step = as_number(row.get("step"))
    if step is None or not math.isfinite(step):
        return None
    return int(step), 1 if as_number(row.get("val_nll")) is not None else 0


def kept_step(step: int) -> bool:
    """Whether iteration `step` is logged: all up to FULL_RESOLUTION_STEPS, then every 10th up to ten times that,
    every 100th up to a hundred times, and so on."""
    stride = 1
    limit = FULL_RESOLUTION_STEPS
    while step > limit:
        stride *= 10
        limit *= 10
    return step % stride == 0


def row_metrics(row: dict[str, str]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp in ms, step) of one history row's finite numbers."""
    position = row_position(row)
    when = as_number(row.get("time"))
    if position is None or when is None:
        return []
    keys = VALID_METRICS if position[1] else TRAIN_METRICS
    out = []
    for key in keys:
        value = as_number(row.get(key))
        if value is not None and math.isfinite(value):
            out.append((key, value, int(when * 1000), position[0]))
    return out


def format_position(position: tuple[int, int]) -> str:
    return f"{position[0]}:{'validation' if position[1] else 'train'}"


def parse_position(text: str | None) -> tuple[int, int] | None:
    """The inverse of `format_position` (None for a missing or unreadable tag)."""
    step, _, kind = (text or "").partition(":")
    return (int(step), 1 if kind == "validation" else 0) if step.isdigit() else None


def sync_steps(client: RetryingClient, run_id: str, rows: list[dict[str, str]], logged: tuple[int, int] | None,
               last_train: dict[str, str] | None = None) -> tuple[tuple[int, int] | None, int]:
    """Log the rows after `logged` (thinned: `kept_step`) into the run, and `last_train`, the final iteration of a
    finished training, if thinning skipped it; return the new last-logged position and the number of points.

    Each batch carries the run's LOGGED_TAG, so that a later process continues after it.
    """
    from mlflow.entities import Metric, RunTag

    batch: list[Metric] = []
    last: tuple[int, int] | None = None
    count = 0

    def flush() -> None:
        nonlocal batch, count
        if batch:
            tags = [RunTag(LOGGED_TAG, format_position(last))] if last is not None else []
            client.log_batch(run_id, metrics=batch, tags=tags, synchronous=True)
            count += len(batch)
            batch = []

    for row in rows:
        position = row_position(row)
        if position is None or (logged is not None and position <= logged):
            continue
        if position[1] == 0 and not kept_step(position[0]):
            continue
        metrics = row_metrics(row)
        if len(batch) + len(metrics) > MAX_METRICS_PER_BATCH:
            flush()
        batch += [Metric(*m) for m in metrics]
        last = position
    if last_train is not None and row_position(last_train) is not None:
        step = row_position(last_train)[0]
        if not kept_step(step):  # never logged by the rule above; logging it again is a no-op (same timestamp)
            if len(batch) + len(TRAIN_METRICS) > MAX_METRICS_PER_BATCH:
                flush()
            batch += [Metric(*m) for m in row_metrics(last_train)]
    flush()
    return (last if last is not None else logged), count


def sync_file(client: RetryingClient, run_id: str, steps: StepReader, rows: list[dict[str, str]],
              logged: tuple[int, int] | None, final: bool) -> tuple[tuple[int, int] | None, int]:
    """`sync_steps` for `rows`, just read by `steps`, and for the rest of its file, read a chunk at a time; with
    `final` (the training has finished) the file's last iteration is logged whatever the thinning."""
    count = 0
    while True:
        last = steps.last_train if final and not steps.more else None
        logged, n = sync_steps(client, run_id, rows, logged, last)
        count += n
        if not steps.more:
            return logged, count
        rows = steps.read()[1]


def parse_pairs(items: list[str]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"track_mlflow: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


# -- logging ------------------------------------------------------------------------------------------------

def params_list(params: dict[str, Any]) -> list[Any]:
    """MLflow Params, values as the strings the store keeps."""
    from mlflow.entities import Param

    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]


def log_params(client: RetryingClient, run_id: str, params: dict[str, Any]) -> None:
    plist = params_list(params)
    for i in range(0, len(plist), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=plist[i:i + MAX_PARAMS_PER_BATCH], synchronous=True)


def log_run(client: RetryingClient, experiment_id: str, name: str, *, params: dict[str, Any],
            metrics: dict[str, float], series: list[tuple[str, float, int, int]], tags: dict[str, str],
            artifacts: list[tuple[Path, str | None]], start_ms: int, end_ms: int,
            parent_run_id: str | None = None, run_id: str | None = None,
            steps: StepReader | None = None, step_rows: list[dict[str, str]] | None = None) -> str:
    """Log one finished run with all its data, into `run_id` (the live run of the same training) or a new run;
    return its id. `step_rows` (read by `steps`) are logged after the run's LOGGED_TAG (`sync_steps`)."""
    from mlflow.entities import Metric, RunTag

    tags = {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    logged = None
    if run_id is None:
        run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
        run_id = run.info.run_id
    else:
        logged = parse_position(client.get_run(run_id).data.tags.get(LOGGED_TAG))
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in sorted(tags.items())], synchronous=True)
    try:
        log_params(client, run_id, params)
        mlist = [Metric(k, v, end_ms, 0) for k, v in sorted(metrics.items())]
        mlist += [Metric(k, v, ts, step) for k, v, ts, step in series]
        for i in range(0, len(mlist), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=mlist[i:i + MAX_METRICS_PER_BATCH], synchronous=True)
        if steps is not None and step_rows:
            sync_file(client, run_id, steps, step_rows, logged, final=True)
        for path, artifact_path in artifacts:
            if path.is_file():
                client.log_artifact(run_id, str(path), artifact_path)
        client.set_terminated(run_id, "FINISHED", end_time=end_ms)
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def job_runs(client: RetryingClient, experiment_id: str, job_key: str) -> list[Any]:
    """The live (not deleted) runs tagged with `job_key`."""
    return client.search_runs([experiment_id], filter_string=f"tags.job_key = '{job_key}'", max_results=1000)


def training_run(client: RetryingClient, experiment_id: str, job_key: str, origin: str | None) -> Any | None:
    """The live run of the training whose history starts at `origin` (the latest, should there be several);
    a history without rows (origin None) matches a run that has none either."""
    wanted = PENDING if origin is None else origin
    runs = [r for r in job_runs(client, experiment_id, job_key) if r.data.tags.get(ORIGIN_TAG) == wanted]
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


def supersede(client: RetryingClient, experiment_id: str, job_key: str, keep: set[str],
              nested: bool = False) -> list[str]:
    """Soft-delete earlier runs logged for the same job (restorable in the UI or with `mlflow gc`), with `nested`
    the runs nested under them too."""
    gone = [r.info.run_id for r in job_runs(client, experiment_id, job_key) if r.info.run_id not in keep]
    if nested:
        for parent in list(gone):
            children = client.search_runs([experiment_id], max_results=1000,
                                          filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
            gone += [r.info.run_id for r in children if r.info.run_id not in keep]
    for run_id in gone:
        client.set_tag(run_id, "superseded", "true")
        client.delete_run(run_id)
    return gone


def training_payload(run_dir: Path) -> dict[str, Any]:
    """Params, final metrics, tags and times of an `enf train` run directory, and its per-epoch series from
    history.csv when it has no per-iteration history (STEP_FILE, logged by `sync_steps` instead)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    metrics_path = run_dir / "metrics.json"
    final = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    end_s = metrics_path.stat().st_mtime if metrics_path.is_file() else time.time()
    seconds = as_number(final.get("train_seconds")) or 0.0
    start_s = end_s - seconds
    metrics = {k: v for k, v in ((k, as_number(v)) for k, v in final.items() if k != "seed")
               if v is not None and math.isfinite(v)}
    series = []
    elapsed = 0.0
    began = history_start(run_dir / STEP_FILE)
    if began is not None:
        start_s = min(start_s, began)
    for row in [] if (run_dir / STEP_FILE).is_file() else read_history(run_dir / "history.csv"):
        step = int(float(row["epoch"]))
        elapsed += (as_number(row.get("seconds")) or 0.0) + (as_number(row.get("val_seconds")) or 0.0)
        ts = int((start_s + elapsed) * 1000)
        for key, raw in row.items():
            value = as_number(raw)
            if key != "epoch" and value is not None and math.isfinite(value):
                series.append((key, value, ts, step))
    tags = {k: str(v) for k, v in final.items() if as_number(v) is None and v is not None}
    params = flatten(config)
    imported = run_dir / "import.json"  # a run directory made by `enf import-en-flows` (no training)
    if imported.is_file():
        info = json.loads(imported.read_text())
        params.update({f"import.{k}": v for k, v in flatten(info).items() if v is not None})
        if info.get("code_version"):
            tags.setdefault("code_version", str(info["code_version"]))
    return {"params": params, "metrics": metrics, "series": series, "tags": tags,
            "start_ms": int(start_s * 1000), "end_ms": int(end_s * 1000)}


def evaluation_payload(path: Path, analysis: Path | None) -> dict[str, Any]:
    """Params, metrics and tags of an `enf evaluate` JSON (plus an optional `enf analyze` JSON)."""
    result = json.loads(path.read_text())
    end_s = path.stat().st_mtime
    seconds = as_number(result.get("seconds")) or 0.0
    metrics, params = {}, {}
    for key, value in result.items():
        number = as_number(value) if not isinstance(value, str) else None
        if number is not None and math.isfinite(number) and key not in ("seed", "probes"):
            metrics[key] = number
        elif not isinstance(value, (dict, list)):
            params[key] = value
    if analysis is not None and analysis.is_file():
        for key, value in json.loads(analysis.read_text()).items():
            number = as_number(value) if not isinstance(value, str) else None
            if number is not None and math.isfinite(number):
                metrics[f"samples.{key}"] = number
            elif isinstance(value, str):
                params[f"samples.{key}"] = value
    return {"params": params, "metrics": metrics, "series": [], "tags": {},
            "start_ms": int((end_s - seconds) * 1000), "end_ms": int(end_s * 1000)}


# -- commands -----------------------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> None:
    """Create the store schema and the experiment; write a marker JSON."""
    uri = normalise_uri(args.uri)
    prepare_store(uri, args.artifact_root)
    with store_lock(uri, enabled=not args.no_lock):
        client = RetryingClient(uri, args.attempts)
        experiment_id = ensure_experiment(client, args.experiment, args.artifact_root)
        for key, value in parse_pairs(args.tag).items():
            client.set_experiment_tag(experiment_id, key, value)
    write_json(args.out, {"tracking_uri": uri, "experiment": args.experiment, "experiment_id": experiment_id})


def cmd_train(args: argparse.Namespace) -> None:
    """Log a training run and its evaluations."""
    uri = normalise_uri(args.uri)
    run_dir = Path(args.run_dir)
    tags = parse_pairs(args.tag)
    tags.setdefault("job_key", args.job_key)
    payload = training_payload(run_dir)
    artifacts = [(run_dir / name, None) for name in
                 ("config.yaml", "metrics.json", "history.csv", STEP_FILE, "training_curves.png", "import.json")]
    artifacts += [(Path(p), "logs") for p in args.log]
    artifacts += [(Path(p), "extra") for p in args.artifact]
    if args.checkpoint:
        artifacts.append((run_dir / "checkpoint.pt", "checkpoint"))
    params = {**payload["params"], **{f"workflow.{k}": v for k, v in parse_pairs(args.param).items()}}
    if len(args.analysis) not in (0, len(args.evaluation)):
        raise SystemExit("track_mlflow: give one --analysis per --evaluation, or none")
    steps = StepReader(run_dir / STEP_FILE)
    step_rows = steps.read()[1]
    run_tags = {**payload["tags"], **tags, "rule": args.rule}
    if steps.path.is_file():
        run_tags[ORIGIN_TAG] = steps.origin or PENDING
    prepare_store(uri, args.artifact_root)
    with store_lock(uri, enabled=not args.no_lock):
        client = RetryingClient(uri, args.attempts)
        experiment_id = ensure_experiment(client, args.experiment, args.artifact_root)
        live = training_run(client, experiment_id, args.job_key, steps.origin) if steps.path.is_file() else None
        if live is not None and param_conflicts(live.data.params, params):
            print(f"[track_mlflow] run {live.info.run_id} of this training has other values for params "
                  f"{', '.join(param_conflicts(live.data.params, params)[:5])}: logging a new run", flush=True)
            live = None
        run_id = log_run(client, experiment_id, args.name, params=params, metrics=payload["metrics"],
                         series=payload["series"], tags=run_tags, artifacts=artifacts,
                         start_ms=payload["start_ms"], end_ms=payload["end_ms"],
                         run_id=live.info.run_id if live is not None else None, steps=steps, step_rows=step_rows)
        eval_ids = []
        for i, path in enumerate(args.evaluation):
            analysis = Path(args.analysis[i]) if args.analysis else None
            ev = evaluation_payload(Path(path), analysis)
            ev_artifacts = [(Path(path), None)]
            if analysis is not None:
                ev_artifacts.append((analysis, None))
            if args.samples and i < len(args.samples):
                ev_artifacts.append((Path(args.samples[i]), "samples"))
            ev_tags = {**tags, "rule": args.eval_rule, "job_key": f"{args.job_key}#eval{i}",
                       "evaluated_run": run_id}
            eval_ids.append(log_run(client, experiment_id, f"{args.name} / {Path(path).stem}",
                                    params=ev["params"], metrics=ev["metrics"], series=[], tags=ev_tags,
                                    artifacts=ev_artifacts, start_ms=ev["start_ms"], end_ms=ev["end_ms"],
                                    parent_run_id=run_id))
        superseded = supersede(client, experiment_id, args.job_key, {run_id})
        for i in range(len(args.evaluation)):
            superseded += supersede(client, experiment_id, f"{args.job_key}#eval{i}", set(eval_ids))
    write_json(args.out, {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id,
                          "evaluation_run_ids": eval_ids, "superseded": superseded, "job_key": args.job_key,
                          "completed_live_run": live is not None})
    print(f"[track_mlflow] {'completed the live' if live is not None else 'logged'} run {run_id} ({args.name}) "
          f"with {len(eval_ids)} evaluation run(s); in the dashboard {dashboard_path(experiment_id, run_id)}")


def dashboard_path(experiment_id: str, run_id: str | None = None) -> str:
    """The part of a dashboard URL after the server's address that shows a run (or an experiment's runs table):
    MLflow 3 opens the GenAI pages unless the URL (or the browser's choice) says model training."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + "?workflowType=machine_learning"


def param_conflicts(existing: dict[str, str], params: dict[str, Any]) -> list[str]:
    """The params a run holds with other values than `params` (MLflow never changes a logged param)."""
    return [p.key for p in params_list(params) if p.key in existing and existing[p.key] != p.value]


class LiveWatcher:
    """The `live` command: keeps the MLflow run of one training job in step with its run directory while it trains.

    Rounds every `--interval` seconds (`poll`): read the rows added to history_steps.csv, make sure the job has
    its run (`choose_run`: continue the run of this training, or create one, RUNNING, and soft-delete the job's
    other runs), log the config as params once the training has written it, log the new rows. A failed round is
    a warning; the next is tried later (twice the wait, up to 5 minutes). `finish` logs what is left and sets the
    status. Writes run under the store's lock, taken for one round at a time.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.uri = normalise_uri(args.uri)
        self.run_dir = Path(args.run_dir)
        self.steps = StepReader(self.run_dir / STEP_FILE)
        self.metrics_before = file_identity(self.run_dir / "metrics.json")
        self.started_ms = int(time.time() * 1000)
        self.parent = args.parent_pid or os.getppid()
        self.tags = {**parse_pairs(args.tag), "job_key": args.job_key, "rule": "train"}
        self.client: RetryingClient | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.origin: str | None = None  # the ORIGIN_TAG of run_id
        self.logged: tuple[int, int] | None = None
        self.params_logged = False
        self.points = 0
        self.stop_reason: str | None = None
        self.last_warning = ""

    def say(self, message: str) -> None:
        print(f"[track_mlflow live] {message}", file=sys.stderr, flush=True)

    def poll(self, final: bool = False) -> None:
        """One round (see the class); with `final`, the last iteration is logged even where thinning skips it."""
        try:
            rows = self.steps.read()[1]
            if self.client is None:
                prepare_store(self.uri, self.args.artifact_root, timeout=self.args.lock_timeout)
            with store_lock(self.uri, timeout=self.args.lock_timeout, enabled=not self.args.no_lock):
                if self.client is None:
                    client = RetryingClient(self.uri, self.args.attempts)
                    self.experiment_id = ensure_experiment(client, self.args.experiment, self.args.artifact_root)
                    self.client = client
                self.choose_run()
                if not self.params_logged and self.origin != PENDING and (self.run_dir / "config.yaml").is_file():
                    self.log_config()
                self.logged, count = sync_file(self.client, self.run_id, self.steps, rows, self.logged, final)
                self.points += count
        except BaseException:
            self.steps.reset()  # read every row again next round: LOGGED_TAG keeps them from being logged twice
            self.run_id = None  # and look the run up again, with the position its tag records
            raise

    def choose_run(self) -> None:
        """Make `run_id` the run of the training that writes history_steps.csv now."""
        assert self.client is not None and self.experiment_id is not None
        origin = self.steps.origin
        if self.run_id is not None:
            if origin is None or origin == self.origin:
                return
            if self.origin == PENDING:  # our run, created before the first iteration ended
                self.client.set_tag(self.run_id, ORIGIN_TAG, origin)
                self.origin = origin
                return
            self.say(f"{self.steps.path} now holds another training (started afresh): following it in a new run")
        run = training_run(self.client, self.experiment_id, self.args.job_key, origin)
        if run is None and origin is not None:  # a run created before its training's first iteration
            run = training_run(self.client, self.experiment_id, self.args.job_key, None)
        if run is not None and run.info.run_id != self.run_id:
            self.run_id = run.info.run_id
            self.logged = parse_position(run.data.tags.get(LOGGED_TAG))
            if run.data.tags.get(ORIGIN_TAG) != (origin or PENDING):
                self.client.set_tag(self.run_id, ORIGIN_TAG, origin)
            if run.info.status != "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            what = "continuing"
        else:
            began = history_start(self.steps.path) if origin is not None else None
            start_ms = self.started_ms if began is None else min(self.started_ms, int(began * 1000))
            tags = {k: str(v)[:MAX_TAG_LENGTH] for k, v in {**self.tags, ORIGIN_TAG: origin or PENDING}.items()}
            self.run_id = self.client.create_run(self.experiment_id, start_time=start_ms, tags=tags,
                                                 run_name=self.args.name).info.run_id
            self.logged = None
            what = "created"
        self.origin = origin or PENDING
        self.params_logged = False
        gone = supersede(self.client, self.experiment_id, self.args.job_key, {self.run_id}, nested=True)
        self.say(f"{what} run {self.run_id} ({self.args.name}) in experiment {self.args.experiment}, in the "
                 f"dashboard {dashboard_path(self.experiment_id, self.run_id)}"
                 + (f"; superseded {len(gone)} earlier run(s) of the job" if gone else ""))

    def log_config(self) -> None:
        """The resolved config (config.yaml) as params, as the track step logs them."""
        assert self.client is not None and self.run_id is not None
        self.params_logged = True
        try:
            config = yaml.safe_load((self.run_dir / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            return
        params = flatten(config)
        existing = self.client.get_run(self.run_id).data.params
        log_params(self.client, self.run_id, {k: v for k, v in params.items()
                                              if k not in param_conflicts(existing, params)})

    def warn(self, err: BaseException, wait: float) -> None:
        """One line per new problem (a repeated one is not printed again)."""
        message = first_line(err) if isinstance(err, StoreError) else f"{type(err).__name__}: {first_line(err)}"
        if message != self.last_warning:
            self.say(f"warning: {message}; trying again in {wait:.0f} s (live logging only: the track step logs "
                     "the run after the job in any case)")
            self.last_warning = message

    def parent_alive(self) -> bool:
        if self.args.parent_pid:
            return process_running(self.args.parent_pid)
        return os.getppid() == self.parent

    def run(self) -> None:
        """Poll until the job's shell ends or a signal arrives, then `finish`."""
        def stop(signum: int, frame: Any) -> None:
            self.stop_reason = "signal"

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop)
        self.say(f"following {self.steps.path} into experiment {self.args.experiment} every "
                 f"{self.args.interval:g} s")
        wait = self.args.interval
        next_poll = time.monotonic()
        while self.stop_reason is None:
            if not self.parent_alive():
                self.stop_reason = "parent"
                break
            if time.monotonic() >= next_poll:
                try:
                    self.poll()
                    wait = self.args.interval
                    self.last_warning = ""
                except ImportError as err:
                    self.say(f"warning: mlflow cannot be imported ({err}); live logging off")
                    return
                except Exception as err:  # the store, mlflow, the file system: never the job's business
                    wait = min(max(wait, self.args.interval) * 2, 300.0)
                    self.warn(err, wait)
                next_poll = time.monotonic() + wait
            time.sleep(min(0.5, self.args.interval))
        self.finish()

    def finish(self) -> None:
        """Log the rows left and set the status: FINISHED when the training wrote its metrics.json, KILLED after a
        signal, FAILED when the job's shell ended without it. Gives up after --stop-timeout seconds."""
        finished = file_identity(self.run_dir / "metrics.json") not in (None, self.metrics_before)

        def late(signum: int, frame: Any) -> None:
            raise TimeoutError(f"not done within {self.args.stop_timeout:g} s")

        signal.signal(signal.SIGALRM, late)
        signal.alarm(max(1, int(self.args.stop_timeout)))
        status = "FINISHED" if finished else "KILLED" if self.stop_reason == "signal" else "FAILED"
        try:
            self.poll(final=finished)
            with store_lock(self.uri, timeout=self.args.lock_timeout, enabled=not self.args.no_lock):
                if self.client is not None and self.run_id is not None:
                    self.client.set_terminated(self.run_id, status)
            self.say(f"stopped: run {self.run_id} {status}, {self.points} metric points logged")
        except Exception as err:
            message = first_line(err) if isinstance(err, StoreError) else f"{type(err).__name__}: {first_line(err)}"
            if message == self.last_warning:
                self.say("stopped, the problem above unsolved; the track step logs the run after the job")
            else:
                self.say(f"warning: stopped without a last update ({message}); the track step logs the run")
        finally:
            signal.alarm(0)


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of a file, None when there is none: tells a file written since apart from an old one."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie, ended but not yet reaped, has ended)."""
    if not pid_alive(pid):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def cmd_live(args: argparse.Namespace) -> None:
    """Follow a training into MLflow while it runs (see LiveWatcher); never fails."""
    if args.off:
        print("[track_mlflow live] off (mlflow.live: false): the track step logs the run after the job",
              file=sys.stderr, flush=True)
        return
    try:
        LiveWatcher(args).run()
    except Exception as err:  # a bug here must not fail the job either
        print(f"[track_mlflow live] warning: stopped ({type(err).__name__}: {first_line(err)}); the track step "
              "logs the run after the job", file=sys.stderr, flush=True)


def cmd_runs(args: argparse.Namespace) -> None:
    """Print the live runs of an experiment (name, id, tags) as JSON."""
    from mlflow.entities import ViewType

    uri = normalise_uri(args.uri)
    if not prepare_store(uri, create=False):
        print("[]")
        return
    client = RetryingClient(uri, args.attempts)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print("[]")
        return
    view = ViewType.ALL if args.all else ViewType.ACTIVE_ONLY
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], run_view_type=view, max_results=1000,
                                  page_token=token)
        runs += [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                  "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
                  "parent": r.data.tags.get("mlflow.parentRunId"), "n_metrics": len(r.data.metrics),
                  "n_params": len(r.data.params)} for r in page]
        token = page.token
        if not token:
            break
    print(json.dumps(runs, indent=1))


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically, removing what killed writers of the same file left (this script runs on one host)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        pid = leftover.name[len(target.name) + 2:-4]
        if pid.isdigit() and not pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--uri", required=True, help="tracking URI, e.g. sqlite:///results/mlflow.db")
        p.add_argument("--experiment", required=True)
        p.add_argument("--attempts", type=int, default=10, help="retries on 'database is locked'")
        p.add_argument("--no-lock", action="store_true",
                       help="skip the lock file around sqlite writes (rely on retries alone); creating and "
                            "checking the store still take it")

    p = sub.add_parser("init", help="create the store and the experiment")
    common(p)
    p.add_argument("--artifact-root", default=None)
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="experiment tag")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("train", help="log a training run directory and its evaluations")
    common(p)
    p.add_argument("--artifact-root", default=None)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--name", required=True, help="run name shown in the dashboard")
    p.add_argument("--job-key", required=True, help="identifies the job; re-logging supersedes older runs")
    p.add_argument("--rule", default="train")
    p.add_argument("--eval-rule", default="evaluate")
    p.add_argument("--evaluation", action="append", default=[], metavar="JSON")
    p.add_argument("--analysis", action="append", default=[], metavar="JSON")
    p.add_argument("--samples", action="append", default=[], metavar="NPZ")
    p.add_argument("--log", action="append", default=[], metavar="FILE", help="log file to attach")
    p.add_argument("--artifact", action="append", default=[], metavar="FILE", help="extra file to attach")
    p.add_argument("--checkpoint", action="store_true", help="also attach checkpoint.pt")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="workflow-level param")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("live", help="log a training to MLflow while it runs (started beside `enf train`)")
    common(p)
    p.add_argument("--artifact-root", default=None)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--name", required=True, help="run name shown in the dashboard")
    p.add_argument("--job-key", required=True, help="identifies the job (as the track step's --job-key)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between updates (default 15)")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="stop when this process ends (default: when this command's parent process ends)")
    p.add_argument("--lock-timeout", type=float, default=60.0, help="seconds to wait for the store's lock")
    p.add_argument("--stop-timeout", type=float, default=60.0, help="seconds for the last update when stopping")
    p.add_argument("--off", action="store_true", help="do nothing (live logging switched off)")
    p.set_defaults(func=cmd_live)

    p = sub.add_parser("runs", help="list the runs of an experiment as JSON")
    common(p)
    p.add_argument("--all", action="store_true", help="include deleted (superseded) runs")
    p.set_defaults(func=cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except StoreError as err:
        print(f"track_mlflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
