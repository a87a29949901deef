"""Requests of one event-loop turn ranked as one batch: same rankings as one by one."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from ciess_core.errors import ConfigError
from service.batching import TurnBatcher
from service.model_holder import ServedModel, load_served_model
from service.ranking import ranked
from service.settings import Settings
from tests.service.conftest import BaseArtifact, live_server


@pytest.fixture
def model(base_model: BaseArtifact) -> ServedModel:
    return load_served_model(base_model.artifact, threads=1)


def test_one_turn_is_one_batch_with_each_request_its_own_top_k(model: ServedModel) -> None:
    users = [str(u) for u in model.scorer.external_user_ids[:24].tolist()]
    asked = [(user, 1 + (i * 7) % 30, i % 3 != 0) for i, user in enumerate(users)]

    async def scenario() -> tuple[list[tuple[list[str], list[float]]], TurnBatcher]:
        batcher = TurnBatcher()
        answers = [
            batcher.rank(model, model.scorer.find_user(u), k, exclude) for u, k, exclude in asked
        ]
        return list(await asyncio.gather(*answers)), batcher

    answers, batcher = asyncio.run(scenario())
    assert batcher.batches == 2 and batcher.requests == len(asked)  # exclude_seen on / off
    for (user, k, exclude), (labels, scores) in zip(asked, answers, strict=True):
        ((alone_labels, alone_scores),) = ranked(model, [user], k, exclude)
        assert labels == alone_labels
        np.testing.assert_allclose(scores, alone_scores, rtol=1e-5, atol=1e-6)


def test_large_bursts_are_cut_and_turns_are_not_mixed(model: ServedModel) -> None:
    users = list(range(10))

    async def scenario() -> TurnBatcher:
        batcher = TurnBatcher(max_batch=4)
        await asyncio.gather(*(batcher.rank(model, u, 5, True) for u in users))  # 4 + 4 + 2
        await batcher.rank(model, users[0], 5, True)  # a later turn: alone
        return batcher

    batcher = asyncio.run(scenario())
    assert (batcher.batches, batcher.requests) == (4, 11)


def test_a_failed_batch_fails_each_of_its_requests(model: ServedModel) -> None:
    async def scenario() -> list[object]:
        batcher = TurnBatcher()
        outside = model.scorer.num_users  # not an internal id of this model
        answers = [batcher.rank(model, 0, 5, True), batcher.rank(model, outside, 5, True)]
        return list(await asyncio.gather(*answers, return_exceptions=True))

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, ConfigError) for outcome in outcomes)


def test_concurrent_http_requests_are_batched_and_answered_as_alone(settings: Settings) -> None:
    async def load(base: str, users: list[str]) -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=base, limits=limits) as client:
            answers = []
            for _ in range(5):  # rounds of 32 requests at once, one per connection
                round_ = [client.get(f"/v1/users/{u}/recommendations?k=10") for u in users]
                answers += [response.json() for response in await asyncio.gather(*round_)]
            return answers

    with live_server(settings) as base, httpx.Client(base_url=base) as client:
        users = [f"u{i}" for i in range(32)]
        alone = {u: client.get(f"/v1/users/{u}/recommendations?k=10").json() for u in users}
        answers = asyncio.run(load(base, users))
        metrics = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith(("ciess_ranking_batches_total", "ciess_ranked_requests_total"))
        }
    for answer in answers:
        expected = alone[str(answer["user_id"])]
        assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in expected["items"]]
    assert metrics["ciess_ranked_requests_total"] == 32 + 5 * 32
    assert metrics["ciess_ranking_batches_total"] < metrics["ciess_ranked_requests_total"]
