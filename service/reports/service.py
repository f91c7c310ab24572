"""Escalation and cost reports, straight from the ledger, scoped to one team or (for the admin) all teams.

Every figure is an exact aggregate of rows: counts are integers, money is NUMERIC summed in PostgreSQL,
percentiles are nearest-rank (`percentile_disc`), and ratios are quantized to fixed places. A request
and all of its attempts count in the period of the request's `created_at` (UTC).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.cascade.policy import EscalationReason
from service.core.database import Database
from service.core.errors import InvalidInput
from service.money.catalog import Catalog, TokenUsage
from service.tenancy.keys import Scope

RATE_PLACES = Decimal("0.000001")
PCT_PLACES = Decimal("0.01")
MONEY_PLACES = Decimal("0.0000000001")
TOKEN_KINDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
MAX_SPAN = timedelta(days=400)
MAX_HOURLY_SPAN = timedelta(days=31)
MAX_CATEGORIES = 200
# The token mix used for the break-even rate when the window has no cheap-stage tokens.
NOMINAL_MIX = TokenUsage(input=1000, output=50)

EscalationGrouping = Literal["hour", "day", "task", "model", "label", "team"]
CostGrouping = Literal["day", "model", "task", "team"]
ESCALATION_GROUPINGS: tuple[str, ...] = ("hour", "day", "task", "model", "label", "team")
COST_GROUPINGS: tuple[str, ...] = ("day", "model", "task", "team")


def ratio(part: int | Decimal, whole: int | Decimal, places: Decimal = RATE_PLACES) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(places, ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval [start, end)."""

    start: datetime
    end: datetime

    @classmethod
    def parse(cls, start: str | None, end: str | None, now: datetime, default_days: int = 7) -> Window:
        end_at = parse_instant(end, "end") if end else now
        try:
            start_at = parse_instant(start, "start") if start else end_at - timedelta(days=default_days)
        except OverflowError:
            raise InvalidInput("`start` is before the first representable instant", field="start") from None
        if start_at >= end_at:
            raise InvalidInput("`start` must be before `end`", field="start")
        if end_at - start_at > MAX_SPAN:
            raise InvalidInput(f"a window may span at most {MAX_SPAN.days} days", field="start")
        return cls(start_at, end_at)

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end}


def parse_instant(value: str, name: str) -> datetime:
    """An ISO 8601 date or date-time; a date means its midnight, and a time without an offset is UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise InvalidInput(f"`{name}` is not an ISO 8601 date or date-time: {value!r}", field=name) from None
    except OverflowError:
        raise InvalidInput(f"`{name}` is outside the years 1 to 9999 in UTC: {value!r}", field=name) from None


def parse_since(value: str, now: datetime) -> datetime:
    """`7d`, `24h` or `30m` before now, or an ISO 8601 instant."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if value[:-1].isdigit() and value[-1:] in units:
        return now - timedelta(**{units[value[-1]]: int(value[:-1])})
    return parse_instant(value, "since")


def _bucket_sql(group_by: str, created: str) -> str:
    return {
        "hour": f"date_trunc('hour', {created} AT TIME ZONE 'UTC')",
        "day": f"({created} AT TIME ZONE 'UTC')::date",
        "task": "task_hash",
        "model": "cheap_model",
        "label": "label",
        "team": "team_id",
    }[group_by]


def _time_keys(group_by: str, window: Window) -> list[Any]:
    """Every hour or day bucket the window touches, so a chart shows quiet periods as zero."""
    if group_by == "day":
        day, last = window.start.date(), (window.end - timedelta(microseconds=1)).date()
        return [day + timedelta(days=i) for i in range((last - day).days + 1)]
    hour = window.start.replace(minute=0, second=0, microsecond=0, tzinfo=None)
    keys = []
    while hour < window.end.replace(tzinfo=None):
        keys.append(hour)
        hour += timedelta(hours=1)
    return keys


def _key_out(group_by: str, key: Any, teams: dict[uuid.UUID, str]) -> str | None:
    if key is None:
        return None
    if group_by == "hour":
        return f"{key.isoformat()}Z"
    if group_by == "day":
        return str(key.isoformat())
    if group_by == "team":
        return teams.get(key, str(key))
    return str(key)


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


_REASONS = [str(r) for r in EscalationReason]


