"""Training: objectives, the training loop and its history."""

from enf.training.trainer import (
    HISTORY_COLUMNS,
    RUN_FILES,
    AdaptiveClipper,
    Trainer,
    augment,
    seed_everything,
    train,
)

__all__ = ["HISTORY_COLUMNS", "RUN_FILES", "AdaptiveClipper", "Trainer", "augment", "seed_everything", "train"]
