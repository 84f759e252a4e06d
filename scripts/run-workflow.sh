#!/usr/bin/env bash
# The main job: the whole Snakemake workflow (paper protocol by default). Extra arguments go to snakemake,
# e.g. --configfile config/quick.yaml, -n (dry run), results/tables/table1.md (one target).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh cpu
export PATH="$PWD/.venv/bin:$PATH"
exec snakemake --cores all --workflow-profile profiles/local "$@"
