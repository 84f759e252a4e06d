"""Evaluation: test NLL, Boltzmann-generator weights and molecule metrics."""

from enf.evaluation.nll import batches, evaluate_nll, to_device

__all__ = ["batches", "evaluate_nll", "to_device"]
