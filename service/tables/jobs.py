"""Bulk jobs: a job, its items, and the Message Batches that carry them."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from service.tables.base import Base, Money, TZDateTime

JOB_STATES = ("queued", "running", "paused_cost_cap", "paused_upstream", "canceling", "canceled", "done")


ITEM_STATES = ("cheap_pending", "cheap_sent", "strong_pending", "strong_sent", "done", "failed", "canceled")


BATCH_STATES = ("submitting", "submitted", "ingested", "released")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Job(Base):
    """A bulk classification job, run through the Message Batches API by `cascade worker`."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_team_created", "team_id", "created_at"),
        Index("ix_jobs_due", "next_check_at", postgresql_where="status NOT IN ('done', 'canceled')"),
        CheckConstraint(_one_of("status", JOB_STATES), name="status_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(16))
    status_detail: Mapped[str | None] = mapped_column(Text)
    task_hash: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSONB)
    instructions: Mapped[str | None] = mapped_column(Text)
    threshold: Mapped[Decimal] = mapped_column(Numeric(9, 6))
    cheap_model: Mapped[str] = mapped_column(String(64))
    strong_model: Mapped[str] = mapped_column(String(64))
    item_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(TZDateTime)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # The worker loop: due when next_check_at has passed and no live lease is held.
    next_check_at: Mapped[datetime] = mapped_column(TZDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(TZDateTime)


class JobBatch(Base):
    """One Message Batch of a job: its reservation is held from before it is created until it is ingested.

    'submitting' is written (with the reservation) before the API is called; the batch id is stored, as
    'submitted', before anything else happens to the job. A 'submitting' row whose holder died is in doubt until
    the worker finds the batch at the API (adopts it) or proves it was never created (releases it).
    """

    __tablename__ = "job_batches"
    __table_args__ = (
        Index("ix_job_batches_job", "job_id"),
        CheckConstraint(_one_of("state", BATCH_STATES), name="state_known"),
        CheckConstraint("stage IN ('cheap', 'strong')", name="stage_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    stage: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    anthropic_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    model: Mapped[str] = mapped_column(String(64))
    item_count: Mapped[int] = mapped_column(Integer)
    cap_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    reserved_usd: Mapped[Decimal] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(TZDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    ingested_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class JobItem(Base):
    """One input item of a job; its answer and cost live in its request row (`request_id`)."""

    __tablename__ = "job_items"
    __table_args__ = (
        Index("ix_job_items_pending", "job_id", "state", "seq"),
        CheckConstraint(_one_of("state", ITEM_STATES), name="state_known"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    batch_id: Mapped[int | None] = mapped_column(BigInteger)  # the Message Batch it is in now, if any
    error: Mapped[str | None] = mapped_column(Text)  # why it failed before any request was made
