"""Prometheus metrics: one registry per app, filled by a lean ASGI middleware.

- ``ciess_request_duration_seconds{method, route}``: latency histogram (route templates, not raw
  paths, so that user ids do not explode the label set; ``unmatched`` for a path no route has;
  methods outside :data:`LABELLED_METHODS` as ``other``, since a client may send any token).
- ``ciess_requests_total{method, route, status}``.
- ``ciess_model_info{version}`` = 1 for the served model (of the process that answers the
  scrape); ``ciess_model_bytes{kind}``: its embedding stores' bytes (``stored``), the same
  tables dense in float32 (``dense_fp32``) and the scorer's resident bytes (``resident``);
  ``ciess_model_swaps_total``, ``ciess_model_swap_failures_total``.
- ``ciess_jobs{state}``: jobs per state, read from the store at scrape time.
- ``ciess_job_workers``: job workers alive (registered, heartbeat fresh, process present), read
  from the store at scrape time; 0 means queued jobs will not run.
- ``ciess_ranking_batches_total``, ``ciess_ranked_requests_total``: the fast path's turn batcher
  (copied from it by :meth:`Metrics.sync`: at every scrape and every poll).

With ``PROMETHEUS_MULTIPROC_DIR`` set (``ciess serve --workers N`` sets it), counters and
histograms live in that folder, shared by the service's processes, and a scrape of any process
answers their sums (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batching import TurnBatcher
from service.jobs.store import JobStore, worker_fresh_seconds
from service.model_holder import ModelHolder

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
)  # fmt: skip


LABELLED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Request methods labelled as themselves; any other is ``other``."""


def _method_label(method: str) -> str:
    """The ``method`` label of a request: the method if standard, else ``other`` (a bounded set
    of labels, whatever methods clients invent)."""
    return method if method in LABELLED_METHODS else "other"


def multiprocess_mode() -> bool:
    """Whether prometheus-client keeps its values in files shared by processes."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _StateCollector(Collector):
    """Jobs per state, live job workers and the served model's version, when scraped."""

    def __init__(
        self, store: Callable[[], JobStore | None], holder: ModelHolder, poll_seconds: float
    ) -> None:
        self._store = store
        self._holder = holder
        self._poll_seconds = poll_seconds

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("ciess_jobs", "Jobs in the store, by state", labels=["state"])
        workers = GaugeMetricFamily(
            "ciess_job_workers",
            "Job workers alive (heartbeat fresh, process present); 0: queued jobs do not run",
        )
        store = self._store()
        if store is not None:
            try:
                for state, count in store.counts().items():
                    jobs.add_metric([state.value], count)
                live = store.live_workers(worker_fresh_seconds(self._poll_seconds))
                workers.add_metric([], len(live))
            except sqlite3.Error as error:
                logger.warning("job counts unavailable: %s", error)
        yield jobs
        yield workers
        model = GaugeMetricFamily(
            "ciess_model_info", "The served model (value 1, version as label)", labels=["version"]
        )
        memory = GaugeMetricFamily(
            "ciess_model_bytes",
            "The served model's bytes: its embedding stores as stored, the same tables dense in "
            "float32, and what the scorer keeps in memory",
            labels=["kind"],
        )
        current = self._holder.current
        if current is not None:
            model.add_metric([current.version], 1.0)
            stored = current.scorer.manifest.memory
            memory.add_metric(["stored"], float(stored.stored))
            memory.add_metric(["dense_fp32"], float(stored.dense))
            memory.add_metric(["resident"], float(current.scorer.resident_bytes))
        yield model
        yield memory


class Metrics:
    """The app's instruments, and :attr:`registry`, what a scrape answers."""

    def __init__(
        self,
        holder: ModelHolder,
        store: Callable[[], JobStore | None],
        batcher: TurnBatcher | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        # The instruments' own registry; in multiprocess mode their values live in files and a
        # scrape reads the files of every process instead.
        instruments = CollectorRegistry()
        self.latency = Histogram(
            "ciess_request_duration_seconds",
            "Request latency, by route",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=instruments,
        )
        self.requests = Counter(
            "ciess_requests",
            "Requests, by route and status",
            ["method", "route", "status"],
            registry=instruments,
        )
        self.swaps = Counter(
            "ciess_model_swaps", "Served-model swaps since start", registry=instruments
        )
        self.swap_failures = Counter(
            "ciess_model_swap_failures",
            "Promoted artifacts that failed to load (the old model kept serving)",
            registry=instruments,
        )
        self._batcher = batcher
        self._synced = (0, 0)
        self._sync_lock = threading.Lock()
        self.ranking_batches = Counter(
            "ciess_ranking_batches",
            "Ranking calls of the fast path's turn batcher (a batch of one included)",
            registry=instruments,
        )
        self.ranked_requests = Counter(
            "ciess_ranked_requests",
            "Requests ranked by the fast path's turn batcher",
            registry=instruments,
        )
        if multiprocess_mode():
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)
        else:
            self.registry = instruments
        self.registry.register(_StateCollector(store, holder, poll_seconds))

    def sync(self) -> None:
        """Copy the turn batcher's counts into their counters (it counts in plain integers, on
        the hot path; the counters may be shared files)."""
        batcher = self._batcher
        if batcher is None:
            return
        with self._sync_lock:
            batches, requests = batcher.batches, batcher.requests
            self.ranking_batches.inc(batches - self._synced[0])
            self.ranked_requests.inc(requests - self._synced[1])
            self._synced = (batches, requests)


class MetricsMiddleware:
    """Times every HTTP request and counts it by status (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Labelled children, looked up once per label set (``labels()`` costs more than the
        # observation itself on the hot path); routes are templates and methods a fixed few, so
        # the sets stay few.
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
            method = _method_label(scope.get("method", ""))
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
