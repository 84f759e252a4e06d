"""`enf evaluate --boltzmann N`: the evaluation of a checkpoint, its figure beside the JSON and its summary line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from enf.evaluation.boltzmann.energy import energy_for_data
from enf.evaluation.boltzmann.evaluation import boltzmann_evaluation
from enf.evaluation.boltzmann.figure import boltzmann_figure
from enf.models.flows.base import DensityModel


def evaluate_for_cli(model: DensityModel, cfg: dict[str, Any], data: dict[str, Tensor], data_path: str | Path,
                     n_samples: int, out_json: str | Path, trace: str = "exact", seed: int = 0,
                     batch_size: int | None = None) -> dict[str, Any]:
    """`enf evaluate --boltzmann N`: run the evaluation, write the figure beside `out_json`, return the numbers."""
    energy, source = energy_for_data(cfg["dataset"], data_path)
    result = boltzmann_evaluation(model, energy, data["positions"], n_samples,
                                  batch_size or int(cfg["train"]["eval_batch_size"]), trace, seed)
    out = Path(out_json)
    figure = out.with_name(f"{out.stem}_boltzmann.png")
    boltzmann_figure(result, figure, f"{cfg['model']['name']} on {cfg['dataset']}")
    result.update(energy_source=source, figure=str(figure))
    print(summary_line(result))
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One line of the evaluation's headline numbers (for the terminal)."""
    return (f"Boltzmann: reverse ESS {100 * result['reverse_ess']:.2f}%, forward ESS "
            f"{100 * result['forward_ess']:.2f}%, log Z {result['log_z_reverse']:.2f} (reverse) / "
            f"{result['log_z_forward']:.2f} (forward), {result['n_failed']} of {result['n_samples']} samples failed")
