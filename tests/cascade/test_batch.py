"""POST /v1/classify/batch: a result or an error per item, in order; each item reserved and charged on its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx

from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, caps, running_service

TEXT = "The blender arrived on time and works fine."


async def post_batch(service: Service, items: list[dict[str, object]], **fields: object) -> httpx.Response:
    body = {"items": items, "labels": SENTIMENT, **fields}
    return await service.client.post("/v1/classify/batch", json=body, headers=service.auth)


async def test_each_item_gets_its_result_or_its_error_in_order(service: Service) -> None:
    items: list[dict[str, object]] = [
        {"id": "a", "text": TEXT + " {{sim:cheap=conf=0.97}}"},
        {"id": "empty", "text": "   "},
        {"text": "x" * (service.settings.max_text_chars + 1)},
        {"id": "escalates", "text": TEXT + " {{sim:cheap=conf=0.3;strong=conf=0.9}}"},
        {"id": "rejected", "text": TEXT + " {{sim:cheap=400}}"},
        {"id": "z", "text": TEXT + " second {{sim:cheap=conf=0.96}}"},
    ]
    response = await post_batch(service, items)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == response.headers["x-request-id"]
    out = body["items"]
    assert [i["index"] for i in out] == list(range(6))
    assert [i["id"] for i in out] == ["a", "empty", None, "escalates", "rejected", "z"]
    assert [i["status"] for i in out] == [200, 422, 422, 200, 502, 200]
    assert out[1]["error"] == {"type": "invalid_request", "message": "text must not be empty", "field": "text"}
    assert out[2]["error"]["field"] == "text" and out[2]["result"] is None
    assert out[4]["error"]["type"] == "upstream_error"
    assert out[3]["result"]["escalated"] is True and out[3]["result"]["escalation_reason"] == "low_confidence"
    assert (body["ok"], body["failed"]) == (3, 3)

    # Every item that ran is a request of its own in the ledger, with the id the batch gave it.
    answered = [i for i in out if i["status"] == 200]
    for item in answered:
        assert item["result"]["id"] == item["request_id"]
        row = await service.request_row(item["request_id"])
        assert row.status == "ok" and row.cost_usd == Decimal(item["result"]["cost_usd"])
    rejected = await service.request_row(out[4]["request_id"])
    assert rejected.status == "failed"
    assert Decimal(body["cost_usd"]) == sum(Decimal(i["result"]["cost_usd"]) for i in answered)
    # The two bad texts never reached the upstream or the ledger.
    assert len([c for c in service.sim.calls if c.endpoint == "messages"]) == len(await service.attempts())
    assert {str(a.request_id) for a in await service.attempts()} == {
        i["request_id"] for i in out if i["status"] in (200, 502)
    }
    await assert_ledger_invariants(service.db)


async def test_a_cap_refuses_some_items_and_never_the_batch(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    # Each item reserves about $0.0017 and costs about $0.0003: the cap takes three, then refuses item by item.
    settings = make_settings(CASCADE_DAILY_CAP_USD="0.0025", CASCADE_BATCH_CONCURRENCY=1)
    async with running_service(settings, database_url, db, sim) as service:
        items: list[dict[str, object]] = [{"text": f"{TEXT} {n} {{{{sim:cheap=conf=0.97}}}}"} for n in range(8)]
        response = await post_batch(service, items)
    assert response.status_code == 200, response.text
    statuses = [i["status"] for i in response.json()["items"]]
    assert 200 in statuses and 402 in statuses, statuses
    assert set(statuses) == {200, 402}
    refusal = next(i for i in response.json()["items"] if i["status"] == 402)
    assert refusal["error"]["type"] == "cost_cap_exceeded" and refusal["error"]["cap"] == "global_daily"
    day = next(c for c in await caps(db) if c.scope == "global" and c.period == "day")
    assert day.spent_usd <= day.cap_usd
    await assert_ledger_invariants(db)


async def test_the_batch_is_checked_as_a_whole_for_its_shared_fields_and_size(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    async with running_service(make_settings(CASCADE_MAX_BATCH_ITEMS=3), database_url, db, sim) as service:
        too_many = await post_batch(service, [{"text": TEXT}] * 4)
        assert_error(too_many, 422, "invalid_request")
        assert too_many.json()["error"]["field"] == "items"
        assert_error(await post_batch(service, []), 422, "invalid_request")
        bad_labels = await post_batch(service, [{"text": TEXT}], labels=["only"])
        assert assert_error(bad_labels, 422, "invalid_request")["error"]["field"] == "labels"
        unknown = await service.client.post(
            "/v1/classify/batch",
            json={"items": [{"text": TEXT, "extra": 1}], "labels": SENTIMENT},
            headers=service.auth,
        )
        assert unknown.status_code in (400, 422)
        assert (
            await service.client.post("/v1/classify/batch", json={"items": [], "labels": SENTIMENT})
        ).status_code == 401
    assert [c for c in sim.calls if c.endpoint == "messages"] == []


async def test_a_body_past_the_batch_limit_is_413(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    async with running_service(make_settings(CASCADE_MAX_BATCH_BODY_BYTES=4096), database_url, db, sim) as service:
        big = await post_batch(service, [{"text": "y" * 3000}, {"text": "z" * 3000}])
        assert_error(big, 413)
        # The single-text route keeps its own limit.
        small = await service.classify(TEXT + " {{sim:cheap=conf=0.97}}")
        assert small.status_code == 200


async def test_an_idempotent_batch_replays_without_paying_again(service: Service) -> None:
    items: list[dict[str, object]] = [{"id": str(n), "text": f"{TEXT} {n}"} for n in range(3)]
    headers = {**service.auth, "Idempotency-Key": f"batch-{uuid.uuid4()}"}
    body = {"items": items, "labels": SENTIMENT}
    first = await service.client.post("/v1/classify/batch", json=body, headers=headers)
    calls = len(service.sim.calls)
    second = await service.client.post("/v1/classify/batch", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert len(service.sim.calls) == calls
    other = await service.client.post("/v1/classify/batch", json={**body, "items": items[:2]}, headers=headers)
    assert_error(other, 422)
    await assert_ledger_invariants(service.db)


async def test_items_run_with_bounded_concurrency(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    async with running_service(make_settings(CASCADE_BATCH_CONCURRENCY=2), database_url, db, sim) as service:
        items: list[dict[str, object]] = [
            {"text": f"{TEXT} {n} {{{{sim:cheap=slow:0.3+conf=0.97}}}}"} for n in range(6)
        ]
        batch = asyncio.create_task(post_batch(service, items))
        peak = 0
        while not batch.done():
            metrics = (await service.client.get("/metrics")).text
            line = next(line for line in metrics.splitlines() if line.startswith("cascade_requests_in_flight "))
            peak = max(peak, int(float(line.split()[1])))
            await asyncio.sleep(0.02)
        response = await batch
    assert response.status_code == 200 and response.json()["ok"] == 6
    assert peak == 2
