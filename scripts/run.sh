#!/usr/bin/env bash
# Set up the environment and run the main job on a sensible default: train LightGCN on
# MovieLens-1M (clean protocol) and print its test metrics. Extra arguments go to `ciess train`.
# The data directory comes from CIESS_DATA_DIR (default: ../shared/data beside this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${CIESS_VENV:-.venv}/bin/activate"
export CIESS_DATA_DIR="${CIESS_DATA_DIR:-../shared/data}"
exec ciess train --dataset ml-1m --backbone lightgcn --sizes full "$@"
