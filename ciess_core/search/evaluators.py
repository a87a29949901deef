"""Quality evaluators: how good is a size assignment, per user and per item, on validation?

The search scores assignments through one interface (:class:`QualityEvaluator`). The core's
implementation is :class:`SupernetEvaluator`: one model is trained once with a new random size
for every entity at every batch, so that every prefix of every embedding is useful on its own; a
candidate is scored by masking this model (optionally after a few fine-tuning batches under its
masks). The paper's evaluator, a model trained from scratch per candidate, is an experiment in
``bench/experiments``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch

from ciess_core.checks import MAX_SEED
from ciess_core.errors import ConfigError
from ciess_core.json_form import jsonable
from ciess_core.models import Backbone, BackboneConfig, build_backbone
from ciess_core.search.config import ItemQuality
from ciess_core.sizes import SizeAssignment
from ciess_core.staged_files import staged_file
from ciess_core.training import TrainConfig, evaluate_model, train_bpr

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualitySignal:
    """Validation quality of one size assignment.

    Attributes:
        user_eval: (num_users,) mean of Recall and NDCG at 5/10/20 per user; 0 where a user has no
            validation item.
        item_eval: (num_items,) the items' eval, as ``ItemQuality`` asks: the mean ``user_eval``
            over each item's training users (``users``, the paper's) or the item's own ranks
            for its validation users (``own``).
        metrics: the metrics averaged over evaluated users.
        seconds: wall time of this evaluation, training included.
    """

    user_eval: np.ndarray
    item_eval: np.ndarray
    metrics: dict[str, float]
    seconds: float


class QualityEvaluator(Protocol):
    """Scores size assignments; ``prepare`` pays any one-off cost before the search starts.
    ``evaluate``'s ``value_type`` scores the tables as a store of that type decodes them
    (:func:`~ciess_core.models.stored_tables`): the byte planner's simulated quantisation."""

    name: str

    def prepare(self) -> None: ...

    def evaluate(self, sizes: SizeAssignment, value_type: str = "float32") -> QualitySignal: ...


def quality_signal(
    model: Backbone,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    started: float,
    item_quality: ItemQuality = ItemQuality.USERS,
    value_type: str = "float32",
) -> QualitySignal:
    """Evaluate ``model`` (its tables stored as ``value_type``) on ``valid`` and turn the result
    into per-user and per-item quality."""
    result = evaluate_model(model, train, valid, value_type=value_type)
    user_eval = np.nan_to_num(result.user_quality(), nan=0.0)
    item_eval = (
        result.item_own_quality(valid)
        if item_quality is ItemQuality.OWN
        else result.item_quality(train)
    )
    return QualitySignal(
        user_eval=user_eval,
        item_eval=item_eval,
        metrics=result.mean(),
        seconds=time.perf_counter() - started,
    )


