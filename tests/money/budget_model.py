"""What the budget state machine (test_budget_stateful.py) stands on besides its rules and invariants.

Its own event loop and engine (Env, run), the clock it moves, the model of one reservation and what each one must
cost, and the ledger as read back from the database (snapshot, and its fingerprint of money moved).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import select

from service.core.database import Database
from service.money.attempts import AttemptPlan, Reservation
from service.money.caps import CapKey
from service.money.catalog import MILLION, Catalog, TokenUsage
from service.tables import Attempt, Cap, Request

T = TypeVar("T")

CATALOG = Catalog()


class Env:
    """The machine's own event loop and engine, shared by all examples of one test run."""

    loop: asyncio.AbstractEventLoop
    db: Database


ENV = Env()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return ENV.loop.run_until_complete(coro)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Held:
    """The model of one reservation."""

    reservation: Reservation
    plan: AttemptPlan
    state: str = "held"  # held, settled (by its holder) or swept
    cost: Decimal | None = None


def money(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def expected_worst_case(model: str, at: datetime, bound: int, max_tokens: int) -> Decimal:
    price = CATALOG.price(model, at, bound)
    return (bound * price.input + max_tokens * price.output) / MILLION


def expected_cost(held: Held, usage: TokenUsage) -> Decimal:
    r = held.reservation
    price = CATALOG.price(r.model, r.reserved_at, usage.prompt_tokens)
    return (usage.input * price.input + usage.cache_read * price.cache_read + usage.output * price.output) / MILLION


def label(key: CapKey) -> str:
    return key.label.replace(" ", "_")


def describe(rooms: list[tuple[CapKey, Cap | None, Decimal]]) -> str:
    return ", ".join(f"{label(key)} has {room}{'' if row else ' (no row yet)'}" for key, row, room in rooms)


def in_period(cap: Cap, billing_day: date) -> bool:
    if cap.period == "day":
        return billing_day == cap.period_start
    return billing_day.replace(day=1) == cap.period_start


async def snapshot() -> tuple[list[Cap], list[Attempt], list[Request]]:
    async with ENV.db.transaction() as session:
        caps = list((await session.scalars(select(Cap).order_by(Cap.id))).all())
        attempts = list((await session.scalars(select(Attempt).order_by(Attempt.id))).all())
        requests = list((await session.scalars(select(Request).order_by(Request.id))).all())
    return caps, attempts, requests


def fingerprint(
    state: tuple[list[Cap], list[Attempt], list[Request]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    caps, attempts, requests = state
    # A period's cap rows are created (empty) before its first reservation is tried, and stay if it is refused:
    # a row that holds and has spent nothing is no money moved.
    return (
        [(c.id, c.spent_usd, c.reserved_usd, c.overrun_usd, c.cap_usd) for c in caps if c.spent_usd or c.reserved_usd],
        [(a.id, a.state, a.cost_usd, a.settled_by, a.outcome) for a in attempts],
        [(r.id, r.cost_usd) for r in requests],
    )
