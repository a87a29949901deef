"""Single-user top-k requests that arrive in the same event-loop turn, ranked as one batch.

Under load, one turn of the event loop often parses several requests (one per connection with data
waiting). Ranked one by one, each pays for reading the whole item matrix and for one onnxruntime
call per graph; ranked together, the item matrix is read once for all of them, in one matrix
product, and the calls are shared (the dynamic batching of model servers, with a window of one loop
turn: no request waits for a timer). A request that is alone in its turn is ranked alone, exactly
as before.

The rankings are the same as one by one: a batch asks for the largest ``k`` and each request takes
its prefix, which is its own top-k because the order (score, then lower item id) is total. Scores
may differ in the last bit of a float32 from a batch of one (another matrix kernel), as in any
batched inference; tests/service/test_batching.py checks both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from service.model_holder import ServedModel
from service.ranking import rank_internal

Ranking = tuple[list[str], list[float]]


@dataclass(frozen=True)
class _Request:
    model: ServedModel
    user: int  # internal id, known to ``model``
    k: int
    exclude_seen: bool
    answer: asyncio.Future[Ranking]


class TurnBatcher:
    """Collects :meth:`rank` calls and ranks them together at the end of the loop turn.

    Args:
        max_batch: most users ranked in one call (bounds the latency a large burst adds).
    """

    def __init__(self, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._waiting: list[_Request] = []
        self.batches = 0  # ranking calls made (a batch of one included)
        self.requests = 0

    def rank(
        self, model: ServedModel, user: int, k: int, exclude_seen: bool
    ) -> asyncio.Future[Ranking]:
        """The top-k of one user (internal id of ``model``) as (external item ids, scores), once
        the turn ends."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Ranking] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append(_Request(model, user, k, exclude_seen, answer))
        return answer

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        groups: dict[tuple[int, bool], list[_Request]] = {}
        for request in waiting:  # a model swap or exclude_seen splits the batch
            groups.setdefault((id(request.model), request.exclude_seen), []).append(request)
        for group in groups.values():
            for start in range(0, len(group), self.max_batch):
                self._rank_together(group[start : start + self.max_batch])

    def _rank_together(self, batch: list[_Request]) -> None:
        first = batch[0]
        self.batches += 1
        self.requests += len(batch)
        try:
            rankings = rank_internal(
                first.model,
                np.array([request.user for request in batch], dtype=np.int64),
                max(request.k for request in batch),
                first.exclude_seen,
            )
        except Exception as error:  # every request of the batch hears of it
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(error)
            return
        for request, (labels, scores) in zip(batch, rankings, strict=True):
            if not request.answer.done():  # its client may have gone
                request.answer.set_result((labels[: request.k], scores[: request.k]))
