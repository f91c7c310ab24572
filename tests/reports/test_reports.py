"""Escalation and cost reports, the request list and its exports: every figure checked against the raw rows.

A realistic workload goes through the real service (two teams, two tasks, two model pairs, every escalation
reason, failures after escalation, a cap refusal); some of its requests are then moved in time with SQL, so that
windows can start and end exactly on them. The expected reports are computed here from the `requests` and
`attempts` rows with exact arithmetic (Fraction, half-even rounding), never with service.reports.service, and compared
with the API's decimal strings.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import itertools
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import partial
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service.core import schema
from service.core.database import Database
from service.core.settings import Settings
from service.money.catalog import Catalog, TokenUsage
from service.reports.audit import COLUMNS
from service.simulator import Simulator
from tests.harness import (
    ADMIN,
    ADMIN_KEY,
    SENTIMENT,
    Service,
    assert_error,
    assert_ledger_invariants,
    running_service,
    service_settings,
)

SPAM = ["spam", "ham"]
SPAM_INSTRUCTIONS = "Unsolicited advertising is spam; anything else is ham."
# A second deployment of the service, on another model pair, writes into the same ledger.
OTHER_CHEAP = "claude-haiku-5-5"
OTHER_STRONG = "claude-sonnet-4-6"
TOKEN_KINDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
MICRO = timedelta(microseconds=1)
ESCALATION_RATIOS = ("escalation_rate", "cheap_mean_confidence", "changed_share")
COST_DECIMALS = (
    "cost_usd",
    "shadow_cost_usd",
    "eval_cost_usd",
    "cost_mean_usd",
    "cost_p50_usd",
    "cost_p95_usd",
    "all_strong_cost_usd",
    "savings_usd",
    "savings_pct",
)
MAX_BUCKETS = 200

Row = dict[str, Any]
Query = dict[str, str] | None


# --- the workload ---------------------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
async def workload(server_url: str, simulator: Simulator) -> AsyncIterator[Workload]:
    """The workload, seeded once for the tests that only read it, in a database of this module's own (created
    and dropped here), so that no other test's truncation reaches it and it leaves nothing behind."""
    name = f"cascade_reports_{uuid.uuid4().hex[:10]}"
    server = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with server.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(schema.upgrade, url)
        make_settings = partial(settings_for, url, simulator)
        db = Database(url, make_settings())
        simulator.reset()
        try:
            async with running_service(make_settings(), url, db, simulator) as svc:
                yield await seed(svc, make_settings, url)
        finally:
            await db.dispose()
    finally:
        async with server.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await server.dispose()


# --- raw rows and exact arithmetic ------------------------------------------------------------------------------


async def load(db: Database) -> tuple[list[Row], list[Row]]:
    async with db.transaction() as session:
        requests = [
            dict(r._mapping)
            for r in await session.execute(
                text("SELECT r.*, t.name AS team FROM requests r JOIN teams t ON t.id = r.team_id")
            )
        ]
        attempts = [
            dict(r._mapping)
            for r in await session.execute(
                text("SELECT a.*, t.name AS team FROM attempts a JOIN teams t ON t.id = a.team_id")
            )
        ]
    return requests, attempts


def rounded(value: Fraction, places: int) -> Decimal:
    """Exactly `value` rounded half to even to `places` decimals (Fraction.__round__ rounds half to even)."""
    return Decimal(round(value * 10**places)).scaleb(-places)


def ratio(part: Fraction | Decimal | int, whole: Fraction | Decimal | int, places: int = 6) -> Decimal | None:
    if whole == 0:
        return None
    return rounded(Fraction(part) / Fraction(whole), places)


