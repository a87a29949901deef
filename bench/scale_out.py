"""The three-budget pipeline on each executor: wall time, stage times, and the same models.

Usage:
    python bench/scale_out.py run --executor processes --workers 2
    python bench/scale_out.py run --executor ray --workers 4 [--ray-address HOST:PORT]
    python bench/scale_out.py report

`run` executes ``ciess search --dataset D --backbone B --budgets 0.8,0.9,0.95`` with the shipped
recipe (what `bench/default_pipeline.py` measures) on one executor
(:func:`ciess_core.search.parallel.stage_runner`) in a fresh work folder, except that the full
model, its phase teachers and the supernet are copied from ``--reuse`` when given (they run
before any unit is parallel or beside the search; ``stage_seconds`` then says which stages ran).
Rows (``executor``, ``workers``, ``cpus``, ``seconds``, ``stage_seconds``, ``dataset``,
``backbone``, ``budgets``, and each budget's test N@20, so that executors can be checked to give
the same models) go to ``docs/benchmarks/scale-out.json``; `report` rewrites ``scale-out.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import load_rows, provenance, save_json
from byte_budgets import reuse_stages
from cli_help import DefaultsHelp, add_pipeline_arguments

from ciess_core.pipeline import load_split, pipeline_spec, run_product_pipeline

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "docs" / "benchmarks"
RESULTS = REPORTS / "scale-out.json"
logger = logging.getLogger("bench.scale_out")
# The stages a ``--reuse`` run copies (their seconds are the source run's).
REUSED_STAGES = ("full_model", "evaluator_prepare", "teacher", "teacher-deploy")


def run(arguments: argparse.Namespace) -> None:
    spec = pipeline_spec(
        arguments.dataset,
        arguments.backbone,
        tuple(arguments.budgets),
        config_file=arguments.config,
        device=arguments.device,
    )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dataset = Path(arguments.dataset).name
    name = f"scale-out-{dataset}-{arguments.executor}-{arguments.workers}-{stamp}"
    work = Path(arguments.work or ROOT / "bench" / "_work" / name)
    work.mkdir(parents=True)
    if arguments.reuse:
        reuse_stages(Path(arguments.reuse), work, spec)
    if arguments.ray_address:
        os.environ["RAY_ADDRESS"] = arguments.ray_address
    split, fingerprint = load_split(spec.dataset, arguments.data_dir)
    started = time.perf_counter()
    summary = run_product_pipeline(
        spec,
        work,
        split,
        fingerprint,
        workers=arguments.workers,
        progress=False,
        executor=arguments.executor,
    )
    seconds = round(time.perf_counter() - started, 1)
    row = {
        "run_id": name,
        "executor": arguments.executor,
        "workers": arguments.workers,
        "cpus": os.cpu_count(),
        "ray_address": arguments.ray_address,
        "seconds": seconds,
        "stage_seconds": summary["timings"],
        "reused": arguments.reuse,
        "dataset": arguments.dataset,
        "backbone": arguments.backbone,
        "config": "default" if arguments.config is None else f"custom: {arguments.config}",
        "budgets": list(arguments.budgets),
        "test_ndcg@20": {label: r["test"]["ndcg@20"] for label, r in summary["budgets"].items()},
        "device": arguments.device,
        **provenance(),
    }
    target = Path(arguments.results) if arguments.results else RESULTS
    save_json(target, [*load_rows(target), row])
    logger.info("%s: %.0f s", name, seconds)
    if not arguments.results:
        write_report(load_rows(RESULTS))


def write_report(rows: list[dict[str, Any]]) -> None:
    lines = [
        "# Scale-out: the three-budget pipeline on each executor",
        "",
        "Written by `bench/scale_out.py` from `scale-out.json`. `seconds`: the pipeline call's "
        "wall time; the stage times are each stage's own (with workers their sum exceeds the "
        "wall time). A run with `reused` copied the full model, the supernet and the phase "
        "teachers from that folder: those stages did not run, and their seconds are the source "
        "run's.",
        "",
        "| run | config | executor | workers | cpus | device | seconds | test N@20 per budget | "
        "reused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        scores = ", ".join(f"{k}: {v:.4f}" for k, v in row["test_ndcg@20"].items())
        lines.append(
            f"| `{row['run_id']}` | {row['config']} | {row['executor']} | {row['workers']} | "
            f"{row['cpus']} | "
            f"{row['device']} | {row['seconds']:.0f} | {scores} | {row['reused'] or '–'} |"
        )
    stages = sorted({stage for row in rows for stage in row["stage_seconds"]}, key=_stage_order)
    lines += [
        "",
        "Stage seconds (each stage's own; – where it did not run):",
        "",
        "| run | " + " | ".join(stages) + " |",
        "|---|" + "---|" * len(stages),
    ]
    for row in rows:
        timings = row["stage_seconds"]
        copied = REUSED_STAGES if row["reused"] else ()
        cells = [
            "–" if stage not in timings
            else f"copied ({timings[stage]:.0f})" if stage in copied
            else f"{timings[stage]:.0f}"
            for stage in stages
        ]  # fmt: skip
        lines.append(f"| `{row['run_id']}` | " + " | ".join(cells) + " |")
    lines += ["", "Machines and commands:", ""]
    lines += [
        f"- `{row['run_id']}`: {row['date']}; {row['machine']}; `{row['command']}`" for row in rows
    ]
    lines += ["", "Findings: `scale-out.notes.md`."]
    (REPORTS / "scale-out.md").write_text("\n".join(lines) + "\n")


def _stage_order(stage: str) -> tuple[int, str]:
    """The pipeline's order: the shared stages first, then each budget's, by budget."""
    shared = ["full_model", "evaluator_prepare", "search", "teacher", "teacher-deploy"]
    if stage in shared:
        return shared.index(stage), ""
    kinds = ["fit", "equal_fit", "retrain", "deploy"]
    kind, _, budget = stage.rpartition("_")
    rank = kinds.index(kind) if kind in kinds else len(kinds)
    return len(shared), f"{budget}-{rank}-{kind}"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", formatter_class=DefaultsHelp, help="one executor's run")
    add_pipeline_arguments(runner, "units")
    runner.add_argument("--ray-address", help="an existing Ray cluster (else a local one)")
    runner.add_argument("--device", default="cpu", help="cpu or cuda")
    runner.add_argument(
        "--reuse", help="pipeline folder whose full model, teachers, supernet to copy"
    )
    runner.add_argument("--work", help="work folder (default bench/_work/scale-out-...)")
    runner.add_argument("--results", help="rows file instead of docs/benchmarks/scale-out.json")
    commands.add_parser("report", help="rewrite scale-out.md")
    arguments = parser.parse_args()
    if arguments.command == "run":
        run(arguments)
    else:
        write_report(load_rows(RESULTS))


if __name__ == "__main__":
    main()
