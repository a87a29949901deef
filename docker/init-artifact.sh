#!/bin/sh
# ciess-init: the one-shot that builds the first artifact when the state volume has none.
#
# It trains a model on $CIESS_INIT_DATASET (under $CIESS_DATA_DIR) with `ciess train`, flags from
# $CIESS_INIT_TRAIN_ARGS, and exports it to $CIESS_ARTIFACT_DIR, the artifact that the API and the
# worker serve until a budget job promotes another one (state_dir/current.json). With a model
# already there (current.json or the exported artifact) it does nothing, so it is safe on every
# `up`. The training run itself goes to a temporary folder and is discarded.
set -eu

state=${CIESS_STATE_DIR:?CIESS_STATE_DIR is not set}
target=${CIESS_ARTIFACT_DIR:?CIESS_ARTIFACT_DIR is not set}
dataset=${CIESS_INIT_DATASET:-ml-1m}
train_args=${CIESS_INIT_TRAIN_ARGS:---sizes equal --sparsity 0.9}

if [ -f "$state/current.json" ]; then
    echo "ciess-init: $state/current.json exists (a job promoted a model); nothing to do"
    exit 0
fi
if [ -f "$target/manifest.json" ]; then
    echo "ciess-init: $target already holds an artifact; nothing to do"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "ciess-init: no model in $state: training $dataset ($train_args)"
started=$(date +%s)
# shellcheck disable=SC2086  # the flags are meant to be split into words
ciess train --dataset "$dataset" --no-progress $train_args --out "$work/run"
mkdir -p "$(dirname "$target")"
ciess export "$work/run" --out "$target"
echo "ciess-init: exported $target in $(($(date +%s) - started)) s"