def nearest_rank(values: list[Decimal], percent: int) -> Decimal | None:
    """The smallest value with at least `percent`% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-percent * len(ordered) // 100))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def __contains__(self, instant: datetime) -> bool:
        return self.start <= instant < self.end

    def params(self) -> dict[str, str]:
        return {"start": iso(self.start), "end": iso(self.end)}


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def requests_in(requests: list[Row], window: Window, team: str | None) -> list[Row]:
    return [r for r in requests if r["created_at"] in window and team in (None, r["team"])]


def settled_in(attempts: list[Row], window: Window, team: str | None) -> list[Row]:
    return [
        a
        for a in attempts
        if a["state"] == "settled" and a["request_created_at"] in window and team in (None, a["team"])
    ]


def time_keys(group_by: str, window: Window) -> list[str]:
    """Every hour or day (UTC) the window touches."""
    if group_by == "day":
        first, last = window.start.date(), (window.end - MICRO).date()
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    hour = window.start.replace(minute=0, second=0, microsecond=0)
    keys = []
    while hour < window.end:
        keys.append(hour.strftime("%Y-%m-%dT%H:00:00Z"))
        hour += timedelta(hours=1)
    return keys


def request_key(group_by: str, row: Row, created: str = "created_at") -> Any:
    instant: datetime = row[created].astimezone(UTC)
    if group_by == "hour":
        return instant.strftime("%Y-%m-%dT%H:00:00Z")
    if group_by == "day":
        return instant.date().isoformat()
    column = {"task": "task_hash", "model": "cheap_model", "label": "label", "team": "team"}[group_by]
    return row[column]


def task_of(requests: list[Row], task_hash: str) -> dict[str, Any]:
    row = next(r for r in requests if r["task_hash"] == task_hash)
    assert row["task_id"] is None, "this workload's tasks are given inline (tests/tasks covers named ones)"
    return {"labels": row["labels"], "instructions": row["instructions"], "name": None, "version": None}


# --- expected reports --------------------------------------------------------------------------------------------


def escalation_figures(rows: list[Row]) -> Row:
    decided = [r for r in rows if r["escalated"] or (r["status"] == "ok" and not r["cache_hit"])]
    escalated = [r for r in rows if r["escalated"]]
    confidences = [Fraction(r["cheap_confidence"]) for r in rows if r["cheap_confidence"] is not None]
    compared = [r for r in escalated if r["status"] == "ok" and r["cheap_label"] is not None]
    changed = [r for r in compared if r["label"] != r["cheap_label"]]
    return {
        "requests": len(rows),
        "answered": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "refused": sum(r["status"] == "refused" for r in rows),
        "decided": len(decided),
        "escalated": len(escalated),
        "cache_hits": sum(bool(r["cache_hit"]) for r in rows),
        "escalation_rate": ratio(len(escalated), len(decided)),
        "reasons": dict(Counter(r["escalation_reason"] for r in escalated)),
        "cheap_answers": len(confidences),
        "cheap_mean_confidence": ratio(sum(confidences, Fraction(0)), len(confidences)),
        "compared": len(compared),
        "changed": len(changed),
        "changed_share": ratio(len(changed), len(compared)),
    }


def expected_escalations(
    requests: list[Row], window: Window, group_by: str, team: str | None
) -> tuple[dict[Any, Row], list[Any] | None, Row]:
    """(buckets by key, the key order for time buckets else None, totals)."""
    rows = [r for r in requests_in(requests, window, team) if r["status"] != "pending" and r["eval_run_id"] is None]
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        groups[request_key(group_by, row)].append(row)
    order = time_keys(group_by, window) if group_by in ("hour", "day") else None
    buckets = {
        key: {
            "key": key,
            **escalation_figures(groups.get(key, [])),
            "task": task_of(rows, key) if group_by == "task" else None,
        }
        for key in (order if order is not None else groups)
    }
    assert order is None or set(groups) <= set(order), "a row outside the window's buckets"
    return buckets, order, {"key": None, **escalation_figures(rows), "task": None}


def money(costs: list[Decimal], all_strong: Decimal | None, rows: list[Row] | None = None) -> Row:
    """Cost figures of requests (`rows`: their request rows, for the request-based buckets; None per model)."""
    total = sum(costs, Decimal(0))
    savings = None if all_strong is None else all_strong - total
    rows = rows or []
    return {
        "requests": len(costs),
        "cache_hits": sum(bool(r["cache_hit"]) for r in rows),
        "cost_usd": total,
        "shadow_cost_usd": sum((r["shadow_cost_usd"] for r in rows), Decimal(0)),
        "cost_mean_usd": ratio(total, len(costs), 10),
        "cost_p50_usd": nearest_rank(costs, 50),
        "cost_p95_usd": nearest_rank(costs, 95),
        "all_strong_cost_usd": all_strong,
        "savings_usd": savings,
        "savings_pct": None if all_strong is None or savings is None else ratio(100 * savings, all_strong, 2),
    }


def model_costs(attempts: Iterable[Row]) -> list[Row]:
    by_model: dict[str, list[Row]] = defaultdict(list)
    for a in attempts:
        by_model[a["model"]].append(a)
    return [
        {
            "model": model,
            "attempts": len(rows),
            "tokens": {kind: sum(a[f"{kind}_tokens"] or 0 for a in rows) for kind in TOKEN_KINDS},
            "cost_usd": sum((a["cost_usd"] for a in rows), Decimal(0)),
        }
        for model, rows in sorted(by_model.items())
    ]


def request_costs(rows: list[Row]) -> Row:
    mine = [r for r in rows if r["eval_run_id"] is None]  # evaluations are apart
    figures = money([r["cost_usd"] for r in mine], sum((r["all_strong_cost_usd"] for r in mine), Decimal(0)), rows)
    figures["eval_cost_usd"] = sum((r["cost_usd"] for r in rows if r["eval_run_id"] is not None), Decimal(0))
    return figures


def usage_of(a: Row) -> TokenUsage:
    return TokenUsage(**{kind: a[f"{kind}_tokens"] or 0 for kind in TOKEN_KINDS})


def break_even(cheap_attempts: list[Row], observed: Decimal | None, cheap: str, strong: str) -> Row:
    usage = TokenUsage(**{kind: sum(a[f"{kind}_tokens"] or 0 for a in cheap_attempts) for kind in TOKEN_KINDS})
    basis = "observed"
    if usage.prompt_tokens + usage.output == 0:
        usage, basis = TokenUsage(input=1000, output=50), "nominal"
    now = datetime.now(UTC)
    catalog = Catalog()
    cheap_cost = Fraction(catalog.price(cheap, now).cost(usage))
    strong_cost = Fraction(catalog.price(strong, now).cost(usage))
    return {
        "cheap_model": cheap,
        "strong_model": strong,
        "rate": rounded(1 - cheap_cost / strong_cost, 6),
        "basis": basis,
        "observed_rate": observed,
    }


def expected_costs(
    requests: list[Row], attempts: list[Row], window: Window, group_by: str, team: str | None, settings: Settings
) -> tuple[dict[Any, Row], list[Any] | None, Row, Row]:
    """(buckets by key, the key order for day buckets else None, totals, break_even)."""
    rows = requests_in(requests, window, team)
    settled = settled_in(attempts, window, team)
    buckets: dict[Any, Row] = {}
    order = None
    if group_by == "model":
        for model, of_model in itertools.groupby(sorted(settled, key=lambda a: a["model"]), key=lambda a: a["model"]):
            spent: dict[uuid.UUID, Decimal] = defaultdict(Decimal)
            calls = list(of_model)
            for a in calls:
                spent[a["request_id"]] += a["cost_usd"]
            buckets[model] = {
                "key": model,
                **money(list(spent.values()), None),
                "eval_cost_usd": Decimal(0),
                "models": model_costs(calls),
            }
    else:
        groups: dict[Any, list[Row]] = defaultdict(list)
        calls_of: dict[Any, list[Row]] = defaultdict(list)
        for row in rows:
            groups[request_key(group_by, row)].append(row)
        for a in settled:
            calls_of[request_key(group_by, a, "request_created_at")].append(a)
        assert set(calls_of) <= set(groups), "an attempt whose request is outside the window"
        order = time_keys(group_by, window) if group_by == "day" else None
        for key in order if order is not None else groups:
            buckets[key] = {"key": key, **request_costs(groups.get(key, [])), "models": model_costs(calls_of[key])}
    for key, bucket in buckets.items():
        bucket["task"] = task_of(rows, key) if group_by == "task" else None
    totals = {"key": None, **request_costs(rows), "models": model_costs(settled), "task": None}
    mine = [r for r in rows if r["eval_run_id"] is None]
    decided = sum(r["escalated"] or (r["status"] == "ok" and not r["cache_hit"]) for r in mine)
    observed = ratio(sum(r["escalated"] for r in mine), decided)
    cheap = [a for a in settled if a["stage"] == "cheap"]
    return buckets, order, totals, break_even(cheap, observed, settings.cheap_model, settings.strong_model)


# --- the API's answers, canonicalised ----------------------------------------------------------------------------


def dec(value: Any) -> Decimal | None:
    """A decimal string as the API writes it: normalized, no exponent, "0" for zero; or null."""
    if value is None:
        return None
    assert isinstance(value, str), f"a decimal is a string on the wire, not {value!r}"
    number = Decimal(value)
    assert value == ("0" if number == 0 else format(number.normalize(), "f")), f"not normalized: {value!r}"
    return number


def escalation_bucket(bucket: Row) -> Row:
    return {k: dec(v) if k in ESCALATION_RATIOS else v for k, v in bucket.items()}


def cost_bucket(bucket: Row) -> Row:
    out = {k: dec(v) if k in COST_DECIMALS else v for k, v in bucket.items()}
    out["models"] = [{**m, "cost_usd": dec(m["cost_usd"])} for m in bucket["models"]]
    return out


async def get_json(svc: Service, path: str, headers: dict[str, str], **params: Any) -> Any:
    response = await svc.client.get(path, params={k: v for k, v in params.items() if v is not None}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def check_buckets(got: list[Row], expected: dict[Any, Row], order: list[Any] | None) -> None:
    """Time buckets: exactly `order`. Others: the largest first, ties by the key shown, at most 200."""
    if order is not None:
        assert [b["key"] for b in got] == order
        for bucket in got:
            assert bucket == expected[bucket["key"]], bucket["key"]
        return
    keys = [b["key"] for b in got]
    assert len(keys) == len(set(keys)) == min(len(expected), MAX_BUCKETS)
    for bucket in got:
        assert bucket == expected[bucket["key"]], bucket["key"]
    sizes = [b["requests"] for b in got]
    assert sizes == sorted(sizes, reverse=True), keys
    for first, second in itertools.pairwise(got):
        if first["requests"] == second["requests"] and None not in (first["key"], second["key"]):
            assert first["key"] < second["key"], (first["key"], second["key"])
    dropped = [b for k, b in expected.items() if k not in set(keys)]
    if dropped:
        smallest = sizes[-1]
        assert all(b["requests"] <= smallest for b in dropped)
        last_kept = max((b["key"] for b in got if b["requests"] == smallest and b["key"] is not None), default="")
        assert all(b["key"] > last_kept for b in dropped if b["requests"] == smallest and b["key"] is not None)


async def check_escalations(
    w: Workload, window: Window, group_by: str, headers: dict[str, str], team: str | None, query: Query = None
) -> Row:
    report: Row = await get_json(
        w.svc, "/v1/reports/escalations", headers, group_by=group_by, **window.params(), **(query or {})
    )
    requests, _ = await load(w.svc.db)
    buckets, order, totals = expected_escalations(requests, window, group_by, team)
    assert (report["group_by"], report["team"]) == (group_by, team)
    assert (datetime.fromisoformat(report["start"]), datetime.fromisoformat(report["end"])) == (
        window.start,
        window.end,
    )
    check_buckets([escalation_bucket(b) for b in report["buckets"]], buckets, order)
    assert escalation_bucket(report["totals"]) == totals
    assert report["truncated"] is (len(buckets) > MAX_BUCKETS and order is None)
    return report


async def check_costs(
    w: Workload, window: Window, group_by: str, headers: dict[str, str], team: str | None, query: Query = None
) -> Row:
    report: Row = await get_json(
        w.svc, "/v1/reports/costs", headers, group_by=group_by, **window.params(), **(query or {})
    )
    requests, attempts = await load(w.svc.db)
    buckets, order, totals, expected_break_even = expected_costs(
        requests, attempts, window, group_by, team, w.svc.settings
    )
    assert (report["group_by"], report["team"]) == (group_by, team)
    assert (datetime.fromisoformat(report["start"]), datetime.fromisoformat(report["end"])) == (
        window.start,
        window.end,
    )
    check_buckets([cost_bucket(b) for b in report["buckets"]], buckets, order)
    assert cost_bucket(report["totals"]) == totals
    got_break_even = report["break_even"]
    assert {
        **got_break_even,
        "rate": dec(got_break_even["rate"]),
        "observed_rate": dec(got_break_even["observed_rate"]),
    } == expected_break_even
    observed = expected_break_even["observed_rate"]
    past = observed is not None and observed > expected_break_even["rate"]
    assert len(report["warnings"]) == int(past), report["warnings"]
    assert all(isinstance(x, str) and x for x in report["warnings"])
    assert report["truncated"] is (len(buckets) > MAX_BUCKETS and order is None)
    return report


# --- the request list, its pages and exports ---------------------------------------------------------------------


def listed(requests: list[Row], window: Window, team: str | None, **filters: Any) -> list[Row]:
    rows = requests_in(requests, window, team)
    for name, value in filters.items():
        column = {"reason": "escalation_reason", "task": "task_hash"}.get(name, name)
        rows = [r for r in rows if r[column] == value]
    return sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)


def canonical(values: dict[str, Any]) -> tuple[Any, ...]:
    """One list row, from the database, a JSON item or a CSV line, in comparable form."""
    out: list[Any] = []
    for column in COLUMNS:
        value = values[column]
        if value is None or value == "":
            out.append(None)
        elif column == "id":
            out.append(uuid.UUID(str(value)))
        elif column == "created_at":
            out.append(value if isinstance(value, datetime) else datetime.fromisoformat(value))
        elif column == "escalated":
            out.append(value if isinstance(value, bool) else {"true": True, "false": False}[str(value).lower()])
        elif column == "latency_ms":
            out.append(int(value))
        elif column in ("cost_usd", "all_strong_cost_usd"):
            out.append(dec(value) if isinstance(value, str) else value)  # the wire's strings are normalized
        elif column in ("confidence", "cheap_confidence"):
            out.append(Decimal(str(value)))  # a JSON number, a CSV cell or NUMERIC
        else:
            out.append(str(value))
    return tuple(out)


def params_of(window: Window, filters: dict[str, Any]) -> dict[str, str]:
    wire = {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in filters.items()}
    return {**window.params(), **wire}


async def walk(svc: Service, headers: dict[str, str], limit: int, **params: str) -> list[Row]:
    """Every page, following next_cursor; returns the items in order."""
    items: list[Row] = []
    cursor = None
    while True:
        page = await get_json(svc, "/v1/requests", headers, limit=limit, cursor=cursor, **params)
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit


async def export(svc: Service, headers: dict[str, str], how: str, **params: str) -> list[tuple[Any, ...]]:
    accept = {"accept": "text/csv"} if how == "accept" else {}
    fmt = None if how == "accept" else how
    response = await svc.client.get(
        "/v1/requests", params={**params, **({"format": fmt} if fmt else {})}, headers={**headers, **accept}
    )
    assert response.status_code == 200, response.text
    if how == "ndjson":
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.text.splitlines()
        return [canonical(json.loads(line)) for line in lines]
    assert response.headers["content-type"].startswith("text/csv")
    reader = csv.reader(io.StringIO(response.text, newline=""))
    header = next(reader)
    assert header == list(COLUMNS)
    return [canonical(dict(zip(header, line, strict=True))) for line in reader]


# --- tests -------------------------------------------------------------------------------------------------------


async def check_counterfactual(workload: Workload) -> None:
    """Every request's all-strong figure: its cheap-stage attempts' tokens at its strong model's prices of the day."""
    requests, attempts = await load(workload.svc.db)
    catalog = Catalog()
    unknown = 0
    for request in requests:
        expected = Decimal(0)
        for a in attempts:
            if a["request_id"] != request["id"] or a["stage"] != "cheap":
                continue
            assert a["state"] == "settled"
            if a["input_tokens"] is None:  # tokens unknown: the strong model's worst case for the reservation
                unknown += 1
                price = catalog.price(request["strong_model"], a["reserved_at"], a["input_token_bound"])
                expected += price.worst_case(a["input_token_bound"], a["max_tokens"])
            else:
                usage = usage_of(a)
                expected += catalog.price(request["strong_model"], a["reserved_at"], usage.prompt_tokens).cost(usage)
        assert request["all_strong_cost_usd"] == expected, request["id"]
        assert request["cost_usd"] == sum((a["cost_usd"] for a in attempts if a["request_id"] == request["id"]), 0)
    assert unknown == 2, "the 504 and the garbage reply leave two cheap attempts with unknown tokens"
    strong_models = {r["strong_model"] for r in requests if r["all_strong_cost_usd"] > 0}
    assert strong_models == {workload.svc.settings.strong_model, OTHER_STRONG}
    refused = next(r for r in requests if r["status"] == "refused")
    assert (refused["cost_usd"], refused["all_strong_cost_usd"]) == (0, 0)
    assert not [a for a in attempts if a["request_id"] == refused["id"]]


