"""The paper's sensitivity figures: the reward's λ (Figure 4) and the number of episodes M
(Figure 5), each point a trial on one executor.

Usage:
    python bench/sensitivity.py run --sweep lambda --values 0.2 0.4 0.6 0.8 1.0 1.2 \\
        --base bench/_work/default-ml-1m-lightgcn-clean-cpu-s18 --executor processes --workers 2
    python bench/sensitivity.py run --sweep episodes --values 5 10 20 30 40 --base ... \\
        --executor ray --workers 4
    python bench/sensitivity.py retrain --sweep lambda --base ... [--executor ray]
    python bench/sensitivity.py report

A trial is the product pipeline's search (shipped recipe, one setting changed) from the full model
and supernet of ``--base`` (a default pipeline folder of the same dataset and backbone, copied
into the trial's folder): for each budget, the best assignment the search's pool keeps, scored
by the supernet on the validation interactions the search never saw (the fits' part), and its
sparsity. Trials are independent units of :func:`ciess_core.search.parallel.stage_runner`, so
``--executor ray`` runs them as Ray tasks. Rows go to ``docs/benchmarks/sensitivity.json``;
``report`` rewrites ``sensitivity.md`` with a plot per sweep.

``retrain`` takes a sweep's best point (the highest held-out N@20 averaged over the budgets, in
the sweep's latest run) and runs the product pipeline at it from ``--base``'s full model, phase
teachers and supernet: its search, then each budget's candidates retrained, picked on validation
and tested once (clean protocol; no deployment model). Its rows carry ``kind: retrained``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import load_rows, provenance, save_json
from byte_budgets import reuse_stages
from cli_help import DefaultsHelp, add_pipeline_arguments

from ciess_core.data import DatasetSplit
from ciess_core.pipeline import PipelineSpec, load_split, pipeline_spec
from ciess_core.search.loop import run_search
from ciess_core.search.parallel import stage_runner
from ciess_core.search.pipeline import build_evaluator, run_pipeline, search_inputs, selection_views

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "docs" / "benchmarks"
RESULTS = REPORTS / "sensitivity.json"
SETTINGS = {"lambda": "reward_penalty", "episodes": "num_episodes"}
PAPER = {
    "lambda": "Figure 4: λ swept over {0.2 … 1.2} on ML-1M; the paper's best is 0.4.",
    "episodes": "Figure 5: quality grows with the episodes M and levels off; the paper uses 30.",
}
logger = logging.getLogger("bench.sensitivity")


def trial(spec: PipelineSpec, split: DatasetSplit, base: Path, out: Path) -> dict[str, Any]:
    """One point: the search of ``spec`` in ``out`` from ``base``'s full model and supernet,
    each budget's best assignment scored on the fits' part of validation."""
    for stage in ("full", "supernet"):
        if not (out / stage).exists():
            shutil.copytree(base / stage, out / stage)
    (out / "search").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    search_split, fit_split = selection_views(spec, split)
    evaluator = build_evaluator(spec, search_split, out / "supernet")
    outcome = run_search(
        spec.search,
        search_inputs(spec, search_split, out),
        evaluator,
        checkpoint_dir=out / "search" / "checkpoint",
        trace_path=out / "search" / "trace.jsonl",
        progress=False,
    )
    held_out = build_evaluator(spec, fit_split, out / "supernet")
    budgets = {}
    for budget in spec.search.budgets:
        best = outcome.pool.selection(budget)[0]
        metrics = held_out.evaluate(best).metrics
        budgets[f"{budget:g}"] = {
            "sparsity": best.sparsity,
            "valid_ndcg@20": metrics["ndcg@20"],
            "valid_recall@20": metrics["recall@20"],
        }
    return {"budgets": budgets, "seconds": round(time.perf_counter() - started, 1)}


def _at(spec: PipelineSpec, sweep: str, value: float) -> PipelineSpec:
    """``spec`` with the sweep's setting at ``value``."""
    if SETTINGS[sweep] == "num_episodes":
        search = dataclasses.replace(spec.search, num_episodes=int(value))
    else:
        search = dataclasses.replace(spec.search, reward_penalty=float(value))
    return dataclasses.replace(spec, search=search)


