"""Jobs through the Message Batches API: the two-stage cascade at batch prices, end to end."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select

from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator, SimulatorConfig
from service.tables import Attempt, Cap, JobBatch, Request
from service.tenancy.teams import Teams
from tests.harness import (
    JOB_WORKER,
    SENTIMENT,
    Service,
    assert_error,
    assert_ledger_invariants,
    running_service,
    team_id_of,
)
from tests.jobs.harness import items, own_simulator, post_jsonl, results, wait_for


async def create(service: Service, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await service.client.post("/v1/jobs", json=body, headers=service.auth | headers)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def sends(sim: Simulator, job_id: str) -> Counter[tuple[str, int]]:
    """(model, item seq) -> how many times the simulator was sent the item in a batch (custom ids end in it)."""
    prefix = job_id.replace("-", "")[:12]
    return Counter(
        (call.model, int(call.custom_id.rsplit("-", 1)[1]))
        for call in sim.calls
        if call.endpoint == "batch" and call.custom_id and call.custom_id.startswith(prefix)
    )


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
    settings = make_settings(**JOB_WORKER, CASCADE_JOB_BATCH_ITEMS=10)
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


async def test_expired_and_overloaded_requests_are_sent_again_and_a_refused_one_fails_without_escalating(
    jobs_service: Service,
) -> None:
    service, sim = jobs_service, jobs_service.sim
    texts = {
        "overloaded once": "Great kettle. {{sim:cheap=529,conf=0.99}}",
        "expired thrice": "It arrived. {{sim:cheap=drop,drop,drop}}",
        "refused": "Hmm. {{sim:cheap=400}}",
        "strong overloaded": "So-so. {{sim:cheap=conf=0.1;strong=529,529,529}}",
        "plain": "Lovely. {{sim:cheap=conf=0.99}}",
    }
    created = await create(service, {"items": [{"id": k, "text": v} for k, v in texts.items()], "labels": SENTIMENT})
    await wait_for(service, created["id"])
    lines = {line["id"]: line for line in await results(service, created["id"])}
    assert lines["overloaded once"]["status"] == "done" and not lines["overloaded once"]["escalated"]
    assert lines["expired thrice"]["status"] == "done"
    assert lines["expired thrice"]["escalation_reason"] == "cheap_unavailable"
    assert lines["refused"]["status"] == "failed" and lines["refused"]["error"]["type"] == "upstream_rejected"
    assert "invalid_request_error" in lines["refused"]["error"]["message"]
    assert lines["strong overloaded"]["status"] == "failed"
    assert lines["strong overloaded"]["error"]["type"] == "upstream_unavailable"
    assert lines["plain"]["status"] == "done"
    cheap, strong = service.settings.cheap_model, service.settings.strong_model
    sent = sends(sim, created["id"])
    assert {k: (sent[cheap, seq], sent[strong, seq]) for seq, k in enumerate(texts)} == {
        "overloaded once": (2, 0),  # sent again at the same stage, not escalated
        "expired thrice": (3, 1),  # CASCADE_JOB_ITEM_ATTEMPTS (3) expiries, then the strong model
        "refused": (1, 0),  # the request itself was refused: no second try, no escalation
        "strong overloaded": (1, 3),
        "plain": (1, 0),
    }
    async with service.db.transaction() as session:
        rows = list((await session.scalars(select(Attempt))).all())
    for row in rows:
        if row.outcome in ("errored", "expired"):
            assert row.cost_usd == 0 and row.input_tokens == 0, "neither is billed"
    assert sorted(r.outcome for r in rows if r.outcome in ("errored", "expired")) == ["errored"] * 5 + ["expired"] * 3
    await assert_ledger_invariants(service.db)


async def test_a_cancel_that_arrives_during_a_pass_is_never_undone(database_url: str, db: Database) -> None:
    # Sixty one-item batches that stay in progress: the worker's first pass is still submitting when the cancel
    # arrives, and that pass must not end by writing its own status over the cancel.
    config = SimulatorConfig(batch_processing_s=30)
    async with own_simulator(
        database_url, db, config, CASCADE_JOB_BATCH_ITEMS=1, CASCADE_JOB_OPEN_BATCHES=100
    ) as service:
        created = await create(service, {"items": items(60), "labels": SENTIMENT})
        while True:
            status = (await service.client.get(f"/v1/jobs/{created['id']}", headers=service.auth)).json()
            if status["counts"]["cheap"]["in_batch"]:
                break
            await asyncio.sleep(0.01)
        assert status["counts"]["cheap"]["pending"] > 0, "the pass should still be submitting"
        canceled = await service.client.post(f"/v1/jobs/{created['id']}/cancel", headers=service.auth)
        assert canceled.json()["status"] == "canceling"
        done = await wait_for(service, created["id"], until=("canceled", "done"), timeout_s=25)
        assert done["status"] == "canceled" and done["counts"]["canceled"] == 60
        assert {line["status"] for line in await results(service, created["id"])} == {"canceled"}
        await assert_ledger_invariants(db)


async def test_a_batch_gone_from_the_api_is_charged_its_reservation_and_its_items_go_on(
    database_url: str, db: Database
) -> None:
    async with own_simulator(database_url, db, SimulatorConfig(batch_processing_s=60)) as service:
        created = await create(service, {"items": items(3), "labels": SENTIMENT})
        async with db.transaction() as session:
            while (batch := (await session.scalars(select(JobBatch))).first()) is None or not batch.anthropic_id:
                await asyncio.sleep(0.05)
                session.expire_all()
        service.sim.batch_processing_s = 0  # the strong stage's batches end at once
        api = {"x-api-key": "test", "anthropic-version": "2023-06-01"}
        async with httpx.AsyncClient(base_url=service.sim.url, headers=api) as anthropic:
            assert (await anthropic.post(f"/v1/messages/batches/{batch.anthropic_id}/cancel")).status_code == 200
            assert (await anthropic.delete(f"/v1/messages/batches/{batch.anthropic_id}")).status_code == 200
        await wait_for(service, created["id"])
        lines = await results(service, created["id"])
        assert [line["escalation_reason"] for line in lines] == ["cheap_unavailable"] * 3
        async with db.transaction() as session:
            cheap = list((await session.scalars(select(Attempt).where(Attempt.stage == "cheap"))).all())
        assert [a.outcome for a in cheap] == ["unknown"] * 3
        assert all(a.cost_usd == a.reserved_usd > 0 and a.input_tokens is None for a in cheap)
        await assert_ledger_invariants(db)


LONG = "é" * 4000  # 8 KB as UTF-8, 24 KB as the SDK sends it (JSON escapes it)


async def test_batches_are_cut_by_bytes_so_the_api_never_refuses_one_for_its_size(
    database_url: str, db: Database
) -> None:
    config = SimulatorConfig(batch_max_bytes=1_000_000)
    async with own_simulator(database_url, db, config, CASCADE_JOB_BATCH_BYTES=1_000_000) as service:
        body = {"items": [{"text": f"{LONG} {i}"} for i in range(100)], "labels": SENTIMENT}
        created = await create(service, body)
        done = await wait_for(service, created["id"])
        assert done["counts"]["done"] == 100
        async with db.transaction() as session:
            batches = list((await session.scalars(select(JobBatch).where(JobBatch.stage == "cheap"))).all())
        assert len(batches) >= 3 and sum(b.item_count for b in batches) == 100
        assert all(b.state == "ingested" for b in batches)
        await assert_ledger_invariants(db)


async def test_a_batch_the_api_refuses_pauses_the_job_until_the_api_takes_it(database_url: str, db: Database) -> None:
    config = SimulatorConfig(batch_max_bytes=50_000)
    async with own_simulator(database_url, db, config) as service:
        created = await create(service, {"items": [{"text": f"{LONG} {i}"} for i in range(10)], "labels": SENTIMENT})
        paused = await wait_for(service, created["id"], until=("paused_upstream",))
        assert "413" in paused["status_detail"] and "request_too_large" in paused["status_detail"]
        assert paused["counts"]["cheap"]["pending"] == 10 and Decimal(paused["cost_usd"]) == 0
        async with db.transaction() as session:
            released = list((await session.scalars(select(JobBatch))).all())
        assert released and all(b.state == "released" for b in released), "a refused batch holds nothing"
        await assert_ledger_invariants(db, requests_finished=False)  # the job's requests wait with it
        service.sim.batch_max_bytes = 256_000_000
        done = await wait_for(service, created["id"], timeout_s=30)
        assert done["counts"]["done"] == 10
        await assert_ledger_invariants(db)


async def test_texts_that_cannot_be_stored_fail_their_item_and_bad_ids_the_job(jobs_service: Service) -> None:
    service = jobs_service
    body = {"items": [{"text": "fine"}, {"text": "nul\u0000inside"}], "labels": SENTIMENT}
    created = await create(service, body)
    await wait_for(service, created["id"])
    lines = await results(service, created["id"])
    assert [line["status"] for line in lines] == ["done", "failed"]
    assert "NUL" in lines[1]["error"]["message"]
    upload = b'{"text": "fine"}\n{"text": "lone \\ud800 surrogate"}\n'
    response = await post_jsonl(service, upload)
    assert response.status_code == 202, response.text
    await wait_for(service, response.json()["id"])
    lines = await results(service, response.json()["id"])
    assert [line["status"] for line in lines] == ["done", "failed"]
    assert "surrogate" in lines[1]["error"]["message"]
    bad_id = await service.client.post(
        "/v1/jobs", json={"items": [{"id": "a\u0000b", "text": "x"}], "labels": SENTIMENT}, headers=service.auth
    )
    assert "NUL" in assert_error(bad_id, 422, "invalid_request")["error"]["message"]
    long_line = b'{"text": "' + b"x" * 2_000_000 + b'"}\n'
    too_long = await post_jsonl(service, long_line)
    assert "line 1 is longer than" in assert_error(too_long, 422, "invalid_request")["error"]["message"]
    await assert_ledger_invariants(service.db)


async def test_an_idempotency_key_makes_one_job_of_a_repeated_submission(jobs_service: Service) -> None:
    service = jobs_service
    body = {"items": items(5), "labels": SENTIMENT}
    first = await create(service, body, **{"Idempotency-Key": "backfill-1"})
    again = await service.client.post("/v1/jobs", json=body, headers=service.auth | {"Idempotency-Key": "backfill-1"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first["id"]
    other = await service.client.post(
        "/v1/jobs",
        json={"items": items(6), "labels": SENTIMENT},
        headers=service.auth | {"Idempotency-Key": "backfill-1"},
    )
    assert_error(other, 422, "idempotency_key_reused")
    upload = "".join(json.dumps(item) + "\n" for item in items(4)).encode()
    key = {"Idempotency-Key": "upload-1"}
    uploaded, replayed = await post_jsonl(service, upload, **key), await post_jsonl(service, upload, **key)
    assert uploaded.status_code == replayed.status_code == 202
    assert replayed.json()["id"] == uploaded.json()["id"] and replayed.headers["idempotent-replayed"] == "true"
    assert_error(await post_jsonl(service, upload + b'{"text": "one more"}\n', **key), 422, "idempotency_key_reused")
    listed = (await service.client.get("/v1/jobs", headers=service.auth)).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted([first["id"], uploaded.json()["id"]])
    for job_id in (first["id"], uploaded.json()["id"]):
        await wait_for(service, job_id)
    await assert_ledger_invariants(service.db)
