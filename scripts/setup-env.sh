#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) from the pinned requirements; idempotent.
# Usage: scripts/setup-env.sh [cpu|test]   (test = cpu + pytest/ruff; default test)
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-test}"
req="envs/requirements-${kind}.txt"
[ -f "$req" ] || { echo "setup-env: no $req (use cpu or test)" >&2; exit 2; }
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup-env: creating .venv with $($python --version 2>&1)" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.enf-${kind}-stamp"
want="$(cat envs/requirements-*.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup-env: installing $req into .venv (first use; a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$req"
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
