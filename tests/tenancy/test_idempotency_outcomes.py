"""Idempotency-Key over HTTP, by how the first request ended: final errors are replayed, transient ones free the key.

A 402 and a 502 are answers, replayed with their status and body; a 503 or a 422 input error leaves the key free.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from service.core.clock import utcnow
from service.tables import IdempotencyKey
from service.tenancy.teams import Teams
from tests.harness import Service, assert_error, assert_ledger_invariants
from tests.tenancy.idempotency_requests import CONFIDENT, count, messages, post, request_ids


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
