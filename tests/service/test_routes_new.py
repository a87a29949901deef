"""Similar items, for-items, the popularity fallback, include/exclude lists, pagination and the
refusal of unknown query parameters: each against an answer computed here from the artifact."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from bench.for_items import VISITORS, held_out_recall
from ciess_core.artifact.export import ExportOptions, export_model
from ciess_core.data import DatasetSplit, Phase, load_pairs, split_per_user
from ciess_core.models import BackboneConfig, BackboneKind, build_backbone
from service.main import create_app
from service.model_holder import ServedModel, load_served_model
from service.ranking import for_items, item_degrees, rank_users, visitor_vector
from service.schemas import MAX_FILTER_ITEMS, MAX_OFFSET
from service.settings import Settings
from tests.service.conftest import DATASET_FILE, BaseArtifact

BOUND = 4096  # every error body here stays under this many bytes


@pytest.fixture(scope="module")
def model(base_model: BaseArtifact) -> ServedModel:
    return load_served_model(base_model.artifact, threads=1)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def other_backbones(
    clustered_split: DatasetSplit, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Untrained NGCF and NCF artifacts with ragged sizes (several width buckets)."""
    root = tmp_path_factory.mktemp("other-backbones")
    train, _ = clustered_split.phase(Phase.TEST)
    sizes = np.random.default_rng(1).integers(1, 17, clustered_split.num_users + train.shape[1])
    directories = {}
    for kind in (BackboneKind.NGCF, BackboneKind.NCF):
        config = BackboneConfig.default_for(kind, max_size=16, num_layers=2, mlp_layers=(16, 8))
        backbone = build_backbone(config, train, torch.Generator().manual_seed(0))
        backbone.set_embedding_sizes(torch.from_numpy(sizes))
        directories[kind.value] = export_model(
            backbone.eval(),
            train,
            clustered_split.external_user_ids,
            clustered_split.external_item_ids,
            root / kind.value,
            options=ExportOptions(threads=1),
        )
    return directories


def labels(answer: list[dict[str, object]]) -> list[str]:
    return [str(entry["item_id"]) for entry in answer]


def scores(answer: list[dict[str, object]]) -> list[float]:
    return [float(entry["score"]) for entry in answer]  # type: ignore[arg-type]


