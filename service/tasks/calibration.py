"""Calibration of a named task's version: how far its cheap model's confidence can be trusted, from the ledger.

A *pair* is a cheap answer whose strong answer is also known: an escalated request whose strong model answered
(every request below the threshold escalates, so these are a census of the low-confidence range), or a kept
request that shadow calibration sampled (a random sample of the kept range). Agreement means the two labels
are the same; the strong model stands in for the truth.

The requests are counted per confidence percentile (bucket k holds confidences in [k/100, (k+1)/100), 1.0 in
bucket 100). In each bucket the disagreements of all its requests are estimated by stratum: the escalated
ones from that bucket's escalated pairs, the kept ones from its shadow pairs; a stratum without pairs of its own
takes the rate of all pairs of its kind (all escalated pairs, or all shadow pairs), and is unknown without any.
From that, for every threshold k/100:
- escalation rate = (defective cheap answers + requests below it) / requests;
- agreement with the strong model = 1 - (estimated disagreements of the requests at or above it) / requests
  (an escalated request gets the strong model's answer, so it agrees by definition);
- cost per 1,000 requests = 1,000 x (mean cheap-stage cost + escalation rate x mean cost of a strong call).
Both rise with the threshold, so the recommended threshold for a target agreement is the lowest that reaches
it: the cheapest. The current point is the version as it ran (its requests escalated or kept as they were, at
its exact threshold or one a request raised). The estimated accuracy of kept answers is the shadow pairs'
agreement with a Wilson 95% interval. Every ratio is rounded half-even to 6 places.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import text

from service.core.database import Database
from service.reports.window import Window
from service.tables import TaskVersion

PLACES = Decimal("0.000001")
MONEY_PLACES = Decimal("0.0000000001")
BUCKETS = 101  # confidence percentiles 0..100
Z95 = 1.959964


def _q(value: Decimal) -> Decimal:
    return value.quantize(PLACES, ROUND_HALF_EVEN)


@dataclass
class Bucket:
    """One confidence percentile of a version's decided requests with a valid cheap answer."""

    requests: int = 0
    escalated: int = 0  # escalated for low confidence (with or without a strong answer)
    escalated_pairs: int = 0
    escalated_agree: int = 0
    shadow_pairs: int = 0
    shadow_agree: int = 0
    confidence_sum: Decimal = Decimal(0)  # over the pairs


@dataclass(frozen=True)
class Ledger:
    """What the calibration needs of the ledger, for one version in one window."""

    buckets: list[Bucket]
    requests: int  # decided requests (answered or escalated; not cache hits)
    defects: int  # decided requests whose cheap answer was unusable (they escalate at any threshold)
    cheap_cost: Decimal  # their cheap-stage attempts
    strong_cost: Decimal  # their strong-stage and shadow attempts
    strong_calls: int  # requests that called the strong model (escalated ones, and shadow calls)


@dataclass(frozen=True)
class Bin:
    lower: Decimal
    upper: Decimal
    requests: int
    escalated_pairs: int
    shadow_pairs: int
    mean_confidence: Decimal | None  # of the pairs
    agreement: Decimal | None  # estimated, of all the bin's requests


@dataclass(frozen=True)
class Point:
    threshold: Decimal
    escalation_rate: Decimal
    agreement: Decimal | None
    cost_per_1000_usd: Decimal


@dataclass(frozen=True)
class Accuracy:
    pairs: int
    agreement: Decimal | None
    low: Decimal | None
    high: Decimal | None


@dataclass(frozen=True)
class Calibration:
    version: TaskVersion
    window: Window
    target: Decimal
    requests: int
    pairs: int
    bins: list[Bin]
    kept_accuracy: Accuracy
    current: Point | None
    recommended: Point | None
    sweep: list[Point] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def wilson(agree: int, n: int) -> tuple[Decimal, Decimal]:
    """The Wilson score interval at 95% for agree/n."""
    p, z2 = agree / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return _q(Decimal(max(0.0, centre - half))), _q(Decimal(min(1.0, centre + half)))


def _pooled(buckets: list[Bucket], *, escalated: bool) -> Decimal | None:
    """The disagreement rate of all escalated pairs, or of all shadow pairs; None without any."""
    pairs = sum(b.escalated_pairs if escalated else b.shadow_pairs for b in buckets)
    if not pairs:
        return None
    agree = sum(b.escalated_agree if escalated else b.shadow_agree for b in buckets)
    return Decimal(pairs - agree) / pairs


def _rate(pairs: int, agree: int, pooled: Decimal | None) -> Decimal | None:
    """A stratum's disagreement rate: its own pairs', else the pooled rate of its kind (None if neither)."""
    return Decimal(pairs - agree) / pairs if pairs else pooled


