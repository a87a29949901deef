"""The search's quality evaluator, the supernet, on a tiny generated dataset (the paper's
evaluator, an experiment, is tested in ``tests/test_bench_experiments.py``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import BackboneConfig
from ciess_core.search.evaluators import RandomSizeDraws, SupernetEvaluator
from ciess_core.sizes import SizeAssignment
from ciess_core.training import TrainConfig
from ciess_core.training.checkpoints import training_checkpoints

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
    users, items = train.shape
    full = evaluator.evaluate(SizeAssignment.full(users, items, 16)).metrics["ndcg@20"]
    tiny = evaluator.evaluate(SizeAssignment.equal(users, items, 1, 16)).metrics["ndcg@20"]
    again = evaluator.evaluate(SizeAssignment.full(users, items, 16)).metrics["ndcg@20"]
    assert full > tiny
    assert again == pytest.approx(full)  # scoring one assignment does not disturb the next
    assert full > 0.3


def test_supernet_with_finetuning_restarts_from_the_supernet(clustered_split: DatasetSplit) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    evaluator = SupernetEvaluator(train, valid, BACKBONE, TRAINING, finetune_batches=5)
    sizes = SizeAssignment.equal(train.shape[0], train.shape[1], 4, 16)
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
    sizes = SizeAssignment.equal(train.shape[0], train.shape[1], 6, 16)
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


class _StopError(Exception):
    """Stands for whatever stops the supernet's training: a stopped session, a lost worker."""


def test_an_interrupted_supernet_training_resumes_to_the_same_weights(
    clustered_split: DatasetSplit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under ``training_checkpoints`` the supernet's training keeps its size draws' state with
    its weights: stopped before batch 30 and prepared again, it resumes at batch 30 and ends
    with the uninterrupted supernet's weights bit for bit (its sizes drawn as they would have
    been: a restart from batch 0 or with a fresh generator would differ)."""
    train, valid = clustered_split.phase(Phase.SEARCH)
    short = dataclasses.replace(TRAINING, max_batches=50)
    straight = SupernetEvaluator(train, valid, BACKBONE, short)
    straight.prepare()

    drawn: list[int] = []
    draw = RandomSizeDraws.__call__

    def stopping_draw(self: RandomSizeDraws, batch_index: int) -> None:
        if batch_index == 30 and 30 not in drawn:
            drawn.append(batch_index)
            raise _StopError
        drawn.append(batch_index)
        draw(self, batch_index)

    monkeypatch.setattr(RandomSizeDraws, "__call__", stopping_draw)
    folder = tmp_path / "checkpoints"
    with training_checkpoints(folder, every_seconds=0.0):
        with pytest.raises(_StopError):
            SupernetEvaluator(train, valid, BACKBONE, short).prepare()
        assert len(list(folder.glob("train-*.pt"))) == 1
        resumed = SupernetEvaluator(train, valid, BACKBONE, short)
        with caplog.at_level(logging.INFO, logger="ciess_core.training.checkpoints"):
            resumed.prepare()
    assert "resuming training at batch 30" in caplog.text
    assert drawn == [*range(31), *range(30, 50)]  # batches 0-29 were not trained again
    assert list(folder.iterdir()) == []
    assert straight.model is not None and resumed.model is not None
    for name, weights in straight.model.state_dict().items():
        assert torch.equal(weights, resumed.model.state_dict()[name]), name
