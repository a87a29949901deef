#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv with everything the trainer, service and tests
# need. torch is installed first and pinned to the CPU wheel, so that nothing later pulls a
# multi-GB CUDA build; set CIESS_TORCH_SPEC to choose another (e.g. "torch==2.13.0" from a CUDA
# index with PIP_EXTRA_INDEX_URL) on a GPU machine. CIESS_EXTRAS: the package's extras to install
# (default train,serve,dev; the tests add ray).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CIESS_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install --quiet "${CIESS_TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install --quiet -e ".[${CIESS_EXTRAS:-train,serve,dev}]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch, ciess_core; print(f'ready: torch {torch.__version__}, ciess {ciess_core.__version__}')"
