"""Training by an objective (likelihood, flow matching) with model selection on validation NLL, an optional
average of the weights, atomic checkpoints and resume.

Run directory layout:
  config.yaml, checkpoint.pt (selected model), metrics.json, history.csv, training_curves.png  (results)
  history_steps.csv (one row per iteration and per validation, appended as training goes: see enf/training/history.py)
  state/last.pt (resumable state, rewritten every epoch), state/best.pt (weights of the best epoch so far)
"""

from __future__ import annotations

import contextlib
import csv
import math
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from enf.config import config_hash
from enf.data.datasets import DATASETS, load_split, split_path
from enf.device import choose_device
from enf.errors import EnfError, NumericalError
from enf.evaluation import batches, evaluate_nll, to_device
from enf.geometry import random_orthogonal, random_rotation_2d, rotate
from enf.io import atomic_path, write_json
from enf.models import build_model, checkpoints
from enf.training.averaging import WeightAverage
from enf.training.history import STEP_FILE, StepHistory, read_steps
from enf.training.objectives import build_objective, history_column
from enf.version import code_version

#: Every file a run writes in its directory (the output check of `enf train` makes sure none is an input).
RUN_FILES = ("config.yaml", "checkpoint.pt", "metrics.json", "history.csv", STEP_FILE, "training_curves.png",
             "state/last.pt", "state/best.pt")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain data (lists, numbers, tensors), so that a checkpoint loads with weights_only."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [version, list(internal), gauss],
             "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (or an earlier version's tuples and numpy array)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def augment(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rotate every sample by its own uniformly random (Haar) rotation (GNF-att-aug)."""
    pos = batch["positions"]
    b, _, d = pos.shape
    rot = random_rotation_2d(b, dtype=pos.dtype) if d == 2 else random_orthogonal(b, d, dtype=pos.dtype)
    return {**batch, "positions": rotate(pos, rot.to(pos.device))}


class AdaptiveClipper:
    """Clip gradients at 1.5 mean + 2 std of the recent clipped norms (EDM / E-NF's QM9 recipe)."""

    def __init__(self, init: float, size: int = 50) -> None:
        self.queue: deque[float] = deque([float(init)], maxlen=size)

    def threshold(self) -> float:
        values = np.array(self.queue)
        return float(1.5 * values.mean() + 2 * values.std())

    def __call__(self, params: list[nn.Parameter]) -> tuple[float, bool]:
        limit = self.threshold()
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=limit, norm_type=2.0))
        self.queue.append(min(norm, limit))
        return norm, norm > limit