def expected_order(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Internal ids of ``allowed`` by score, then the lower id (the service's order)."""
    return allowed[np.lexsort((allowed, -scores[allowed]))]


# -- the scorer's item vectors ------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["lightgcn", "ngcf", "ncf"])
def test_item_vectors_are_the_item_side_of_the_scores(
    backbone: str, base_model: BaseArtifact, other_backbones: dict[str, Path]
) -> None:
    directory = base_model.artifact if backbone == "lightgcn" else other_backbones[backbone]
    scorer = load_served_model(directory, threads=1).scorer
    users = np.arange(scorer.num_users)
    vectors = scorer.item_vectors()
    assert vectors.shape[0] == scorer.num_items and len(scorer.bucket_widths) >= 1
    width = min(vectors.shape[1], scorer.index.users.shape[1])
    dot = scorer.index.users[:, :width] @ vectors[:, :width].T
    if backbone == "ncf":  # the GMF half: the whole score less the tower's share
        assert scorer.ncf_parts is not None
        np.testing.assert_allclose(dot, scorer.index.scores(users)[:, scorer.index.layout.position],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    else:
        np.testing.assert_allclose(dot, scorer.score_all(users), rtol=1e-5, atol=1e-5)


# -- similar items ------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_similar_items_rank_by_the_item_vectors_without_the_item(
    client: TestClient, model: ServedModel, metric: str
) -> None:
    vectors = model.scorer.item_vectors().astype(np.float64)
    if metric == "cosine":
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for item in ("i0", "i13", "i79"):
        response = client.get(f"/v1/items/{item}/similar", params={"k": 7, "metric": metric})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["item_id"] == item and body["metric"] == metric
        assert body["model_version"] == response.headers["X-Model-Version"] == "v1-base"
        (internal,) = model.scorer.item_index([item])
        assert internal >= 0
        scores = vectors @ vectors[internal]
        others = np.setdiff1d(np.arange(model.scorer.num_items), [internal])
        best = expected_order(scores, others)[:7]
        assert labels(body["items"]) == model.scorer.item_labels(best).tolist()
        np.testing.assert_allclose([e["score"] for e in body["items"]], scores[best], rtol=1e-4)


def test_similar_items_share_the_item_s_cluster(client: TestClient) -> None:
    """The generated data's items fall into 4 clusters (item n in cluster n % 4)."""
    same = total = 0
    for item in range(0, 80, 7):
        answer = client.get(f"/v1/items/i{item}/similar", params={"k": 10}).json()["items"]
        same += sum(int(entry["item_id"][1:]) % 4 == item % 4 for entry in answer)
        total += len(answer)
    assert same / total >= 0.8  # chance: 0.25


def test_similar_items_of_an_unknown_item_is_a_bounded_404(client: TestClient) -> None:
    response = client.get(f"/v1/items/{'x' * 256}/similar")
    assert response.status_code == 404
    assert "unknown item id" in response.json()["detail"] and len(response.content) < 1024
    assert client.get(f"/v1/items/{'x' * 257}/similar").status_code == 422  # max_id_length
    assert client.get("/v1/items/i1/similar", params={"k": 0}).status_code == 422
    assert client.get("/v1/items/i1/similar", params={"metric": "l2"}).status_code == 422


@pytest.mark.parametrize("backbone", ["ngcf", "ncf"])
def test_similar_items_on_the_other_backbones(
    backbone: str, settings: Settings, other_backbones: dict[str, Path]
) -> None:
    served = load_served_model(other_backbones[backbone], threads=1)
    vectors = served.scorer.item_vectors().astype(np.float64)  # NCF: the GMF table
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with TestClient(create_app(settings.replace(artifact_dir=other_backbones[backbone]))) as client:
        body = client.get("/v1/items/i3/similar", params={"k": 5}).json()
    (internal,) = served.scorer.item_index(["i3"])
    assert internal >= 0
    others = np.setdiff1d(np.arange(served.scorer.num_items), [internal])
    best = expected_order(vectors @ vectors[internal], others)[:5]
    assert labels(body["items"]) == served.scorer.item_labels(best).tolist()


# -- for items ----------------------------------------------------------------------------------
def test_for_items_ranks_by_the_fold_in_vector_without_the_given_items(
    client: TestClient, model: ServedModel
) -> None:
    given = ["i4", "i8", "i12", "i8"]  # a repeat counts once
    response = client.post("/v1/recommendations/for-items", json={"item_ids": given, "k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == response.headers["X-Model-Version"] == "v1-base"
    vectors = model.scorer.item_vectors().astype(np.float64)
    found = model.scorer.item_index(given)
    assert (found >= 0).all()
    internal = np.unique(found)
    gram = vectors.T @ vectors
    ridge = np.trace(gram) / gram.shape[0]
    visitor = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), vectors[internal].sum(0))
    scores = vectors @ visitor
    np.testing.assert_allclose(visitor_vector(model, internal), visitor, rtol=1e-4, atol=1e-6)
    allowed = np.setdiff1d(np.arange(model.scorer.num_items), internal)
    best = expected_order(scores, allowed)[:10]
    assert labels(body["items"]) == model.scorer.item_labels(best).tolist()
    assert set(labels(body["items"])).isdisjoint(given)
    np.testing.assert_allclose([e["score"] for e in body["items"]], scores[best], rtol=1e-4)
    # Items of one cluster make a visitor of that cluster (item n is in cluster n % 4).
    assert sum(int(item[1:]) % 4 == 0 for item in labels(body["items"])) >= 8


def test_for_items_recovers_held_out_items_like_the_trained_users(
    model: ServedModel, base_model: BaseArtifact
) -> None:
    """Every user built from its training items, ranked against its held-out test items.

    Measured on this artifact: recall@20 trained 0.883, for-items 0.879 (0.995 of trained),
    popularity 0.283; on ML-1M (LightGCN d=128, bench/for_items.py) 0.249, 0.248 and 0.112.
    """
    data = load_pairs(base_model.data_dir / DATASET_FILE)
    _, test = split_per_user(data, seed=42).phase(Phase.TEST)  # the fixture's split
    assert model.scorer.external_user_ids.tolist() == [str(u) for u in data.external_user_ids]
    items = model.scorer.item_index([str(item) for item in data.external_item_ids])
    assert (items >= 0).all()
    held_out = test[:, np.argsort(items)]  # columns in the artifact's item order
    recall = held_out_recall(model, held_out.tocsr(), k=20)
    assert recall["users"] == model.scorer.num_users
    assert recall["for_items"] >= 2 * recall["popular"]
    assert recall["for_items"] >= 0.9 * recall["trained"]
    assert set(VISITORS) <= set(recall)
    # The route answers what the measurement ranked: one user, both ways.
    seen = model.scorer.seen
    profile = model.scorer.item_labels(seen.indices[seen.indptr[7] : seen.indptr[8]]).tolist()
    ranking, _ = for_items(model, profile, 20)
    assert not set(ranking) & set(profile) and len(ranking) == 20


def test_for_items_refuses_unknown_items_and_ncf(
    client: TestClient, settings: Settings, other_backbones: dict[str, Path]
) -> None:
    unknown = client.post(
        "/v1/recommendations/for-items", json={"item_ids": ["i1", "ghost"] + ["x" * 200] * 999}
    )
    assert unknown.status_code == 422 and len(unknown.content) < BOUND
    assert "ghost" in unknown.json()["detail"] and "1000 unknown" in unknown.json()["detail"]
    body: Mapping[str, object]
    for body in ({"item_ids": []}, {"item_ids": ["i1"], "k": 0}, {"item_ids": ["i1"], "u": 1}):
        assert client.post("/v1/recommendations/for-items", json=body).status_code == 422
    with TestClient(create_app(settings.replace(artifact_dir=other_backbones["ncf"]))) as ncf:
        refused = ncf.post("/v1/recommendations/for-items", json={"item_ids": ["i1"]})
        assert refused.status_code == 422 and "ncf" in refused.json()["detail"]
    with TestClient(create_app(settings.replace(artifact_dir=other_backbones["ngcf"]))) as ngcf:
        answer = ngcf.post("/v1/recommendations/for-items", json={"item_ids": ["i1"], "k": 5})
        assert answer.status_code == 200 and len(answer.json()["items"]) == 5
        assert "i1" not in labels(answer.json()["items"])


# -- popularity fallback ------------------------------------------------------------------------
def test_unknown_users_get_the_popular_items_only_when_asked(
    client: TestClient, model: ServedModel
) -> None:
    counts = np.asarray(model.scorer.seen.sum(axis=0)).ravel()
    popular = expected_order(counts, np.arange(counts.size))
    assert client.get("/v1/users/nobody/recommendations").status_code == 404
    answer = client.get("/v1/users/nobody/recommendations", params={"fallback": "popular", "k": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["fallback"] == "popular" and body["user_id"] == "nobody"
    assert labels(body["items"]) == model.scorer.item_labels(popular[:5]).tolist()
    assert [entry["score"] for entry in body["items"]] == counts[popular[:5]].tolist()
    known = client.get("/v1/users/u3/recommendations", params={"fallback": "popular"}).json()
    assert "fallback" not in known
    assert known == client.get("/v1/users/u3/recommendations").json()
    assert client.get("/v1/users/nobody/recommendations?fallback=random").status_code == 422

    batch = {"user_ids": ["u3", "nobody", "ghost"], "k": 5}
    assert client.post("/v1/recommendations", json=batch).status_code == 404
    results = client.post("/v1/recommendations", json={**batch, "fallback": "popular"}).json()
    assert [result.get("fallback") for result in results["results"]] == [None, "popular", "popular"]
    assert labels(results["results"][0]["items"]) == labels(known["items"][:5])
    assert results["results"][1]["items"] == body["items"]
    filtered = {**batch, "fallback": "popular", "exclude_items": labels(body["items"][:2])}
    shifted = client.post("/v1/recommendations", json={**filtered, "offset": 1}).json()
    assert labels(shifted["results"][2]["items"]) == model.scorer.item_labels(popular[3:8]).tolist()


def test_popularity_is_counted_once_per_model(model: ServedModel) -> None:
    assert item_degrees(model) is item_degrees(model)
    np.testing.assert_array_equal(item_degrees(model), model.scorer.seen.sum(axis=0).A1)


# -- include / exclude --------------------------------------------------------------------------
def test_include_and_exclude_lists_on_the_batch_route(
    client: TestClient, model: ServedModel
) -> None:
    users = ["u1", "u2"]
    everything = client.post("/v1/recommendations", json={"user_ids": users, "k": 30}).json()
    excluded = [labels(result["items"])[i] for result in everything["results"] for i in (0, 2)]
    answer = client.post(
        "/v1/recommendations", json={"user_ids": users, "k": 10, "exclude_items": excluded}
    ).json()
    for full, result in zip(everything["results"], answer["results"], strict=True):
        kept = [item for item in labels(full["items"]) if item not in excluded]
        assert labels(result["items"]) == kept[:10]  # the same ranking, those items out
    include = [f"i{n}" for n in range(0, 40, 3)]
    both = {"user_ids": users, "k": 4, "include_items": include, "exclude_items": include[:2]}
    result = client.post("/v1/recommendations", json=both).json()["results"]
    for user, row in zip(users, result, strict=True):
        alone = client.get(
            f"/v1/users/{user}/recommendations", params={"item_id": include[2:], "k": 4}
        ).json()
        assert labels(row["items"]) == labels(alone["items"])
        np.testing.assert_allclose(scores(row["items"]), scores(alone["items"]), rtol=1e-5)
    # The former name of include_items still works, alone.
    former = client.post(
        "/v1/recommendations", json={"user_ids": users, "k": 4, "item_ids": include[2:]}
    )
    assert former.json()["results"] == result
    twice = {"user_ids": users, "item_ids": include, "include_items": include}
    assert client.post("/v1/recommendations", json=twice).status_code == 422


@pytest.mark.parametrize("field", ["include_items", "exclude_items"])
def test_item_lists_are_bounded_and_checked(client: TestClient, field: str) -> None:
    def post(items: list[str]) -> tuple[int, str]:
        response = client.post("/v1/recommendations", json={"user_ids": ["u1"], field: items})
        assert len(response.content) < BOUND
        return response.status_code, response.text

    status, text = post(["i1", "nope", "gone"])
    assert status == 422 and "nope" in text and "2 unknown" in text
    assert post([f"missing-{n}" for n in range(5000)])[0] == 422
    assert post(["i1"] * (MAX_FILTER_ITEMS + 1))[0] == 422  # the schema's ceiling
    assert post(["x" * 257])[0] == 422  # the max_id_length setting


# -- pagination ---------------------------------------------------------------------------------
def test_offset_pages_through_the_ranking(client: TestClient, model: ServedModel) -> None:
    whole = client.get("/v1/users/u5/recommendations", params={"k": 30}).json()["items"]
    pages = [
        client.get("/v1/users/u5/recommendations", params={"k": 10, "offset": offset}).json()
        for offset in (0, 10, 20)
    ]
    assert [entry for page in pages for entry in page["items"]] == whole
    batch = client.post(
        "/v1/recommendations", json={"user_ids": ["u5", "u6"], "k": 10, "offset": 10}
    ).json()["results"]
    assert labels(batch[0]["items"]) == labels(pages[1]["items"])
    np.testing.assert_allclose(scores(batch[0]["items"]), scores(pages[1]["items"]), rtol=1e-5)
    # Past the last item the page is short, then empty; the ranking is at most every item.
    user = int(model.scorer.user_index(["u5"])[0])
    unseen = model.scorer.num_items - model.scorer.seen[user].nnz
    tail = client.get("/v1/users/u5/recommendations", params={"k": 50, "offset": unseen - 3})
    assert len(tail.json()["items"]) == 3
    empty = client.get("/v1/users/u5/recommendations", params={"offset": MAX_OFFSET})
    assert empty.status_code == 200 and empty.json()["items"] == []
    for bad in ({"offset": -1}, {"offset": MAX_OFFSET + 1}, {"offset": "x"}):
        assert client.get("/v1/users/u5/recommendations", params=bad).status_code == 422
    forward = client.post(
        "/v1/recommendations/for-items", json={"item_ids": ["i1"], "k": 4, "offset": 2}
    ).json()["items"]
    first = client.post("/v1/recommendations/for-items", json={"item_ids": ["i1"], "k": 6})
    assert forward == first.json()["items"][2:]


def test_a_filtered_page_is_a_slice_of_the_filtered_ranking(model: ServedModel) -> None:
    include = [f"i{n}" for n in range(40)]
    ((whole, _),) = rank_users(model, ["u9"], 25, include_items=include, exclude_items=["i3"])
    ((page, _),) = rank_users(
        model, ["u9"], 10, include_items=include, exclude_items=["i3"], offset=10
    )
    assert page[0] == whole[0][10:20] and page[1] == whole[1][10:20]


# -- unknown query parameters -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "/v1/users/u1/recommendations?ofset=10", None),
        ("GET", "/v1/users/nobody/recommendations?fallback=popular&x=1", None),
        ("GET", "/v1/items/i1/similar?k=3&offset=2", None),
        ("POST", "/v1/recommendations?k=3", {"user_ids": ["u1"]}),
        ("POST", "/v1/recommendations/for-items?debug=1", {"item_ids": ["i1"]}),
    ],
)
def test_unknown_query_parameters_are_a_422_naming_them(
    client: TestClient, method: str, url: str, body: object
) -> None:
    response = client.request(method, url, json=body)
    assert response.status_code == 422, response.text
    (issue,) = response.json()["detail"]
    assert issue["type"] == "extra_forbidden" and issue["loc"][0] == "query"
    assert issue["loc"][1] in url and "unknown query parameter" in issue["msg"]


def test_many_unknown_query_parameters_get_a_bounded_answer(client: TestClient) -> None:
    query = "&".join(f"p{n}={'v' * 50}" for n in range(500))
    response = client.get(f"/v1/users/u1/recommendations?{query}")
    assert response.status_code == 422 and len(response.content) < BOUND


# -- documentation ------------------------------------------------------------------------------
def test_the_new_routes_are_documented_with_examples(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    similar = paths["/v1/items/{item_id}/similar"]["get"]
    assert {"200", "404", "422"} <= set(similar["responses"])
    assert {p["name"] for p in similar["parameters"]} == {"item_id", "k", "metric"}
    for_items_route = paths["/v1/recommendations/for-items"]["post"]
    assert "fold-in" in for_items_route["description"]
    single = {p["name"] for p in paths["/v1/users/{user_id}/recommendations"]["get"]["parameters"]}
    assert {"offset", "fallback"} <= single
    components = schema["components"]["schemas"]
    assert "fallback" in components["Recommendation"]["properties"]
    batch = components["BatchRequest"]["properties"]
    assert {"include_items", "exclude_items", "offset", "fallback"} <= set(batch)
    assert batch["item_ids"].get("deprecated") is True
    for name in ("SimilarItemsResponse", "ForItemsRequest", "ForItemsResponse"):
        assert components[name].get("examples"), name