async def test_escalation_report_and_windows_equal_the_rows_for_every_grouping_and_reader(workload: Workload) -> None:
    w, at = workload, workload.at
    whole = Window(at["T0"] - timedelta(hours=1), w.tomorrow)
    windows = [
        whole,
        Window(at["T1"], at["T4"]),
        Window(at["T2"], at["T4"]),
        Window(at["T3"], at["T4"]),
        Window(at["T1"], at["T2"]),
        Window(at["T4"], w.tomorrow),
    ]
    readers: list[tuple[dict[str, str], str | None, dict[str, str]]] = [
        (ADMIN, None, {}),
        (w.auth["team-a"], "team-a", {}),
        (w.auth["team-b"], "team-b", {}),
        (ADMIN, "team-b", {"team": "team-b"}),
    ]
    for window, (headers, team, extra) in itertools.product(windows, readers):
        if team is not None and window not in (whole, windows[2], windows[4]):
            continue
        for group_by in ("task", "model", "label"):
            await check_escalations(w, window, group_by, headers, team, extra)
    for headers, team, extra in readers:
        await check_escalations(w, whole, "day", headers, team, extra)
        await check_escalations(w, Window(at["T1"], at["T4"] + timedelta(hours=2)), "hour", headers, team, extra)
    for window in windows:
        report = await check_escalations(w, window, "team", ADMIN, None)
        assert {b["key"] for b in report["buckets"]} <= {"team-a", "team-b"}
    narrowed = await check_escalations(w, whole, "team", ADMIN, "team-a", {"team": "team-a"})
    assert [b["key"] for b in narrowed["buckets"]] == ["team-a"]

    # The whole workload, by label: every reason, a changed and an unchanged answer, pending left out.
    report = await check_escalations(w, whole, "label", ADMIN, None)
    totals = report["totals"]
    assert set(totals["reasons"]) == {"low_confidence", "invalid_answer", "refused", "truncated", "cheap_unavailable"}
    assert totals["failed"] == 3 and totals["refused"] == 1 and totals["requests"] == len(CASES) - 1
    assert 0 < totals["changed"] < totals["compared"]
    assert None in {b["key"] for b in report["buckets"]}, "failed and refused requests have no label"
    by_model = await check_escalations(w, whole, "model", ADMIN, None)
    assert {b["key"] for b in by_model["buckets"]} == {w.svc.settings.cheap_model, OTHER_CHEAP}
    by_task = await check_escalations(w, whole, "task", w.auth["team-b"], "team-b")
    assert sorted(b["task"]["labels"] for b in by_task["buckets"]) == sorted([SPAM, SENTIMENT])
    assert {b["task"]["instructions"] for b in by_task["buckets"]} == {None, SPAM_INSTRUCTIONS}
    await check_time_buckets(w)
    await check_windows(w)


