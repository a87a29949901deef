"""Backbone benchmark: full, ES and MR at 0.80/0.90/0.95 for LightGCN, NGCF and NCF (ML-1M by
default; `--dataset yelp2018` for the Yelp2018 baselines of the CIESS report).

Usage:
    python bench/backbones.py quality --data-dir ../shared/data --protocol reference
    python bench/backbones.py speed --data-dir ../shared/data [--device cuda]
    python bench/backbones.py merge rows-a.json rows-b.json   # rows written elsewhere (--results)
    python bench/backbones.py report

Every finished training run is appended to ``docs/benchmarks/backbones.json`` at once (a list of
rows keyed by dataset, backbone, method, target_sparsity, protocol) and the markdown report is
rewritten from the JSON, so an interrupted benchmark resumes where it stopped and never leaves a
half-recorded table. ``--results`` sends the rows to another file instead (one per process when
several run at once, e.g. on a lent GPU machine); ``merge`` appends such files to the JSON twin.
Speed figures go to ``docs/benchmarks/backbones-speed.json`` (``backbones-speed-cuda.json`` for
``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_help import DefaultsHelp
from experiments.protocols import PROTOCOLS, protocol_named
from machine_info import cpu_description
from paper import PAPER_METRICS, paper_row

from ciess_core.data import DatasetSplit, Phase, load_dataset, resolve_data_dir, split_per_user
from ciess_core.models import BackboneConfig, BackboneKind, build_backbone
from ciess_core.runs import (
    Protocol,
    RunOutcome,
    RunProtocol,
    RunSpec,
    execute_run,
    run_sizes,
    select_on_validation,
)
from ciess_core.sizes import SizeScheme
from ciess_core.training import TrainConfig, evaluate_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "backbones.json"
SPEED = ROOT / "docs" / "benchmarks" / "backbones-speed.json"
TUNING = ROOT / "docs" / "benchmarks" / "backbones-tuning.json"
REPORT = ROOT / "docs" / "benchmarks" / "backbones.md"
METHOD_SCHEME = {"full": SizeScheme.FULL, "es": SizeScheme.EQUAL, "mr": SizeScheme.RANDOM}
logger = logging.getLogger("bench.backbones")


def machine() -> str:
    threads = torch.get_num_threads()
    return (
        f"{cpu_description()}, torch {torch.__version__}, "
        f"{threads} thread{'' if threads == 1 else 's'}, Python {platform.python_version()}"
    )


def provenance() -> dict[str, str]:
    """What every report records about its run: the machine, the day (UTC) and the command as
    it was typed (this script's name and arguments)."""
    return {
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": f"python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
    }


def write_with_findings(path: Path, lines: list[str]) -> None:
    """Write a report's ``lines`` to ``path``, then its hand-written findings (``<name>.notes.md``
    beside it, kept apart so that regenerating the report keeps them) under "## Findings"."""
    notes = path.with_suffix(".notes.md")
    if notes.exists():
        lines = [*lines, "", "## Findings", "", notes.read_text().strip()]
    path.write_text("\n".join(lines) + "\n")


def load_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def device_suffix(device: str) -> str:
    """ "" for the CPU, else "-<kind>" ("-cuda" for "cuda:1"): tells result files apart by device."""
    return "" if device == "cpu" else f"-{device.split(':')[0]}"


def speed_path(device: str) -> Path:
    return SPEED.with_name(f"backbones-speed{device_suffix(device)}.json")


def split_of(arguments: argparse.Namespace) -> DatasetSplit:
    """The 50/25/25 split (seed 42) of ``--dataset`` under ``--data-dir``."""
    return split_per_user(
        load_dataset(arguments.dataset, resolve_data_dir(arguments.data_dir)), seed=42
    )


def save_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(staging, path)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["dataset"],
        row["backbone"],
        row["method"],
        row["target_sparsity"],
        row["protocol"],
        row.get("weight_decay"),
        row.get("learning_rate", DEFAULT_LEARNING_RATE),
        row.get("seed", DEFAULT_SEED),
    )