class RandomSizeDraws:
    """Before every batch of the supernet's training, a new size for every user and item, drawn
    uniformly from 1 to ``max_size`` (a :class:`~ciess_core.training.BatchHook`: its generator's
    state goes into training checkpoints)."""

    def __init__(self, model: Backbone, max_size: int, seed: int) -> None:
        self.model = model
        self.max_size = max_size
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    @property
    def recipe(self) -> str:
        return f"uniform sizes 1..{self.max_size} for every entity"

    def __call__(self, batch_index: int) -> None:
        sizes = torch.randint(
            1, self.max_size + 1, (self.model.num_entities,), generator=self.generator
        )
        device = self.model.tables()[0].weight.device
        self.model.set_embedding_sizes(sizes.to(device), clear_truncated=False)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class SupernetEvaluator:
    """Our evaluator: one model trained under random prefix sizes, masked per candidate.

    Args:
        supernet_training: schedule of the one-off supernet training (early stopping on
            validation at full size is not used: sizes change every batch).
        finetune_batches: batches trained under a candidate's masks before it is scored, from the
            supernet's weights each time (0: score the masked supernet as it is).
        finetune_learning_rate: Adam's rate for that fine-tuning.
        cache_path: where the trained supernet's weights are kept (a ``.pt`` file with a JSON
            twin describing what was trained): a later evaluator with the same data, backbone and
            schedule loads them instead of training again (resumed pipelines, ablations).
    """

    name = "supernet"

    def __init__(
        self,
        train: sp.csr_matrix,
        valid: sp.csr_matrix,
        backbone: BackboneConfig,
        supernet_training: TrainConfig,
        finetune_batches: int = 0,
        finetune_learning_rate: float = 1e-3,
        item_quality: ItemQuality = ItemQuality.USERS,
        cache_path: Path | None = None,
    ) -> None:
        if finetune_batches < 0:
            raise ConfigError(f"finetune_batches must be >= 0, got {finetune_batches}")
        self.train, self.valid = train, valid
        self.backbone = backbone
        self.training = dataclasses.replace(supernet_training, eval_every=0)
        self.finetune_batches = finetune_batches
        self.item_quality = item_quality
        self.cache_path = cache_path
        self.finetune_training = dataclasses.replace(
            supernet_training,
            max_batches=max(finetune_batches, 1),
            learning_rate=finetune_learning_rate,
            min_learning_rate=min(finetune_learning_rate, supernet_training.min_learning_rate),
            eval_every=0,
        )
        self.model: Backbone | None = None
        self._weights: dict[str, torch.Tensor] = {}
        self.prepare_seconds = 0.0
        self.calls = 0

    def prepare(self) -> None:
        """Train the supernet once (idempotent)."""
        if self.model is not None:
            return
        started = time.perf_counter()
        generator = torch.Generator(device=self.training.device)
        generator.manual_seed(self.training.seed)
        model = build_backbone(self.backbone, self.train, generator)
        key = self._cache_key()
        if self._load_cached(model, key):
            logger.info("supernet loaded from %s", self.cache_path)
        else:
            logger.info("training the supernet for %d batches", self.training.max_batches)
            draws = RandomSizeDraws(model, self.backbone.max_size, self.training.seed + 1)
            train_bpr(model, self.train, self.training, progress=False, before_batch=draws)
            self._save_cached(model, key)
        self.model = model
        self._weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.prepare_seconds = time.perf_counter() - started

    def _cache_key(self) -> dict[str, Any]:
        """What the supernet's weights depend on."""
        train = self.train
        digest = hashlib.sha256()
        for array in (train.indptr, train.indices):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        training = jsonable(self.training)
        if training.get("value_type") == "float32":  # scores, not weights, depend on it
            del training["value_type"]  # so caches written before the field still match
        return {
            "train": digest.hexdigest(),
            "backbone": jsonable(self.backbone),
            "training": training,
        }

    def _load_cached(self, model: Backbone, key: dict[str, Any]) -> bool:
        if self.cache_path is None or not self.cache_path.is_file():
            return False
        described = self.cache_path.with_suffix(".json")
        try:
            if json.loads(described.read_text()) != key:
                logger.info("supernet cache %s was trained otherwise: training again", described)
                return False
            state = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, ValueError, RuntimeError) as error:
            logger.warning("supernet cache %s unusable (%s): retraining", self.cache_path, error)
            return False
        return True

    def _save_cached(self, model: Backbone, key: dict[str, Any]) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # the weights first: the key alone never validates
        with staged_file(self.cache_path) as staging:
            torch.save(model.state_dict(), staging)
        self.cache_path.with_suffix(".json").write_text(json.dumps(key, indent=1) + "\n")

    def evaluate(self, sizes: SizeAssignment, value_type: str = "float32") -> QualitySignal:
        self.prepare()
        model = self.model
        if model is None:  # prepare() always sets it; this keeps the type checker informed
            raise RuntimeError("supernet missing after prepare()")
        started = time.perf_counter()
        model.load_state_dict(self._weights)
        if self.finetune_batches == 0:
            model.set_size_assignment(sizes, clear_truncated=False)
        else:
            model.set_size_assignment(sizes, clear_truncated=True)
            seed = (self.training.seed + self.calls) % (MAX_SEED + 1)  # a seed each call
            config = dataclasses.replace(self.finetune_training, seed=seed)
            train_bpr(model, self.train, config, progress=False)
        self.calls += 1
        return quality_signal(model, self.train, self.valid, started, self.item_quality, value_type)
