#!/usr/bin/env bash
# The distilled ML-1M CIESS pipeline timed from scratch on a lent GPU machine, to sit beside the
# same command's CPU figures in docs/benchmarks/ciess-ml-1m.md (time bar of the CIESS issue).
#   1. LightGCN, alone on the machine: full model and test-phase teacher side by side, supernet,
#      search, share fit, distilled retraining of the three budgets (two workers sharing the GPU).
#      The near-tie order of the measured rows (--even-tolerance 0.002) is gone; it ordered the
#      share fit's variants and cost nothing.
#   2. then, with the time left, NGCF with the same settings and its own recipe (L2 1e-3, lr 0.003).
# Rows go to $OUT/rows/*.json, logs to $OUT/logs. Fold them in here with
#   python bench/ciess.py merge <files/rows/ciess-ml-1m-*.json>
# Usage (device machine, repository root): DATA=<data dir> bash bench/gpu_timed.sh
set -u
DATA=${DATA:-.gpu-data}
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-timed-out}
LIGHTGCN_SECONDS=${LIGHTGCN_SECONDS:-300}
NGCF_SECONDS=${NGCF_SECONDS:-230}
mkdir -p "$OUT/rows" "$OUT/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONPATH=$PWD
nvidia-smi -L 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
common=(--data-dir "$DATA" --weight-decay 1e-3 --protocol reference --supernet-batches 2000
    --retrain-top 1 --item-quality own --fit-shares --distill --distill-teacher phase
    --workers 2 --from-scratch --device cuda --no-progress)
started=$(date +%s)
timeout -s INT "$LIGHTGCN_SECONDS" $PY bench/ciess.py run --backbone lightgcn "${common[@]}" \
    --results "$OUT/rows/ciess-ml-1m-lightgcn-cuda.json" >"$OUT/logs/lightgcn.log" 2>&1
echo "lightgcn exit $? after $(($(date +%s) - started)) s"
started=$(date +%s)
timeout -s INT "$NGCF_SECONDS" $PY bench/ciess.py run --backbone ngcf --learning-rate 0.003 \
    "${common[@]}" --results "$OUT/rows/ciess-ml-1m-ngcf-cuda.json" >"$OUT/logs/ngcf.log" 2>&1
echo "ngcf exit $? after $(($(date +%s) - started)) s"
for log in "$OUT"/logs/*.log; do
    echo "== $(basename "$log"): $(grep -E 'pipeline call|Error|error' "$log" | tail -n 3 | tr '\n' ' ')"
done
