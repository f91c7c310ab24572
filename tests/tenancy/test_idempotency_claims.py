"""Idempotency-Key claims live in the ledger database: they outlast a restart and are shared by the replicas.

A claim is kept while its holder lives (renewed while the work runs) and taken over after the TTL once it is dead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from service.core.clock import utcnow
from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator
from service.tables import Attempt, IdempotencyKey, Request
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, running_service
from tests.tenancy.idempotency_requests import CONFIDENT, count, messages, post


async def test_the_key_is_kept_in_the_ledger_database_not_in_memory(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    """A replay still works after the process restarts (another replica, a deploy)."""
    settings = make_settings()
    async with running_service(settings, database_url, db, sim) as svc:
        first = await post(svc, CONFIDENT, "order-restart")
        assert first.status_code == 200, first.text
        key = svc.key
    async with running_service(settings, database_url, db, sim, team="team-a") as restarted:
        replay = await post(restarted, CONFIDENT, "order-restart", auth={"Authorization": f"Bearer {key}"})
        assert replay.status_code == 200, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == first.json()
    assert messages(sim) == 1
    assert await count(db, Attempt) == 1


@pytest.fixture
async def two_replicas(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> AsyncIterator[tuple[Service, Service]]:
    settings = make_settings()
    async with (
        running_service(settings, database_url, db, sim) as one,
        running_service(settings, database_url, db, sim) as two,
    ):
        yield one, two


async def test_duplicates_across_two_replicas_charge_once(two_replicas: tuple[Service, Service]) -> None:
    one, two = two_replicas
    text = "{{sim:cheap=slow:0.3+conf=0.95}} One order sent to two replicas."
    responses = await asyncio.gather(*(post(svc, text, "order-replicas", auth=one.auth) for svc in (one, two) * 10))
    ok = [r for r in responses if r.status_code == 200]
    assert ok and all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    assert len({r.content for r in ok}) == 1
    assert messages(one.sim) == 1
    assert await count(one.db, Request) == 1
    await assert_ledger_invariants(one.db)


# --- a claim's lifetime: kept while its holder lives, taken over after the TTL once it is dead -----------------


async def test_a_batch_longer_than_the_ttl_keeps_its_key_while_it_runs(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    """The claim is renewed while the work runs: a retry after the TTL gets 409, not a second paid run."""
    settings = make_settings(
        CASCADE_RESERVATION_TTL_S="1.5",
        CASCADE_REQUEST_DEADLINE_S="1.2",
        CASCADE_ATTEMPT_TIMEOUT_S="1.2",
        CASCADE_BATCH_CONCURRENCY="1",
    )
    async with running_service(settings, database_url, db, sim) as svc:
        items = [{"text": f"{{{{sim:cheap=slow:0.8+conf=0.95}}}} Parcel {n} came on time."} for n in range(5)]
        body = {"items": items, "labels": SENTIMENT}
        headers = {**svc.auth, "Idempotency-Key": "long-batch"}
        first = asyncio.create_task(svc.client.post("/v1/classify/batch", json=body, headers=headers))
        await asyncio.sleep(2.5)  # past the TTL, with the batch (about 4 s) still running
        assert not first.done()
        retry = await svc.client.post("/v1/classify/batch", json=body, headers=headers)
        assert_error(retry, 409, "idempotency_key_in_flight")
        done = await first
        assert done.status_code == 200 and done.json()["ok"] == 5, done.text
        replay = await svc.client.post("/v1/classify/batch", json=body, headers=headers)
        assert replay.headers["idempotent-replayed"] == "true" and replay.json() == done.json()
    assert messages(sim) == 5
    await assert_ledger_invariants(db)


async def test_a_dead_holders_claim_is_taken_over_after_the_ttl(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    """A claim whose replica died mid-request (no heartbeat since) is 409 until the TTL, then a retry runs it."""
    settings = make_settings(CASCADE_RESERVATION_TTL_S="60")
    async with running_service(settings, database_url, db, sim) as svc:
        # What the dead replica left is its claim on the same body: the digest is taken from a finished run
        # under another key, so that the test does not recompute the canonical body itself.
        assert (await post(svc, CONFIDENT, "probe")).status_code == 200
        async with db.transaction() as session:
            probe = await session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == "probe"))
            assert probe is not None
            team_id, digest = probe.team_id, probe.body_hash
        for age_s, expected in ((30, 409), (61, 200)):
            async with db.transaction() as session:
                await session.execute(delete(IdempotencyKey).where(IdempotencyKey.key == "orphan"))
                then = utcnow() - timedelta(seconds=age_s)
                session.add(
                    IdempotencyKey(
                        team_id=team_id,
                        key="orphan",
                        body_hash=digest,
                        state="in_flight",
                        request_id=uuid.uuid4(),
                        created_at=then,
                        alive_at=then,
                    )
                )
            assert_error(await post(svc, "another body", "orphan"), 422, "idempotency_key_reused")
            retry = await post(svc, CONFIDENT, "orphan")
            assert retry.status_code == expected, retry.text
        replay = await post(svc, CONFIDENT, "orphan")
        assert replay.headers["idempotent-replayed"] == "true"
    assert messages(sim) == 2
