"""The contract every vector field keeps, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from enf.registry import Registry


class VectorField(nn.Module):
    """dxh/dt = f(t, xh) for point clouds with optional node features.

    State `xh` is (B, N, n_dim + n_features): positions first, then continuous node features.
    `mask` is None (all nodes real) or a (B, N) tensor with 1 for real nodes and 0 for padding.
    The returned velocity has the state's shape, zero mean over the real nodes in its position part,
    and zeros on padded nodes. A field whose divergence has a closed form sets
    `closed_form_divergence = True` and implements `divergence` (B,), so that no trace estimator is needed.
    A field that differentiates inside its forward pass (a gradient field) sets `compilable = False`: the
    compiled trace (torch.func.vjp of the field) cannot run it, and `flow.compile` leaves it eager.
    """

    n_dim: int
    n_features: int = 0
    closed_form_divergence: bool = False
    compilable: bool = True

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def divergence(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form divergence")


#: Builder signature: (n_dim, n_features, model_cfg) -> VectorField. `model_cfg` is the resolved `model`
#: section of the config (a plain dict: name, hidden_nf, n_layers, ...).
FieldBuilder = Callable[[int, int, dict[str, Any]], VectorField]

VECTOR_FIELDS: Registry[FieldBuilder] = Registry("model")
