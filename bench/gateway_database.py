"""The gateway bench's own database, `cascade_bench_gateway`: created and migrated, the bench team's API key,
dropped at the end; and the ledger counts read just before and just after each measured run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cluster import drop_database  # bench/cluster.py
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.core import schema
from service.core.database import Database
from service.core.settings import Settings
from service.tenancy.keys import issue_key

DB_NAME = "cascade_bench_gateway"
TEAM = "bench"


@dataclass
class LedgerCounts:
    requests: int
    attempts: int
    escalated: int
    not_ok: int  # failed or refused (a pending request is one in flight)


class BenchDatabase:
    def __init__(self, admin_url: str, runner: asyncio.Runner) -> None:
        self.admin_url = admin_url
        self.url = make_url(admin_url).set(database=DB_NAME).render_as_string(hide_password=False)
        self.runner = runner
        self.engine: AsyncEngine | None = None

    def create(self) -> tuple[str, str]:
        """(Re)create and migrate the bench database; returns PostgreSQL's version and max_connections."""

        async def go() -> tuple[str, str]:
            admin = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            try:
                async with admin.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
                    await conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
                    version = str(await conn.scalar(text("SHOW server_version")))
                    max_conn = str(await conn.scalar(text("SHOW max_connections")))
            finally:
                await admin.dispose()
            await asyncio.to_thread(schema.upgrade, self.url)
            return version, max_conn

        result = self.runner.run(go())
        self.engine = create_async_engine(self.url, poolclass=NullPool)
        return result

    def drop(self) -> None:
        async def go() -> None:
            if self.engine is not None:
                await self.engine.dispose()
            await drop_database(self.admin_url, DB_NAME)

        self.runner.run(go())

    def dispose(self) -> None:
        if self.engine is not None:
            self.runner.run(self.engine.dispose())

    def issue_key(self, settings: Settings) -> str:
        async def go() -> str:
            db = Database(self.url, settings)
            try:
                return await issue_key(db, TEAM)
            finally:
                await db.dispose()

        return self.runner.run(go())

    def counts(self) -> LedgerCounts:
        async def go() -> LedgerCounts:
            assert self.engine is not None
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts), "
                            "(SELECT count(*) FROM requests WHERE escalated), "
                            "(SELECT count(*) FROM requests WHERE status IN ('failed', 'refused'))"
                        )
                    )
                ).one()
            return LedgerCounts(*(int(x) for x in row))

        return self.runner.run(go())

    def pending(self) -> int:
        async def go() -> int:
            assert self.engine is not None
            async with self.engine.connect() as conn:
                return int(await conn.scalar(text("SELECT count(*) FROM requests WHERE status = 'pending'")) or 0)

        return self.runner.run(go())
