"""An exponential moving average of a model's weights, validated, selected and saved in place of the raw weights.

With a constant learning rate, flow matching's regression target is noisy (a fresh pairing and time per sample) and
the raw weights wander around a minimum; their average is a better density than any single iterate. The decay
warms up as min(decay, (1 + t) / (10 + t)) over the first optimiser steps t, so that a short run is not an
average dominated by its initial weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverage:
    """EMA of every floating-point tensor of `model.state_dict()` (integer buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), not {decay}")
        self.decay = decay
        live = model.state_dict()  # detached tensors sharing storage with the parameters and buffers
        self.shadow = {key: value.detach().clone() for key, value in live.items()}
        self._floating = [key for key, value in live.items() if value.is_floating_point()]
        self._live = [live[key] for key in self._floating]
        self._averaged = [self.shadow[key] for key in self._floating]
        self._copied = [(self.shadow[key], live[key]) for key in live if key not in set(self._floating)]

    def decay_at(self, step: int) -> float:
        """The decay applied after optimiser step `step` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the current weights after optimiser step `step`."""
        torch._foreach_lerp_(self._averaged, self._live, 1.0 - self.decay_at(step))
        for shadow, live in self._copied:
            shadow.copy_(live)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own weights again after it."""
        own = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Tensor]:
        return {key: value.detach().clone() for key, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise KeyError("the saved weight average does not fit this model")
        with torch.no_grad():
            for key, value in state.items():
                self.shadow[key].copy_(value)
