"""The per-iteration history of a training run (`history_steps.csv`), written while the training runs.

One row per optimiser step, `step` being the global iteration (1, 2, ...): every scalar the objective returns
(enf/training/objectives.py: loss; likelihood: NLL, regulariser and function evaluations of the solve; flow matching:
transport cost and pairing seconds, NFE 0), gradient norm (before clipping), whether it was clipped, learning rate and
seconds. One row per validation, at the step after which it ran: validation NLL, its standard error, function
evaluations per solve and seconds. Every row has its epoch and its wall-clock time (`time`, unix seconds), so that
a reader can place it in time. `history.csv` stays the per-epoch summary.

The file is appended to, one line per row, so that another process (the workflow's MLflow watcher) can
follow a running training; it is only rewritten whole, atomically, when a training starts or resumes.

Resume rule: the state a training resumes from was saved after an epoch's steps and its validation, at global
step S; the resumed training keeps the rows with step <= S and drops the others (the iterations it redoes, and
that epoch's validation if it ran), so that its history is the history of an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from enf.io import atomic_path

STEP_FILE = "history_steps.csv"
STEP_COLUMNS = ("step", "epoch", "time", "train_loss", "train_nll", "train_reg", "train_transport_cost",
                "train_pairing_seconds", "nfe", "grad_norm", "clipped", "lr", "seconds", "val_nll", "val_nll_sem",
                "val_nfe", "val_seconds")
_INTEGERS = ("step", "epoch", "clipped")


def read_steps(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a step history as numbers (blank cells left out); [] if there is no file.

    A last line without its newline (a writer killed mid-line, or one being written) is not a row.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for raw in csv.DictReader(text.splitlines()):
        row: dict[str, Any] = {}
        for key, value in raw.items():
            if key is None or value in (None, ""):
                continue
            try:
                row[key] = int(float(value)) if key in _INTEGERS else float(value)
            except ValueError:
                continue
        if "step" in row:
            rows.append(row)
    return rows


def in_saved_state(row_step: int, saved_step: int) -> bool:
    """The resume rule: whether a row at global step `row_step` belongs to a state saved at step `saved_step` (the
    state was saved after that step's validation); the other rows are of iterations the resumed training redoes."""
    return row_step <= saved_step


def rows_through(rows: list[dict[str, Any]], saved_step: int) -> list[dict[str, Any]]:
    """The rows of a state saved at global step `saved_step` (`in_saved_state`)."""
    return [row for row in rows if in_saved_state(row["step"], saved_step)]


class StepHistory:
    """Writer of `history_steps.csv`: `start` (afresh or resumed), then `append` per row."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def start(self, resume_step: int | None) -> int:
        """Begin a training: afresh (`resume_step` None) or from a state saved at global step `resume_step`, keeping
        the rows `rows_through` selects (copied line by line, as they were); return how many iterations were kept.
        The file is replaced atomically."""
        kept = 0
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=STEP_COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            if resume_step is not None and self.path.is_file():
                with open(self.path, newline="") as source:
                    header = next(csv.reader([source.readline()]), [])
                    for line in source:
                        if not line.endswith("\n"):
                            break  # a line cut short by a kill: never a row of the saved state
                        row = dict(zip(header, next(csv.reader([line]), [])))
                        try:
                            step = int(float(row.get("step") or "nan"))
                        except ValueError:
                            continue
                        if not in_saved_state(step, resume_step):
                            continue
                        if tuple(header) == STEP_COLUMNS:
                            out.write(line)
                        else:
                            writer.writerow(row)
                        kept += not row.get("val_nll")
        return kept

    def append(self, row: dict[str, Any]) -> None:
        """Add one row as one whole line (the file is opened per row, so nothing stays buffered or open)."""
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=STEP_COLUMNS, extrasaction="ignore", lineterminator="\n").writerow(row)
