#!/usr/bin/env bash
# The whole product on one machine: set up, build an artifact for MovieLens-1M that fits a byte
# budget with a short pipeline (LightGCN, the CIESS search and the byte planner with few episodes
# and short trainings: minutes, not hours), and serve it on localhost with a job worker, printing
# example requests. A second run reuses the artifact.
#
# Environment: CIESS_DATA_DIR (default ../shared/data beside this checkout), CIESS_STATE_DIR
# (default state/quickstart), CIESS_BUDGET_BYTES (the byte budget: up to 1, a ratio of the dense
# float32 tables' bytes, else a number of bytes; default 0.05), CIESS_BUDGET (a target sparsity
# instead, the paper's parameter budget), CIESS_PORT (8000), CIESS_ADMIN_TOKEN (default: a random
# token kept in $CIESS_STATE_DIR/admin-token; at least 32 characters), CIESS_RECIPE_FILE (default
# scripts/quickstart-recipe.toml).
# The full-length pipeline is `ciess search --budget-bytes 0.05` with the shipped recipe.
set -euo pipefail
# Relative paths given by the caller are the caller's, not the checkout's: made absolute first.
for name in CIESS_DATA_DIR CIESS_STATE_DIR CIESS_RECIPE_FILE; do
    value="${!name:-}"
    if [ -n "$value" ] && [ "${value#/}" = "$value" ]; then
        export "$name=$PWD/$value"
    fi
done
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${CIESS_VENV:-.venv}/bin/activate"
export CIESS_DATA_DIR="${CIESS_DATA_DIR:-../shared/data}"
state="${CIESS_STATE_DIR:-state/quickstart}"
if [ -n "${CIESS_BUDGET:-}" ]; then  # a target sparsity
    budget=$(printf '%g' "$CIESS_BUDGET")
    budget_args=(--budgets "$budget")
    budget_name="sparsity $budget"
    label="$budget"
else  # a byte budget: the product's
    budget=$(printf '%g' "${CIESS_BUDGET_BYTES:-0.05}")
    budget_args=(--budget-bytes "$budget")
    budget_name="a byte budget of $budget"
    label="bytes-$budget"
fi
port="${CIESS_PORT:-8000}"
# Beside the budget jobs' pipelines: a job for another budget copies its full model, teachers
# and supernet (the same data and recipe) instead of training them again.
search="$state/searches/quickstart-ml-1m-lightgcn-$label"
artifact="$state/artifacts/quickstart-ml-1m-lightgcn-$label"
started=$(date +%s)
# The quick search's recipe (scripts/quickstart-recipe.toml), also that of the budget jobs the admin
# endpoint starts (the product pipeline, "search", not equal sizes); set CIESS_RECIPE_FILE to use
# another recipe file, or to "" for the shipped full-length recipe.
export CIESS_RECIPE_FILE="${CIESS_RECIPE_FILE-$PWD/scripts/quickstart-recipe.toml}"
export CIESS_JOB_METHOD="${CIESS_JOB_METHOD:-search}"
recipe=()
if [ -n "$CIESS_RECIPE_FILE" ]; then
    recipe=(--config "$CIESS_RECIPE_FILE")
fi

if [ ! -f "$artifact/manifest.json" ]; then
    echo "== building the first artifact: ml-1m at $budget_name =="
    ciess search --dataset ml-1m --backbone lightgcn "${budget_args[@]}" \
        ${recipe[@]+"${recipe[@]}"} --workers 2 --out "$search"
    # One budget, one folder: budget-<sparsity>, or bytes-<ratio> (a count of bytes is a ratio).
    run=$(find "$search" -mindepth 2 -maxdepth 2 -name run -path "$search/b*" | head -n 1)
    ciess export "$run" --out "$artifact"
    echo "== artifact ready after $(($(date +%s) - started)) s =="
fi

mkdir -p "$state"
if [ -z "${CIESS_ADMIN_TOKEN:-}" ]; then
    # written readable by its owner alone from the start (umask), not made so afterwards
    [ -s "$state/admin-token" ] || (umask 077 && python -c "import secrets; print(secrets.token_hex(32))" >"$state/admin-token")
    chmod 600 "$state/admin-token"
    CIESS_ADMIN_TOKEN=$(cat "$state/admin-token")
    export CIESS_ADMIN_TOKEN
fi
user=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))[0])" "$artifact/ids/users.json")
cat <<EXAMPLES
== serving $artifact on http://127.0.0.1:$port (docs: http://127.0.0.1:$port/docs) ==
  curl http://127.0.0.1:$port/readyz
  curl 'http://127.0.0.1:$port/v1/users/$user/recommendations?k=10'
  curl -X POST http://127.0.0.1:$port/v1/recommendations -H 'Content-Type: application/json' \\
       -d '{"user_ids": ["$user"], "k": 5}'
  curl http://127.0.0.1:$port/v1/model
  # a new budget (admin token in $state/admin-token unless CIESS_ADMIN_TOKEN was set):
  curl -X POST http://127.0.0.1:$port/v1/admin/budget -H "Authorization: Bearer \$(cat $state/admin-token)" \\
       -H 'Content-Type: application/json' -d '{"max_bytes": 125000}'
EXAMPLES
exec ciess serve --artifact-dir "$artifact" --state-dir "$state" --port "$port"
