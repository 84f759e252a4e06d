"""Models: vector fields, the flows around them, and their checkpoints."""

from enf.models.build import VECTOR_FIELDS, build_cnf, build_model

__all__ = ["VECTOR_FIELDS", "build_cnf", "build_model"]
