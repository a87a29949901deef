"""The backbone contract, run against every backbone (one shared test, each model a parameter)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone, ncf
from ciess_core.models.base import Representation
from ciess_core.recipes import resolve_recipe
from ciess_core.sizes import SizeAssignment
from ciess_core.training import TrainConfig, evaluate_model, train_bpr

KINDS = list(BackboneKind)


def make_model(
    kind: BackboneKind, train: sp.csr_matrix, seed: int = 0, **overrides: object
) -> Backbone:
    config = BackboneConfig.default_for(kind, **{"max_size": 16, **overrides})
    return build_backbone(config, train, torch.Generator().manual_seed(seed))


def every_pair_score(model: Backbone, representation: Representation) -> torch.Tensor:
    """(users, items) scores, each (user, item) pair scored on its own by ``score_pairs``."""
    users = torch.arange(model.num_users)
    return model.score_pairs(
        representation,
        users.repeat_interleave(model.num_items),
        torch.arange(model.num_items).repeat(model.num_users),
    ).view(model.num_users, model.num_items)


@pytest.fixture(params=KINDS, ids=lambda kind: kind.value)
def kind(request: pytest.FixtureRequest) -> BackboneKind:
    return request.param


def test_scores_of_pairs_match_scores_of_all_items(
    kind: BackboneKind, tiny_train: sp.csr_matrix
) -> None:
    model = make_model(kind, tiny_train).eval()
    model.set_embedding_sizes(
        torch.randint(1, 17, (model.num_entities,), generator=torch.Generator().manual_seed(1))
    )
    with torch.no_grad():
        representation = model.represent()
        users = torch.arange(model.num_users)
        everything = model.score_all_items(representation, users)
        pairs = every_pair_score(model, representation)
    assert everything.shape == (12, 9)
    torch.testing.assert_close(everything, pairs, rtol=1e-5, atol=1e-6)
    lists = torch.randint(0, model.num_items, (model.num_users, 5), generator=torch.Generator())
    with torch.no_grad():
        candidates = model.score_candidates(representation, users, lists)
    torch.testing.assert_close(candidates, everything.gather(1, lists), rtol=1e-5, atol=1e-6)


def test_ncf_scores_all_items_block_by_block(
    tiny_train: sp.csr_matrix, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of a few users (the cap lowered to 2 users' activations) give the scores of one
    block, and each pair's score."""
    model = make_model(BackboneKind.NCF, tiny_train).eval()
    users = torch.arange(model.num_users)
    with torch.no_grad():
        representation = model.represent()
        whole = model.score_all_items(representation, users)
        first_width = representation[3].shape[1]
        monkeypatch.setattr(ncf, "_BLOCK_ELEMENTS_CPU", 2 * model.num_items * first_width)
        blocked = model.score_all_items(representation, users)
        pairs = every_pair_score(model, representation)
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(blocked, pairs, rtol=1e-5, atol=1e-6)