def best_point(rows: list[dict[str, Any]], sweep: str) -> tuple[str, float]:
    """The latest run of ``sweep`` and its point of highest held-out N@20, averaged over the
    budgets."""
    points = [row for row in rows if row["sweep"] == sweep and row.get("kind") != "retrained"]
    if not points:
        raise SystemExit(f"no {sweep} sweep in the rows: run it first")
    latest = points[-1]["run_id"]
    scored = [row for row in points if row["run_id"] == latest]

    def mean_ndcg(row: dict[str, Any]) -> float:
        values = [budget["valid_ndcg@20"] for budget in row["budgets"].values()]
        return sum(values) / len(values)

    return latest, float(max(scored, key=mean_ndcg)["value"])


def retrain(arguments: argparse.Namespace) -> None:
    spec = pipeline_spec(
        arguments.dataset, arguments.backbone, tuple(arguments.budgets), arguments.config
    )
    target = Path(arguments.results) if arguments.results else RESULTS
    source, value = best_point(load_rows(target), arguments.sweep)
    point = _at(spec, arguments.sweep, value)
    work = Path(arguments.work or ROOT / "bench" / "_work" / f"{source}-retrain-{value:g}")
    work.mkdir(parents=True, exist_ok=True)
    reuse_stages(Path(arguments.base), work, point)
    split, _ = load_split(spec.dataset, arguments.data_dir)
    started = time.perf_counter()
    summary = run_pipeline(
        point, split, work, progress=False, workers=arguments.workers, executor=arguments.executor
    )
    budgets = {
        label: {
            "sparsity": result["achieved_sparsity"],
            "picked": result["chosen_kind"],
            "test": result["test"],
            "valid_ndcg@20": result["valid"]["ndcg@20"],
        }
        for label, result in summary["budgets"].items()
    }
    row = {
        "run_id": f"{source}-retrain",
        "kind": "retrained",
        "sweep": arguments.sweep,
        "value": value,
        "from_run": source,
        "dataset": arguments.dataset,
        "backbone": arguments.backbone,
        "config": "default" if arguments.config is None else f"custom: {arguments.config}",
        "protocol": point.protocol.value,
        "executor": arguments.executor,
        "workers": arguments.workers,
        "budgets": budgets,
        "seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": summary["timings"],
        **provenance(),
    }
    save_json(target, [*load_rows(target), row])
    if not arguments.results:
        write_report(load_rows(RESULTS))


