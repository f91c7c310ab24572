"""A report's window of time, the ways it is given (ISO 8601, `7d`), and ratios to fixed places."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from service.core.errors import InvalidInput

RATE_PLACES = Decimal("0.000001")


PCT_PLACES = Decimal("0.01")


MONEY_PLACES = Decimal("0.0000000001")


MAX_SPAN = timedelta(days=400)


MAX_HOURLY_SPAN = timedelta(days=31)


def ratio(part: int | Decimal, whole: int | Decimal, places: Decimal = RATE_PLACES) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(places, ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval [start, end)."""

    start: datetime
    end: datetime

    @classmethod
    def parse(cls, start: str | None, end: str | None, now: datetime, default_days: int = 7) -> Window:
        end_at = parse_instant(end, "end") if end else now
        try:
            start_at = parse_instant(start, "start") if start else end_at - timedelta(days=default_days)
        except OverflowError:
            raise InvalidInput("`start` is before the first representable instant", field="start") from None
        if start_at >= end_at:
            raise InvalidInput("`start` must be before `end`", field="start")
        if end_at - start_at > MAX_SPAN:
            raise InvalidInput(f"a window may span at most {MAX_SPAN.days} days", field="start")
        return cls(start_at, end_at)

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end}


def parse_instant(value: str, name: str) -> datetime:
    """An ISO 8601 date or date-time; a date means its midnight, and a time without an offset is UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise InvalidInput(f"`{name}` is not an ISO 8601 date or date-time: {value!r}", field=name) from None
    except OverflowError:
        raise InvalidInput(f"`{name}` is outside the years 1 to 9999 in UTC: {value!r}", field=name) from None


def parse_since(value: str, now: datetime) -> datetime:
    """`7d`, `24h` or `30m` before now, or an ISO 8601 instant."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if value[:-1].isdigit() and value[-1:] in units:
        return now - timedelta(**{units[value[-1]]: int(value[:-1])})
    return parse_instant(value, "since")


def day_window(days: int, now: datetime) -> Window:
    """The last `days` whole UTC days up to and including today."""
    today = now.date()
    start = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), UTC)
    return Window(start, datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC))
