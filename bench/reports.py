"""Benchmark the escalation and cost reports and the request list/export on a seeded ledger.

    uv run python bench/reports.py                      # embedded PostgreSQL under .cascade/bench, 1,000,000 requests
    uv run python bench/reports.py --requests 100000    # a smaller ledger
    uv run python bench/reports.py --database-url postgresql://root@127.0.0.1:5432/test
    uv run python bench/reports.py --keep               # keep the seeded database; later runs add --reuse
    uv run python bench/reports.py --reuse --explain    # time (and EXPLAIN) again without seeding

The bench creates a database of its own, `cascade_bench` (dropped and recreated on every seeding run, dropped at
the end unless `--keep`), migrates it with the project's alembic, and seeds it with set-based SQL: requests over the
last 30 days, ~1.3 attempts each (a quarter escalated, a few retries, timeouts charged at their reservation), three
teams, twenty tasks, cap rows, and every cost computed from the catalog's price rows. It then times the real service
code (`service.reports.service.Reports`, `service.reports.audit.list_requests` / `export_requests`): one
warm-up, then the median of `--runs` runs. It prints numbers only; nothing here fails on a slow figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cluster import admin_url_for  # bench/cluster.py (this directory leads sys.path)
from ledger_seed import CANARY_SHARE, check_seed, plan_for, seed
from ledger_sql import DAYS
from reports_printout import describe, explain, log, print_table
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from timings import time_everything

from service.core import schema
from service.core.database import Database
from service.core.settings import Settings
from service.tenancy.keys import Scope

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "cascade_bench"


# --------------------------------------------------------------------------------------------------------------
# Database set-up


def bench_url(admin_url: str) -> str:
    return make_url(admin_url).set(database=DB_NAME).render_as_string(hide_password=False)


async def database_exists(admin: AsyncEngine) -> bool:
    async with admin.connect() as conn:
        found = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DB_NAME})
    return found is not None


async def drop_database(admin: AsyncEngine) -> None:
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))


async def seeded_rows(url: str) -> int | None:
    """The requests in an existing bench database at the current head, or None if it cannot be reused."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            if version != schema.head():
                return None
            return int(await conn.scalar(text("SELECT count(*) FROM requests")) or 0) or None
    except Exception:
        return None
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, admin_url: str) -> int:
    settings = Settings(_env_file=None)
    url = bench_url(admin_url)
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    dropped = False
    try:
        existing = await seeded_rows(url) if args.reuse and await database_exists(admin) else None
        if existing:
            log(f"reusing {DB_NAME}: {existing:,} requests (seeded earlier; --requests is ignored)")
        else:
            await drop_database(admin)
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
            started = time.perf_counter()
            await asyncio.to_thread(schema.upgrade, url)
            log(f"created {DB_NAME} and migrated it to {schema.head()} in {time.perf_counter() - started:.1f} s")
            plan = plan_for(args.requests, settings, datetime.now(UTC))
            log(
                f"seeding {args.requests:,} requests over {DAYS} days (cheap {plan.cheap_model}"
                f"{f' + {CANARY_SHARE:.0%} {plan.canary_model}' if plan.canary_model else ''}, "
                f"strong {plan.strong_model}):"
            )
            await seed(url, plan)
            await check_seed(url, plan.catalog, plan.strong_model)

        db = Database(url, Settings(_env_file=None, DATABASE_URL=url))
        try:
            await describe(db)
            async with db.transaction() as session:
                team_row = (
                    await session.execute(
                        text(
                            "SELECT t.id, t.name FROM teams t JOIN requests r ON r.team_id = t.id "
                            "GROUP BY t.id, t.name ORDER BY count(*) DESC LIMIT 1"
                        )
                    )
                ).one()
            team = Scope(team_row.id, team_row.name)
            log(f"team scope: {team.team_name} (the largest team)")
            results = await time_everything(db, settings, team, args)
            print_table(results)
            if args.explain:
                await explain(db)
        finally:
            await db.dispose()
        if not args.keep:
            await drop_database(admin)
            dropped = True
            log(f"dropped {DB_NAME} (pass --keep to keep it, then --reuse to time it again)")
    except BaseException:
        if not dropped and not args.keep:
            await drop_database(admin)
        raise
    finally:
        await admin.dispose()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests to seed (default 1,000,000)")
    parser.add_argument(
        "--database-url",
        help=f"a PostgreSQL server to use (postgresql://...); the bench creates and drops `{DB_NAME}` on it. "
        "Default: an embedded PostgreSQL under --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        default=str(ROOT / ".cascade" / "bench"),
        help="embedded cluster directory (default .cascade/bench)",
    )
    parser.add_argument("--keep", action="store_true", help=f"keep `{DB_NAME}` afterwards")
    parser.add_argument("--reuse", action="store_true", help=f"time an existing `{DB_NAME}` instead of seeding")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case, after one warm-up (default 5)")
    parser.add_argument("--export-runs", type=int, default=5, help="timed runs of each full export (default 5)")
    parser.add_argument(
        "--export-budget",
        type=float,
        default=120.0,
        help="seconds after which an export run is stopped and reported as such (default 120)",
    )
    parser.add_argument("--no-export", action="store_true", help="skip the full export")
    parser.add_argument(
        "--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) of the 30-day admin reports"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.runs < 1 or args.export_runs < 1:
        parser.error("--requests, --runs and --export-runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin_url = admin_url_for(args)
    return asyncio.run(run(args, admin_url))


if __name__ == "__main__":
    sys.exit(main())
