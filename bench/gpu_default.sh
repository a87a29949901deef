#!/usr/bin/env bash
# The default pipeline on a lent GPU machine, four runs at once on the one GPU (each its own
# processes): LightGCN clean, LightGCN reference (paper tables), NGCF clean, NCF clean; beside
# each, plain ES in a process of its own. Rows (rows/*.json), logs and the work folders' JSON
# files are packed into $OUT/results.tar.gz. Fold the rows in here with
#   tar xzf results.tar.gz && python bench/default_pipeline.py merge rows/*.json
# Usage (device machine, repository root): DATA=<data dir> bash bench/gpu_default.sh
set -u
DATA=${DATA:-.gpu-data}
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-default-out}
SECONDS_EACH=${SECONDS_EACH:-500}
WORKDIR=$(mktemp -d)
mkdir -p "$OUT" "$WORKDIR/logs" "$WORKDIR/rows"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONPATH=$PWD
nvidia-smi -L 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
started=$(date +%s)
for run in lightgcn:clean lightgcn:reference ngcf:clean ncf:clean; do
    backbone=${run%%:*}
    protocol=${run##*:}
    name="$backbone-$protocol"
    args=(run --data-dir "$DATA" --backbone "$backbone" --protocol "$protocol" --device cuda
        --no-progress --work "$WORKDIR/work-$name")
    timeout -s INT "$SECONDS_EACH" $PY bench/default_pipeline.py "${args[@]}" --part pipeline \
        --workers 3 --results "$WORKDIR/rows/$name-pipeline.json" >"$WORKDIR/logs/$name.log" 2>&1 &
    sleep 4  # the pipeline process writes the run id first
    timeout -s INT "$SECONDS_EACH" $PY bench/default_pipeline.py "${args[@]}" --part es \
        --results "$WORKDIR/rows/$name-es.json" >"$WORKDIR/logs/$name-es.log" 2>&1 &
done
wait
echo "all done after $(($(date +%s) - started)) s"
for log in "$WORKDIR"/logs/*.log; do
    echo "== $(basename "$log"): $(grep -E 'rows of run|Error|error' "$log" | tail -n 2 | tr '\n' ' ')"
done
(cd "$WORKDIR" && find . -name '*.json' -o -name '*.log' -o -name '*.jsonl' | tar czf "$OUT/results.tar.gz" -T -)
ls -la "$OUT"
