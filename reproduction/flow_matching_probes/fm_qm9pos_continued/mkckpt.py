"""Probe helper: a checkpoint that `enf evaluate` reads, with the weights of a run's state/best.pt and the config of
the seed-0 checkpoint.   python mkckpt.py SEED0_CHECKPOINT RUN/state/best.pt OUT.pt"""

import sys

from enf.models import checkpoints

base, best = checkpoints.load(sys.argv[1]), checkpoints.load(sys.argv[2])
base["model_state"], base["epoch"] = best["model_state"], best["epoch"]
checkpoints.save(sys.argv[3], base)
print("epoch", best["epoch"])
