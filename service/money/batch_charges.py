"""The statements that move a job's money: hold a Message Batch's worst case, and settle its results in bulk.

Both are one statement each, in autocommit, like service.money.charges (whose cap-row CTEs `hold` reuses):

- `hold` reserves the sum of the items' worst cases on every cap row or on none, writes the `job_batches` row
  ('submitting'), claims the items (moving them from pending to sent; all or nothing), inserts the request rows
  of a first stage and one reserved ledger row per item, tagged with the batch.
- `settle` takes result lines (one per ledger row): marks each still-reserved row settled with its tokens, prices
  and cost, moves the sum from reserved to spent on the batch's cap rows, adds each cost to its request and
  records the request's outcome, and moves each item on. Rows settled already are skipped, so ingesting the same
  results twice (a worker killed mid-ingest) charges nothing twice.

SQL only; the worker decides what the lines say.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Boolean, Text, TypeEngine

from service.money.charges import HOLD, guarded
from service.tables import Attempt, JobItem, Request

_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
_REQUESTS: Table = Request.__table__  # type: ignore[assignment]
_ITEMS: Table = JobItem.__table__  # type: ignore[assignment]

# Per item of a hold: (name, column type).
_HOLD_ITEM = (
    ("seq", _ITEMS.c.seq.type),
    ("text_chars", _REQUESTS.c.text_chars.type),
    ("bound", _ATTEMPTS.c.input_token_bound.type),
    ("reserved", _ATTEMPTS.c.reserved_usd.type),
    ("strong_equiv", _ATTEMPTS.c.strong_equiv_usd.type),
    ("price_id", _ATTEMPTS.c.price_id.type),
    ("price_input", _ATTEMPTS.c.price_input.type),
    ("price_cache_write_5m", _ATTEMPTS.c.price_cache_write_5m.type),
    ("price_cache_write_1h", _ATTEMPTS.c.price_cache_write_1h.type),
    ("price_cache_read", _ATTEMPTS.c.price_cache_read.type),
    ("price_output", _ATTEMPTS.c.price_output.type),
)

# Per result line of a settle: the ledger row's columns, the request's, the item's.
_SETTLE_ATTEMPT = (
    "outcome",
    "http_status",
    "stop_reason",
    "label",
    "confidence",
    "escalation_reason",
    "input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "output_tokens",
    "cost_usd",
    "price_id",
    "price_input",
    "price_cache_write_5m",
    "price_cache_write_1h",
    "price_cache_read",
    "price_output",
    "upstream_request_id",
    "error_message",
)
# Written when `finish` is true (the request ended with this line).
_FINISH_REQUEST = ("status", "label", "confidence", "model", "error_type", "error_message")
# Written when not null (the cheap stage's answer and the escalation).
_KEEP_REQUEST = ("escalated", "escalation_reason", "cheap_label", "cheap_confidence")


# How these statements are planned matters more than anything else here. The lines come as an unnest() of array
# parameters and are joined to a large table (attempts, job_items). If the planner underestimates that table's
# side, it drives a nested loop from it and re-evaluates the unnest for every row: quadratic, and a 10,000-item
# batch then takes minutes (seen: 92 s for 2,000 lines, every retry cut by the statement timeout, so the job never
# moved). Its estimate of a table's size is sound (it scales by the current pages), but its selectivity of
# `state = 'reserved'` or `batch_id = :id` is not: the statistics may date from before the job's rows existed.
# So the big table gets no restriction of its own: every condition on it compares it with a column of the lines
# (constants ride along in the MATERIALIZED lines, which the planner cannot fold back into constants), and only
# its primary key is indexable. Its side is then estimated at its whole size, and the only plans left are linear:
# each line looks its row up by primary key, or the table is hashed against the lines once.
_PLAN_NOTE = "joined on the primary key, every other condition against the lines: see service.money.batch_charges"


def _array(name: str, type_: TypeEngine[Any]) -> Any:
    return bindparam(name, type_=ARRAY(type_))


def _unnest(prefix: str, columns: tuple[tuple[str, TypeEngine[Any]], ...]) -> str:
    arrays = ", ".join(f":{prefix}{name}" for name, _ in columns)
    names = ", ".join(name for name, _ in columns)
    return f"unnest({arrays}) AS u({names})"


@functools.cache
def _hold_sql(first_stage: bool) -> TextClause:
    insert_requests = (
        """
        request AS (
            INSERT INTO requests (id, team_id, status, task_hash, labels, instructions, threshold, text_chars,
                                  cheap_model, strong_model, created_at, job_id)
            SELECT claimed.request_id, :team_id, 'pending', :task_hash, :labels, :instructions, :threshold,
                   claimed.text_chars, :cheap_model, :strong_model, :now, :job_id
            FROM claimed
            ON CONFLICT (id) DO NOTHING
        ),"""
        if first_stage
        else ""
    )
    sql = f"""
        WITH {HOLD},
        batch AS (
            INSERT INTO job_batches (job_id, stage, state, model, item_count, cap_ids, reserved_usd, created_at)
            SELECT :job_id, :stage, 'submitting', :model, :item_count, :cap_ids, :amount, clock_timestamp()
            FROM tally WHERE tally.whole
            RETURNING id
        ),
        u AS MATERIALIZED (
            SELECT *, CAST(:job_id AS UUID) AS job_id, CAST(:from_state AS VARCHAR) AS from_state
            FROM {_unnest("i_", _HOLD_ITEM)}
        ),
        claimed AS (
            -- {_PLAN_NOTE}
            UPDATE job_items ji SET state = :to_state, batch_id = batch.id, attempts = ji.attempts + 1
            FROM batch, u
            WHERE ji.job_id = u.job_id AND ji.seq = u.seq AND ji.state = u.from_state
            RETURNING ji.request_id, ji.attempts, u.*
        ),
        claim_guard AS (
            -- Every item or none: an item no longer pending (another worker's) fails the statement.
            SELECT 1 / (CASE WHEN count(*) = (CASE WHEN (SELECT whole FROM tally) THEN :item_count ELSE 0 END)
                        THEN 1 ELSE 0 END) AS ok
            FROM claimed
        ),
{insert_requests}
        attempt AS (
            INSERT INTO attempts (request_id, team_id, request_created_at, task_hash, attempt_no, stage, model,
                                  state, cap_ids, billing_day, reserved_usd, input_token_bound, max_tokens,
                                  price_id, price_input, price_cache_write_5m, price_cache_write_1h,
                                  price_cache_read, price_output, reserved_at, strong_equiv_usd, batch_id)
            SELECT claimed.request_id, :team_id,
                   coalesce((SELECT r.created_at FROM requests r WHERE r.id = claimed.request_id), :now),
                   :task_hash, claimed.attempts, :stage, :model, 'reserved', :cap_ids, :billing_day,
                   claimed.reserved, claimed.bound, :max_tokens, claimed.price_id, claimed.price_input,
                   claimed.price_cache_write_5m, claimed.price_cache_write_1h, claimed.price_cache_read,
                   claimed.price_output, :now, claimed.strong_equiv, batch.id
            FROM claimed CROSS JOIN batch
            RETURNING 1
        )
        SELECT (SELECT id FROM batch) AS batch_id, verdict.complete, tally.guard,
               (SELECT ok FROM claim_guard) AS claim_ok, (SELECT count(*) FROM attempt) AS attempts,
               locked.id AS cap_id, locked.remaining
        FROM verdict CROSS JOIN tally LEFT JOIN locked ON true
    """
    return text(sql).bindparams(
        bindparam("cap_ids", type_=_ATTEMPTS.c.cap_ids.type),
        bindparam("amount", type_=_ATTEMPTS.c.reserved_usd.type),
        bindparam("job_id", type_=_ITEMS.c.job_id.type),
        bindparam("team_id", type_=_ATTEMPTS.c.team_id.type),
        *(
            [
                bindparam("labels", type_=_REQUESTS.c.labels.type),
                bindparam("threshold", type_=_REQUESTS.c.threshold.type),
            ]
            if first_stage
            else []
        ),
        bindparam("now", type_=_ATTEMPTS.c.reserved_at.type),
        bindparam("billing_day", type_=_ATTEMPTS.c.billing_day.type),
        *(_array(f"i_{name}", type_) for name, type_ in _HOLD_ITEM),
    )


def _settle_columns() -> tuple[tuple[str, TypeEngine[Any]], ...]:
    columns: list[tuple[str, TypeEngine[Any]]] = [("attempt_id", _ATTEMPTS.c.id.type)]
    columns += [(f"a_{c}", _ATTEMPTS.c[c].type) for c in _SETTLE_ATTEMPT]
    columns += [("strong_equiv", _ATTEMPTS.c.strong_equiv_usd.type), ("finish", Boolean())]
    columns += [(f"r_{c}", _REQUESTS.c[c].type) for c in (*_FINISH_REQUEST, *_KEEP_REQUEST)]
    columns += [("item_state", _ITEMS.c.state.type), ("item_error", Text())]
    return tuple(columns)


_SETTLE_LINE = _settle_columns()


@functools.cache
def _settle_sql() -> TextClause:
    # A line with no price row (nothing was billed, or the tokens are unknown) keeps the prices reserved at.
    set_attempt = ", ".join(
        f"{c} = coalesce(u.a_{c}, a.{c})" if c.startswith("price_") else f"{c} = u.a_{c}" for c in _SETTLE_ATTEMPT
    )
    finish = "".join(f", {c} = CASE WHEN u.finish THEN u.r_{c} ELSE r.{c} END" for c in _FINISH_REQUEST)
    keep = "".join(f", {c} = coalesce(u.r_{c}, r.{c})" for c in _KEEP_REQUEST)
    sql = f"""
        WITH u AS MATERIALIZED (
            SELECT *, CAST(:batch_id AS BIGINT) AS batch_id, CAST('reserved' AS VARCHAR) AS from_state
            FROM {_unnest("", _SETTLE_LINE)}
        ),
        held AS (
            -- {_PLAN_NOTE}; "+ 0" keeps ix_attempts_batch out of it
            UPDATE attempts a
            SET state = 'settled', {set_attempt},
                strong_equiv_usd = coalesce(u.strong_equiv, a.strong_equiv_usd),
                settled_by = 'holder', settled_at = :now
            FROM u
            WHERE a.id = u.attempt_id AND a.state = u.from_state AND (a.batch_id + 0) = u.batch_id
            RETURNING a.id, a.request_id, a.reserved_usd, a.cost_usd, a.strong_equiv_usd, a.stage, u.*
        ),
        totals AS (
            SELECT count(*) AS n, coalesce(sum(cost_usd), 0) AS cost, coalesce(sum(reserved_usd), 0) AS reserved
            FROM held
        ),
        locked AS (
            SELECT caps.id FROM caps, totals WHERE caps.id = ANY(:cap_ids) AND totals.n > 0
            ORDER BY caps.id FOR UPDATE OF caps
        ),
        charged AS (
            UPDATE caps
            SET spent_usd = caps.spent_usd + totals.cost,
                reserved_usd = caps.reserved_usd - totals.reserved,
                overrun_usd = caps.overrun_usd + GREATEST(0,
                    caps.spent_usd + totals.cost + caps.reserved_usd - totals.reserved - caps.cap_usd
                    - caps.overrun_usd),
                updated_at = now()
            FROM locked, totals
            WHERE caps.id = locked.id
            RETURNING caps.id
        ),
        guard AS (
            SELECT 1 / (CASE WHEN count(*) = (CASE WHEN (SELECT n FROM totals) > 0 THEN :cap_count ELSE 0 END)
                        THEN 1 ELSE 0 END) AS ok
            FROM charged
        ),
        request AS (
            UPDATE requests r
            SET cost_usd = r.cost_usd + u.cost_usd,
                all_strong_cost_usd = r.all_strong_cost_usd
                    + CASE WHEN u.stage = 'cheap' THEN coalesce(u.strong_equiv_usd, 0) ELSE 0 END,
                finished_at = CASE WHEN u.finish THEN :now ELSE r.finished_at END,
                latency_ms = CASE WHEN u.finish
                    THEN (extract(epoch FROM (:now - r.created_at)) * 1000)::int ELSE r.latency_ms END
                {finish}{keep}
            FROM held u
            WHERE r.id = u.request_id
            RETURNING r.id
        ),
        item AS (
            UPDATE job_items ji SET state = u.item_state, error = u.item_error, batch_id = NULL
            FROM held u
            WHERE ji.request_id = u.request_id
            RETURNING ji.seq
        )
        SELECT (SELECT n FROM totals) AS settled, (SELECT cost FROM totals) AS cost, (SELECT ok FROM guard) AS ok,
               (SELECT count(*) FROM request) AS requests, (SELECT count(*) FROM item) AS items
    """
    return text(sql).bindparams(
        bindparam("cap_ids", type_=_ATTEMPTS.c.cap_ids.type),
        bindparam("now", type_=_ATTEMPTS.c.settled_at.type),
        *(_array(name, type_) for name, type_ in _SETTLE_LINE),
    )


@dataclass(frozen=True)
class HeldItem:
    """One item of a batch about to be held: its worst case and the price row it is reserved at."""

    seq: int
    text_chars: int
    bound: int
    reserved: Decimal
    strong_equiv: Decimal | None
    price: dict[str, Any]  # price_id, price_input, ... (the batch rates)


@dataclass(frozen=True)
class BatchHold:
    job_id: uuid.UUID
    team_id: uuid.UUID
    stage: str
    model: str
    from_state: str
    to_state: str
    max_tokens: int
    now: datetime
    billing_day: date
    task: dict[str, Any]  # task_hash, labels, instructions, threshold, cheap_model, strong_model


@dataclass(frozen=True)
class HoldResult:
    batch_id: int | None  # None: refused (or a cap row is missing)
    remaining: dict[int, Decimal]  # each cap row's room before
    complete: bool


@dataclass(frozen=True)
class ResultLine:
    """How one ledger row of a batch settles, and what it does to its request and item."""

    attempt_id: int
    attempt: dict[str, Any]  # _SETTLE_ATTEMPT
    strong_equiv: Decimal | None
    finish: bool
    request: dict[str, Any]  # _FINISH_REQUEST (read when finish) and _KEEP_REQUEST (written when not None)
    item_state: str
    item_error: str | None = None


@dataclass(frozen=True)
class SettleResult:
    settled: int
    cost: Decimal


class JobLedger:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def hold(self, batch: BatchHold, cap_ids: list[int], items: list[HeldItem]) -> HoldResult:
        amount = sum((i.reserved for i in items), Decimal(0))
        params: dict[str, Any] = {
            "cap_ids": cap_ids,
            "cap_count": len(cap_ids),
            "amount": amount,
            "job_id": batch.job_id,
            "team_id": batch.team_id,
            "stage": batch.stage,
            "model": batch.model,
            "from_state": batch.from_state,
            "to_state": batch.to_state,
            "item_count": len(items),
            "max_tokens": batch.max_tokens,
            "now": batch.now,
            "billing_day": batch.billing_day,
            **batch.task,
            "i_seq": [i.seq for i in items],
            "i_text_chars": [i.text_chars for i in items],
            "i_bound": [i.bound for i in items],
            "i_reserved": [i.reserved for i in items],
            "i_strong_equiv": [i.strong_equiv for i in items],
        }
        for name, _ in _HOLD_ITEM[5:]:
            params[f"i_{name}"] = [i.price[name] for i in items]
        statement = _hold_sql(batch.stage == "cheap")
        if batch.stage != "cheap":
            for unused in ("labels", "instructions", "threshold", "cheap_model", "strong_model"):
                params.pop(unused, None)
        rows = await guarded(self.connection, statement, params)
        return HoldResult(
            batch_id=rows[0].batch_id,
            remaining={r.cap_id: r.remaining for r in rows if r.cap_id is not None},
            complete=bool(rows[0].complete),
        )

    async def settle(self, batch_id: int, cap_ids: list[int], lines: list[ResultLine], now: datetime) -> SettleResult:
        params: dict[str, Any] = {"batch_id": batch_id, "cap_ids": cap_ids, "cap_count": len(cap_ids), "now": now}
        params["attempt_id"] = [line.attempt_id for line in lines]
        for c in _SETTLE_ATTEMPT:
            params[f"a_{c}"] = [line.attempt.get(c) for line in lines]
        params["strong_equiv"] = [line.strong_equiv for line in lines]
        params["finish"] = [line.finish for line in lines]
        for c in (*_FINISH_REQUEST, *_KEEP_REQUEST):
            params[f"r_{c}"] = [line.request.get(c) for line in lines]
        params["item_state"] = [line.item_state for line in lines]
        params["item_error"] = [line.item_error for line in lines]
        row = (await guarded(self.connection, _settle_sql(), params))[0]
        return SettleResult(int(row.settled), Decimal(row.cost))