def _strata(bucket: Bucket, pooled_escalated: Decimal | None, pooled_kept: Decimal | None) -> Strata:
    return Strata(
        escalated=bucket.escalated,
        kept=bucket.requests - bucket.escalated,
        escalated_rate=_rate(bucket.escalated_pairs, bucket.escalated_agree, pooled_escalated),
        kept_rate=_rate(bucket.shadow_pairs, bucket.shadow_agree, pooled_kept),
    )


@dataclass(frozen=True)
class Strata:
    """A bucket's requests as they went (escalated or kept) and each stratum's estimated disagreement rate."""

    escalated: int
    kept: int
    escalated_rate: Decimal | None
    kept_rate: Decimal | None

    def if_kept(self) -> Decimal | None:
        """Estimated disagreements of all the bucket's requests, were they all kept."""
        return _sum((self.escalated, self.escalated_rate), (self.kept, self.kept_rate))

    def as_they_went(self) -> Decimal | None:
        """Estimated disagreements of the requests that were kept (the escalated ones got the strong answer)."""
        return _sum((self.kept, self.kept_rate))


def _sum(*parts: tuple[int, Decimal | None]) -> Decimal | None:
    total = Decimal(0)
    for count, rate in parts:
        if count:
            if rate is None:
                return None
            total += count * rate
    return total


def compute(version: TaskVersion, window: Window, ledger: Ledger, target: Decimal, bins: int) -> Calibration:
    buckets = ledger.buckets
    pooled_kept = _pooled(buckets, escalated=False)
    strata = [_strata(b, _pooled(buckets, escalated=True), pooled_kept) for b in buckets]
    disagree = [s.if_kept() for s in strata]
    n = ledger.requests
    notes = []
    if not n:
        notes.append("no decided requests of this version in the window")
    if pooled_kept is None:
        notes.append("no shadow pairs: set a shadow rate on the task to estimate kept answers' agreement")
    mean_cheap = ledger.cheap_cost / n if n else Decimal(0)
    mean_strong = ledger.strong_cost / ledger.strong_calls if ledger.strong_calls else Decimal(0)

    sweep = []
    for k in range(BUCKETS):
        below = ledger.defects + sum(b.requests for b in buckets[:k])
        upper = disagree[k:]
        agreement = None
        if n and all(d is not None for d in upper):
            agreement = _q(1 - sum((d for d in upper if d is not None), Decimal(0)) / n)
        rate = _q(Decimal(below) / n) if n else Decimal(0)
        cost = (1000 * (mean_cheap + rate * mean_strong)).quantize(MONEY_PLACES, ROUND_HALF_EVEN)
        sweep.append(Point(Decimal(k) / 100, rate, agreement, cost))

    recommended = next((p for p in sweep if p.agreement is not None and p.agreement >= target), None)
    if n and recommended is None:
        notes.append(f"no threshold reaches an agreement of {target} on this data")

    shadow_pairs = sum(b.shadow_pairs for b in buckets)
    shadow_agree = sum(b.shadow_agree for b in buckets)
    if shadow_pairs:
        low, high = wilson(shadow_agree, shadow_pairs)
        accuracy = Accuracy(shadow_pairs, _q(Decimal(shadow_agree) / shadow_pairs), low, high)
    else:
        accuracy = Accuracy(0, None, None, None)

    out_bins = []
    for i in range(bins):
        lo, hi = Decimal(i) / bins, Decimal(i + 1) / bins
        members = [k for k in range(BUCKETS) if lo <= Decimal(k) / 100 < hi or (i == bins - 1 and k == 100)]
        group = [buckets[k] for k in members]
        requests = sum(b.requests for b in group)
        pairs = sum(b.escalated_pairs + b.shadow_pairs for b in group)
        estimated = [disagree[k] for k in members if buckets[k].requests]
        agreement = None
        if requests and all(d is not None for d in estimated):
            agreement = _q(1 - sum((d for d in estimated if d is not None), Decimal(0)) / requests)
        mean = _q(sum((b.confidence_sum for b in group), Decimal(0)) / pairs) if pairs else None
        out_bins.append(
            Bin(
                lo,
                hi,
                requests,
                sum(b.escalated_pairs for b in group),
                sum(b.shadow_pairs for b in group),
                mean,
                agreement,
            )
        )
    return Calibration(
        version=version,
        window=window,
        target=target,
        requests=n,
        pairs=sum(b.escalated_pairs + b.shadow_pairs for b in buckets),
        bins=out_bins,
        kept_accuracy=accuracy,
        current=_current(version, ledger, strata, mean_cheap, mean_strong) if n else None,
        recommended=recommended,
        sweep=sweep,
        notes=notes,
    )


