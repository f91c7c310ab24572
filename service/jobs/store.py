"""Jobs, their items and their Message Batches: SQL only, never commits (the caller owns the transaction or runs
each statement in autocommit). The money statements are in service.money.batch_charges."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, Table, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.tables import Job, JobBatch, JobItem, Request

ACTIVE = ("queued", "running", "paused_cost_cap", "paused_upstream", "canceling")
# What the worker may move a job between; a cancel (canceling) is only ever ended by the cancel path.
RUNNABLE = ("queued", "running", "paused_cost_cap", "paused_upstream")
ENDED_ITEM = ("done", "failed", "canceled")
PENDING_STATE = {"cheap": "cheap_pending", "strong": "strong_pending"}
SENT_STATE = {"cheap": "cheap_sent", "strong": "strong_sent"}

_ITEMS: Table = JobItem.__table__  # type: ignore[assignment]
_INSERT_ITEMS = text("""
    INSERT INTO job_items (job_id, seq, item_id, text, request_id, state, error)
    SELECT :job_id, u.seq, u.item_id, u.text, u.request_id, u.state, u.error
    FROM unnest(:seq, :item_id, :text, :request_id, :state, :error) AS u(seq, item_id, text, request_id, state, error)
""").bindparams(
    bindparam("job_id", type_=_ITEMS.c.job_id.type),
    bindparam("seq", type_=ARRAY(_ITEMS.c.seq.type)),
    bindparam("item_id", type_=ARRAY(_ITEMS.c.item_id.type)),
    bindparam("text", type_=ARRAY(_ITEMS.c.text.type)),
    bindparam("request_id", type_=ARRAY(_ITEMS.c.request_id.type)),
    bindparam("state", type_=ARRAY(_ITEMS.c.state.type)),
    bindparam("error", type_=ARRAY(_ITEMS.c.error.type)),
)

# Due: not ended, its next check has come, and no live lease. SKIP LOCKED keeps workers from queueing on
# one another; the lease (not the row lock, which ends with this statement) is what keeps a job to one worker.
_CLAIM = text("""
    UPDATE jobs SET lease_owner = :owner, lease_until = clock_timestamp() + make_interval(secs => :lease_s)
    WHERE id = (
        SELECT id FROM jobs
        WHERE status NOT IN ('done', 'canceled') AND next_check_at <= clock_timestamp()
          AND (lease_until IS NULL OR lease_until < clock_timestamp())
        ORDER BY next_check_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
""")
_RENEW = text("""
    UPDATE jobs SET lease_until = clock_timestamp() + make_interval(secs => :lease_s)
    WHERE id = :job_id AND lease_owner = :owner AND lease_until >= clock_timestamp()
    RETURNING id
""")
_RELEASE = text("""
    UPDATE jobs SET lease_owner = NULL, lease_until = NULL,
                    next_check_at = clock_timestamp() + make_interval(secs => :after_s)
    WHERE id = :job_id AND lease_owner = :owner
""")


@dataclass(frozen=True)
class ItemCounts:
    by_state: dict[str, int]
    cost_usd: Decimal
    escalated: int  # items sent (or to be sent) to the strong model

    def of(self, *states: str) -> int:
        return sum(self.by_state.get(s, 0) for s in states)


@dataclass(frozen=True)
class BatchAttempt:
    """A still-reserved ledger row of a batch, with its item."""

    attempt_id: int
    seq: int
    request_id: uuid.UUID
    reserved_usd: Decimal
    strong_equiv_usd: Decimal | None
    sends: int  # how many times the item has been sent at this ledger row's stage, this time included


class JobStore:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    # The API's side

    async def add_job(self, values: dict[str, Any]) -> None:
        await self.connection.execute(insert(Job).values(**values))

    async def add_items(self, job_id: uuid.UUID, rows: Sequence[dict[str, Any]]) -> None:
        columns = ("seq", "item_id", "text", "request_id", "state", "error")
        params: dict[str, Any] = {"job_id": job_id} | {c: [r.get(c) for r in rows] for c in columns}
        await self.connection.execute(_INSERT_ITEMS, params)

    async def set_item_count(self, job_id: uuid.UUID, count: int) -> None:
        await self.connection.execute(update(Job).where(Job.id == job_id).values(item_count=count))

    async def job(self, job_id: uuid.UUID, team_id: uuid.UUID | None = None) -> Job | None:
        query = select(Job).where(Job.id == job_id)
        if team_id is not None:
            query = query.where(Job.team_id == team_id)
        row = (await self.connection.execute(query)).first()
        return None if row is None else _job(row)

    async def jobs(self, team_id: uuid.UUID, limit: int) -> list[Job]:
        rows = await self.connection.execute(
            select(Job).where(Job.team_id == team_id).order_by(Job.created_at.desc()).limit(limit)
        )
        return [_job(row) for row in rows]

    async def counts(self, job_id: uuid.UUID) -> ItemCounts:
        rows = await self.connection.execute(
            select(JobItem.state, func.count()).where(JobItem.job_id == job_id).group_by(JobItem.state)
        )
        cost, escalated = (
            await self.connection.execute(
                select(
                    func.coalesce(func.sum(Request.cost_usd), 0), func.count().filter(Request.escalated.is_(True))
                ).where(Request.job_id == job_id)
            )
        ).one()
        return ItemCounts({state: int(n) for state, n in rows}, Decimal(cost), int(escalated))

    async def ended_items(self, job_id: uuid.UUID, after_seq: int, limit: int) -> Sequence[Any]:
        """Ended items after `after_seq`, in input order, with their request's outcome."""
        query = (
            select(
                JobItem.seq,
                JobItem.item_id,
                JobItem.state,
                JobItem.error,
                Request.id.label("request_id"),
                Request.label,
                Request.confidence,
                Request.model,
                Request.escalated,
                Request.escalation_reason,
                Request.cost_usd,
                Request.error_type,
                Request.error_message,
            )
            .outerjoin(Request, Request.id == JobItem.request_id)
            .where(JobItem.job_id == job_id, JobItem.seq > after_seq, JobItem.state.in_(ENDED_ITEM))
            .order_by(JobItem.seq)
            .limit(limit)
        )
        return (await self.connection.execute(query)).all()

    async def request_cancel(self, job_id: uuid.UUID, team_id: uuid.UUID) -> bool:
        """Mark an active job canceling (the worker does the rest); False if it had ended."""
        result = await self.connection.execute(
            update(Job)
            .where(Job.id == job_id, Job.team_id == team_id, Job.status.in_(ACTIVE))
            .values(status="canceling", next_check_at=func.clock_timestamp(), updated_at=func.clock_timestamp())
            .returning(Job.id)
        )
        return result.first() is not None

    # The worker's side

    async def claim(self, owner: str, lease_s: float) -> uuid.UUID | None:
        job_id: uuid.UUID | None = await self.connection.scalar(_CLAIM, {"owner": owner, "lease_s": lease_s})
        return job_id

    async def renew(self, job_id: uuid.UUID, owner: str, lease_s: float) -> bool:
        return await self.connection.scalar(_RENEW, {"job_id": job_id, "owner": owner, "lease_s": lease_s}) is not None

    async def release(self, job_id: uuid.UUID, owner: str, after_s: float) -> None:
        await self.connection.execute(_RELEASE, {"job_id": job_id, "owner": owner, "after_s": after_s})

    async def set_status(
        self, job_id: uuid.UUID, status: str, detail: str | None, *, from_: Sequence[str], ended: bool = False
    ) -> bool:
        """Move the job to `status` if it is still in one of `from_`; False if it has moved on (a cancel)."""
        values: dict[str, Any] = {"status": status, "status_detail": detail, "updated_at": func.clock_timestamp()}
        if ended:
            values["finished_at"] = func.clock_timestamp()
        result = await self.connection.execute(
            update(Job).where(Job.id == job_id, Job.status.in_(from_)).values(**values).returning(Job.id)
        )
        return result.first() is not None

    async def clock(self) -> datetime:
        """The database's clock: batch creation times and doubts are measured by it, not by any worker's."""
        now = await self.connection.scalar(select(func.clock_timestamp()))
        assert isinstance(now, datetime)
        return now

    async def pending(self, job_id: uuid.UUID, stage: str, limit: int) -> Sequence[Any]:
        return (
            await self.connection.execute(
                select(JobItem.seq, JobItem.text)
                .where(JobItem.job_id == job_id, JobItem.state == PENDING_STATE[stage])
                .order_by(JobItem.seq)
                .limit(limit)
            )
        ).all()

    async def cancel_pending(self, job_id: uuid.UUID) -> None:
        """Items not sent yet are canceled; an escalated item's request ends as failed (canceled)."""
        await self.connection.execute(
            text("""
                WITH items AS (
                    UPDATE job_items SET state = 'canceled'
                    WHERE job_id = :job_id AND state IN ('cheap_pending', 'strong_pending')
                    RETURNING request_id
                )
                UPDATE requests SET status = 'failed', error_type = 'canceled',
                                    error_message = 'the job was canceled before this item was escalated',
                                    finished_at = clock_timestamp()
                FROM items WHERE requests.id = items.request_id AND requests.status = 'pending'
            """),
            {"job_id": job_id},
        )

    async def open_batches(self, job_id: uuid.UUID) -> list[JobBatch]:
        rows = await self.connection.execute(
            select(JobBatch)
            .where(JobBatch.job_id == job_id, JobBatch.state.in_(("submitting", "submitted")))
            .order_by(JobBatch.id)
        )
        return [JobBatch(**row._mapping) for row in rows]

    async def known_batch_ids(self, since: datetime) -> set[str]:
        rows = await self.connection.execute(
            select(JobBatch.anthropic_id).where(JobBatch.anthropic_id.is_not(None), JobBatch.created_at >= since)
        )
        return {r[0] for r in rows if r[0] is not None}

    async def mark_submitted(self, batch_id: int, anthropic_id: str) -> bool:
        result = await self.connection.execute(
            update(JobBatch)
            .where(JobBatch.id == batch_id, JobBatch.state == "submitting")
            .values(state="submitted", anthropic_id=anthropic_id, submitted_at=func.clock_timestamp())
            .returning(JobBatch.id)
        )
        return result.first() is not None

    async def mark_batch(self, batch_id: int, state: str) -> None:
        await self.connection.execute(
            update(JobBatch)
            .where(JobBatch.id == batch_id, JobBatch.state.in_(("submitting", "submitted")))
            .values(state=state, ingested_at=func.clock_timestamp())
        )

    async def held_attempts(self, batch_id: int) -> dict[int, BatchAttempt]:
        """The batch's ledger rows that are still reserved, by item seq."""
        rows = await self.connection.execute(
            text("""
                SELECT a.id, ji.seq, a.request_id, a.reserved_usd, a.strong_equiv_usd,
                       (SELECT count(*) FROM attempts s
                        WHERE s.request_id = a.request_id AND s.stage = a.stage
                          AND s.outcome IS DISTINCT FROM 'not_sent') AS sends
                FROM attempts a JOIN job_items ji ON ji.request_id = a.request_id
                WHERE a.batch_id = :batch_id AND a.state = 'reserved'
            """),
            {"batch_id": batch_id},
        )
        return {
            r.seq: BatchAttempt(r.id, r.seq, r.request_id, r.reserved_usd, r.strong_equiv_usd, r.sends) for r in rows
        }

    async def batch(self, batch_id: int) -> JobBatch:
        row = (await self.connection.execute(select(JobBatch).where(JobBatch.id == batch_id))).one()
        return JobBatch(**row._mapping)


def _job(row: Row[Any]) -> Job:
    """A detached Job holding the row's values (a Core connection returns columns, not ORM objects)."""
    return Job(**row._mapping)
