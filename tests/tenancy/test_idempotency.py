"""Idempotency-Key over HTTP: replay, 422 on reuse, 409 in flight, one charge under concurrency, team scoping.

And the key itself: its length and characters are validated before anything runs.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from service.tables import IdempotencyKey, Request
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants
from tests.tenancy.idempotency_requests import CONFIDENT, SLOW, count, messages, post, request_ids

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
