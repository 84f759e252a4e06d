#!/usr/bin/env bash
# Create or update a virtual environment from the pinned requirements; idempotent.
# Usage: scripts/setup-env.sh [cpu|test|gpu]   (default test)
#   cpu   -> .venv      the pinned CPU environment (envs/requirements-cpu.txt)
#   test  -> .venv      cpu + pytest, pytest-xdist, ruff (envs/requirements-test.txt)
#   gpu   -> .venv-gpu  the same packages with a CUDA build of torch from the PyTorch wheel index
#                       (envs/requirements-gpu.txt); for cluster nodes and workstations with NVIDIA GPUs
# Environment: ENF_VENV=DIR puts the environment elsewhere; PYTHON=python3.11 picks the interpreter that creates
# it; ENF_SETUP_DRY_RUN=1 prints what would be used (kind, environment, requirements file) and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-test}"
case "$kind" in
  cpu|test) venv="${ENF_VENV:-.venv}"; hashed="envs/requirements-cpu.txt envs/requirements-test.txt" ;;
  gpu) venv="${ENF_VENV:-.venv-gpu}"; hashed="envs/requirements-cpu.txt envs/requirements-gpu.txt" ;;
  *) echo "setup-env: unknown kind '$kind' (use cpu, test or gpu)" >&2; exit 2 ;;
esac
req="envs/requirements-${kind}.txt"
[ -f "$req" ] || { echo "setup-env: no $req" >&2; exit 2; }
if [ -n "${ENF_SETUP_DRY_RUN:-}" ]; then
  echo "kind=$kind venv=$venv requirements=$req"
  exit 0
fi
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-env: creating $venv with $($python --version 2>&1)" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.enf-${kind}-stamp"
# shellcheck disable=SC2086  # $hashed is a list of file names
want="$(cat $hashed pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup-env: installing $req into $venv (first use; a few minutes, the GPU build a few GB)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r "$req"
  "$venv/bin/python" -m pip install --quiet --no-deps -e .
  if [ "$kind" = gpu ]; then  # a CPU torch here would make every GPU job refuse to start: say so now
    "$venv/bin/python" -c 'import sys, torch
if torch.version.cuda is None:
    sys.exit(f"setup-env: {torch.__version__} is a CPU-only torch; a pip configuration (PIP_INDEX_URL, pip.conf) "
             "may hide the PyTorch CUDA index named in envs/requirements-gpu.txt")
gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(f"setup-env: torch {torch.__version__} (CUDA {torch.version.cuda}); {gpus} GPU(s) usable on this machine "
      "(none is normal on a login node)", file=sys.stderr)'
  fi
  echo "$want" > "$stamp"
fi
