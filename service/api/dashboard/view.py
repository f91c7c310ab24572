"""What the dashboard shows: one call that gathers a reader's reports, caps and recent requests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.core.errors import InvalidInput
from service.money.caps import UNCAPPED
from service.reports.audit import RequestFilter, list_requests
from service.reports.costs import CostReport
from service.reports.escalations import EscalationReport
from service.reports.histograms import HistogramBin, confidence_histogram, cost_histogram
from service.reports.window import day_window
from service.runtime import Runtime
from service.tasks.calibration import Calibration, calibration
from service.tenancy.keys import Scope

PERIODS = (1, 7, 30, 90)


@dataclass(frozen=True)
class CapView:
    label: str
    cap_usd: Decimal | None  # None: no cap of its own, spend still counted
    spent_usd: Decimal
    reserved_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal | None:
        return None if self.cap_usd is None else max(self.cap_usd - self.spent_usd - self.reserved_usd, Decimal(0))


@dataclass(frozen=True)
class TaskRow:
    task_hash: str
    labels: list[str]
    instructions: str | None
    name: str | None  # a named task's, with its version
    version: int | None
    requests: int
    escalation_rate: Decimal | None
    cheap_mean_confidence: Decimal | None
    changed_share: Decimal | None
    cost_usd: Decimal
    cost_mean_usd: Decimal | None
    savings_pct: Decimal | None


@dataclass(frozen=True)
class DashboardView:
    scope: Scope
    days: int
    start: datetime
    end: datetime
    escalations: EscalationReport
    costs: CostReport
    tasks: list[TaskRow]
    caps: list[CapView]
    cost_bins: list[HistogramBin]
    confidence_bins: list[HistogramBin]
    recent: list[Any]
    teams: list[str]


async def dashboard_view(runtime: Runtime, scope: Scope, days: int, now: datetime) -> DashboardView:
    window = day_window(days, now)
    reports = runtime.reports
    escalations = await reports.escalations(scope, window, "day")
    costs = await reports.costs(scope, window, "day")
    by_task = await reports.escalations(scope, window, "task")
    cost_by_task = {b.key: b for b in (await reports.costs(scope, window, "task")).buckets}
    tasks = []
    for bucket in by_task.buckets:
        spend = cost_by_task.get(bucket.key)
        tasks.append(
            TaskRow(
                task_hash=bucket.key or "",
                labels=list(bucket.task["labels"]) if bucket.task else [],
                instructions=bucket.task["instructions"] if bucket.task else None,
                name=bucket.task.get("name") if bucket.task else None,
                version=bucket.task.get("version") if bucket.task else None,
                requests=bucket.requests,
                escalation_rate=bucket.escalation_rate,
                cheap_mean_confidence=bucket.cheap_mean_confidence,
                changed_share=bucket.changed_share,
                cost_usd=spend.cost_usd if spend else Decimal(0),
                cost_mean_usd=spend.cost_mean_usd if spend else None,
                savings_pct=spend.savings_pct if spend else None,
            )
        )
    async with reports.slots:
        cost_bins = await cost_histogram(runtime.db, scope, window)
        confidence_bins = await confidence_histogram(runtime.db, scope, window)
    recent, _ = await list_requests(runtime.db, scope, RequestFilter(window), 25)
    teams = [t.name for t in await runtime.teams.list()] if scope.is_admin else []
    return DashboardView(
        scope=scope,
        days=days,
        start=window.start,
        end=window.end,
        escalations=escalations,
        costs=costs,
        tasks=tasks,
        caps=await _caps(runtime, scope, now),
        cost_bins=cost_bins,
        confidence_bins=confidence_bins,
        recent=list(recent),
        teams=teams,
    )


async def _caps(runtime: Runtime, scope: Scope, now: datetime) -> list[CapView]:
    if scope.team_id is None:
        rows = [(cap, team) for cap, team in await runtime.teams.current_caps(now.date())]
    else:
        rows = [(cap, scope.team_name) for cap in await runtime.budget.status(scope.team_id)]
    return [
        CapView(
            label=f"{team or 'global'} · {cap.period} of {cap.period_start.isoformat()}",
            cap_usd=cap.cap_usd if cap.cap_usd < UNCAPPED else None,
            spent_usd=cap.spent_usd,
            reserved_usd=cap.reserved_usd,
        )
        for cap, team in rows
    ]


async def task_view(
    runtime: Runtime, scope: Scope, name: str, version: int | None, target: Decimal, now: datetime
) -> Calibration:
    """A named task's calibration over the last 30 days (a team's own task; the admin picks the team)."""
    if scope.team_id is None:
        raise InvalidInput("choose a team: tasks belong to a team", field="team")
    task = await runtime.tasks.get(scope.team_id, name, version)
    return await calibration(runtime.db, task, day_window(30, now), target)
