"""Tests of the full-ranking evaluator: hand-computed metrics, masking, chunking, quality signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ciess_core.errors import ConfigError
from ciess_core.evaluation import (
    DEFAULT_KS,
    RankingResult,
    ScoreFunction,
    evaluate_full_ranking,
    ranking_metrics_from_hits,
)


def dense_scorer(scores: np.ndarray) -> ScoreFunction:
    """Scorer over a fixed ``(num_users, num_items)`` score table."""
    table = torch.as_tensor(scores, dtype=torch.float32)
    return lambda user_ids: table[user_ids]  # advanced indexing returns a fresh tensor


def csr(rows: list[list[int]], num_items: int) -> sp.csr_matrix:
    """Binary CSR matrix whose row ``u`` holds the items ``rows[u]``."""
    indptr = np.cumsum([0] + [len(items) for items in rows])
    indices = np.array([item for items in rows for item in items], dtype=np.int64)
    data = np.ones(indices.size, dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), num_items))


def reference_metrics(
    scores: np.ndarray, exclude: sp.csr_matrix, held_out: sp.csr_matrix, ks: tuple[int, ...]
) -> dict[str, list[float]]:
    """Per-user loop straight from the definitions, for users with a held-out item."""
    metrics: dict[str, list[float]] = {f"{m}@{k}": [] for k in ks for m in ("recall", "ndcg")}
    for user in range(scores.shape[0]):
        positives = set(held_out[user].indices.tolist())
        if not positives:
            continue
        excluded = set(exclude[user].indices.tolist())
        ranking = [i for i in np.argsort(-scores[user], kind="stable") if i not in excluded]
        for k in ks:
            hits = [item in positives for item in ranking[:k]]
            dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
            ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(positives), k)))
            metrics[f"recall@{k}"].append(sum(hits) / len(positives))
            metrics[f"ndcg@{k}"].append(dcg / ideal)
    return metrics


def test_hand_computed_recall_and_ndcg() -> None:
    # Ranking by score: [5, 0, 2, 1, 3, 4]; positives {2, 5} sit at ranks 1 and 3.
    scores = np.array([[5.0, 3.0, 4.0, 2.0, 1.0, 6.0]])
    result = evaluate_full_ranking(
        dense_scorer(scores), csr([[]], 6), csr([[2, 5]], 6), ks=(1, 3, 5)
    )
    means = result.mean()
    assert means["recall@1"] == pytest.approx(0.5)
    assert means["ndcg@1"] == pytest.approx(1.0)
    assert means["recall@3"] == pytest.approx(1.0)
    assert means["ndcg@3"] == pytest.approx(
        (1 / math.log2(2) + 1 / math.log2(4)) / (1 / math.log2(2) + 1 / math.log2(3))
    )
    assert means["recall@5"] == pytest.approx(1.0)
    assert means["ndcg@5"] == pytest.approx(means["ndcg@3"])


def test_metrics_from_hits_by_hand() -> None:
    hits = np.array(
        [
            [False, True, False, True],  # 2 positives, hits at ranks 2 and 4
            [True, False, False, False],  # 3 positives, hit at rank 1
        ]
    )
    metrics = ranking_metrics_from_hits(hits, np.array([2, 3]), ks=(2, 4))
    assert list(metrics) == ["recall@2", "ndcg@2", "recall@4", "ndcg@4"]
    np.testing.assert_allclose(metrics["recall@2"], [1 / 2, 1 / 3])
    np.testing.assert_allclose(metrics["recall@4"], [2 / 2, 1 / 3])
    np.testing.assert_allclose(
        metrics["ndcg@2"],
        [
            (1 / math.log2(3)) / (1 / math.log2(2) + 1 / math.log2(3)),
            1.0 / (1 / math.log2(2) + 1 / math.log2(3)),
        ],
    )
    np.testing.assert_allclose(
        metrics["ndcg@4"],
        [
            (1 / math.log2(3) + 1 / math.log2(5)) / (1 / math.log2(2) + 1 / math.log2(3)),
            1.0 / (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)),
        ],
    )


def test_metrics_from_hits_accepts_tensors_and_short_lists() -> None:
    hits = torch.tensor([[True, False]])
    metrics = ranking_metrics_from_hits(hits, torch.tensor([1]), ks=(1, 5))
    # A list shorter than k reads the missing ranks as misses.
    assert metrics["recall@5"][0] == pytest.approx(1.0)
    assert metrics["ndcg@5"][0] == pytest.approx(1.0)
    assert metrics["recall@1"].dtype == np.float64


def test_ideal_dcg_uses_min_of_positives_and_k() -> None:
    # 5 positives, all 2 ranked items hit: ideal DCG is over 2 positions, so NDCG@2 = 1.
    metrics = ranking_metrics_from_hits(np.ones((1, 2), dtype=bool), np.array([5]), ks=(2,))
    assert metrics["ndcg@2"][0] == pytest.approx(1.0)
    assert metrics["recall@2"][0] == pytest.approx(2 / 5)


def test_excluded_items_never_ranked() -> None:
    # Items 0-2 are training items with the highest scores; they must not take the top ranks.
    scores = np.array([[9.0, 8.0, 7.0, 1.0, 2.0]])
    result = evaluate_full_ranking(
        dense_scorer(scores), csr([[0, 1, 2]], 5), csr([[3]], 5), ks=(1, 2)
    )
    assert result.mean()["recall@1"] == 0.0  # item 4 outranks item 3 once 0-2 are gone
    assert result.mean()["recall@2"] == pytest.approx(1.0)
    assert result.mean()["ndcg@2"] == pytest.approx(1 / math.log2(3))


def test_excluded_item_is_never_a_hit_even_when_held_out() -> None:
    # The only positive is also excluded; with k = num_items it fills a -inf slot, not a hit.
    scores = np.array([[9.0, 1.0, 2.0]])
    result = evaluate_full_ranking(dense_scorer(scores), csr([[0]], 3), csr([[0]], 3), ks=(3,))
    assert result.mean()["recall@3"] == 0.0
    assert result.mean()["ndcg@3"] == 0.0


def test_users_without_held_out_items_are_skipped() -> None:
    scores = np.arange(12, dtype=np.float64).reshape(3, 4)
    held_out = csr([[1], [], [3]], 4)
    result = evaluate_full_ranking(dense_scorer(scores), csr([[], [], []], 4), held_out, ks=(1,))
    np.testing.assert_array_equal(result.user_ids, [0, 2])
    assert result.num_users == 3
    assert result.per_user["recall@1"].shape == (2,)
    # Highest score is always item 3: a hit for user 2, a miss for user 0.
    np.testing.assert_array_equal(result.per_user["recall@1"], [0.0, 1.0])
    assert np.isnan(result.user_quality()[1])


def random_problem(
    seed: int, num_users: int = 40, num_items: int = 30
) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((num_users, num_items))
    exclude = sp.csr_matrix(rng.random((num_users, num_items)) < 0.2, dtype=np.float32)
    held_out = sp.csr_matrix(rng.random((num_users, num_items)) < 0.15, dtype=np.float32)
    held_out = held_out - held_out.multiply(exclude)
    has_held_out = sp.diags((np.arange(num_users) >= 3).astype(np.float32))  # users 0-2: none
    held_out = sp.csr_matrix(has_held_out @ held_out)
    held_out.eliminate_zeros()
    return scores, exclude, held_out


def test_matches_reference_loop() -> None:
    scores, exclude, held_out = random_problem(seed=0)
    ks = (1, 5, 10, 20)
    result = evaluate_full_ranking(dense_scorer(scores), exclude, held_out, ks=ks)
    expected = reference_metrics(scores, exclude, held_out, ks)
    assert result.user_ids[0] == 3 and result.num_evaluated == len(expected["recall@1"]) > 30
    assert list(result.per_user) == list(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(result.per_user[name], values, err_msg=name)


def test_chunking_does_not_change_the_result() -> None:
    scores, exclude, held_out = random_problem(seed=1)
    scorer = dense_scorer(scores)
    one = evaluate_full_ranking(scorer, exclude, held_out, users_per_chunk=1)
    many = evaluate_full_ranking(scorer, exclude, held_out, users_per_chunk=1000, progress=True)
    some = evaluate_full_ranking(scorer, exclude, held_out, users_per_chunk=7)
    np.testing.assert_array_equal(one.user_ids, many.user_ids)
    for name in one.per_user:
        np.testing.assert_array_equal(one.per_user[name], many.per_user[name])
        np.testing.assert_array_equal(one.per_user[name], some.per_user[name])


def test_perfect_scorer() -> None:
    _, exclude, held_out = random_problem(seed=2)
    perfect = held_out.toarray() + np.random.default_rng(3).random(held_out.shape) * 0.1
    result = evaluate_full_ranking(dense_scorer(perfect), exclude, held_out, ks=DEFAULT_KS)
    num_positives = np.diff(held_out.indptr)[result.user_ids]
    for k in DEFAULT_KS:
        np.testing.assert_allclose(result.per_user[f"ndcg@{k}"], 1.0)
        np.testing.assert_allclose(
            result.per_user[f"recall@{k}"], np.minimum(num_positives, k) / num_positives
        )
        assert np.all(result.per_user[f"recall@{k}"][num_positives <= k] == 1.0)


def test_user_and_item_quality_by_hand() -> None:
    result = RankingResult(
        user_ids=np.array([0, 2]),
        per_user={"recall@1": np.array([1.0, 0.0]), "ndcg@1": np.array([0.5, 0.2])},
        num_users=3,
    )
    np.testing.assert_allclose(result.user_quality(), [0.75, np.nan, 0.1])
    assert result.mean() == pytest.approx({"recall@1": 0.5, "ndcg@1": 0.35})
    # item 0: user 0; item 1: users 0, 1 (not evaluated), 2; item 2: user 1 only; item 3: nobody.
    train = csr([[0, 1], [1, 2], [1]], 4)
    np.testing.assert_allclose(result.item_quality(train), [0.75, (0.75 + 0.1) / 2, 0.0, 0.0])


def test_item_quality_ignores_interaction_weights() -> None:
    result = RankingResult(
        user_ids=np.array([0, 1]), per_user={"recall@1": np.array([1.0, 0.0])}, num_users=2
    )
    train = sp.csr_matrix(np.array([[5.0], [1.0]]))
    np.testing.assert_allclose(result.item_quality(train), [0.5])


def test_rejects_bad_inputs() -> None:
    scorer = dense_scorer(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match=r"\(2, 3\).*\(2, 4\)"):
        evaluate_full_ranking(scorer, csr([[], []], 3), csr([[0], [1]], 4))
    with pytest.raises(ConfigError, match="ks"):
        evaluate_full_ranking(scorer, csr([[], []], 3), csr([[0], [1]], 3), ks=(0, 5))
    with pytest.raises(ConfigError, match="ks"):
        evaluate_full_ranking(scorer, csr([[], []], 3), csr([[0], [1]], 3), ks=())
    with pytest.raises(ConfigError, match="users_per_chunk"):
        evaluate_full_ranking(scorer, csr([[], []], 3), csr([[0], [1]], 3), users_per_chunk=0)
    with pytest.raises(ConfigError, match=r"\(2, 4\).*\(2, 3\)"):
        evaluate_full_ranking(dense_scorer(np.zeros((2, 4))), csr([[], []], 3), csr([[0], [1]], 3))
    with pytest.raises(ConfigError, match="num_positives"):
        ranking_metrics_from_hits(np.zeros((1, 2), dtype=bool), np.array([0]), ks=(1,))
    with pytest.raises(ConfigError, match="users"):
        RankingResult(
            user_ids=np.array([0]), per_user={"recall@1": np.array([1.0])}, num_users=1
        ).item_quality(csr([[0], [0]], 1))


def test_no_evaluated_users() -> None:
    result = evaluate_full_ranking(
        dense_scorer(np.zeros((2, 3))), csr([[], []], 3), csr([[], []], 3)
    )
    assert result.user_ids.shape == (0,)
    assert all(math.isnan(value) for value in result.mean().values())
    assert np.isnan(result.user_quality()).all()


def test_item_own_quality_by_hand() -> None:
    # 3 users, 5 items, no exclusions. Scores rank items (best first):
    #   user 0: 4, 3, 2, 1, 0   held out {3, 0}  -> item 3 at rank 1, item 0 at rank 4
    #   user 1: 0, 1, 2, 3, 4   held out {0}     -> item 0 at rank 0
    #   user 2: nothing held out (not evaluated)
    scores = np.array(
        [[0.0, 1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    held_out = csr([[3, 0], [0], []], 5)
    result = evaluate_full_ranking(dense_scorer(scores), csr([[], [], []], 5), held_out, ks=(1, 2))

    def gain(rank: int) -> float:  # mean over k in (1, 2) of [rank < k] and [rank < k]/log2(r+2)
        return sum((rank < k) * (1 + 1 / math.log2(rank + 2)) for k in (1, 2)) / 4

    # item 0: pairs (0, rank 4 -> 0) and (1, rank 0); item 3: (0, rank 1); others: no pairs.
    expected = [(gain(4) + gain(0)) / 2, 0.0, 0.0, gain(1), 0.0]
    np.testing.assert_allclose(result.item_own_quality(held_out, ks=(1, 2)), expected)
    assert expected[0] == pytest.approx(0.5) and expected[3] == pytest.approx(
        0.5 * 0.5 * (1 + 1 / math.log2(3))
    )
    with pytest.raises(ConfigError, match="exceed"):
        result.item_own_quality(held_out, ks=(1, 6))
    bare = RankingResult(
        user_ids=np.array([0]), per_user={"recall@1": np.array([1.0])}, num_users=3
    )
    with pytest.raises(ConfigError, match="kept no ranked lists"):
        bare.item_own_quality(held_out)


def test_item_own_quality_falls_when_the_item_is_ranked_lower() -> None:
    held_out = csr([[1], [1]], 3)
    high = np.array([[0.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    low = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    exclude = csr([[], []], 3)
    own_high = evaluate_full_ranking(dense_scorer(high), exclude, held_out, ks=(1, 2))
    own_low = evaluate_full_ranking(dense_scorer(low), exclude, held_out, ks=(1, 2))
    assert (
        own_high.item_own_quality(held_out, (1, 2))[1]
        > own_low.item_own_quality(held_out, (1, 2))[1]
        > 0
    )
