"""Migrations: empty -> head -> base -> head, and the ORM models match what the migrations build."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service import schema
from service.tables import Base, table_names


@pytest.fixture
async def empty_database(server_url: str) -> AsyncIterator[str]:
    name = f"cascade_migrations_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    await admin.dispose()


async def inspect_db(url: str, fn: Any) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def differences(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata))


async def test_upgrade_downgrade_upgrade_and_models_match(empty_database: str) -> None:
    assert await inspect_db(empty_database, tables) == set()
    await asyncio.to_thread(schema.upgrade, empty_database)
    assert await inspect_db(empty_database, tables) == set(table_names())
    assert await inspect_db(empty_database, differences) == []

    await asyncio.to_thread(schema.downgrade, empty_database, "base")
    assert await inspect_db(empty_database, tables) == set()

    await asyncio.to_thread(schema.upgrade, empty_database)
    assert await inspect_db(empty_database, differences) == []


async def test_the_cap_check_constraint_backs_up_the_conditional_update(empty_database: str) -> None:
    await asyncio.to_thread(schema.upgrade, empty_database)
    engine = create_async_engine(empty_database)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO caps (scope, period, period_start, cap_usd) VALUES ('global', 'day', '2026-11-25', 1)"
                )
            )
        with pytest.raises(Exception, match="ck_caps_within_cap"):
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE caps SET spent_usd = 0.6, reserved_usd = 0.5"))
    finally:
        await engine.dispose()
