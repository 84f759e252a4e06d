#!/usr/bin/env bash
# The main job on one machine: the whole Snakemake workflow (paper protocol by default) with the local profile.
# Extra arguments go to snakemake, e.g. --configfile config/quick.yaml, -n (dry run), results/tables/table1.md.
# ENF_ENV=gpu runs it from the GPU environment (.venv-gpu, built by `scripts/setup-env.sh gpu`) on a GPU
# workstation. A cluster is not driven through this script: see the README's SLURM section.
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  case "$arg" in
    --profile|--profile=*|--executor|--executor=*|-e)
      echo "run-workflow: '$arg' does not combine with this script's local profile (profiles/local: cores, latency" \
           "and restart settings for one machine); on SLURM run '.venv-gpu/bin/snakemake --profile profiles/slurm'" \
           "(README, 'Reproducing the tables', on a SLURM cluster)" >&2
      exit 2 ;;
  esac
done
case "${ENF_ENV:-cpu}" in
  cpu) venv=.venv ;;
  gpu) venv=.venv-gpu ;;
  *) echo "run-workflow: ENF_ENV must be cpu or gpu, got '${ENF_ENV}'" >&2; exit 2 ;;
esac
scripts/setup-env.sh "${ENF_ENV:-cpu}"
export PATH="$PWD/$venv/bin:$PATH"
exec snakemake --cores all --workflow-profile profiles/local "$@"