class Trainer:
    """Train the model of `cfg` on `data_dir`, writing everything under `out_dir`."""

    def __init__(self, cfg: dict[str, Any], data_dir: str | Path, out_dir: str | Path,
                 progress: bool = True, test: bool = True) -> None:
        self.cfg = cfg
        self.test = test  # False: the test split is left to `enf evaluate` (the workflow evaluates it once)
        self.data_dir = Path(data_dir)
        self.out = Path(out_dir)
        self.state_dir = self.out / "state"
        self.progress = progress
        self.spec = DATASETS.get(cfg["dataset"])
        self.tcfg = cfg["train"]
        self.device, self.device_reason = choose_device(self.tcfg["device"], "train.device")
        self.dtype = torch.float64 if self.tcfg["dtype"] == "float64" else torch.float32
        self.hash = config_hash(cfg)

    def log(self, message: str) -> None:
        print(f"[enf train] {message}", file=sys.stderr, flush=True)

    def load_data(self) -> None:
        n = self.tcfg["n_train"]
        self.train_data = load_split(self.spec, split_path(self.data_dir, "train"), n, self.dtype)
        self.valid_data = load_split(self.spec, split_path(self.data_dir, "valid"), self.tcfg["n_valid"], self.dtype)
        self.test_data = (load_split(self.spec, split_path(self.data_dir, "test"), None, self.dtype)
                          if self.test else None)
        self.n_train = self.train_data["positions"].shape[0]
        if self.n_train < self.tcfg["batch_size"]:
            raise EnfError(f"train.batch_size {self.tcfg['batch_size']} exceeds the {self.n_train} training "
                           f"samples (incomplete batches are dropped, so no step would run)")

    def build(self) -> None:
        seed_everything(int(self.tcfg["seed"]))
        self.model = build_model(self.cfg).to(device=self.device, dtype=self.dtype)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=float(self.tcfg["lr"]), weight_decay=float(self.tcfg["weight_decay"]),
            amsgrad=bool(self.tcfg["amsgrad"]))
        self.clipper = (AdaptiveClipper(float(self.tcfg["clip_queue_init"]))
                        if self.tcfg["clip_grad"] == "adaptive" else None)
        self.clip_params = self.model.clip_parameters()
        self.objective = build_objective(self.cfg)
        self.start_epoch = 0
        self.step = 0  # optimiser steps done (the global iteration)
        self.history: list[dict[str, Any]] = []
        self.steps = StepHistory(self.out / STEP_FILE)
        self.best: dict[str, Any] = {"epoch": None, "val_nll": math.inf}
        self.average: WeightAverage | None = None  # made after the data-dependent initialisation (`run`)

    # -- checkpoints -------------------------------------------------------------------------------
    def save_state(self, epoch_done: int) -> None:
        checkpoints.save(self.state_dir / "last.pt", {
            "format": checkpoints.FORMAT, "config_hash": self.hash, "config": self.cfg,
            "epoch": epoch_done, "step": self.step, "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(), "best": checkpoints.plain(self.best),
            "history": checkpoints.plain(self.history), "rng": rng_state(),
            "clip_queue": [float(v) for v in self.clipper.queue] if self.clipper else None,
            "weight_average": self.average.state_dict() if self.average else None,
            "code_version": code_version(),
        })

    def check_resumable(self) -> dict[str, Any] | None:
        """The saved state of this run, None when there is none; refuse a state of another run (before any work)."""
        path = self.state_dir / "last.pt"
        if not path.is_file():
            return None
        state = checkpoints.load(path)
        if state.get("config_hash") != self.hash:
            raise EnfError(f"{path}: holds a run with a different config; use another --out directory or "
                           "delete it to start over")
        return state

    def try_resume(self, state: dict[str, Any] | None) -> bool:
        """Continue from `state` (see `check_resumable`); False when there is none."""
        if state is None:
            return False
        path = self.state_dir / "last.pt"
        try:
            self.model.load_state_dict(state["model_state"])
            self.optimizer.load_state_dict(state["optimizer_state"])
            self.best, self.history = checkpoints.plain(state["best"]), checkpoints.plain(state["history"])
            self.start_epoch = int(state["epoch"])
            self.step = int(state.get("step", sum(int(h["steps"]) for h in self.history)))
            if self.clipper and state.get("clip_queue"):
                self.clipper.queue.extend(float(v) for v in state["clip_queue"])
            if self.tcfg["ema"] > 0:
                self.average = WeightAverage(self.model, float(self.tcfg["ema"]))
                self.average.load_state_dict(state["weight_average"])
            set_rng_state(state["rng"])
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            lines = str(err).splitlines()
            raise EnfError(f"{path}: not a resumable state of this run ({type(err).__name__}: "
                           f"{lines[0] if lines else ''})") from None
        self.log(f"resuming from {path} after epoch {self.start_epoch}")
        return True

    # -- training ----------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training split; every scalar the objective returns is logged per step and per epoch."""
        self.model.train()
        order = torch.randperm(self.n_train)
        sums: dict[str, float] = {}
        grad_norms = 0.0
        n_clipped = 0
        steps = 0
        start = step_start = time.perf_counter()
        bar = tqdm(batches(self.train_data, self.tcfg["batch_size"], order, drop_last=True),
                   desc=f"epoch {epoch}", leave=False, disable=not self.progress, mininterval=2.0)
        for batch in bar:
            batch = to_device(batch, self.device)
            if self.tcfg["augment_rotation"]:
                batch = augment(batch)
            self.optimizer.zero_grad(set_to_none=True)
            out = self.objective.loss(self.model, batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                parts = ", ".join(f"{key} {float(value.detach())}" for key, value in out.items() if key != "loss")
                raise NumericalError(f"non-finite training loss at epoch {epoch}, step {steps} ({parts})")
            loss.backward()
            if self.clipper:
                norm, clipped = self.clipper(self.clip_params)
                n_clipped += int(clipped)
            else:
                norm = float(torch.nn.utils.clip_grad_norm_(self.clip_params, math.inf))
                clipped = False
            if not math.isfinite(norm):
                raise NumericalError(f"non-finite gradient norm at epoch {epoch}, step {steps}")
            self.optimizer.step()
            steps += 1
            self.step += 1
            if self.average:
                self.average.update(self.step)
            values = {history_column(key): value.detach().item() for key, value in out.items()}
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            grad_norms += norm
            now = time.perf_counter()
            self.steps.append({"step": self.step, "epoch": epoch, "time": time.time(), **values, "grad_norm": norm,
                               "clipped": int(clipped), "lr": self.optimizer.param_groups[0]["lr"],
                               "seconds": now - step_start})
            step_start = now
            bar.set_postfix(loss=f"{values['train_loss']:.3f}", nfe=values.get("nfe", 0))
        return {"epoch": epoch, **{key: value / steps for key, value in sums.items()},
                "grad_norm": grad_norms / steps, "clipped_steps": n_clipped, "steps": steps,
                "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}

    def selected_weights(self) -> contextlib.AbstractContextManager[None]:
        """The weights a validation scores and a selection keeps: the weight average where `train.ema` is on."""
        return self.average.applied(self.model) if self.average else contextlib.nullcontext()

    def validate(self) -> dict[str, Any]:
        with self.selected_weights():
            return evaluate_nll(self.model, self.valid_data, self.tcfg["eval_batch_size"],
                                self.cfg["flow"]["trace_eval"], device=self.device)

    def run(self) -> dict[str, Any]:
        state = self.check_resumable()
        self.load_data()
        self.build()
        resumed = self.try_resume(state)
        # Only now, with every refusal behind, does the run directory change.
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        if not resumed:
            first = batches(self.train_data, self.tcfg["batch_size"])[0]
            self.model.initialize(to_device(first, self.device), self.train_data)
        if self.tcfg["ema"] > 0 and self.average is None:
            self.average = WeightAverage(self.model, float(self.tcfg["ema"]))
        epochs = int(self.tcfg["epochs"])
        every = int(self.tcfg["eval_every"])
        self.log(f"{self.cfg['model']['name']} on {self.cfg['dataset']}: {self.n_train} training samples, "
                 f"{epochs} epochs, device {self.device} ({self.device_reason}), code {code_version()}")
        wall = sum(h["seconds"] + h.get("val_seconds", 0.0) for h in self.history)
        kept = self.steps.start(self.step if resumed else None)
        if resumed and kept != self.step:
            self.log(f"{self.steps.path} holds {kept} of the {self.step} iterations before the resume point (lost, "
                     "or not recorded by the version that trained them)")
        for epoch in range(self.start_epoch, epochs):
            row = self.train_epoch(epoch)
            if epoch % every == 0 or epoch == epochs - 1 and self.best["epoch"] is None:
                val = self.validate()
                row.update(val_nll=val["nll"], val_nll_sem=val["nll_sem"], val_seconds=val["seconds"],
                           val_nfe=val["nfe_per_solve"])
                self.steps.append({"step": self.step, "epoch": epoch, "time": time.time(), "val_nll": val["nll"],
                                   "val_nll_sem": val["nll_sem"], "val_nfe": val["nfe_per_solve"],
                                   "val_seconds": val["seconds"]})
                if val["nll"] < self.best["val_nll"]:
                    self.best = {"epoch": epoch, "val_nll": val["nll"], "val_nll_sem": val["nll_sem"]}
                    with self.selected_weights():
                        checkpoints.save(self.state_dir / "best.pt", {"format": checkpoints.FORMAT,
                                                                      "model_state": self.model.state_dict(),
                                                                      "epoch": epoch})
            wall += row["seconds"] + row.get("val_seconds", 0.0)
            self.history.append(row)
            self.save_state(epoch + 1)
            self.log(_summary(row))
        return self.finish(wall)

    def finish(self, wall: float) -> dict[str, Any]:
        if self.best["epoch"] is None:  # zero epochs: the initial model is the selection
            val = self.validate()
            self.best = {"epoch": -1, "val_nll": val["nll"], "val_nll_sem": val["nll_sem"]}
        else:
            self.model.load_state_dict(checkpoints.load(self.state_dir / "best.pt")["model_state"])
        test = (evaluate_nll(self.model, self.test_data, self.tcfg["eval_batch_size"],
                             self.cfg["flow"]["trace_eval"], device=self.device) if self.test
                else {"nll": None, "nll_sem": None, "n": None, "trace": None, "nfe_per_solve": None})
        metrics = {
            "dataset": self.cfg["dataset"], "model": self.cfg["model"]["name"], "n_train": self.n_train,
            "seed": self.tcfg["seed"], "best_epoch": self.best["epoch"], "best_val_nll": self.best["val_nll"],
            "best_val_nll_sem": self.best.get("val_nll_sem"), "test_nll": test["nll"],
            "test_nll_sem": test["nll_sem"], "test_n": test["n"], "test_trace": test["trace"],
            "epochs": len(self.history), "train_seconds": wall,
            "mean_nfe": float(np.mean([h["nfe"] for h in self.history])) if self.history else None,
            "test_nfe": test["nfe_per_solve"], "device": str(self.device), "code_version": code_version(),
            "config_hash": self.hash,
        }
        checkpoints.save(self.out / "checkpoint.pt", {
            "format": checkpoints.FORMAT, "config": self.cfg, "model_state": self.model.state_dict(),
            "epoch": self.best["epoch"], "metrics": metrics, "code_version": code_version(),
        })
        write_history(self.history, self.out / "history.csv")
        if self.history:
            from enf.figures import training_curves

            training_curves(self.history, self.out / "training_curves.png",
                            f"{self.cfg['model']['name']} on {self.cfg['dataset']} (n={self.n_train})",
                            steps=read_steps(self.steps.path))
        write_json(self.out / "metrics.json", metrics)
        tested = (f"test NLL {metrics['test_nll']:.4f} +- {metrics['test_nll_sem']:.4f}" if self.test
                  else "test split left to `enf evaluate`")
        self.log(f"done: best epoch {metrics['best_epoch']}, validation NLL {metrics['best_val_nll']:.4f}, {tested}")
        return metrics


def _summary(row: dict[str, Any]) -> str:
    train = f"train NLL {row['train_nll']:.4f}" if "train_nll" in row else f"train loss {row['train_loss']:.4f}"
    text = f"epoch {row['epoch']}: {train}, nfe {row['nfe']:.1f}, {row['seconds']:.1f} s"
    if "val_nll" in row:
        text += f", validation NLL {row['val_nll']:.4f}"
    return text


HISTORY_COLUMNS = ("epoch", "train_loss", "train_nll", "train_reg", "train_transport_cost", "train_pairing_seconds",
                   "val_nll", "val_nll_sem", "nfe", "val_nfe", "grad_norm", "clipped_steps", "steps", "lr", "seconds",
                   "val_seconds")


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow(row)


def train(cfg: dict[str, Any], data_dir: str | Path, out_dir: str | Path, progress: bool = True,
          test: bool = True) -> dict[str, Any]:
    """Train (or resume) the run of `cfg`; return its metrics (with the test NLL of the selection if `test`)."""
    return Trainer(cfg, data_dir, out_dir, progress, test).run()
