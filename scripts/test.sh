#!/usr/bin/env bash
# Runs the whole test suite: lint, layering contracts, then pytest (which ends with a leak check).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/install.sh --no-start
venv="$here/.venv/bin"
"$venv/ruff" check skiff tests bench
"$venv/lint-imports" --config pyproject.toml
exec "$venv/python" -m pytest "$@"
