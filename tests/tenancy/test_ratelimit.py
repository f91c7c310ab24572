"""Per-team rate limits: 429 rate_limited with Retry-After, no upstream call, no ledger row; not upstream 429s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import func, select

from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator
from service.tables import Attempt, IdempotencyKey, Request
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, running_service

TEXT = "{{sim:cheap=conf=0.95}} The blender arrived on time and works fine."


def text(n: int) -> str:
    return f"{{{{sim:cheap=conf=0.95}}}} Order {n}: the blender arrived on time and works fine."


async def rows(db: Database) -> tuple[int, int]:
    async with db.transaction() as session:
        requests = await session.scalar(select(func.count()).select_from(Request))
        attempts = await session.scalar(select(func.count()).select_from(Attempt))
    return int(requests or 0), int(attempts or 0)


@pytest.fixture
async def limited(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> AsyncIterator[Service]:
    settings = make_settings(CASCADE_TEAM_RATE_PER_S=1, CASCADE_TEAM_BURST=3)
    async with running_service(settings, database_url, db, sim) as svc:
        yield svc


async def spend_burst(svc: Service, first: int = 0) -> list[httpx.Response]:
    """Send the burst at once (so no token refills in between): every one of them is admitted."""
    responses = await asyncio.gather(*(svc.classify(text(first + n)) for n in range(3)))
    assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
    return list(responses)


async def test_the_request_past_the_burst_is_429_with_retry_after(limited: Service) -> None:
    await spend_burst(limited)
    calls, ledger = len(limited.sim.calls), await rows(limited.db)
    assert ledger == (3, 3)

    refused = await limited.classify(text(3))
    body = assert_error(refused, 429, "rate_limited")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert "per second" in body["error"]["message"]
    assert len(limited.sim.calls) == calls, "a rate-limited request makes no upstream call"
    assert await rows(limited.db) == ledger, "and writes no ledger row"

    await asyncio.sleep(retry_after)
    after = await limited.classify(text(4))
    assert after.status_code == 200, after.text
    await assert_ledger_invariants(limited.db)


async def test_another_team_is_not_limited(limited: Service) -> None:
    other = {"Authorization": f"Bearer {await limited.new_key('team-b')}"}
    await spend_burst(limited)
    assert_error(await limited.classify(text(3)), 429, "rate_limited")

    theirs = await asyncio.gather(
        *(
            limited.client.post("/v1/classify", json={"text": text(10 + n), "labels": SENTIMENT}, headers=other)
            for n in range(3)
        )
    )
    assert [r.status_code for r in theirs] == [200] * 3, [r.text for r in theirs]
    assert_error(await limited.classify(text(4)), 429, "rate_limited")


async def test_a_teams_keys_share_one_bucket(limited: Service) -> None:
    second = {"Authorization": f"Bearer {await limited.new_key('team-a')}"}
    mine = await asyncio.gather(
        *(
            limited.client.post(
                "/v1/classify", json={"text": text(n), "labels": SENTIMENT}, headers=limited.auth if n % 2 else second
            )
            for n in range(3)
        )
    )
    assert [r.status_code for r in mine] == [200] * 3, [r.text for r in mine]
    refused = await limited.client.post("/v1/classify", json={"text": text(3), "labels": SENTIMENT}, headers=second)
    assert_error(refused, 429, "rate_limited")


async def test_a_concurrent_burst_admits_exactly_the_burst(limited: Service) -> None:
    responses = await asyncio.gather(*(limited.classify(text(n)) for n in range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [429] * 9, [r.text for r in responses]
    for response in responses:
        if response.status_code == 429:
            assert_error(response, 429, "rate_limited")
            assert int(response.headers["retry-after"]) >= 1
    assert sum(1 for c in limited.sim.calls if c.endpoint == "messages") == 3
    assert await rows(limited.db) == (3, 3)
    await assert_ledger_invariants(limited.db)


async def test_the_rate_refills_at_the_configured_rate(limited: Service) -> None:
    await spend_burst(limited)
    assert_error(await limited.classify(text(3)), 429, "rate_limited")
    await asyncio.sleep(1.1)
    assert (await limited.classify(text(4))).status_code == 200
    # One token came back, not the whole burst.
    assert_error(await limited.classify(text(5)), 429, "rate_limited")


async def test_a_rate_limited_request_does_not_claim_its_idempotency_key(limited: Service) -> None:
    await spend_burst(limited)
    headers = {**limited.auth, "Idempotency-Key": "order-1"}
    body = {"text": text(3), "labels": SENTIMENT}
    refused = await limited.client.post("/v1/classify", json=body, headers=headers)
    assert_error(refused, 429, "rate_limited")
    retry_after = int(refused.headers["retry-after"])
    async with limited.db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    await asyncio.sleep(retry_after)
    accepted = await limited.client.post("/v1/classify", json=body, headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert "idempotent-replayed" not in accepted.headers


async def test_unauthenticated_requests_do_not_spend_a_teams_budget(limited: Service) -> None:
    for _ in range(10):
        response = await limited.client.post("/v1/classify", json={"text": TEXT, "labels": SENTIMENT})
        assert_error(response, 401, "unauthorized")
    await spend_burst(limited)


# --- an upstream rate limit is not the caller's rate limit ---------------------------------------------------


@pytest.mark.parametrize(
    "directive",
    ["{{sim:all=429nora}}", "{{sim:all=429:30}}", "{{sim:all=429,429,429}}"],
    ids=["spend-cap-no-retry-after", "long-retry-after", "repeated-429"],
)
async def test_an_upstream_429_surfaces_as_503_never_429(service: Service, directive: str) -> None:
    response = await service.classify(f"{directive} The blender is fine.")
    body = assert_error(response, 503, "upstream_unavailable")
    assert response.status_code != 429
    assert body["error"]["type"] != "rate_limited"
    assert int(response.headers["retry-after"]) >= 1
    assert {c.status for c in service.sim.calls} == {429}
    assert (await service.request_row(body["request_id"])).status == "failed"
    await assert_ledger_invariants(service.db)


async def test_an_upstream_429_does_not_use_up_the_teams_rate(limited: Service) -> None:
    response = await limited.classify("{{sim:all=429nora}} The blender is fine.")
    assert_error(response, 503, "upstream_unavailable")
    # The one request spent one token, however many upstream attempts it made.
    second = await asyncio.gather(*(limited.classify(text(n)) for n in range(3)))
    assert sorted(r.status_code for r in second) == [200, 200, 429]
