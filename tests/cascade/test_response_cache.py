"""The exact-match response cache of named tasks: a hit answers at once, costs nothing, and is counted exactly."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from service.tables import Request
from tests.harness import SENTIMENT, Service, assert_ledger_invariants, classify_task, put_task


async def upstream_calls(service: Service) -> int:
    return sum(1 for call in service.sim.calls if call.endpoint == "messages")


async def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_same_text_again_is_answered_from_the_cache_at_no_cost(service: Service) -> None:
    await put_task(service, "sentiment")
    first = await ok(await classify_task(service, "The kettle is lovely.", "sentiment"))
    assert not first["cache_hit"] and Decimal(first["cost_usd"]) > 0
    calls = await upstream_calls(service)
    again = await ok(await classify_task(service, "  The kettle   is\nlovely. ", "sentiment"))  # the same, normalized
    assert again["cache_hit"] and again["attempts"] == [] and again["cost_usd"] == "0"
    assert (again["label"], again["confidence"], again["model"]) == (
        first["label"],
        first["confidence"],
        first["model"],
    )
    assert again["id"] != first["id"] and await upstream_calls(service) == calls, "no upstream call"
    row = await service.request_row(again["id"])
    assert row.cache_hit and row.cached_from is not None and str(row.cached_from) == first["id"]
    assert row.cost_usd == 0 and row.status == "ok" and not row.escalated
    audit = (await service.client.get(f"/v1/requests/{again['id']}", headers=service.auth)).json()
    assert audit["attempts"] == []
    await assert_ledger_invariants(service.db)


async def test_what_the_cache_key_holds_apart(service: Service) -> None:
    await put_task(service, "sentiment")
    await ok(await classify_task(service, "Good kettle.", "sentiment"))
    hits = {
        "different case": await classify_task(service, "good kettle.", "sentiment"),
        "a raised threshold": await classify_task(service, "Good kettle.", "sentiment", threshold=0.95),
        "cache off": await classify_task(service, "Good kettle.", "sentiment", cache=False),
        "the same text inline": await service.classify("Good kettle."),
    }
    assert {name: (await ok(r)).get("cache_hit") for name, r in hits.items()} == dict.fromkeys(hits, False)
    await put_task(service, "sentiment", instructions="Kettles.")  # a new version: its own answers
    assert not (await ok(await classify_task(service, "Good kettle.", "sentiment")))["cache_hit"]
    assert (await ok(await classify_task(service, "Good kettle.", "sentiment@1")))["cache_hit"]
    other = {"Authorization": f"Bearer {await service.new_key('team-b')}"}
    await service.client.put("/v1/tasks/sentiment", json={"labels": SENTIMENT}, headers=other)
    theirs = await service.client.post(
        "/v1/classify", json={"text": "Good kettle.", "task": "sentiment"}, headers=other
    )
    assert not (await ok(theirs))["cache_hit"], "each team has its own cache"
    await assert_ledger_invariants(service.db)


async def test_a_failed_request_is_not_cached_and_an_entry_expires(service: Service) -> None:
    await put_task(service, "brief", cache_ttl_s=1)
    failed = await classify_task(service, "Meh. {{sim:all=400}}", "brief")
    assert failed.status_code == 502
    retried = await ok(await classify_task(service, "Meh. {{sim:all=400}}", "brief"))  # directives run out
    assert not retried["cache_hit"]
    assert (await ok(await classify_task(service, "Meh. {{sim:all=400}}", "brief")))["cache_hit"]
    await asyncio.sleep(1.1)
    assert not (await ok(await classify_task(service, "Meh. {{sim:all=400}}", "brief")))["cache_hit"]
    await put_task(service, "never", cache_ttl_s=0)
    for _ in range(2):
        assert not (await ok(await classify_task(service, "Fine.", "never")))["cache_hit"]


async def test_reports_count_cache_hits_exactly_and_leave_them_out_of_the_escalation_rate(service: Service) -> None:
    await put_task(service, "sentiment")
    texts = ["Great! {{sim:cheap=conf=0.99}}", "Hmm. {{sim:cheap=conf=0.3}}", "Broken. {{sim:cheap=conf=0.99}}"]
    for text in texts:
        await ok(await classify_task(service, text, "sentiment"))
    for text in [*texts, texts[1], texts[1]]:
        assert (await ok(await classify_task(service, text, "sentiment")))["cache_hit"]
    report = (await service.client.get("/v1/reports/escalations", headers=service.auth)).json()["totals"]
    async with service.db.transaction() as session:
        rows = list((await session.scalars(select(Request))).all())
    hits = [r for r in rows if r.cache_hit]
    assert report["cache_hits"] == len(hits) == 5 and report["requests"] == len(rows) == 8
    assert report["decided"] == 3 and report["escalated"] == 1 and report["escalation_rate"] == "0.333333"
    costs = (await service.client.get("/v1/reports/costs", headers=service.auth)).json()["totals"]
    assert costs["cache_hits"] == 5 and costs["requests"] == 8
    assert Decimal(costs["cost_usd"]) == sum((r.cost_usd for r in rows), Decimal(0))
    assert all(r.cost_usd == 0 for r in hits)
    metrics = (await service.client.get("/metrics")).text
    assert "cascade_cache_hits_total 5.0" in metrics
    await assert_ledger_invariants(service.db)
