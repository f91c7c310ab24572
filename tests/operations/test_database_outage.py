"""Fail closed: with PostgreSQL stopped, classify answers 503 and makes no upstream call; then it recovers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.core import schema
from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator
from tests.cluster import Cluster
from tests.harness import running_service


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


async def test_classify_fails_closed_while_postgres_is_down_and_recovers(
    cluster: Cluster, make_settings: Callable[..., Settings], sim: Simulator
) -> None:
    await asyncio.to_thread(schema.upgrade, cluster.url)
    settings = make_settings(DATABASE_URL=cluster.url, CASCADE_DB_TIMEOUT_S=2)
    db = Database(cluster.url, settings)
    try:
        async with running_service(settings, cluster.url, db, sim) as service:
            assert (await service.classify("Works well. {{sim:cheap=conf=0.95}}")).status_code == 200
            assert len(sim.calls) == 1

            await asyncio.to_thread(cluster.stop)
            sim.reset()
            for _ in range(3):
                down = await service.classify("Works well, again. {{sim:cheap=conf=0.95}}")
                assert down.status_code == 503, down.text
                assert down.json()["error"]["type"] == "database_unavailable"
                assert down.headers["retry-after"]
            ready = await service.client.get("/health/ready")
            assert ready.status_code == 503
            assert (await service.client.get("/health/live")).status_code == 200
            assert sim.calls == [], "no upstream call may be made without a reservation"

            await asyncio.to_thread(cluster.start)
            recovered = await service.classify("Works well, once more. {{sim:cheap=conf=0.95}}")
            assert recovered.status_code == 200, recovered.text
            assert (await service.client.get("/health/ready")).status_code == 200
            assert len(sim.calls) == 1
    finally:
        await db.dispose()
