"""Artifact benchmark: parity with PyTorch, bytes on disk against the budget, load and scoring speed.

Usage:
    python bench/artifact.py --dataset ml-1m --data-dir ../shared/data
    python bench/artifact.py --dataset yelp2018 --data-dir ../shared/data --sections load,speed
    python bench/artifact.py --dataset ml-1m --runs runs/a runs/b          # parity of trained runs
    python bench/artifact.py --dataset ml-1m --ciess-sizes 0.9=sizes.npz   # CIESS rows of "size"
    python bench/artifact.py --tiny --out /tmp/artifact-bench              # seconds, generated data

Sections (``--sections``, default all):
- parity: for LightGCN, NGCF and NCF (trained runs given with --runs, else fresh models trained
  for --train-batches BPR batches at MR sizes), every user's top-20 from the artifact scorer vs
  the PyTorch model (seen items excluded), and the largest score difference.
- size: values bytes on disk vs (1 - c) x the dense float32 table x 1.01 + sizes, for ES, MR
  (and CIESS, when --ciess-sizes gives its assignments) at 0.80/0.90/0.95, LightGCN (one table)
  and NCF (two tables).
- load: seconds from directory to a ready scorer (validation, hashing, propagation, sessions),
  the embedding store's bytes on disk and the scorer's resident bytes, at full size, ES 0.9 and
  MR 0.9; LightGCN and NCF once per value type of ``ciess_core.storage.VALUE_TYPES``, NGCF as
  float32.
- speed: users/s at batch 1 and 256 for top-20 with the bucketed layout, one zero-padded dense
  matrix at d_max (`experiments/layouts.py`), and PyTorch eager, for ES/MR at 0.9 and full size.

Results go to ``OUT/artifact.json`` (one entry per dataset, re-running a dataset replaces it) and
``OUT/artifact.md`` is rewritten from the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import write_with_findings
from cli_help import DefaultsHelp
from experiments.layouts import PaddedScorer
from machine_info import cpu_description

from ciess_core.artifact.export import ExportOptions, export_model, export_run, load_run
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions
from ciess_core.data import (
    DatasetSplit,
    InteractionData,
    Phase,
    load_dataset,
    resolve_data_dir,
    split_per_user,
)
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.sizes import SizeAssignment, SizeScheme, assign_sizes
from ciess_core.storage import VALUE_TYPES
from ciess_core.training import TrainConfig, train_bpr

ROOT = Path(__file__).resolve().parent.parent
TOP_K = 20
TARGETS = (0.8, 0.9, 0.95)
# Backbones whose load section covers every value type (NGCF: float32 only).
LOAD_VALUE_TYPE_BACKBONES = (BackboneKind.LIGHTGCN, BackboneKind.NCF)
LOAD_REPEATS = 3
logger = logging.getLogger("bench.artifact")


def machine(threads: int) -> str:
    return f"{cpu_description()}, {threads} thread(s), torch {torch.__version__}"


def tiny_data() -> InteractionData:
    """Clustered interactions, like the tests' fixture, a little larger."""
    rng = np.random.default_rng(0)
    num_users, num_items, clusters = 400, 300, 5
    users, items = [], []
    for user in range(num_users):
        own = np.flatnonzero(np.arange(num_items) % clusters == user % clusters)
        chosen = np.concatenate([rng.choice(own, 15, replace=False), rng.choice(num_items, 3)])
        users += [user] * len(chosen)
        items += chosen.tolist()
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    return InteractionData(
        user_ids=pairs[:, 0].astype(np.int64),
        item_ids=pairs[:, 1].astype(np.int64),
        external_user_ids=np.asarray([f"u{u}" for u in range(num_users)]),
        external_item_ids=np.asarray([f"i{i}" for i in range(num_items)]),
        source="generated clusters",
    )


def fresh_model(
    kind: BackboneKind,
    train: sp.csr_matrix,
    sizes: SizeAssignment,
    train_batches: int,
    seed: int = 0,
) -> Backbone:
    model = build_backbone(
        BackboneConfig.default_for(kind), train, torch.Generator().manual_seed(seed)
    )
    model.set_size_assignment(sizes)
    if train_batches:
        config = TrainConfig(
            batch_size=min(10_000, train.shape[0]),
            max_batches=train_batches,
            eval_every=0,
            seed=seed,
        )
        train_bpr(model, train, config, progress=False)
    return model.eval()


