"""Jepsen-style bank check: 3 `cascade serve` replicas on one PostgreSQL, ~20% upstream faults, 200 clients
across 3 teams, caps that refuse about half the demand; with PostgreSQL restarts, and with a replica killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.core import schema
from service.core.clock import utcnow
from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator, SimulatorConfig
from service.simulator.corpus import LABEL_SETS, SAMPLES
from service.tables import Attempt, Cap, Request
from service.tenancy.keys import issue_key
from service.tenancy.teams import Teams
from tests.cluster import Cluster
from tests.harness import assert_ledger_invariants, until
from tests.processes import CASCADE, free_port

CLIENTS = 200
REQUESTS = 2000
TEAMS = ("red", "green", "blue")
TEAM_DAILY_CAP = Decimal("0.15")  # roughly half of what each team's share of the workload costs
FAULTS = {"429": 0.04, "529": 0.05, "500": 0.05, "slow": 0.02, "malformed": 0.03, "drop": 0.01}
TTL_S = 8.0
SWEEP_S = 1.0


@dataclass
class Fleet:
    cluster: Cluster
    db: Database
    sim: Simulator
    keys: dict[str, str]
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        for _ in range(300):
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not become ready")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    cluster = Cluster(tmp_path)
    await asyncio.to_thread(schema.upgrade, cluster.url)
    settings = Settings(_env_file=None, ANTHROPIC_API_KEY="unused")  # type: ignore[call-arg]
    db = Database(cluster.url, settings)
    teams = Teams(db)
    for name in TEAMS:
        await teams.create(name, daily=TEAM_DAILY_CAP)
    keys = {name: await issue_key(db, name) for name in TEAMS}
    config = SimulatorConfig(seed=11, latency_ms=5, fault_rates=FAULTS, slow_seconds=2.0, retry_after_seconds=0.05)
    async with Simulator(config) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CASCADE_", "DATABASE_URL"))}
        env |= {
            "DATABASE_URL": cluster.url,
            "ANTHROPIC_API_KEY": "simulated",
            "ANTHROPIC_BASE_URL": sim.url,
            "CASCADE_REQUEST_DEADLINE_S": "5",
            "CASCADE_ATTEMPT_TIMEOUT_S": "1",
            "CASCADE_RETRY_BASE_S": "0.05",
            "CASCADE_RETRY_CAP_S": "0.2",
            "CASCADE_RESERVATION_TTL_S": str(TTL_S),
            "CASCADE_SWEEP_INTERVAL_S": str(SWEEP_S),
            "CASCADE_DB_TIMEOUT_S": "2",
            "CASCADE_TEAM_BURST": "1000000",
            "CASCADE_DAILY_CAP_USD": "1000",
        }
        result = Fleet(cluster, db, sim, keys)
        for _ in range(3):
            port = free_port()
            process = await asyncio.create_subprocess_exec(
                CASCADE,
                "serve",
                "--port",
                str(port),
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            result.processes.append(process)
            result.urls.append(f"http://127.0.0.1:{port}")
        try:
            # Inside the try: replicas that started are stopped even when one never becomes ready.
            await asyncio.gather(*(wait_ready(url) for url in result.urls))
            yield result
        finally:
            for process in result.processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            for process in result.processes:
                try:
                    await asyncio.wait_for(process.wait(), timeout=20)
                except TimeoutError:
                    process.kill()
            await db.dispose()
            await asyncio.to_thread(cluster.stop)


@dataclass
class Outcome:
    responses: list[tuple[str, int, dict[str, object] | None]] = field(default_factory=list)
    transport_errors: int = 0
    cap_samples: int = 0
    cap_violations: list[str] = field(default_factory=list)


async def load(fleet: Fleet, outcome: Outcome, chaos: asyncio.Task[None] | None = None) -> None:
    rng = random.Random(3)
    bodies = [rng.choice(SAMPLES) for _ in range(REQUESTS)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)

    async def client(n: int, http: httpx.AsyncClient) -> None:
        team = TEAMS[n % len(TEAMS)]
        while not queue.empty():
            i = queue.get_nowait()
            sample = bodies[i]
            url = fleet.urls[(n + i) % len(fleet.urls)]
            body = {"text": f"{sample.text} (#{i})", "labels": LABEL_SETS[sample.task]}
            try:
                response = await http.post(f"{url}/v1/classify", json=body, headers={"x-api-key": fleet.keys[team]})
            except httpx.TransportError:
                outcome.transport_errors += 1
                continue
            payload = (
                response.json() if response.headers.get("content-type", "").startswith("application/json") else None
            )
            outcome.responses.append((team, response.status_code, payload))

    async def sample_caps(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with fleet.db.transaction() as session:
                    for cap in (await session.scalars(select(Cap))).all():
                        outcome.cap_samples += 1
                        if cap.spent_usd + cap.reserved_usd > cap.cap_usd:
                            outcome.cap_violations.append(
                                f"{cap.scope}/{cap.period}: {cap.spent_usd}+{cap.reserved_usd}"
                            )
            except Exception:  # the database may be down on purpose  # noqa: S110
                pass
            await asyncio.sleep(0.02)

    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_caps(stop))
    limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(n, http) for n in range(CLIENTS)))
    if chaos is not None:
        await chaos
    stop.set()
    await sampler


async def settle_down(fleet: Fleet) -> None:
    """Wait until no reservation is held (the sweepers take what dead or cut-off holders left)."""
    for _ in range(int((TTL_S + 6 * SWEEP_S) * 10) * 3):
        async with fleet.db.transaction() as session:
            held = (await session.scalars(select(Attempt.id).where(Attempt.state == "reserved"))).all()
            pending = (await session.scalars(select(Request.id).where(Request.status == "pending"))).all()
        if not held and not pending:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(held)} reservations still held, {len(pending)} requests pending")


async def check(fleet: Fleet, outcome: Outcome) -> Counter[int]:
    statuses = Counter(status for _, status, _ in outcome.responses)
    print(f"statuses: {dict(statuses)}, transport errors: {outcome.transport_errors}")
    assert outcome.cap_samples > 100
    assert outcome.cap_violations == [], outcome.cap_violations[:5]
    assert set(statuses) <= {200, 402, 502, 503, 504}, statuses
    assert len(outcome.responses) + outcome.transport_errors == REQUESTS
    refused = statuses[402] / REQUESTS
    # How much is refused depends on how many worst-case reservations are held at once, that is on timing: with
    # fast reservations a burst of refusals (no upstream call, so quick) can use up most of the requests while
    # the first answers are in flight. The test needs both many refusals and enough answers to check.
    assert refused >= 0.1 and statuses[200] >= 50, f"the caps should refuse a large share of the demand: {statuses}"

    await settle_down(fleet)
    await assert_ledger_invariants(fleet.db)
    async with fleet.db.transaction() as session:
        attempts = (await session.scalars(select(Attempt))).all()
        requests = {r.id: r for r in (await session.scalars(select(Request))).all()}
    by_request = Counter(a.request_id for a in attempts)
    for _, status, payload in outcome.responses:
        if status == 200:
            assert payload is not None
            request = requests[__import__("uuid").UUID(str(payload["id"]))]
            assert request.status == "ok"
            assert by_request[request.id] == len(payload["attempts"])  # type: ignore[arg-type]
            assert format(request.cost_usd.normalize(), "f") == payload["cost_usd"] or request.cost_usd == Decimal(
                str(payload["cost_usd"])
            )

    calls = [c for c in fleet.sim.calls if c.endpoint == "messages"]
    known = {a.upstream_request_id for a in attempts if a.upstream_request_id}
    assert known <= {c.request_id for c in calls}, "a ledger row names an upstream request the simulator never saw"
    # A call the simulator answered but whose answer the service never read (it timed out first, or its
    # replica died) has a ledger row charged at its reservation, with no upstream id.
    unread = [a for a in attempts if a.upstream_request_id is None and a.cost_usd == a.reserved_usd]
    unmatched = [c for c in calls if c.request_id and c.status and c.request_id not in known]
    assert len(unmatched) <= len(unread), (len(unmatched), len(unread))
    # Every row that names an upstream request id matches one call (checked above). A row without a call is one
    # whose outcome the service could not know, charged at its reservation because it may have been billed: a
    # timeout or a dropped connection (the overall timeout can fire before the request left, while httpx2 still
    # waits for a connection), a reservation whose holder died before calling (a killed replica), or one whose
    # commit went through while its acknowledgement was lost (PostgreSQL stopped at that instant), which the
    # sweeper charged at its worst case since it cannot know that no call was made. A row that provably never
    # left is charged 0.
    unknown = [a for a in attempts if a.upstream_request_id is None and a.cost_usd in (0, a.reserved_usd)]
    extra = Counter(
        (a.outcome, a.http_status, a.settled_by, a.cost_usd == a.reserved_usd)
        for a in attempts
        if a.upstream_request_id is None
    )
    assert len(calls) <= len(attempts) <= len(calls) + len(unknown), (
        "every upstream call has exactly one ledger row, and a row without a call is an unknown outcome",
        len(attempts),
        len(calls),
        extra,
    )
    answered = [a for a in attempts if a.upstream_request_id is not None]
    assert len({a.upstream_request_id for a in answered}) == len(answered), "an upstream id is in one row"
    for team in TEAMS:
        spent = [c for c in await caps_of(fleet.db) if c.scope == "team"]
        assert all(c.spent_usd <= c.cap_usd for c in spent), team
    return statuses


async def caps_of(db: Database) -> list[Cap]:
    async with db.transaction() as session:
        return list((await session.scalars(select(Cap))).all())


async def test_replicas_hold_the_caps_under_upstream_faults(fleet: Fleet) -> None:
    outcome = Outcome()
    await load(fleet, outcome)
    statuses = await check(fleet, outcome)
    # A rare keep-alive race of the test's own HTTP client (a reused connection the server just closed) is
    # not a service fault; the replicas must all still be up, and the money checks above cover every request.
    assert outcome.transport_errors <= 5
    assert all(process.returncode is None for process in fleet.processes), "a replica died"
    assert statuses[200] > 0


async def test_replicas_recover_from_postgres_restarts(fleet: Fleet) -> None:
    async def restart_postgres_three_times() -> None:
        for _ in range(3):
            await asyncio.sleep(1.0)
            await asyncio.to_thread(fleet.cluster.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(fleet.cluster.start)

    outcome = Outcome()
    chaos = asyncio.create_task(restart_postgres_three_times())
    await load(fleet, outcome, chaos)
    statuses = await check(fleet, outcome)
    assert statuses[503] > 0, "requests during the outages are refused"
    unavailable = [p for _, s, p in outcome.responses if s == 503 and p]
    assert any(p["error"]["type"] == "database_unavailable" for p in unavailable)  # type: ignore[index]
    for url in fleet.urls:  # recovered without a restart
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/health/ready")).status_code == 200


async def test_a_killed_replicas_reservations_are_swept(fleet: Fleet) -> None:
    async def kill_one_replica() -> None:
        # Kill it while it holds reservations of its own: a few slow calls sent to it alone, seen at the simulator
        # (so reserved by this replica), then SIGKILL; the survivors' sweepers must take them.
        marker = "{{sim:cheap=slow:30+conf=0.97}} held by the doomed replica"

        async def slow(http: httpx.AsyncClient, n: int) -> None:
            body = {"text": f"{marker} #{n}", "labels": LABEL_SETS["sentiment"]}
            with contextlib.suppress(httpx.TransportError):
                await http.post(f"{fleet.urls[0]}/v1/classify", json=body, headers={"x-api-key": fleet.keys[TEAMS[0]]})

        async def reserved() -> bool:
            return sum(1 for c in fleet.sim.calls if "held by the doomed replica" in c.text) >= 3

        async with httpx.AsyncClient(timeout=60) as http:
            doomed = [asyncio.create_task(slow(http, n)) for n in range(3)]
            await until(reserved, "the doomed replica's calls at the simulator")
            fleet.processes[0].send_signal(signal.SIGKILL)
            await fleet.processes[0].wait()
            killed_at.append(utcnow())
            await asyncio.gather(*doomed)

    killed_at: list[object] = []
    outcome = Outcome()
    chaos = asyncio.create_task(kill_one_replica())
    await load(fleet, outcome, chaos)
    assert killed_at, "the replica was killed mid-load"
    await check(fleet, outcome)
    async with fleet.db.transaction() as session:
        swept = (await session.scalars(select(Attempt).where(Attempt.settled_by == "sweeper"))).all()
    assert swept, "the dead replica's reservations were swept"
    assert all(a.cost_usd == a.reserved_usd and a.outcome == "unknown" for a in swept)
