"""Idempotency-Key over HTTP: replay, 422 on reuse, 409 in flight, one charge under concurrency, team scoping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select

from service.core.database import Database
from service.core.settings import Settings
from service.money.budget import utcnow
from service.simulator import Simulator
from service.tables import Attempt, IdempotencyKey, Request
from service.tenancy.teams import Teams
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, running_service

CONFIDENT = "{{sim:cheap=conf=0.95}} The blender arrived on time and works fine."
SLOW = "{{sim:cheap=slow:1.5+conf=0.95}} The kettle arrived on time and works fine."


async def post(
    svc: Service, text: str, key: str | None, *, auth: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    headers = dict(auth or svc.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await svc.client.post("/v1/classify", json={"text": text, "labels": SENTIMENT, **fields}, headers=headers)


async def count(db: Database, table: type[Any]) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


async def request_ids(db: Database) -> list[uuid.UUID]:
    async with db.transaction() as session:
        return list((await session.scalars(select(Request.id).order_by(Request.created_at))).all())


def messages(sim: Simulator) -> int:
    return sum(1 for c in sim.calls if c.endpoint == "messages")


# --- replay ------------------------------------------------------------------------------------------------


async def test_same_key_and_body_replays_the_response_and_charges_once(service: Service) -> None:
    first = await post(service, CONFIDENT, "order-1")
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    calls = messages(service.sim)
    assert calls == 1

    for _ in range(3):
        again = await post(service, CONFIDENT, "order-1")
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert again.content == first.content

    assert messages(service.sim) == calls, "a replay makes no upstream call"
    assert await request_ids(service.db) == [uuid.UUID(first.json()["id"])]
    attempts = await service.attempts()
    assert [a.request_id for a in attempts] == [uuid.UUID(first.json()["id"])]
    assert sum((a.cost_usd or Decimal(0) for a in attempts), Decimal(0)) == Decimal(first.json()["cost_usd"])
    await assert_ledger_invariants(service.db)


async def test_a_replay_is_the_same_even_if_the_body_is_sent_with_explicit_defaults(service: Service) -> None:
    first = await post(service, CONFIDENT, "order-1")
    again = await post(service, CONFIDENT, "order-1", instructions=None, threshold=None)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert messages(service.sim) == 1


async def test_without_a_key_every_request_runs(service: Service) -> None:
    first = await post(service, CONFIDENT, None)
    second = await post(service, CONFIDENT, None)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    assert messages(service.sim) == 2
    assert await count(service.db, IdempotencyKey) == 0


async def test_different_keys_are_different_requests(service: Service) -> None:
    first = await post(service, CONFIDENT, "order-1")
    second = await post(service, CONFIDENT, "order-2")
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers
    assert len(await request_ids(service.db)) == 2


# --- 422: the same key with another body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"text": "{{sim:cheap=conf=0.95}} The blender arrived late."},
        {"labels": ["positive", "negative"]},
        {"labels": list(reversed(SENTIMENT))},
        {"instructions": "be strict"},
        {"threshold": 0.9},
    ],
    ids=["text", "labels", "label-order", "instructions", "threshold"],
)
async def test_same_key_with_a_different_body_is_422(service: Service, change: dict[str, Any]) -> None:
    first = await post(service, CONFIDENT, "order-1")
    assert first.status_code == 200, first.text
    body = {"text": CONFIDENT, "labels": SENTIMENT, **change}
    reused = await service.client.post(
        "/v1/classify", json=body, headers={**service.auth, "Idempotency-Key": "order-1"}
    )
    error = assert_error(reused, 422, "idempotency_key_reused")["error"]
    assert "different" in error["message"]
    assert messages(service.sim) == 1
    assert await request_ids(service.db) == [uuid.UUID(first.json()["id"])]
    # The original is still replayed.
    again = await post(service, CONFIDENT, "order-1")
    assert again.json() == first.json()


# --- 409: the same key while the first is in flight -----------------------------------------------------------


async def test_same_key_while_in_flight_is_409_then_replays(service: Service) -> None:
    running = asyncio.create_task(post(service, SLOW, "order-1"))
    for _ in range(200):
        if messages(service.sim):
            break
        await asyncio.sleep(0.01)
    assert messages(service.sim) == 1, "the first request is at the model"

    busy = await post(service, SLOW, "order-1")
    error = assert_error(busy, 409, "idempotency_key_in_flight")
    assert busy.headers["retry-after"] == "1"
    assert "idempotent-replayed" not in busy.headers
    # A different body under the in-flight key is still a misuse of the key.
    other = await post(service, CONFIDENT, "order-1")
    assert_error(other, 422, "idempotency_key_reused")

    first = await running
    assert first.status_code == 200, first.text
    assert not running.cancelled()
    assert messages(service.sim) == 1
    assert await request_ids(service.db) == [uuid.UUID(first.json()["id"])]
    assert error["request_id"] != first.json()["id"]

    replay = await post(service, SLOW, "order-1")
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    await assert_ledger_invariants(service.db)


async def test_fifty_concurrent_duplicates_charge_exactly_once(service: Service) -> None:
    text = "{{sim:cheap=slow:0.3+conf=0.95}} Fifty identical submissions of one order."
    responses = await asyncio.gather(*(post(service, text, "order-50") for _ in range(50)))
    ok = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 409]
    assert len(ok) + len(busy) == 50, sorted({(r.status_code, r.text[:200]) for r in responses})
    assert ok, "the request that claimed the key answered"
    assert all(r.json()["error"]["type"] == "idempotency_key_in_flight" for r in busy)
    assert len({r.content for r in ok}) == 1, "every 200 carries the same body"
    assert sum("idempotent-replayed" not in r.headers for r in ok) == 1, "one original, the rest replays"

    assert messages(service.sim) == 1
    ids = await request_ids(service.db)
    assert ids == [uuid.UUID(ok[0].json()["id"])]
    attempts = await service.attempts()
    assert {a.request_id for a in attempts} == set(ids)
    assert len(attempts) == 1

    # Afterwards every retry is a replay of that one result.
    again = await asyncio.gather(*(post(service, text, "order-50") for _ in range(10)))
    assert {(r.status_code, r.content) for r in again} == {(200, ok[0].content)}
    assert messages(service.sim) == 1
    await assert_ledger_invariants(service.db)


# --- keys are scoped to the team --------------------------------------------------------------------------------


async def test_another_team_may_use_the_same_key_string(service: Service) -> None:
    other = {"Authorization": f"Bearer {await service.new_key('team-b')}"}
    text = "{{sim:cheap=conf=0.95,conf=0.95}} Shared key, separate teams."
    mine = await post(service, text, "shared-key")
    theirs = await post(service, text, "shared-key", auth=other)
    assert mine.status_code == theirs.status_code == 200
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert messages(service.sim) == 2

    # Each team replays its own result, and a different body under the same string is fine for the other team.
    assert (await post(service, text, "shared-key")).json() == mine.json()
    assert (await post(service, text, "shared-key", auth=other)).json() == theirs.json()
    different = await post(
        service, CONFIDENT, "shared-key", auth={"Authorization": f"Bearer {await service.new_key('team-c')}"}
    )
    assert different.status_code == 200, different.text
    rows = {r: (await service.request_row(r)).team_id for r in await request_ids(service.db)}
    assert len(set(rows.values())) == 3
    assert messages(service.sim) == 3
    await assert_ledger_invariants(service.db)


async def test_a_teams_keys_share_its_idempotency_keys(service: Service) -> None:
    """Scoped to the team, not to one API key: a client rotating its key mid-retry still gets the replay."""
    rotated = {"Authorization": f"Bearer {await service.new_key('team-a')}"}
    first = await post(service, CONFIDENT, "order-rotate")
    again = await post(service, CONFIDENT, "order-rotate", auth=rotated)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert messages(service.sim) == 1


async def test_a_team_cannot_replay_another_teams_response(service: Service) -> None:
    mine = await post(service, CONFIDENT, "secret-order")
    assert mine.status_code == 200
    other = {"Authorization": f"Bearer {await service.new_key('team-b')}"}
    theirs = await post(service, "{{sim:cheap=conf=0.9}} Something else entirely.", "secret-order", auth=other)
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["id"] != mine.json()["id"]
    assert mine.json()["id"] not in theirs.text


# --- final errors are replayed, transient ones free the key ----------------------------------------------------


async def test_a_402_is_replayed_with_the_same_status_and_body(service: Service) -> None:
    await Teams(service.db).set_caps("team-a", Decimal("0.000001"), None, utcnow().date())
    first = await post(service, CONFIDENT, "order-402")
    body = assert_error(first, 402, "cost_cap_exceeded")
    assert body["error"]["cap"] == "team_daily"
    assert "idempotent-replayed" not in first.headers

    # Even once the cap is raised, the stored answer for this key is final.
    await Teams(service.db).set_caps("team-a", Decimal(100), None, utcnow().date())
    again = await post(service, CONFIDENT, "order-402")
    assert again.status_code == 402
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert service.sim.calls == []
    assert await request_ids(service.db) == [uuid.UUID(body["request_id"])]

    # A new key runs under the raised cap.
    fresh = await post(service, CONFIDENT, "order-402-retry")
    assert fresh.status_code == 200, fresh.text
    await assert_ledger_invariants(service.db)


async def test_a_502_is_replayed_with_the_same_status_and_body(service: Service) -> None:
    text = "{{sim:cheap=400}} The blender is fine."
    first = await post(service, text, "order-502")
    body = assert_error(first, 502, "upstream_error")
    assert messages(service.sim) == 1
    again = await post(service, text, "order-502")
    assert again.status_code == 502
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == body
    assert messages(service.sim) == 1, "the replay did not call upstream again"
    assert await request_ids(service.db) == [uuid.UUID(body["request_id"])]
    await assert_ledger_invariants(service.db)


async def test_a_transient_503_frees_the_key_for_a_retry(service: Service) -> None:
    text = "{{sim:all=529,529,529,529}} The blender is fine."
    first = await post(service, text, "order-503")
    body = assert_error(first, 503, "upstream_unavailable")
    assert "retry-after" in first.headers
    calls = messages(service.sim)
    assert calls == 2 * service.settings.max_attempts

    retry = await post(service, text, "order-503")
    assert retry.status_code == 200, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert retry.json()["id"] != body["request_id"]
    assert messages(service.sim) > calls, "the retry ran again"

    after = messages(service.sim)
    replay = await post(service, text, "order-503")
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == retry.json()
    assert messages(service.sim) == after
    statuses = {r: (await service.request_row(r)).status for r in await request_ids(service.db)}
    assert sorted(statuses.values()) == ["failed", "ok"]
    await assert_ledger_invariants(service.db)


async def test_a_422_input_error_is_not_stored_against_the_key(service: Service) -> None:
    bad = await post(service, "", "order-422")
    assert_error(bad, 422, "invalid_request")
    assert await count(service.db, IdempotencyKey) == 0
    good = await post(service, CONFIDENT, "order-422")
    assert good.status_code == 200, good.text
    assert "idempotent-replayed" not in good.headers


# --- the key itself is validated ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["k" * 256, "", "tab\tin-key"], ids=["256-chars", "empty", "control-char"])
async def test_an_invalid_idempotency_key_is_422_naming_the_field(service: Service, key: str) -> None:
    response = await service.client.post(
        "/v1/classify",
        json={"text": CONFIDENT, "labels": SENTIMENT},
        headers={**service.auth, "Idempotency-Key": key},
    )
    error = assert_error(response, 422, "invalid_request")["error"]
    assert error["field"] == "Idempotency-Key"
    assert service.sim.calls == []
    assert await count(service.db, Request) == 0
    assert await count(service.db, IdempotencyKey) == 0


async def test_a_255_character_key_is_accepted(service: Service) -> None:
    key = "k" * 255
    first = await post(service, CONFIDENT, key)
    assert first.status_code == 200, first.text
    again = await post(service, CONFIDENT, key)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


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
