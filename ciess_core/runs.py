"""Training runs: assign sizes, train and test under a protocol, train the deployment model.

This is orchestration: it sequences the pure pieces (data, sizes, models, training, evaluation);
:mod:`ciess_core.run_folder` writes and reads the folder a run leaves.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ciess_core.checks import check_device
from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.sizes import SizeAssignment, SizeScheme, assign_sizes
from ciess_core.storage import VALUE_TYPES
from ciess_core.training import TrainConfig, TrainResult, evaluate_model, train_bpr
from ciess_core.training.distillation import DistillationConfig, Distiller

logger = logging.getLogger(__name__)

TRAINED_ON_ALL = "all interactions (train, validation and test)"


class RunProtocol(typing.Protocol):
    """How a run's model is trained and its test numbers produced (CIESS.md §3): the extension
    point of :func:`execute_run` and the pipeline. The core's is :attr:`Protocol.CLEAN`;
    ``bench/experiments/protocols.py`` adds the authors' reference protocol, which picks on the
    test set, for comparisons with published tables."""

    @property
    def value(self) -> str:
        """The protocol's name, as run folders and JSON record it."""
        ...

    @property
    def selects_on(self) -> str:
        """The metrics ("valid" or "test") of a run's outcome that rank runs against each other."""
        ...

    def execute(
        self,
        spec: RunSpec,
        split: DatasetSplit,
        sizes: SizeAssignment,
        progress: bool,
        teachers: Teachers | None,
        selected_batches: int | None,
    ) -> RunResult:
        """Train and test one model with fixed ``sizes``, as :func:`execute_run` describes."""
        ...


class Protocol(enum.Enum):
    """The core's protocol. CLEAN: early stopping on validation with a model trained on train
    (also scored stored as every value type, for a budget change that quantises it); a fresh
    model is then trained on train ∪ validation for the selected number of batches and tested
    once."""

    CLEAN = "clean"

    @property
    def selects_on(self) -> str:
        return "valid"

    def execute(
        self,
        spec: RunSpec,
        split: DatasetSplit,
        sizes: SizeAssignment,
        progress: bool,
        teachers: Teachers | None,
        selected_batches: int | None,
    ) -> RunResult:
        started = time.perf_counter()
        history: list[dict[str, Any]] = []
        stages: dict[str, dict[str, Any]] = {}
        valid_metrics: dict[str, float] = {}
        by_value_type: dict[str, dict[str, float]] = {}
        test_train, test = split.phase(Phase.TEST)
        test_distiller = phase_distiller(spec, teachers, Phase.TEST, test_train)  # fails early
        if selected_batches is None:
            selected, selection = select_on_validation(spec, split, sizes, progress, teachers)
            history += [{"stage": "select", **dataclasses.asdict(r)} for r in selection.history]
            stages["select"] = stage_summary(selection)
            valid_metrics = selection.best_metrics
            selected_batches = max(selection.best_batch, 1)
            by_value_type = validation_by_value_type(
                selected, split, spec.training.eval_users_per_chunk
            )
        final_config = dataclasses.replace(
            spec.training, max_batches=selected_batches, eval_every=0
        )
        model = starting_model(spec, test_train, sizes, teachers, Phase.TEST)
        final = train_bpr(
            model, test_train, final_config, progress=progress, distiller=test_distiller
        )
        stages["final"] = stage_summary(final)
        test_metrics = evaluate_model(
            model,
            test_train,
            test,
            spec.training.eval_users_per_chunk,
            value_type=spec.training.value_type,
        ).mean()
        outcome = RunOutcome(
            test_metrics=test_metrics,
            valid_metrics=valid_metrics,
            achieved_sparsity=sizes.sparsity,
            seconds=time.perf_counter() - started,
            stages=stages,
            selected_batches=selected_batches,
            valid_by_value_type=by_value_type,
        )
        return model, outcome, history


