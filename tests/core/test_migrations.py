"""Migrations: empty -> head -> base -> head, and the ORM models match what the migrations build."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service.core import schema
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


async def test_0005_backfills_the_counterfactual_and_the_cheap_answer_of_existing_rows(empty_database: str) -> None:
    """Rows written under 0004 get what the service now writes with the ledger, from the catalog's prices."""
    await asyncio.to_thread(schema.upgrade, empty_database, "0004")
    team, request = uuid.uuid4(), uuid.uuid4()
    engine = create_async_engine(empty_database)
    common = (
        "INSERT INTO attempts (request_id, team_id, attempt_no, stage, model, state, cap_ids, billing_day, "
        "reserved_usd, input_token_bound, max_tokens, price_id, price_input, price_cache_write_5m, "
        "price_cache_write_1h, price_cache_read, price_output, outcome, label, confidence, input_tokens, "
        "output_tokens, cost_usd, reserved_at, settled_at) VALUES (:r, :t, :n, :stage, :model, 'settled', '{}', "
        "'2026-11-20', 0.01, 1000, 64, 'p', 1, 1.25, 2, 0.1, 5, :outcome, :label, 0.5, :inp, :out, :cost, "
        "'2026-11-20T10:00:00Z', '2026-11-20T10:00:01Z')"
    )
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO teams (id, name) VALUES (:t, 'old')"), {"t": team})
            await conn.execute(
                text(
                    "INSERT INTO requests (id, team_id, status, task_hash, labels, threshold, text_chars, "
                    "cheap_model, strong_model, label, confidence, model, escalated, escalation_reason, cost_usd, "
                    "created_at) VALUES (:r, :t, 'ok', 'h', '[\"a\", \"b\"]', 0.85, 5, "
                    "'claude-haiku-4-5-20251001', 'claude-sonnet-5-5', 'b', 0.9, 'claude-sonnet-5-5', true, "
                    "'low_confidence', 0.001, '2026-11-20T10:00:00Z')"
                ),
                {"r": request, "t": team},
            )
            cheap = {"stage": "cheap", "model": "claude-haiku-4-5-20251001", "outcome": "answered", "label": "a"}
            await conn.execute(
                text(common), {"r": request, "t": team, "n": 1, **cheap, "inp": 200, "out": 10, "cost": 0.00025}
            )
            unknown = {**cheap, "outcome": "unknown", "label": None, "inp": None, "out": None, "cost": 0.01}
            await conn.execute(text(common), {"r": request, "t": team, "n": 2, **unknown})
            strong = {"stage": "strong", "model": "claude-sonnet-5-5", "outcome": "answered", "label": "b"}
            await conn.execute(
                text(common), {"r": request, "t": team, "n": 3, **strong, "inp": 200, "out": 10, "cost": 0.0005}
            )
        await asyncio.to_thread(schema.upgrade, empty_database)
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT * FROM requests WHERE id = :r"), {"r": request})).one()
            equivs = (
                (
                    await conn.execute(
                        text("SELECT strong_equiv_usd FROM attempts WHERE request_id = :r ORDER BY attempt_no"),
                        {"r": request},
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await engine.dispose()
    # Sonnet 5.5 at $2 / $10 per million: 200 in + 10 out; the unknown attempt at its worst case (1000 in, 64 out).
    assert equivs == [Decimal("0.0005"), Decimal("0.00264"), None]
    assert row.all_strong_cost_usd == Decimal("0.00314")
    assert (row.cheap_label, row.cheap_confidence) == ("a", Decimal("0.5"))
