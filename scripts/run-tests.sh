#!/usr/bin/env bash
# The test suite: lint, then pytest. Extra arguments go to pytest, e.g. -k egnn.
# Three workers on two cores: the workflow tests spend much of their time waiting (SLURM's queue, Snakemake's
# job polling), and the longest modules start first (tests/conftest.py orders them; xdist's own reordering by
# test count is off).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh test
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
exec python -m pytest -n 3 --dist loadfile --no-loadscope-reorder -q --durations=15 "$@"
