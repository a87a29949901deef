"""How much each storage layout costs a model, scored on the supernet (no retraining).

Usage:
    python bench/quantisation_probe.py --supernet bench/_work/<pipeline>/supernet

The pipeline's supernet is trained under random prefix sizes, so it scores any equal size by
masking. At a few equal sizes this probe stores the user and item tables in several layouts —
integer codes with a float16 scale per row or one per table, 2, 4 or 8 bits — and reports
validation N@20 (the search phase's validation, every user), against float32 at the same size.
It decides which layouts are worth offering the byte planner: one whose loss at equal bytes is
larger than the dimensions it buys is not. A second table clips the int4 scales (the scale a
fraction of the largest magnitude, values past it saturated): how much of the loss a better
quantiser, or quantisation-aware training, could win back at most. Rows go to
``docs/benchmarks/quantisation-probe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
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
from ciess_core.search.pipeline import build_evaluator
from ciess_core.sizes import SizeAssignment
from ciess_core.training import evaluate_model

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
LAYOUTS = {  # name: (levels, one scale per table)
    "int8 per row": (127, False),
    "int8 per table": (127, True),
    "int4 per row": (7, False),
    "int4 per table": (7, True),
    "int2 per row": (1, False),
    "int2 per table": (1, True),
}
SIZES = (4, 8, 10, 16, 24)
CLIPS = (1.0, 0.8, 0.6, 0.5, 0.4)
CLIP_SIZES = (8, 10, 16)
logger = logging.getLogger("bench.quantisation_probe")


def stored(
    weight: torch.Tensor, size: int, levels: int, per_table: bool, clip: float = 1.0
) -> torch.Tensor:
    """(n, d_max) ``weight``'s first ``size`` columns as symmetric integer codes, decoded; the
    scale is ``clip`` times the largest magnitude over the levels."""
    kept = weight[:, :size]
    largest = kept.abs().max() if per_table else kept.abs().amax(1, keepdim=True)
    scale = (clip * largest / levels).half().float().clamp_min(1e-12)
    out = torch.zeros_like(weight)
    out[:, :size] = torch.clamp(torch.round(kept / scale), -levels, levels) * scale
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--supernet", required=True, help="a pipeline's supernet folder")
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    spec = pipeline_spec(arguments.dataset, "lightgcn")
    split, _ = load_split(spec.dataset, arguments.data_dir)
    evaluator = build_evaluator(spec, split, Path(arguments.supernet))
    evaluator.prepare()
    model = evaluator.model
    assert model is not None
    train, valid = split.phase(Phase.SEARCH)
    original = model.tables()[0].weight.detach().clone()
    rows: list[dict[str, Any]] = []
    for size in SIZES:
        model.set_size_assignment(
            SizeAssignment.equal(split.num_users, split.num_items, size, spec.backbone.max_size),
            clear_truncated=False,
        )
        for name, layout in {"float32": None, **LAYOUTS}.items():
            with torch.no_grad():
                weight = original if layout is None else stored(original, size, *layout)
                model.tables()[0].weight.copy_(weight)
            ndcg = evaluate_model(model, train, valid).mean()["ndcg@20"]
            rows.append({"size": size, "layout": name, "valid_ndcg@20": round(ndcg, 4)})
            logger.info("size %d %s: %.4f", size, name, ndcg)
        with torch.no_grad():
            model.tables()[0].weight.copy_(original)
    clipped: list[dict[str, Any]] = []
    for size in CLIP_SIZES:
        model.set_size_assignment(
            SizeAssignment.equal(split.num_users, split.num_items, size, spec.backbone.max_size),
            clear_truncated=False,
        )
        for name in ("int4 per row", "int4 per table"):
            for clip in CLIPS:
                with torch.no_grad():
                    model.tables()[0].weight.copy_(stored(original, size, *LAYOUTS[name], clip))
                ndcg = evaluate_model(model, train, valid).mean()["ndcg@20"]
                clipped.append(
                    {"size": size, "layout": name, "clip": clip, "valid_ndcg@20": round(ndcg, 4)}
                )
                logger.info("size %d %s clip %.1f: %.4f", size, name, clip, ndcg)
        with torch.no_grad():
            model.tables()[0].weight.copy_(original)
    result = {
        **provenance(),
        "dataset": arguments.dataset,
        "rows": rows,
        "clipped": clipped,
    }
    save_json(REPORTS / "quantisation-probe.json", result)
    write_report(result)


def write_report(result: dict[str, Any]) -> None:
    layouts = ["float32", *LAYOUTS]
    table = {(r["size"], r["layout"]): r["valid_ndcg@20"] for r in result["rows"]}
    lines = [
        "# Storage layouts on the supernet: validation N@20 at equal sizes",
        "",
        f"{result['machine']}, {result['date']}: `{result['command']}` ({result['dataset']}, "
        "LightGCN supernet of the default pipeline, no retraining; validation of the search "
        "phase, every user). A scale per row costs two bytes a row; one per table, two bytes "
        "in all.",
        "",
        "| size | " + " | ".join(layouts) + " |",
        "|---|" + "---|" * len(layouts),
    ]
    for size in SIZES:
        cells = [f"{table[(size, layout)]:.4f}" for layout in layouts]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    clipped = {(r["size"], r["layout"], r["clip"]): r["valid_ndcg@20"] for r in result["clipped"]}
    lines += [
        "",
        "## Clipped int4 scales",
        "",
        "The scale a fraction (`clip`) of the largest magnitude; values past it saturate. "
        "float32 at the same size for reference.",
        "",
        "| size | layout | float32 | " + " | ".join(f"clip {c:g}" for c in CLIPS) + " |",
        "|---|---|---|" + "---|" * len(CLIPS),
    ]
    for size in CLIP_SIZES:
        for name in ("int4 per row", "int4 per table"):
            cells = [f"{clipped[(size, name, clip)]:.4f}" for clip in CLIPS]
            lines.append(
                f"| {size} | {name} | {table[(size, 'float32')]:.4f} | " + " | ".join(cells) + " |"
            )
    (REPORTS / "quantisation-probe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
