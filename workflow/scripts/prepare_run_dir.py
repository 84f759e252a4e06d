"""Keep a training run's resumable state only if it belongs to the same training (arguments and code).

`enf train` resumes from RUN_DIR/state/last.pt, and refuses a state written with another config. The workflow
records a key (a hash of the job's `enf train` arguments and the enf source hash) in RUN_DIR/state.key. Before
each training job this script compares keys: the same key keeps the state (an interrupted job resumes); a
different or missing key moves RUN_DIR/state to RUN_DIR/state.stale (replacing an older one), so that a changed
model starts afresh instead of failing. A training that will not resume (no RUN_DIR/state/last.pt left) loses its
per-iteration history RUN_DIR/history_steps.csv too, so that nothing (the MLflow watcher) reads an earlier
training's rows as this one's.
Usage: prepare_run_dir.py --run-dir RUN_DIR --key KEY
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def prepare(run_dir: Path, key: str) -> str:
    """Apply the rule above; return what was done ('fresh', 'resume' or 'stale')."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state, key_file = run_dir / "state", run_dir / "state.key"
    old = key_file.read_text().strip() if key_file.is_file() else None
    action = "fresh"
    if state.exists():
        if old == key:
            action = "resume"
        else:
            stale = run_dir / "state.stale"
            if stale.exists():
                shutil.rmtree(stale)
            state.rename(stale)
            action = "stale"
    key_file.write_text(key + "\n")
    if not (state / "last.pt").is_file():
        (run_dir / "history_steps.csv").unlink(missing_ok=True)
    return action


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    action = prepare(Path(args.run_dir), args.key)
    messages = {"fresh": "no saved state: training starts from scratch",
                "resume": "saved state of this training found: enf train resumes from it",
                "stale": "saved state belongs to other settings or code: moved to state.stale, starting afresh"}
    print(f"[prepare_run_dir] {args.run_dir}: {messages[action]}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
