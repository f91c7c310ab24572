"""The two statements that move money on the request path, each one atomic statement in one round trip.

`reserve` locks the applicable cap rows in id order, holds the worst case on all of them or on none, and writes
the attempt's ledger row (and, for a request's first attempt, the request row). `settle` marks the attempt
settled, moves its reservation to spent on the same cap rows, adds the cost to the request, and records the
request's outcome when the attempt ends it. Each runs in autocommit: a single statement is atomic by itself, and
the hot global cap rows stay locked only while PostgreSQL executes it, never while this process waits on the
network. Under READ COMMITTED, `FOR UPDATE` returns each row's latest committed version, so the room check
sees every concurrent reservation and settle, and no cap can be overshot.

The reserve's UPDATE sets every column it could be checked on from the locked row, not from the row it scans.
PostgreSQL computes an updated row from the version in the statement's snapshot, and checks the table's CHECK
constraints on it, before it finds a newer committed version and recomputes from that one. Computed from the
scanned version, the first row could fail `ck_caps_within_cap` (a stale version with a reservation since
settled); computed from `locked` it is the row that will be written. `tally` is a guard that should never
fire: if fewer than all rows were updated, it fails the statement (dividing by zero) rather than commit a
partial reservation, and the caller runs it again.

SQL only; the caller decides what to do with the result. The columns and their casts come from the tables.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Row, Table, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.tables import Attempt, Request

_REQUESTS: Table = Request.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
_DIVISION_BY_ZERO = "22012"  # the partial-reservation guard


class StaleSnapshot(Exception):
    """The statement saw a cap row older than the one it locked; running it again decides correctly."""


@dataclass(frozen=True)
class ReserveResult:
    attempt_id: int | None  # None: refused, or a cap row is missing
    remaining: dict[int, Decimal]  # each cap row's room before this reservation
    complete: bool  # every cap row id exists


@dataclass(frozen=True)
class Settled:
    """How an attempt stands after a settle that found it settled already."""

    settled_by: str | None
    cost_usd: Decimal


def _params(table: Table, prefix: str, columns: tuple[str, ...]) -> list[Any]:
    """Typed parameters for the named columns (a name that is not a column raises KeyError)."""
    return [bindparam(f"{prefix}{c}", type_=table.c[c].type) for c in columns]


def _placeholders(prefix: str, columns: tuple[str, ...]) -> str:
    return ", ".join(f":{prefix}{c}" for c in columns)


# Common table expressions that hold `:amount` on every cap row of `:cap_ids` or on none: `locked` (each row's
# room before), `verdict` (complete, fits) and `tally` (whole: held on all rows). Shared with
# service.money.batch_charges.
HOLD = """
        locked AS (
            SELECT id, cap_usd, spent_usd, reserved_usd, overrun_usd, cap_usd - spent_usd - reserved_usd AS remaining
            FROM caps WHERE id = ANY(:cap_ids) ORDER BY id FOR UPDATE
        ),
        verdict AS (
            SELECT count(*) = :cap_count AS complete, coalesce(bool_and(remaining >= :amount), false) AS fits
            FROM locked
        ),
        reserved AS (
            -- Every column from the locked (latest) version: see the module's docstring.
            UPDATE caps
            SET reserved_usd = locked.reserved_usd + :amount,
                spent_usd = locked.spent_usd,
                cap_usd = locked.cap_usd,
                overrun_usd = locked.overrun_usd,
                updated_at = now()
            FROM locked, verdict
            WHERE caps.id = locked.id AND verdict.complete AND verdict.fits
            RETURNING caps.id
        ),
        tally AS (
            SELECT count(*) = :cap_count AS whole,
                   -- A partial reservation must never commit: dividing by zero fails the whole statement.
                   1 / (CASE WHEN count(*) IN (0, :cap_count) THEN 1 ELSE 0 END) AS guard
            FROM reserved
        )"""


@functools.lru_cache(maxsize=16)
def _reserve_sql(request_columns: tuple[str, ...], attempt_columns: tuple[str, ...]) -> TextClause:
    insert_request = (
        f"""
        request AS (
            INSERT INTO requests ({", ".join(request_columns)})
            SELECT {_placeholders("r_", request_columns)} FROM tally WHERE tally.whole
            ON CONFLICT (id) DO NOTHING
        ),"""
        if request_columns
        else ""
    )
    sql = f"""
        WITH {HOLD},{insert_request}
        attempt AS (
            INSERT INTO attempts ({", ".join(attempt_columns)})
            SELECT {_placeholders("a_", attempt_columns)} FROM tally WHERE tally.whole
            RETURNING id
        )
        SELECT (SELECT id FROM attempt) AS attempt_id, verdict.complete, tally.guard,
               locked.id AS cap_id, locked.remaining
        FROM verdict CROSS JOIN tally LEFT JOIN locked ON true
    """
    return text(sql).bindparams(
        bindparam("cap_ids", type_=_ATTEMPTS.c.cap_ids.type),
        bindparam("amount", type_=_ATTEMPTS.c.reserved_usd.type),
        *_params(_REQUESTS, "r_", request_columns),
        *_params(_ATTEMPTS, "a_", attempt_columns),
    )


@functools.lru_cache(maxsize=32)
def _settle_sql(attempt_columns: tuple[str, ...], request_columns: tuple[str, ...]) -> TextClause:
    set_attempt = ", ".join(f"{c} = :a_{c}" for c in attempt_columns)
    set_request = "".join(f", {c} = :r_{c}" for c in request_columns)
    sql = f"""
        WITH held AS (
            UPDATE attempts SET state = 'settled', {set_attempt}
            WHERE id = :attempt_id AND state = 'reserved'
            RETURNING request_id, cap_ids, reserved_usd, strong_equiv_usd, stage
        ),
        locked AS (
            SELECT caps.id FROM caps, held WHERE caps.id = ANY(held.cap_ids) ORDER BY caps.id FOR UPDATE OF caps
        ),
        charged AS (
            UPDATE caps
            SET spent_usd = caps.spent_usd + :cost,
                reserved_usd = caps.reserved_usd - held.reserved_usd,
                overrun_usd = caps.overrun_usd + GREATEST(0,
                    caps.spent_usd + :cost + caps.reserved_usd - held.reserved_usd - caps.cap_usd - caps.overrun_usd),
                updated_at = now()
            FROM locked, held
            WHERE caps.id = locked.id
            RETURNING caps.id
        ),
        guard AS (
            -- The cap rows of a held reservation never go away; if some did, fail rather than commit a charge
            -- that the cap rows do not carry.
            SELECT 1 / (CASE WHEN count(*) = coalesce((SELECT cardinality(held.cap_ids) FROM held), 0)
                        THEN 1 ELSE 0 END) AS ok
            FROM charged
        ),
        request AS (
            -- A shadow call's cost is calibration spend: on the cap rows and in the ledger, apart from the
            -- answer's cost.
            UPDATE requests
            SET cost_usd = requests.cost_usd + coalesce((SELECT :cost FROM held WHERE stage <> 'shadow'), 0),
                shadow_cost_usd = requests.shadow_cost_usd
                    + coalesce((SELECT :cost FROM held WHERE stage = 'shadow'), 0),
                all_strong_cost_usd = requests.all_strong_cost_usd
                    + coalesce((SELECT held.strong_equiv_usd FROM held), 0){set_request}
            WHERE requests.id = :request_id
            RETURNING requests.id
        )
        SELECT (SELECT count(*) FROM held) AS settled_now, (SELECT ok FROM guard) AS guard
    """
    return text(sql).bindparams(
        bindparam("cost", type_=_ATTEMPTS.c.cost_usd.type),
        bindparam("request_id", type_=_REQUESTS.c.id.type),
        *_params(_ATTEMPTS, "a_", attempt_columns),
        *_params(_REQUESTS, "r_", request_columns),
    )


_SETTLED = text("SELECT settled_by, cost_usd FROM attempts WHERE id = :attempt_id")
_HELD = text(
    "SELECT id FROM attempts WHERE request_id = :request_id AND attempt_no = :attempt_no AND state = 'reserved'"
).bindparams(bindparam("request_id", type_=_ATTEMPTS.c.request_id.type))


async def guarded(connection: AsyncConnection, statement: TextClause, params: dict[str, Any]) -> Sequence[Row[Any]]:
    """Run a statement with a partial-charge guard; the guard firing raises StaleSnapshot (run it again)."""
    try:
        return (await connection.execute(statement, params)).all()
    except sqlalchemy.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _DIVISION_BY_ZERO:
            raise StaleSnapshot from exc
        raise


class ChargeRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def reserve(
        self, cap_ids: list[int], amount: Decimal, attempt: dict[str, Any], new_request: dict[str, Any] | None
    ) -> ReserveResult:
        request = new_request or {}
        statement = _reserve_sql(tuple(request), tuple(attempt))
        params: dict[str, Any] = {"cap_ids": cap_ids, "cap_count": len(cap_ids), "amount": amount}
        params |= {f"r_{k}": v for k, v in request.items()}
        params |= {f"a_{k}": v for k, v in attempt.items()}
        rows = await guarded(self.connection, statement, params)
        return ReserveResult(
            attempt_id=rows[0].attempt_id,
            remaining={r.cap_id: r.remaining for r in rows if r.cap_id is not None},
            complete=bool(rows[0].complete),
        )

    async def settle(
        self,
        attempt_id: int,
        request_id: uuid.UUID,
        cost: Decimal,
        attempt: dict[str, Any],
        finish: dict[str, Any] | None,
    ) -> bool:
        """Settle the attempt if it is still reserved; False if it had been settled already."""
        request = finish or {}
        statement = _settle_sql(tuple(attempt), tuple(request))
        params: dict[str, Any] = {"attempt_id": attempt_id, "request_id": request_id, "cost": cost}
        params |= {f"a_{k}": v for k, v in attempt.items()}
        params |= {f"r_{k}": v for k, v in request.items()}
        return bool((await self.connection.execute(statement, params)).one().settled_now)

    async def settled(self, attempt_id: int) -> Settled:
        """Who settled the attempt and at what cost. A statement of its own: a settle that waited on the row's
        lock saw the attempt as it was when it started, before the settle that got there first."""
        row = (await self.connection.execute(_SETTLED, {"attempt_id": attempt_id})).one()
        return Settled(row.settled_by, row.cost_usd if row.cost_usd is not None else Decimal(0))

    async def held_attempt(self, request_id: uuid.UUID, attempt_no: int) -> int | None:
        """The id of the attempt's ledger row if it exists and is still reserved."""
        row = (await self.connection.execute(_HELD, {"request_id": request_id, "attempt_no": attempt_no})).first()
        return None if row is None else int(row.id)
