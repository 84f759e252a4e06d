"""enf: E(n) Equivariant Normalizing Flows for particle systems and molecules."""

__version__ = "0.1.0"
