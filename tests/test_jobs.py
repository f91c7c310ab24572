"""Jobs through the Message Batches API: the two-stage cascade at batch prices, end to end."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from service.database import Database
from service.settings import Settings
from service.simulator import Simulator
from service.tables import Attempt, Cap, JobBatch, Request
from service.teams import Teams
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, running_service, team_id_of

TEXTS = [
    "I love this product, it works perfectly.",
    "Terrible. Broke after a day and support ignored me.",
    "It arrived on Tuesday.",
    "Not sure how I feel about the new colour.",
    "Best purchase this year!",
    "Meh.",
]

FAST = {"CASCADE_RUN_WORKER": "true", "CASCADE_JOB_POLL_S": 0.05, "CASCADE_JOB_PAUSE_RECHECK_S": 0.2}


@pytest.fixture
async def jobs_service(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> AsyncIterator[Service]:
    async with running_service(make_settings(**FAST), database_url, db, sim) as running:
        yield running


async def wait_for(
    service: Service, job_id: str, *, until: tuple[str, ...] = ("done",), timeout_s: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        response = await service.client.get(f"/v1/jobs/{job_id}", headers=service.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in until:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"job still {body['status']}: {body}"
        await asyncio.sleep(0.05)


async def results(service: Service, job_id: str) -> list[dict[str, Any]]:
    response = await service.client.get(f"/v1/jobs/{job_id}/results", headers=service.auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def items(n: int) -> list[dict[str, str]]:
    return [{"id": f"item-{i}", "text": f"{TEXTS[i % len(TEXTS)]} (#{i})"} for i in range(n)]


async def test_a_job_runs_both_stages_at_batch_prices_and_answers_every_item(jobs_service: Service) -> None:
    service = jobs_service
    body = {"items": items(40), "labels": SENTIMENT}
    created = await service.client.post("/v1/jobs", json=body, headers=service.auth)
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["item_count"] == 40 and job["counts"]["cheap"]["pending"] == 40
    done = await wait_for(service, job["id"])
    lines = await results(service, job["id"])
    assert [line["id"] for line in lines] == [f"item-{i}" for i in range(40)]
    assert all(line["status"] == "done" and line["label"] in SENTIMENT for line in lines)
    escalated = [line for line in lines if line["escalated"]]
    assert escalated, "some items should have gone to the strong model"
    assert done["counts"]["escalated"] == len(escalated)
    assert Decimal(done["cost_usd"]) == sum((Decimal(line["cost_usd"]) for line in lines), Decimal(0))
    async with service.db.transaction() as session:
        attempts = list((await session.scalars(select(Attempt))).all())
        requests = list((await session.scalars(select(Request))).all())
        batches = list((await session.scalars(select(JobBatch))).all())
    assert {b.stage for b in batches} == {"cheap", "strong"} and all(b.state == "ingested" for b in batches)
    assert len(requests) == 40 and all(str(r.job_id) == job["id"] for r in requests)
    for a in attempts:
        assert a.batch_id is not None and a.price_id.endswith("/batch")
        tokens = (
            a.input_tokens * a.price_input
            + a.cache_write_5m_tokens * a.price_cache_write_5m
            + a.cache_write_1h_tokens * a.price_cache_write_1h
            + a.cache_read_tokens * a.price_cache_read
            + a.output_tokens * a.price_output
        ) / Decimal(1_000_000)
        assert a.cost_usd == tokens
    assert len([a for a in attempts if a.stage == "strong"]) == len(escalated)
    await assert_ledger_invariants(service.db)


async def test_a_jsonl_upload_makes_a_job_and_bad_texts_fail_only_their_item(jobs_service: Service) -> None:
    service = jobs_service
    lines = [{"text": "Great!"}, {"id": "empty", "text": "  "}, {"id": 7, "text": "x" * 30_000}, {"text": "Awful."}]
    upload = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    created = await service.client.post(
        "/v1/jobs/jsonl",
        params=[("labels", label) for label in SENTIMENT],
        content=upload.encode(),
        headers=service.auth | {"Content-Type": "application/x-ndjson"},
    )
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["item_count"] == 4 and job["counts"]["failed"] == 2
    await wait_for(service, job["id"])
    out = await results(service, job["id"])
    assert [line["id"] for line in out] == ["0", "empty", "7", "3"]
    assert [line["status"] for line in out] == ["done", "failed", "failed", "done"]
    assert out[1]["error"]["type"] == "invalid_request" and "empty" in out[1]["error"]["message"]
    assert out[1]["cost_usd"] == "0" and out[1]["request_id"] is None
    await assert_ledger_invariants(service.db)


async def test_a_malformed_upload_is_refused_whole(jobs_service: Service) -> None:
    service = jobs_service
    params = [("labels", label) for label in SENTIMENT]
    headers = service.auth | {"Content-Type": "application/x-ndjson"}
    bad = await service.client.post(
        "/v1/jobs/jsonl", params=params, content=b'{"text": "ok"}\n{oops\n', headers=headers
    )
    body = assert_error(bad, 422, "invalid_request")
    assert "line 2" in body["error"]["message"]
    empty = await service.client.post("/v1/jobs/jsonl", params=params, content=b"", headers=headers)
    assert_error(empty, 422, "invalid_request")
    one_label = await service.client.post(
        "/v1/jobs/jsonl", params=[("labels", "a")], content=b'{"text": "x"}\n', headers=headers
    )
    assert_error(one_label, 422, "invalid_request")
    listed = await service.client.get("/v1/jobs", headers=service.auth)
    assert listed.status_code == 200 and listed.json()["jobs"] == []


async def test_jobs_are_scoped_to_their_team(jobs_service: Service) -> None:
    service = jobs_service
    created = await service.client.post("/v1/jobs", json={"items": items(2), "labels": SENTIMENT}, headers=service.auth)
    job_id = created.json()["id"]
    other = {"Authorization": f"Bearer {await service.new_key('team-b')}"}
    for method, path in (("GET", ""), ("GET", "/results"), ("POST", "/cancel")):
        response = await service.client.request(method, f"/v1/jobs/{job_id}{path}", headers=other)
        assert_error(response, 404, "not_found")
    missing = await service.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=service.auth)
    assert_error(missing, 404, "not_found")
    assert (await service.client.get("/v1/jobs", headers=other)).json()["jobs"] == []
    await wait_for(service, job_id)


async def team_spent(db: Database, team_id: uuid.UUID) -> tuple[Decimal, Decimal]:
    """The team's day cap row: (spent, cap)."""
    async with db.transaction() as session:
        cap = (await session.scalars(select(Cap).where(Cap.team_id == team_id, Cap.period == "day"))).one()
        return cap.spent_usd, cap.cap_usd


