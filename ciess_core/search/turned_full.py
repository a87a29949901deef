"""The pipeline's full LightGCN model kept as an artifact that a budget change can turn and cut.

A byte budget below what storing the served model in fewer bits reaches needs new sizes. For
LightGCN a full-size model turned to its principal axes and cut to an equal size keeps most of
its quality with no training (``docs/benchmarks/rotated-truncation.md``), and the service does
that in numpy within seconds (:mod:`ciess_core.artifact.turned`). To choose the cut and to
compare it with other models on validation, it needs each cut's validation score measured
beforehand, on the full model trained without the validation interactions:

- :func:`turned_validation` scores stage 1's full model (trained on train) turned and cut to
  the widest equal size each of :data:`TURN_VALUE_TYPES` stores within each ratio of
  :data:`TURN_RATIOS`, stored as that type, on validation;
- :func:`export_turnable_full` exports the pipeline's deployment teacher (the full model
  trained on every interaction) as a float32 artifact whose manifest records those scores
  (``metrics.valid_turned``: value type → size → metrics) beside stage 1's validation in every
  value type (``metrics.valid_by_value_type``, for storing it in fewer bits).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ciess_core.artifact.export import ExportMetadata, ExportOptions, export_deployed
from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone, BackboneKind
from ciess_core.runs import TRAINED_ON_ALL, validation_by_value_type
from ciess_core.search.budgets import ByteBudget
from ciess_core.search.teachers import TEACHER_DIRECTORIES, load_full_model
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import widest_equal_size
from ciess_core.training import evaluate_model

if TYPE_CHECKING:
    from ciess_core.search.pipeline import PipelineSpec

#: The byte ratios at whose widest equal sizes the turned full model is scored: the ratios of
#: ``docs/benchmarks/bytes.md`` and points between them.
TURN_RATIOS = (0.25, 0.2, 0.15, 0.1, 0.075, 0.05, 0.035, 0.025, 0.0175, 0.01)
#: The value types a turned cut is scored in: float32 and float16 never validated best at any
#: ratio on ML-1M or Yelp2018 (``docs/benchmarks/rotated-truncation.md``, equal sizes: the
#: integer types keep two to four times the width in the same bytes).
TURN_VALUE_TYPES = ("int8", "int4", "int8-table", "int4-table")


def turned_widths(num_users: int, num_items: int, max_size: int) -> dict[str, list[int]]:
    """For each of :data:`TURN_VALUE_TYPES`, the widest equal sizes it stores within each of
    :data:`TURN_RATIOS` (one table), widest first, each once."""
    rows = num_users + num_items
    widths: dict[str, list[int]] = {}
    for value_type in TURN_VALUE_TYPES:
        found = {
            widest_equal_size(
                ByteBudget(ratio).allowed_bytes(rows, max_size, 1), rows, value_type, max_size
            )
            for ratio in TURN_RATIOS
        }
        widths[value_type] = sorted((width for width in found if width > 0), reverse=True)
    return widths


def turned_validation(
    model: Backbone, split: DatasetSplit, users_per_chunk: int = 2048
) -> dict[str, dict[str, dict[str, float]]]:
    """``model`` (a full-size LightGCN trained on the search phase's train) turned, cut to
    every width of :func:`turned_widths` and stored as its value type, scored on validation:
    value type → width (as text, as JSON keys are) → metrics. ``model`` is left as it was."""
    widths = turned_widths(split.num_users, split.num_items, model.max_size)
    return turned_cut_scores(model, split, Phase.SEARCH, widths, users_per_chunk)


def turned_cut_scores(
    model: Backbone,
    split: DatasetSplit,
    phase: Phase,
    widths: Mapping[str, Sequence[int]],
    users_per_chunk: int = 2048,
) -> dict[str, dict[str, dict[str, float]]]:
    """``model`` (a full-size LightGCN trained on ``phase``'s train) turned to its principal
    axes, cut to each of ``widths`` (value type → equal sizes) and stored as that value type,
    scored on ``phase``'s held-out interactions: value type → width (as text) → metrics.
    ``model`` is left as it was."""
    weight = model.tables()[0].weight
    original = weight.detach().clone()
    train, held_out = split.phase(phase)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    try:
        model.turn_to_principal_axes()
        turned = weight.detach().clone()
        for value_type, cut_widths in widths.items():
            scores[value_type] = {}
            for width in cut_widths:
                with torch.no_grad():
                    weight.copy_(turned)
                sides = (np.full(split.num_users, width), np.full(split.num_items, width))
                model.set_size_assignment(SizeAssignment(*sides, model.max_size))
                result = evaluate_model(
                    model, train, held_out, users_per_chunk, value_type=value_type
                )
                scores[value_type][str(width)] = result.mean()
    finally:
        model.set_size_assignment(
            SizeAssignment.full(split.num_users, split.num_items, model.max_size)
        )
        with torch.no_grad():
            weight.copy_(original)
    return scores


def export_turnable_full(
    spec: PipelineSpec,
    split: DatasetSplit,
    pipeline: Path,
    out: Path,
    dataset_fingerprint: str,
    split_seed: int,
    options: ExportOptions | None = None,
) -> Path:
    """Export the deployment teacher of the finished pipeline folder ``pipeline`` (LightGCN,
    distilled from phase teachers) to ``out`` as a float32 artifact whose metrics hold stage 1's
    validation as it is (``valid``), in every value type (``valid_by_value_type``) and turned
    and cut (``valid_turned``, :func:`turned_validation`), and the test phase teacher's test.

    Raises:
        ConfigError: not LightGCN, or the folder keeps no deployment teacher.
    """
    if spec.backbone.kind is not BackboneKind.LIGHTGCN:
        raise ConfigError(f"only a LightGCN model can be turned, not {spec.backbone.kind.value}")
    deploy_folder = pipeline / TEACHER_DIRECTORIES[Phase.DEPLOY]
    if not (deploy_folder / "model.pt").is_file():
        raise ConfigError(f"{pipeline} keeps no full model trained on every interaction")
    stage_one = load_full_model(spec, split, pipeline / "full")
    chunk = spec.training.eval_users_per_chunk
    by_type = validation_by_value_type(stage_one, split, chunk)
    test_summary = pipeline / TEACHER_DIRECTORIES[Phase.TEST] / "summary.json"
    tested = json.loads(test_summary.read_text()).get("test") if test_summary.is_file() else None
    metadata = ExportMetadata(
        dataset=spec.dataset,
        dataset_fingerprint=dataset_fingerprint,
        split_seed=split_seed,
        size_scheme="full",
        metrics={
            "protocol": spec.protocol.value,
            "valid": by_type["float32"],
            "test": tested,
            "valid_by_value_type": by_type,
            "valid_turned": turned_validation(stage_one, split, chunk),
        },
        source=f"{deploy_folder} (the full model, for turned budget changes)",
        trained_on=TRAINED_ON_ALL,
    )
    model = load_full_model(spec, split, deploy_folder, Phase.DEPLOY)
    options = dataclasses.replace(options or ExportOptions(), value_dtype="float32")
    return export_deployed(model, split, out, metadata, options)
