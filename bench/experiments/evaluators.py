"""The paper's evaluator: every candidate assignment gets a fresh model trained from scratch.

Faithful and expensive: M·T = 300 trainings per search. Measured one iteration (1,500 batches,
then validation) at 101 s on 2 CPU cores and 16 s on a GPU for ML-1M LightGCN, 8.4 h and 1.3 h per
search (``python bench/ciess.py paper-cost``); the core's supernet evaluator scores a candidate
in seconds. Plugs into ``run_pipeline(evaluator_factory=RetrainEvaluatorFactory(...))``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import scipy.sparse as sp
import torch

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import BackboneConfig, build_backbone
from ciess_core.search.config import ItemQuality
from ciess_core.search.evaluators import QualitySignal, quality_signal
from ciess_core.search.pipeline import PipelineSpec
from ciess_core.sizes import SizeAssignment
from ciess_core.training import TrainConfig, train_bpr

__all__ = ["RetrainEvaluator", "RetrainEvaluatorFactory"]


class RetrainEvaluator:
    """A fresh model trained for ``training.max_batches`` per candidate, then scored on ``valid``
    (a :class:`~ciess_core.search.evaluators.QualityEvaluator`)."""

    name = "retrain"

    def __init__(
        self,
        train: sp.csr_matrix,
        valid: sp.csr_matrix,
        backbone: BackboneConfig,
        training: TrainConfig,
        item_quality: ItemQuality = ItemQuality.USERS,
    ) -> None:
        self.train, self.valid = train, valid
        self.backbone = backbone
        self.training = dataclasses.replace(training, eval_every=0)
        self.item_quality = item_quality
        self.calls = 0

    def prepare(self) -> None:
        """Nothing to prepare: every evaluation starts from scratch."""

    def evaluate(self, sizes: SizeAssignment, value_type: str = "float32") -> QualitySignal:
        started = time.perf_counter()
        generator = torch.Generator(device=self.training.device)
        generator.manual_seed(self.training.seed + self.calls)
        model = build_backbone(self.backbone, self.train, generator)
        model.set_size_assignment(sizes)
        config = dataclasses.replace(self.training, seed=self.training.seed + self.calls)
        train_bpr(model, self.train, config, progress=False)
        self.calls += 1
        return quality_signal(model, self.train, self.valid, started, self.item_quality, value_type)


@dataclass(frozen=True)
class RetrainEvaluatorFactory:
    """``run_pipeline``'s evaluator factory for the paper's evaluator, ``batches`` per candidate."""

    batches: int = 1500

    def __call__(
        self, spec: PipelineSpec, split: DatasetSplit, cache_dir: Path | None
    ) -> RetrainEvaluator:
        if spec.share_grid:
            raise ConfigError(
                "share_grid scores every refitted variant and needs the supernet evaluator; "
                "set share_grid=() with the paper's evaluator"
            )
        train, valid = split.phase(Phase.SEARCH)
        training = dataclasses.replace(spec.training, max_batches=self.batches)
        return RetrainEvaluator(
            train, valid, spec.backbone, training, item_quality=spec.search.item_quality
        )
