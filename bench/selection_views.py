"""Would a pick on the validation half the search never saw choose differently?

Usage:
    python bench/selection_views.py /work/runs/bytes-ml-1m-ngcf-clean-cpu-s41/pipeline ...

With ``selection_share`` (the recipe's 0.5) the search is rewarded on one half of every user's
validation interactions and the fits score on the other, but the pipeline picks among its
retrained candidates on all of validation. A searched candidate's sizes were fitted to the
search's half, so that pick may favour it. Every candidate's record also holds
``valid_held_out``: the same retrained model scored on the half the search never saw
(:func:`ciess_core.search.retraining.held_out_metrics`). This reads the finished budgets of each
pipeline folder and reports, per budget, the pick on all of validation (the product's) beside
the pick on the unseen half, and each candidate's two scores. It trains nothing: where the two
picks differ, ``bench/unpicked.py`` tests the other one.

Rows go to ``docs/benchmarks/selection-views.json`` and ``.md`` (findings in ``.notes.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import provenance, save_json, write_with_findings
from cli_help import DefaultsHelp

from ciess_core.search.files import BudgetFolder

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
METRIC = "ndcg@20"


def budget_rows(pipeline: Path, metric: str = METRIC) -> list[dict[str, Any]]:
    """One row per finished budget of ``pipeline`` whose candidates were scored on the unseen
    half: both picks and every candidate's two scores on ``metric``."""
    rows = []
    for path in sorted([*pipeline.glob("budget-*"), *pipeline.glob("bytes-*")]):
        result = BudgetFolder(path).result()
        if result is None or not all("valid_held_out" in r for r in result["candidates"]):
            continue
        candidates = [
            {
                "candidate": record["candidate"],
                "kind": record["kind"],
                "value_type": record.get("value_type", "float32"),
                "valid": record["valid"][metric],
                "valid_held_out": record["valid_held_out"][metric],
            }
            for record in result["candidates"]
        ]
        on_unseen = max(candidates, key=lambda candidate: candidate["valid_held_out"])
        rows.append(
            {
                "pipeline": str(pipeline),
                "budget": path.name.removeprefix("budget-"),  # bytes-<ratio> kept whole
                "metric": metric,
                "picked": result["chosen"],
                "picked_on_unseen": on_unseen["candidate"],
                "agree": on_unseen["candidate"] == result["chosen"],
                "picked_test": result["test"][metric],
                "candidates": candidates,
            }
        )
    return rows


def write_report(report: dict[str, Any]) -> None:
    metric = report["metric"]
    lines = [
        "# Picking on the validation half the search never saw",
        "",
        f"Written by `bench/selection_views.py` from `selection-views.json`. {report['machine']}, "
        f"{report['date']}: `{report['command']}`. Per finished budget: the candidate the "
        f"pipeline picked on all of validation (the product's pick, tested) and the one with the "
        f"best {metric} on the half of validation the search was never rewarded on. Each "
        "candidate: `valid` on all of validation, `unseen` on that half. Clean protocol.",
        "",
        "| pipeline | budget | picked (all) | picked (unseen half) | agree | picked test "
        "| candidates: kind type valid / unseen |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        candidates = "; ".join(
            f"{c['candidate']} {c['kind']} {c['value_type']} "
            f"{c['valid']:.4f} / {c['valid_held_out']:.4f}"
            for c in row["candidates"]
        )
        lines.append(
            f"| {Path(row['pipeline']).parent.name} | {row['budget']} | {row['picked']} | "
            f"{row['picked_on_unseen']} | {'yes' if row['agree'] else '**no**'} | "
            f"{row['picked_test']:.4f} | {candidates} |"
        )
    agreeing = sum(row["agree"] for row in report["rows"])
    lines += ["", f"The two picks agree at {agreeing} of {len(report['rows'])} budgets."]
    write_with_findings(REPORTS / "selection-views.md", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("pipelines", nargs="+", type=Path, help="pipeline folders of clean runs")
    parser.add_argument("--metric", default=METRIC, help="the pipeline's selection metric")
    arguments = parser.parse_args()
    rows = [row for folder in arguments.pipelines for row in budget_rows(folder, arguments.metric)]
    if not rows:
        raise SystemExit(
            "no finished budget scored its candidates on the unseen half: "
            "runs written before held-out scores were recorded have none"
        )
    report = {**provenance(), "metric": arguments.metric, "rows": rows}
    save_json(REPORTS / "selection-views.json", report)
    write_report(report)


if __name__ == "__main__":
    main()
