"""The search's quality evaluator, the supernet, on a tiny generated dataset (the paper's
evaluator, an experiment, is tested in ``tests/test_bench_experiments.py``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import BackboneConfig
from ciess_core.search.evaluators import SupernetEvaluator
from ciess_core.sizes import SizeAssignment
from ciess_core.training import TrainConfig

BACKBONE = BackboneConfig(max_size=16)
TRAINING = TrainConfig(
    batch_size=256, max_batches=120, learning_rate=0.02, min_learning_rate=1e-3, seed=3
)


def test_supernet_scores_every_prefix_and_prefers_larger_sizes(
    clustered_split: DatasetSplit,
) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    evaluator = SupernetEvaluator(train, valid, BACKBONE, TRAINING)
    evaluator.prepare()
    shape = train.shape
    full = evaluator.evaluate(SizeAssignment.full(*shape, 16)).metrics["ndcg@20"]
    tiny = evaluator.evaluate(SizeAssignment.equal(*shape, 1, 16)).metrics["ndcg@20"]
    again = evaluator.evaluate(SizeAssignment.full(*shape, 16)).metrics["ndcg@20"]
    assert full > tiny
    assert again == pytest.approx(full)  # scoring one assignment does not disturb the next
    assert full > 0.3


def test_supernet_with_finetuning_restarts_from_the_supernet(clustered_split: DatasetSplit) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    evaluator = SupernetEvaluator(train, valid, BACKBONE, TRAINING, finetune_batches=5)
    sizes = SizeAssignment.equal(*train.shape, 4, 16)
    first = evaluator.evaluate(sizes)
    assert evaluator.model is not None
    weights_after_first = evaluator._weights["embedding.weight"].clone()
    evaluator.evaluate(sizes)
    assert np.isfinite(first.metrics["ndcg@20"])
    assert (evaluator._weights["embedding.weight"] == weights_after_first).all()


def test_an_assignment_of_other_users_and_items_is_rejected(clustered_split: DatasetSplit) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    evaluator = SupernetEvaluator(train, valid, BACKBONE, TRAINING)
    num_users, num_items = train.shape
    with pytest.raises(ConfigError, match="does not fit a model"):
        evaluator.evaluate(SizeAssignment.equal(1, 2, 4, 16))
    with pytest.raises(ConfigError, match="does not fit a model"):  # the same count, split apart
        evaluator.evaluate(SizeAssignment.equal(num_users + 1, num_items - 1, 4, 16))


def test_supernet_cache_is_reused_only_for_the_same_training(
    clustered_split: DatasetSplit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    cache = tmp_path / "supernet" / "supernet.pt"
    short = dataclasses.replace(TRAINING, max_batches=20)
    first = SupernetEvaluator(train, valid, BACKBONE, short, cache_path=cache)
    first.prepare()
    assert cache.is_file() and cache.with_suffix(".json").is_file()
    sizes = SizeAssignment.equal(*train.shape, 6, 16)
    expected = first.evaluate(sizes).metrics
    with caplog.at_level(logging.INFO, logger="ciess_core.search.evaluators"):
        second = SupernetEvaluator(train, valid, BACKBONE, short, cache_path=cache)
        second.prepare()
    assert "supernet loaded from" in caplog.text
    assert second.evaluate(sizes).metrics == expected
    # Another schedule does not take the cached weights (and replaces them).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ciess_core.search.evaluators"):
        other = SupernetEvaluator(
            train, valid, BACKBONE, dataclasses.replace(short, seed=9), cache_path=cache
        )
        other.prepare()
    assert "trained otherwise" in caplog.text and "training the supernet" in caplog.text
    assert json.loads(cache.with_suffix(".json").read_text())["training"]["seed"] == 9
