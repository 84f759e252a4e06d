"""Data sets: generation (MCMC for DW4/LJ13, qm9pack for QM9), splits, loading and validation."""