async def test_a_job_under_a_cap_pauses_spends_no_more_and_finishes_when_the_cap_is_raised(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    settings = make_settings(**FAST, CASCADE_JOB_BATCH_ITEMS=10)
    body = {"items": items(60), "labels": SENTIMENT}
    async with running_service(settings, database_url, db, sim, team="uncapped") as service:
        free = (await service.client.post("/v1/jobs", json=body, headers=service.auth)).json()
        whole = Decimal((await wait_for(service, free["id"]))["cost_usd"])
        cap = (whole / 3).quantize(Decimal("0.000001"))
        teams = Teams(db)
        await teams.create("capped", daily=cap)
        capped = {"Authorization": f"Bearer {await service.new_key('capped')}"}
        capped_id = await team_id_of(db, "capped")
        job = (await service.client.post("/v1/jobs", json=body, headers=capped)).json()
        service.key = capped["Authorization"].removeprefix("Bearer ")
        paused = await wait_for(service, job["id"], until=("paused_cost_cap",))
        assert "team daily cost cap" in paused["status_detail"]
        await asyncio.sleep(0.5)  # it stays paused, and spends nothing more
        spent, limit = await team_spent(db, capped_id)
        assert limit == cap and spent <= cap
        assert (
            spent > 0 and Decimal((await wait_for(service, job["id"], until=("paused_cost_cap",)))["cost_usd"]) == spent
        )
        partial = await results(service, job["id"])
        assert 0 < len(partial) < 60
        await teams.set_caps("capped", cap * 10, None, datetime.now(UTC).date())
        done = await wait_for(service, job["id"])
        lines = await results(service, job["id"])
        assert [line["id"] for line in lines] == [f"item-{i}" for i in range(60)]
        assert all(line["status"] == "done" for line in lines)
        # The same items cost the same, paused or not.
        assert Decimal(done["cost_usd"]) == whole
        await assert_ledger_invariants(db)
