"""How well the for-items route's visitor stands in for a trained user: recall@k on held-out items.

Each user with held-out items is ranked several ways, its training items excluded from all:
``trained`` (the artifact scorer's top-k for the user's own vector), ``for_items`` (a visitor built
from the user's training items by :func:`service.ranking.visitor_vector`, what
``POST /v1/recommendations/for-items`` does), ``popular`` (most training interactions first, the
unknown-user fallback), and two visitors the service does not use, for comparison: ``mean_items``
(the mean of the items' vectors) and ``propagated`` (LightGCN's one propagation step from the
items' final vectors, ``Σ y_i / sqrt(|S| (d_i + 1))``).

Usage:
    python bench/for_items.py --artifact ARTIFACT_DIR --data-dir ../shared/data [--k 20]
    python bench/for_items.py --artifact NEW_DIR --train ml-1m:lightgcn --data-dir ../shared/data

The held-out items are the interactions of the artifact's dataset (named in its manifest) that it
did not train on: a TEST-phase export's test interactions (a deployment export has none).
``--train DATASET:BACKBONE`` first makes such an artifact when ``--artifact`` does not exist: the
full model of the shipped recipe trained as ``ciess train`` tests it (batches selected on
validation, then trained on train ∪ validation), exported before any deployment training. Each
run adds a row to ``docs/benchmarks/for-items.json`` and rewrites ``for-items.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import load_rows, provenance, save_json, write_with_findings

from ciess_core.data import load_dataset, resolve_data_dir
from ciess_core.errors import DataError
from ciess_core.evaluation import ranking_metrics_from_hits
from service.model_holder import ServedModel, load_served_model
from service.ranking import (
    FloatArray,
    IdArray,
    item_degrees,
    item_geometry,
    top_items,
    visitor_vector,
)

logger = logging.getLogger(__name__)
REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def mean_items_visitor(model: ServedModel, items: IdArray) -> FloatArray:
    """The mean of the items' vectors."""
    geometry = item_geometry(model)
    return np.asarray(geometry.norms[items] @ geometry.unit[items] / items.size, np.float32)


def propagated_visitor(model: ServedModel, items: IdArray) -> FloatArray:
    """One LightGCN propagation step from the items' final vectors (no layer-0 share)."""
    geometry = item_geometry(model)
    weights = geometry.norms[items] / np.sqrt(items.size * (item_degrees(model)[items] + 1.0))
    return np.asarray(weights @ geometry.unit[items], np.float32)


VISITORS = {
    "for_items": visitor_vector,
    "mean_items": mean_items_visitor,
    "propagated": propagated_visitor,
}


def held_out_recall(model: ServedModel, held_out: sp.csr_matrix, k: int = 20) -> dict[str, float]:
    """Mean recall@k of the three rankings over users with training and held-out items.

    Args:
        model: the served model.
        held_out: (num_users, num_items) binary CSR in the artifact's internal ids, disjoint from
            its seen (training) matrix.
        k: list length.

    Returns:
        recall@k of ``trained``, ``popular`` and each of :data:`VISITORS`, and ``users`` (how many
        counted).
    """
    scorer = model.scorer
    seen = scorer.seen
    has_both = (np.diff(held_out.indptr) > 0) & (np.diff(seen.indptr) > 0)
    users = np.flatnonzero(has_both)
    seen_mask = seen[users].toarray() > 0
    relevant = held_out[users].toarray() > 0
    if (seen_mask & relevant).any():
        raise DataError("held-out interactions overlap the artifact's training interactions")
    every = np.arange(scorer.num_items)

    def masked_top(scores: np.ndarray) -> np.ndarray:
        scores[seen_mask] = -np.inf
        items, _ = top_items(scores, every, k)
        return items

    geometry = item_geometry(model)
    rankings = {
        "trained": scorer.recommend(users, k)[0],
        "popular": masked_top(np.tile(item_degrees(model), (users.size, 1))),
    }
    for name, visitor in VISITORS.items():
        profiles = [
            seen.indices[seen.indptr[u] : seen.indptr[u + 1]].astype(np.int64) for u in users
        ]
        vectors = np.stack([visitor(model, items) for items in profiles])
        rankings[name] = masked_top((vectors @ geometry.unit.T) * geometry.norms)
    result = {"users": float(users.size)}
    for name, items in rankings.items():
        hits = np.take_along_axis(relevant, np.clip(items, 0, None), axis=1) & (items >= 0)
        metrics = ranking_metrics_from_hits(hits, relevant.sum(axis=1), ks=(k,))
        result[name] = float(metrics[f"recall@{k}"].mean())
    return result


