"""Quality per byte: the byte planner against the methods a practitioner would pick instead.

Usage:
    python bench/byte_budgets.py run --dataset ml-1m --backbone lightgcn --workers 2
    python bench/byte_budgets.py run ... --reuse bench/_work/default-ml-1m-lightgcn-clean-cpu-s18
    python bench/byte_budgets.py report

`run` executes (or resumes) in `bench/_work/bytes-<dataset>-<backbone>-<protocol>-<device>/`:

- `planner`: the product pipeline with byte budgets (`ciess search --budget-bytes`, every other
  setting the shipped recipe's) at each ratio; the pick it tests is the row.
- `full`: the pipeline's full float32 model of the test phase (trained on train ∪ validation,
  the planner's teacher), tested; `byte_ratio` null.
- `ptq`: that model quantised after training, per row, float16, int8 or int4; at each ratio the
  type that fits and validates best (the search phase's full model scored on validation).
- `magprune`: that model with the smallest |w| of each table zeroed (Tran et al., 2024), each
  row keeping at least a minimum chosen on validation from 1, 2, 4, 8; stored sparse with a
  column index per kept value (`ciess_core/pruning.py`); no retraining.
- `es`, `mr`, `ciess`: equal sizes, mixed random sizes and the search's best assignment (CIESS
  as the paper defines it: plain BPR, no distillation, no fits) at the parameters float32 leaves
  within the ratio, float32, trained and tested under the same protocol.

Every row: `bytes` (stored embedding bytes, every file) ≤ `byte_ratio` × `dense_fp32_bytes`.
The planner's retrainings start where the recipe says (LightGCN: from each phase's teacher
turned to its principal axes and cut; `--retrain-start random` for the random start, which
folders written before the setting ran). The baselines always start from random weights.
`--reuse DIR` copies the full model, its teachers and the supernet from an earlier pipeline
folder of the same recipe (they do not depend on the budgets), to spare their hours.
Rows go to `docs/benchmarks/bytes.json`; `report` rewrites `docs/benchmarks/bytes.md` and a PNG
per dataset and backbone under `docs/benchmarks/plots/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import load_rows, provenance, save_json
from cli_help import DefaultsHelp
from default_pipeline import run_id_for
from experiments.protocols import PROTOCOLS, protocol_named

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.json_form import jsonable
from ciess_core.models import Backbone
from ciess_core.pipeline import claim_pipeline_folder, load_split, pipeline_spec
from ciess_core.pruning import kept_within, magnitude_mask, pruned_bytes
from ciess_core.runs import RunSpec, Start, execute_run
from ciess_core.search.budgets import ByteBudget, sparsity_of
from ciess_core.search.files import chosen_candidate
from ciess_core.search.parallel import StageRunner
from ciess_core.search.pipeline import PipelineSpec, run_pipeline
from ciess_core.search.pool import AssignmentPool
from ciess_core.search.shared_stages import copy_shared_stages, shared_stages_key
from ciess_core.search.teachers import TEACHER_DIRECTORIES, load_full_model
from ciess_core.sizes import SizeAssignment, SizeScheme, mixed_random_sizes
from ciess_core.storage import VALUE_TYPES, dense_fp32_bytes, stored_bytes, widest_equal_size
from ciess_core.training import evaluate_model
from ciess_core.training.checkpoints import training_checkpoints

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"
REPORTS = ROOT / "docs" / "benchmarks"
RESULTS = REPORTS / "bytes.json"
RATIOS = (0.2, 0.1, 0.05, 0.025, 0.01)
ROW_MINIMA = (1, 2, 4, 8)
METHODS = ("full", "ptq", "magprune", "es", "mr", "ciess", "planner")
METRICS = ("recall@5", "recall@20", "ndcg@5", "ndcg@20")
logger = logging.getLogger("bench.bytes")


def work_dir(arguments: argparse.Namespace) -> Path:
    device = arguments.device.split(":")[0]
    name = f"bytes-{arguments.dataset}-{arguments.backbone}-{arguments.protocol}-{device}"
    return Path(arguments.work or WORK / name)


def reuse_stages(source: Path, pipeline: Path, spec: PipelineSpec) -> None:
    """Copy the full model, teachers and supernet of ``source`` (a pipeline folder of the same
    data, backbone, training, protocol and supernet schedule) into ``pipeline`` where they are
    missing."""
    theirs = shared_stages_key(json.loads((source / "spec.json").read_text()))
    ours = shared_stages_key(jsonable(spec))
    for key in ours:
        if theirs[key] != ours[key]:
            raise SystemExit(f"--reuse {source}: its {key} differs from this run's")
    copy_shared_stages(source, pipeline)


def evaluate(
    model: Backbone, split: DatasetSplit, phase: Phase, value_type: str = "float32"
) -> dict[str, float]:
    train, held_out = split.phase(phase)
    return evaluate_model(model, train, held_out, value_type=value_type).mean()


def full_rows(spec: PipelineSpec, split: DatasetSplit, pipeline: Path) -> list[dict[str, Any]]:
    """``full`` and ``ptq`` rows: the full model as trained, and quantised after training."""
    entities, width = split.num_users + split.num_items, spec.backbone.max_size
    tables = spec.backbone_tables
    selected = load_full_model(spec, split, pipeline / "full")  # trained on train
    tested = load_full_model(spec, split, pipeline / TEACHER_DIRECTORIES[Phase.TEST], Phase.TEST)
    metric = spec.training.selection_metric
    scored: dict[str, dict[str, Any]] = {}
    for value_type in VALUE_TYPES:  # every size is the width: the sizes are one run
        started = time.perf_counter()
        scored[value_type] = {
            "bytes": stored_bytes(entities, entities * width, value_type, width, tables, 1),
            "valid": evaluate(selected, split, Phase.SEARCH, value_type),
            "seconds": round(time.perf_counter() - started, 2),
        }
    reported = {"float32"}
    picks = []
    for ratio in spec.byte_ratios:
        allowed = ByteBudget(ratio).allowed_bytes(entities, width, tables)
        fitting = [t for t in VALUE_TYPES[1:] if scored[t]["bytes"] <= allowed]
        if fitting:
            best = max(fitting, key=lambda t: scored[t]["valid"][metric])
            picks.append((ratio, best))
            reported.add(best)
    for value_type in sorted(reported):  # the test split: only for the models reported
        started = time.perf_counter()
        scored[value_type]["test"] = evaluate(tested, split, Phase.TEST, value_type)
        scored[value_type]["seconds"] += round(time.perf_counter() - started, 2)
    rows = [{"method": "full", "value_type": "float32", "byte_ratio": None, **scored["float32"]}]
    rows += [
        {"method": "ptq", "value_type": best, "byte_ratio": ratio, **scored[best]}
        for ratio, best in picks
    ]
    return rows


def magprune_rows(spec: PipelineSpec, split: DatasetSplit, pipeline: Path) -> list[dict[str, Any]]:
    """``magprune`` rows: the row minimum chosen on validation (search-phase full model), the
    test-phase full model pruned with it and tested."""
    entities, width = split.num_users + split.num_items, spec.backbone.max_size
    tables = spec.backbone_tables
    selected = load_full_model(spec, split, pipeline / "full")
    tested = load_full_model(spec, split, pipeline / TEACHER_DIRECTORIES[Phase.TEST], Phase.TEST)
    metric = spec.training.selection_metric
    rows = []
    for ratio in spec.byte_ratios:
        started = time.perf_counter()
        allowed = ByteBudget(ratio).allowed_bytes(entities, width, tables)
        kept = kept_within(allowed, entities, width, tables)
        minima = [m for m in ROW_MINIMA if entities * m <= kept]
        if not minima:
            continue
        valid = {m: pruned_metrics(selected, split, Phase.SEARCH, kept, m) for m in minima}
        minimum = max(minima, key=lambda m: valid[m][metric])
        rows.append(
            {
                "method": "magprune",
                "value_type": "float32",
                "byte_ratio": ratio,
                "bytes": pruned_bytes(entities, kept, width, tables),
                "row_minimum": minimum,
                "valid": valid[minimum],
                "test": pruned_metrics(tested, split, Phase.TEST, kept, minimum),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    return rows


def pruned_metrics(
    model: Backbone, split: DatasetSplit, phase: Phase, kept: int, row_minimum: int
) -> dict[str, float]:
    """``model`` scored with every table magnitude-pruned to ``kept`` values (then restored)."""
    originals = [table.weight.detach().clone() for table in model.tables()]
    try:
        with torch.no_grad():
            for table in model.tables():
                mask = magnitude_mask(table.weight.detach().cpu().numpy(), kept, row_minimum)
                table.weight.mul_(torch.from_numpy(mask).to(table.weight))
        return evaluate(model, split, phase)
    finally:
        with torch.no_grad():
            for table, original in zip(model.tables(), originals, strict=True):
                table.weight.copy_(original)


def _same_sizes(cached: dict[str, Any], sizes: SizeAssignment) -> bool:
    """Whether a cached baseline result was computed for ``sizes``."""
    if "sizes_key" in cached:
        return bool(cached["sizes_key"] == sizes.key)
    return abs(float(cached["achieved_sparsity"]) - sizes.sparsity) < 1e-12


def sized_run(
    spec: PipelineSpec, split: DatasetSplit, method: str, sizes: SizeAssignment, path: Path
) -> dict[str, Any]:
    """``sizes`` trained and tested under the spec's protocol, plain BPR, float32; cached, and
    its trainings checkpointed in the work folder's ``checkpoints/`` (``path``: the work
    folder's ``baselines/<method>-<ratio>.json``). A cached result is used only for the same
    sizes (files written before they recorded theirs: the same sparsity); it then says when it
    was computed (``cached_from``)."""
    if path.exists():
        cached: dict[str, Any] = json.loads(path.read_text())
        if _same_sizes(cached, sizes):
            return {**cached, "cached_from": cached.get("computed", "an earlier run")}
        logger.info("%s holds other sizes than %s's now: training again", path, method)
    scheme = {"es": SizeScheme.EQUAL, "mr": SizeScheme.RANDOM, "ciess": SizeScheme.CIESS}[method]
    run_spec = RunSpec(
        dataset=spec.dataset,
        backbone=spec.backbone,
        training=spec.training,
        size_scheme=scheme,
        target_sparsity=sizes.sparsity,
        protocol=spec.protocol,
    )
    # the run folder's checkpoints: an interrupted baseline resumes at its last minute
    with training_checkpoints(path.parent.parent / "checkpoints"):
        _, outcome, _ = execute_run(run_spec, split, sizes, progress=False)
    result = {
        "achieved_sparsity": sizes.sparsity,
        "sizes_key": sizes.key,
        "computed": provenance(),
        "valid": outcome.valid_metrics,
        "test": outcome.test_metrics,
        "seconds": round(outcome.seconds, 2),
    }
    save_json(path, result)
    return result


def sized_rows(
    runner: StageRunner, spec: PipelineSpec, split: DatasetSplit, work: Path
) -> list[dict[str, Any]]:
    """``es``, ``mr`` and ``ciess`` rows at the parameters float32 leaves within each ratio."""
    entities, width = split.num_users + split.num_items, spec.backbone.max_size
    tables = spec.backbone_tables
    pool = AssignmentPool.load(work / "pipeline" / "search" / "pool")
    rng = np.random.default_rng(spec.training.seed)
    jobs = []
    for ratio in spec.byte_ratios:
        parameters = ByteBudget(ratio).parameters("float32", entities, width, tables)
        if parameters < entities:
            continue
        sparsity = sparsity_of(parameters, entities, width)
        shape = (split.num_users, split.num_items)
        allowed = ByteBudget(ratio).allowed_bytes(entities, width, tables)
        # Equal sizes are stored as one run: they may keep more than the per-row sizes' room.
        equal = widest_equal_size(allowed, entities, "float32", width, tables)
        sizes = {
            "es": SizeAssignment.equal(*shape, equal, width),
            "mr": mixed_random_sizes(*shape, width, sparsity, rng),
            "ciess": pool.selection(sparsity)[0],
        }
        for method, assignment in sizes.items():
            if assignment.bytes("float32", tables) > allowed:
                raise SystemExit(f"{method} at {ratio} stores more than its {allowed} bytes")
            path = work / "baselines" / f"{method}-{ratio:g}.json"
            future = runner.submit(sized_run, spec, split, method, assignment, path)
            jobs.append((method, ratio, assignment, future))
    rows = []
    for method, ratio, assignment, future in jobs:
        result = future.result()
        row = {"method": method, "value_type": "float32", "byte_ratio": ratio}
        rows.append({**row, "bytes": assignment.bytes("float32", tables), **result})
    return rows


def planner_rows(
    spec: PipelineSpec, summary: dict[str, Any], pipeline: Path
) -> list[dict[str, Any]]:
    rows = []
    for ratio in spec.byte_ratios:
        result = summary["budgets"][ByteBudget(ratio).label]
        chosen = chosen_candidate(result)
        plan = json.loads((pipeline / ByteBudget(ratio).label / "plan.json").read_text())
        rows.append(
            {
                "method": "planner",
                "value_type": result["value_type"],
                "byte_ratio": ratio,
                "bytes": chosen["bytes"],
                "achieved_sparsity": result["achieved_sparsity"],
                "chosen_kind": result["chosen_kind"],
                "valid": result["valid"],
                "test": result["test"],
                "seconds": result["seconds"],
                "plan": plan,
            }
        )
    return rows


def run(arguments: argparse.Namespace) -> None:
    protocol = protocol_named(arguments.protocol)
    spec = pipeline_spec(
        arguments.dataset,
        arguments.backbone,
        config_file=arguments.config,
        device=arguments.device,
        protocol=protocol,
        byte_ratios=tuple(arguments.ratios),
    )
    if arguments.retrain_start is not None:
        spec = dataclasses.replace(spec, retrain_start=Start(arguments.retrain_start))
    work = work_dir(arguments)
    run_id = run_id_for(work)
    pipeline = work / "pipeline"
    try:
        claim_pipeline_folder(pipeline, spec)
    except ConfigError as error:
        raise SystemExit(
            f"{error}: another --work, with --reuse {pipeline}, keeps its full model, teachers "
            "and supernet"
        ) from None
    if arguments.reuse:
        reuse_stages(Path(arguments.reuse), pipeline, spec)
    split, _ = load_split(spec.dataset, arguments.data_dir)
    started = time.perf_counter()
    summary = run_pipeline(spec, split, pipeline, progress=False, workers=arguments.workers)
    logger.info("planner pipeline done in %.0f s", time.perf_counter() - started)
    rows = planner_rows(spec, summary, pipeline)
    with StageRunner(arguments.workers) as runner, runner.sharing_cores():
        rows += sized_rows(runner, spec, split, work)
    rows += full_rows(spec, split, pipeline)
    rows += magprune_rows(spec, split, pipeline)
    entities = split.num_users + split.num_items
    dense = dense_fp32_bytes(entities, spec.backbone.max_size, spec.backbone_tables)
    common = {
        "dataset": arguments.dataset,
        "backbone": arguments.backbone,
        "protocol": protocol.value,
        "split": "test",
        "dense_fp32_bytes": dense,
        "run_id": run_id,
        "device": arguments.device,
        **provenance(),
        "config": "default" if arguments.config is None else f"custom: {arguments.config}",
        "retrain_start": spec.retrain_start.value,
        "pipeline_timings": summary["timings"],
    }
    finished = []
    for row in rows:
        row = {**common, **row, "metrics": {k: row["test"][k] for k in METRICS}}
        if row["byte_ratio"] is not None and row["bytes"] > row["byte_ratio"] * dense:
            raise SystemExit(f"{row['method']} at {row['byte_ratio']} exceeds its budget")
        finished.append(row)
    target = Path(arguments.results) if arguments.results else RESULTS
    kept = [r for r in load_rows(target) if r.get("run_id") != run_id]
    save_json(target, kept + finished)
    logger.info("%d rows of %s written to %s", len(finished), run_id, target)
    if not arguments.results:
        write_report()


def merge(rows_file: Path) -> None:
    """Put the rows of a run written with ``--results`` into ``bytes.json`` (replacing any rows
    of the same runs) and rewrite the report."""
    rows = load_rows(rows_file)
    if not rows:
        raise SystemExit(f"{rows_file}: no rows to merge")
    runs = {row["run_id"] for row in rows}
    kept = [row for row in load_rows(RESULTS) if row.get("run_id") not in runs]
    save_json(RESULTS, kept + rows)
    logger.info("%d rows of %s merged into %s", len(rows), ", ".join(sorted(runs)), RESULTS)
    write_report()


def write_report() -> None:
    """``bytes.md`` and its plots from ``bytes.json``."""
    from byte_budgets_report import write_bytes_report

    write_bytes_report(load_rows(RESULTS), REPORTS)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="the planner and every baseline at every ratio")
    runner.add_argument("--dataset", default="ml-1m", help="registered dataset")
    runner.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR)")
    runner.add_argument("--backbone", default="lightgcn", choices=["lightgcn", "ngcf", "ncf"])
    runner.add_argument(
        "--protocol",
        default="clean",
        choices=sorted(PROTOCOLS),
        help="clean: the product's; reference: the paper's tables' (experiments/protocols.py)",
    )
    runner.add_argument("--device", default="cpu", help="cpu or cuda")
    runner.add_argument("--workers", type=int, default=2, help="processes for independent runs")
    runner.add_argument("--work", help="work folder (default bench/_work/bytes-...)")
    runner.add_argument("--reuse", help="pipeline folder whose full model and supernet to copy")
    runner.add_argument("--config", help="recipe file, for dry runs")
    runner.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=list(RATIOS),
        help="byte ratios to run (the reference protocol's comparison needs only 0.05)",
    )
    runner.add_argument("--results", help="rows file instead of docs/benchmarks/bytes.json")
    runner.add_argument(
        "--retrain-start",
        choices=[start.value for start in Start],
        help="where the planner's retrainings start (default: the recipe's, PipelineSpec)",
    )
    commands.add_parser("report", help="rewrite bytes.md and its plots from bytes.json")
    merger = commands.add_parser("merge", help="add a --results file's rows to bytes.json")
    merger.add_argument("rows", type=Path, help="rows file written by run --results")
    arguments = parser.parse_args()
    if arguments.command == "run":
        run(arguments)
    elif arguments.command == "merge":
        merge(arguments.rows)
    else:
        write_report()


if __name__ == "__main__":
    main()
