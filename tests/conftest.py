"""Real PostgreSQL (embedded, or CASCADE_TEST_DATABASE_URL) and the simulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service.core import schema
from service.core.database import Database
from service.core.embedded import asyncpg_url, start_embedded
from service.core.settings import Settings
from service.money.budget import Budget
from service.money.catalog import Catalog
from service.simulator import Simulator
from service.tables import table_names
from service.tenancy.keys import issue_key
from tests.harness import ADMIN_KEY, JOB_WORKER, NOON, Clock, Service, running_service, service_settings, team_id_of


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PostgreSQL server: CASCADE_TEST_DATABASE_URL if set, else an embedded one for this session."""
    external = os.environ.get("CASCADE_TEST_DATABASE_URL")
    if external:
        return asyncpg_url(external)
    return start_embedded(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="session")
async def session_database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh database on that server, migrated to head, dropped at the end."""
    name = f"cascade_test_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(schema.upgrade, url)
    yield url
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(scope="session")
async def shared_db(session_database_url: str) -> AsyncIterator[Database]:
    database = Database(session_database_url, Settings(_env_file=None, ANTHROPIC_API_KEY="unused"))  # type: ignore[call-arg]
    yield database
    await database.dispose()


@pytest.fixture
async def db(shared_db: Database) -> AsyncIterator[Database]:
    """The tests' own connection, for arranging rows and checking the ledger; tables are emptied after."""
    yield shared_db
    async with shared_db.transaction() as session:
        await session.execute(text(f"TRUNCATE {', '.join(table_names())} RESTART IDENTITY CASCADE"))


@pytest.fixture
def database_url(session_database_url: str, db: Database) -> str:
    """The test database's URL; depending on `db` means the test leaves it empty."""
    return session_database_url


@pytest.fixture(scope="session")
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator() as sim:
        yield sim


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.reset()
    return simulator


@pytest.fixture
def make_settings(database_url: str, sim: Simulator) -> Callable[..., Settings]:
    """Settings for a service under test; keyword overrides use the environment variable names."""

    def make(**overrides: Any) -> Settings:
        return service_settings(database_url, sim, **overrides)

    return make


@pytest.fixture
async def service(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> AsyncIterator[Service]:
    """The service with default settings, a team and its key."""
    async with running_service(make_settings(), database_url, db, sim) as running:
        yield running


@pytest.fixture
async def jobs_service(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> AsyncIterator[Service]:
    """The service with its job worker inside (tests.harness.JOB_WORKER)."""
    async with running_service(make_settings(**JOB_WORKER), database_url, db, sim) as running:
        yield running


@pytest.fixture
async def admin_service(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> AsyncIterator[Service]:
    """The service with CASCADE_ADMIN_KEY set (tests.harness.ADMIN is its header)."""
    async with running_service(make_settings(CASCADE_ADMIN_KEY=ADMIN_KEY), database_url, db, sim) as running:
        yield running


@pytest.fixture
async def team(db: Database) -> uuid.UUID:
    await issue_key(db, "budget-team")
    return await team_id_of(db, "budget-team")


@pytest.fixture
def budget(db: Database, make_settings: Callable[..., Settings]) -> Callable[..., tuple[Budget, Clock]]:
    def make(**overrides: object) -> tuple[Budget, Clock]:
        clock = Clock(NOON)
        return Budget(db, Catalog(), make_settings(**overrides), clock), clock

    return make
