"""Target energies of the particle data sets (DW4, LJ13) as batched torch functions, with exact derivatives.

Every energy is a sum of pair terms u(d_ij) over unique pairs i < j, plus (LJ13) a harmonic term around the mean.
Analytic u, u' and u'' give the energy, its gradient and its exact Laplacian in one pass; the Laplacian is what
the configurational temperature <|grad E|^2> / <laplacian E> needs. Densities are exp(-E / T), and all
energies are invariant to translations, so they live on the zero-centre-of-mass subspace.
"""

from __future__ import annotations

import torch
from torch import Tensor

from enf.errors import EnfError

LJ13_CONVENTIONS = ("ordered", "unique")


class PairEnergy:
    """A translation-invariant energy sum_{i<j} u(d_ij) + k/2 sum_i |x_i - mean|^2 on (n_particles, n_dim)."""

    name: str = "pair"

    def __init__(self, n_particles: int, n_dim: int, temperature: float = 1.0, harmonic: float = 0.0) -> None:
        if n_particles < 2 or n_dim < 1:
            raise EnfError(f"{self.name}: needs at least 2 particles and 1 dimension, got "
                           f"({n_particles}, {n_dim})")
        if not temperature > 0:
            raise EnfError(f"{self.name}: temperature must be positive, got {temperature}")
        self.n_particles = n_particles
        self.n_dim = n_dim
        self.temperature = float(temperature)
        self.harmonic = float(harmonic)
        self._pairs = torch.triu_indices(n_particles, n_particles, offset=1)

    @property
    def event_shape(self) -> tuple[int, int]:
        """Shape of one configuration: (particles, dimensions)."""
        return (self.n_particles, self.n_dim)

    @property
    def dof(self) -> int:
        """Degrees of freedom on the zero-centre-of-mass subspace."""
        return (self.n_particles - 1) * self.n_dim

    def pair(self, d: Tensor) -> Tensor:
        """u(d) of the pair potential, elementwise."""
        raise NotImplementedError

    def pair_sq(self, d2: Tensor) -> Tensor:
        """u as a function of the squared distance (lets energies without odd powers skip the square root)."""
        return self.pair(d2.sqrt())

    def pair_derivatives(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u(d), u'(d) and u''(d) of the pair potential, elementwise."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """The energy's definition as JSON-able facts, recorded in each data set's meta.json."""
        return {"name": self.name, "n_particles": self.n_particles, "n_dim": self.n_dim,
                "temperature": self.temperature, "harmonic": self.harmonic}

    def _shape(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and x.shape[1] == self.n_particles * self.n_dim:
            x = x.reshape(x.shape[0], self.n_particles, self.n_dim)
        if x.dim() != 3 or tuple(x.shape[1:]) != self.event_shape:
            raise EnfError(f"{self.name}: expected positions of shape (batch, {self.n_particles}, {self.n_dim}), "
                           f"got {tuple(x.shape)}")
        return x

    def _pair_geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        i, j = self._pairs.to(x.device)
        diff = x[:, i] - x[:, j]                      # (B, P, D)
        return diff, diff.pow(2).sum(-1).sqrt()       # (B, P, D), (B, P)

    def energy(self, x: Tensor) -> Tensor:
        """E(x), shape (B,), for positions (B, N, D) or (B, N*D); differentiable by autograd."""
        x = self._shape(x)
        _, d = self._pair_geometry(x)
        e = self.pair(d).sum(-1)
        if self.harmonic:
            e = e + 0.5 * self.harmonic * (x - x.mean(1, keepdim=True)).pow(2).sum((1, 2))
        return e

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised log density -E(x) / T, shape (B,)."""
        return -self.energy(x) / self.temperature

    def energy_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """E(x) and its gradient (B, N, D), both analytic."""
        e, g, _ = self.derivatives(x, laplacian=False)
        return e, g

    def grad(self, x: Tensor) -> Tensor:
        """Gradient of E with respect to the positions, (B, N, D); the force is its negative."""
        return self.energy_and_grad(x)[1]

    def force(self, x: Tensor) -> Tensor:
        """-grad E, (B, N, D)."""
        return -self.grad(x)

    def laplacian(self, x: Tensor) -> Tensor:
        """Exact Laplacian of E over all N*D coordinates, (B,); equal to the one on the zero-mean subspace."""
        return self.derivatives(x)[2]

    def derivatives(self, x: Tensor, laplacian: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """(E, grad E, laplacian E) in one pass from u, u', u'' of every pair (laplacian zero if not asked)."""
        x = self._shape(x)
        n, dim = self.n_particles, self.n_dim
        i, j = self._pairs.to(x.device)
        diff, d = self._pair_geometry(x)
        u, du, d2u = self.pair_derivatives(d)
        pair_force = (du / d).unsqueeze(-1) * diff    # d u(d_ij) / d x_i ; the opposite for x_j
        grad = x.new_zeros(x.shape)
        grad.index_add_(1, i, pair_force)
        grad.index_add_(1, j, -pair_force)
        e = u.sum(-1)
        # The Laplacian of u(|x_i - x_j|) in x_i is u'' + (D - 1) u' / d; x_j contributes the same again.
        lap = 2.0 * (d2u + (dim - 1) * du / d).sum(-1) if laplacian else x.new_zeros(x.shape[0])
        if self.harmonic:
            centred = x - x.mean(1, keepdim=True)
            e = e + 0.5 * self.harmonic * centred.pow(2).sum((1, 2))
            grad = grad + self.harmonic * centred
            lap = lap + self.harmonic * dim * (n - 1) if laplacian else lap
        return e, grad, lap


class DoubleWellEnergy(PairEnergy):
    """DW4-style energy: u(d) = a (d - d0)^4 + b (d - d0)^2 + c over unique pairs (protocol: 0.9, -4, 0, d0 = 4)."""

    name = "dw4"

    def __init__(self, n_particles: int = 4, n_dim: int = 2, a: float = 0.9, b: float = -4.0, c: float = 0.0,
                 d0: float = 4.0, temperature: float = 1.0) -> None:
        super().__init__(n_particles, n_dim, temperature)
        self.a, self.b, self.c, self.d0 = float(a), float(b), float(c), float(d0)

    def pair(self, d: Tensor) -> Tensor:
        s2 = (d - self.d0).pow(2)
        return self.a * s2 * s2 + self.b * s2 + self.c

    def pair_derivatives(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = d - self.d0
        s2 = s * s
        return (self.a * s2 * s2 + self.b * s2 + self.c,
                4 * self.a * s2 * s + 2 * self.b * s,
                12 * self.a * s2 + 2 * self.b)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "a": self.a, "b": self.b, "c": self.c, "d0": self.d0,
                "formula": "sum_{i<j} a (d_ij - d0)^4 + b (d_ij - d0)^2 + c"}


class LennardJonesEnergy(PairEnergy):
    """LJ13-style energy: LJ eps[(rm/d)^12 - 2 (rm/d)^6] plus k/2 sum_i |x_i - mean|^2.

    convention 'ordered' (the paper's data) sums the LJ term over ordered pairs i != j, i.e. twice every unique
    pair; 'unique' (bgflow's) counts each pair once. The harmonic term is the same in both.
    """

    name = "lj13"

    def __init__(self, n_particles: int = 13, n_dim: int = 3, eps: float = 1.0, rm: float = 1.0,
                 harmonic: float = 1.0, convention: str = "ordered", temperature: float = 1.0) -> None:
        if convention not in LJ13_CONVENTIONS:
            raise EnfError(f"lj13: unknown energy convention {convention!r}; use one of {LJ13_CONVENTIONS}")
        super().__init__(n_particles, n_dim, temperature, harmonic)
        self.eps, self.rm, self.convention = float(eps), float(rm), convention
        self._scale = self.eps * (2.0 if convention == "ordered" else 1.0)

    def pair(self, d: Tensor) -> Tensor:
        q6 = (self.rm / d).pow(6)
        return self._scale * (q6 * q6 - 2 * q6)

    def pair_sq(self, d2: Tensor) -> Tensor:
        q2 = (self.rm * self.rm) / d2
        q6 = q2 * q2 * q2
        return self._scale * (q6 * q6 - 2 * q6)

    def pair_derivatives(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q6 = (self.rm / d).pow(6)
        q12 = q6 * q6
        s = self._scale
        return (s * (q12 - 2 * q6),
                s * 12 * (q6 - q12) / d,
                s * (156 * q12 - 84 * q6) / (d * d))

    def describe(self) -> dict[str, object]:
        pairs = "ordered pairs i != j (each unique pair twice)" if self.convention == "ordered" else \
            "unique pairs i < j"
        return {**super().describe(), "eps": self.eps, "rm": self.rm, "convention": self.convention,
                "formula": f"eps * sum over {pairs} of [(rm/d)^12 - 2 (rm/d)^6] + harmonic/2 * sum_i |x_i - mean|^2"}


def make_energy(name: str, convention: str = "ordered") -> PairEnergy:
    """The protocol's energy of data set `name` ('dw4' or 'lj13'; `convention` applies to lj13 only)."""
    if name == "dw4":
        return DoubleWellEnergy()
    if name == "lj13":
        return LennardJonesEnergy(convention=convention)
    raise EnfError(f"unknown particle energy {name!r}; known: dw4, lj13")

