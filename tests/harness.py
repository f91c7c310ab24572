"""A running service under test, and the ledger checks every money test ends with."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from service.api.app import create_app
from service.api.server import serving
from service.core.database import Database
from service.core.settings import Settings
from service.money.attempts import AttemptPlan
from service.simulator import Simulator
from service.tables import Attempt, Cap, Request, Team
from service.tenancy.keys import issue_key

SENTIMENT = ["positive", "negative", "neutral"]
# The job worker inside the service, looking for work and rechecking paused jobs often (tests only).
JOB_WORKER = {"CASCADE_RUN_WORKER": "true", "CASCADE_JOB_POLL_S": 0.05, "CASCADE_JOB_PAUSE_RECHECK_S": 0.2}
ADMIN_KEY = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    """Wait on an event the test cannot be told about (polled), not on a guess at how long it takes."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"never happened within {timeout_s:g}s: {what}"
        await asyncio.sleep(0.02)


def service_settings(database_url: str, sim: Simulator, **overrides: Any) -> Settings:
    """Settings for a service under test; keyword overrides use the environment variable names."""
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": sim.url,
        "CASCADE_RETRY_BASE_S": 0.01,
        "CASCADE_RETRY_CAP_S": 0.05,
        "CASCADE_SWEEP_INTERVAL_S": 3600,
        "CASCADE_TEAM_BURST": 100_000,
        "CASCADE_DATA_DIR": str(Path(".cascade-test")),
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def assert_error(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    """The one error shape: {"error": {"type", "message", ...}, "request_id"}, echoed in x-request-id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    error = body["error"]
    assert isinstance(error, dict)
    assert isinstance(error.get("type"), str) and error["type"]
    assert isinstance(error.get("message"), str) and error["message"]
    if type_ is not None:
        assert error["type"] == type_, body
    uuid.UUID(body["request_id"])
    if "idempotent-replayed" not in response.headers:  # a replay carries the first request's id in its body
        assert response.headers.get("x-request-id") == body["request_id"]
    return body


@dataclass
class Service:
    client: httpx.AsyncClient
    key: str
    team_id: uuid.UUID
    db: Database
    sim: Simulator
    settings: Settings

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def classify(self, text: str, labels: Sequence[str] = SENTIMENT, **fields: Any) -> httpx.Response:
        body = {"text": text, "labels": list(labels), **fields}
        return await self.client.post("/v1/classify", json=body, headers=self.auth)

    async def attempts(self, request_id: str | uuid.UUID | None = None) -> list[Attempt]:
        async with self.db.transaction() as session:
            query = select(Attempt).order_by(Attempt.id)
            if request_id is not None:
                query = query.where(Attempt.request_id == uuid.UUID(str(request_id)))
            return list((await session.scalars(query)).all())

    async def request_row(self, request_id: str | uuid.UUID) -> Request:
        async with self.db.transaction() as session:
            row = await session.get(Request, uuid.UUID(str(request_id)))
            assert row is not None
            return row

    async def new_key(self, team: str) -> str:
        return await issue_key(self.db, team)


async def team_id_of(db: Database, name: str) -> uuid.UUID:
    async with db.transaction() as session:
        team_id = await session.scalar(select(Team.id).where(Team.name == name))
        assert team_id is not None
        return team_id


@asynccontextmanager
async def running_service(
    settings: Settings, database_url: str, db: Database, sim: Simulator, team: str = "team-a"
) -> AsyncIterator[Service]:
    app = create_app(settings, database_url, sweeper=False)
    key = await issue_key(db, team)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as client:
        yield Service(client, key, await team_id_of(db, team), db, sim, settings)


async def caps(db: Database) -> list[Cap]:
    async with db.transaction() as session:
        return list((await session.scalars(select(Cap).order_by(Cap.id))).all())


async def assert_ledger_invariants(db: Database, *, requests_finished: bool = True) -> None:
    """After quiescence: nothing held, and every cap's spent equals its ledger rows' costs exactly."""
    async with db.transaction() as session:
        attempts = list((await session.scalars(select(Attempt))).all())
        requests = list((await session.scalars(select(Request))).all())
        cap_rows = list((await session.scalars(select(Cap))).all())
    assert [a.id for a in attempts if a.state != "settled"] == [], "reservations still held"
    for cap in cap_rows:
        assert cap.reserved_usd == 0, f"cap {cap.id} still holds {cap.reserved_usd}"
        assert cap.spent_usd + cap.reserved_usd <= cap.cap_usd
        assert cap.overrun_usd == 0, "an attempt cost more than its reservation"
        in_scope = [
            a
            for a in attempts
            if (cap.scope == "global" or a.team_id == cap.team_id)
            and (
                a.billing_day == cap.period_start
                if cap.period == "day"
                else a.billing_day.replace(day=1) == cap.period_start
            )
        ]
        assert cap.spent_usd == sum((a.cost_usd or Decimal(0) for a in in_scope), Decimal(0)), (
            f"cap {cap.scope}/{cap.period} spent {cap.spent_usd} != ledger sum"
        )
    own: dict[uuid.UUID, Decimal] = {}
    shadow: dict[uuid.UUID, Decimal] = {}
    for a in attempts:
        into = shadow if a.stage == "shadow" else own
        into[a.request_id] = into.get(a.request_id, Decimal(0)) + (a.cost_usd or Decimal(0))
    for request in requests:
        assert request.cost_usd == own.get(request.id, Decimal(0)), f"request {request.id} cost differs"
        assert request.shadow_cost_usd == shadow.get(request.id, Decimal(0)), f"request {request.id} shadow differs"
        assert not requests_finished or request.status != "pending", f"request {request.id} left pending"
        if request.cache_hit:
            assert request.id not in own and request.id not in shadow, "a cache hit makes no call"


# Budget tests: a settable clock, one attempt's plan and its request row.
NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def plan(team_id: uuid.UUID, request_id: uuid.UUID | None = None, attempt_no: int = 1) -> AttemptPlan:
    return AttemptPlan(
        request_id or uuid.uuid4(),
        team_id,
        attempt_no,
        "cheap",
        "claude-haiku-4-5-20251001",
        input_token_bound=2000,
        max_tokens=64,
    )


def request_row(p: AttemptPlan, now: datetime) -> dict[str, object]:
    return {
        "id": p.request_id,
        "team_id": p.team_id,
        "status": "pending",
        "task_hash": "t",
        "labels": ["a", "b"],
        "threshold": Decimal("0.85"),
        "text_chars": 1,
        "cheap_model": p.model,
        "strong_model": "s",
        "created_at": now,
    }


async def put_task(service: Service, name: str, **body: Any) -> httpx.Response:
    return await service.client.put(f"/v1/tasks/{name}", json={"labels": SENTIMENT, **body}, headers=service.auth)


async def classify_task(service: Service, text: str, task: str, **fields: Any) -> httpx.Response:
    return await service.client.post("/v1/classify", json={"text": text, "task": task, **fields}, headers=service.auth)


async def settled(service: Service, timeout_s: float = 30) -> None:
    """Until no shadow call is in flight: they run after the responses, so wait for a quiet ledger."""
    deadline, quiet = asyncio.get_running_loop().time() + timeout_s, 0
    while quiet < 3:
        assert asyncio.get_running_loop().time() < deadline, "shadow calls still in flight"
        await asyncio.sleep(0.1)
        quiet = 0 if any(a.state == "reserved" for a in await service.attempts()) else quiet + 1
