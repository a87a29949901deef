"""Prometheus metrics: one registry per app, filled by a lean ASGI middleware.

- ``ciess_request_duration_seconds{method, route}``: latency histogram (route templates, not raw
  paths, so that user ids do not explode the label set).
- ``ciess_requests_total{method, route, status}``.
- ``ciess_model_info{version}`` = 1 for the served model; ``ciess_model_swaps_total``.
- ``ciess_jobs{state}``: jobs per state, read from the store at scrape time.
- ``ciess_ranking_batches_total``, ``ciess_ranked_requests_total``: the fast path's turn batcher.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batching import TurnBatcher
from service.jobs.store import JobStore
from service.model_holder import ModelHolder

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
)  # fmt: skip


class _StateCollector(Collector):
    """Jobs per state, the served model's version and the turn batcher's counts, when scraped."""

    def __init__(
        self,
        store: Callable[[], JobStore | None],
        holder: ModelHolder,
        batcher: TurnBatcher | None,
    ) -> None:
        self._store = store
        self._holder = holder
        self._batcher = batcher

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("ciess_jobs", "Jobs in the store, by state", labels=["state"])
        store = self._store()
        if store is not None:
            try:
                for state, count in store.counts().items():
                    jobs.add_metric([state.value], count)
            except sqlite3.Error as error:
                logger.warning("job counts unavailable: %s", error)
        yield jobs
        model = GaugeMetricFamily(
            "ciess_model_info", "The served model (value 1, version as label)", labels=["version"]
        )
        current = self._holder.current
        if current is not None:
            model.add_metric([current.version], 1.0)
        yield model
        batcher = self._batcher
        if batcher is not None:  # requests / batches = the mean batch size under load
            yield CounterMetricFamily(
                "ciess_ranking_batches",
                "Ranking calls of the fast path's turn batcher (a batch of one included)",
                value=batcher.batches,
            )
            yield CounterMetricFamily(
                "ciess_ranked_requests",
                "Requests ranked by the fast path's turn batcher",
                value=batcher.requests,
            )


class Metrics:
    """The app's registry and its instruments."""

    def __init__(
        self,
        holder: ModelHolder,
        store: Callable[[], JobStore | None],
        batcher: TurnBatcher | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "ciess_request_duration_seconds",
            "Request latency, by route",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "ciess_requests",
            "Requests, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "ciess_model_swaps", "Served-model swaps since start", registry=self.registry
        )
        self.swap_failures = Counter(
            "ciess_model_swap_failures",
            "Promoted artifacts that failed to load (the old model kept serving)",
            registry=self.registry,
        )
        self.registry.register(_StateCollector(store, holder, batcher))


class MetricsMiddleware:
    """Times every HTTP request and counts it by status (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Labelled children, looked up once per label set (``labels()`` costs more than the
        # observation itself on the hot path); routes are templates, so the sets stay few.
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            latency = self._latency.get((method, template))
            if latency is None:
                latency = self._latency[method, template] = self.metrics.latency.labels(
                    method, template
                )
            latency.observe(time.perf_counter() - started)
            counter = self._requests.get((method, template, status[0]))
            if counter is None:
                counter = self._requests[method, template, status[0]] = (
                    self.metrics.requests.labels(method, template, str(status[0]))
                )
            counter.inc()
