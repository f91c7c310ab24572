"""The service's clock: aware UTC datetimes, so the ledger's periods are UTC days and months."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