def planned_key(
    arguments: argparse.Namespace,
    backbone: str,
    method: str,
    target: float | None,
    protocol: str,
    weight_decay: float,
    learning_rate: float,
) -> tuple[Any, ...]:
    """The :func:`row_key` of the row that a run with these settings writes (to skip it when the
    JSON already has that row)."""
    row = {
        "dataset": arguments.dataset,
        "backbone": backbone,
        "method": method,
        "target_sparsity": target,
        "protocol": protocol,
        "weight_decay": weight_decay,
        "learning_rate": learning_rate,
        "seed": arguments.seed,
    }
    return row_key(row)


#: The training seed of rows that do not record one (every row before the field existed).
DEFAULT_SEED = 42
DEFAULT_LEARNING_RATE = TrainConfig().learning_rate


def parse_weight_decays(text: str) -> dict[str, float]:
    """``lightgcn=1e-3,ncf=1e-4`` -> {backbone: value}; unnamed backbones keep defaults (also
    used for the per-backbone learning rates)."""
    values = {}
    for part in filter(None, text.split(",")):
        name, value = part.split("=")
        values[name.strip()] = float(value)
    return values


def plan_runs(backbones: str, methods: str, sparsities: str) -> list[tuple[str, str, float | None]]:
    plan: list[tuple[str, str, float | None]] = []
    for backbone in backbones.split(","):
        for method in methods.split(","):
            targets = [None] if method == "full" else [float(x) for x in sparsities.split(",")]
            plan += [(backbone, method, target) for target in targets]
    return plan


