"""The raw rows of the reports' tests: read straight from `requests` and `attempts`, windows over them, and exact
arithmetic (Fraction, half-even rounding), never with service.reports.service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import text

from service.core.database import Database

MICRO = timedelta(microseconds=1)

Row = dict[str, Any]


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