def export_to(model: Backbone, split: DatasetSplit, root: Path, name: str, **options: Any) -> Path:
    train, _ = split.phase(Phase.TEST)
    return export_model(
        model,
        train,
        split.external_user_ids,
        split.external_item_ids,
        root / name,
        options=ExportOptions(**options),
    )


def torch_top_k(
    model: Backbone, seen: sp.csr_matrix, users: np.ndarray, representation: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (B, I), top-k items (B, k)) of the PyTorch model, seen items excluded."""
    with torch.no_grad():
        representation = model.represent() if representation is None else representation
        scores = model.score_all_items(representation, torch.from_numpy(users))
        rows = seen[users]
        masked = scores.clone()
        masked[
            torch.from_numpy(np.repeat(np.arange(users.size), np.diff(rows.indptr))),
            torch.from_numpy(rows.indices.astype(np.int64)),
        ] = -torch.inf
        top = torch.topk(masked, TOP_K, dim=1, sorted=True).indices
    return scores.numpy(), top.numpy()


# -- sections ---------------------------------------------------------------------------------------
def parity_row(model: Backbone, directory: Path, label: str, threads: int) -> dict[str, Any]:
    scorer = ArtifactScorer(load_artifact(directory), ScorerOptions(threads=threads))
    identical, worst, worst_relative, explained, largest = 0, 0.0, 0.0, 0, 0.0
    with torch.no_grad():
        representation = model.represent()
    for start in range(0, model.num_users, 1024):
        users = np.arange(start, min(start + 1024, model.num_users))
        expected, expected_top = torch_top_k(model, scorer.seen, users, representation)
        actual = scorer.score_all(users)
        difference = np.abs(actual - expected)
        largest = max(largest, float(np.abs(expected).max()))
        worst = max(worst, float(difference.max()))
        worst_relative = max(worst_relative, float((difference / (1 + np.abs(expected))).max()))
        top, _ = scorer.recommend(users, TOP_K)
        same = np.all(top == expected_top, axis=1)
        identical += int(same.sum())
        for row in np.flatnonzero(~same):
            # A swap between items whose scores differ by less than 1e-5 is a tie, not an error.
            ours = expected[row, top[row]]
            theirs = expected[row, expected_top[row]]
            explained += int(np.allclose(ours, theirs, rtol=0, atol=1e-5))
    return {
        "model": label,
        "backbone": model.config.kind.value,
        "users": model.num_users,
        "top20_identical": identical,
        "top20_differing_only_by_ties": explained,
        "max_abs_score_difference": worst,
        "max_score_difference_over_1_plus_abs": worst_relative,
        "max_abs_score": largest,
    }


def run_parity(args: argparse.Namespace, split: DatasetSplit, work: Path) -> list[dict[str, Any]]:
    rows = []
    if args.runs:
        for run in args.runs:
            data_dir = resolve_data_dir(args.data_dir)
            out = export_run(run, work / f"run-{Path(run).name}", data_dir)
            model = load_run(run, data_dir).model.eval()
            rows.append(parity_row(model, out, f"run {Path(run).name}", args.threads))
        return rows
    train, _ = split.phase(Phase.TEST)
    rng = np.random.default_rng(0)
    sizes = assign_sizes(SizeScheme.RANDOM, split.num_users, split.num_items, 128, 0.9, rng)
    for kind in BackboneKind:
        model = fresh_model(kind, train, sizes, args.train_batches)
        out = export_to(model, split, work, f"parity-{kind.value}", verify_users=0)
        label = f"MR 0.9, {args.train_batches} BPR batches"
        rows.append(parity_row(model, out, label, args.threads))
        logger.info("parity %s", rows[-1])
    return rows


def size_sizes(
    args: argparse.Namespace, split: DatasetSplit
) -> dict[str, dict[float, SizeAssignment]]:
    rng = np.random.default_rng(0)
    shape = (split.num_users, split.num_items, 128)
    methods = {
        "ES": {c: assign_sizes(SizeScheme.EQUAL, *shape, c, rng) for c in TARGETS},
        "MR": {c: assign_sizes(SizeScheme.RANDOM, *shape, c, rng) for c in TARGETS},
    }
    ciess: dict[float, SizeAssignment] = {}
    for item in args.ciess_sizes or []:
        target, path = item.split("=", 1)
        ciess[float(target)] = SizeAssignment.load(Path(path))
    if ciess:
        methods["CIESS"] = ciess
    return methods


def run_size(args: argparse.Namespace, split: DatasetSplit, work: Path) -> list[dict[str, Any]]:
    train, _ = split.phase(Phase.TEST)
    rows = []
    for method, by_target in size_sizes(args, split).items():
        for target, sizes in sorted(by_target.items()):
            for kind in (BackboneKind.LIGHTGCN, BackboneKind.NCF):
                model = fresh_model(kind, train, sizes, 0)
                out = export_to(
                    model, split, work, f"size-{method}-{target}-{kind.value}", verify_users=0
                )
                manifest = load_artifact(out).manifest
                tables = manifest.tables
                values = sum(manifest.file(f"tables/{t}/values.npy").bytes for t in tables)
                offsets = sum(  # one byte a row, or the sizes as runs (schema 3)
                    entry.bytes
                    for entry in manifest.files
                    for t in tables
                    if entry.path in (f"tables/{t}/sizes.npy", f"tables/{t}/size_runs.npy")
                )
                dense = manifest.memory.dense
                # The artifact's job is to store what the sizes keep: the bound uses the sparsity
                # achieved (ES rounds its one size, so it can miss the target by < 1/d_max).
                bound = (1 - manifest.achieved_sparsity) * dense * 1.01 + offsets
                rows.append(
                    {
                        "method": method,
                        "target_sparsity": target,
                        "achieved_sparsity": round(manifest.achieved_sparsity, 6),
                        "backbone": kind.value,
                        "tables": len(tables),
                        "dense_bytes": dense,
                        "values_file_bytes": values,
                        "sizes_file_bytes": offsets,
                        "bound_bytes": int(bound),
                        "within_bound": values + offsets <= bound,
                        "sizes_meet_target": manifest.achieved_sparsity >= target - 1e-9,
                        "values_over_dense": round(values / dense, 5),
                    }
                )
    return rows


def _timed(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - started)
    return best, value


def run_load(args: argparse.Namespace, split: DatasetSplit, work: Path) -> list[dict[str, Any]]:
    train, _ = split.phase(Phase.TEST)
    rows = []
    for label, sizes in _speed_sizes(split).items():
        for kind in BackboneKind:
            model = fresh_model(kind, train, sizes, 0)
            value_types = VALUE_TYPES if kind in LOAD_VALUE_TYPE_BACKBONES else ("float32",)
            for value_type in value_types:
                out = export_to(
                    model,
                    split,
                    work,
                    f"load-{label}-{kind.value}-{value_type}",
                    verify_users=0,
                    value_dtype=value_type,
                )
                rows.append(_load_row(out, label, kind, value_type, args.threads))
                logger.info("load %s", rows[-1])
    return rows


def _load_row(
    out: Path, label: str, kind: BackboneKind, value_type: str, threads: int
) -> dict[str, Any]:
    seconds, scorer = _timed(
        lambda: ArtifactScorer(load_artifact(out), ScorerOptions(threads=threads)), LOAD_REPEATS
    )
    manifest = load_artifact(out).manifest
    if manifest.value_dtype != value_type:
        raise RuntimeError(f"{out}: exported as {value_type}, manifest says {manifest.value_dtype}")
    if manifest.memory.resident != scorer.resident_bytes:
        logger.warning(
            "%s: manifest resident %d bytes, scorer %d",
            out,
            manifest.memory.resident,
            scorer.resident_bytes,
        )
    return {
        "sizes": label,
        "backbone": kind.value,
        "value_type": value_type,
        "load_seconds": round(seconds, 4),
        # Every file of the artifact (ids, interactions, graphs, manifest included).
        "stored_bytes": sum(e.bytes for e in manifest.files),
        # The embedding stores' files only (values, scales, sizes): manifest.memory.stored.
        "embedding_stored_bytes": manifest.memory.stored,
        "embedding_stored_detail": dict(manifest.memory.stored_detail),
        "dense_bytes": manifest.memory.dense,
        "resident_bytes": scorer.resident_bytes,
        "manifest_resident_bytes": manifest.memory.resident,
        "resident_detail": scorer.resident_detail,
        # Lists, as the JSON gives them back: the report reads the same either way.
        "buckets": [list(bucket) for bucket in scorer.bucket_widths],
    }


def _speed_sizes(split: DatasetSplit) -> dict[str, SizeAssignment]:
    rng = np.random.default_rng(0)
    shape = (split.num_users, split.num_items, 128)
    return {
        "full": SizeAssignment.full(*shape),
        "ES 0.9": assign_sizes(SizeScheme.EQUAL, *shape, 0.9, rng),
        "MR 0.9": assign_sizes(SizeScheme.RANDOM, *shape, 0.9, rng),
    }


def _throughput(
    recommend: Callable[[np.ndarray], Any], users: np.ndarray, batch: int, seconds: float
) -> float:
    """Users per second of ``recommend`` over consecutive batches, for about ``seconds``."""
    recommend(users[:batch])  # warm up
    done, started, position = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        chunk = users[position : position + batch]
        if chunk.size < batch:
            position, chunk = 0, users[:batch]
        recommend(chunk)
        done += chunk.size
        position += batch
    return done / (time.perf_counter() - started)


def run_speed(args: argparse.Namespace, split: DatasetSplit, work: Path) -> list[dict[str, Any]]:
    train, _ = split.phase(Phase.TEST)
    users = np.random.default_rng(1).permutation(split.num_users)
    rows = []
    for label, sizes in _speed_sizes(split).items():
        for kind in BackboneKind:
            model = fresh_model(kind, train, sizes, 0)
            out = export_to(model, split, work, f"speed-{label}-{kind.value}", verify_users=0)
            artifact = load_artifact(out)
            layouts = {
                "bucketed": ArtifactScorer(artifact, ScorerOptions(threads=args.threads)),
                "padded dense": PaddedScorer(artifact, ScorerOptions(threads=args.threads)),
            }
            with torch.no_grad():
                representation = model.represent()
            seen = artifact.seen
            for batch in (1, 256):
                row: dict[str, Any] = {"sizes": label, "backbone": kind.value, "batch": batch}
                for name, scorer in layouts.items():
                    row[name] = round(
                        _throughput(
                            lambda u, s=scorer: s.recommend(u, TOP_K), users, batch, args.seconds
                        ),
                        1,
                    )
                row["torch eager"] = round(
                    _throughput(
                        lambda u, m=model, s=seen, r=representation: torch_top_k(m, s, u, r),
                        users,
                        batch,
                        args.seconds,
                    ),
                    1,
                )
                row["buckets"] = layouts["bucketed"].bucket_widths
                rows.append(row)
                logger.info("speed %s", row)
    return rows


# -- report -----------------------------------------------------------------------------------------
def write_report(results: dict[str, Any], path: Path) -> None:
    lines = [
        "# Artifact benchmark",
        "",
        "Written by `bench/artifact.py` from `artifact.json`; see the script's docstring for what each",
        "section measures. Scores: float32 artifacts. Speed: users per second for top-20 with seen items",
        "excluded (higher is better).",
    ]
    for dataset, entry in results.items():
        lines += [
            "",
            f"## {dataset}",
            "",
            f"{entry['machine']}; {entry['date']}; `{entry['command']}`",
        ]
        for section, command in entry.get("section_commands", {}).items():
            if command != entry["command"]:
                lines.append(f"\nSection {section}: `{command}`")
        if entry.get("parity"):
            lines += [
                "",
                "### Parity with PyTorch (every user)",
                "",
                "| backbone | model | users | identical top-20 | differing only by ties | max abs score diff | max diff / (1 + abs score) |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in entry["parity"]:
                lines.append(
                    f"| {r['backbone']} | {r['model']} | {r['users']} | {r['top20_identical']} | "
                    f"{r['top20_differing_only_by_ties']} | {r['max_abs_score_difference']:.2e} | "
                    f"{r['max_score_difference_over_1_plus_abs']:.2e} |"
                )
        if entry.get("size"):
            lines += [
                "",
                "### Bytes on disk vs the budget",
                "",
                "Bound: (1 − c) × dense × 1.01 + the sizes files, with c the sparsity the sizes",
                "achieve (files: .npy, header included; dense: float32 at d_max, all tables). ES rounds",
                "its one size, so its sizes can miss the target c by less than 1/d_max (last column).",
                "",
                "| method | target c | achieved c | backbone | dense | values file | sizes file | bound | within bound | sizes meet target |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            if any("sizes_file_bytes" not in r for r in entry["size"]):
                lines[-2:-2] = [
                    "Rows written before artifact schema 2 count an offsets file and a sizes file",
                    "together in the sizes file column.",
                    "",
                ]
            for r in entry["size"]:
                # Schema 1 stored offsets beside the sizes: its rows name that sum differently.
                sizes_bytes = r.get("sizes_file_bytes", r.get("offsets_and_sizes_file_bytes"))
                lines.append(
                    f"| {r['method']} | {r['target_sparsity']} | {r['achieved_sparsity']:.4f} | "
                    f"{r['backbone']} | {r['dense_bytes']:,} | {r['values_file_bytes']:,} | "
                    f"{sizes_bytes:,} | {r['bound_bytes']:,} | "
                    f"{'yes' if r['within_bound'] else '**no**'} | "
                    f"{'yes' if r['sizes_meet_target'] else 'no'} |"
                )
        if entry.get("load"):
            lines += [
                "",
                f"### Load time and bytes per value type (directory → ready scorer, best of {LOAD_REPEATS})",
                "",
                "Embedding store: the tables' files (values, scales, sizes; `manifest.memory.stored`),",
                "against the same tables dense in float32. All files: the whole artifact directory (ids,",
                "interactions, graphs, manifest). Resident: what the scorer keeps in memory once loaded.",
                "Rows without a value type predate it: float32, no embedding store column.",
                "",
                "| sizes | backbone | value type | seconds | embedding store bytes | store / dense f32 | all files bytes | resident bytes | buckets (items, width) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for r in entry["load"]:
                store = r.get("embedding_stored_bytes")
                dense = r.get("dense_bytes")
                lines.append(
                    f"| {r['sizes']} | {r['backbone']} | {r.get('value_type', 'float32')} | "
                    f"{r['load_seconds']:.3f} | {'–' if store is None else f'{store:,}'} | "
                    f"{f'{store / dense:.3f}' if store is not None and dense else '–'} | "
                    f"{r['stored_bytes']:,} | {r['resident_bytes']:,} | {r['buckets']} |"
                )
        if entry.get("speed"):
            lines += [
                "",
                "### Scoring throughput (users/s, top-20)",
                "",
                "| sizes | backbone | batch | bucketed | padded dense (d_max) | PyTorch eager | buckets |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in entry["speed"]:
                lines.append(
                    f"| {r['sizes']} | {r['backbone']} | {r['batch']} | {r['bucketed']:,.0f} | "
                    f"{r['padded dense']:,.0f} | {r['torch eager']:,.0f} | {r['buckets']} |"
                )
    write_with_findings(path, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument(
        "--dataset", default="ml-1m", help="dataset in --data-dir (ignored with --tiny)"
    )
    parser.add_argument(
        "--data-dir", help="datasets folder (default: $CIESS_DATA_DIR, else ./data)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="generated data (400 users, 300 items), at most 30 training batches: seconds, "
        "for checking",
    )
    parser.add_argument(
        "--sections",
        default="parity,size,load,speed",
        help="comma-separated, of parity,size,load,speed (see above)",
    )
    parser.add_argument(
        "--runs",
        nargs="*",
        help="run directories whose parity is checked, instead of fresh MR models",
    )
    parser.add_argument(
        "--ciess-sizes",
        nargs="*",
        help="TARGET=SIZES.npz: a CIESS size assignment at that target, added to the size section",
    )
    parser.add_argument(
        "--train-batches",
        type=int,
        default=200,
        help="BPR batches training each fresh parity model (at most 30 with --tiny)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of torch and of the artifact scorer"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds per throughput measurement (speed)"
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "docs" / "benchmarks"),
        help="folder of artifact.json and artifact.md",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.tiny:
        data, dataset = tiny_data(), "tiny (generated)"
        args.train_batches = min(args.train_batches, 30)
    else:
        data, dataset = load_dataset(args.dataset, resolve_data_dir(args.data_dir)), args.dataset
    split = split_per_user(data, seed=42)
    sections = {
        "parity": run_parity,
        "size": run_size,
        "load": run_load,
        "speed": run_speed,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "artifact.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    entry = results.get(dataset, {})
    previous_command = entry.get("command")
    command = "python bench/artifact.py " + " ".join(sys.argv[1:] if argv is None else argv)
    entry.update(
        {
            "machine": machine(args.threads),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "command": command,
        }
    )
    # A section re-run alone keeps the other sections: say which command produced which.
    section_commands = entry.setdefault("section_commands", {})
    for name in ("parity", "size", "load", "speed"):
        if name in entry and name not in section_commands:
            section_commands[name] = previous_command or command
    with tempfile.TemporaryDirectory(prefix="ciess-artifact-bench-") as work:
        for name in args.sections.split(","):
            logger.info("section %s on %s", name, dataset)
            entry[name] = sections[name](args, split, Path(work))
            section_commands[name] = command
            results[dataset] = entry
            results_path.write_text(json.dumps(results, indent=1) + "\n")
            write_report(results, out / "artifact.md")
    logger.info("wrote %s and %s", results_path, out / "artifact.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
