"""An independent LJ13 implementation and sampler in OpenMM: custom forces and Langevin dynamics.

The energy is written from its definition, not from `enf.data.energies`: the Lennard-Jones term is a CustomBondForce
with one bond per unique pair counted twice (the paper's sum over ORDERED pairs i != j) or once (bgflow's), and
the harmonic term a CustomCentroidBondForce tying each particle to its cluster's centroid. Units: 1 nm = 1 length
unit, 1 kJ/mol = 1 energy unit, 1 dalton per particle, and the temperature at which k_B T = 1 kJ/mol. Several
independent clusters (replicas) share one System so that one integrator advances them all.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import numpy as np

from enf.data.energies import LJ13_CONVENTIONS
from enf.errors import EnfError

N_PARTICLES, N_DIM = 13, 3


def import_openmm() -> ModuleType:
    """Import OpenMM lazily, with an install hint if it is missing."""
    try:
        import openmm
    except ImportError:
        raise EnfError("OpenMM is not installed; it is needed for the LJ13 cross-check. Install it with "
                       "`pip install openmm` (or `pip install -e .[md]`)") from None
    return openmm


def unit_temperature() -> float:
    """The temperature in kelvin at which k_B T = 1 kJ/mol."""
    openmm = import_openmm()
    r = openmm.unit.MOLAR_GAS_CONSTANT_R.value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.kelvin)
    return 1.0 / r


def build_system(n_replicas: int = 1, convention: str = "ordered", eps: float = 1.0, rm: float = 1.0,
                 harmonic: float = 1.0) -> Any:
    """An OpenMM System of `n_replicas` non-interacting 13-particle LJ clusters with the LJ13 energy."""
    if convention not in LJ13_CONVENTIONS:
        raise EnfError(f"lj13: unknown energy convention {convention!r}; use one of {LJ13_CONVENTIONS}")
    if n_replicas < 1:
        raise EnfError(f"OpenMM LJ13: need at least one replica, got {n_replicas}")
    openmm = import_openmm()
    system = openmm.System()
    # One bond per unique pair, weighted by how many ordered pairs it stands for (2, or 1 for bgflow's sum).
    lj = openmm.CustomBondForce("copies * eps * ((rm / r)^12 - 2 * (rm / r)^6)")
    lj.addGlobalParameter("copies", 2.0 if convention == "ordered" else 1.0)
    lj.addGlobalParameter("eps", eps)
    lj.addGlobalParameter("rm", rm)
    centroid = openmm.CustomCentroidBondForce(2, "0.5 * k * distance(g1, g2)^2")
    centroid.addGlobalParameter("k", harmonic)
    for rep in range(n_replicas):
        atoms = [rep * N_PARTICLES + i for i in range(N_PARTICLES)]
        for _ in atoms:
            system.addParticle(1.0)
        for i in atoms:
            for j in atoms:
                if i < j:
                    lj.addBond(i, j, [])
        centre = centroid.addGroup(atoms, [1.0] * N_PARTICLES)
        for a in atoms:
            group = centroid.addGroup([a], [1.0])
            centroid.addBond([group, centre], [])
    system.addForce(lj)
    system.addForce(centroid)
    return system


def _context(system: Any, integrator: Any, platform: str) -> Any:
    openmm = import_openmm()
    try:
        plat = openmm.Platform.getPlatformByName(platform)
    except Exception:  # OpenMM raises its own exception type for an unknown platform
        raise EnfError(f"OpenMM platform {platform!r} is not available") from None
    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(system, integrator, plat, props)


def openmm_energy(x: np.ndarray, convention: str = "ordered", platform: str = "Reference") -> np.ndarray:
    """LJ13 energies of configurations (B, 13, 3) evaluated by OpenMM (Reference platform: double precision)."""
    openmm = import_openmm()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (N_PARTICLES, N_DIM):
        raise EnfError(f"OpenMM LJ13: expected positions (batch, 13, 3), got {x.shape}")
    context = _context(build_system(1, convention), openmm.VerletIntegrator(0.001), platform)
    out = np.empty(x.shape[0])
    for b in range(x.shape[0]):
        context.setPositions(x[b])
        state = context.getState(getEnergy=True)
        out[b] = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    return out


def lattice_start(n: int, rng: np.random.Generator, spacing: float = 1.1, jitter: float = 0.05) -> np.ndarray:
    """(n, 13, 3) compact starting clusters: 13 random sites of a 3x3x3 cubic grid, jittered, centred."""
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    idx = np.argsort(rng.random((n, grid.shape[0])), axis=1)[:, :N_PARTICLES]
    x = grid[idx] + rng.normal(scale=jitter, size=(n, N_PARTICLES, N_DIM))
    return x - x.mean(1, keepdims=True)


def langevin_sample(n_replicas: int, n_samples: int, interval: float, burn_in: float, seed: int,
                    convention: str = "ordered", dt: float = 0.005, friction: float = 2.0,
                    platform: str = "CPU") -> dict[str, Any]:
    """Langevin dynamics (BAOAB, LangevinMiddleIntegrator) of independent LJ13 clusters at k_B T = 1.

    Times are in the energy's natural units (ps here). Returns positions (n_samples, n_replicas, 13, 3) taken
    every `interval` after `burn_in`, centred per cluster, and the settings.
    """
    openmm = import_openmm()
    if min(n_replicas, n_samples) < 1 or not (dt > 0 and interval >= dt and burn_in >= 0):
        raise EnfError(f"OpenMM LJ13: bad sampler settings (replicas {n_replicas}, samples {n_samples}, "
                       f"interval {interval}, burn-in {burn_in}, dt {dt})")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    system = build_system(n_replicas, convention)
    integrator = openmm.LangevinMiddleIntegrator(unit_temperature(), friction, dt)
    integrator.setRandomNumberSeed(int(rng.integers(1, 2**31 - 1)))
    context = _context(system, integrator, platform)
    context.setPositions(lattice_start(n_replicas, rng).reshape(-1, N_DIM))
    context.setVelocitiesToTemperature(unit_temperature(), int(rng.integers(1, 2**31 - 1)))
    steps_per_sample = max(1, round(interval / dt))
    integrator.step(round(burn_in / dt))
    out = np.empty((n_samples, n_replicas, N_PARTICLES, N_DIM))
    for s in range(n_samples):
        integrator.step(steps_per_sample)
        pos = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
        x = np.asarray(pos).reshape(n_replicas, N_PARTICLES, N_DIM)
        out[s] = x - x.mean(1, keepdims=True)
    if not np.isfinite(out).all():
        raise EnfError("OpenMM LJ13: Langevin dynamics produced non-finite positions (time step too large?)")
    return {"positions": out, "settings": {
        "integrator": "LangevinMiddleIntegrator", "dt": dt, "friction": friction, "replicas": n_replicas,
        "samples_per_replica": n_samples, "interval": steps_per_sample * dt, "burn_in": burn_in,
        "temperature_kelvin": unit_temperature(), "platform": platform, "seed": seed, "convention": convention,
        "seconds": time.perf_counter() - start}}