def _current(
    version: TaskVersion, ledger: Ledger, strata: list[Strata], mean_cheap: Decimal, mean_strong: Decimal
) -> Point:
    """The version as it ran: its requests escalated or kept as they were (some may have raised the threshold)."""
    n = ledger.requests
    rate = _q(Decimal(ledger.defects + sum(s.escalated for s in strata)) / n)
    kept = [s.as_they_went() for s in strata]
    agreement = None if any(d is None for d in kept) else _q(1 - sum((d or Decimal(0) for d in kept), Decimal(0)) / n)
    cost = (1000 * (mean_cheap + rate * mean_strong)).quantize(MONEY_PLACES, ROUND_HALF_EVEN)
    return Point(version.threshold, rate, agreement, cost)


# The version's decided requests in the window: answered, or escalated (a failed strong stage included); a cache
# hit is a repeat, not a decision.
_DECIDED = """
    r.task_id = :task_id AND r.created_at >= :start AND r.created_at < :end AND NOT r.cache_hit
    AND r.eval_run_id IS NULL AND (r.status = 'ok' OR r.escalated)
"""

_BUCKETS_SQL = f"""
    SELECT least(floor(r.cheap_confidence * 100), 100)::int AS k,
           count(*) AS requests,
           count(*) FILTER (WHERE r.escalated) AS escalated,
           count(*) FILTER (WHERE r.escalated AND r.status = 'ok') AS escalated_pairs,
           count(*) FILTER (WHERE r.escalated AND r.status = 'ok' AND r.label = r.cheap_label) AS escalated_agree,
           count(*) FILTER (WHERE NOT r.escalated AND r.shadow_label IS NOT NULL) AS shadow_pairs,
           count(*) FILTER (WHERE NOT r.escalated AND r.shadow_label = r.cheap_label) AS shadow_agree,
           coalesce(sum(r.cheap_confidence) FILTER (
               WHERE (r.escalated AND r.status = 'ok') OR (NOT r.escalated AND r.shadow_label IS NOT NULL)
           ), 0) AS confidence_sum
    FROM requests r
    WHERE {_DECIDED} AND r.cheap_confidence IS NOT NULL
    GROUP BY 1
"""

_TOTALS_SQL = f"""
    SELECT count(*) AS requests,
           count(*) FILTER (WHERE r.cheap_confidence IS NULL) AS defects,
           coalesce(sum(a.cheap), 0) AS cheap_cost,
           coalesce(sum(a.strong), 0) + coalesce(sum(r.shadow_cost_usd), 0) AS strong_cost,
           count(*) FILTER (WHERE a.strong_calls > 0) + count(*) FILTER (WHERE a.shadow_calls > 0) AS strong_calls
    FROM requests r
    CROSS JOIN LATERAL (
        SELECT sum(cost_usd) FILTER (WHERE stage = 'cheap') AS cheap,
               sum(cost_usd) FILTER (WHERE stage = 'strong') AS strong,
               count(*) FILTER (WHERE stage = 'strong') AS strong_calls,
               count(*) FILTER (WHERE stage = 'shadow') AS shadow_calls
        FROM attempts WHERE request_id = r.id AND state = 'settled'
    ) a
    WHERE {_DECIDED}
"""


async def read_ledger(db: Database, version_id: uuid.UUID, window: Window) -> Ledger:
    params: dict[str, Any] = {"task_id": version_id, **window.params()}
    async with db.snapshot() as session:
        rows = (await session.execute(text(_BUCKETS_SQL), params)).all()
        totals = (await session.execute(text(_TOTALS_SQL), params)).one()
    buckets = [Bucket() for _ in range(BUCKETS)]
    for row in rows:
        buckets[row.k] = Bucket(
            row.requests,
            row.escalated,
            row.escalated_pairs,
            row.escalated_agree,
            row.shadow_pairs,
            row.shadow_agree,
            Decimal(row.confidence_sum),
        )
    return Ledger(
        buckets=buckets,
        requests=int(totals.requests),
        defects=int(totals.defects),
        cheap_cost=Decimal(totals.cheap_cost),
        strong_cost=Decimal(totals.strong_cost),
        strong_calls=int(totals.strong_calls),
    )


async def calibration(
    db: Database, version: TaskVersion, window: Window, target: Decimal, bins: int = 10
) -> Calibration:
    return compute(version, window, await read_ledger(db, version.id, window), target, bins)
