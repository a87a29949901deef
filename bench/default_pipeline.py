"""The product pipeline at the paper's sparsity budgets, measured beside plain ES: `ciess search
--budgets 0.8,0.9,0.95` (`ciess search` with no budget plans byte budgets since session 32;
those are measured by bench/byte_budgets.py).

Usage:
    python bench/default_pipeline.py run --backbone lightgcn --workers 2
    python bench/default_pipeline.py run --backbone lightgcn --protocol reference   # paper tables
    python bench/default_pipeline.py run --device cuda --results rows.json           # lent GPU
    python bench/default_pipeline.py merge rows.json [more.json ...]
    python bench/default_pipeline.py report [--dataset ml-1m]

`run` executes (or resumes) exactly what `ciess search --dataset D --backbone B --budgets
0.8,0.9,0.95` runs (the shipped
recipe, every default; `--protocol reference` is the only change it allows, for the comparison
with the paper's tables: `bench/experiments/protocols.py`) in
`bench/_work/default-<dataset>-<backbone>-<protocol>-<device>/`, then trains plain ES (equal sizes
for every entity, plain BPR, the same recipe and protocol) at each budget. Rows go to
`docs/benchmarks/ciess-<dataset>.json` (or `--results`): `method` `ciess` (the searched candidate),
`es-per-side` (the pipeline's per-side equal candidate, retrained the same way; the pipeline tests
only the candidate it picks on validation, so the other one is tested after it, exactly as the
pipeline tests, outside its wall time) and `es`, with
`config` "default", the `protocol`, and a `run_id` shared by one run's rows.
`report` rewrites `docs/benchmarks/ciess-<dataset>.md` from that JSON twin.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import load_rows, provenance, save_json
from cli_help import DefaultsHelp
from experiments.protocols import PROTOCOLS, protocol_named
from paper import PAPER_METRICS, paper_row

from ciess_core.data import Phase
from ciess_core.executors import DEFAULT_WORKERS
from ciess_core.pipeline import load_split, pipeline_spec, run_product_pipeline
from ciess_core.runs import RunSpec, execute_run, run_sizes
from ciess_core.search.files import BudgetFolder
from ciess_core.search.retraining import test_candidate
from ciess_core.search.teachers import prepare_teachers
from ciess_core.sizes import SizeScheme

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"
REPORTS = ROOT / "docs" / "benchmarks"
METHOD_OF_KIND = {"search": "ciess", "equal": "es-per-side"}
logger = logging.getLogger("bench.default_pipeline")


def results_path(dataset: str) -> Path:
    return REPORTS / f"ciess-{dataset}.json"


def work_dir(arguments: argparse.Namespace) -> Path:
    seed = "" if arguments.seed is None else f"-seed{arguments.seed}"
    device = arguments.device.split(":")[0]
    name = f"default-{arguments.dataset}-{arguments.backbone}-{arguments.protocol}-{device}{seed}"
    return Path(arguments.work or WORK / name)


def run_id_for(work: Path) -> str:
    """One id per work folder, kept there so that a resumed run keeps it."""
    path = work / "run_id.txt"
    if path.exists():
        return path.read_text().strip()
    work.mkdir(parents=True, exist_ok=True)
    run_id = f"{work.name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    path.write_text(run_id + "\n")
    return run_id


def plain_es(
    arguments: argparse.Namespace, spec: Any, split: Any, work: Path, budget: float
) -> dict[str, Any]:
    """Plain ES at ``budget`` under the pipeline's recipe and protocol, cached in ``work``."""
    path = work / f"es-{budget:g}.json"
    if path.exists():
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    run_spec = RunSpec(
        dataset=spec.dataset,
        backbone=spec.backbone,
        training=spec.training,
        size_scheme=SizeScheme.EQUAL,
        target_sparsity=budget,
        protocol=spec.protocol,
    )
    sizes = run_sizes(run_spec, split.num_users, split.num_items)
    _, outcome, _ = execute_run(run_spec, split, sizes, progress=not arguments.no_progress)
    result = {
        "achieved_sparsity": outcome.achieved_sparsity,
        "valid": outcome.valid_metrics,
        "test": outcome.test_metrics,
        "seconds": round(outcome.seconds, 2),
    }
    save_json(path, result)
    return result


