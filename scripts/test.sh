#!/usr/bin/env bash
# Set up the environment and run every check CI runs: lint, format, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CIESS_EXTRAS="${CIESS_EXTRAS:-train,serve,dev,ray}" bash scripts/setup.sh
# shellcheck disable=SC1091
. "${CIESS_VENV:-.venv}/bin/activate"
echo "== ruff"; ruff check ciess_core service tests bench
echo "== ruff format"; ruff format --check ciess_core service tests bench
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; pytest "$@"
