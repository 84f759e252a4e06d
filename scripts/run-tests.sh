#!/usr/bin/env bash
# The test suite: lint, then pytest (both cores). Extra arguments go to pytest, e.g. -k egnn.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh test
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
exec python -m pytest -n 2 --dist loadfile -q --durations=15 "$@"
