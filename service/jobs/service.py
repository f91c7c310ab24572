"""Jobs as their owners see them: create one from many items, read its progress and results, cancel it.

A job is stored whole before it is acknowledged (its items in one transaction), and `cascade worker` does the
rest (service.jobs.worker). Every read is scoped to the caller's team: another team's job is not found.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from service.cascade.prompt import Task, text_problem, unicode_problem
from service.core.clock import utcnow
from service.core.database import Database
from service.core.errors import InvalidInput, NotFound
from service.core.settings import Settings
from service.jobs.store import ItemCounts, JobStore
from service.tables import Job

_INSERT_ROWS = 10_000
_RESULT_PAGE = 5_000


@dataclass(frozen=True)
class JobSpec:
    team_id: uuid.UUID
    task: Task
    threshold: Decimal


@dataclass(frozen=True)
class JobStatus:
    job: Job
    counts: ItemCounts


class Jobs:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    async def create(self, spec: JobSpec, items: Iterable[tuple[str | None, str]]) -> JobStatus:
        """Store the job and every item, or nothing. A text that cannot be sent (empty, too long) fails its
        item only; more items than the limit fail the job (422)."""
        now = utcnow()
        job_id = uuid.uuid4()
        async with self.db.transaction() as session:
            store = JobStore(await session.connection())
            await store.add_job(
                {
                    "id": job_id,
                    "team_id": spec.team_id,
                    "status": "queued",
                    "task_hash": spec.task.hash,
                    "labels": list(spec.task.labels),
                    "instructions": spec.task.instructions,
                    "threshold": spec.threshold,
                    "cheap_model": self.settings.cheap_model,
                    "strong_model": self.settings.strong_model,
                    "item_count": 0,
                    "created_at": now,
                    "updated_at": now,
                    "next_check_at": now,
                }
            )
            rows: list[dict[str, Any]] = []
            count = 0
            for client_id, text in items:
                if count >= self.settings.max_job_items:
                    raise InvalidInput(f"a job has at most {self.settings.max_job_items} items", field="items")
                if client_id is not None and (bad := unicode_problem(client_id, f"item {count}: id")) is not None:
                    raise InvalidInput(bad, field="items")
                problem = text_problem(text, self.settings.max_text_chars)
                rows.append(
                    {
                        "seq": count,
                        "item_id": client_id if client_id is not None else str(count),
                        "text": "" if problem else text,
                        "request_id": uuid.uuid4(),
                        "state": "failed" if problem else "cheap_pending",
                        "error": problem,
                    }
                )
                count += 1
                if len(rows) == _INSERT_ROWS:
                    await store.add_items(job_id, rows)
                    rows = []
            if count == 0:
                raise InvalidInput("a job needs at least one item", field="items")
            if rows:
                await store.add_items(job_id, rows)
            await store.set_item_count(job_id, count)
            job = await store.job(job_id)
            counts = await store.counts(job_id)
        assert job is not None
        return JobStatus(job, counts)

    async def status(self, team_id: uuid.UUID, job_id: uuid.UUID) -> JobStatus:
        async with self.db.snapshot() as session:  # the job row and its counts from one snapshot
            store = JobStore(await session.connection())
            job = await store.job(job_id, team_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            return JobStatus(job, await store.counts(job_id))

    async def list(self, team_id: uuid.UUID, limit: int = 50) -> list[Job]:
        async with self.db.autocommit() as connection:
            return await JobStore(connection).jobs(team_id, limit)

    async def cancel(self, team_id: uuid.UUID, job_id: uuid.UUID) -> JobStatus:
        """Ask the worker to cancel the job: unsent items are canceled, batches in progress are canceled at the
        API (their finished requests are still charged and answered). Canceling an ended job changes nothing."""
        async with self.db.autocommit() as connection:
            await JobStore(connection).request_cancel(job_id, team_id)
        return await self.status(team_id, job_id)

    async def results(self, team_id: uuid.UUID, job_id: uuid.UUID) -> AsyncIterator[ResultRow]:
        """One row per ended item, in input order, read a page at a time (no connection is held between
        pages, so a slow reader holds nothing)."""
        await self.status(team_id, job_id)  # NotFound before anything is streamed
        after = -1
        while True:
            async with self.db.autocommit() as connection:
                page = await JobStore(connection).ended_items(job_id, after, _RESULT_PAGE)
            for row in page:
                yield _result_row(row)
            if len(page) < _RESULT_PAGE:
                return
            after = page[-1].seq


@dataclass(frozen=True)
class ResultRow:
    """An ended item: its answer (done), or why it has none."""

    item_id: str
    status: str  # done, failed, canceled
    label: str | None
    confidence: Decimal | None
    model: str | None
    escalated: bool
    escalation_reason: str | None
    error_type: str | None
    error_message: str | None
    cost_usd: Decimal
    request_id: uuid.UUID | None


_UNSENT = {"canceled": "the job was canceled before this item was sent"}


def _result_row(row: Any) -> ResultRow:
    done = row.state == "done"
    return ResultRow(
        item_id=row.item_id,
        status=row.state,
        label=row.label if done else None,
        confidence=row.confidence if done else None,
        model=row.model if done else None,
        escalated=bool(row.escalated),
        escalation_reason=row.escalation_reason,
        error_type=None if done else (row.error_type or ("invalid_request" if row.error else row.state)),
        error_message=None
        if done
        else (row.error or row.error_message or _UNSENT.get(row.state, f"the item ended {row.state}")),
        cost_usd=row.cost_usd if row.cost_usd is not None else Decimal(0),
        request_id=row.request_id,
    )


def progress(counts: ItemCounts) -> dict[str, Any]:
    """Counts per stage, as the API and the CLI show them."""
    return {
        "total": sum(counts.by_state.values()),
        "cheap": {"pending": counts.of("cheap_pending"), "in_batch": counts.of("cheap_sent")},
        "strong": {"pending": counts.of("strong_pending"), "in_batch": counts.of("strong_sent")},
        "escalated": counts.escalated,
        "done": counts.of("done"),
        "failed": counts.of("failed"),
        "canceled": counts.of("canceled"),
    }