def run_one(
    arguments: argparse.Namespace,
    split: Any,
    backbone: str,
    method: str,
    target: float | None,
    weight_decay: float,
    protocol: RunProtocol,
    selection_only: bool = False,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> dict[str, Any]:
    """Train and test one configuration (or, ``selection_only``, train and validate); a JSON row."""
    training = TrainConfig(
        learning_rate=learning_rate,
        max_batches=arguments.max_batches,
        eval_every=arguments.eval_every,
        patience=arguments.patience,
        seed=arguments.seed,
        device=arguments.device,
    )
    spec = RunSpec(
        dataset=arguments.dataset,
        backbone=BackboneConfig.default_for(BackboneKind(backbone), weight_decay=weight_decay),
        training=training,
        size_scheme=METHOD_SCHEME[method],
        target_sparsity=target,
        protocol=protocol,
    )
    sizes = run_sizes(spec, split.num_users, split.num_items)
    if selection_only:
        started = time.perf_counter()
        _, selection = select_on_validation(spec, split, sizes, progress=not arguments.no_progress)
        outcome = RunOutcome(
            test_metrics={},
            valid_metrics=selection.best_metrics,
            achieved_sparsity=sizes.sparsity,
            seconds=time.perf_counter() - started,
            stages={
                "select": {"batches_run": selection.batches_run, "best_batch": selection.best_batch}
            },
        )
    else:
        _, outcome, _ = execute_run(spec, split, sizes, progress=not arguments.no_progress)
    stages = outcome.stages
    batches = sum(stage["batches_run"] for stage in stages.values())
    tested = bool(outcome.test_metrics)
    metrics = outcome.test_metrics if tested else outcome.valid_metrics
    return {
        "dataset": arguments.dataset,
        "backbone": backbone,
        "method": method,
        "target_sparsity": target,
        "achieved_sparsity": round(outcome.achieved_sparsity, 6),
        "split": "test" if tested else "valid",
        "protocol": protocol.value,
        "weight_decay": weight_decay,
        "learning_rate": learning_rate,
        "seed": arguments.seed,
        "metrics": {name: round(metrics[name], 6) for name in PAPER_METRICS},
        "all_metrics": {k: round(v, 6) for k, v in metrics.items()},
        "valid_metrics": {k: round(v, 6) for k, v in outcome.valid_metrics.items()},
        "seconds": round(outcome.seconds, 1),
        "batches": batches,
        "best_batch": max(stage["best_batch"] for stage in stages.values()),
        "seconds_per_batch": round(outcome.seconds / max(batches, 1), 4),
        "device": arguments.device,
        **provenance(),
    }


def run_quality(arguments: argparse.Namespace) -> None:
    split = split_of(arguments)
    results = Path(arguments.results) if arguments.results else RESULTS
    rows = load_rows(results)
    done = {row_key(row) for row in rows}
    protocol = protocol_named(arguments.protocol)
    decays = parse_weight_decays(arguments.weight_decay)
    rates = parse_weight_decays(arguments.learning_rate)
    for backbone, method, target in plan_runs(
        arguments.backbones, arguments.methods, arguments.sparsities
    ):
        weight_decay = decays.get(
            backbone, BackboneConfig.default_for(BackboneKind(backbone)).weight_decay
        )
        rate = rates.get(backbone, DEFAULT_LEARNING_RATE)
        key = planned_key(arguments, backbone, method, target, protocol.value, weight_decay, rate)
        if key in done:
            continue
        logger.info("running %s", key)
        rows.append(
            run_one(
                arguments,
                split,
                backbone,
                method,
                target,
                weight_decay,
                protocol,
                learning_rate=rate,
            )
        )
        save_json(results, rows)
        if results == RESULTS:
            write_report()
        logger.info("done %s: %s", key, rows[-1]["metrics"])


def merge_rows(target: Path, sources: list[Path]) -> int:
    """Append the rows of ``sources`` to the JSON list at ``target`` (rows already there, equal in
    every field, are skipped); returns how many were added."""
    rows = load_rows(target)
    added = 0
    for source in sources:
        for row in json.loads(source.read_text()):
            if row not in rows:
                rows.append(row)
                added += 1
    save_json(target, rows)
    return added


def run_merge(arguments: argparse.Namespace) -> None:
    target = TUNING if arguments.tuning else RESULTS
    added = merge_rows(target, [Path(p) for p in arguments.files])
    logger.info("merged %d rows into %s", added, target)
    write_report()


def run_tune(arguments: argparse.Namespace) -> None:
    """Weight-decay sweep on validation only (the selection stage of the clean protocol)."""
    split = split_of(arguments)
    tuning = Path(arguments.results) if arguments.results else TUNING
    rows = load_rows(tuning)
    done = {row_key(row) for row in rows}
    for backbone, method, target in plan_runs(
        arguments.backbones, arguments.methods, arguments.sparsities
    ):
        grid = [
            (float(decay), float(rate))
            for decay in arguments.weight_decays.split(",")
            for rate in arguments.learning_rates.split(",")
        ]
        for weight_decay, rate in grid:
            key = planned_key(arguments, backbone, method, target, "tune", weight_decay, rate)
            if key in done:
                continue
            logger.info("tuning %s", key)
            row = run_one(
                arguments,
                split,
                backbone,
                method,
                target,
                weight_decay,
                Protocol.CLEAN,
                selection_only=True,
                learning_rate=rate,
            )
            rows.append({**row, "protocol": "tune"})
            save_json(tuning, rows)
            if tuning == TUNING:
                write_report()
            logger.info("done %s: %s", key, row["metrics"])


class DenseLightGCN(torch.nn.Module):
    """A plain LightGCN: one nn.Embedding, COO adjacency, no masks (the speed baseline)."""

    def __init__(self, adjacency: torch.Tensor, num_users: int, num_entities: int) -> None:
        super().__init__()
        self.adjacency = adjacency
        self.num_users = num_users
        self.embedding = torch.nn.Embedding(num_entities, 128)
        torch.nn.init.normal_(self.embedding.weight, std=0.01)

    def forward(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        layer = self.embedding.weight
        total = layer
        for _ in range(3):
            layer = torch.sparse.mm(self.adjacency, layer)
            total = total + layer
        final = total / 4
        u = final[users]
        p = final[positives + self.num_users]
        n = final[negatives + self.num_users]
        loss = torch.nn.functional.softplus((u * n).sum(1) - (u * p).sum(1)).mean()
        ego = self.embedding(
            torch.cat([users, positives + self.num_users, negatives + self.num_users])
        )
        return loss + 1e-4 * 0.5 * ego.pow(2).sum() / users.numel()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(step, repeats: int, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    step()
    step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def masked_step(model, users, positives, negatives):  # type: ignore[no-untyped-def]
    """One BPR step of our masked backbone, as a closure for :func:`time_batches`."""
    from ciess_core.training import bpr_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)

    def step() -> None:
        representation = model.represent()
        loss = bpr_loss(
            model.score_pairs(representation, users, positives),
            model.score_pairs(representation, users, negatives),
        )
        loss = loss + model.regularization(users, positives, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def run_speed(arguments: argparse.Namespace) -> None:
    from ciess_core.models.graph import symmetric_normalized_adjacency
    from ciess_core.training import BprSampler

    data_dir = resolve_data_dir(arguments.data_dir)
    device = torch.device(arguments.device)
    results: dict[str, Any] = {
        "device": arguments.device,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        **provenance(),
    }
    # Training batch: ours (full width and ES 80 %) against a plain dense LightGCN.
    split = split_per_user(load_dataset("ml-1m", data_dir), seed=42)
    train, _ = split.phase(Phase.TEST)
    sampler = BprSampler(train)
    rng = np.random.default_rng(0)
    batch = sampler.sample(10_000, rng)
    users, positives, negatives = (
        torch.from_numpy(x).to(device) for x in (batch.users, batch.positives, batch.negatives)
    )
    adjacency = symmetric_normalized_adjacency(train).tocoo()
    coo = torch.sparse_coo_tensor(
        torch.from_numpy(np.vstack([adjacency.row, adjacency.col]).astype(np.int64)),
        torch.from_numpy(adjacency.data.astype(np.float32)),
        adjacency.shape,
    ).coalesce()
    dense = DenseLightGCN(coo.to(device), train.shape[0], sum(train.shape)).to(device)
    dense_optimizer = torch.optim.Adam(dense.parameters(), lr=0.03)

    def dense_step() -> None:
        loss = dense(users, positives, negatives)
        dense_optimizer.zero_grad()
        loss.backward()
        dense_optimizer.step()

    timings = {"dense_lightgcn_coo": time_batches(dense_step, arguments.repeats, device)}
    for label, size in (("ours_full", 128), ("ours_es_0.8", 26)):
        model = build_backbone(
            BackboneConfig(), train, torch.Generator(device=device).manual_seed(0)
        )
        model.set_embedding_sizes(torch.full((model.num_entities,), size, device=device))
        step = masked_step(model, users, positives, negatives)
        timings[label] = time_batches(step, arguments.repeats, device)
    results["train_batch_seconds"] = {k: round(v, 4) for k, v in timings.items()}
    results["train_batch_size"] = 10_000
    # Evaluation of every user, ML-1M and Yelp2018, in subprocesses for a clean peak-memory figure.
    for dataset in ("ml-1m", "yelp2018"):
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "eval-speed",
                "--dataset",
                dataset,
                "--data-dir",
                str(data_dir),
                "--device",
                arguments.device,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[f"eval_{dataset}"] = json.loads(output.strip().splitlines()[-1])
    save_json(Path(arguments.output) if arguments.output else speed_path(arguments.device), results)
    write_report()
    print(json.dumps(results, indent=1))


def run_eval_speed(arguments: argparse.Namespace) -> None:
    data = load_dataset(arguments.dataset, resolve_data_dir(arguments.data_dir))
    split = split_per_user(data, seed=42)
    train, test = split.phase(Phase.TEST)
    device = torch.device(arguments.device)
    generator = torch.Generator(device=device).manual_seed(0)
    model = build_backbone(BackboneConfig(), train, generator).eval()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    evaluate_model(model, train, test)  # warm-up
    timings = []
    for _ in range(3):
        synchronize(device)
        started = time.perf_counter()
        result = evaluate_model(model, train, test)
        synchronize(device)
        timings.append(time.perf_counter() - started)
    with torch.no_grad():
        representation = model.represent()
        started = time.perf_counter()
        for _ in range(3):
            from ciess_core.evaluation import evaluate_full_ranking

            evaluate_full_ranking(
                lambda u: model.score_all_items(representation, u), train, test, device=device
            )
        synchronize(device)
        ranking_only = (time.perf_counter() - started) / 3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "dataset": arguments.dataset,
                "users": len(result.user_ids),
                "items": split.num_items,
                "backbone": "lightgcn (128-d, propagation included)",
                "seconds_best": round(min(timings), 3),
                "seconds_median": round(float(np.median(timings)), 3),
                "ranking_seconds_without_propagation": round(ranking_only, 3),
                "peak_rss_mb": round(peak, 1),
                "peak_gpu_mb": (
                    round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                    if device.type == "cuda"
                    else None
                ),
                "rss_before_eval_mb": round(rss_before, 1),
            }
        )
    )


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def quality_table(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    """Rows of one dataset and protocol, each beside the paper's row for it."""
    lines = [
        "| backbone | L2 / lr | method | target c | achieved c | R@5 | R@20 | N@5 | N@20 | "
        "paper R@5 | paper R@20 | paper N@5 | paper N@20 | ours/paper N@20 | "
        "batches (best) | device | time |",
        "|" + "---|" * 17,
    ]
    for row in rows:
        paper = paper_row(row["backbone"], row["method"], row["target_sparsity"] or 0.0, dataset)
        m = row["metrics"]
        ratio = "–" if paper is None else f"{m['ndcg@20'] / paper['ndcg@20']:.3f}"
        target = "–" if row["target_sparsity"] is None else f"{row['target_sparsity']:.2f}"
        recipe = (
            f"{row.get('weight_decay', 0):g} / {row.get('learning_rate', DEFAULT_LEARNING_RATE):g}"
        )
        if row.get("seed", DEFAULT_SEED) != DEFAULT_SEED:
            recipe += f" (seed {row['seed']})"
        lines.append(
            f"| {row['backbone']} | {recipe} | {row['method']} | {target} | "
            f"{row['achieved_sparsity']:.4f} | {fmt(m['recall@5'])} | {fmt(m['recall@20'])} | "
            f"{fmt(m['ndcg@5'])} | {fmt(m['ndcg@20'])} | "
            + " | ".join(fmt(None if paper is None else paper[k]) for k in PAPER_METRICS)
            + f" | {ratio} | {row['batches']} ({row['best_batch']}) | {row.get('device', 'cpu')} | "
            f"{row['seconds'] / 60:.1f} min |"
        )
    return [*lines, ""]


def speed_section(speeds: list[dict[str, Any]]) -> list[str]:
    """Training-batch and evaluation timings, one column per device measured."""
    label = {
        "dense_lightgcn_coo": "plain dense PyTorch LightGCN (nn.Embedding, COO sparse.mm)",
        "ours_full": "ours, full width (masked, CSR propagation)",
        "ours_es_0.8": "ours, ES at 80 % (d = 26, computed at width 26)",
    }
    columns = [s.get("gpu") or f"CPU ({s.get('device', 'cpu')})" for s in speeds]
    lines = ["## Speed", ""]
    for speed, column in zip(speeds, columns, strict=True):
        lines.append(f"- {column}: {speed['machine']}; {speed['date']}; `{speed['command']}`.")
    lines += [
        "",
        f"One LightGCN training batch on ML-1M ({speeds[0]['train_batch_size']} users, one "
        "positive and one negative each, train ∪ valid graph), forward + backward + Adam step, "
        "seconds:",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(speeds),
    ]
    for key, text in label.items():
        lines.append(
            f"| {text} | "
            + " | ".join(f"{s['train_batch_seconds'][key]:.4f}" for s in speeds)
            + " |"
        )
    lines += [
        "",
        "Evaluation of every user (full ranking, top-20, LightGCN 128-d; propagation included; "
        "best of 3, and the ranking alone):",
        "",
        "| dataset | users × items | device | seconds | of which ranking | peak RSS | peak GPU memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in ("ml-1m", "yelp2018"):
        for speed, column in zip(speeds, columns, strict=True):
            e = speed.get(f"eval_{dataset}")
            if e:
                gpu = e.get("peak_gpu_mb")
                lines.append(
                    f"| {dataset} | {e['users']} × {e['items']} | {column} | "
                    f"{e['seconds_best']:.3f} | {e['ranking_seconds_without_propagation']:.3f} | "
                    f"{e['peak_rss_mb']:.0f} MB | "
                    + ("–" if gpu is None else f"{gpu:.0f} MB")
                    + " |"
                )
    return [*lines, ""]


def write_report() -> None:
    rows = load_rows(RESULTS)
    speeds = [
        json.loads(path.read_text())
        for path in [SPEED, *sorted(SPEED.parent.glob("backbones-speed-*.json"))]
        if path.exists()
    ]
    lines = [
        "# Backbones: full size, ES and MR",
        "",
        "Produced by `bench/backbones.py` (JSON twin: `backbones.json`, one row per training run; "
        "speed figures: `backbones-speed*.json`). Split 50/25/25 per user, seed 42; full ranking "
        "over all items with seen items excluded; d_max 128. Paper numbers are the CIESS paper's "
        "Table 1 (references, not ours); ours at *reference* protocol are the ones to compare with "
        "them (CIESS.md §3), *clean* ones are what users should trust. The device column says where "
        "a row was trained: `cpu` is this 2-core machine, `cuda` a lent GPU machine (its card in "
        "the row's `machine` field).",
        "",
    ]
    if rows:
        lines += ["Machine (latest row): " + rows[-1]["machine"], ""]
    for dataset in ("ml-1m", "yelp2018"):
        for protocol in ("reference", "clean"):
            chosen = [r for r in rows if r["protocol"] == protocol and r["dataset"] == dataset]
            if chosen:
                lines += [f"## {dataset}: test metrics, {protocol} protocol", ""]
                lines += quality_table(chosen, dataset)
    lines += bar_checks([r for r in rows if r["dataset"] == "ml-1m"])
    notes = RESULTS.with_name("backbones.notes.md")
    if notes.exists():  # hand-written findings, kept apart so that regenerating keeps them
        lines += ["## Findings", "", notes.read_text().strip(), ""]
    tuning = load_rows(TUNING)
    if tuning:
        lines += [
            "## Weight-decay and learning-rate sweep (validation only)",
            "",
            "Each configuration trained on the training split with early stopping on validation "
            "(the clean protocol's selection stage); the test set is not touched. The weight decay "
            "used in the tables above is the one that is best here for the full model.",
            "",
            "| backbone | method | target c | weight decay | learning rate | valid R@20 | valid N@20 | best batch | time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in tuning:
            target = "–" if row["target_sparsity"] is None else f"{row['target_sparsity']:.2f}"
            rate = row.get("learning_rate", DEFAULT_LEARNING_RATE)
            lines.append(
                f"| {row['backbone']} | {row['method']} | {target} | {row['weight_decay']:g} | "
                f"{rate:g} | "
                f"{row['metrics']['recall@20']:.4f} | {row['metrics']['ndcg@20']:.4f} | "
                f"{row['best_batch']} | {row['seconds'] / 60:.1f} min |"
            )
        lines.append("")
    if speeds:
        lines += speed_section(speeds)
    REPORT.write_text("\n".join(lines) + "\n")


def bar_checks(rows: list[dict[str, Any]]) -> list[str]:
    reference = {
        (r["backbone"], r["method"], r["target_sparsity"]): r
        for r in rows
        if r["protocol"] == "reference"
    }
    lines = [
        "## Bars (issue: ES ≥ 97 % of the paper's ES rows; full beats ES@80 %)",
        "",
        "Checked on each backbone's latest reference rows (its chosen L2 / learning rate).",
        "",
    ]
    for (backbone, method, target), row in sorted(reference.items(), key=str):
        if method != "es":
            continue
        paper = paper_row(backbone, "es", target)
        if paper is None:
            continue
        for metric in PAPER_METRICS:
            ours, need = row["metrics"][metric], 0.97 * paper[metric]
            verdict = (
                "met"
                if ours >= need
                else f"short by {need - ours:.5f} ({ours / paper[metric]:.2%} of paper)"
            )
            lines.append(
                f"- {backbone} ES {target:.2f} {metric}: {ours:.4f} vs 97 % of paper "
                f"{need:.4f}: {verdict}"
            )
    for backbone in ("lightgcn", "ngcf", "ncf"):
        full, es = reference.get((backbone, "full", None)), reference.get((backbone, "es", 0.8))
        if full and es:
            beats = all(full["metrics"][m] > es["metrics"][m] for m in ("recall@20", "ndcg@20"))
            lines.append(
                f"- {backbone}: full N@20 {full['metrics']['ndcg@20']:.4f}, R@20 "
                f"{full['metrics']['recall@20']:.4f} vs ES@80 % "
                f"{es['metrics']['ndcg@20']:.4f}, {es['metrics']['recall@20']:.4f}: "
                + ("full beats ES" if beats else "full does NOT beat ES")
            )
    return [*lines, ""]


COMMANDS = {
    "quality": "train and test each planned configuration (resumable: rows already in the JSON are kept)",
    "tune": "weight-decay and learning-rate sweep on validation only (resumable likewise)",
    "speed": "time an ML-1M training batch (ours vs plain LightGCN) and full evaluations",
    "eval-speed": "(internal, run by speed) time the full evaluation of one dataset, as JSON",
    "merge": "append rows written with --results to the JSON twin",
    "report": "rewrite the markdown report from the JSON files",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=COMMANDS[name], description=COMMANDS[name], formatter_class=DefaultsHelp
        )

    data_dir = "datasets folder (default: $CIESS_DATA_DIR, else ./data)"
    dataset = "dataset in --data-dir"
    backbones = "comma-separated backbones, of lightgcn,ngcf,ncf"
    methods = "comma-separated size methods, of full (d_max), es (equal sizes), mr (random sizes)"
    sparsities = "comma-separated target sparsities of es and mr (full has none)"
    device = "cpu or cuda[:N]"

    def training_options(parser: argparse.ArgumentParser, max_batches: int) -> None:
        """The options of every training run, shared by quality and tune."""
        parser.add_argument(
            "--max-batches",
            type=int,
            default=max_batches,
            help="cap on every run's training batches",
        )
        parser.add_argument(
            "--eval-every",
            type=int,
            default=200,
            help="batches between the evaluations that pick the stopping point",
        )
        parser.add_argument(
            "--patience",
            type=int,
            default=3,
            help="evaluations without improvement before a run stops",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=DEFAULT_SEED,
            help="training seed (the split's is always 42)",
        )
        parser.add_argument("--device", default="cpu", help=device)
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    quality = command("quality")
    quality.add_argument("--data-dir", help=data_dir)
    quality.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "yelp2018"], help=dataset)
    quality.add_argument(
        "--results", help="JSON file the rows go to (default: docs/benchmarks/backbones.json)"
    )
    quality.add_argument(
        "--protocol",
        default="reference",
        choices=sorted(PROTOCOLS),
        help="reference: the paper's (test picks the stop; experiments/protocols.py); clean: "
        "validation does",
    )
    quality.add_argument("--backbones", default="lightgcn,ngcf,ncf", help=backbones)
    quality.add_argument("--methods", default="full,es,mr", help=methods)
    quality.add_argument("--sparsities", default="0.8,0.9,0.95", help=sparsities)
    training_options(quality, max_batches=3000)
    quality.add_argument(
        "--weight-decay",
        default="",
        help="L2 per backbone, e.g. lightgcn=1e-3,ncf=1e-4 (default: the spec's)",
    )
    quality.add_argument(
        "--learning-rate",
        default="",
        help=f"Adam's per backbone, e.g. ncf=0.01 (default {DEFAULT_LEARNING_RATE})",
    )
    tune = command("tune")
    tune.add_argument("--data-dir", help=data_dir)
    tune.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "yelp2018"], help=dataset)
    tune.add_argument(
        "--results",
        help="JSON file the rows go to (default: docs/benchmarks/backbones-tuning.json)",
    )
    tune.add_argument("--backbones", default="lightgcn", help=backbones)
    tune.add_argument("--methods", default="full,es", help=methods)
    tune.add_argument("--sparsities", default="0.8", help=sparsities)
    tune.add_argument(
        "--weight-decays", default="1e-4,1e-3,3e-3,1e-2", help="comma-separated L2 values to try"
    )
    tune.add_argument(
        "--learning-rates",
        default=str(DEFAULT_LEARNING_RATE),
        help="comma-separated learning rates to try, each with every weight decay",
    )
    training_options(tune, max_batches=4000)
    speed = command("speed")
    speed.add_argument(
        "--data-dir",
        help="datasets folder with ml-1m and yelp2018 (default: $CIESS_DATA_DIR, else ./data)",
    )
    speed.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="timed training batches per model, after 2 warm-up ones (the mean is kept)",
    )
    speed.add_argument("--device", default="cpu", help=device)
    speed.add_argument(
        "--output", help="JSON file (default: docs/benchmarks/backbones-speed[-<device>].json)"
    )
    eval_speed = command("eval-speed")
    eval_speed.add_argument("--dataset", required=True, help=dataset)
    eval_speed.add_argument("--data-dir", help=data_dir)
    eval_speed.add_argument("--device", default="cpu", help=device)
    merge = command("merge")
    merge.add_argument("files", nargs="+", help="JSON files written with --results")
    merge.add_argument(
        "--tuning",
        action="store_true",
        help="rows from `tune`: merge into backbones-tuning.json, not backbones.json",
    )
    command("report")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {
        "quality": run_quality,
        "tune": run_tune,
        "speed": run_speed,
        "eval-speed": run_eval_speed,
        "merge": run_merge,
        "report": lambda _: write_report(),
    }[arguments.command](arguments)


if __name__ == "__main__":
    main()