class Start(enum.Enum):
    """Where a run's models start training.

    RANDOM: fresh random weights, seeded by the training seed (the paper's). TEACHER: the
    phase's teacher (the full model that distillation follows in that phase) turned to its
    principal axes (:meth:`~ciess_core.models.Backbone.turn_to_principal_axes`) and cut to the
    run's sizes; only a backbone whose scores survive the turn can (LightGCN).
    """

    RANDOM = "random"
    TEACHER = "teacher"


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run.

    ``distillation``: when set, every training stage also follows a teacher (passed to
    :func:`execute_run`), see :mod:`ciess_core.training.distillation`. ``start``: where every
    stage's model starts (:class:`Start`); from the teacher, the phases' teachers must be given.
    ``budget_bytes``: the byte budget the run's embedding stores were chosen within (every
    stored byte, :class:`~ciess_core.search.budgets.ByteBudget`); None for a sparsity budget,
    which ``target_sparsity`` holds.
    """

    dataset: str
    backbone: BackboneConfig
    training: TrainConfig
    size_scheme: SizeScheme = SizeScheme.FULL
    target_sparsity: float | None = None
    protocol: RunProtocol = Protocol.CLEAN
    split_seed: int = 42
    distillation: DistillationConfig | None = None
    start: Start = Start.RANDOM
    budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.start is Start.TEACHER and self.backbone.kind is not BackboneKind.LIGHTGCN:
            raise ConfigError(
                f"start 'teacher' turns the teacher's tables, which keeps the scores of LightGCN "
                f"only; this run's backbone is {self.backbone.kind.value}"
            )


@dataclass(frozen=True)
class RunOutcome:
    """What a run produced; also written to ``metrics.json``."""

    test_metrics: dict[str, float]
    valid_metrics: dict[str, float]
    achieved_sparsity: float
    seconds: float
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    selected_batches: int = 0
    """The batch count the protocol selected; the deployment model trains for as many."""
    valid_by_value_type: dict[str, dict[str, float]] = field(default_factory=dict)
    """The selected model's validation metrics with its tables stored as each value type (what
    serving it quantised would keep, known without training again); empty when not measured."""


RunResult = tuple[Backbone, RunOutcome, list[dict[str, Any]]]
"""What a protocol's run gives: the tested model, the outcome, the evaluation history."""


def usable_device(device: str) -> torch.device:
    """``device`` (``cpu``, ``cuda`` or ``cuda:N``) as torch's; a ConfigError when this machine
    has no such device."""
    check_device(device)
    parsed = torch.device(device)
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{device}' was asked for but this machine has no usable CUDA device"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{device}' was asked for but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return parsed


def _device(spec: RunSpec) -> torch.device:
    return usable_device(spec.training.device)


def fresh_model(spec: RunSpec, train: sp.csr_matrix, sizes: SizeAssignment) -> Backbone:
    """A new model of ``spec`` on ``train`` with ``sizes``, seeded by the training seed."""
    device = _device(spec)
    generator = torch.Generator(device=device).manual_seed(spec.training.seed)
    model = build_backbone(spec.backbone, train, generator)
    model.set_size_assignment(sizes)
    return model


def starting_model(
    spec: RunSpec,
    train: sp.csr_matrix,
    sizes: SizeAssignment,
    teachers: Teachers | None,
    phase: Phase,
) -> Backbone:
    """The model that ``phase``'s training starts from, with ``sizes``: a fresh one
    (:func:`fresh_model`), or with :attr:`Start.TEACHER` the phase's teacher turned to its
    principal axes and cut to ``sizes``.

    Raises:
        ConfigError: the run starts from a teacher and none was given for ``phase``.
    """
    model = fresh_model(spec, train, sizes)
    if spec.start is Start.RANDOM:
        return model
    teacher = None if teachers is None else teachers.get(phase)
    if teacher is None:
        raise ConfigError(
            f"the run starts from the teacher but no teacher was given for the {phase.value} phase"
        )
    model.load_state_dict(teacher.state_dict())
    model.turn_to_principal_axes()
    model.set_size_assignment(sizes)
    return model


def stage_summary(result: TrainResult) -> dict[str, Any]:
    """A training stage as ``metrics.json`` records it."""
    return {
        "batches_run": result.batches_run,
        "best_batch": result.best_batch,
        "seconds": round(result.seconds, 3),
        "seconds_per_batch": round(result.seconds_per_batch, 5),
        "stopped_early": result.stopped_early,
        "best_metrics": result.best_metrics,
    }


Teachers = Mapping[Phase, Backbone]
"""The full model that teaches each training phase when a run distils."""


def phase_distiller(
    spec: RunSpec, teachers: Teachers | None, phase: Phase, train: sp.csr_matrix
) -> Distiller | None:
    """The distiller of ``phase``'s training when ``spec`` distils (None when it does not)."""
    if spec.distillation is None:
        return None
    teacher = None if teachers is None else teachers.get(phase)
    if teacher is None:
        raise ConfigError(
            f"the run asks for distillation but no teacher was given for the {phase.value} phase"
        )
    return Distiller(teacher, train, spec.distillation, spec.training.eval_users_per_chunk)


