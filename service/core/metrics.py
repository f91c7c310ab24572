"""Prometheus metrics: counters the request path increments, and gauges read from the database at scrape time.

Counters and histograms are per process (with `cascade serve --workers N` they are summed across the workers
through prometheus_client's multiprocess directory). Cap and reservation gauges are read from PostgreSQL when
`/metrics` is scraped, so every replica reports the same, true figure. Money here is a float: metrics are for
watching; the ledger (NUMERIC) is the record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_KINDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")


class Tokens(Protocol):
    """An attempt's billed tokens of each kind (service.money.catalog.TokenUsage)."""

    @property
    def input(self) -> int: ...
    @property
    def cache_write_5m(self) -> int: ...
    @property
    def cache_write_1h(self) -> int: ...
    @property
    def cache_read(self) -> int: ...
    @property
    def output(self) -> int: ...


@dataclass(frozen=True)
class CapGauge:
    scope: str  # global or team
    period: str  # day or month
    team: str  # the team's name; "" for a global cap
    cap_usd: Decimal | None  # None: the team has no cap of its own for the period
    spent_usd: Decimal
    reserved_usd: Decimal


@dataclass(frozen=True)
class LedgerGauges:
    """What the database says at scrape time."""

    caps: list[CapGauge] = field(default_factory=list)
    reservations_held: int = 0
    reservations_held_usd: Decimal = Decimal(0)


class _Snapshot(Collector):
    def __init__(self, gauges: LedgerGauges | None) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cascade_database_up", "1 when the database answered this scrape, else 0")
        up.add_metric([], 0 if self.gauges is None else 1)
        yield up
        if self.gauges is None:
            return
        labels = ["scope", "period", "team"]
        limit = GaugeMetricFamily(
            "cascade_cap_limit_usd", "The cap of the current period (capped rows only)", labels=labels
        )
        remaining = GaugeMetricFamily(
            "cascade_cap_remaining_usd", "Cap minus spent minus reserved, current period (capped rows)", labels=labels
        )
        spent = GaugeMetricFamily("cascade_cap_spent_usd", "Spent in the current period", labels=labels)
        reserved = GaugeMetricFamily(
            "cascade_cap_reserved_usd", "Held by reservations in the current period", labels=labels
        )
        for cap in self.gauges.caps:
            key = [cap.scope, cap.period, cap.team]
            if cap.cap_usd is not None:
                limit.add_metric(key, float(cap.cap_usd))
                remaining.add_metric(key, float(max(cap.cap_usd - cap.spent_usd - cap.reserved_usd, Decimal(0))))
            spent.add_metric(key, float(cap.spent_usd))
            reserved.add_metric(key, float(cap.reserved_usd))
        yield from (limit, remaining, spent, reserved)
        held = GaugeMetricFamily("cascade_reservations_held", "Upstream attempts reserved and not yet settled")
        held.add_metric([], self.gauges.reservations_held)
        yield held
        held_usd = GaugeMetricFamily("cascade_reservations_held_usd", "The worst case those reservations hold")
        held_usd.add_metric([], float(self.gauges.reservations_held_usd))
        yield held_usd


class Metrics:
    """One set of instruments per runtime; nothing is registered globally."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cascade_requests",
            "Classification requests by outcome and answering model",
            ["outcome", "model"],
            registry=r,
        )
        self.escalations = Counter(
            "cascade_escalations", "Requests escalated to the strong model, by reason", ["reason"], registry=r
        )
        self.tokens = Counter("cascade_tokens", "Tokens billed, by model and kind", ["model", "kind"], registry=r)
        self.cost = Counter("cascade_cost_usd", "USD charged to the ledger, by model", ["model"], registry=r)
        self.attempts = Counter(
            "cascade_upstream_attempts",
            "Upstream attempts by model, stage and status (HTTP status, or timeout/connection/cancelled)",
            ["model", "stage", "status"],
            registry=r,
        )
        self.retries = Counter(
            "cascade_upstream_retries",
            "Upstream attempts that were retries, by the status retried",
            ["model", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "cascade_request_duration_seconds",
            "Classification latency, by outcome",
            ["outcome"],
            buckets=_SECONDS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "cascade_upstream_duration_seconds",
            "Latency of one upstream call, by model",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.cache_hits = Counter(
            "cascade_cache_hits", "Requests answered from the response cache (no upstream call)", registry=r
        )
        self.shadows = Counter(
            "cascade_shadow_requests",
            "Shadow calibration calls of the strong model, by result (agreed, disagreed, refused, failed, skipped)",
            ["result"],
            registry=r,
        )
        self.in_flight = Gauge(
            "cascade_requests_in_flight",
            "Classifications in progress in this process",
            registry=r,
            multiprocess_mode="livesum",
        )

    def attempt(
        self,
        model: str,
        stage: str,
        status: str,
        retry_of: str | None,
        usage: Tokens | None,
        cost: Decimal,
        latency_ms: int | None,
    ) -> None:
        self.attempts.labels(model, stage, status).inc()
        if retry_of is not None:
            self.retries.labels(model, retry_of).inc()
        if usage is not None:
            for kind in TOKEN_KINDS:
                if count := getattr(usage, kind):
                    self.tokens.labels(model, kind).inc(count)
        self.cost.labels(model).inc(float(cost))
        if latency_ms is not None:
            self.upstream_seconds.labels(model).observe(latency_ms / 1000)

    def charge(self, model: str, cost: Decimal) -> None:
        """A charge made without an answer (the sweeper's worst case)."""
        self.cost.labels(model).inc(float(cost))

    def cache_hit(self) -> None:
        self.cache_hits.inc()

    def shadow(self, result: str) -> None:
        self.shadows.labels(result).inc()

    def request(self, outcome: str, model: str | None, escalation: str | None, seconds: float) -> None:
        self.requests.labels(outcome, model or "").inc()
        if escalation is not None:
            self.escalations.labels(escalation).inc()
        self.request_seconds.labels(outcome).observe(seconds)

    def render(self, gauges: LedgerGauges | None) -> bytes:
        """The exposition text: this process's (or all workers') instruments, then the database gauges."""
        snapshot = CollectorRegistry(auto_describe=False)
        snapshot.register(_Snapshot(gauges))
        return _instruments(self.registry) + generate_latest(snapshot)


def _instruments(registry: CollectorRegistry) -> bytes:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(registry)
    merged = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(merged)


def status_label(http_status: int | None, outcome: str) -> str:
    """The status an attempt is counted under: its HTTP status, else what ended it."""
    return str(http_status) if http_status is not None else outcome
