"""BPR training with early stopping on a held-out matrix and best-checkpoint restore."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ciess_core.errors import ConfigError
from ciess_core.evaluation import RankingResult, evaluate_full_ranking
from ciess_core.models import Backbone, stored_tables
from ciess_core.training.checkpoints import TrainingCheckpoint, training_fingerprint
from ciess_core.training.config import TrainConfig
from ciess_core.training.distillation import Distiller
from ciess_core.training.sampling import BprSampler

logger = logging.getLogger(__name__)

LOSS_LOGS_WITHOUT_EVALUATION = 10
"""How many times a training without evaluations (the supernet's, a fixed-length retraining)
logs its progress and mean loss: every tenth of its batches."""


def bpr_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Mean of -log σ(ŷ_pos - ŷ_neg) over the batch, computed stably as softplus(ŷ_neg - ŷ_pos)."""
    return F.softplus(negative_scores - positive_scores).mean()


class BatchHook(Protocol):
    """What :func:`train_bpr` runs before every batch (the supernet's size draws). Its state is
    kept in training checkpoints, so that a resumed training's hook does what the uninterrupted
    one's would."""

    @property
    def recipe(self) -> str:
        """What the hook does, part of the training's fingerprint."""
        ...

    def __call__(self, batch_index: int) -> None: ...

    def state(self) -> Any:
        """The hook's state: tensors and plain values, as ``torch.load(weights_only=True)``
        reads them."""
        ...

    def restore(self, state: Any) -> None:
        """Take back a state that :meth:`state` returned."""
        ...


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation during training."""

    batch: int
    seconds: float
    loss: float
    learning_rate: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_bpr`; the model holds the best checkpoint when it returns."""

    batches_run: int
    best_batch: int
    best_metrics: dict[str, float]
    history: tuple[EvaluationRecord, ...]
    seconds: float
    seconds_per_batch: float
    stopped_early: bool = False
    extra: dict[str, float] = field(default_factory=dict)


def evaluate_model(
    model: Backbone,
    exclude: sp.csr_matrix,
    held_out: sp.csr_matrix,
    users_per_chunk: int = 2048,
    progress: bool = False,
    value_type: str = "float32",
) -> RankingResult:
    """Full-ranking evaluation of ``model`` in eval mode (restores its previous mode), its tables
    as a ``value_type`` store decodes them (:func:`~ciess_core.models.stored.stored_tables`)."""
    was_training = model.training
    model.eval()
    device = model.tables()[0].weight.device
    try:
        with torch.no_grad(), stored_tables(model, value_type):
            representation = model.represent()
            return evaluate_full_ranking(
                lambda users: model.score_all_items(representation, users),
                exclude,
                held_out,
                users_per_chunk=users_per_chunk,
                device=device,
                progress=progress,
            )
    finally:
        model.train(was_training)


def train_bpr(
    model: Backbone,
    train: sp.csr_matrix,
    config: TrainConfig,
    held_out: sp.csr_matrix | None = None,
    *,
    progress: bool = True,
    on_evaluation: Callable[[EvaluationRecord], None] | None = None,
    before_batch: BatchHook | None = None,
    distiller: Distiller | None = None,
) -> TrainResult:
    """Train ``model`` with BPR on ``train``; select the best checkpoint on ``held_out``.

    With ``held_out`` None (or ``config.eval_every`` 0) it trains for ``max_batches`` and keeps the
    last weights. Otherwise it evaluates every ``eval_every`` batches (items in ``train`` are
    excluded from the ranking), stops after ``patience`` evaluations without improvement of
    ``selection_metric`` and restores the best weights. ``before_batch(batch_index)`` runs before
    every batch (the search's supernet uses it to draw new sizes). With ``distiller``, its
    distillation term on the batch's users is added to the loss.

    Inside :func:`~ciess_core.training.checkpoints.training_checkpoints` the training saves its
    whole state (``before_batch``'s included) now and then and, started again after an
    interruption, resumes from it: the weights it returns are the uninterrupted training's.
    """
    if train.shape != (model.num_users, model.num_items):
        raise ConfigError(
            f"training matrix shape {train.shape} does not match the model's "
            f"({model.num_users}, {model.num_items})"
        )
    device = model.tables()[0].weight.device
    rng = np.random.default_rng(config.seed)
    sampler = BprSampler(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    evaluating = held_out is not None and config.eval_every > 0
    log_every = max(1, config.max_batches // LOSS_LOGS_WITHOUT_EVALUATION)
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = {}
    best_score, best_batch, stale = -np.inf, 0, 0
    history: list[EvaluationRecord] = []
    started = time.perf_counter()
    train_seconds = 0.0
    running_loss, losses_seen = 0.0, 0
    batches_run, stopped_early = 0, False
    checkpoint = _checkpoint_of(model, train, held_out, config, distiller, before_batch)
    saved = None if checkpoint is None else checkpoint.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        model.set_random_state(saved["model_random"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        best_state, best_metrics = saved["best_state"], saved["best_metrics"]
        best_score, best_batch, stale = saved["best_score"], saved["best_batch"], saved["stale"]
        history = [EvaluationRecord(**record) for record in saved["history"]]
        started -= saved["seconds"]
        train_seconds = saved["train_seconds"]
        running_loss, losses_seen = saved["running_loss"], saved["losses_seen"]
        batches_run = saved["batches_run"]
        if before_batch is not None:
            before_batch.restore(saved["before_batch"])
    model.train()
    bar = tqdm(
        total=config.max_batches,
        initial=batches_run,
        desc="train",
        unit="batch",
        disable=not progress,
    )
    for batch_index in range(batches_run, config.max_batches):
        batch_started = time.perf_counter()
        if before_batch is not None:
            before_batch(batch_index)
        learning_rate = config.learning_rate_at(batch_index)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        batch = sampler.sample(config.batch_size, rng)
        users = torch.from_numpy(batch.users).to(device)
        positives = torch.from_numpy(batch.positives).to(device)
        negatives = torch.from_numpy(batch.negatives).to(device)
        representation = model.represent()
        loss = bpr_loss(
            model.score_pairs(representation, users, positives),
            model.score_pairs(representation, users, negatives),
        ) + model.regularization(users, positives, negatives)
        if distiller is not None:
            loss = loss + distiller.loss(model, representation, users, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_seconds += time.perf_counter() - batch_started
        batches_run = batch_index + 1
        running_loss += float(loss.detach())
        losses_seen += 1
        bar.update(1)
        if not evaluating and batches_run % log_every == 0:
            logger.info(
                "batch %d of %d, loss %.4f",
                batches_run,
                config.max_batches,
                running_loss / losses_seen,
            )
            running_loss, losses_seen = 0.0, 0
        if held_out is not None and evaluating and batches_run % config.eval_every == 0:
            result = evaluate_model(
                model, train, held_out, config.eval_users_per_chunk, value_type=config.value_type
            )
            metrics = result.mean()
            if config.selection_metric not in metrics:
                raise ConfigError(
                    f"selection metric '{config.selection_metric}' is not one of {sorted(metrics)}"
                )
            record = EvaluationRecord(
                batch=batches_run,
                seconds=time.perf_counter() - started,
                loss=running_loss / losses_seen,
                learning_rate=learning_rate,
                metrics=metrics,
            )
            running_loss, losses_seen = 0.0, 0
            history.append(record)
            if on_evaluation is not None:
                on_evaluation(record)
            score = metrics[config.selection_metric]
            bar.set_postfix(loss=f"{record.loss:.4f}", **{config.selection_metric: f"{score:.4f}"})
            logger.info("batch %d loss %.4f %s", batches_run, record.loss, _format(metrics))
            if score > best_score:
                best_score, best_batch, stale = score, batches_run, 0
                best_metrics = metrics
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    stopped_early = True
                    break
        if checkpoint is not None and checkpoint.due():
            checkpoint.save(
                {
                    "batches_run": batches_run,
                    "model": model.state_dict(),
                    "model_random": model.random_state(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "best_state": best_state,
                    "best_metrics": best_metrics,
                    "best_score": best_score,
                    "best_batch": best_batch,
                    "stale": stale,
                    "history": [dataclasses.asdict(record) for record in history],
                    "seconds": time.perf_counter() - started,
                    "train_seconds": train_seconds,
                    "running_loss": running_loss,
                    "losses_seen": losses_seen,
                    "before_batch": None if before_batch is None else before_batch.state(),
                }
            )
    bar.close()
    if checkpoint is not None:
        checkpoint.remove()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_batch = batches_run
    model.eval()
    seconds = time.perf_counter() - started
    return TrainResult(
        batches_run=batches_run,
        best_batch=best_batch,
        best_metrics=best_metrics,
        history=tuple(history),
        seconds=seconds,
        seconds_per_batch=train_seconds / max(batches_run, 1),
        stopped_early=stopped_early,
    )


def _checkpoint_of(
    model: Backbone,
    train: sp.csr_matrix,
    held_out: sp.csr_matrix | None,
    config: TrainConfig,
    distiller: Distiller | None,
    before_batch: BatchHook | None,
) -> TrainingCheckpoint | None:
    """This training's checkpoint when checkpoints are kept."""
    recipe = repr(config) + ("" if distiller is None else repr(distiller.config))
    if before_batch is not None:
        recipe += f" before every batch: {before_batch.recipe}"
    teacher = None if distiller is None else distiller.teacher
    return TrainingCheckpoint.in_scope(
        lambda: training_fingerprint(model, train, held_out, recipe, teacher)
    )


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4f}" for name, value in sorted(metrics.items()))