async def check_time_buckets(workload: Workload) -> None:
    """Hour and day buckets: every one the window touches, in order, the quiet ones zero."""
    w, at = workload, workload.at
    day = at["T2"]
    hourly = await check_escalations(w, Window(at["T1"], day + timedelta(hours=3)), "hour", ADMIN, None)
    keys = [b["key"] for b in hourly["buckets"]]
    assert keys == [f"{(day + timedelta(hours=h)).strftime('%Y-%m-%dT%H')}:00:00Z" for h in range(-1, 3)]
    assert [b["requests"] for b in hourly["buckets"]] == [2, 5, 2, 0]  # T1 | T2 and T3 | T4 | nothing
    # An end one microsecond into an hour touches it; an end on the hour does not.
    touched = await check_escalations(w, Window(at["T3"], at["T4"] + MICRO), "hour", ADMIN, None)
    assert [b["requests"] for b in touched["buckets"]] == [2, 2]
    untouched = await check_escalations(w, Window(at["T3"], at["T4"]), "hour", ADMIN, None)
    assert [b["requests"] for b in untouched["buckets"]] == [2]

    daily = await check_escalations(w, Window(at["T1"], day + timedelta(days=1)), "day", ADMIN, None)
    assert [b["key"] for b in daily["buckets"]] == [(day - MICRO).date().isoformat(), day.date().isoformat()]
    assert [b["requests"] for b in daily["buckets"]] == [2, 7]
    ends_at_midnight = await check_escalations(w, Window(at["T1"], day), "day", ADMIN, None)
    assert [b["key"] for b in ends_at_midnight["buckets"]] == [(day - MICRO).date().isoformat()]
    quiet = await check_escalations(w, Window(day + timedelta(days=2), day + timedelta(days=5)), "day", ADMIN, None)
    assert [b["requests"] for b in quiet["buckets"]] == [0, 0, 0]
    assert all(b["escalation_rate"] is None and b["reasons"] == {} for b in quiet["buckets"])


