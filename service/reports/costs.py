"""The cost report: spend per bucket and per model, the percentiles, the all-strong counterfactual and savings,
and the break-even escalation rate of the pair."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from service.money.catalog import TokenUsage
from service.reports.buckets import (
    bucket_sql,
    with_totals,
)
from service.reports.window import MONEY_PLACES, PCT_PLACES, ratio
from service.tenancy.keys import Scope

TOKEN_KINDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")


# The token mix used for the break-even rate when the window has no cheap-stage tokens.
NOMINAL_MIX = TokenUsage(input=1000, output=50)


@dataclass
class ModelCost:
    model: str
    attempts: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))
    cost_usd: Decimal = Decimal(0)


@dataclass
class CostBucket:
    key: str | None
    requests: int = 0
    cache_hits: int = 0
    cost_usd: Decimal = Decimal(0)
    shadow_cost_usd: Decimal = Decimal(0)
    eval_cost_usd: Decimal = Decimal(0)
    cost_mean_usd: Decimal | None = None
    cost_p50_usd: Decimal | None = None
    cost_p95_usd: Decimal | None = None
    all_strong_cost_usd: Decimal | None = None
    savings_usd: Decimal | None = None
    savings_pct: Decimal | None = None
    models: list[ModelCost] = field(default_factory=list)
    task: dict[str, Any] | None = None


@dataclass(frozen=True)
class BreakEven:
    cheap_model: str
    strong_model: str
    rate: Decimal
    basis: Literal["observed", "nominal"]
    observed_rate: Decimal | None


@dataclass(frozen=True)
class CostReport:
    start: datetime
    end: datetime
    group_by: str
    team: str | None
    buckets: list[CostBucket]
    totals: CostBucket
    break_even: BreakEven
    warnings: list[str]
    truncated: bool


def request_cost_sql(group_by: str | None, scope: Scope) -> str:
    """Per bucket and in total; with `group_by` None, the total alone (one sort for the percentiles, not two)."""
    bucket = "NULL" if group_by is None else bucket_sql(group_by, "created_at")
    grouping = "" if group_by is None else "GROUP BY GROUPING SETS ((b), ())"
    is_total = "true" if group_by is None else "grouping(b) = 1"
    return f"""
        SELECT {"NULL" if group_by is None else "b"} AS b, {is_total} AS is_total,
            count(*) FILTER (WHERE NOT is_eval) AS requests,
            coalesce(sum(cost_usd) FILTER (WHERE NOT is_eval), 0) AS cost_usd,
            coalesce(sum(all_strong_cost_usd) FILTER (WHERE NOT is_eval), 0) AS all_strong_cost_usd,
            percentile_disc(0.5) WITHIN GROUP (ORDER BY cost_usd) FILTER (WHERE NOT is_eval) AS p50,
            percentile_disc(0.95) WITHIN GROUP (ORDER BY cost_usd) FILTER (WHERE NOT is_eval) AS p95,
            count(*) FILTER (WHERE escalated AND NOT is_eval) AS escalated,
            count(*) FILTER (WHERE (escalated OR (status = 'ok' AND NOT cache_hit)) AND NOT is_eval) AS decided,
            count(*) FILTER (WHERE cache_hit) AS cache_hits, sum(shadow_cost_usd) AS shadow_cost_usd,
            coalesce(sum(cost_usd) FILTER (WHERE is_eval), 0) AS eval_cost_usd
        FROM (
            SELECT {bucket} AS b, cost_usd, all_strong_cost_usd, escalated, status, cache_hit, shadow_cost_usd,
                eval_run_id IS NOT NULL AS is_eval
            FROM requests WHERE created_at >= :start AND created_at < :end{scope.sql()}
        ) r
        {grouping}
    """


def attempt_cost_sql(group_by: str, scope: Scope) -> str:
    bucket = "model" if group_by == "model" else bucket_sql(group_by, "request_created_at")
    columns = {
        "attempts": "count(*)",
        "cost_usd": "coalesce(sum(cost_usd), 0)",
        **{kind: f"coalesce(sum({kind}_tokens), 0)" for kind in TOKEN_KINDS},
    }
    inner = f"""
        SELECT {bucket} AS b, model, stage, cost_usd, {", ".join(f"{kind}_tokens" for kind in TOKEN_KINDS)}
        FROM attempts
        WHERE request_created_at >= :start AND request_created_at < :end AND state = 'settled'{scope.sql()}
    """
    return with_totals(columns, "b, model, stage", inner, total_keys="model, stage")


def model_request_sql(scope: Scope) -> str:
    """Per model: the requests that called it, and what each of them spent on it."""
    return f"""
        SELECT model AS b, count(*) AS requests, sum(c) AS cost_usd, NULL AS all_strong_cost_usd,
            percentile_disc(0.5) WITHIN GROUP (ORDER BY c) AS p50,
            percentile_disc(0.95) WITHIN GROUP (ORDER BY c) AS p95
        FROM (
            SELECT model, request_id, sum(cost_usd) AS c FROM attempts
            WHERE request_created_at >= :start AND request_created_at < :end AND state = 'settled'{scope.sql()}
            GROUP BY model, request_id
        ) x
        GROUP BY model
    """


def cost_bucket(key: str | None, row: Any, *, counterfactual: bool) -> CostBucket:
    if row is None or not row.requests:  # the grand total of an empty window is a row of NULL sums
        empty = CostBucket(key, eval_cost_usd=getattr(row, "eval_cost_usd", None) or Decimal(0))
        if counterfactual:
            empty.all_strong_cost_usd = empty.savings_usd = Decimal(0)
        return empty
    bucket = CostBucket(
        key=key,
        requests=row.requests,
        cache_hits=getattr(row, "cache_hits", 0),
        shadow_cost_usd=getattr(row, "shadow_cost_usd", None) or Decimal(0),
        eval_cost_usd=getattr(row, "eval_cost_usd", None) or Decimal(0),
        cost_usd=row.cost_usd,
        cost_mean_usd=ratio(row.cost_usd, row.requests, MONEY_PLACES),
        cost_p50_usd=row.p50,
        cost_p95_usd=row.p95,
    )
    if counterfactual:
        bucket.all_strong_cost_usd = row.all_strong_cost_usd
        bucket.savings_usd = row.all_strong_cost_usd - row.cost_usd
        bucket.savings_pct = ratio(100 * bucket.savings_usd, row.all_strong_cost_usd, PCT_PLACES)
    return bucket
