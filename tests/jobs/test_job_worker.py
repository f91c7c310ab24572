"""`cascade worker` killed anywhere: each item ends with exactly one result, each is sent at most once per stage,
and the ledger balances. The worker runs as a real process against the simulator's Message Batches API."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, text

from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator
from service.tables import Job, JobBatch
from tests.harness import SENTIMENT, Service, assert_ledger_invariants, running_service
from tests.jobs.harness import items, post_jsonl, results, wait_for
from tests.processes import CASCADE, clean_env

_CUSTOM_ID = re.compile(r"^[0-9a-f]{12}-\d+-(?P<seq>\d+)$")


@pytest.fixture
async def api(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> AsyncIterator[Service]:
    """The API alone (no worker in it): jobs are run by `cascade worker` processes."""
    async with running_service(make_settings(), database_url, db, sim) as running:
        yield running


async def start_worker(database_url: str, sim: Simulator, log: Path, **env: str) -> asyncio.subprocess.Process:
    defaults = {
        "CASCADE_JOB_POLL_S": "0.05",
        "CASCADE_JOB_LEASE_S": "1",
        "CASCADE_JOB_SUBMIT_TIMEOUT_S": "2",
        "CASCADE_JOB_DOUBT_S": "4",
        "CASCADE_LOG_LEVEL": "INFO",
    }
    environment = clean_env(
        DATABASE_URL=database_url, ANTHROPIC_API_KEY="sim", ANTHROPIC_BASE_URL=sim.url, **(defaults | env)
    )
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(CASCADE, "worker", env=environment, stdout=sink, stderr=sink)


def sends_per_stage(sim: Simulator, job_id: str, cheap_model: str) -> Counter[tuple[str, int]]:
    """(stage, item seq) -> how many times the simulator received that item at that stage."""
    sent: Counter[tuple[str, int]] = Counter()
    for call in sim.calls:
        if (
            call.endpoint != "batch"
            or call.custom_id is None
            or not call.custom_id.startswith(job_id.replace("-", "")[:12])
        ):
            continue
        match = _CUSTOM_ID.match(call.custom_id)
        assert match is not None, call.custom_id
        sent["cheap" if call.model == cheap_model else "strong", int(match["seq"])] += 1
    return sent


async def check_job(api: Service, job_id: str, n: int) -> None:
    lines = await results(api, job_id)
    assert [line["id"] for line in lines] == [f"item-{i}" for i in range(n)], "one result per item, in order"
    assert all(line["status"] == "done" for line in lines)
    sent = sends_per_stage(api.sim, job_id, api.settings.cheap_model)
    assert max(sent.values()) == 1, [k for k, v in sent.items() if v > 1][:10]
    assert {seq for stage, seq in sent if stage == "cheap"} == set(range(n))
    assert sum(1 for stage, _ in sent if stage == "strong") == sum(1 for line in lines if line["escalated"])
    await assert_ledger_invariants(api.db)
    async with api.db.transaction() as session:
        batches = list((await session.scalars(select(JobBatch))).all())
    assert all(b.state in ("ingested", "released") for b in batches)


async def submit(api: Service, n: int) -> str:
    created = await api.client.post("/v1/jobs", json={"items": items(n), "labels": SENTIMENT}, headers=api.auth)
    assert created.status_code == 202, created.text
    job_id: str = created.json()["id"]
    return job_id


@pytest.mark.parametrize("point", ["after_hold", "after_create", "after_submitted", "mid_ingest"])
async def test_a_worker_killed_at_each_step_is_taken_over_with_nothing_sent_twice(
    api: Service, database_url: str, sim: Simulator, tmp_path: Path, point: str
) -> None:
    n = 2500 if point == "mid_ingest" else 30  # an ingest is cut after its first 2,000 lines
    job_id = await submit(api, n)
    log = tmp_path / "worker.log"
    first = await start_worker(database_url, sim, log, CASCADE_WORKER_FAILPOINT=point, CASCADE_JOB_BATCH_ITEMS="3000")
    assert await asyncio.wait_for(first.wait(), 60) == 137, log.read_text()[-3000:]
    assert f"failpoint {point} reached" in log.read_text()
    second = await start_worker(database_url, sim, log, CASCADE_JOB_BATCH_ITEMS="3000")
    try:
        await wait_for(api, job_id, timeout_s=90)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0, log.read_text()[-3000:]
    await check_job(api, job_id, n)
    text = log.read_text()
    if point == "after_hold":
        assert "was never created; releasing its reservation" in text
    if point == "after_create":
        assert "its reply was lost" in text


async def test_a_worker_killed_at_random_again_and_again_still_ends_with_one_result_per_item(
    api: Service, database_url: str, db: Database, sim: Simulator, tmp_path: Path
) -> None:
    n = 20_000
    job_id = await submit(api, n)
    log = tmp_path / "worker.log"
    rng = random.Random(20261125)
    env = {"CASCADE_JOB_BATCH_ITEMS": "2000", "CASCADE_JOB_OPEN_BATCHES": "3"}
    kills = 0
    while kills < 6:
        worker = await start_worker(database_url, sim, log, **env)
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        if worker.returncode is not None:
            raise AssertionError(log.read_text()[-3000:])
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        kills += 1
        async with db.transaction() as session:
            status = await session.scalar(select(Job.status))
        if status == "done":
            break
    assert kills >= 5, "the job ended before the worker had been killed five times"
    worker = await start_worker(database_url, sim, log, **env)
    try:
        await wait_for(api, job_id, timeout_s=180)
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 30)
    await check_job(api, job_id, n)


async def test_a_job_of_100000_items_ends_with_one_result_each_and_a_ledger_at_batch_prices(
    api: Service, database_url: str, db: Database, sim: Simulator, tmp_path: Path
) -> None:
    n = 100_000
    # Statistics taken while the tables are empty, as on a fresh deployment: the job's statements must not depend
    # on the planner knowing how many rows the job added (it once planned a settle quadratic in them).
    async with db.autocommit() as connection:
        await connection.execute(text("ANALYZE attempts, job_items, requests, job_batches"))
    upload = "".join(json.dumps(item) + "\n" for item in items(n)).encode()
    created = await post_jsonl(api, upload)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    log = tmp_path / "worker.log"
    room = {"CASCADE_DAILY_CAP_USD": "1000", "CASCADE_MONTHLY_CAP_USD": "1000"}
    worker = await start_worker(
        database_url,
        sim,
        log,
        CASCADE_JOB_LEASE_S="30",
        CASCADE_JOB_SUBMIT_TIMEOUT_S="60",
        CASCADE_JOB_DOUBT_S="120",
        **room,
    )
    try:
        done = await wait_for(api, job_id, timeout_s=240)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0, log.read_text()[-3000:]
    assert "will retry" not in log.read_text(), "no statement of the job should have failed or timed out"
    lines = await results(api, job_id)
    assert [line["id"] for line in lines] == [f"item-{i}" for i in range(n)], "one result per item, in order"
    assert all(line["status"] == "done" for line in lines)
    sent = sends_per_stage(sim, job_id, api.settings.cheap_model)
    assert max(sent.values()) == 1
    assert sum(1 for stage, _ in sent if stage == "strong") == done["counts"]["escalated"] > 0
    async with db.autocommit() as connection:
        ledger = (
            await connection.execute(
                text("""
                    SELECT count(*) AS attempts,
                           count(*) FILTER (WHERE state <> 'settled' OR batch_id IS NULL
                                            OR price_id NOT LIKE '%/batch') AS off_batch,
                           count(*) FILTER (WHERE cost_usd <> (input_tokens * price_input
                               + cache_write_5m_tokens * price_cache_write_5m
                               + cache_write_1h_tokens * price_cache_write_1h
                               + cache_read_tokens * price_cache_read + output_tokens * price_output) / 1000000)
                               AS mispriced,
                           sum(cost_usd) AS cost
                    FROM attempts
                """)
            )
        ).one()
        spent = await connection.scalar(
            text("SELECT sum(spent_usd) FROM caps WHERE scope = 'global' AND period = 'day'")
        )
    assert ledger.attempts == n + done["counts"]["escalated"]
    assert ledger.off_batch == 0 and ledger.mispriced == 0
    assert Decimal(done["cost_usd"]) == ledger.cost == spent == sum((Decimal(x["cost_usd"]) for x in lines), Decimal(0))
