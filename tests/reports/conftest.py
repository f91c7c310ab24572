"""The reports' workload, seeded once for the tests of this folder that only read it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service.core import schema
from service.core.database import Database
from service.simulator import Simulator
from tests.harness import running_service
from tests.reports.workload import Workload, seed, settings_for


@pytest.fixture(scope="package")
async def workload(server_url: str, simulator: Simulator) -> AsyncIterator[Workload]:
    """The workload, seeded once for the tests that only read it, in a database of this package's own (created
    and dropped here), so that no other test's truncation reaches it and it leaves nothing behind."""
    name = f"cascade_reports_{uuid.uuid4().hex[:10]}"
    server = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with server.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(schema.upgrade, url)
        make_settings = partial(settings_for, url, simulator)
        db = Database(url, make_settings())
        simulator.reset()
        try:
            async with running_service(make_settings(), url, db, simulator) as svc:
                yield await seed(svc, make_settings, url)
        finally:
            await db.dispose()
    finally:
        async with server.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await server.dispose()
