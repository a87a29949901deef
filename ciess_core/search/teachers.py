"""The full models that teach the retraining: one per training phase, trained once and kept.

Stage 1's full model (``full/``, trained on train) teaches the selection on validation; with
``TeacherSource.PHASE`` the test phase (``teacher/``, train ∪ validation) and the deployment model
(``teacher-deploy/``, every interaction) have their own, trained as the protocol trains a final
model for the batch count stage 1 selected.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import scipy.sparse as sp
import torch

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone, build_backbone
from ciess_core.runs import RunSpec, execute_run, train_deployment
from ciess_core.search.files import checkpoint_folder, read_cached, write_json
from ciess_core.sizes import SizeAssignment
from ciess_core.staged_files import staged_file
from ciess_core.training.checkpoints import training_checkpoints
from ciess_core.training.distillation import TeacherSource

if TYPE_CHECKING:
    from ciess_core.search.pipeline import PipelineSpec


def full_size_model(spec: PipelineSpec, train: sp.csr_matrix) -> Backbone:
    """A fresh full-size model on ``train``, seeded as every full model of the pipeline."""
    generator = torch.Generator(device=spec.training.device).manual_seed(spec.training.seed)
    return build_backbone(spec.backbone, train, generator)


def load_full_model(
    spec: PipelineSpec, split: DatasetSplit, directory: Path, phase: Phase = Phase.SEARCH
) -> Backbone:
    """The full model kept in ``directory/model.pt``, trained on ``phase``'s training matrix:
    stage 1's (``full/``, the search phase) or the test phase's teacher (``teacher/``)."""
    weights = directory / "model.pt"
    if not weights.exists():
        raise ConfigError(
            f"{weights} is missing: this run's full model was trained before its weights were "
            f"kept; remove {directory} to train it again"
        )
    train, _ = split.phase(phase)
    model = full_size_model(spec, train)
    model.load_state_dict(torch.load(weights, map_location=spec.training.device))
    return model


def keeps_phase_teachers(spec: PipelineSpec) -> bool:
    """Whether the pipeline trains a full model of its own for the test phase and for
    deployment (distillation from ``TeacherSource.PHASE`` teachers, the shipped recipe)."""
    return spec.distillation is not None and spec.distillation.teacher is TeacherSource.PHASE


def full_model_batches(out: Path) -> int:
    """The batch count stage 1 selected for the full model of the pipeline folder ``out``
    (at least 1): what the phases' full models train for."""
    full = json.loads((out / "full" / "summary.json").read_text())
    return max(int(full["best_batch"]), 1)


TEACHER_DIRECTORIES = {Phase.TEST: "teacher", Phase.DEPLOY: "teacher-deploy"}


def train_phase_teacher(
    spec: PipelineSpec, split: DatasetSplit, out: Path, progress: bool, phase: Phase
) -> float:
    """Train the full model on ``phase``'s training matrix (train ∪ validation for the test
    phase, every interaction for deployment), without distillation, as the protocol trains a
    final model: the test phase's is ``spec.protocol``'s tested model at full size, with stage
    1's model as its selection on validation; the deployment teacher trains for stage 1's batch
    count. Kept in ``out/teacher`` or ``out/teacher-deploy`` (the test phase's summary also
    holds the full model's test metrics under the protocol); an earlier call's is left as it is.
    Returns the seconds its training took."""
    directory = out / TEACHER_DIRECTORIES[phase]
    summary_path = directory / "summary.json"
    if (cached := read_cached(summary_path)) is not None:
        return float(cached["seconds"])
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    batches = full_model_batches(out)
    run_spec = RunSpec(
        dataset=spec.dataset, backbone=spec.backbone, training=spec.training, protocol=spec.protocol
    )
    sizes = SizeAssignment.full(split.num_users, split.num_items, spec.backbone.max_size)
    summary: dict[str, Any] = {}
    with training_checkpoints(checkpoint_folder(out)):
        if phase is Phase.TEST:
            model, outcome, _ = execute_run(
                run_spec, split, sizes, progress, selected_batches=batches
            )
            summary["test"] = outcome.test_metrics
        else:
            model, _ = train_deployment(run_spec, split, sizes, batches, progress)
    with staged_file(directory / "model.pt") as staging:
        torch.save(model.state_dict(), staging)
    seconds = round(time.perf_counter() - started, 2)
    write_json(summary_path, {"seconds": seconds, **summary})
    return seconds


def prepare_teachers(
    spec: PipelineSpec,
    split: DatasetSplit,
    out: Path,
    progress: bool = True,
    phases: tuple[Phase, ...] = (Phase.SEARCH, Phase.TEST, Phase.DEPLOY),
) -> tuple[dict[Phase, Backbone], float]:
    """The teacher of each of ``phases`` for distilled retraining, and the seconds spent
    training any.

    Stage 1's full model teaches every phase, or with ``TeacherSource.PHASE`` the test phase
    and the deployment model have their own (trained here once, kept in ``out``).
    """
    if spec.distillation is None:
        return {}, 0.0
    search_teacher = load_full_model(spec, split, out / "full")
    teachers: dict[Phase, Backbone] = {}
    seconds = 0.0
    for phase in phases:
        if phase is Phase.SEARCH or spec.distillation.teacher is TeacherSource.SEARCH:
            teachers[phase] = search_teacher
            continue
        seconds += train_phase_teacher(spec, split, out, progress, phase)
        teachers[phase] = load_full_model(spec, split, out / TEACHER_DIRECTORIES[phase], phase)
    return teachers, seconds
