"""BPR sampling, loss, schedule, early stopping and checkpoint restore; a run under the clean
protocol."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError, DataError
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.models.rotation import principal_rotation
from ciess_core.runs import Protocol, RunSpec, Start, execute_run, starting_model
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import VALUE_TYPES
from ciess_core.training import BprSampler, TrainConfig, bpr_loss, evaluate_model, train_bpr
from ciess_core.training.checkpoints import training_checkpoints
from ciess_core.training.loop import EvaluationRecord, TrainResult
from tests.conftest import clustered_interactions


def test_sampler_never_returns_a_training_item_as_negative(tiny_train: sp.csr_matrix) -> None:
    sampler = BprSampler(tiny_train)
    batch = sampler.sample(5000, np.random.default_rng(0))
    dense = tiny_train.toarray() > 0
    assert np.all(dense[batch.users, batch.positives])
    assert not np.any(dense[batch.users, batch.negatives])
    assert set(np.unique(batch.users)) == set(range(12))


def test_sampler_is_seeded(tiny_train: sp.csr_matrix) -> None:
    sampler = BprSampler(tiny_train)
    first = sampler.sample(100, np.random.default_rng(3))
    second = sampler.sample(100, np.random.default_rng(3))
    assert np.array_equal(first.negatives, second.negatives)


def test_sampler_rejects_impossible_matrices() -> None:
    with pytest.raises(DataError, match="no interactions"):
        BprSampler(sp.csr_matrix((3, 4), dtype=np.float32))
    with pytest.raises(DataError, match="every item"):
        BprSampler(sp.csr_matrix(np.ones((2, 3), dtype=np.float32)))


def test_bpr_loss_hand_values() -> None:
    loss = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    expected = (-np.log(1 / (1 + np.exp(-2.0))) + np.log(2.0)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_learning_rate_schedule_decays_to_a_floor() -> None:
    config = TrainConfig(
        learning_rate=0.03, lr_decay=0.9, lr_decay_every=200, min_learning_rate=1e-3
    )
    assert config.learning_rate_at(0) == 0.03
    assert config.learning_rate_at(199) == 0.03
    assert config.learning_rate_at(200) == pytest.approx(0.027)
    assert config.learning_rate_at(100_000) == 1e-3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size"),
        ("min_learning_rate", 1.0, "min_learning_rate"),
        ("device", "tpu", "device"),
        ("lr_decay", 1.5, "lr_decay"),
    ],
)
def test_bad_training_config_is_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_a_training_without_evaluations_logs_its_loss_every_tenth_of_its_batches(
    clustered_split: DatasetSplit, caplog: pytest.LogCaptureFixture
) -> None:
    """The supernet's training and fixed-length retrainings evaluate nothing: their logs still
    say how far they are and how the loss goes."""
    train, _ = clustered_split.phase(Phase.SEARCH)
    model = build_backbone(BackboneConfig(max_size=8), train, torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=64, max_batches=50, eval_every=0, learning_rate=0.02)
    with caplog.at_level(logging.INFO, logger="ciess_core.training.loop"):
        train_bpr(model, train, config, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "ciess_core.training.loop"]
    assert [line.split(",")[0] for line in lines] == [f"batch {b} of 50" for b in range(5, 51, 5)]
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert losses[-1] < losses[0]  # each a mean over its own five batches


def test_early_stopping_restores_the_best_checkpoint(clustered_split: DatasetSplit) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    model = build_backbone(
        BackboneConfig.default_for(BackboneKind.LIGHTGCN, max_size=16),
        train,
        torch.Generator().manual_seed(0),
    )
    # A learning rate this high overshoots, so the best evaluation is not the last one.
    config = TrainConfig(
        batch_size=128,
        max_batches=400,
        learning_rate=0.5,
        lr_decay=1.0,
        min_learning_rate=0.5,
        eval_every=10,
        patience=2,
    )
    result = train_bpr(model, train, config, held_out=valid, progress=False)
    scores = [record.metrics["ndcg@20"] for record in result.history]
    assert result.best_metrics["ndcg@20"] == max(scores)
    assert result.best_batch == result.history[int(np.argmax(scores))].batch
    assert evaluate_model(model, train, valid).mean()["ndcg@20"] == pytest.approx(max(scores))
    if result.stopped_early:
        assert len(scores) - 1 - int(np.argmax(scores)) == config.patience


def test_training_matrix_must_match_the_model(tiny_train: sp.csr_matrix) -> None:
    model = build_backbone(BackboneConfig(max_size=4), tiny_train, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="does not match"):
        train_bpr(model, tiny_train[:5], TrainConfig(max_batches=1), progress=False)


def test_the_clean_protocol_selects_on_validation_then_trains_the_tested_model_once(
    clustered_split: DatasetSplit,
) -> None:
    """A run under the clean protocol; given the batch count its selection found, the run trains
    exactly the same tested model without selecting again (the pipeline's full-size teacher)."""
    spec = RunSpec(
        dataset="generated",
        backbone=BackboneConfig(max_size=16),
        training=TrainConfig(
            batch_size=128, max_batches=60, eval_every=20, learning_rate=0.02, seed=3
        ),
    )
    assert spec.protocol is Protocol.CLEAN and Protocol.CLEAN.selects_on == "valid"
    sizes = SizeAssignment.equal(clustered_split.num_users, clustered_split.num_items, 8, 16)
    model, outcome, history = execute_run(spec, clustered_split, sizes, progress=False)
    assert set(outcome.stages) == {"select", "final"} and outcome.valid_metrics
    assert outcome.selected_batches == max(outcome.stages["select"]["best_batch"], 1)
    assert outcome.stages["final"]["batches_run"] == outcome.selected_batches
    assert {row["stage"] for row in history} == {"select"}
    # the selected model stored as every value type, float32 as selected: what a budget change
    # that only quantises the served model would keep
    assert set(outcome.valid_by_value_type) == set(VALUE_TYPES)
    assert outcome.valid_by_value_type["float32"] == pytest.approx(outcome.valid_metrics)
    assert outcome.valid_by_value_type["int4"] != outcome.valid_by_value_type["float32"]
    test_train, test = clustered_split.phase(Phase.TEST)
    assert evaluate_model(model, test_train, test).mean() == outcome.test_metrics
    again, known, _ = execute_run(
        spec, clustered_split, sizes, progress=False, selected_batches=outcome.selected_batches
    )
    assert set(known.stages) == {"final"} and known.valid_metrics == {}
    assert known.valid_by_value_type == {}  # nothing selected, nothing measured
    assert known.test_metrics == outcome.test_metrics
    _assert_same_weights(model.state_dict(), again.state_dict())


def test_a_run_started_from_its_teacher_starts_from_the_turned_and_cut_teacher(
    clustered_split: DatasetSplit,
) -> None:
    """With ``Start.TEACHER`` a phase's model starts as that phase's teacher turned to its
    principal axes and cut to the run's sizes: it ranks far better than a random start before
    any training. Without the phase's teacher, or with a backbone the turn does not keep,
    the run refuses."""
    training = TrainConfig(batch_size=128, max_batches=60, eval_every=0, learning_rate=0.02, seed=3)
    spec = RunSpec(dataset="generated", backbone=BackboneConfig(max_size=16), training=training)
    train, valid = clustered_split.phase(Phase.SEARCH)
    full = SizeAssignment.full(clustered_split.num_users, clustered_split.num_items, 16)
    teacher = starting_model(spec, train, full, None, Phase.SEARCH)
    train_bpr(teacher, train, training, progress=False)
    sizes = SizeAssignment.equal(clustered_split.num_users, clustered_split.num_items, 4, 16)
    warm_spec = dataclasses.replace(spec, start=Start.TEACHER)
    warm = starting_model(warm_spec, train, sizes, {Phase.SEARCH: teacher}, Phase.SEARCH)
    expected = teacher.tables()[0].weight @ principal_rotation(teacher.tables()[0].weight)
    torch.testing.assert_close(warm.tables()[0].weight[:, :4], expected[:, :4])
    assert not warm.tables()[0].weight[:, 4:].any()
    scratch = starting_model(spec, train, sizes, {Phase.SEARCH: teacher}, Phase.SEARCH)
    warm_ndcg = evaluate_model(warm, train, valid).mean()["ndcg@20"]
    assert warm_ndcg > 2 * evaluate_model(scratch, train, valid).mean()["ndcg@20"]
    assert warm_ndcg > 0.5 * evaluate_model(teacher, train, valid).mean()["ndcg@20"]
    with pytest.raises(ConfigError, match="no teacher was given for the test phase"):
        starting_model(warm_spec, train, sizes, {Phase.SEARCH: teacher}, Phase.TEST)
    with pytest.raises(ConfigError, match="LightGCN only"):
        RunSpec(
            dataset="generated",
            backbone=BackboneConfig(kind=BackboneKind.NGCF, max_size=16),
            training=training,
            start=Start.TEACHER,
        )


@pytest.mark.parametrize("kind", [BackboneKind.LIGHTGCN, BackboneKind.NCF])
def test_training_twice_with_two_threads_gives_the_same_weights(kind: BackboneKind) -> None:
    """The pipeline trains its full model with every thread: two runs must give the same
    model, so that runs on different executors can be compared stage by stage. Large enough
    for the row gathers' backward to split its work between the threads."""
    data = clustered_interactions(num_users=3000, num_items=400, seed=5)
    train = sp.csr_matrix(
        (np.ones(data.user_ids.size, dtype=np.float32), (data.user_ids, data.item_ids)),
        shape=(3000, 400),
    )
    config = TrainConfig(max_batches=4, batch_size=3000, eval_every=0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = []
        for _ in range(2):
            model = build_backbone(
                BackboneConfig.default_for(kind), train, torch.Generator().manual_seed(0)
            )
            train_bpr(model, train, config, progress=False)
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(before)
    _assert_same_weights(states[0], states[1])


class _StopError(Exception):
    """Stands for whatever stops a training: a stopped session, a lost worker."""


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    for name, weights in first.items():
        assert torch.equal(weights, second[name]), name


def _stopped_then_started_again(
    fresh: Callable[[], Backbone],
    split: DatasetSplit,
    config: TrainConfig,
    folder: Path,
    stop_at: int,
    damage: bool = False,
) -> tuple[Backbone, TrainResult, list[int]]:
    """Train a fresh model under ``training_checkpoints(folder)`` (a checkpoint after every
    batch), stop it at its evaluation of batch ``stop_at``, optionally overwrite its checkpoint
    with garbage, then train another fresh model with the same inputs. Returns that model, its
    result and every evaluated batch of both calls."""
    train, valid = split.phase(Phase.SEARCH)
    evaluated: list[int] = []

    def stop(record: EvaluationRecord) -> None:
        evaluated.append(record.batch)
        if record.batch == stop_at:
            raise _StopError

    with training_checkpoints(folder, every_seconds=0.0):
        with pytest.raises(_StopError):
            train_bpr(fresh(), train, config, valid, progress=False, on_evaluation=stop)
        (kept,) = folder.glob("train-*.pt")
        if damage:
            kept.write_bytes(b"not a checkpoint")
        model = fresh()
        result = train_bpr(
            model,
            train,
            config,
            valid,
            progress=False,
            on_evaluation=lambda record: evaluated.append(record.batch),
        )
    return model, result, evaluated


@pytest.mark.parametrize("kind", [BackboneKind.LIGHTGCN, BackboneKind.NGCF, BackboneKind.NCF])
def test_an_interrupted_training_resumes_from_its_checkpoint_to_the_same_weights(
    clustered_split: DatasetSplit, tmp_path: Path, kind: BackboneKind
) -> None:
    """Under ``training_checkpoints``, a training stopped at its evaluation of batch 40 and
    started again resumes at batch 40 (its evaluations of 10-30 are not run again) and returns
    what the uninterrupted training returns: the weights bit for bit (NGCF's dropout draws
    included), the history and the best batch. The checkpoint is removed when it returns."""
    train, valid = clustered_split.phase(Phase.SEARCH)
    config = TrainConfig(batch_size=128, max_batches=60, eval_every=10, learning_rate=0.02)

    def fresh() -> Backbone:
        backbone = BackboneConfig.default_for(kind, max_size=16)
        return build_backbone(backbone, train, torch.Generator().manual_seed(0))

    straight = fresh()
    expected = train_bpr(straight, train, config, held_out=valid, progress=False)
    resumed_model, resumed, evaluated = _stopped_then_started_again(
        fresh, clustered_split, config, tmp_path, stop_at=40
    )
    after = [record.batch for record in expected.history if record.batch >= 40]
    assert after[0] == 40 and evaluated == [10, 20, 30, 40, *after]
    assert list(tmp_path.iterdir()) == []  # removed when the training returned
    _assert_same_weights(straight.state_dict(), resumed_model.state_dict())
    assert resumed.best_batch == expected.best_batch
    assert [(r.batch, r.loss, r.metrics) for r in resumed.history] == [
        (r.batch, r.loss, r.metrics) for r in expected.history
    ]


def test_a_damaged_checkpoint_is_ignored_and_the_training_starts_afresh(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    config = TrainConfig(batch_size=128, max_batches=30, eval_every=10, learning_rate=0.02)

    def fresh() -> Backbone:
        return build_backbone(BackboneConfig(max_size=16), train, torch.Generator().manual_seed(0))

    straight = fresh()
    train_bpr(straight, train, config, valid, progress=False)
    again, _, evaluated = _stopped_then_started_again(
        fresh, clustered_split, config, tmp_path, stop_at=20, damage=True
    )
    assert evaluated == [10, 20, 10, 20, 30]
    _assert_same_weights(straight.state_dict(), again.state_dict())