async def test_counterfactual_and_cost_report_equal_the_rows_for_every_grouping_window_and_reader(
    workload: Workload,
) -> None:
    await check_counterfactual(workload)
    w, at = workload, workload.at
    whole = Window(at["T0"] - timedelta(hours=1), w.tomorrow)
    windows = [
        whole,
        Window(at["T1"], at["T4"]),
        Window(at["T2"], at["T4"]),
        Window(at["T4"], w.tomorrow),
        Window(at["T1"], at["T2"]),
    ]
    readers: list[tuple[dict[str, str], str | None, dict[str, str]]] = [
        (ADMIN, None, {}),
        (w.auth["team-a"], "team-a", {}),
        (w.auth["team-b"], "team-b", {}),
        (ADMIN, "team-a", {"team": "team-a"}),
    ]
    for window, (headers, team, extra) in itertools.product(windows, readers):
        for group_by in ("model", "task"):
            await check_costs(w, window, group_by, headers, team, extra)
    for window in windows:
        await check_costs(w, window, "team", ADMIN, None)
    # Day buckets over windows whose every day has requests: an empty day is
    # test_a_cost_bucket_without_requests_has_a_zero_counterfactual.
    for headers, team, extra in readers:
        await check_costs(w, Window(at["T1"], at["T4"] + MICRO), "day", headers, team, extra)
        await check_costs(w, Window(datetime.combine(w.today, time(), UTC), w.tomorrow), "day", headers, team, extra)

    report = await check_costs(w, whole, "model", ADMIN, None)
    models = {b["key"] for b in report["buckets"]}
    assert models == {w.svc.settings.cheap_model, w.svc.settings.strong_model, OTHER_CHEAP, OTHER_STRONG}
    assert all(b["all_strong_cost_usd"] is None and b["savings_usd"] is None for b in report["buckets"])
    assert report["totals"]["all_strong_cost_usd"] is not None
    assert report["break_even"]["basis"] == "observed"
    assert report["warnings"], "this workload escalates past the break-even rate"
    pending = next(r for r in (await load(w.svc.db))[0] if r["status"] == "pending")
    assert report["totals"]["requests"] == len(CASES), f"the pending request {pending['id']} counts in costs"

    # Only confident answers: an observed rate of 0, below the break-even rate, and no warning.
    calm = await check_costs(w, Window(at["T1"], at["T2"]), "task", ADMIN, None)
    assert dec(calm["break_even"]["observed_rate"]) == 0 and calm["warnings"] == []
    # Only a request refused by the cap: nothing decided, no cheap tokens, so the nominal token mix.
    refused = await check_costs(w, Window(at["T3"], at["T4"]), "task", w.auth["team-b"], "team-b")
    assert refused["break_even"]["basis"] == "nominal" and refused["break_even"]["observed_rate"] is None
    assert refused["totals"]["requests"] == 1 and refused["totals"]["savings_pct"] is None


