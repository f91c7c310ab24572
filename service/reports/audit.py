"""Reads for auditors and finance: one request's ledger rows, and the list of requests, page by page."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, select, tuple_

from service.core.database import Database
from service.core.errors import InvalidInput, NotFound
from service.money.ledger import LedgerRepository
from service.reports.window import Window
from service.tables import Attempt, Request, Team
from service.tenancy.keys import Scope

MAX_PAGE = 1000
EXPORT_PAGE = 2000
STATUSES = ("pending", "ok", "failed", "refused")

# The columns of the list and of its exports, in order.
LISTED = (
    Request.id,
    Request.created_at,
    Team.name.label("team"),
    Request.status,
    Request.task_hash,
    Request.label,
    Request.confidence,
    Request.model,
    Request.escalated,
    Request.escalation_reason,
    Request.cheap_label,
    Request.cheap_confidence,
    Request.cost_usd,
    Request.all_strong_cost_usd,
    Request.latency_ms,
    Request.error_type,
)
COLUMNS = tuple(str(c.key) for c in LISTED)


def csv_cell(value: Any) -> str:
    """One CSV cell: exact decimals, ISO times, and text a spreadsheet will not run as a formula (labels come
    from clients; OWASP's leading quote)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, str):
        return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


@dataclass(frozen=True)
class RequestFilter:
    window: Window
    escalated: bool | None = None
    reason: str | None = None
    model: str | None = None
    status: str | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidInput(f"`status` must be one of {', '.join(STATUSES)}", field="status")
        for name in ("reason", "model", "task"):
            value = getattr(self, name)
            if value is not None and ("\x00" in value or len(value) > 255):
                raise InvalidInput(f"`{name}` must be at most 255 characters, without NUL", field=name)


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last row's (created_at, id), newest first. Opaque to clients."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), str(self.id)]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        invalid = InvalidInput("`cursor` is not a cursor this API returned", field="cursor")
        try:
            created_at, id_ = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
            if not (isinstance(created_at, str) and isinstance(id_, str)):
                raise invalid
            at = datetime.fromisoformat(created_at)
            if at.tzinfo is None:
                raise invalid
            return cls(at.astimezone(UTC), uuid.UUID(id_))
        except (ValueError, TypeError, OverflowError, binascii.Error):
            raise invalid from None


def _query(scope: Scope, flt: RequestFilter) -> Select[*tuple[Any, ...]]:
    query = (
        select(*LISTED)
        .join(Team, Team.id == Request.team_id)
        .where(Request.created_at >= flt.window.start, Request.created_at < flt.window.end)
        .order_by(Request.created_at.desc(), Request.id.desc())
    )
    if scope.team_id is not None:
        query = query.where(Request.team_id == scope.team_id)
    if flt.escalated is not None:
        query = query.where(Request.escalated.is_(flt.escalated))
    if flt.reason is not None:
        query = query.where(Request.escalation_reason == flt.reason)
    if flt.model is not None:
        query = query.where(Request.model == flt.model)
    if flt.status is not None:
        query = query.where(Request.status == flt.status)
    if flt.task is not None:
        query = query.where(Request.task_hash == flt.task)
    return query


def _after(query: Select[*tuple[Any, ...]], cursor: Cursor | None) -> Select[*tuple[Any, ...]]:
    """Rows after the cursor in (created_at, id) descending order. The row comparison is the keyset; the
    redundant bound on created_at lets any created_at index start at the cursor instead of the newest row,
    so a deep page costs what the first one does."""
    if cursor is None:
        return query
    return query.where(
        Request.created_at <= cursor.created_at,
        tuple_(Request.created_at, Request.id) < tuple_(cursor.created_at, cursor.id),
    )


async def list_requests(
    db: Database, scope: Scope, flt: RequestFilter, limit: int, after: Cursor | None = None
) -> tuple[Sequence[Any], Cursor | None]:
    """One page, newest first, and the cursor of the next page (None on the last)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"`limit` must be between 1 and {MAX_PAGE}", field="limit")
    return await _page(db, scope, flt, limit, after)


async def _page(
    db: Database, scope: Scope, flt: RequestFilter, limit: int, after: Cursor | None
) -> tuple[Sequence[Any], Cursor | None]:
    async with db.transaction() as session:
        rows = (await session.execute(_after(_query(scope, flt), after).limit(limit + 1))).all()
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Cursor(last.created_at, last.id)


async def export_requests(db: Database, scope: Scope, flt: RequestFilter) -> AsyncIterator[Any]:
    """Every matching row, a page at a time in short transactions: memory stays flat, and no connection
    is held while a slow client reads. The first page is read before returning, so that an unavailable
    database is still a 503 rather than a stream cut short."""
    rows, cursor = await _page(db, scope, flt, EXPORT_PAGE, None)

    async def rest(rows: Sequence[Any], cursor: Cursor | None) -> AsyncIterator[Any]:
        while True:
            for row in rows:
                yield row
            if cursor is None:
                return
            rows, cursor = await _page(db, scope, flt, EXPORT_PAGE, cursor)

    return rest(rows, cursor)


async def request_audit(db: Database, scope: Scope, request_id: uuid.UUID) -> tuple[Request, Sequence[Attempt]]:
    """One request and its ledger rows. Another team's id is indistinguishable from a missing one."""
    async with db.snapshot() as session:
        ledger = LedgerRepository(session)
        request = await ledger.get_request(request_id, scope.team_id)
        if request is None:
            raise NotFound(f"no request {request_id}")
        return request, await ledger.attempts_of(request_id)
