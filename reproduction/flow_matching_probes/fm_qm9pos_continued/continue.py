"""Probe driver: `enf train` that resumes a run's state/last.pt even though its budget differs (more epochs, another
validation cadence). The trainer refuses a state of another configuration; this probe changes only
train.epochs and train.eval_every (config.yaml here against the seed-0 run's), so the check is skipped.

    python continue.py train ARGS...   (the workflow's `enf train` arguments with --epochs 81 --set=train.eval_every=10)
"""

import sys

from enf.cli import main
from enf.models import checkpoints
from enf.training import trainer


def load_state(self: trainer.Trainer) -> dict | None:
    path = self.state_dir / "last.pt"
    return checkpoints.load(path) if path.is_file() else None


trainer.Trainer.check_resumable = load_state
sys.exit(main(sys.argv[1:]))
