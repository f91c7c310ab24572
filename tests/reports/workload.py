"""The reports' workload: realistic requests sent through the real service, some then moved in time with SQL.

Two teams, two tasks, two model pairs, every escalation reason, failures after escalation, a cap refusal; some of
its requests are then moved in time, so that windows can start and end exactly on them. The `workload` fixture
(tests/reports/conftest.py) seeds it once, in a database of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import text

from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator
from tests.harness import (
    ADMIN,
    ADMIN_KEY,
    SENTIMENT,
    Service,
    assert_ledger_invariants,
    running_service,
    service_settings,
)
from tests.reports.rows import MICRO

SPAM = ["spam", "ham"]
SPAM_INSTRUCTIONS = "Unsolicited advertising is spam; anything else is ham."
# A second deployment of the service, on another model pair, writes into the same ledger.
OTHER_CHEAP = "claude-haiku-5-5"
OTHER_STRONG = "claude-sonnet-4-6"


@dataclass(frozen=True)
class Case:
    name: str
    team: str
    directive: str
    status: int = 200
    spam: bool = False
    threshold: str | None = None
    other_pair: bool = False  # sent through the second deployment (OTHER_CHEAP / OTHER_STRONG)
    # What the directive must produce, checked on the request row: status, escalated, reason, cheap_label, label.
    outcome: tuple[str, bool, str | None, str | None, str | None] = ("ok", False, None, None, None)


CASES = (
    Case(
        "a-confident", "team-a", "cheap=label=positive+conf=0.95", outcome=("ok", False, None, "positive", "positive")
    ),
    Case(
        "a-confident-2", "team-a", "cheap=label=negative+conf=0.9", outcome=("ok", False, None, "negative", "negative")
    ),
    Case(
        "a-low-same",
        "team-a",
        "cheap=label=negative+conf=0.3;strong=label=negative+conf=0.9",
        outcome=("ok", True, "low_confidence", "negative", "negative"),
    ),
    Case(
        "a-low-changed",
        "team-a",
        "cheap=label=negative+conf=0.2;strong=label=positive+conf=0.95",
        outcome=("ok", True, "low_confidence", "negative", "positive"),
    ),
    Case(
        "a-malformed",
        "team-a",
        "cheap=malformed;strong=label=neutral+conf=0.9",
        outcome=("ok", True, "invalid_answer", None, "neutral"),
    ),
    Case(
        "a-refusal",
        "team-a",
        "cheap=refusal;strong=label=neutral+conf=0.8",
        outcome=("ok", True, "refused", None, "neutral"),
    ),
    Case(
        "a-truncated",
        "team-a",
        "cheap=max_tokens;strong=label=positive+conf=0.9",
        outcome=("ok", True, "truncated", None, "positive"),
    ),
    Case(
        "a-strong-down",
        "team-a",
        "cheap=label=positive+conf=0.1;strong=529,529,529",
        status=503,
        outcome=("failed", True, "low_confidence", "positive", None),
    ),
    Case(
        "a-strong-rejects",
        "team-a",
        "cheap=malformed;strong=malformed",
        status=502,
        outcome=("failed", True, "invalid_answer", None, None),
    ),
    Case(
        "a-cheap-down",
        "team-a",
        "cheap=529,529,529;strong=label=negative+conf=0.93",
        outcome=("ok", True, "cheap_unavailable", None, "negative"),
    ),
    Case(
        "a-unknown-tokens",  # a 504 may have been billed: its tokens are unknown (NULL), charged at the reservation
        "team-a",
        "cheap=504,label=positive+conf=0.95",
        outcome=("ok", False, None, "positive", "positive"),
    ),
    Case("a-spam", "team-a", "cheap=label=spam+conf=0.97", spam=True, outcome=("ok", False, None, "spam", "spam")),
    Case(
        "a-spam-changed",
        "team-a",
        "cheap=label=ham+conf=0.5;strong=label=spam+conf=0.99",
        spam=True,
        outcome=("ok", True, "low_confidence", "ham", "spam"),
    ),
    Case(
        "a-spam-threshold",  # the request raises the threshold above a 0.95 answer
        "team-a",
        "cheap=label=ham+conf=0.95;strong=label=ham+conf=0.97",
        spam=True,
        threshold="0.99",
        outcome=("ok", True, "low_confidence", "ham", "ham"),
    ),
    Case(
        "a-pending",  # made pending afterwards, as if its replica had died
        "team-a",
        "cheap=label=neutral+conf=0.4;strong=label=neutral+conf=0.9",
        outcome=("ok", True, "low_confidence", "neutral", "neutral"),
    ),
    Case(
        "a2-confident",
        "team-a",
        "cheap=label=positive+conf=0.91",
        other_pair=True,
        outcome=("ok", False, None, "positive", "positive"),
    ),
    Case(
        "a2-changed",
        "team-a",
        "cheap=label=neutral+conf=0.3;strong=label=negative+conf=0.9",
        other_pair=True,
        outcome=("ok", True, "low_confidence", "neutral", "negative"),
    ),
    Case(
        "b-refused",  # sent while team-b's daily cap is 0
        "team-b",
        "cheap=label=positive+conf=0.95",
        status=402,
        outcome=("refused", False, None, None, None),
    ),
    Case(
        "b-confident", "team-b", "cheap=label=positive+conf=0.88", outcome=("ok", False, None, "positive", "positive")
    ),
    Case(
        "b-spam-changed",
        "team-b",
        "cheap=label=spam+conf=0.6;strong=label=ham+conf=0.9",
        spam=True,
        outcome=("ok", True, "low_confidence", "spam", "ham"),
    ),
    Case(
        "b-garbage",  # a 200 whose body is not a Message: unknown tokens, then an answer
        "team-b",
        "cheap=garbage,label=neutral+conf=0.99",
        outcome=("ok", False, None, "neutral", "neutral"),
    ),
    Case(
        "b-strong-down",
        "team-b",
        "cheap=refusal;strong=529,529,529",
        status=503,
        outcome=("failed", True, "refused", None, None),
    ),
)


def boundaries(now: datetime) -> dict[str, datetime]:
    """The instants some requests are moved to: around the first hour of a day 23 days ago, and one 31 days ago."""
    midnight = datetime.combine(now.date() - timedelta(days=23), time(), UTC)
    return {
        "T0": now - timedelta(days=31),
        "T1": midnight - MICRO,  # 23:59:59.999999 the day before
        "T2": midnight,
        "T3": midnight + timedelta(hours=1) - MICRO,  # 00:59:59.999999
        "T4": midnight + timedelta(hours=1),
    }


MOVES = {
    "a-confident-2": "T0",
    "a-confident": "T1",
    "b-confident": "T1",
    "a-low-changed": "T2",
    "a-strong-down": "T2",
    "a2-changed": "T2",
    "a-malformed": "T3",
    "b-refused": "T3",
    "a-spam": "T4",
    "b-spam-changed": "T4",
}


@dataclass
class Workload:
    svc: Service
    auth: dict[str, dict[str, str]]  # team -> the headers of its key
    ids: dict[str, str]  # case name -> request id
    at: dict[str, datetime]
    today: date

    @property
    def tomorrow(self) -> datetime:
        return datetime.combine(self.today + timedelta(days=1), time(), UTC)


async def set_caps(svc: Service, team: str, daily: str | None) -> None:
    response = await svc.client.put(
        f"/v1/admin/teams/{team}/caps", json={"daily_usd": daily, "monthly_usd": None}, headers=ADMIN
    )
    assert response.status_code == 200, response.text


async def execute(db: Database, sql: str, **params: Any) -> None:
    async with db.transaction() as session:
        await session.execute(text(sql), params)


async def move(db: Database, request_id: str, at: datetime) -> None:
    """Move a request, and the copy of its creation time on its attempts, to `at`."""
    await execute(db, "UPDATE requests SET created_at = :at WHERE id = :id", at=at, id=uuid.UUID(request_id))
    await execute(
        db, "UPDATE attempts SET request_created_at = :at WHERE request_id = :id", at=at, id=uuid.UUID(request_id)
    )


async def seed(svc: Service, make_settings: Callable[..., Settings], database_url: str) -> Workload:
    auth = {"team-a": svc.auth, "team-b": {"Authorization": f"Bearer {await svc.new_key('team-b')}"}}
    other_settings = make_settings(CASCADE_CHEAP_MODEL=OTHER_CHEAP, CASCADE_STRONG_MODEL=OTHER_STRONG)
    async with running_service(other_settings, database_url, svc.db, svc.sim) as other:

        async def send(case: Case) -> tuple[str, str]:
            body: dict[str, Any] = {
                "text": f"Report case {case.name}: the parcel arrived. {{{{sim:{case.directive}}}}}",
                "labels": SPAM if case.spam else SENTIMENT,
            }
            if case.spam:
                body["instructions"] = SPAM_INSTRUCTIONS
            if case.threshold is not None:
                body["threshold"] = case.threshold
            client, headers = (other.client, other.auth) if case.other_pair else (svc.client, auth[case.team])
            response = await client.post("/v1/classify", json=body, headers=headers)
            assert response.status_code == case.status, (case.name, response.text)
            return case.name, response.json()["id" if case.status == 200 else "request_id"]

        # The refusal first, alone, while team-b's daily cap is 0; then everything else at once.
        await set_caps(svc, "team-b", "0")
        refused = await send(next(c for c in CASES if c.name == "b-refused"))
        await set_caps(svc, "team-b", None)
        ids = dict([refused, *await asyncio.gather(*(send(c) for c in CASES if c.name != "b-refused"))])
    for case in CASES:
        row = await svc.request_row(ids[case.name])
        actual = (row.status, row.escalated, row.escalation_reason, row.cheap_label, row.label)
        assert actual == case.outcome, (case.name, actual)
        expected_cheap = OTHER_CHEAP if case.other_pair else svc.settings.cheap_model
        assert row.cheap_model == expected_cheap
    await assert_ledger_invariants(svc.db)

    now = datetime.now(UTC)
    at = boundaries(now)
    for name, instant in MOVES.items():
        await move(svc.db, ids[name], at[instant])
    # As if its replica had died before recording the outcome: the request stays pending (attempts settled).
    await execute(
        svc.db,
        "UPDATE requests SET status = 'pending', label = NULL, confidence = NULL, model = NULL, escalated = false, "
        "escalation_reason = NULL, latency_ms = NULL, finished_at = NULL WHERE id = :id",
        id=uuid.UUID(ids["a-pending"]),
    )
    return Workload(svc, auth, ids, at, now.date())


def settings_for(database_url: str, sim: Simulator, **overrides: Any) -> Settings:
    """The settings tests.conftest.make_settings gives, with the admin key (that fixture is per test)."""
    return service_settings(database_url, sim, CASCADE_ADMIN_KEY=ADMIN_KEY, **overrides)
