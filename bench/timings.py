"""The cases the reports bench times (reports, request pages, the CSV export) and how: one warm-up, then the
timed runs; an export past its budget is stopped and reported as such."""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ledger_sql import DAYS  # bench/ledger_sql.py: the timed windows are the days the ledger spans
from reports_printout import log  # bench/reports_printout.py

from service.api.reports import _csv  # the CSV formatter of GET /v1/requests?format=csv
from service.core.database import Database
from service.core.settings import Settings
from service.money.catalog import Catalog
from service.reports.audit import Cursor, RequestFilter, export_requests, list_requests
from service.reports.service import Reports
from service.reports.window import Window, day_window
from service.tenancy.keys import Scope

LIST_LIMIT = 100  # the API's default page size


@dataclass
class Result:
    name: str
    scope: str
    times: list[float] = field(default_factory=list)
    rows: int | None = None
    error: str | None = None
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


class OverBudget(Exception):
    """An export run that passed --export-budget: it was stopped, and the case is not repeated."""

    def __init__(self, rows: int, seconds: float, note: str) -> None:
        super().__init__(f"stopped after {seconds:.0f} s at {rows:,} rows")
        self.rows, self.seconds, self.note = rows, seconds, note


async def measure(
    name: str, scope: str, run: Callable[[], Awaitable[int | None]], runs: int, results: list[Result]
) -> None:
    result = Result(name, scope)
    try:
        result.rows = await run()  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            result.rows = await run()
            result.times.append(time.perf_counter() - started)
    except OverBudget as over:
        result.rows, result.times, result.note = over.rows, [over.seconds], f"{over}; {over.note}"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:100]
    results.append(result)
    if result.error:
        log(f"  {name:<44} {scope:<6} error: {result.error}")
    else:
        log(f"  {name:<44} {scope:<6} {result.median_ms:10.1f} ms {result.note}")


EXPORT_MARK = 100_000  # rows between throughput samples of an export


async def count_csv(db: Database, scope: Scope, flt: RequestFilter, budget_s: float) -> int:
    """Every row of the export through the API's CSV formatter; stops past the budget (see OverBudget)."""
    started = last = time.perf_counter()
    rates: list[float] = []
    rows = -1  # the header line is not a row
    async for _line in _csv(await export_requests(db, scope, flt)):
        rows += 1
        if rows and rows % EXPORT_MARK == 0:
            now = time.perf_counter()
            rates.append(EXPORT_MARK / (now - last))
            last = now
            if now - started > budget_s:
                note = f"{rates[0]:,.0f} rows/s over the first {EXPORT_MARK:,} rows, {rates[-1]:,.0f} over the last"
                raise OverBudget(rows, now - started, note)
    return rows


async def time_everything(db: Database, settings: Settings, team: Scope, args: argparse.Namespace) -> list[Result]:
    reports = Reports(db, Catalog(), settings.cheap_model, settings.strong_model)
    now = datetime.now(UTC)
    month = day_window(DAYS, now)
    week = Window.parse(None, None, now, default_days=7)
    listed = RequestFilter(Window.parse(None, None, now, DAYS))
    # A page deep in the list, as a client paging (or the export) reaches it: just past the window's middle.
    middle = Cursor(now - timedelta(days=DAYS / 2), uuid.UUID(int=(1 << 128) - 1))
    admin = Scope(None, admin=True)
    results: list[Result] = []
    runs = args.runs

    def escalations(scope: Scope, window: Window, group_by: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return len((await reports.escalations(scope, window, group_by)).buckets)

        return run

    def costs(scope: Scope, window: Window, group_by: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return len((await reports.costs(scope, window, group_by)).buckets)

        return run

    def page(scope: Scope, after: Cursor | None) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return len((await list_requests(db, scope, listed, LIST_LIMIT, after))[0])

        return run

    def export(scope: Scope) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return await count_csv(db, scope, listed, args.export_budget)

        return run

    log(f"timing ({runs} runs after a warm-up; median):")
    for label, scope in (("admin", admin), ("team", team)):
        await measure("escalations 30d by day", label, escalations(scope, month, "day"), runs, results)
        await measure("costs 30d by day", label, costs(scope, month, "day"), runs, results)
    await measure("escalations 7d by hour", "admin", escalations(admin, week, "hour"), runs, results)
    await measure("escalations 30d by task", "admin", escalations(admin, month, "task"), runs, results)
    await measure("escalations 30d by model", "admin", escalations(admin, month, "model"), runs, results)
    await measure("costs 30d by model", "admin", costs(admin, month, "model"), runs, results)
    await measure("costs 30d by task", "admin", costs(admin, month, "task"), runs, results)
    for label, scope in (("admin", admin), ("team", team)):
        await measure(f"list_requests first page ({LIST_LIMIT})", label, page(scope, None), runs, results)
        await measure(f"list_requests page mid-window ({LIST_LIMIT})", label, page(scope, middle), runs, results)
    if not args.no_export:
        for label, scope in (("admin", admin), ("team", team)):
            await measure("export_requests 30d as CSV", label, export(scope), args.export_runs, results)
    return results
