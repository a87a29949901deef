"""The artifact scorer against the PyTorch backbones: every user's scores and top-20."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ciess_core.artifact import scorer as artifact_scorer
from ciess_core.artifact.export import ExportOptions, export_model
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions, load_scorer
from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.models import Backbone, BackboneConfig, BackboneKind, build_backbone
from ciess_core.training import TrainConfig, train_bpr

MAX_SIZE = 32
TOP_K = 20


def build(
    kind: BackboneKind,
    train: sp.csr_matrix,
    sizes: np.ndarray,
    mlp_layers: tuple[int, ...] = (16, 8),
) -> Backbone:
    """An untrained backbone with ``sizes``; N(0, 0.01) tables scaled to give O(1) scores."""
    config = BackboneConfig.default_for(kind, max_size=MAX_SIZE, mlp_layers=mlp_layers)
    model = build_backbone(config, train, torch.Generator().manual_seed(0))
    if kind is not BackboneKind.NGCF:
        with torch.no_grad():
            for table in model.tables():
                table.weight.mul_(100.0)
    model.set_embedding_sizes(torch.from_numpy(sizes))
    return model.eval()


def torch_top_k(model: Backbone, seen: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every user's scores (U, I) and top-k (U, k) from the model, seen items excluded."""
    with torch.no_grad():
        scores = model.score_all_items(model.represent(), torch.arange(model.num_users))
    rows = np.repeat(np.arange(model.num_users), np.diff(seen.indptr))
    masked = scores.clone()
    masked[torch.from_numpy(rows), torch.from_numpy(seen.indices.astype(np.int64))] = -torch.inf
    top = torch.topk(masked, k, dim=1, sorted=True).indices
    return scores.numpy(), top.numpy()


def export(model: Backbone, split: DatasetSplit, out: Path, **options: object) -> Path:
    train, _ = split.phase(Phase.TEST)
    return export_model(
        model,
        train,
        split.external_user_ids,
        split.external_item_ids,
        out,
        options=ExportOptions(**options),  # type: ignore[arg-type]
    )


@pytest.fixture(params=list(BackboneKind), ids=lambda kind: kind.value)
def kind(request: pytest.FixtureRequest) -> BackboneKind:
    return request.param


def _sizes(split: DatasetSplit, seed: int = 1) -> np.ndarray:
    count = split.num_users + split.num_items
    return np.random.default_rng(seed).integers(1, MAX_SIZE + 1, count)


