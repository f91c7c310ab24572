"""SIGTERM under load on a real `cascade serve --workers 2`: in-flight requests finish (or are cancelled and
settled), nothing stays reserved, every 200 has its ledger rows, the logs are JSON, and the workers' metrics sum."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service.core.database import Database
from service.simulator import Simulator
from service.tables import Attempt, Request
from tests.harness import SENTIMENT, assert_ledger_invariants, until
from tests.processes import CASCADE, clean_env, free_port, run

TEXT = "The kettle boils fast and the lid shuts well."


def read(log: Path) -> str:
    return log.read_text()


async def start(database_url: str, sim: Simulator, log: Path, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    environment = clean_env(
        DATABASE_URL=database_url,
        ANTHROPIC_API_KEY="sim",
        ANTHROPIC_BASE_URL=sim.url,
        CASCADE_TEAM_BURST="100000",
        CASCADE_TEAM_RATE_PER_S="100000",
        **env,
    )
    with log.open("wb") as sink:
        server = await asyncio.create_subprocess_exec(
            CASCADE, "serve", "--port", str(port), "--workers", "2", env=environment, stdout=sink, stderr=sink
        )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(300):
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return server, url
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    server.kill()
    raise AssertionError("cascade serve did not become ready: " + read(log)[-2000:])


async def load(url: str, key: str, behaviour: str, stop: asyncio.Event, ok: list[str], failed: list[str]) -> None:
    """One client: a new connection per request (as a load balancer would), until the server is gone."""
    n = 0
    while True:
        n += 1
        body = {"text": f"{TEXT} {id(ok)}-{n}-{time.monotonic_ns()} {{{{sim:{behaviour}}}}}", "labels": SENTIMENT}
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                response = await client.post("/v1/classify", json=body, headers={"x-api-key": key})
        except httpx.TransportError:
            if stop.is_set():
                return
            failed.append("transport")
            await asyncio.sleep(0.05)
            continue
        if response.status_code == 200:
            ok.append(response.json()["id"])
        else:
            failed.append(str(response.status_code))
        if stop.is_set():
            return


async def ledger(db: Database) -> tuple[list[Request], list[Attempt]]:
    async with db.transaction() as session:
        requests = list((await session.scalars(select(Request))).all())
        attempts = list((await session.scalars(select(Attempt))).all())
    return requests, attempts


def ok_requests(metrics_text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "cascade_requests_total" and s.labels["outcome"] == "ok":
                total += s.value
    return total


async def terminate_under_load(
    database_url: str, db: Database, sim: Simulator, tmp_path: Path, *, behaviour: str, grace_s: int
) -> tuple[list[str], list[str], int, list[dict[str, Any]]]:
    _, out, _ = await run("keys", "create", "--team", "ops", env=clean_env(DATABASE_URL=database_url))
    key = out.strip().splitlines()[-1]
    log = tmp_path / "serve.log"
    server, url = await start(database_url, sim, log, CASCADE_SHUTDOWN_GRACE_S=str(grace_s))
    ok: list[str] = []
    failed: list[str] = []
    stop = asyncio.Event()
    try:
        # Warm-up, finished before the scrape: whichever worker answers, /metrics sums both workers' counters.
        warm = asyncio.Event()
        warm.set()
        await asyncio.gather(*(load(url, key, "cheap=conf=0.97", warm, ok, failed) for _ in range(8)))
        assert len(ok) == 8 and not failed
        async with httpx.AsyncClient(base_url=url) as client:
            scrapes = [ok_requests((await client.get("/metrics")).text) for _ in range(4)]
        assert scrapes == [8.0] * 4

        clients = [asyncio.create_task(load(url, key, behaviour, stop, ok, failed)) for _ in range(24)]

        # Signal once every client has had a call reach the simulator (waiting on the event, not on a guess at
        # how long that takes: on a busy machine the database may take seconds to admit 24 reservations).
        async def all_in_flight() -> bool:
            return len(sim.calls) >= 8 + 24

        await until(all_in_flight, "every client's call at the simulator")
        in_flight_at_signal = len(sim.calls)
        stop.set()
        server.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(server.wait(), timeout=grace_s + 30)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=60)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    assert in_flight_at_signal >= 8 + 24, in_flight_at_signal
    lines = [json.loads(line) for line in read(log).splitlines() if line.strip()]
    return ok, failed, code, lines


async def test_sigterm_lets_in_flight_requests_finish_and_settle(
    database_url: str, db: Database, sim: Simulator, tmp_path: Path
) -> None:
    ok, failed, code, lines = await terminate_under_load(
        database_url, db, sim, tmp_path, behaviour="cheap=slow:2+conf=0.97", grace_s=20
    )
    assert code == 0
    # The calls in flight at SIGTERM (one per client) were answered, not dropped.
    assert len(ok) >= 8 + 24, (len(ok), Counter(failed))
    assert set(failed) <= {"transport"}, Counter(failed)
    requests, attempts = await ledger(db)
    by_id = {str(r.id): r for r in requests}
    for request_id in ok:
        row = by_id[request_id]
        assert row.status == "ok" and row.label in SENTIMENT
        mine = [a for a in attempts if str(a.request_id) == request_id]
        assert mine and all(a.state == "settled" and a.settled_by == "holder" for a in mine)
        assert row.cost_usd == sum(a.cost_usd or 0 for a in mine)
    assert [r.id for r in requests if r.status == "pending"] == []
    await assert_ledger_invariants(db)
    # Every answered classification has its JSON access line; keys never appear.
    answered = {line["request_id"] for line in lines if line.get("path") == "/v1/classify" and line["status"] == 200}
    assert answered == set(ok)


async def test_sigterm_past_the_grace_period_cancels_and_still_settles(
    database_url: str, db: Database, sim: Simulator, tmp_path: Path
) -> None:
    _, failed, code, _ = await terminate_under_load(
        database_url, db, sim, tmp_path, behaviour="cheap=slow:20+conf=0.97", grace_s=1
    )
    assert code == 0
    assert failed, "the calls still in flight after the grace period were cut off"
    _, attempts = await ledger(db)
    cancelled = [a for a in attempts if a.outcome == "cancelled"]
    assert len(cancelled) >= 8, Counter(a.outcome for a in attempts)
    # Cut off mid-call, each attempt was charged its reservation (it may have been billed); nothing stays held.
    assert all(a.state == "settled" and a.cost_usd == a.reserved_usd for a in cancelled)
    assert [a.id for a in attempts if a.state == "reserved"] == []
    await assert_ledger_invariants(db, requests_finished=False)