def artifact_held_out(model: ServedModel, data_dir: Path) -> sp.csr_matrix:
    """Every interaction of the artifact's dataset that it did not train on (a TEST-phase
    export's test interactions), in the artifact's ids.

    Raises:
        DataError: other data than the artifact's, or nothing held out (a deployment export).
    """
    dataset = model.scorer.manifest.dataset
    data = load_dataset(str(dataset["name"]), data_dir)
    if dataset.get("fingerprint") and data.fingerprint() != dataset["fingerprint"]:
        raise DataError(f"{dataset['name']}: not the data the artifact was trained on")
    users = model.scorer.user_index(data.external_user_ids.tolist())
    items = model.scorer.item_index([str(i) for i in data.external_item_ids])
    every = data.to_csr().tocoo()
    keep = (users[every.row] >= 0) & (items[every.col] >= 0)
    shape = (model.scorer.num_users, model.scorer.num_items)
    rows, columns = users[every.row[keep]], items[every.col[keep]]
    known = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, columns)), shape=shape)
    held_out = (known > 0).astype(np.float32) - (model.scorer.seen > 0).astype(np.float32)
    held_out = sp.csr_matrix(held_out > 0, dtype=np.float32)
    if held_out.nnz == 0:
        raise DataError(
            f"{model.version} was trained on every interaction of {dataset['name']}: nothing is "
            "held out (export a TEST-phase model)"
        )
    return held_out


def train_test_phase_artifact(dataset: str, backbone: str, data_dir: Path, out: Path) -> Path:
    """The full model of the shipped recipe for ``dataset`` and ``backbone``, trained as the
    clean protocol tests it (on train ∪ validation), exported to ``out`` with those
    interactions as its seen items: its test interactions stay held out."""
    from ciess_core.artifact.export import ExportMetadata, export_model
    from ciess_core.data import Phase
    from ciess_core.pipeline import SPLIT_SEED, load_split, pipeline_spec
    from ciess_core.runs import RunSpec, execute_run, run_sizes
    from ciess_core.sizes import SizeScheme

    recipe = pipeline_spec(dataset, backbone)
    spec = RunSpec(
        dataset=dataset,
        backbone=recipe.backbone,
        training=recipe.training,
        size_scheme=SizeScheme.FULL,
        split_seed=SPLIT_SEED,
    )
    split, fingerprint = load_split(dataset, data_dir)
    sizes = run_sizes(spec, split.num_users, split.num_items)
    model, outcome, _ = execute_run(spec, split, sizes, progress=False)
    trained, _ = split.phase(Phase.TEST)
    metadata = ExportMetadata(
        dataset=dataset,
        dataset_fingerprint=fingerprint,
        split_seed=SPLIT_SEED,
        size_scheme="full",
        metrics={"protocol": "clean", "test": outcome.test_metrics},
        source="bench/for_items.py",
        trained_on="train+valid",
    )
    ids = (split.external_user_ids, split.external_item_ids)
    return export_model(model.eval(), trained, *ids, out, metadata)


def write_report(rows: list[dict[str, Any]]) -> None:
    lines = [
        "# A visitor known by its items, against the user's own vector",
        "",
        "Written by `bench/for_items.py` from `for-items.json`. Recall@k on each user's "
        "held-out (test) items, the user's training items excluded from every ranking: "
        "`trained` ranks by the user's own vector, `for_items` by the visitor that "
        "`POST /v1/recommendations/for-items` builds from the user's training items, "
        "`popular` by training interactions (the unknown-user fallback); `mean_items` and "
        "`propagated` are visitors the service does not use.",
        "",
        "| date | machine | dataset | backbone | artifact | users | k | trained | for_items "
        "| mean_items | propagated | popular | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shares = " | ".join(
            f"{row[name]:.4f} ({row[name] / row['trained']:.2f})"
            for name in ("for_items", "mean_items", "propagated", "popular")
        )
        lines.append(
            f"| {row['date']} | {row['machine']} | {row['dataset']} | {row['backbone']} | "
            f"{row['artifact']} | {int(row['users']):,} | {row['k']} | {row['trained']:.4f} | "
            f"{shares} | `{row['command']}` |"
        )
    lines += ["", "In brackets: the share of `trained`'s recall."]
    write_with_findings(REPORTS / "for-items.md", lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="a TEST-phase artifact")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $CIESS_DATA_DIR")
    parser.add_argument(
        "--train", metavar="DATASET:BACKBONE", help="make the artifact first if it is missing"
    )
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = resolve_data_dir(args.data_dir)
    if args.train and not args.artifact.exists():
        dataset, _, backbone = args.train.partition(":")
        train_test_phase_artifact(dataset, backbone or "lightgcn", data_dir, args.artifact)
    started = time.perf_counter()
    model = load_served_model(args.artifact, args.threads)
    result = held_out_recall(model, artifact_held_out(model, data_dir), args.k)
    backbone = model.scorer.manifest.backbone
    print(f"{backbone} {model.version}: recall@{args.k} over {int(result['users'])} users")
    for name in ("trained", *VISITORS, "popular"):
        print(
            f"  {name:<10} {result[name]:.4f}  ({result[name] / result['trained']:.2f} of trained)"
        )
    print(f"  ({time.perf_counter() - started:.1f} s)")
    row = {
        **provenance(),
        "dataset": str(model.scorer.manifest.dataset["name"]),
        "backbone": backbone,
        "artifact": args.artifact.name,
        "k": args.k,
        **result,
    }
    rows = [*load_rows(REPORTS / "for-items.json"), row]
    save_json(REPORTS / "for-items.json", rows)
    write_report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
