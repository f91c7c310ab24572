"""The reports service: escalation and cost reports, straight from the ledger, scoped to one team or (for the
admin) all teams; each family's SQL and buckets are in its own module (escalations, costs).

Every figure is an exact aggregate of rows: counts are integers, money is NUMERIC summed in PostgreSQL,
percentiles are nearest-rank (`percentile_disc`), and ratios are quantized to fixed places. A request
and all of its attempts count in the period of the request's `created_at` (UTC).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from sqlalchemy import text

from service.core.database import Database
from service.money.catalog import Catalog, TokenUsage
from service.reports.buckets import (
    COST_GROUPINGS,
    ESCALATION_GROUPINGS,
    check_grouping,
    key_out,
    ordered_keys,
    task_rows,
    team_names,
)
from service.reports.costs import (
    NOMINAL_MIX,
    TOKEN_KINDS,
    BreakEven,
    CostReport,
    ModelCost,
    attempt_cost_sql,
    cost_bucket,
    model_request_sql,
    request_cost_sql,
)
from service.reports.escalations import EscalationBucket, EscalationReport, escalation_bucket, escalation_sql
from service.reports.window import RATE_PLACES, Window, ratio
from service.tenancy.keys import Scope


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
        check_grouping(group_by, ESCALATION_GROUPINGS, scope, window)
        params = window.params() | scope.params()
        async with self.slots, self.db.snapshot() as session:
            rows = (await session.execute(text(escalation_sql(group_by, scope)), params)).all()
            teams = await team_names(session) if group_by == "team" else {}
            by_key = {row.b: row for row in rows if not row.is_total}
            keys, truncated = ordered_keys(group_by, window, by_key, lambda r: r.requests, teams)
            tasks = await task_rows(session, keys, window, scope) if group_by == "task" else {}
        total = next((row for row in rows if row.is_total), None)
        buckets = []
        for key in keys:
            row = by_key.get(key)
            bucket = (
                escalation_bucket(key_out(group_by, key, teams), row)
                if row is not None
                else EscalationBucket(key_out(group_by, key, teams))
            )
            bucket.task = tasks.get(key)
            buckets.append(bucket)
        return EscalationReport(
            start=window.start,
            end=window.end,
            group_by=group_by,
            team=scope.team_name,
            buckets=buckets,
            totals=escalation_bucket(None, total) if total is not None else EscalationBucket(None),
            truncated=truncated,
        )

    async def costs(self, scope: Scope, window: Window, group_by: str) -> CostReport:
        check_grouping(group_by, COST_GROUPINGS, scope, window)
        params = window.params() | scope.params()
        per_request = None if group_by == "model" else group_by  # model buckets come from the attempts
        async with self.slots, self.db.snapshot() as session:
            request_rows = (await session.execute(text(request_cost_sql(per_request, scope)), params)).all()
            attempt_rows = (await session.execute(text(attempt_cost_sql(group_by, scope)), params)).all()
            model_rows = (
                (await session.execute(text(model_request_sql(scope)), params)).all() if group_by == "model" else []
            )
            teams = await team_names(session) if group_by == "team" else {}
            requests_by_key = {row.b: row for row in request_rows if not row.is_total}
            by_key = {row.b: row for row in model_rows} if group_by == "model" else requests_by_key
            if group_by == "model":
                by_key |= {row.model: None for row in attempt_rows if not row.is_total and row.model not in by_key}
            keys, truncated = ordered_keys(
                group_by, window, by_key, lambda r: r.requests if r is not None else 0, teams
            )
            tasks = await task_rows(session, keys, window, scope) if group_by == "task" else {}

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
            bucket = cost_bucket(key_out(group_by, key, teams), found, counterfactual=group_by != "model")
            bucket.models = sorted(models_by_key.get(key, {}).values(), key=lambda m: m.model)
            bucket.task = tasks.get(key)
            buckets.append(bucket)
        total_row = next((row for row in request_rows if row.is_total), None)
        totals = cost_bucket(None, total_row, counterfactual=True)
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

