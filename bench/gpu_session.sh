#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see docs/benchmarks/*.md for what it produced).
#
# Runs at once, one process each (the GPU is shared; each process uses one CPU thread):
#   - the CIESS pipeline on Yelp2018 LightGCN (full model, supernet, search, share fit, retraining);
#   - the Yelp2018 LightGCN baselines: full, ES and MR at 0.80/0.90/0.95;
#   - the ML-1M NGCF baselines (full, ES, MR) with a longer cap than the CPU rows had;
#   - optionally, ML1M_CIESS="ngcf:1e-3:0.003 ncf:1e-3:0.001" (backbone:L2:lr, space-separated):
#     the CIESS pipeline on ML-1M for those backbones, rows to rows/ciess-ml-1m-<backbone>.json;
# then, alone on the machine, the training-batch / evaluation timings and the paper's evaluator
# cost per iteration. Every row goes to its own JSON under rows/; logs and the Yelp search folder
# (without model weights) are packed into $OUT/results.tar.gz. Fold them in here with
#   python bench/backbones.py merge rows/bb-*.json
#   python bench/ciess.py merge --dataset yelp2018 rows/ciess-yelp2018.json
#   python bench/ciess.py merge rows/ciess-ml-1m-*.json
#
# Usage (device machine, repository root): DATA=<data dir> bash bench/gpu_session.sh
set -u
DATA=${DATA:-.gpu-data}
JOB_SECONDS=${JOB_SECONDS:-430}
NGCF_BATCHES=${NGCF_BATCHES:-10000}
YELP_BATCHES=${YELP_BATCHES:-4000}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-session-out}
WORKDIR=$(mktemp -d)
mkdir -p "$OUT" "$WORKDIR/rows" "$WORKDIR/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD
PY=${PY:-python3}
EXTRA_CIESS_ARGS=${EXTRA_CIESS_ARGS:-}  # e.g. "--episodes 2 --iterations 2" for a dry run
PAPER_BATCHES=${PAPER_BATCHES:-1500}
ML1M_CIESS=${ML1M_CIESS:-}
started=$(date +%s)
nvidia-smi -L 2>/dev/null || true
$PY -c "import torch, numpy, scipy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

launch() {  # name, command...
    local name=$1
    shift
    (timeout -s INT "$JOB_SECONDS" "$@" >"$WORKDIR/logs/$name.log" 2>&1; echo "exit $?" >>"$WORKDIR/logs/$name.log") &
}

launch ciess-yelp2018 $PY bench/ciess.py run --dataset yelp2018 --data-dir "$DATA" \
    --backbone lightgcn --weight-decay 1e-3 --protocol reference --supernet-batches 2000 \
    --retrain-top 1 --item-quality own --fit-shares --max-batches "$YELP_BATCHES" \
    --device "$DEVICE" --results "$WORKDIR/rows/ciess-yelp2018.json" --no-progress $EXTRA_CIESS_ARGS
for recipe in $ML1M_CIESS; do
    IFS=: read -r backbone decay rate <<<"$recipe"
    launch "ciess-ml-1m-$backbone" $PY bench/ciess.py run --data-dir "$DATA" --backbone "$backbone" \
        --weight-decay "$decay" --learning-rate "$rate" --protocol reference --supernet-batches 2000 \
        --retrain-top 1 --item-quality own --fit-shares --device "$DEVICE" --no-progress \
        --results "$WORKDIR/rows/ciess-ml-1m-$backbone.json" $EXTRA_CIESS_ARGS
done
for method_target in full:0.8 es:0.8 es:0.9 es:0.95 mr:0.8 mr:0.9 mr:0.95; do
    method=${method_target%%:*}
    target=${method_target##*:}
    launch "bb-yelp-$method-$target" $PY bench/backbones.py quality --dataset yelp2018 \
        --data-dir "$DATA" --backbones lightgcn --methods "$method" --sparsities "$target" \
        --weight-decay lightgcn=1e-3 --max-batches "$YELP_BATCHES" --device "$DEVICE" \
        --results "$WORKDIR/rows/bb-yelp-$method-$target.json" --no-progress
    launch "bb-ngcf-$method-$target" $PY bench/backbones.py quality --dataset ml-1m \
        --data-dir "$DATA" --backbones ngcf --methods "$method" --sparsities "$target" \
        --weight-decay ngcf=1e-3 --learning-rate ngcf=0.003 --max-batches "$NGCF_BATCHES" \
        --device "$DEVICE" --results "$WORKDIR/rows/bb-ngcf-$method-$target.json" --no-progress
done
wait
echo "parallel jobs done after $(($(date +%s) - started)) s"

timeout 75 $PY bench/backbones.py speed --data-dir "$DATA" --device "$DEVICE" \
    --output "$WORKDIR/rows/speed-$DEVICE.json" >"$WORKDIR/logs/speed.log" 2>&1
echo "speed exit $?"
timeout 45 $PY bench/ciess.py paper-cost --data-dir "$DATA" --backbone lightgcn --weight-decay 1e-3 \
    --device "$DEVICE" --paper-batches "$PAPER_BATCHES" >"$WORKDIR/logs/paper-cost.log" 2>&1
echo "paper-cost exit $?"
cp bench/_work/paper-cost-*.json "$WORKDIR/rows/" 2>/dev/null
# Search folders without weights, checkpoints or candidates (the reports need traces and sizes).
(cd bench/_work && tar --exclude='*.pt' --exclude=checkpoint --exclude=pool --exclude='candidate_*' \
    --exclude='*quality.npy' -cf "$WORKDIR/search-work.tar" ciess-* 2>/dev/null)
for log in "$WORKDIR"/logs/*.log; do
    echo "== $(basename "$log"): $(tail -n 2 "$log" | tr '\n' ' ')"
done
tar -czf "$OUT/results.tar.gz" -C "$WORKDIR" rows logs search-work.tar
ls -la "$OUT"
echo "total $(($(date +%s) - started)) s"
