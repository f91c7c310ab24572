"""The money tables: cap rows, requests, and the ledger itself, `attempts`: one row per upstream attempt, written
*before* the call."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from service.tables.base import Base, Money, TZDateTime


class Cap(Base):
    """A hard spending cap for one scope (global, or a team) and one period (a UTC day or month)."""

    __tablename__ = "caps"
    __table_args__ = (
        UniqueConstraint(
            "scope",
            "team_id",
            "period",
            "period_start",
            postgresql_nulls_not_distinct=True,
            name="uq_caps_scope_team_period",
        ),
        CheckConstraint("scope IN ('global', 'team')", name="scope_known"),
        CheckConstraint("period IN ('day', 'month')", name="period_known"),
        CheckConstraint("(scope = 'team') = (team_id IS NOT NULL)", name="team_iff_team_scope"),
        CheckConstraint("spent_usd >= 0 AND reserved_usd >= 0 AND overrun_usd >= 0", name="amounts_not_negative"),
        CheckConstraint("spent_usd + reserved_usd <= cap_usd + overrun_usd", name="within_cap"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    period: Mapped[str] = mapped_column(String(8))
    period_start: Mapped[date] = mapped_column(Date)
    cap_usd: Mapped[Decimal] = mapped_column(Money)
    spent_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    reserved_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    # Cost billed past the cap by an attempt that exceeded its own reservation; zero unless the bound failed.
    overrun_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, server_default=func.now())


class Request(Base):
    """One client classification request and its outcome."""

    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_team_created", "team_id", "created_at"),
        Index("ix_requests_created", "created_at"),
        Index("ix_requests_job", "job_id", postgresql_where="job_id IS NOT NULL"),
        Index("ix_requests_task_created", "task_id", "created_at"),
        CheckConstraint("status IN ('pending', 'ok', 'failed', 'refused')", name="status_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(16))
    task_hash: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSONB)
    instructions: Mapped[str | None] = mapped_column(Text)
    threshold: Mapped[Decimal] = mapped_column(Numeric(9, 6))
    text_chars: Mapped[int] = mapped_column(Integer)
    cheap_model: Mapped[str] = mapped_column(String(64))
    strong_model: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[Decimal | None] = mapped_column(Numeric(9, 6))
    model: Mapped[str | None] = mapped_column(String(64))
    escalated: Mapped[bool] = mapped_column(Boolean, server_default="false")
    escalation_reason: Mapped[str | None] = mapped_column(String(32))
    # The cheap model's answer, kept when the strong model replaced it, so reports can say what changed.
    cheap_label: Mapped[str | None] = mapped_column(Text)
    cheap_confidence: Mapped[Decimal | None] = mapped_column(Numeric(9, 6))
    cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    # What the request's cheap-stage calls would have cost at the strong model's prices (see Attempt).
    all_strong_cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    error_type: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # The job an item of a batch job belongs to; NULL for the online API.
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The named task version it ran (NULL for a task given inline).
    task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tasks.id", ondelete="RESTRICT"))
    # Answered from the response cache (no upstream call, no cost): the request whose answer it repeats.
    cache_hit: Mapped[bool] = mapped_column(Boolean, server_default="false")
    cached_from: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # Shadow calibration: the strong model's label for a kept answer, and what asking it cost (not in cost_usd).
    shadow_label: Mapped[str | None] = mapped_column(Text)
    shadow_cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    # An offline evaluation's item (`cascade eval`): both models asked; not a cascade decision.
    eval_run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("eval_runs.id", ondelete="RESTRICT"))


class Attempt(Base):
    """The ledger: one row per upstream attempt.

    The row is inserted with state 'reserved' and the worst-case amount in the same transaction that
    reserves that amount on the cap rows, so an attempt exists in the ledger before any call is made.
    Settling fills in the outcome and the actual cost and moves the money from reserved to spent.
    """

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("request_id", "attempt_no", name="uq_attempts_request_attempt"),
        Index("ix_attempts_billing_day_team", "billing_day", "team_id"),
        # The sweeper's: a Message Batch's rows are its worker's to settle (they may stay reserved for a day).
        Index("ix_attempts_reserved", "reserved_at", postgresql_where="state = 'reserved' AND batch_id IS NULL"),
        Index("ix_attempts_request_created", "request_created_at"),
        Index("ix_attempts_team_request_created", "team_id", "request_created_at"),
        Index("ix_attempts_batch", "batch_id", postgresql_where="batch_id IS NOT NULL"),
        CheckConstraint("state IN ('reserved', 'settled')", name="state_known"),
        CheckConstraint("stage IN ('cheap', 'strong', 'shadow')", name="stage_known"),
        CheckConstraint("state = 'reserved' OR cost_usd IS NOT NULL", name="settled_has_cost"),
        CheckConstraint("cost_usd IS NULL OR cost_usd >= 0", name="cost_not_negative"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="RESTRICT"))
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    # Copied from the request so that reports read the ledger alone: an attempt counts in its request's period.
    request_created_at: Mapped[datetime] = mapped_column(TZDateTime)
    task_hash: Mapped[str] = mapped_column(String(64))
    attempt_no: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(8))
    model: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    cap_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    billing_day: Mapped[date] = mapped_column(Date)
    reserved_usd: Mapped[Decimal] = mapped_column(Money)
    input_token_bound: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    price_id: Mapped[str] = mapped_column(String(80))
    price_input: Mapped[Decimal] = mapped_column(Money)
    price_cache_write_5m: Mapped[Decimal] = mapped_column(Money)
    price_cache_write_1h: Mapped[Decimal] = mapped_column(Money)
    price_cache_read: Mapped[Decimal] = mapped_column(Money)
    price_output: Mapped[Decimal] = mapped_column(Money)
    outcome: Mapped[str | None] = mapped_column(String(24))
    http_status: Mapped[int | None] = mapped_column(Integer)
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    label: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[Decimal | None] = mapped_column(Numeric(9, 6))
    escalation_reason: Mapped[str | None] = mapped_column(String(32))
    # NULL token counts mean "unknown" (a timeout or a crash), never zero.
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_5m_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_1h_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_read_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    # Cheap stage only: the same tokens at the request's strong model's price of the day (the reservation's
    # worst case at those prices while the outcome is unknown). The all-strong counterfactual sums it.
    strong_equiv_usd: Mapped[Decimal | None] = mapped_column(Money)
    upstream_request_id: Mapped[str | None] = mapped_column(String(128))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    settled_by: Mapped[str | None] = mapped_column(String(16))
    reserved_at: Mapped[datetime] = mapped_column(TZDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # Set for a request of a Message Batch: the batch holds the reservation, and the job's worker settles it
    # (the request-path sweeper leaves these rows alone; a batch may take up to 24 hours).
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("job_batches.id", ondelete="RESTRICT"))