def pipeline_rows(
    arguments: argparse.Namespace,
    spec: Any,
    split: Any,
    fingerprint: str,
    work: Path,
    common: dict[str, Any],
) -> list[dict[str, Any]]:
    """Run (or resume) the pipeline in ``work``; one row per retrained candidate and budget."""
    resumed = (work / "full").exists()
    started = time.perf_counter()
    summary = run_product_pipeline(
        spec,
        work,
        split,
        fingerprint,
        workers=arguments.workers,
        progress=not arguments.no_progress,
    )
    pipeline_seconds = round(time.perf_counter() - started, 1)
    budgets = {
        key: {
            **result,
            "candidates": [
                test_unpicked(spec, split, work, float(key), c) for c in result["candidates"]
            ],
        }
        for key, result in summary["budgets"].items()
    }
    rows = candidate_rows(budgets, list(spec.search.budgets), common)
    teacher = work / "teacher" / "summary.json"
    if teacher.exists() and "test" in (full := json.loads(teacher.read_text())):
        rows.append(
            {
                **common,
                "method": "full",
                "budget": 0.0,
                "achieved_sparsity": 0.0,
                "test": full["test"],
                "valid": {},
                "served": False,
                "seconds": full["seconds"],
            }
        )
    for row in rows:
        if row["method"] == "ciess":
            row.update(
                pipeline_wall_seconds=pipeline_seconds,
                pipeline_resumed=resumed,
                stage_seconds=summary["timings"],
                workers=arguments.workers,
            )
    return rows


def test_unpicked(
    spec: Any, split: Any, work: Path, budget: float, record: dict[str, Any]
) -> dict[str, Any]:
    """A candidate's record with test numbers: the pipeline tests only its pick (clean
    protocol); the report also tests the other candidate, exactly as the pipeline would have
    (``test_candidate``, the same teacher), after the pipeline and outside its wall time.
    Cached in ``work``; the record gains ``tested_after_pipeline``."""
    if "test" in record:
        return record
    path = work / f"tested-{budget:g}-{record['candidate']}.json"
    if path.exists():
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    teachers, _ = prepare_teachers(spec, split, work, False, (Phase.TEST,))
    folder = BudgetFolder.of(work, budget)
    tested = test_candidate(spec, split, folder, budget, record, False, teachers)
    tested = {**tested, "tested_after_pipeline": True}
    save_json(path, tested)
    return tested


def run(arguments: argparse.Namespace) -> None:
    protocol = protocol_named(arguments.protocol)
    overrides = {} if arguments.seed is None else {"seed": arguments.seed}
    spec = pipeline_spec(
        arguments.dataset,
        arguments.backbone,
        tuple(arguments.budgets),
        config_file=arguments.config,
        overrides=overrides,
        device=arguments.device,
        protocol=protocol,
    )
    work = work_dir(arguments)
    run_id = run_id_for(work)
    split, fingerprint = load_split(spec.dataset, arguments.data_dir)
    common = {
        "dataset": arguments.dataset,
        "backbone": arguments.backbone,
        "config": "default" if arguments.config is None else f"custom: {arguments.config}",
        "protocol": protocol.value,
        "run_id": run_id,
        "device": arguments.device,
        "seed": spec.training.seed,
        **provenance(),
    }
    rows: list[dict[str, Any]] = []
    if arguments.part in ("both", "pipeline"):
        rows += pipeline_rows(arguments, spec, split, fingerprint, work, common)
    if arguments.part in ("both", "es"):
        for budget in spec.search.budgets:
            es = plain_es(arguments, spec, split, work, budget)
            rows.append({**common, "method": "es", "budget": budget, "served": False, **es})
    target = Path(arguments.results) if arguments.results else results_path(arguments.dataset)
    methods = {row["method"] for row in rows}
    kept = [
        row
        for row in load_rows(target)
        if row.get("run_id") != run_id or row.get("method") not in methods
    ]
    save_json(target, kept + rows)
    logger.info("%d rows of run %s written to %s", len(rows), run_id, target)
    if not arguments.results:
        write_report(arguments.dataset)


