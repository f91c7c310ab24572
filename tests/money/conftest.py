"""Fixtures of the money tests: the test database as the budget state machine reaches it, on a loop of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.core.database import Database
from service.core.settings import Settings
from tests.money.budget_model import ENV


@pytest.fixture
def machine_db(database_url: str) -> Any:
    """The test database, reached through an event loop and engine owned by the machine."""
    loop = asyncio.new_event_loop()
    ENV.loop = loop
    ENV.db = Database(database_url, Settings(_env_file=None, ANTHROPIC_API_KEY="unused"))
    try:
        yield ENV
    finally:
        loop.run_until_complete(ENV.db.dispose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