@pytest.mark.parametrize("sizes_name", ["random", "equal", "full"])
def test_parity_with_the_torch_model_for_every_user(
    kind: BackboneKind, sizes_name: str, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    count = clustered_split.num_users + clustered_split.num_items
    sizes = {
        "random": _sizes(clustered_split),
        "equal": np.full(count, 3),
        "full": np.full(count, MAX_SIZE),
    }[sizes_name]
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(kind, train, sizes)
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a"), ScorerOptions(threads=1))
    expected_scores, expected_top = torch_top_k(model, scorer.seen, TOP_K)
    users = np.arange(model.num_users)
    scores = scorer.score_all(users)
    assert np.abs(expected_scores).max() > 0.1  # the comparison is not between tiny numbers
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    top_items, top_scores = scorer.recommend(users, TOP_K)
    np.testing.assert_array_equal(top_items, expected_top)
    np.testing.assert_allclose(
        top_scores, np.take_along_axis(expected_scores, expected_top, axis=1), rtol=1e-5, atol=1e-5
    )


def test_parity_after_training(clustered_split: DatasetSplit, tmp_path: Path) -> None:
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(BackboneKind.LIGHTGCN, train, _sizes(clustered_split)).train()
    config = TrainConfig(batch_size=64, max_batches=40, eval_every=0, learning_rate=0.05)
    train_bpr(model, train, config, progress=False)
    model.eval()
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a"), ScorerOptions(threads=1))
    expected_scores, expected_top = torch_top_k(model, scorer.seen, TOP_K)
    np.testing.assert_allclose(
        scorer.score_all(np.arange(120)), expected_scores, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(scorer.recommend(np.arange(120), TOP_K)[0], expected_top)


def test_one_and_many_buckets_give_the_model_s_scores(
    kind: BackboneKind, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(kind, train, _sizes(clustered_split, seed=5))
    artifact = load_artifact(export(model, clustered_split, tmp_path / "a", verify_users=0))
    users = np.arange(artifact.manifest.num_users)
    one = ArtifactScorer(artifact, ScorerOptions(max_buckets=1, threads=1))
    many = ArtifactScorer(artifact, ScorerOptions(max_buckets=4, min_bucket_saving=0, threads=1))
    assert len(one.bucket_widths) == 1
    if kind is not BackboneKind.LIGHTGCN:
        # LightGCN's propagation makes every vector as wide as its widest 3-hop neighbour, which
        # in this small connected graph is the widest entity; NGCF keeps the ego part ragged.
        assert len(many.bucket_widths) > 1
    expected_scores, expected_top = torch_top_k(model, artifact.seen, TOP_K)
    for scorer in (one, many):
        np.testing.assert_allclose(scorer.score_all(users), expected_scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(scorer.recommend(users, TOP_K)[0], expected_top)
    assert many.index.layout.padded_elements <= one.index.layout.padded_elements


def test_ncf_scores_users_in_blocks(
    clustered_split: DatasetSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tower graph run over blocks of a few users (the cap lowered to three users'
    activations) gives the torch model's scores and top-k."""
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(BackboneKind.NCF, train, _sizes(clustered_split))
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a"), ScorerOptions(threads=1))
    first_width = scorer.ncf_parts[1].shape[1] if scorer.ncf_parts is not None else 0
    monkeypatch.setattr(artifact_scorer, "_MAX_BLOCK_ELEMENTS", 3 * scorer.num_items * first_width)
    expected_scores, expected_top = torch_top_k(model, scorer.seen, TOP_K)
    users = np.arange(model.num_users)
    np.testing.assert_allclose(scorer.score_all(users), expected_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scorer.recommend(users, TOP_K)[0], expected_top)


@pytest.mark.parametrize("mlp_layers", [(8,), (16, 8, 4)], ids=["one layer", "three layers"])
def test_ncf_tower_of_any_depth(
    mlp_layers: tuple[int, ...], clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """A tower with no layer after the first (its prediction weights alone) and a deeper one
    score as the torch model does."""
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(BackboneKind.NCF, train, _sizes(clustered_split), mlp_layers)
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a"), ScorerOptions(threads=1))
    expected_scores, expected_top = torch_top_k(model, scorer.seen, TOP_K)
    users = np.arange(model.num_users)
    np.testing.assert_allclose(scorer.score_all(users), expected_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scorer.recommend(users, TOP_K)[0], expected_top)


def test_work_follows_the_stored_sizes(clustered_split: DatasetSplit, tmp_path: Path) -> None:
    """ES at size 3: LightGCN's propagated vectors stay 3 wide, so its buckets are 3 wide."""
    train, _ = clustered_split.phase(Phase.TEST)
    count = clustered_split.num_users + clustered_split.num_items
    sizes = np.full(count, 3)
    sizes[: clustered_split.num_users] = 2
    for kind in (BackboneKind.LIGHTGCN, BackboneKind.NCF):
        model = build(kind, train, sizes)
        scorer = load_scorer(export(model, clustered_split, tmp_path / kind.value))
        assert [width for _, width in scorer.bucket_widths] == [3]
        assert scorer.index.users.shape[1] <= 3


def test_recommendations_exclude_seen_items(clustered_split: DatasetSplit, tmp_path: Path) -> None:
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(BackboneKind.NCF, train, _sizes(clustered_split))
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a", verify_users=0))
    users = np.arange(scorer.num_users)
    items, scores = scorer.recommend(users, TOP_K)
    for user in users:
        assert not set(items[user]) & set(scorer.seen[user].indices)
        assert np.all(np.diff(scores[user]) <= 0)
    with_seen, _ = scorer.recommend(users, TOP_K, exclude_seen=False)
    assert any(set(with_seen[u]) & set(scorer.seen[u].indices) for u in users)
    # Asking for every item leaves the seen ones as empty slots at the end.
    everything, everything_scores = scorer.recommend([0], scorer.num_items)
    num_seen = scorer.seen[0].nnz
    assert np.all(everything[0, -num_seen:] == -1)
    assert np.all(np.isneginf(everything_scores[0, -num_seen:]))
    assert sorted(everything[0, :-num_seen]) == sorted(
        set(range(scorer.num_items)) - set(scorer.seen[0].indices)
    )


def test_seen_items_are_kept_once_and_rebuilt_exactly(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """The scorer keeps each user's seen items once, as bucket positions in the narrowest
    unsigned type; the rows, the whole matrix and the item degrees rebuilt from them are the
    artifact's."""
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(BackboneKind.LIGHTGCN, train, _sizes(clustered_split))
    directory = export(model, clustered_split, tmp_path / "a", verify_users=0)
    expected = load_artifact(directory).seen
    scorer = load_scorer(directory)
    whole = scorer.seen
    assert whole.dtype == np.bool_ and whole.shape == expected.shape
    np.testing.assert_array_equal(whole.indptr, expected.indptr)
    np.testing.assert_array_equal(whole.indices, expected.indices)  # ascending in each row
    users = np.array([5, 0, 5, 17, scorer.num_users - 1])
    rows = scorer.seen_rows(users)
    for row, user in enumerate(users):
        np.testing.assert_array_equal(rows[row].indices, expected[user].indices)
    np.testing.assert_array_equal(
        scorer.item_degrees(), np.bincount(expected.indices, minlength=scorer.num_items)
    )
    width = np.min_scalar_type(scorer.num_items - 1).itemsize
    assert width == 1  # fewer than 256 items here
    assert scorer.resident_detail["seen"] == expected.indptr.nbytes + expected.nnz * width


def test_ids_and_input_checks(clustered_split: DatasetSplit, tmp_path: Path) -> None:
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(BackboneKind.LIGHTGCN, train, _sizes(clustered_split))
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a", verify_users=0))
    np.testing.assert_array_equal(scorer.user_index(["u3", "nobody", "u0"]), [3, -1, 0])
    np.testing.assert_array_equal(scorer.user_index(np.array(["u0", "u3", "u0"])), [0, 3, 0])
    np.testing.assert_array_equal(scorer.user_index(["u7"]), [7])
    assert scorer.user_index([]).tolist() == []
    assert scorer.user_index(["", "u"]).tolist() == [-1, -1]
    assert (scorer.find_user("u3"), scorer.find_user("nobody"), scorer.find_user("")) == (3, -1, -1)
    np.testing.assert_array_equal(scorer.item_index(["i2", "u2", "i2", "i0"]), [2, -1, 2, 0])
    assert scorer.item_index(["i5"]).dtype == np.int64 and scorer.item_index([]).size == 0
    assert scorer.item_labels(np.array([[2, -1]])).tolist() == [["i2", ""]]
    with pytest.raises(ConfigError, match="user ids must lie in"):
        scorer.recommend([120], 5)
    with pytest.raises(ConfigError, match="k must be >= 1"):
        scorer.recommend([0], 0)


def test_resident_bytes_are_reported(
    kind: BackboneKind, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(kind, train, _sizes(clustered_split))
    directory = export(model, clustered_split, tmp_path / "a")
    scorer = load_scorer(directory, ScorerOptions(threads=1))
    manifest = load_artifact(directory).manifest
    assert manifest.memory.resident == scorer.resident_bytes
    assert dict(manifest.memory.resident_detail) == scorer.resident_detail
    users, items = scorer.external_user_ids, scorer.external_item_ids
    assert users.nbytes == 4 * scorer.num_users * max(map(len, users.tolist()))  # "<U…" arrays
    assert items.nbytes == 4 * scorer.num_items * max(map(len, items.tolist()))
    # The id arrays, each again sorted, and an int32 permutation each: bytes, not an estimate.
    expected = 2 * (users.nbytes + items.nbytes) + 4 * (scorer.num_users + scorer.num_items)
    assert scorer.resident_detail["id_maps"] == expected


def _without_topk_graph(directory: Path) -> None:
    """Rewrite ``directory`` as an export from before the topk graph existed."""
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["graphs"]["topk"]
    manifest["files"] = [e for e in manifest["files"] if e["path"] != "graphs/topk.onnx"]
    (directory / "graphs" / "topk.onnx").unlink()
    manifest_path.write_text(json.dumps(manifest))


def test_artifacts_without_the_topk_graph_rank_the_same(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(BackboneKind.LIGHTGCN, train, _sizes(clustered_split))
    directory = export(model, clustered_split, tmp_path / "a", verify_users=0)
    current = load_scorer(directory)
    assert current.topk is not None
    _without_topk_graph(directory)
    older = load_scorer(directory)
    assert older.topk is None
    users = np.arange(current.num_users)
    for k in (1, TOP_K, current.num_items):
        new_items, new_scores = current.recommend(users, k)
        old_items, old_scores = older.recommend(users, k)
        np.testing.assert_array_equal(new_items, old_items)
        np.testing.assert_array_equal(new_scores, old_scores)


@pytest.mark.parametrize("path", ["batch", "one user"])
def test_ties_go_to_the_lower_item_id_even_across_the_cut(
    path: str, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """Both ranking paths: a batch (NCF, whose buckets keep each item's own width) and the
    single-user path of a request (NGCF, whose ragged ego part gives several buckets too)."""
    train, _ = clustered_split.phase(Phase.TEST)
    kind = BackboneKind.NCF if path == "batch" else BackboneKind.NGCF
    model = build(kind, train, _sizes(clustered_split))
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a", verify_users=0))
    assert len(scorer.bucket_widths) > 1  # bucket order differs from item order
    # Scores from five values only: every top-k cut falls inside a group of ties.
    tied = np.random.default_rng(0).integers(0, 5, (scorer.num_users, scorer.num_items))
    in_bucket_order = tied.astype(np.float32)[:, scorer.index.layout.order]
    scorer._bucket_order_scores = lambda user_ids: in_bucket_order[user_ids].copy()  # type: ignore[method-assign]
    scorer.index.user_scores = lambda user: in_bucket_order[user : user + 1].copy()  # type: ignore[method-assign]
    users = np.arange(scorer.num_users)
    for k in (3, 8, 13):
        if path == "batch":
            items_k, scores_k = scorer.recommend(users, k, exclude_seen=False)
        else:
            ranked = [scorer.recommend([user], k, exclude_seen=False) for user in users]
            items_k = np.concatenate([items for items, _ in ranked])
            scores_k = np.concatenate([scores for _, scores in ranked])
        for user in users:
            expected = np.lexsort((np.arange(scorer.num_items), -tied[user]))[:k]
            np.testing.assert_array_equal(items_k[user], expected)
            np.testing.assert_array_equal(scores_k[user], tied[user, expected])


def test_one_user_ranks_exactly_as_in_a_batch(
    kind: BackboneKind, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """A request's single-user path ranks as the batch path does.

    Its scores are the batch-of-one scores bit for bit; a larger batch may round the last bit
    differently (another matrix kernel), so there the scores agree to float32 precision.
    """
    train, _ = clustered_split.phase(Phase.TEST)
    model = build(kind, train, _sizes(clustered_split))
    scorer = load_scorer(export(model, clustered_split, tmp_path / "a", verify_users=0))
    if kind is BackboneKind.NGCF:  # the ragged ego part last: several buckets to fill
        assert len(scorer.bucket_widths) > 1
    users = np.arange(scorer.num_users)
    for user in users:
        np.testing.assert_array_equal(
            scorer.index.user_scores(int(user)), scorer.index.scores(np.array([user]))
        )
    for exclude_seen in (True, False):
        for k in (1, TOP_K, scorer.num_items):
            batch_items, batch_scores = scorer.recommend(users, k, exclude_seen=exclude_seen)
            for user in users:
                items, scores = scorer.recommend([user], k, exclude_seen=exclude_seen)
                np.testing.assert_array_equal(items[0], batch_items[user])
                np.testing.assert_allclose(scores[0], batch_scores[user], rtol=1e-5, atol=1e-6)
