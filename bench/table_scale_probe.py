"""One scale per table: how far a few outliers spread int4's levels, on a retrained candidate.

Usage:
    python bench/table_scale_probe.py --pipeline bench/_work/<bytes run>/pipeline --ratio 0.01

The recipe is the shipped one of ``--dataset`` and ``--backbone`` (what the run used).

Retrains one candidate of a byte planner's run exactly as the pipeline selects it (its sizes, its
value type's recipe, distilled from the run's full model, early stopping on validation), then
scores the selected model on validation with its table stored as int4 with one scale per table:
the scale at fractions (``clip``) of the table's largest magnitude (values past it saturate),
the one :func:`ciess_core.storage.table_scale` picks (least squared error), per-row int4, and
float32. Rows go to ``docs/benchmarks/table-scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import provenance, save_json
from cli_help import DefaultsHelp

from ciess_core.data import Phase
from ciess_core.models import stored_tables
from ciess_core.models.masking import prefix_mask
from ciess_core.pipeline import load_split, pipeline_spec
from ciess_core.runs import select_on_validation
from ciess_core.search.budgets import ByteBudget
from ciess_core.search.retraining import run_spec_of
from ciess_core.search.teachers import prepare_teachers
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import table_scale
from ciess_core.training import evaluate_model

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
CLIPS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2)
LEVELS = 7
logger = logging.getLogger("bench.table_scale_probe")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--pipeline", required=True, help="a byte planner run's pipeline folder")
    parser.add_argument("--ratio", type=float, default=0.01, help="its byte ratio to probe")
    parser.add_argument("--candidate", type=int, default=0, help="the candidate to retrain")
    parser.add_argument("--dataset", default="ml-1m", help="the run's dataset")
    parser.add_argument("--backbone", default="lightgcn", help="the run's backbone")
    parser.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = Path(arguments.pipeline)
    spec = pipeline_spec(arguments.dataset, arguments.backbone, byte_ratios=(arguments.ratio,))
    split, _ = load_split(spec.dataset, arguments.data_dir)
    budget = ByteBudget(arguments.ratio)
    folder = pipeline / budget.label
    record = json.loads((folder / f"candidate_{arguments.candidate}.json").read_text())
    sizes = SizeAssignment.load(folder / f"candidate_{arguments.candidate}.npz")
    teachers, _ = prepare_teachers(spec, split, pipeline, False, (Phase.SEARCH,))
    started = time.perf_counter()
    model, selection = select_on_validation(
        run_spec_of(spec, budget, record), split, sizes, False, teachers
    )
    seconds = time.perf_counter() - started
    train, valid = split.phase(Phase.SEARCH)
    table = model.tables()[0]
    original = table.weight.detach().clone()
    mask = prefix_mask(table.sizes, original.shape[1]).bool()
    kept = original[mask]
    largest = float(kept.abs().max())

    def score(weight: torch.Tensor) -> float:
        with torch.no_grad():
            table.weight.copy_(weight)
        return round(evaluate_model(model, train, valid).mean()["ndcg@20"], 4)

    def clipped(scale: float) -> tuple[torch.Tensor, float]:
        step = float(np.float16(scale))
        decoded = torch.zeros_like(original)
        decoded[mask] = torch.clamp(torch.round(kept / step), -LEVELS, LEVELS) * step
        return decoded, float(((decoded[mask] - kept) ** 2).mean())

    rows: list[dict[str, Any]] = [{"layout": "float32", "valid_ndcg@20": score(original)}]
    for clip in CLIPS:
        decoded, error = clipped(clip * largest / LEVELS)
        rows.append(
            {
                "layout": "int4 per table",
                "clip": clip,
                "mse": error,
                "valid_ndcg@20": score(decoded),
            }
        )
    chosen = float(table_scale(kept.numpy(), LEVELS))
    decoded, error = clipped(chosen)
    rows.append(
        {
            "layout": "int4 per table, table_scale",
            "clip": round(chosen * LEVELS / largest, 3),
            "mse": error,
            "valid_ndcg@20": score(decoded),
        }
    )
    with torch.no_grad():
        table.weight.copy_(original)
    with stored_tables(model, "int4"):
        rows.append({"layout": "int4 per row", "valid_ndcg@20": score(table.weight.clone())})
    for row in rows:
        logger.info("%s", row)
    result = {
        **provenance(),
        "dataset": spec.dataset,
        "byte_ratio": arguments.ratio,
        "candidate": record["kind"],
        "value_type": record["value_type"],
        "values_per_row": round(sizes.parameters / (split.num_users + split.num_items), 2),
        "selected_batch": selection.best_batch,
        "retrain_seconds": round(seconds, 1),
        "largest_magnitude": largest,
        "rows": rows,
    }
    save_json(REPORTS / "table-scale.json", result)
    write_report(result)


def write_report(result: dict[str, Any]) -> None:
    lines = [
        "# One scale per table: clipping the largest magnitude",
        "",
        f"{result['machine']}, {result['date']}: `{result['command']}` ({result['dataset']}, "
        f"byte ratio {result['byte_ratio']:g}, the {result['candidate']} candidate of that run "
        f"({result['values_per_row']} values a row), retrained as the pipeline selects it: "
        f"batch {result['selected_batch']}, {result['retrain_seconds']:.0f} s). Validation N@20 "
        "of the selected model with its table stored as below; the largest magnitude is "
        f"{result['largest_magnitude']:.3f}.",
        "",
        "| layout | clip | mean squared error | valid N@20 |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        clip = f"{row['clip']:g}" if "clip" in row else "–"
        error = f"{row['mse']:.3e}" if "mse" in row else "–"
        lines.append(f"| {row['layout']} | {clip} | {error} | {row['valid_ndcg@20']:.4f} |")
    (REPORTS / "table-scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