def candidate_rows(
    summary_budgets: dict[str, Any], budgets: list[float], common: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per retrained candidate of each budget in ``summary_budgets`` (result.json's)."""
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        result = summary_budgets.get(f"{budget:g}")
        if result is None:
            continue
        for candidate in result["candidates"]:
            if "test" not in candidate:  # not the pick, and not tested after the pipeline
                continue
            rows.append(
                {
                    **common,
                    "method": METHOD_OF_KIND[candidate["kind"]],
                    "budget": budget,
                    "achieved_sparsity": candidate["achieved_sparsity"],
                    "test": candidate["test"],
                    "valid": candidate["valid"],
                    "served": candidate["candidate"] == result["chosen"],
                    "seconds": candidate["seconds"],
                    "tested_after_pipeline": candidate.get("tested_after_pipeline", False),
                }
            )
    return rows


def collect(arguments: argparse.Namespace) -> None:
    """Rows of a work folder whose pipeline call was stopped after its budgets' retraining (the
    test numbers are final; the deployment stage, which changes none, had not finished), with
    the common fields of that run's plain-ES rows file."""
    work = Path(arguments.work)
    like = load_rows(Path(arguments.like))
    if not like:
        raise SystemExit(f"{arguments.like} holds no rows to take the run's fields from")
    keep = ("dataset", "backbone", "config", "protocol", "run_id", "device", "seed", "machine")
    common = {key: like[0][key] for key in keep}
    common["date"] = like[0]["date"]
    common["command"] = arguments.command_line
    budgets = sorted({row["budget"] for row in like})
    results = {}
    for budget in budgets:
        if (result := BudgetFolder.of(work, budget).result()) is not None:
            results[f"{budget:g}"] = result
    rows = candidate_rows(results, budgets, common)
    for row in rows:
        row["note"] = arguments.note
    target = Path(arguments.results)
    save_json(target, [*load_rows(target), *rows])
    logger.info("%d rows collected from %s into %s", len(rows), work, target)


def merge(arguments: argparse.Namespace) -> None:
    for source in arguments.files:
        rows = load_rows(Path(source))
        by_dataset: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_dataset.setdefault(row["dataset"], []).append(row)
        for dataset, new in by_dataset.items():
            replaced = {(row["run_id"], row["method"]) for row in new}
            target = results_path(dataset)
            kept = [
                row
                for row in load_rows(target)
                if (row.get("run_id"), row.get("method")) not in replaced
            ]
            save_json(target, kept + new)
            write_report(dataset)


def served_cell(row: dict[str, Any]) -> str:
    if row.get("served"):
        return "yes"
    return "no (tested after the pipeline)" if row.get("tested_after_pipeline") else ""


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def change(value: float, reference: float) -> str:
    return f"{100 * (value / reference - 1):+.1f} %"


def run_section(rows: list[dict[str, Any]]) -> list[str]:
    first = rows[0]
    lines = [
        f"### {first['backbone']}, {first['protocol']} protocol, {first['device']} "
        f"(run `{first['run_id']}`)",
        "",
        f"{first['date']}; {first['machine']}; seed {first['seed']}; commands: "
        + "; ".join(f"`{command}`" for command in sorted({row["command"] for row in rows})),
        "",
        *[f"Note: {note}\n" for note in sorted({row.get("note", "") for row in rows} - {""})],
        "| budget | method | served | sparsity | R@5 | R@20 | N@5 | N@20 | valid N@20 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"full": -1, "ciess": 0, "es-per-side": 1, "es": 2}
    for row in sorted(rows, key=lambda r: (r["budget"], order.get(r["method"], 9))):
        test, valid = row["test"], row.get("valid") or {}
        lines.append(
            f"| {'–' if row['method'] == 'full' else format(row['budget'], 'g')} | {row['method']} | {served_cell(row)} | "
            f"{row['achieved_sparsity']:.4f} | "
            + " | ".join(fmt(test.get(metric)) for metric in PAPER_METRICS)
            + f" | {fmt(valid.get('ndcg@20'))} |"
        )
        if row["method"] == "es" and row["protocol"] == "reference":
            paper = paper_row(row["backbone"], "ciess", row["budget"], row["dataset"])
            if paper is not None:
                lines.append(
                    f"| {row['budget']:g} | paper's CIESS (reference) | | | "
                    + " | ".join(fmt(paper.get(metric)) for metric in PAPER_METRICS)
                    + " | |"
                )
    lines += ["", "Test N@20 of the searched candidate (`ciess`) against the others, same run:", ""]
    for budget in sorted({row["budget"] for row in rows}):
        at = {row["method"]: row for row in rows if row["budget"] == budget}
        if "ciess" not in at:
            continue
        ours = at["ciess"]["test"]["ndcg@20"]
        parts = [
            f"vs {method} {change(ours, at[method]['test']['ndcg@20'])}"
            for method in ("es", "es-per-side")
            if method in at
        ]
        if first["protocol"] == "reference":
            paper = paper_row(first["backbone"], "ciess", budget, first["dataset"])
            if paper is not None:
                parts.append(f"vs the paper's CIESS {change(ours, paper['ndcg@20'])}")
        lines.append(f"- {budget:g}: " + ", ".join(parts))
    timed = [row for row in rows if row["method"] == "ciess" and "stage_seconds" in row]
    if timed:
        row = timed[0]
        stages = ", ".join(
            f"{name} {seconds:.0f}" for name, seconds in row["stage_seconds"].items()
        )
        resumed = " (resumed: this call's time only)" if row.get("pipeline_resumed") else ""
        lines += [
            "",
            f"Pipeline wall time: **{row['pipeline_wall_seconds'] / 60:.1f} min** with "
            f"{row['workers']} worker(s){resumed}; stage seconds: {stages}.",
        ]
    return [*lines, ""]


def write_report(dataset: str) -> None:
    rows = load_rows(results_path(dataset))
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        runs.setdefault(row["run_id"], []).append(row)
    lines = [
        f"# The default pipeline on {dataset}",
        "",
        "`ciess search --dataset " + dataset + " --backbone B --budgets 0.8,0.9,0.95` with no "
        "other option (before session 32, `ciess search` with no option at all): the shipped "
        "recipe (`ciess_core/recipes.toml`), the supernet-scored CIESS search, the share and "
        "spread fits on held-out validation, the searched candidate and per-side equal sizes "
        "both retrained with distillation, the one that validates better served. Rows: `ciess` "
        "(the searched candidate), `es-per-side` (the pipeline's per-side equal candidate, "
        "retrained the same way in the same run), `es` (plain equal sizes, plain BPR, same "
        "recipe and protocol). `served` marks the candidate the pipeline picked on validation.",
        "",
        "The **clean** protocol's numbers are the product's (selection on validation, test "
        "once). Rows marked **reference** select on the test set as the authors' code does; "
        "they exist only to compare with the paper's tables, whose rows are printed as "
        "references, never as ours. Written by `python bench/default_pipeline.py report` from "
        f"`ciess-{dataset}.json`. Earlier experiments: `ciess-{dataset}-experiments.md`.",
        "",
    ]
    key = {"clean": 0, "reference": 1}
    for run_rows in sorted(
        runs.values(),
        key=lambda r: (r[0]["backbone"], key.get(r[0]["protocol"], 2), r[0]["device"]),
    ):
        lines += run_section(run_rows)
    notes = REPORTS / f"ciess-{dataset}.notes.md"
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    (REPORTS / f"ciess-{dataset}.md").write_text("\n".join(lines))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run the default pipeline and plain ES")
    runner.add_argument("--dataset", default="ml-1m", help="registered dataset")
    runner.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR)")
    runner.add_argument("--backbone", default="lightgcn", choices=["lightgcn", "ngcf", "ncf"])
    runner.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    runner.add_argument(
        "--protocol",
        default="clean",
        choices=sorted(PROTOCOLS),
        help="clean: the product's; reference: the paper's tables' (experiments/protocols.py)",
    )
    runner.add_argument("--device", default="cpu", help="cpu or cuda")
    runner.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="the pipeline's processes"
    )
    runner.add_argument("--seed", type=int, help="overrides the recipe's seed")
    runner.add_argument("--config", help="recipe file, for dry runs (rows say 'custom')")
    runner.add_argument("--work", help="work folder (default bench/_work/default-...)")
    runner.add_argument("--results", help="rows file instead of the dataset's JSON twin")
    runner.add_argument("--no-progress", action="store_true", help="hide progress bars")
    runner.add_argument(
        "--part",
        default="both",
        choices=["both", "pipeline", "es"],
        help="run the pipeline, plain ES, or both (two processes can share one work folder)",
    )
    merger = commands.add_parser("merge", help="fold rows files into the JSON twins")
    merger.add_argument("files", nargs="+")
    collector = commands.add_parser("collect", help="rows of a stopped run's finished budgets")
    collector.add_argument("--work", required=True, help="the run's work folder")
    collector.add_argument("--like", required=True, help="its plain-ES rows file")
    collector.add_argument("--results", required=True, help="rows file to append to")
    collector.add_argument("--note", default="", help="said beside every row in the report")
    collector.add_argument("--command-line", required=True, help="the stopped run's command line")
    reporter = commands.add_parser("report", help="rewrite the report from its JSON twin")
    reporter.add_argument("--dataset", default="ml-1m")
    arguments = parser.parse_args()
    if arguments.command == "run":
        run(arguments)
    elif arguments.command == "merge":
        merge(arguments)
    elif arguments.command == "collect":
        collect(arguments)
    else:
        write_report(arguments.dataset)


if __name__ == "__main__":
    main()