def _with_totals(columns: dict[str, str], keys: str, inner: str, total_keys: str = "") -> str:
    """Aggregate `inner` per bucket, then add the totals row by summing the buckets.

    Every column is additive, and summing the few bucket rows lets the per-bucket aggregation run in parallel
    (GROUPING SETS would not). An empty window has no totals row.
    """
    per = ",\n".join(f"{expr} AS {name}" for name, expr in columns.items())
    totals = ",\n".join(
        f"sum({name})" + ("" if name.endswith("_sum") or name == "cost_usd" else "::bigint") + f" AS {name}"
        for name in columns
    )
    kept = {k.strip() for k in total_keys.split(",")}
    select_total = ", ".join(k.strip() if k.strip() in kept else "NULL" for k in keys.split(","))
    return f"""
        WITH per AS (SELECT {keys}, {per} FROM ({inner}) r GROUP BY {keys})
        SELECT {keys}, false AS is_total, {", ".join(columns)} FROM per
        UNION ALL
        SELECT {select_total}, true, {totals} FROM per {f"GROUP BY {total_keys}" if total_keys else ""}
        HAVING count(*) > 0
    """


def _escalation_sql(group_by: str, scope: Scope) -> str:
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
        SELECT {_bucket_sql(group_by, "created_at")} AS b, status, escalated, escalation_reason,
            cheap_confidence, cheap_label, label, cache_hit
        FROM requests
        WHERE created_at >= :start AND created_at < :end AND status <> 'pending' AND eval_run_id IS NULL{scope.sql()}
    """
    return _with_totals(columns, "b", inner)


def _escalation_bucket(key: str | None, row: Any) -> EscalationBucket:
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


class Reports:
    def __init__(
        self, db: Database, catalog: Catalog, cheap_model: str, strong_model: str, concurrency: int = 2
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.cheap_model = cheap_model
        self.strong_model = strong_model
        # Reports scan a lot; at most this many run at once, so they cannot take the connections that the
        # money path (reserve, settle) needs.
        self.slots = asyncio.Semaphore(concurrency)

    async def escalations(self, scope: Scope, window: Window, group_by: str) -> EscalationReport:
        _check_grouping(group_by, ESCALATION_GROUPINGS, scope, window)
        params = window.params() | scope.params()
        async with self.slots, self.db.snapshot() as session:
            rows = (await session.execute(text(_escalation_sql(group_by, scope)), params)).all()
            teams = await _team_names(session) if group_by == "team" else {}
            by_key = {row.b: row for row in rows if not row.is_total}
            keys, truncated = _ordered_keys(group_by, window, by_key, lambda r: r.requests, teams)
            tasks = await _tasks(session, keys, window, scope) if group_by == "task" else {}
        total = next((row for row in rows if row.is_total), None)
        buckets = []
        for key in keys:
            row = by_key.get(key)
            bucket = (
                _escalation_bucket(_key_out(group_by, key, teams), row)
                if row is not None
                else EscalationBucket(_key_out(group_by, key, teams))
            )
            bucket.task = tasks.get(key)
            buckets.append(bucket)
        return EscalationReport(
            start=window.start,
            end=window.end,
            group_by=group_by,
            team=scope.team_name,
            buckets=buckets,
            totals=_escalation_bucket(None, total) if total is not None else EscalationBucket(None),
            truncated=truncated,
        )

    async def costs(self, scope: Scope, window: Window, group_by: str) -> CostReport:
        _check_grouping(group_by, COST_GROUPINGS, scope, window)
        params = window.params() | scope.params()
        per_request = None if group_by == "model" else group_by  # model buckets come from the attempts
        async with self.slots, self.db.snapshot() as session:
            request_rows = (await session.execute(text(_request_cost_sql(per_request, scope)), params)).all()
            attempt_rows = (await session.execute(text(_attempt_cost_sql(group_by, scope)), params)).all()
            model_rows = (
                (await session.execute(text(_model_request_sql(scope)), params)).all() if group_by == "model" else []
            )
            teams = await _team_names(session) if group_by == "team" else {}
            requests_by_key = {row.b: row for row in request_rows if not row.is_total}
            by_key = {row.b: row for row in model_rows} if group_by == "model" else requests_by_key
            if group_by == "model":
                by_key |= {row.model: None for row in attempt_rows if not row.is_total and row.model not in by_key}
            keys, truncated = _ordered_keys(
                group_by, window, by_key, lambda r: r.requests if r is not None else 0, teams
            )
            tasks = await _tasks(session, keys, window, scope) if group_by == "task" else {}

        models_by_key: dict[Any, dict[str, ModelCost]] = {}
        total_models: dict[str, ModelCost] = {}
        cheap_tokens = dict.fromkeys(TOKEN_KINDS, 0)
        for row in attempt_rows:
            target = total_models if row.is_total else models_by_key.setdefault(row.b, {})
            spend = target.setdefault(row.model, ModelCost(row.model))
            spend.attempts += row.attempts
            spend.cost_usd += row.cost_usd
            for kind in TOKEN_KINDS:
                spend.tokens[kind] += getattr(row, kind)
                if row.is_total and row.stage == "cheap":
                    cheap_tokens[kind] += getattr(row, kind)

        buckets = []
        for key in keys:
            found = by_key.get(key)
            bucket = _cost_bucket(_key_out(group_by, key, teams), found, counterfactual=group_by != "model")
            bucket.models = sorted(models_by_key.get(key, {}).values(), key=lambda m: m.model)
            bucket.task = tasks.get(key)
            buckets.append(bucket)
        total_row = next((row for row in request_rows if row.is_total), None)
        totals = _cost_bucket(None, total_row, counterfactual=True)
        totals.models = sorted(total_models.values(), key=lambda m: m.model)

        observed_rate = ratio(total_row.escalated, total_row.decided) if total_row is not None else None
        break_even = self.break_even(cheap_tokens, observed_rate)
        warnings = []
        if break_even.observed_rate is not None and break_even.observed_rate > break_even.rate:
            warnings.append(
                f"the escalation rate {break_even.observed_rate:.2%} is past the break-even rate "
                f"{break_even.rate:.2%}: the cascade costs more than sending every request to {self.strong_model}"
            )
        return CostReport(
            start=window.start,
            end=window.end,
            group_by=group_by,
            team=scope.team_name,
            buckets=buckets,
            totals=totals,
            break_even=break_even,
            warnings=warnings,
            truncated=truncated,
        )

    def break_even(self, cheap_tokens: dict[str, int], observed_rate: Decimal | None) -> BreakEven:
        """The escalation rate at which the cascade costs what the strong model alone would.

        A request costs c + e*s in the cascade and s alone, for the same tokens at today's prices of the
        current pair, so the cascade saves money while e < 1 - c/s. The window's cheap-stage token mix is
        used, or a nominal one when the window has none.
        """
        usage = TokenUsage(**{kind: cheap_tokens[kind] for kind in TOKEN_KINDS})
        basis: Literal["observed", "nominal"] = "observed"
        if usage.prompt_tokens + usage.output == 0:
            usage, basis = NOMINAL_MIX, "nominal"
        now = datetime.now(UTC)
        cheap = self.catalog.price(self.cheap_model, now).cost(usage)
        strong = self.catalog.price(self.strong_model, now).cost(usage)
        rate = (1 - cheap / strong).quantize(RATE_PLACES, ROUND_HALF_EVEN)
        return BreakEven(self.cheap_model, self.strong_model, rate, basis, observed_rate)


def _check_grouping(group_by: str, allowed: Sequence[str], scope: Scope, window: Window) -> None:
    if group_by not in allowed:
        raise InvalidInput(f"`group_by` must be one of {', '.join(allowed)}", field="group_by")
    if group_by == "team" and not scope.is_admin:
        raise InvalidInput("only the admin can group by team", field="group_by")
    if group_by == "hour" and window.end - window.start > MAX_HOURLY_SPAN:
        raise InvalidInput(f"hourly buckets cover at most {MAX_HOURLY_SPAN.days} days", field="group_by")


def _ordered_keys(
    group_by: str, window: Window, by_key: dict[Any, Any], size: Any, teams: dict[uuid.UUID, str]
) -> tuple[list[Any], bool]:
    """Time buckets in order with the gaps filled; other buckets largest first (ties by the key shown), at
    most MAX_CATEGORIES."""
    if group_by in ("hour", "day"):
        return _time_keys(group_by, window), False
    keys = sorted(by_key, key=lambda k: (-size(by_key[k]), _key_out(group_by, k, teams) or ""))
    return keys[:MAX_CATEGORIES], len(keys) > MAX_CATEGORIES


def _request_cost_sql(group_by: str | None, scope: Scope) -> str:
    """Per bucket and in total; with `group_by` None, the total alone (one sort for the percentiles, not two)."""
    bucket = "NULL" if group_by is None else _bucket_sql(group_by, "created_at")
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


def _attempt_cost_sql(group_by: str, scope: Scope) -> str:
    bucket = "model" if group_by == "model" else _bucket_sql(group_by, "request_created_at")
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
    return _with_totals(columns, "b, model, stage", inner, total_keys="model, stage")


def _model_request_sql(scope: Scope) -> str:
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


def _cost_bucket(key: str | None, row: Any, *, counterfactual: bool) -> CostBucket:
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


async def _team_names(session: AsyncSession) -> dict[uuid.UUID, str]:
    return {row.id: row.name for row in await session.execute(text("SELECT id, name FROM teams"))}


async def _tasks(session: AsyncSession, hashes: list[Any], window: Window, scope: Scope) -> dict[Any, dict[str, Any]]:
    """The label set and instructions behind each task hash (one example row per hash), and for a named task's
    version (whose hash is its own) its name and version."""
    if not hashes:
        return {}
    rows = await session.execute(
        text(
            f"""
            SELECT h.task_hash, r.labels, r.instructions, t.name, t.version
            FROM unnest(CAST(:hashes AS text[])) AS h(task_hash)
            CROSS JOIN LATERAL (
                SELECT labels, instructions, task_id FROM requests
                WHERE task_hash = h.task_hash AND created_at >= :start AND created_at < :end{scope.sql()}
                LIMIT 1
            ) r
            LEFT JOIN tasks t ON t.id = r.task_id
            """
        ),
        {"hashes": [str(h) for h in hashes], **window.params(), **scope.params()},
    )
    return {
        row.task_hash: {
            "labels": row.labels,
            "instructions": row.instructions,
            "name": row.name,
            "version": row.version,
        }
        for row in rows
    }


def day_window(days: int, now: datetime) -> Window:
    """The last `days` whole UTC days up to and including today."""
    today = now.date()
    start = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), UTC)
    return Window(start, datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC))


@dataclass(frozen=True)
class HistogramBin:
    lower: Decimal
    upper: Decimal
    counts: dict[str, int]


async def _histogram_rows(db: Database, sql: str, params: dict[str, Any]) -> list[Any]:
    async with db.transaction() as session:
        return list((await session.execute(text(sql), params)).all())


async def confidence_histogram(db: Database, scope: Scope, window: Window, bins: int = 20) -> list[HistogramBin]:
    """The cheap model's confidence in equal bins over [0, 1], split by whether the request escalated."""
    rows = await _histogram_rows(
        db,
        f"""
        SELECT least(width_bucket(cheap_confidence, 0, 1, :bins), :bins) AS bin, escalated, count(*) AS n
        FROM requests
        WHERE created_at >= :start AND created_at < :end AND status <> 'pending'
            AND cheap_confidence IS NOT NULL AND eval_run_id IS NULL{scope.sql()}
        GROUP BY 1, 2
        """,
        {"bins": bins, **window.params(), **scope.params()},
    )
    width = Decimal(1) / bins
    out = [HistogramBin(width * i, width * (i + 1), {"kept": 0, "escalated": 0}) for i in range(bins)]
    for row in rows:
        out[row.bin - 1].counts["escalated" if row.escalated else "kept"] += row.n
    return out


async def cost_histogram(db: Database, scope: Scope, window: Window, bins: int = 20) -> list[HistogramBin]:
    """Cost per request in equal bins from 0 to the window's most expensive request."""
    rows = await _histogram_rows(
        db,
        f"""
        WITH w AS (
            SELECT cost_usd FROM requests WHERE created_at >= :start AND created_at < :end{scope.sql()}
        ), m AS (SELECT max(cost_usd) AS hi FROM w)
        SELECT least(width_bucket(cost_usd, 0, m.hi, :bins), :bins) AS bin, m.hi, count(*) AS n
        FROM w, m WHERE m.hi > 0
        GROUP BY 1, 2
        """,
        {"bins": bins, **window.params(), **scope.params()},
    )
    if not rows:
        return []
    width = rows[0].hi / bins
    out = [HistogramBin(width * i, width * (i + 1), {"requests": 0}) for i in range(bins)]
    for row in rows:
        out[row.bin - 1].counts["requests"] += row.n
    return out
