"""Distillation from a trained teacher: candidate lists, the loss, and its effect on training."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.training import TrainConfig, train_bpr
from ciess_core.training.distillation import DistillationConfig, Distiller

SCHEDULE = TrainConfig(
    batch_size=256, max_batches=150, learning_rate=0.05, lr_decay=1.0, min_learning_rate=0.05
)


def _model(kind: BackboneKind, train: sp.csr_matrix, size: int, seed: int) -> Backbone:
    model = build_backbone(
        BackboneConfig.default_for(kind, max_size=16), train, torch.Generator().manual_seed(seed)
    )
    model.set_embedding_sizes(torch.full((model.num_entities,), size, dtype=torch.int64))
    return model


@pytest.fixture(scope="module")
def teacher(clustered_split: DatasetSplit) -> Backbone:
    train, _ = clustered_split.phase(Phase.SEARCH)
    model = _model(BackboneKind.LIGHTGCN, train, 16, seed=1)
    train_bpr(model, train, SCHEDULE, progress=False)
    return model


def test_top_lists_are_the_teachers_best_unseen_items(
    clustered_split: DatasetSplit, teacher: Backbone
) -> None:
    train, _ = clustered_split.phase(Phase.SEARCH)
    distiller = Distiller(teacher, train, DistillationConfig(top_k=10))
    with torch.no_grad():
        scores = teacher.score_all_items(teacher.represent(), torch.arange(teacher.num_users))
    scores[torch.from_numpy(train.toarray()).bool()] = -torch.inf
    expected = scores.topk(10, dim=1)
    assert distiller.top_items.shape == (teacher.num_users, 10)
    picked = scores.gather(1, distiller.top_items)
    torch.testing.assert_close(picked, expected.values)
    seen = train.toarray()
    rows = np.repeat(np.arange(teacher.num_users), 10)
    assert not seen[rows, distiller.top_items.numpy().ravel()].any()


def test_a_student_equal_to_its_teacher_has_zero_loss(
    clustered_split: DatasetSplit, teacher: Backbone
) -> None:
    train, _ = clustered_split.phase(Phase.SEARCH)
    distiller = Distiller(
        teacher, train, DistillationConfig(top_k=10, temperature=0.5, users_per_batch=50)
    )
    users = torch.arange(teacher.num_users)
    rng = np.random.default_rng(0)
    same = distiller.loss(teacher, distiller.representation, users, rng)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    stranger = _model(BackboneKind.LIGHTGCN, train, 16, seed=9)
    other = distiller.loss(stranger, stranger.represent(), users, rng)
    assert float(other.detach()) > 1e-3


@pytest.mark.parametrize("kind", list(BackboneKind))
def test_distillation_pulls_a_small_student_towards_the_teacher(
    clustered_split: DatasetSplit, teacher: Backbone, kind: BackboneKind
) -> None:
    """A size-2 student trained with the teacher's lists agrees with the teacher's top-5 more
    often than the same student trained without them; the teacher's weights do not move."""
    train, _ = clustered_split.phase(Phase.SEARCH)
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    distiller = Distiller(teacher, train, DistillationConfig(weight=5.0, top_k=10))
    overlaps = []
    for helper in (None, distiller):
        student = _model(kind, train, 2, seed=3)
        train_bpr(student, train, SCHEDULE, progress=False, distiller=helper)
        overlaps.append(_top_overlap(student, teacher, train, k=5))
    assert overlaps[1] > overlaps[0]
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[name])


def _top_overlap(student: Backbone, teacher: Backbone, train: sp.csr_matrix, k: int) -> float:
    users = torch.arange(teacher.num_users)
    seen = torch.from_numpy(train.toarray()).bool()
    lists = []
    with torch.no_grad():
        for model in (student, teacher):
            model.eval()
            scores = model.score_all_items(model.represent(), users)
            scores[seen] = -torch.inf
            lists.append(scores.topk(k, dim=1).indices.numpy())
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(*lists, strict=True)]))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight", 0.0, "weight"),
        ("temperature", -1.0, "temperature"),
        ("top_k", 0, "top_k"),
        ("sampled_top", 0, "sampled_top"),
        ("sampled_random", -1, "sampled_random"),
        ("users_per_batch", -1, "users_per_batch"),
    ],
)
def test_bad_distillation_config_is_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillationConfig(**{field: value})  # type: ignore[arg-type]


def test_teacher_must_match_the_training_matrix(
    clustered_split: DatasetSplit, teacher: Backbone
) -> None:
    train, _ = clustered_split.phase(Phase.SEARCH)
    with pytest.raises(ConfigError, match="shape"):
        Distiller(teacher, train[:10], DistillationConfig(top_k=5))
    capped = Distiller(teacher, train, DistillationConfig(top_k=teacher.num_items))
    fewest_unseen = teacher.num_items - int(np.diff(train.indptr).max())
    assert capped.config.top_k == fewest_unseen
    assert capped.top_items.shape == (teacher.num_users, fewest_unseen)
    assert not train.toarray()[np.arange(teacher.num_users)[:, None], capped.top_items].any()
