"""Log finished workflow jobs to MLflow: one run per training job, one nested run per evaluation.

The `enf` library never imports mlflow; this script reads what a job left on disk (run directory, evaluation
JSON, sample analysis) and logs it. Sub-commands:

  init   create the tracking store (sqlite schema) and the experiment once, before any job logs to it
  train  log a training run directory (params = flattened resolved config, per-epoch metrics from
         history.csv with step = epoch, final metrics from metrics.json, artifacts, tags) and, nested
         under it, one run per `--evaluation` JSON (with its `--analysis` JSON and `--samples`)
  runs   print the runs of an experiment as JSON (used by tests and for quick checks)

Concurrency: with a sqlite store, every write happens under an exclusive lock on `<db>.lock` (fcntl), and
each client call is retried with exponential backoff when sqlite reports "database is locked", so many
jobs finishing at once (`--cores all`) neither lose a run nor crash. Re-logging the same job (same
`--job-key`) soft-deletes the runs it supersedes, so the dashboard shows one live run per job.

Safety: a new sqlite store is created under the lock (even with --no-lock) in a temporary file that is renamed
into place only when its schema is complete, so that concurrent or killed creators never leave a half-made store;
an existing store must pass sqlite's integrity check and hold MLflow's tables before anything is written to it.
Every store error ends the script with one line naming the store (exit status 2).
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
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

LOCK_ERRORS = ("database is locked", "database table is locked", "database is busy", "unable to open database")
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000


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
    """Return the id of experiment `name`, creating it (with its artifact location) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if artifact_root:
        root = Path(artifact_root).resolve() / name
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    return client.create_experiment(name, artifact_location=location)


# -- reading a job's files ----------------------------------------------------------------------------------

def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists and scalars become leaves."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def as_number(value: Any) -> float | None:
    """A float for numeric values (bools excluded), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def read_history(path: Path) -> list[dict[str, str]]:
    """Rows of history.csv (empty list when the file is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


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

def log_run(client: RetryingClient, experiment_id: str, name: str, *, params: dict[str, Any],
            metrics: dict[str, float], series: list[tuple[str, float, int, int]], tags: dict[str, str],
            artifacts: list[tuple[Path, str | None]], start_ms: int, end_ms: int,
            parent_run_id: str | None = None) -> str:
    """Create one finished run with all its data; return its id."""
    from mlflow.entities import Metric, Param

    tags = {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
    run_id = run.info.run_id
    try:
        plist = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        for i in range(0, len(plist), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=plist[i:i + MAX_PARAMS_PER_BATCH], synchronous=True)
        mlist = [Metric(k, v, end_ms, 0) for k, v in sorted(metrics.items())]
        mlist += [Metric(k, v, ts, step) for k, v, ts, step in series]
        for i in range(0, len(mlist), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=mlist[i:i + MAX_METRICS_PER_BATCH], synchronous=True)
        for path, artifact_path in artifacts:
            if path.is_file():
                client.log_artifact(run_id, str(path), artifact_path)
        client.set_terminated(run_id, "FINISHED", end_time=end_ms)
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def supersede(client: RetryingClient, experiment_id: str, job_key: str, keep: set[str]) -> list[str]:
    """Soft-delete earlier runs logged for the same job (restorable in the UI or with `mlflow gc`)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.job_key = '{job_key}'", max_results=1000)
    gone = [r.info.run_id for r in runs if r.info.run_id not in keep]
    for run_id in gone:
        client.set_tag(run_id, "superseded", "true")
        client.delete_run(run_id)
    return gone


def training_payload(run_dir: Path) -> dict[str, Any]:
    """Params, final metrics, per-epoch series, tags and artifacts of an `enf train` run directory."""
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
    for row in read_history(run_dir / "history.csv"):
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
                 ("config.yaml", "metrics.json", "history.csv", "training_curves.png", "import.json")]
    artifacts += [(Path(p), "logs") for p in args.log]
    artifacts += [(Path(p), "extra") for p in args.artifact]
    if args.checkpoint:
        artifacts.append((run_dir / "checkpoint.pt", "checkpoint"))
    params = {**payload["params"], **{f"workflow.{k}": v for k, v in parse_pairs(args.param).items()}}
    if len(args.analysis) not in (0, len(args.evaluation)):
        raise SystemExit("track_mlflow: give one --analysis per --evaluation, or none")
    prepare_store(uri, args.artifact_root)
    with store_lock(uri, enabled=not args.no_lock):
        client = RetryingClient(uri, args.attempts)
        experiment_id = ensure_experiment(client, args.experiment, args.artifact_root)
        run_id = log_run(client, experiment_id, args.name, params=params, metrics=payload["metrics"],
                         series=payload["series"], tags={**payload["tags"], **tags, "rule": args.rule},
                         artifacts=artifacts, start_ms=payload["start_ms"], end_ms=payload["end_ms"])
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
                          "evaluation_run_ids": eval_ids, "superseded": superseded, "job_key": args.job_key})
    print(f"[track_mlflow] logged run {run_id} ({args.name}) with {len(eval_ids)} evaluation run(s)")


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


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


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