def test_truncated_computation_equals_zero_padded_full_width(
    kind: BackboneKind, tiny_train: sp.csr_matrix
) -> None:
    """Computing at the widest size in use gives the scores of the masked full-width table."""
    small = make_model(kind, tiny_train).eval()
    small.set_embedding_sizes(torch.full((small.num_entities,), 5))
    wide = make_model(kind, tiny_train).eval()
    wide.load_state_dict(small.state_dict())
    sizes = torch.full((wide.num_entities,), 5)
    sizes[0] = 16  # one wide entity forces full-width computation; give it the same values
    wide.set_embedding_sizes(sizes, clear_truncated=False)
    with torch.no_grad():
        for table in wide.tables():
            table.weight[0, 5:] = 0.0
        torch.testing.assert_close(
            small.score_all_items(small.represent(), torch.arange(12)),
            wide.score_all_items(wide.represent(), torch.arange(12)),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("dataset", ["ml-1m", "yelp2018"])
def test_recommended_weight_decay_is_the_shipped_recipes(kind: BackboneKind, dataset: str) -> None:
    recipe = resolve_recipe(dataset, kind.value)
    assert BackboneConfig.default_for(kind).weight_decay == recipe["weight_decay"]


def test_sizes_and_sparsity_accounting(kind: BackboneKind, tiny_train: sp.csr_matrix) -> None:
    model = make_model(kind, tiny_train)
    assert model.sparsity() == 0.0
    sizes = torch.full((model.num_entities,), 4)
    model.set_embedding_sizes(sizes)
    assert torch.equal(model.embedding_sizes(), sizes)
    assert model.sparsity() == pytest.approx(1 - 4 / 16)
    assert model.embedding_parameter_count() == len(model.tables()) * 21 * 4


def test_a_size_assignment_goes_in_and_comes_back(
    kind: BackboneKind, tiny_train: sp.csr_matrix
) -> None:
    model = make_model(kind, tiny_train)  # 12 users, 9 items
    assignment = SizeAssignment(np.arange(1, 13), np.full(9, 16), 16)
    model.set_size_assignment(assignment)
    assert model.size_assignment() == assignment
    assert model.embedding_parameter_count() == len(model.tables()) * assignment.parameters
    assert model.sparsity() == pytest.approx(assignment.sparsity)
    with pytest.raises(ConfigError, match="13 users, 8 items and max size 16 does not fit"):
        model.set_size_assignment(SizeAssignment.equal(13, 8, 4, 16))
    with pytest.raises(ConfigError, match="max size 32 does not fit"):
        model.set_size_assignment(SizeAssignment.equal(12, 9, 4, 32))


def test_invalid_sizes_are_rejected(kind: BackboneKind, tiny_train: sp.csr_matrix) -> None:
    model = make_model(kind, tiny_train)
    with pytest.raises(ConfigError, match=r"\[1, 16\]"):
        model.set_embedding_sizes(torch.full((model.num_entities,), 17))
    with pytest.raises(ConfigError, match="21 entries"):
        model.set_embedding_sizes(torch.full((5,), 3))
    with pytest.raises(ConfigError, match="integers"):
        model.set_embedding_sizes(torch.full((model.num_entities,), 3.0))


def test_masked_dimensions_stay_exactly_zero_through_training(
    kind: BackboneKind, tiny_train: sp.csr_matrix
) -> None:
    model = make_model(kind, tiny_train)
    sizes = torch.randint(1, 17, (model.num_entities,), generator=torch.Generator().manual_seed(2))
    model.set_embedding_sizes(sizes)
    before = [table.weight.detach().clone() for table in model.tables()]
    train_bpr(
        model, tiny_train, TrainConfig(batch_size=64, max_batches=15, eval_every=0), progress=False
    )
    outside = torch.arange(16).unsqueeze(0) >= sizes.unsqueeze(1)
    for table, initial in zip(model.tables(), before, strict=True):
        assert torch.all(table.weight[outside] == 0.0)
        assert not torch.equal(table.weight[~outside], initial[~outside])  # it did train


def test_masked_dimensions_get_zero_gradient(kind: BackboneKind, tiny_train: sp.csr_matrix) -> None:
    model = make_model(kind, tiny_train)
    sizes = torch.randint(1, 17, (model.num_entities,), generator=torch.Generator().manual_seed(4))
    sizes[0] = 16
    model.set_embedding_sizes(sizes, clear_truncated=False)
    representation = model.represent()
    loss = model.score_pairs(representation, torch.arange(12), torch.arange(12) % 9).sum()
    loss = loss + model.regularization(torch.arange(3), torch.arange(3), torch.arange(3) + 1)
    loss.backward()
    outside = torch.arange(16).unsqueeze(0) >= sizes.unsqueeze(1)
    for table in model.tables():
        assert table.weight.grad is not None
        assert torch.all(table.weight.grad[outside] == 0.0)
        assert torch.any(table.weight.grad[~outside] != 0.0)


def test_same_seed_same_model(kind: BackboneKind, tiny_train: sp.csr_matrix) -> None:
    first, second = make_model(kind, tiny_train, seed=5), make_model(kind, tiny_train, seed=5)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_short_training_beats_random_ranking(
    kind: BackboneKind, clustered_split: DatasetSplit
) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    model = make_model(kind, train, max_size=32)
    config = TrainConfig(
        batch_size=256,
        max_batches=150,
        learning_rate=0.01,
        min_learning_rate=0.001,
        eval_every=50,
        patience=3,
        seed=1,
    )
    result = train_bpr(model, train, config, held_out=valid, progress=False)
    recall = evaluate_model(model, train, valid).mean()["recall@20"]
    # Random ranking: 20 of ~73 unseen items, so recall@20 ≈ 0.27 on average.
    rng = np.random.default_rng(0)
    random_recall = evaluate_random(train, valid, rng)
    assert result.best_metrics["recall@20"] == pytest.approx(recall)
    assert recall > random_recall + 0.25, (recall, random_recall)


def evaluate_random(
    train: sp.csr_matrix, held_out: sp.csr_matrix, rng: np.random.Generator
) -> float:
    from ciess_core.evaluation import evaluate_full_ranking

    scores = torch.from_numpy(rng.random(train.shape).astype(np.float32))
    return evaluate_full_ranking(lambda users: scores[users], train, held_out).mean()["recall@20"]


def test_only_lightgcn_turns_to_principal_axes_and_keeps_every_score(
    kind: BackboneKind, tiny_train: sp.csr_matrix
) -> None:
    """The turn keeps LightGCN's scores and orders its columns by energy; a backbone whose
    scores a turn would change, or a model already cut, refuses."""
    model = make_model(kind, tiny_train)
    if kind is not BackboneKind.LIGHTGCN:
        with pytest.raises(ConfigError, match="scores change"):
            model.turn_to_principal_axes()
        return
    with torch.no_grad():  # a table with unequal column energies, as training leaves it
        model.tables()[0].weight.mul_(torch.linspace(0.2, 3.0, model.max_size))
        before = model.score_all_items(model.represent(), torch.arange(model.num_users))
        model.turn_to_principal_axes()
        after = model.score_all_items(model.represent(), torch.arange(model.num_users))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    energy = model.tables()[0].weight.detach().pow(2).sum(dim=0)
    assert torch.all(energy[:-1] >= energy[1:] * (1 - 1e-5))
    sizes = torch.full((model.num_entities,), model.max_size)
    sizes[0] = 3
    model.set_embedding_sizes(sizes)
    with pytest.raises(ConfigError, match="full size"):
        model.turn_to_principal_axes()
