"""The escalation report: per bucket, how many requests escalated, why, and what the strong model changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.cascade.policy import EscalationReason
from service.reports.buckets import (
    bucket_sql,
    with_totals,
)
from service.reports.window import ratio
from service.tenancy.keys import Scope


@dataclass
class EscalationBucket:
    key: str | None
    requests: int = 0
    answered: int = 0
    failed: int = 0
    refused: int = 0
    decided: int = 0
    escalated: int = 0
    cache_hits: int = 0
    escalation_rate: Decimal | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    cheap_answers: int = 0
    cheap_mean_confidence: Decimal | None = None
    compared: int = 0
    changed: int = 0
    changed_share: Decimal | None = None
    task: dict[str, Any] | None = None


@dataclass(frozen=True)
class EscalationReport:
    start: datetime
    end: datetime
    group_by: str
    team: str | None
    buckets: list[EscalationBucket]
    totals: EscalationBucket
    truncated: bool


_REASONS = [str(r) for r in EscalationReason]


def escalation_sql(group_by: str, scope: Scope) -> str:
    columns = {
        "requests": "count(*)",
        "answered": "count(*) FILTER (WHERE status = 'ok')",
        "failed": "count(*) FILTER (WHERE status = 'failed')",
        "refused": "count(*) FILTER (WHERE status = 'refused')",
        "decided": "count(*) FILTER (WHERE escalated OR (status = 'ok' AND NOT cache_hit))",
        "escalated": "count(*) FILTER (WHERE escalated)",
        "cache_hits": "count(*) FILTER (WHERE cache_hit)",
        **{f"reason_{r}": f"count(*) FILTER (WHERE escalated AND escalation_reason = '{r}')" for r in _REASONS},
        "cheap_answers": "count(cheap_confidence)",
        "cheap_confidence_sum": "sum(cheap_confidence)",
        "compared": "count(*) FILTER (WHERE escalated AND status = 'ok' AND cheap_label IS NOT NULL)",
        "changed": "count(*) FILTER (WHERE escalated AND status = 'ok' AND cheap_label IS NOT NULL "
        "AND label <> cheap_label)",
    }
    inner = f"""
        SELECT {bucket_sql(group_by, "created_at")} AS b, status, escalated, escalation_reason,
            cheap_confidence, cheap_label, label, cache_hit
        FROM requests
        WHERE created_at >= :start AND created_at < :end AND status <> 'pending' AND eval_run_id IS NULL{scope.sql()}
    """
    return with_totals(columns, "b", inner)


def escalation_bucket(key: str | None, row: Any) -> EscalationBucket:
    return EscalationBucket(
        key=key,
        requests=row.requests,
        answered=row.answered,
        failed=row.failed,
        refused=row.refused,
        decided=row.decided,
        escalated=row.escalated,
        cache_hits=row.cache_hits,
        escalation_rate=ratio(row.escalated, row.decided),
        reasons={r: getattr(row, f"reason_{r}") for r in _REASONS if getattr(row, f"reason_{r}")},
        cheap_answers=row.cheap_answers,
        cheap_mean_confidence=ratio(row.cheap_confidence_sum or 0, row.cheap_answers),
        compared=row.compared,
        changed=row.changed,
        changed_share=ratio(row.changed, row.compared),
    )
