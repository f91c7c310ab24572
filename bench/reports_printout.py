"""What the reports bench prints, all on stdout: its progress, the table of timings, the database it ran on
(version, settings, rows, sizes, mix) and, with --explain, the plans of the 30-day reports."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ledger_sql import DAYS  # bench/ledger_sql.py
from sqlalchemy import text

from service.core.database import Database
from service.reports.costs import attempt_cost_sql, request_cost_sql
from service.reports.escalations import escalation_sql
from service.reports.window import day_window
from service.tenancy.keys import Scope

if TYPE_CHECKING:  # for the annotations only: timings imports log from this module
    from timings import Result  # bench/timings.py


def log(message: str) -> None:
    print(message, flush=True)


def print_table(results: list[Result]) -> None:
    log("")
    header = f"{'case':<44} {'scope':<6} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'rows':>10} {'rows/s':>9}"
    log(header)
    log("-" * len(header))
    for r in results:
        if r.error:
            log(f"{r.name:<44} {r.scope:<6} error: {r.error}")
            continue
        rows = "" if r.rows is None else f"{r.rows:,}"
        rate = f"{r.rows / statistics.median(r.times):,.0f}" if r.rows and "export" in r.name else ""
        log(
            f"{r.name:<44} {r.scope:<6} {r.median_ms:>10.1f} {min(r.times) * 1000:>9.1f} {max(r.times) * 1000:>9.1f} "
            f"{rows:>10} {rate:>9}"
        )
    log("(rows: buckets of a report, rows of a page or of the export)")
    for r in results:
        if r.note:
            log(f"note: {r.name} ({r.scope}): {r.note}")


async def describe(db: Database) -> None:
    async with db.transaction() as session:
        version = await session.scalar(text("SELECT version()"))
        jit_available = await session.scalar(text("SELECT pg_jit_available()"))
        settings = {
            name: await session.scalar(text(f"SHOW {name}"))
            for name in (
                "shared_buffers",
                "work_mem",
                "effective_cache_size",
                "max_parallel_workers_per_gather",
                "jit",
                "max_parallel_workers",
                "random_page_cost",
            )
        }
        counts = (
            await session.execute(
                text(
                    "SELECT (SELECT count(*) FROM requests) AS requests, (SELECT count(*) FROM attempts) AS attempts, "
                    "(SELECT count(*) FROM teams) AS teams, (SELECT count(*) FROM caps) AS caps, "
                    "(SELECT count(DISTINCT task_hash) FROM requests) AS tasks, "
                    "pg_size_pretty(pg_table_size('requests')) AS requests_heap, "
                    "pg_size_pretty(pg_indexes_size('requests')) AS requests_indexes, "
                    "pg_size_pretty(pg_table_size('attempts')) AS attempts_heap, "
                    "pg_size_pretty(pg_indexes_size('attempts')) AS attempts_indexes"
                )
            )
        ).one()
        mix = (
            await session.execute(
                text(
                    "SELECT count(*) FILTER (WHERE status = 'ok') AS ok, count(*) FILTER (WHERE status = 'failed') "
                    "AS failed, count(*) FILTER (WHERE status = 'refused') AS refused, count(*) FILTER (WHERE "
                    "escalated) AS escalated, min(created_at) AS first, max(created_at) AS last FROM requests"
                )
            )
        ).one()
    log(f"PostgreSQL: {version}")
    log("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + f", jit available={jit_available}")
    log(
        f"rows: requests {counts.requests:,}, attempts {counts.attempts:,} "
        f"({counts.attempts / max(counts.requests, 1):.2f} per request), teams {counts.teams}, caps {counts.caps}, "
        f"tasks {counts.tasks}"
    )
    log(
        f"sizes: requests {counts.requests_heap} + {counts.requests_indexes} indexes, "
        f"attempts {counts.attempts_heap} + {counts.attempts_indexes} indexes"
    )
    total = max(counts.requests, 1)
    log(
        f"mix: ok {mix.ok / total:.1%}, failed {mix.failed / total:.1%}, refused {mix.refused / total:.1%}, "
        f"escalated {mix.escalated / total:.1%}; created {mix.first:%Y-%m-%d %H:%M} .. {mix.last:%Y-%m-%d %H:%M} UTC"
    )


async def explain(db: Database) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL behind the two 30-day, by-day reports in admin scope."""
    admin = Scope(None, admin=True)
    params = day_window(DAYS, datetime.now(UTC)).params()
    queries = (
        ("escalations 30d by day (admin): escalation_sql", escalation_sql("day", admin)),
        ("costs 30d by day (admin): request_cost_sql", request_cost_sql("day", admin)),
        ("costs 30d by day (admin): attempt_cost_sql", attempt_cost_sql("day", admin)),
    )
    for title, sql in queries:
        async with db.transaction() as session:
            plan = (await session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"), params)).scalars().all()
        log("")
        log(f"== {title}")
        log("\n".join(plan))
