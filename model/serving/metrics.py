"""``/metrics`` of the search service, in Prometheus' text format, through the Prometheus client library.

Each app has a registry of its own (not the library's global one), so several apps in one process (tests, or a
benchmark running two) never share counters. Exposed:

- ``denseflow_search_requests_total{mode}``, ``denseflow_search_errors_total{mode,status}``: every ``/search``
  request, and those answered with a status of 400 or more. ``mode`` is the mode the request was answered (or
  would have been answered) in; ``unknown`` when the request was refused before one was chosen (a malformed body).
- ``denseflow_search_latency_seconds{mode}``: a histogram of the time to answer ``/search``, errors included.
- ``denseflow_unauthorized_requests_total``: requests refused for a missing or wrong API key.
- ``denseflow_served_info{index,index_version,model,model_version}``: the version being served, read at scrape
  time, so it changes the moment a swap lands.
- For a replica: ``denseflow_alias_seconds_since_agreed`` (seconds since the registry was last seen naming the
  version being served; NaN before it ever was) and ``denseflow_registry_stale`` (1 while the tracking server does
  not answer).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from denseflow.model.serving.replica import Replica
from denseflow.model.serving.search import Searcher

# Seconds; dense search on a small index answers in milliseconds, BM25 over a large corpus or a cold model in more.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_MODE = "unknown"


class _ServedCollector(Collector):
    """What is served, read when Prometheus scrapes (so the poll thread never has to update a gauge)."""

    def __init__(self, searcher: Searcher, replica: Replica | None) -> None:
        self.searcher, self.replica = searcher, replica

    def describe(self) -> list[Metric]:
        return []  # described at collection: the labels depend on the version served then

    def collect(self) -> Iterator[Metric]:
        health = self.searcher.health()
        served = InfoMetricFamily("denseflow_served", "The published index version being served and its model.")
        served.add_metric([], {
            "index": str(health.get("index")),
            "index_version": str(health.get("index_version")),
            "model": str(health.get("model")),
            "model_version": str(health.get("model_version")),
        })  # fmt: skip
        yield served
        if self.replica is None:
            return
        watch = self.replica.watch
        since = watch.seconds_since_agreed(self.replica.clock())
        yield GaugeMetricFamily(
            "denseflow_alias_seconds_since_agreed",
            "Seconds since the registry was last seen naming the version this replica serves (NaN: never).",
            value=math.nan if since is None else since,
        )
        yield GaugeMetricFamily(
            "denseflow_registry_stale", "1 while the tracking server does not answer the replica's polls.",
            value=1.0 if watch.stale else 0.0,
        )  # fmt: skip


class ServiceMetrics:
    """The counters and histogram one app updates, and the text ``/metrics`` answers with."""

    def __init__(self, searcher: Searcher, replica: Replica | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "denseflow_search_requests", "Search requests, by mode.", ["mode"], registry=self.registry
        )
        self.errors = Counter(
            "denseflow_search_errors",
            "Search requests answered with an error status, by mode and status.",
            ["mode", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "denseflow_search_latency_seconds",
            "Time to answer a search request, by mode.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unauthorized = Counter(
            "denseflow_unauthorized_requests",
            "Requests refused for a missing or wrong API key.",
            registry=self.registry,
        )
        self.registry.register(_ServedCollector(searcher, replica))

    def observe(self, mode: str | None, status: int, seconds: float) -> None:
        label = mode or UNKNOWN_MODE
        self.requests.labels(label).inc()
        if status >= 400:
            self.errors.labels(label, str(status)).inc()
        self.latency.labels(label).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The body and content type of a ``/metrics`` answer."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