def run(arguments: argparse.Namespace) -> None:
    base = Path(arguments.base)
    spec = pipeline_spec(
        arguments.dataset, arguments.backbone, tuple(arguments.budgets), arguments.config
    )
    split, _ = load_split(spec.dataset, arguments.data_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"sensitivity-{arguments.sweep}-{Path(arguments.dataset).name}-{stamp}"
    work = Path(arguments.work or ROOT / "bench" / "_work" / run_id)
    started = time.perf_counter()
    with stage_runner(arguments.executor, arguments.workers) as runner:
        futures = {}
        for value in arguments.values:
            out = work / f"{arguments.sweep}-{value:g}"
            out.mkdir(parents=True, exist_ok=True)
            futures[value] = runner.submit(
                trial, _at(spec, arguments.sweep, value), split, base, out
            )
        results = {value: future.result() for value, future in futures.items()}
    seconds = round(time.perf_counter() - started, 1)
    common = {
        "run_id": run_id,
        "sweep": arguments.sweep,
        "dataset": arguments.dataset,
        "backbone": arguments.backbone,
        "config": "default" if arguments.config is None else f"custom: {arguments.config}",
        "executor": arguments.executor,
        "workers": arguments.workers,
        "sweep_seconds": seconds,
        **provenance(),
    }
    rows = [{**common, "value": value, **result} for value, result in results.items()]
    target = Path(arguments.results) if arguments.results else RESULTS
    save_json(target, [*load_rows(target), *rows])
    logger.info("%s: %d points in %.0f s", run_id, len(rows), seconds)
    if not arguments.results:
        write_report(load_rows(RESULTS))


def write_report(rows: list[dict[str, Any]]) -> None:
    lines = [
        "# Sensitivity: λ and the number of episodes M",
        "",
        "Written by `bench/sensitivity.py` from `sensitivity.json`. Each point is a search from "
        "the same full model and supernet with one setting changed; per budget, the pool's best "
        "assignment scored by the supernet on the validation interactions the search never saw "
        "(no retraining) and its sparsity. Paper descriptions are references, not our numbers.",
        "",
    ]
    retrained = [row for row in rows if row.get("kind") == "retrained"]
    rows = [row for row in rows if row.get("kind") != "retrained"]
    for run_id in dict.fromkeys(row["run_id"] for row in rows):
        subset = sorted((r for r in rows if r["run_id"] == run_id), key=lambda r: r["value"])
        first = subset[0]
        budgets = list(first["budgets"])
        lines += [
            f"## {first['sweep']}: run `{run_id}`",
            "",
            f"{first['machine']}; {first['date']}; recipe {first['config']}; executor {first['executor']} × "
            f"{first['workers']}, {first['sweep_seconds']:.0f} s; `{first['command']}`. "
            f"Paper: {PAPER[first['sweep']]}",
            "",
            f"| {first['sweep']} | "
            + " | ".join(f"N@20 at {b} (sparsity)" for b in budgets)
            + " | seconds |",
            "|---|" + "---|" * (len(budgets) + 1),
        ]
        for row in subset:
            cells = [
                f"{row['budgets'][b]['valid_ndcg@20']:.4f} ({row['budgets'][b]['sparsity']:.3f})"
                for b in budgets
            ]
            lines.append(f"| {row['value']:g} | " + " | ".join(cells) + f" | {row['seconds']} |")
        plot = _plot(run_id, subset, budgets)
        lines += ["", *([f"![{first['sweep']}]({plot})", ""] if plot else [])]
        for row in (r for r in retrained if r["from_run"] == run_id):
            base = _base_folder(row["command"])
            origin = "the sweep's" if base == _base_folder(first["command"]) else f"`{base}`'s"
            lines += [
                f"Retrained at the best point, {first['sweep']} = {row['value']:g} (the product "
                f"pipeline from {origin} full model, phase teachers and supernet; "
                f"{row['protocol']} protocol; "
                f"{row['executor']} × {row['workers']}, {row['seconds']:.0f} s; "
                f"`{row['command']}`):",
                "",
                "| budget | picked | sparsity | test R@20 | test N@20 | valid N@20 |",
                "|---|---|---|---|---|---|",
                *(
                    f"| {label} | {result['picked']} | {result['sparsity']:.4f} | "
                    f"{result['test']['recall@20']:.4f} | "
                    f"{result['test']['ndcg@20']:.4f} | {result['valid_ndcg@20']:.4f} |"
                    for label, result in row["budgets"].items()
                ),
                "",
            ]
    (REPORTS / "sensitivity.md").write_text("\n".join(lines) + "\n")


def _base_folder(command: str) -> str:
    """The name of the ``--base`` folder a row's command started from."""
    words = command.split()
    return Path(words[words.index("--base") + 1]).name if "--base" in words else "?"


def _plot(run_id: str, rows: list[dict[str, Any]], budgets: list[str]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for budget in budgets:
        xs = [row["value"] for row in rows]
        ys = [row["budgets"][budget]["valid_ndcg@20"] for row in rows]
        axes.plot(xs, ys, "-o", label=f"budget {budget}")
    axes.set_xlabel(rows[0]["sweep"])
    axes.set_ylabel("supernet validation N@20 (held out)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    name = f"plots/{run_id}.png"
    (REPORTS / "plots").mkdir(exist_ok=True)
    figure.savefig(REPORTS / name, dpi=110)
    plt.close(figure)
    return name


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", formatter_class=DefaultsHelp, help="one sweep")
    runner.add_argument("--sweep", choices=list(SETTINGS), required=True)
    runner.add_argument("--values", type=float, nargs="+", required=True, help="its points")
    runner.add_argument("--base", required=True, help="a default pipeline folder to start from")
    add_pipeline_arguments(runner, "trials")
    runner.add_argument("--work", help="work folder (default bench/_work/sensitivity-...)")
    runner.add_argument("--results", help="rows file instead of docs/benchmarks/sensitivity.json")
    again = commands.add_parser(
        "retrain", formatter_class=DefaultsHelp, help="the pipeline at a sweep's best point"
    )
    again.add_argument("--sweep", choices=list(SETTINGS), required=True)
    again.add_argument("--base", required=True, help="the default pipeline folder of the sweep")
    add_pipeline_arguments(again, "units")
    again.add_argument("--work", help="work folder (default bench/_work/<sweep run>-retrain-...)")
    again.add_argument("--results", help="rows file instead of docs/benchmarks/sensitivity.json")
    commands.add_parser("report", help="rewrite sensitivity.md")
    arguments = parser.parse_args()
    if arguments.command == "run":
        run(arguments)
    elif arguments.command == "retrain":
        retrain(arguments)
    else:
        write_report(load_rows(RESULTS))


if __name__ == "__main__":
    main()