def select_on_validation(
    spec: RunSpec,
    split: DatasetSplit,
    sizes: SizeAssignment,
    progress: bool = True,
    teachers: Teachers | None = None,
) -> tuple[Backbone, TrainResult]:
    """The clean protocol's first stage: train on train, early-stop and select on validation.
    Returns the model at its selected batch and the training's result."""
    search_train, valid = split.phase(Phase.SEARCH)
    model = starting_model(spec, search_train, sizes, teachers, Phase.SEARCH)
    return model, train_bpr(
        model,
        search_train,
        spec.training,
        held_out=valid,
        progress=progress,
        distiller=phase_distiller(spec, teachers, Phase.SEARCH, search_train),
    )


def validation_by_value_type(
    model: Backbone, split: DatasetSplit, chunk: int
) -> dict[str, dict[str, float]]:
    """``model`` (trained on the search phase's train) scored on validation, ``chunk`` users at
    a time, with its tables stored as each value type of :data:`~ciess_core.storage.VALUE_TYPES`."""
    train, valid = split.phase(Phase.SEARCH)
    return {
        value_type: evaluate_model(model, train, valid, chunk, value_type=value_type).mean()
        for value_type in VALUE_TYPES
    }


def execute_run(
    spec: RunSpec,
    split: DatasetSplit,
    sizes: SizeAssignment,
    progress: bool = True,
    teachers: Teachers | None = None,
    selected_batches: int | None = None,
) -> RunResult:
    """Train and test one model with fixed ``sizes`` under ``spec.protocol``.

    ``teachers``: the trained models that ``spec.distillation`` distils from in each phase (they
    must score the same users and items). ``selected_batches``: a batch count already selected
    on validation for this recipe and these sizes (the pipeline's full model, for a full-size
    teacher): the clean protocol trains the tested model for as many batches instead of
    selecting again. Returns the final model, the outcome and the evaluation history (one dict
    per evaluation).
    """
    return spec.protocol.execute(spec, split, sizes, progress, teachers, selected_batches)


def train_deployment(
    spec: RunSpec,
    split: DatasetSplit,
    sizes: SizeAssignment,
    batches: int,
    progress: bool = True,
    teachers: Teachers | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """The model to serve: a fresh one with ``sizes`` trained on every interaction (train,
    validation and test) for the ``batches`` the protocol selected, nothing held out.

    The protocol's test numbers measure this recipe; the served model has also seen the
    interactions they were measured on, so that it never recommends what a user already has.
    Returns the model and its stage summary.
    """
    if batches < 1:
        raise ConfigError(f"the deployment model needs at least 1 batch, got {batches}")
    everything, _ = split.phase(Phase.DEPLOY)
    model = starting_model(spec, everything, sizes, teachers, Phase.DEPLOY)
    config = dataclasses.replace(spec.training, max_batches=batches, eval_every=0)
    result = train_bpr(
        model,
        everything,
        config,
        progress=progress,
        distiller=phase_distiller(spec, teachers, Phase.DEPLOY, everything),
    )
    return model, stage_summary(result)


def execute_and_deploy(
    spec: RunSpec,
    split: DatasetSplit,
    sizes: SizeAssignment,
    progress: bool = True,
    teachers: Teachers | None = None,
) -> tuple[Backbone, RunOutcome, list[dict[str, Any]]]:
    """:func:`execute_run`, then :func:`train_deployment` for the batches it selected.

    Returns the deployment model, the protocol's outcome (its ``stages`` gain ``deploy``) and the
    evaluation history.
    """
    _, outcome, history = execute_run(spec, split, sizes, progress=progress, teachers=teachers)
    model, deploy = train_deployment(
        spec, split, sizes, outcome.selected_batches, progress=progress, teachers=teachers
    )
    outcome = dataclasses.replace(outcome, stages={**outcome.stages, "deploy": deploy})
    return model, outcome, history


def run_sizes(spec: RunSpec, num_users: int, num_items: int) -> SizeAssignment:
    """The size assignment that ``spec`` asks for (MR draws from the training seed)."""
    rng = np.random.default_rng(spec.training.seed)
    return assign_sizes(
        spec.size_scheme, num_users, num_items, spec.backbone.max_size, spec.target_sparsity, rng
    )
