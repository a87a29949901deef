"""Test the candidates a pipeline did not pick: what its choice on validation left on the table.

Usage:
    python bench/unpicked.py --pipeline bench/_work/<bytes run>/pipeline --ratio 0.2

Under the clean protocol the pipeline tests only its pick. For one byte budget of a finished
planner run (shipped recipe of ``--dataset`` and ``--backbone``), this tests every other
candidate exactly as the pipeline would have tested it had it been picked
(:func:`ciess_core.search.retraining.test_candidate`: trained on train ∪ validation for its
selected batches, distilled from the run's test-phase teacher; a full-model candidate is the
test phase's full model stored as its type). Rows go to ``docs/benchmarks/unpicked.json`` and
``.md``: each candidate's validation and test N@20 and which one the pipeline picked.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import provenance, save_json
from cli_help import DefaultsHelp

from ciess_core.data import Phase
from ciess_core.pipeline import load_split, pipeline_spec
from ciess_core.search.budgets import ByteBudget
from ciess_core.search.files import BudgetFolder
from ciess_core.search.retraining import test_candidate
from ciess_core.search.teachers import prepare_teachers

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--pipeline", help="a byte planner run's pipeline folder")
    parser.add_argument("--ratio", type=float, default=0.2, help="its byte ratio")
    parser.add_argument("--dataset", default="ml-1m", help="the run's dataset")
    parser.add_argument("--backbone", default="lightgcn", help="the run's backbone")
    parser.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR)")
    parser.add_argument(
        "--report", action="store_true", help="only rewrite unpicked.md from unpicked.json"
    )
    arguments = parser.parse_args()
    if arguments.report:
        write_report(json.loads((REPORTS / "unpicked.json").read_text()))
        return
    if arguments.pipeline is None:
        parser.error("--pipeline is required (or --report)")
    torch.set_num_threads(1)  # as each of the pipeline's two workers
    pipeline = Path(arguments.pipeline)
    spec = pipeline_spec(arguments.dataset, arguments.backbone, byte_ratios=(arguments.ratio,))
    split, _ = load_split(spec.dataset, arguments.data_dir)
    budget = ByteBudget(arguments.ratio)
    folder = BudgetFolder.of(pipeline, budget)
    result = folder.result()
    if result is None:
        raise SystemExit(f"{folder.path} has no result.json: the run has not finished this budget")
    teachers, _ = prepare_teachers(spec, split, pipeline, False, (Phase.TEST,))
    rows: list[dict[str, Any]] = []
    for record in result["candidates"]:
        picked = record["candidate"] == result["chosen"]
        tested = (
            record
            if picked
            else test_candidate(spec, split, folder, budget, record, False, teachers)
        )
        rows.append(
            {
                "candidate": record["candidate"],
                "kind": record["kind"],
                "value_type": record["value_type"],
                "bytes": record["bytes"],
                "picked": picked,
                "preferred_to": record.get("preferred_to"),
                "valid_ndcg@20": record["valid"]["ndcg@20"],
                "test_ndcg@20": tested["test"]["ndcg@20"],
                "test_recall@20": tested["test"]["recall@20"],
            }
        )
    report = {
        **provenance(),
        "dataset": arguments.dataset,
        "backbone": arguments.backbone,
        "byte_ratio": arguments.ratio,
        "pipeline": pipeline.parent.name,
        "rows": rows,
    }
    save_json(REPORTS / "unpicked.json", report)
    write_report(report)


def write_report(report: dict[str, Any]) -> None:
    lines = [
        "# The candidates a pipeline did not pick",
        "",
        f"Written by `bench/unpicked.py` from `unpicked.json`. {report['machine']}, "
        f"{report['date']}: `{report['command']}` (run `{report['pipeline']}`, "
        f"{report['dataset']} {report['backbone']}, byte ratio {report['byte_ratio']:g}, clean "
        "protocol). Every candidate tested as the pipeline tests its pick; the pipeline itself "
        "tests only the one it picked on validation. `picked`: the run's pick (with a lead, the "
        "one-standard-error tie rule of 9ac6d5d, reverted in f36759d, made it); `best valid`: "
        "the highest validation N@20, what the planner picks.",
        "",
        "| candidate | kind | value type | bytes | picked | best valid | valid N@20 | test R@20 "
        "| test N@20 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    best = max(row["valid_ndcg@20"] for row in report["rows"])
    for row in report["rows"]:
        why = ""
        if row["preferred_to"]:
            lead = row["preferred_to"]
            why = (
                f" (over {lead['candidate']}: lead {lead['lead']:.5f} within one standard error"
                f" {lead['standard_error']:.5f})"
            )
        lines.append(
            f"| {row['candidate']} | {row['kind']} | {row['value_type']} | {row['bytes']:,} | "
            f"{'yes' + why if row['picked'] else ''} | "
            f"{'yes' if row['valid_ndcg@20'] == best else ''} | {row['valid_ndcg@20']:.4f} | "
            f"{row['test_recall@20']:.4f} | {row['test_ndcg@20']:.4f} |"
        )
    (REPORTS / "unpicked.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
