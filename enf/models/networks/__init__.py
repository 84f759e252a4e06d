"""Vector fields of the continuous flows: E-NF's EGNN dynamics and the paper's baselines (registered on import)."""

from enf.models.networks import egnn, gnf, pair_dynamics  # noqa: F401  (the vector fields register themselves)
from enf.models.networks.base import VECTOR_FIELDS

__all__ = ["VECTOR_FIELDS"]
