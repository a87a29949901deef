#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv with everything the trainer, service and tests
# need. torch is installed first, as the CPU build (torch==<version>+cpu, which no CUDA wheel
# matches: from pip's own sources when they hold it, else from PyTorch's CPU index; where no such
# build exists, macOS say, the plain release, which is CPU-only there), so that nothing later
# pulls a multi-GB CUDA build; set CIESS_TORCH_SPEC to choose another (e.g. "torch==2.13.0" with
# PIP_EXTRA_INDEX_URL naming a CUDA index) on a GPU machine. CIESS_EXTRAS: the package's extras
# to install (default train,serve,dev; the tests add ray).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CIESS_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
torch_version=2.13.0
# pip quietly: nothing on success (its warnings about editable builds and locations are noise
# here); on failure its whole output and a line naming the install, then the script stops.
quiet_pip() {
    local log
    log=$(mktemp)
    if ! python -m pip install --quiet "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup: pip install $* failed (pip's output above)" >&2
        exit 1
    fi
    rm -f "$log"
}
if [ -n "${CIESS_TORCH_SPEC:-}" ]; then
    quiet_pip "$CIESS_TORCH_SPEC"
elif ! python -m pip install --quiet "torch==$torch_version+cpu" >/dev/null 2>&1; then
    if [ "$(uname -s)" = Linux ]; then
        # Linux's plain release is the CUDA build (GBs): only the CPU build is installed here
        quiet_pip "torch==$torch_version+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
    elif ! python -m pip install --quiet "torch==$torch_version+cpu" \
        --extra-index-url https://download.pytorch.org/whl/cpu >/dev/null 2>&1; then
        quiet_pip "torch==$torch_version"  # macOS, say: the plain release is CPU-only there
    fi
fi
# -W ignore: numpy is not installed yet, and torch warns about it on import.
python -W ignore -c "import sys, torch; sys.exit(f'torch {torch.__version__} is a CUDA build: set CIESS_TORCH_SPEC' if torch.version.cuda and not '${CIESS_TORCH_SPEC:-}' else 0)"
quiet_pip -e ".[${CIESS_EXTRAS:-train,serve,dev}]"
python -c "import torch, ciess_core; print(f'ready: torch {torch.__version__}, ciess {ciess_core.__version__}')"
