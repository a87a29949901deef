#!/usr/bin/env bash
# A short follow-up on a lent GPU machine, after bench/gpu_session.sh:
#   - Yelp2018 LightGCN full and ES@80 % with a longer cap (were the 4,000-batch rows under-trained?);
#   - NGCF ES@95 % on ML-1M: weight decay × learning rate on validation only (`tune`), since the
#     test row plateaued well under the paper's at L2 1e-3 / lr 0.003.
# Rows go to rows/*.json, packed with the logs into $OUT/probe.tar.gz. Fold in here with
#   python bench/backbones.py merge rows/bb-*.json; python bench/backbones.py merge --tuning rows/tune-*.json
set -u
DATA=${DATA:-.gpu-data}
JOB_SECONDS=${JOB_SECONDS:-200}
YELP_BATCHES=${YELP_BATCHES:-10000}
TUNE_BATCHES=${TUNE_BATCHES:-6000}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-probe-out}
WORKDIR=$(mktemp -d)
mkdir -p "$OUT" "$WORKDIR/rows" "$WORKDIR/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD
launch() {  # name, command...
    local name=$1
    shift
    (timeout -s INT "$JOB_SECONDS" "$@" >"$WORKDIR/logs/$name.log" 2>&1; echo "exit $?" >>"$WORKDIR/logs/$name.log") &
}
for method in full es; do
    launch "bb-yelp-$method-long" $PY bench/backbones.py quality --dataset yelp2018 --data-dir "$DATA" \
        --backbones lightgcn --methods "$method" --sparsities 0.8 --weight-decay lightgcn=1e-3 \
        --max-batches "$YELP_BATCHES" --device "$DEVICE" --no-progress \
        --results "$WORKDIR/rows/bb-yelp-$method-long.json"
done
for recipe in 1e-3:0.003 1e-4:0.003 1e-3:0.01 1e-4:0.01; do
    decay=${recipe%%:*}
    rate=${recipe##*:}
    launch "tune-ngcf-es95-$decay-$rate" $PY bench/backbones.py tune --data-dir "$DATA" \
        --backbones ngcf --methods es --sparsities 0.95 --weight-decays "$decay" \
        --learning-rates "$rate" --max-batches "$TUNE_BATCHES" --device "$DEVICE" --no-progress \
        --results "$WORKDIR/rows/tune-ngcf-es95-$decay-$rate.json"
done
wait
for log in "$WORKDIR"/logs/*.log; do
    echo "== $(basename "$log"): $(tail -n 2 "$log" | tr '\n' ' ')"
done
tar -czf "$OUT/probe.tar.gz" -C "$WORKDIR" rows logs
