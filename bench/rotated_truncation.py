"""Rotated truncation: a trained LightGCN turned to its principal axes, then cut to sizes.

LightGCN scores a user and an item by the dot product of their propagated embeddings, and its
propagation is linear, so turning every ego embedding by one orthogonal matrix ``R`` leaves every
score as it was. With ``R`` the eigenvectors of ``EᵀE`` (``E`` the ego table), largest
eigenvalue first, the first ``s`` values of the turned table hold as much of its energy as any
``s`` directions can, and cutting each entity to its size drops the least.

For a finished byte-budget run (``bench/byte_budgets.py run --backbone lightgcn``), this scores
its full models turned and cut to every retrained candidate's sizes, stored as the candidate's
value type, with no training at all, beside what the retraining reached:

    python bench/rotated_truncation.py score --work /work/runs/bytes-ml-1m-lightgcn-clean-cpu-s34

``score-equal`` does the same at the widest equal size each value type can store within each
ratio (it needs only the run's full models, not its retrainings), and ``warm``
retrains one candidate from the turned and cut full model instead of a random start, with
the same recipe (distillation, value type, schedule, early stopping), to compare the batches and
the validation score with the run's own retraining from scratch:

    python bench/rotated_truncation.py warm --work ... --ratio 0.01 --candidate 0

``grid`` compares two whole byte-budget runs of the same recipe whose retrainings start from
random weights and from the turned teachers (``bench/byte_budgets.py run --retrain-start``):

    python bench/rotated_truncation.py grid --work WARM_WORK --baseline RANDOM_WORK

Rows are kept in ``OUT/rotated-truncation.json`` (a row of the same run, ratio, candidate and
kind is replaced) and ``OUT/rotated-truncation.md`` is written from them (findings from
``rotated-truncation.notes.md``; ``report`` rewrites the page alone).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backbones import provenance, save_json, write_with_findings
from cli_help import DefaultsHelp

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone
from ciess_core.pipeline import claim_pipeline_folder, load_split, pipeline_spec
from ciess_core.runs import Start, execute_run, select_on_validation, starting_model
from ciess_core.search.budgets import ByteBudget
from ciess_core.search.files import BudgetFolder
from ciess_core.search.pipeline import PipelineSpec
from ciess_core.search.retraining import FULL_KIND, run_spec_of
from ciess_core.search.teachers import TEACHER_DIRECTORIES, load_full_model
from ciess_core.search.turned_full import turned_cut_scores
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import VALUE_TYPES, widest_equal_size
from ciess_core.training import TrainResult, evaluate_model

logger = logging.getLogger("bench.rotated_truncation")
METRIC = "ndcg@20"


class TurnedModel:
    """A full LightGCN model turned to its principal axes once
    (:meth:`~ciess_core.models.Backbone.turn_to_principal_axes`), then cut to one assignment
    after another: each cut starts again from the turned full table."""

    def __init__(self, model: Backbone) -> None:
        model.turn_to_principal_axes()
        self.model = model
        self._turned = model.tables()[0].weight.detach().clone()

    def cut(self, sizes: SizeAssignment) -> Backbone:
        """The model with every entity cut to its size in ``sizes``."""
        with torch.no_grad():
            self.model.tables()[0].weight.copy_(self._turned)
        self.model.set_size_assignment(sizes)
        return self.model


def run_folder(work: Path) -> tuple[str, PipelineSpec, Path]:
    """The run id, pipeline spec and pipeline folder of the byte-budget run in ``work`` (the
    shipped recipe of its dataset and backbone, checked against the folder's ``spec.json``)."""
    pipeline = work / "pipeline"
    stored = json.loads((pipeline / "spec.json").read_text())
    if stored["backbone"]["kind"] != "lightgcn" or stored["protocol"] != "clean":
        raise SystemExit(
            f"{work} ran {stored['backbone']['kind']} under the {stored['protocol']} protocol: "
            "this measures LightGCN (whose scores a rotation keeps) under the clean protocol"
        )
    spec = pipeline_spec(
        stored["dataset"],
        "lightgcn",
        byte_ratios=tuple(stored["byte_ratios"]),
    )  # a folder from before the start was a setting ran the random start
    spec = dataclasses.replace(spec, retrain_start=Start(stored.get("retrain_start", "random")))
    try:
        claim_pipeline_folder(pipeline, spec)  # the folder's spec exists: this only compares
    except ConfigError as error:
        raise SystemExit(f"{error}: not the shipped recipe") from None
    return (work / "run_id.txt").read_text().strip(), spec, pipeline


def retrained_candidates(pipeline: Path, ratio: float) -> list[dict[str, Any]]:
    """The records of ``ratio``'s retrained candidates (not the full models), with their sizes."""
    folder = BudgetFolder.of(pipeline, ByteBudget(ratio))
    records = []
    index = 0
    while (record := folder.candidate_record(index)) is not None:
        if record["kind"] != FULL_KIND:
            records.append({**record, "sizes": folder.candidate(index)})
        index += 1
    return records


def phase_score(model: Backbone, split: DatasetSplit, phase: Phase, value_type: str) -> float:
    train, held_out = split.phase(phase)
    return float(evaluate_model(model, train, held_out, value_type=value_type).mean()[METRIC])


def score_rows(work: Path, split: DatasetSplit) -> list[dict[str, Any]]:
    """One row per retrained candidate of every ratio: the turned and cut full models' validation
    (stage 1's model) and test (the test phase's teacher) score, untrained."""
    run_id, spec, pipeline = run_folder(work)
    phases = {
        Phase.SEARCH: pipeline / "full",
        Phase.TEST: pipeline / TEACHER_DIRECTORIES[Phase.TEST],
    }
    models = {phase: load_full_model(spec, split, phases[phase], phase) for phase in phases}
    full = {phase: phase_score(model, split, phase, "float32") for phase, model in models.items()}
    turned = {phase: TurnedModel(model) for phase, model in models.items()}
    rows = []
    for ratio in spec.byte_ratios:
        result = BudgetFolder.of(pipeline, ByteBudget(ratio)).result()
        if result is None:
            raise SystemExit(f"{pipeline}: ratio {ratio} has not finished its retraining")
        for record in retrained_candidates(pipeline, ratio):
            started = time.perf_counter()
            scores = {
                phase: phase_score(model.cut(record["sizes"]), split, phase, record["value_type"])
                for phase, model in turned.items()
            }
            picked = record["candidate"] == result["chosen"]
            rows.append(
                {
                    "run_id": run_id,
                    "dataset": spec.dataset,
                    "kind": "score",
                    "byte_ratio": ratio,
                    "candidate": record["candidate"],
                    "sizes": record["kind"],
                    "value_type": record["value_type"],
                    "bytes": record["bytes"],
                    "full_valid": full[Phase.SEARCH],
                    "full_test": full[Phase.TEST],
                    "rotated_valid": scores[Phase.SEARCH],
                    "rotated_test": scores[Phase.TEST],
                    "retrained_valid": record["valid"][METRIC],
                    "retrained_test": result["test"][METRIC] if picked else None,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
            logger.info("%s", rows[-1])
    return rows


def equal_width(split: DatasetSplit, spec: PipelineSpec, ratio: float, value_type: str) -> int:
    """The largest size d that every user and item can keep, stored as ``value_type``, within
    byte ratio ``ratio`` (0 where not even d = 1 fits)."""
    entities, width, tables = (
        split.num_users + split.num_items,
        spec.backbone.max_size,
        spec.backbone_tables,
    )
    allowed = ByteBudget(ratio).allowed_bytes(entities, width, tables)
    return widest_equal_size(allowed, entities, value_type, width, tables)


def _equal(split: DatasetSplit, size: int, width: int) -> SizeAssignment:
    return SizeAssignment(np.full(split.num_users, size), np.full(split.num_items, size), width)


def equal_rows(work: Path, split: DatasetSplit) -> list[dict[str, Any]]:
    """One row per ratio: stage 1's full model turned and cut to the widest equal size that each
    value type can store within the ratio, scored on validation; the type that validates best
    is then tested once (the test phase's teacher, turned and cut alike) when that teacher is
    trained."""
    run_id, spec, pipeline = run_folder(work)
    teacher_folder = pipeline / TEACHER_DIRECTORIES[Phase.TEST]
    stage_one = load_full_model(spec, split, pipeline / "full")
    full_valid = phase_score(stage_one, split, Phase.SEARCH, "float32")
    test_model, full_test = None, None
    if (teacher_folder / "model.pt").exists():
        test_model = load_full_model(spec, split, teacher_folder, Phase.TEST)
        full_test = phase_score(test_model, split, Phase.TEST, "float32")
    widths = {
        ratio: {t: equal_width(split, spec, ratio, t) for t in VALUE_TYPES}
        for ratio in spec.byte_ratios
    }
    cuts = {t: sorted({w[t] for w in widths.values() if w[t] > 0}) for t in VALUE_TYPES}
    started = time.perf_counter()
    valid_scores = turned_cut_scores(stage_one, split, Phase.SEARCH, cuts)
    scoring_seconds = (time.perf_counter() - started) / len(spec.byte_ratios)
    rows = []
    for ratio in spec.byte_ratios:
        started = time.perf_counter()
        scored = {
            value_type: (size, valid_scores[value_type][str(size)][METRIC])
            for value_type, size in widths[ratio].items()
            if size > 0
        }
        best = max(scored, key=lambda t: scored[t][1])
        size, valid = scored[best]
        sizes = _equal(split, size, spec.backbone.max_size)
        test = None
        if test_model is not None:
            tested = turned_cut_scores(test_model, split, Phase.TEST, {best: [size]})
            test = tested[best][str(size)][METRIC]
        rows.append(
            {
                "run_id": run_id,
                "dataset": spec.dataset,
                "kind": "equal",
                "byte_ratio": ratio,
                "candidate": -1,
                "value_type": best,
                "size": size,
                "bytes": sizes.bytes(best, spec.backbone_tables),
                "full_valid": full_valid,
                "full_test": full_test,
                "valid_by_value_type": {t: v for t, (_, v) in scored.items()},
                "rotated_valid": valid,
                "rotated_test": test,
                "seconds": round(scoring_seconds + time.perf_counter() - started, 2),
            }
        )
        logger.info("%s", rows[-1])
    return rows


def _stage(result: TrainResult) -> dict[str, Any]:
    return {
        "valid": result.best_metrics[METRIC],
        "best_batch": result.best_batch,
        "batches_run": result.batches_run,
        "seconds": round(result.seconds, 1),
        "history": [[r.batch, round(r.metrics[METRIC], 5)] for r in result.history],
    }


def warm_row(work: Path, split: DatasetSplit, ratio: float, index: int) -> dict[str, Any]:
    """Retrain candidate ``index`` of ``ratio`` twice in this process, as the pipeline's
    selection stage does: from the random start (which repeats the run's own retraining) and from
    stage 1's full model turned and cut to the candidate's sizes."""
    run_id, spec, pipeline = run_folder(work)
    folder = BudgetFolder.of(pipeline, ByteBudget(ratio))
    record = folder.candidate_record(index)
    if record is None or record["kind"] == FULL_KIND:
        raise SystemExit(f"{folder.path}: no retrained candidate {index}")
    sizes = folder.candidate(index)
    run_spec = run_spec_of(spec, ByteBudget(ratio), record)
    warm_spec = dataclasses.replace(run_spec, start=Start.TEACHER)
    search_train, _ = split.phase(Phase.SEARCH)
    teachers = {
        Phase.SEARCH: load_full_model(spec, split, pipeline / "full"),
        Phase.TEST: load_full_model(
            spec, split, pipeline / TEACHER_DIRECTORIES[Phase.TEST], Phase.TEST
        ),
    }
    _, scratch = select_on_validation(run_spec, split, sizes, False, teachers)
    start = starting_model(warm_spec, search_train, sizes, teachers, Phase.SEARCH)
    start_score = phase_score(start, split, Phase.SEARCH, record["value_type"])
    _, warm = select_on_validation(warm_spec, split, sizes, False, teachers)
    _, warm_test, _ = execute_run(
        warm_spec, split, sizes, False, teachers, selected_batches=max(warm.best_batch, 1)
    )
    result = folder.result() or {}
    return {
        "run_id": run_id,
        "dataset": spec.dataset,
        "kind": "warm",
        "byte_ratio": ratio,
        "candidate": index,
        "sizes": record["kind"],
        "value_type": record["value_type"],
        "bytes": record["bytes"],
        "threads": torch.get_num_threads(),
        "start_valid": start_score,
        "warm": _stage(warm),
        "scratch": _stage(scratch),
        "warm_test": warm_test.test_metrics[METRIC],
        "recorded_scratch_test": (
            result["test"][METRIC] if result.get("chosen") == index else None
        ),
        "recorded_scratch_valid": record["valid"][METRIC],
        "recorded_scratch_best_batch": record["stages"]["select"]["best_batch"],
    }


def _grid_side(work: Path, ratio: float) -> dict[str, Any]:
    """What one byte-budget run's pipeline did at ``ratio``: its pick, the batches its
    retrainings ran (every retrained candidate's selection stage; the test phase's, which trains
    the pick for its selected batches) and the seconds of the ratio's retraining stage."""
    pipeline = work / "pipeline"
    summary = json.loads((pipeline / "summary.json").read_text())
    result = summary["budgets"][ByteBudget(ratio).label]
    retrained = [c for c in result["candidates"] if c["kind"] != FULL_KIND]
    chosen = next(c for c in result["candidates"] if c["candidate"] == result["chosen"])
    start = json.loads((pipeline / "spec.json").read_text()).get("retrain_start", "random")
    return {
        "run_id": (work / "run_id.txt").read_text().strip(),
        "retrain_start": start,
        "chosen_kind": result["chosen_kind"],
        "value_type": result["value_type"],
        "valid": result["valid"][METRIC],
        "test": result["test"][METRIC],
        "selection_batches": sum(c["stages"]["select"]["batches_run"] for c in retrained),
        "test_batches": 0 if chosen["kind"] == FULL_KIND else chosen["selected_batches"],
        "retrain_seconds": summary["timings"][f"retrain_{ByteBudget(ratio).label}"],
    }


def grid_rows(work: Path, baseline: Path) -> list[dict[str, Any]]:
    """One row per ratio of two finished byte-budget runs of the same data and recipe but for
    where their retrainings start (``work`` and ``baseline``): each one's pick, scores,
    batches and seconds."""
    stored = json.loads((work / "pipeline" / "spec.json").read_text())
    teacher = json.loads(
        (work / "pipeline" / TEACHER_DIRECTORIES[Phase.TEST] / "summary.json").read_text()
    )
    rows = []
    for ratio in stored["byte_ratios"]:
        rows.append(
            {
                "run_id": (work / "run_id.txt").read_text().strip(),
                "dataset": stored["dataset"],
                "kind": "grid",
                "byte_ratio": ratio,
                "candidate": -1,
                "full_test": teacher["test"][METRIC],
                "runs": [_grid_side(work, ratio), _grid_side(baseline, ratio)],
            }
        )
    return rows


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["run_id"], row["kind"], row["byte_ratio"], row["candidate"])


def _share(value: float, full: float) -> str:
    return f"{value:.4f} ({value / full:.1%})"


def report_lines(report: dict[str, Any]) -> list[str]:
    """The page: the untrained scores per run, then the warm-started retrainings."""
    lines = ["# Rotated truncation of LightGCN: no training, and a warm start", ""]
    rows = report["rows"]
    for run_id in sorted({row["run_id"] for row in rows}):
        scored = [r for r in rows if r["run_id"] == run_id and r["kind"] == "score"]
        if scored:
            first = scored[0]
            lines += [
                f"## {first['dataset']}, run `{run_id}`: turned and cut, no training",
                "",
                f"N@20 (share of the full float32 model's: validation {first['full_valid']:.4f}"
                f", test {first['full_test']:.4f}), each candidate stored as its value type. "
                "Retrained: the run's own retraining from a random start; the run tests only "
                "its pick.",
                "",
                "| ratio | sizes | value type | bytes | turned and cut, valid | retrained, valid "
                "| turned and cut, test | retrained (the pick), test |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in sorted(scored, key=lambda r: (-r["byte_ratio"], r["candidate"])):
                tested = r["retrained_test"]
                lines.append(
                    f"| {r['byte_ratio']} | {r['sizes']} | {r['value_type']} | {r['bytes']:,} | "
                    f"{_share(r['rotated_valid'], r['full_valid'])} | "
                    f"{_share(r['retrained_valid'], r['full_valid'])} | "
                    f"{_share(r['rotated_test'], r['full_test'])} | "
                    + ("—" if tested is None else _share(tested, r["full_test"]))
                    + " |"
                )
            lines.append("")
        equal = [r for r in rows if r["run_id"] == run_id and r["kind"] == "equal"]
        if equal:
            first = equal[0]
            full_test = first["full_test"]
            lines += [
                f"## {first['dataset']}, run `{run_id}`: turned and cut to equal sizes, no "
                "training",
                "",
                "Every user and item keeps the widest size d that the value type can store within "
                "the ratio; the type is picked on validation and only the pick is tested"
                + (
                    " (the test phase's teacher is not trained yet: no test)."
                    if full_test is None
                    else "."
                )
                + f" Full float32 model: validation {first['full_valid']:.4f}"
                + ("" if full_test is None else f", test {full_test:.4f}")
                + ".",
                "",
                "| ratio | picked type | d | bytes | valid | test |",
                "|---|---|---|---|---|---|",
            ]
            for r in sorted(equal, key=lambda r: -r["byte_ratio"]):
                lines.append(
                    f"| {r['byte_ratio']} | {r['value_type']} | {r['size']} | {r['bytes']:,} | "
                    f"{_share(r['rotated_valid'], r['full_valid'])} | "
                    + ("—" if full_test is None else _share(r["rotated_test"], full_test))
                    + " |"
                )
            lines.append("")
        warmed = [r for r in rows if r["run_id"] == run_id and r["kind"] == "warm"]
        if warmed:
            lines += [
                f"## {warmed[0]['dataset']}, run `{run_id}`: retrained from the turned and cut "
                "model",
                "",
                "Validation N@20 of the selection stage, the same recipe from either start, both "
                "trained one after the other in one process; the last column is the run's own "
                "retraining from the random start, which the scratch column repeats.",
                "",
                "| ratio | sizes | value type | start | warm: best (batch of) | seconds "
                "| scratch: best (batch of) | seconds | the run's scratch: best (batch) "
                "| test, warm | test, the run's (its pick) |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in sorted(warmed, key=lambda r: (-r["byte_ratio"], r["candidate"])):
                warm, scratch = r["warm"], r["scratch"]
                lines.append(
                    f"| {r['byte_ratio']} | {r['sizes']} | {r['value_type']} | "
                    f"{r['start_valid']:.4f} | {warm['valid']:.4f} ({warm['best_batch']} of "
                    f"{warm['batches_run']}) | {warm['seconds']:.0f} | {scratch['valid']:.4f} "
                    f"({scratch['best_batch']} of {scratch['batches_run']}) | "
                    f"{scratch['seconds']:.0f} | {r['recorded_scratch_valid']:.4f} "
                    f"({r['recorded_scratch_best_batch']}) | "
                    + " | ".join(
                        "—" if r.get(key) is None else f"{r[key]:.4f}"
                        for key in ("warm_test", "recorded_scratch_test")
                    )
                    + " |"
                )
            lines.append("")
    grid = [r for r in rows if r["kind"] == "grid"]
    if grid:
        lines += [
            f"## {grid[0]['dataset']}: the whole byte-budget grid retrained from either start",
            "",
            "Two runs of `bench/byte_budgets.py run` with the same recipe, full models, teachers "
            "and supernet; only where the planner's retrainings start differs "
            "(`--retrain-start`). Test N@20 with its share of the full float32 model's "
            f"({grid[0]['full_test']:.4f}); batches: every retrained candidate's selection "
            "stage, and the test phase's training of the pick.",
            "",
            "| ratio | start | pick | type | valid | test | selection batches | test-phase "
            "batches | retraining seconds | run |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(grid, key=lambda r: -r["byte_ratio"]):
            for side in r["runs"]:
                lines.append(
                    f"| {r['byte_ratio']} | {side['retrain_start']} | {side['chosen_kind']} | "
                    f"{side['value_type']} | {side['valid']:.4f} | "
                    f"{_share(side['test'], r['full_test'])} | {side['selection_batches']:,} | "
                    f"{side['test_batches']:,} | {side['retrain_seconds']:,.0f} | "
                    f"`{side['run_id']}` |"
                )
        lines.append("")
    lines += [
        f"Machine: {report['machine']}; {report['date']}. Commands: "
        + "; ".join(f"`{c}`" for c in report["commands"])
        + "."
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument(
        "command",
        choices=("score", "score-equal", "warm", "grid", "report"),
        help="report: only rewrite the page from its JSON twin (after editing its notes)",
    )
    parser.add_argument("--work", help="a byte-budget run's --work folder (score, warm, grid)")
    parser.add_argument("--baseline", help="grid: the run to compare --work with")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--ratio", type=float, help="warm: the byte ratio")
    parser.add_argument("--candidate", type=int, help="warm: the candidate's index")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"), help="report folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.command == "report":
        kept_path = out / "rotated-truncation.json"
        if not kept_path.exists():
            raise SystemExit(f"{kept_path} does not exist: nothing to rewrite")
        page = report_lines(json.loads(kept_path.read_text()))
        write_with_findings(out / "rotated-truncation.md", page)
        return 0
    if args.work is None:
        parser.error(f"{args.command} needs --work")
    work = Path(args.work)
    if args.command == "grid":
        if args.baseline is None:
            parser.error("grid needs --baseline")
        _merge_rows(out, grid_rows(work, Path(args.baseline)))
        return 0
    _, spec, _ = run_folder(work)
    split, _ = load_split(spec.dataset, args.data_dir)
    if args.command == "score":
        new = score_rows(work, split)
    elif args.command == "score-equal":
        new = equal_rows(work, split)
    else:
        if args.ratio is None or args.candidate is None:
            parser.error("warm needs --ratio and --candidate")
        new = [warm_row(work, split, args.ratio, args.candidate)]
    _merge_rows(out, new)
    return 0


def _merge_rows(out: Path, new: list[dict[str, Any]]) -> None:
    """Keep ``new`` in ``out``'s JSON twin (replacing rows of the same key) and rewrite the
    page."""
    path = out / "rotated-truncation.json"
    kept = json.loads(path.read_text()) if path.exists() else {"rows": [], "commands": []}
    keys = {_key(row) for row in new}
    made = provenance()
    report = {
        "machine": made["machine"],
        "date": made["date"],
        "commands": [*[c for c in kept["commands"] if c != made["command"]], made["command"]],
        "rows": [row for row in kept["rows"] if _key(row) not in keys] + new,
    }
    save_json(path, report)
    write_with_findings(out / "rotated-truncation.md", report_lines(report))


if __name__ == "__main__":
    raise SystemExit(main())