async def check_windows(w: Workload) -> None:
    """Start inclusive, end exclusive, in any ISO 8601 spelling; the defaults."""
    at = w.at
    requests, _ = await load(w.svc.db)
    name_of = {uuid.UUID(v): k for k, v in w.ids.items()}

    def names(window: Window) -> set[str]:
        return {name_of[r["id"]] for r in requests_in(requests, window, None)}

    assert names(Window(at["T1"], at["T2"])) == {"a-confident", "b-confident"}
    assert names(Window(at["T2"], at["T3"])) == {"a-low-changed", "a-strong-down", "a2-changed"}
    assert names(Window(at["T3"], at["T4"])) == {"a-malformed", "b-refused"}
    for window in (Window(at["T1"], at["T2"]), Window(at["T2"], at["T3"]), Window(at["T3"], at["T4"])):
        esc = await check_escalations(w, window, "label", ADMIN, None)
        assert esc["totals"]["requests"] == len(names(window))
        cost = await check_costs(w, window, "task", ADMIN, None)
        assert cost["totals"]["requests"] == len(names(window))
        listed_ids = {item["id"] for item in await walk(w.svc, ADMIN, 100, **window.params())}
        assert {name_of[uuid.UUID(i)] for i in listed_ids} == names(window)

    # The same window written as a date, without an offset (UTC), with Z, and with another offset.
    day = at["T2"]
    canonical_report = await get_json(w.svc, "/v1/reports/escalations", ADMIN, start=iso(day), end=iso(at["T4"]))
    spellings = [
        (day.date().isoformat(), at["T4"].strftime("%Y-%m-%dT%H:%M:%S")),
        (day.strftime("%Y-%m-%dT%H:%M:%S"), iso(at["T4"])),
        ((day + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"), at["T4"].strftime("%Y-%m-%dT%H:%M:%S-00:00")),
        ((day - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%S.000000-05:00"), iso(at["T4"])),
    ]
    for start, end in spellings:
        assert await get_json(w.svc, "/v1/reports/escalations", ADMIN, start=start, end=end) == canonical_report
    # `T3` written with microseconds and an offset is still that instant, so it is in [T3, T4) and not in [T2, T3).
    t3 = (at["T3"] + timedelta(hours=-3)).strftime("%Y-%m-%dT%H:%M:%S.%f-03:00")
    late = await get_json(w.svc, "/v1/reports/escalations", ADMIN, start=t3, end=iso(at["T4"]))
    assert late["totals"]["requests"] == 2

    # Defaults: the reports cover the 7 days up to now, the list the last 30.
    for path in ("/v1/reports/escalations", "/v1/reports/costs"):
        report = await get_json(w.svc, path, w.auth["team-a"], group_by="task")
        default = Window(datetime.fromisoformat(report["start"]), datetime.fromisoformat(report["end"]))
        assert default.end - default.start == timedelta(days=7)
        assert abs(datetime.now(UTC) - default.end) < timedelta(minutes=1)
        if path.endswith("escalations"):
            await check_escalations(w, default, "task", w.auth["team-a"], "team-a")
        else:
            await check_costs(w, default, "task", w.auth["team-a"], "team-a")
        # Only the requests of the last 7 days; the pending one counts in costs only.
        recent = requests_in(requests, default, "team-a")
        assert report["totals"]["requests"] == len(recent) - path.endswith("escalations")
    default_list = {uuid.UUID(i["id"]) for i in await walk(w.svc, ADMIN, 1000)}
    assert default_list == {r["id"] for r in requests} - {uuid.UUID(w.ids["a-confident-2"])}, "T0 is 31 days old"
    only_end = await get_json(w.svc, "/v1/reports/escalations", ADMIN, end=iso(at["T4"]))
    assert datetime.fromisoformat(only_end["start"]) == at["T4"] - timedelta(days=7)


async def test_report_parameters_are_validated_with_the_field_at_fault(admin_service: Service) -> None:
    svc = admin_service
    team_a = svc.auth
    await svc.new_key("team-b")
    cases: list[tuple[str, dict[str, str], dict[str, str], str]] = [
        ("/v1/reports/escalations", team_a, {"start": "yesterday"}, "start"),
        ("/v1/reports/costs", team_a, {"end": "2026-13-01"}, "end"),
        ("/v1/reports/escalations", team_a, {"start": "2026-11-02T00:00:00Z", "end": "2026-11-02"}, "start"),
        ("/v1/reports/costs", team_a, {"start": "2026-11-03", "end": "2026-11-02"}, "start"),
        ("/v1/reports/escalations", ADMIN, {"start": "2025-01-01", "end": "2026-02-05T00:00:00.000001"}, "start"),
        (
            "/v1/reports/escalations",
            team_a,
            {"start": "2026-10-01", "end": "2026-11-01T00:00:00.000001", "group_by": "hour"},
            "group_by",
        ),
        ("/v1/reports/escalations", team_a, {"group_by": "week"}, "group_by"),
        ("/v1/reports/costs", team_a, {"group_by": "hour"}, "group_by"),
        ("/v1/reports/costs", team_a, {"group_by": "label"}, "group_by"),
        ("/v1/reports/escalations", team_a, {"group_by": "team"}, "group_by"),
        ("/v1/reports/costs", team_a, {"group_by": "team"}, "group_by"),
        ("/v1/requests", team_a, {"start": "soon"}, "start"),
        ("/v1/requests", team_a, {"limit": "0"}, "limit"),
        ("/v1/requests", team_a, {"limit": "1001"}, "limit"),
        ("/v1/requests", team_a, {"limit": "-5"}, "limit"),
        ("/v1/requests", team_a, {"limit": "ten"}, "limit"),
        ("/v1/requests", team_a, {"status": "done"}, "status"),
        ("/v1/requests", team_a, {"format": "xml"}, "format"),
        ("/v1/requests", team_a, {"escalated": "perhaps"}, "escalated"),
    ]
    for path, headers, params, field in cases:
        body = assert_error(await svc.client.get(path, params=params, headers=headers), 422, "invalid_request")
        assert body["error"].get("field") == field, (path, params, body)
    # The limits themselves are allowed: 400 days, hourly buckets over 31 days, pages of 1 and 1000.
    await get_json(svc, "/v1/reports/escalations", ADMIN, start="2025-01-01", end="2026-02-05")
    hourly = await get_json(
        svc, "/v1/reports/escalations", team_a, start="2026-10-01", end="2026-11-01", group_by="hour"
    )
    assert len(hourly["buckets"]) == 31 * 24
    await get_json(svc, "/v1/requests", team_a, limit=1)
    await get_json(svc, "/v1/requests", team_a, limit=1000)
    garbage = [
        "garbage",
        "!!!",
        "é",
        base64.urlsafe_b64encode(b"not json").decode(),
        encode_cursor(["2026-11-02T00:00:00", str(uuid.uuid4())]),  # no offset
        encode_cursor(["2026-11-02T00:00:00+00:00", "not-a-uuid"]),
        encode_cursor(["2026-11-02T00:00:00+00:00"]),
        encode_cursor([1, 2, 3]),
        encode_cursor({"a": 1}),
        encode_cursor(None),
    ]
    for cursor in garbage:
        body = assert_error(await svc.client.get("/v1/requests", params={"cursor": cursor}, headers=team_a), 422)
        assert body["error"]["field"] == "cursor", cursor

    # ?team=: a team key may name only itself; the admin may name any team that exists.
    assert (await svc.classify("One for team-a. {{sim:cheap=label=positive+conf=0.9}}")).status_code == 200
    today = datetime.now(UTC).date()
    window = {"start": (today - timedelta(days=1)).isoformat(), "end": (today + timedelta(days=1)).isoformat()}
    for path in ("/v1/reports/escalations", "/v1/reports/costs", "/v1/requests"):
        assert_error(await svc.client.get(path, params={"team": "team-b"}, headers=team_a), 403, "forbidden")
        assert_error(await svc.client.get(path, params={"team": "ghost"}, headers=ADMIN), 404, "not_found")
        assert_error(await svc.client.get(path, headers={"Authorization": "Bearer csk_nope"}), 401, "unauthorized")
        assert_error(await svc.client.get(path), 401, "unauthorized")
        own = await get_json(svc, path, team_a, team="team-a", **window)
        assert own == await get_json(svc, path, team_a, **window)


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def test_the_request_list_pages_filters_exports_and_scoping_agree_with_the_rows(workload: Workload) -> None:
    w = workload
    requests, _ = await load(w.svc.db)
    window = Window(w.at["T0"] - timedelta(hours=1), w.tomorrow)
    settings = w.svc.settings
    spam_task = next(r["task_hash"] for r in requests if r["labels"] == SPAM)
    filters: list[dict[str, Any]] = [
        {},
        {"escalated": True},
        {"escalated": False},
        {"reason": "low_confidence"},
        {"reason": "invalid_answer"},
        {"model": settings.strong_model},
        {"model": OTHER_CHEAP},
        {"status": "ok"},
        {"status": "failed"},
        {"status": "refused"},
        {"status": "pending"},
        {"task": spam_task},
        {"escalated": True, "status": "ok", "task": spam_task},
    ]
    readers: list[tuple[dict[str, str], str | None, dict[str, str]]] = [
        (ADMIN, None, {}),
        (w.auth["team-a"], "team-a", {}),
        (w.auth["team-b"], "team-b", {}),
        (ADMIN, "team-b", {"team": "team-b"}),
    ]
    for (headers, team, extra), flt in itertools.product(readers, filters):
        if team == "team-b" and flt not in filters[:3]:
            continue  # team-b has few rows: every filter is exercised by the admin and team-a
        expected = [canonical(r) for r in listed(requests, window, team, **flt)]
        params = {**params_of(window, flt), **extra}
        for limit in (1, 4) if not flt and team is None else (10,):
            items = await walk(w.svc, headers, limit, **params)
            assert all(set(item) == set(COLUMNS) for item in items)
            assert [canonical(item) for item in items] == expected, (team, flt, limit)
        for how in ("csv", "ndjson", "accept") if not flt else ("ndjson",) if "escalated" in flt else ("csv",):
            assert await export(w.svc, headers, how, **params) == expected, (team, flt, how)
    everything = await walk(w.svc, ADMIN, 1000, **window.params())
    assert {i["team"] for i in everything} == {"team-a", "team-b"}
    assert len(everything) == len(CASES) and len({i["id"] for i in everything}) == len(CASES)
    # Requests moved to the same instant are ordered by id, newest first; a page boundary may fall between them.
    tied = [i for i in everything if datetime.fromisoformat(i["created_at"]) == w.at["T2"]]
    assert len(tied) == 3 and [i["id"] for i in tied] == sorted((i["id"] for i in tied), key=uuid.UUID, reverse=True)
    await check_scoping(w)


async def check_scoping(w: Workload) -> None:
    """The audit of one request: its team and the admin only. (The lists, exports and reports are compared
    with each team's own rows above and in the report tests.)"""
    window = Window(w.at["T0"] - timedelta(hours=1), w.tomorrow)
    for team, headers in w.auth.items():
        for path in ("/v1/reports/escalations", "/v1/reports/costs"):
            report = await get_json(w.svc, path, headers, group_by="day", **window.params())
            assert report["team"] == team
    admin = await get_json(w.svc, "/v1/reports/costs", ADMIN, group_by="team", **window.params())
    assert {b["key"]: b["requests"] for b in admin["buckets"]} == Counter(c.team for c in CASES)

    for case in CASES:
        request_id = w.ids[case.name]
        other = "team-b" if case.team == "team-a" else "team-a"
        assert_error(await w.svc.client.get(f"/v1/requests/{request_id}", headers=w.auth[other]), 404, "not_found")
        admin_response = await w.svc.client.get(f"/v1/requests/{request_id}", headers=ADMIN)
        assert admin_response.status_code == 200, admin_response.text
        if case.name in ("a-low-changed", "b-refused"):
            own_response = await w.svc.client.get(f"/v1/requests/{request_id}", headers=w.auth[case.team])
            assert own_response.status_code == 200 and own_response.json() == admin_response.json()
            narrowed = await w.svc.client.get(f"/v1/requests/{request_id}", params={"team": other}, headers=ADMIN)
            assert_error(narrowed, 404, "not_found")


SYNTHETIC = 2600  # every fifth for team-b: 2080 rows of team-a alone, past the exports' internal page of 2000


async def test_exports_stream_every_row_exactly_once_past_the_internal_page(admin_service: Service) -> None:
    svc = admin_service
    db = svc.db
    auth = {"team-a": svc.auth, "team-b": {"Authorization": f"Bearer {await svc.new_key('team-b')}"}}
    ids = {}
    for name, sender, directive in (
        ("escalated", "team-a", "cheap=label=negative+conf=0.3;strong=label=positive+conf=0.9"),
        ("kept", "team-a", "cheap=label=positive+conf=0.95"),
        ("other-team", "team-b", "cheap=label=neutral+conf=0.9"),
    ):
        body = {"text": f"Export case {name}. {{{{sim:{directive}}}}}", "labels": SENTIMENT}
        response = await svc.client.post("/v1/classify", json=body, headers=auth[sender])
        assert response.status_code == 200, response.text
        ids[name] = response.json()["id"]
    now = datetime.now(UTC)
    w = Workload(svc, auth, ids, {}, now.date())
    async with db.transaction() as session:
        team_b = await session.scalar(text("SELECT id FROM teams WHERE name = 'team-b'"))
    # Copies of a real request at three instants a microsecond apart, so pages end inside runs of equal times;
    # 250 distinct labels and varied costs.
    await execute(
        db,
        """
        INSERT INTO requests (id, team_id, status, task_hash, labels, instructions, threshold, text_chars,
            cheap_model, strong_model, label, confidence, model, escalated, escalation_reason, cheap_label,
            cheap_confidence, cost_usd, all_strong_cost_usd, error_type, error_message, latency_ms, created_at,
            finished_at)
        SELECT gen_random_uuid(), CASE WHEN g % 5 = 0 THEN :team_b ELSE r.team_id END, r.status, r.task_hash,
            r.labels, r.instructions, r.threshold, r.text_chars, r.cheap_model, r.strong_model, 'syn-' || (g % 250),
            r.confidence, r.model, g % 2 = 0, CASE WHEN g % 2 = 0 THEN 'low_confidence' END, r.cheap_label,
            r.cheap_confidence, r.cost_usd + (g % 97) * 0.0000001, r.all_strong_cost_usd, r.error_type,
            r.error_message, r.latency_ms, CAST(:at AS timestamptz) - (g % 3) * interval '1 microsecond', r.finished_at
        FROM requests r, generate_series(1, :n) AS g
        WHERE r.id = :source
        """,
        team_b=team_b,
        at=now - timedelta(days=2),
        n=SYNTHETIC,
        source=uuid.UUID(ids["escalated"]),
    )
    requests, _ = await load(db)
    window = Window(now - timedelta(days=3), w.tomorrow)
    readers: list[tuple[dict[str, str], str | None]] = [
        (ADMIN, None),
        (auth["team-a"], "team-a"),
        (auth["team-b"], "team-b"),
    ]
    for headers, team in readers:
        expected = [canonical(r) for r in listed(requests, window, team)]
        for how in ("csv", "ndjson"):
            rows = await export(w.svc, headers, how, **window.params())
            assert len({row[0] for row in rows}) == len(rows), "a row streamed twice"
            assert rows == expected, (team, how)
        if team != "team-b":
            assert len(expected) > 2000
    pages = await walk(w.svc, ADMIN, 1000, **window.params())
    assert [canonical(i) for i in pages] == [canonical(r) for r in listed(requests, window, None)]
    escalated_only = await export(w.svc, w.auth["team-a"], "csv", escalated="true", **window.params())
    assert escalated_only == [canonical(r) for r in listed(requests, window, "team-a", escalated=True)]

    # The reports over the same rows: 250 + 2 labels, of which only the 200 largest are listed.
    report = await check_escalations(w, window, "label", ADMIN, None)
    assert report["truncated"] is True and len(report["buckets"]) == MAX_BUCKETS
    await check_escalations(w, window, "label", w.auth["team-b"], "team-b")
    await check_costs(w, window, "task", ADMIN, None)
    await check_costs(w, window, "team", ADMIN, None)


@pytest.mark.parametrize(
    ("params", "accept", "media_type"),
    [
        ({"format": "csv"}, None, "text/csv"),
        ({}, "text/csv", "text/csv"),
        ({"format": "ndjson"}, None, "application/x-ndjson"),
    ],
    ids=["format-csv", "accept-csv", "format-ndjson"],
)
async def test_exports_are_labelled_with_their_media_type(
    admin_service: Service, params: dict[str, str], accept: str | None, media_type: str
) -> None:
    svc = admin_service
    assert (await svc.classify("Export me. {{sim:cheap=label=positive+conf=0.9}}")).status_code == 200
    headers = {**svc.auth, **({"accept": accept} if accept else {})}
    response = await svc.client.get("/v1/requests", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.text.startswith("id,created_at,") == (media_type == "text/csv"), "the body is the export"
    assert response.headers["content-type"].split(";")[0] == media_type


async def test_a_window_without_requests_reports_zeros_and_the_nominal_break_even(admin_service: Service) -> None:
    svc = admin_service
    assert (await svc.classify("Outside the window. {{sim:cheap=label=neutral+conf=0.9}}")).status_code == 200
    window = {"start": "2026-01-01", "end": "2026-01-02T00:00:00.000001"}
    for headers in (svc.auth, ADMIN):
        esc = await get_json(svc, "/v1/reports/escalations", headers, **window)
        assert [b["key"] for b in esc["buckets"]] == ["2026-01-01", "2026-01-02"]
        for bucket in [*esc["buckets"], esc["totals"]]:
            assert bucket["requests"] == bucket["decided"] == 0 and bucket["reasons"] == {}
            assert bucket["escalation_rate"] is bucket["cheap_mean_confidence"] is bucket["changed_share"] is None
        cost = await get_json(svc, "/v1/reports/costs", headers, group_by="task", **window)
        assert cost["buckets"] == [] and cost["warnings"] == [] and cost["truncated"] is False
        totals = cost["totals"]
        assert (totals["requests"], totals["cost_usd"], totals["models"]) == (0, "0", [])
        assert totals["cost_mean_usd"] is totals["cost_p50_usd"] is totals["cost_p95_usd"] is None
        assert totals["savings_pct"] is None
        catalog, now = Catalog(), datetime.now(UTC)
        nominal = TokenUsage(input=1000, output=50)
        cheap = Fraction(catalog.price(svc.settings.cheap_model, now).cost(nominal))
        strong = Fraction(catalog.price(svc.settings.strong_model, now).cost(nominal))
        assert cost["break_even"] == {
            "cheap_model": svc.settings.cheap_model,
            "strong_model": svc.settings.strong_model,
            "rate": format(rounded(1 - cheap / strong, 6).normalize(), "f"),
            "basis": "nominal",
            "observed_rate": None,
        }


# --- edges: empty buckets, garbage cursors, the ends of the calendar, ties ------------------------------------


async def test_a_cost_bucket_without_requests_has_a_zero_counterfactual(admin_service: Service) -> None:
    svc = admin_service
    assert (await svc.classify("A quiet week. {{sim:cheap=label=neutral+conf=0.9}}")).status_code == 200
    today = datetime.now(UTC).date()
    report = await get_json(
        svc,
        "/v1/reports/costs",
        svc.auth,
        start=(today - timedelta(days=1)).isoformat(),
        end=(today + timedelta(days=1)).isoformat(),
    )
    empty_window = await get_json(svc, "/v1/reports/costs", svc.auth, start="2026-01-01", end="2026-01-02")
    for quiet in (report["buckets"][0], empty_window["buckets"][0], empty_window["totals"]):
        assert (quiet["requests"], quiet["cost_usd"], quiet["savings_pct"]) == (0, "0", None)
        assert (quiet["all_strong_cost_usd"], quiet["savings_usd"]) == ("0", "0")


@pytest.mark.parametrize("id_", [5, ["x"]], ids=["int", "list"])
async def test_a_cursor_with_a_non_string_id_is_422(admin_service: Service, id_: Any) -> None:
    cursor = encode_cursor(["2026-11-02T00:00:00+00:00", id_])
    response = await admin_service.client.get("/v1/requests", params={"cursor": cursor}, headers=ADMIN)
    assert assert_error(response, 422, "invalid_request")["error"]["field"] == "cursor"


@pytest.mark.parametrize(
    "params",
    [
        {"end": "0001-01-01"},  # the default start, 7 days earlier, is before year 1
        {"start": "0001-01-01T00:00:00+01:00", "end": "0001-01-02"},  # in UTC this is year 0
        {"start": "9999-12-30", "end": "9999-12-31T23:59:59-01:00"},  # in UTC this is year 10000
    ],
    ids=["default-start-underflows", "start-underflows", "end-overflows"],
)
async def test_instants_at_the_ends_of_the_calendar_are_422(admin_service: Service, params: dict[str, str]) -> None:
    for path in ("/v1/reports/escalations", "/v1/requests"):
        response = await admin_service.client.get(path, params=params, headers=ADMIN)
        assert_error(response, 422, "invalid_request")


async def test_teams_with_as_many_requests_are_ordered_by_name(admin_service: Service) -> None:
    svc = admin_service
    # Ids in the opposite order of the names, so the two orders differ whatever uuid4 would have drawn.
    await execute(
        svc.db,
        "INSERT INTO teams (id, name) VALUES (:low, 'zz-team'), (:high, 'aa-team')",
        low=uuid.UUID(int=1),
        high=uuid.UUID(int=2**128 - 1),
    )
    at = datetime.combine(datetime.now(UTC).date() - timedelta(days=3), time(12), UTC)
    for team in ("zz-team", "aa-team"):
        headers = {"Authorization": f"Bearer {await svc.new_key(team)}"}
        body = {"text": f"{team} says hello. {{{{sim:cheap=label=positive+conf=0.9}}}}", "labels": SENTIMENT}
        response = await svc.client.post("/v1/classify", json=body, headers=headers)
        assert response.status_code == 200, response.text
        await move(svc.db, response.json()["id"], at)
    window = Window(at, at + timedelta(hours=1)).params()
    for path in ("/v1/reports/escalations", "/v1/reports/costs"):
        report = await get_json(svc, path, ADMIN, group_by="team", **window)
        assert [(b["key"], b["requests"]) for b in report["buckets"]] == [("aa-team", 1), ("zz-team", 1)]


async def test_a_cursor_whose_instant_leaves_the_calendar_in_utc_is_422(admin_service: Service) -> None:
    cursor = encode_cursor(["0001-01-01T00:00:00+05:00", str(uuid.uuid4())])
    response = await admin_service.client.get("/v1/requests", params={"cursor": cursor}, headers=ADMIN)
    assert assert_error(response, 422, "invalid_request")["error"]["field"] == "cursor"


@pytest.mark.parametrize("field", ["model", "reason", "task"])
async def test_a_nul_in_a_list_filter_is_422_not_a_database_error(admin_service: Service, field: str) -> None:
    response = await admin_service.client.get("/v1/requests", params={field: "a\x00b"}, headers=admin_service.auth)
    assert assert_error(response, 422, "invalid_request")["error"]["field"] == field


async def test_an_admin_naming_a_team_with_a_nul_gets_404(admin_service: Service) -> None:
    response = await admin_service.client.get("/v1/reports/costs", params={"team": "a\x00b"}, headers=ADMIN)
    assert_error(response, 404, "not_found")


async def test_exported_cells_that_a_spreadsheet_would_run_are_quoted(admin_service: Service) -> None:
    labels = ["=HYPERLINK(1)", "+1", "plain"]
    sent = await admin_service.classify("{{sim:cheap=label==HYPERLINK(1)+conf=0.99}} x", labels)
    assert sent.status_code == 200, sent.text
    exported = await admin_service.client.get("/v1/requests", params={"format": "csv"}, headers=admin_service.auth)
    row = next(csv.DictReader(io.StringIO(exported.text)))
    assert row["label"] == "'=HYPERLINK(1)" and row["cheap_label"] == "'=HYPERLINK(1)"
    page = await admin_service.client.get("/v1/requests", headers=admin_service.auth)
    assert page.json()["items"][0]["label"] == "=HYPERLINK(1)", "only the CSV cell is quoted"
