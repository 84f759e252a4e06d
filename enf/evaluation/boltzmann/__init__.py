"""A particle flow as a Boltzmann generator: importance weights against the known energy (DW4, LJ13).

One module per job: `weights` (ESS and log Z from importance weights), `sampling` (model samples with their
log-density, the model's log-density of data), `histograms` (energy and pair-distance histograms, JS divergences),
`figure` (their picture), `energy` (the energy of a data set), `evaluation` (all of it on one model) and `report`
(the CLI's evaluation: figure and summary line). This module only re-exports them.
"""

from enf.evaluation.boltzmann.energy import BOLTZMANN_DATASETS, energy_for_data
from enf.evaluation.boltzmann.evaluation import boltzmann_evaluation
from enf.evaluation.boltzmann.figure import boltzmann_figure
from enf.evaluation.boltzmann.histograms import DISTANCE_BINS, ENERGY_BINS, histogram
from enf.evaluation.boltzmann.report import evaluate_for_cli, summary_line
from enf.evaluation.boltzmann.sampling import data_log_prob, sample_with_log_prob
from enf.evaluation.boltzmann.weights import forward_ess, log_partition_forward, log_partition_reverse, reverse_ess

__all__ = ["BOLTZMANN_DATASETS", "DISTANCE_BINS", "ENERGY_BINS", "boltzmann_evaluation", "boltzmann_figure",
           "data_log_prob", "energy_for_data", "evaluate_for_cli", "forward_ess", "histogram", "log_partition_forward",
           "log_partition_reverse", "reverse_ess", "sample_with_log_prob", "summary_line"]
