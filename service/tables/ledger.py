"""ORM tables. The ledger is `attempts`: one row per upstream attempt, written *before* the call."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(20, 10)
TZDateTime = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # A team's own hard caps, on top of the global ones; NULL means no team cap for that period.
    daily_cap_usd: Mapped[Decimal | None] = mapped_column(Money)
    monthly_cap_usd: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, server_default=func.now())


class IdempotencyKey(Base):
    """A client's Idempotency-Key, scoped to its team: the first request's body hash and final response."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (CheckConstraint("state IN ('in_flight', 'done')", name="state_known"),)

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TZDateTime)
    # The claim's heartbeat while in flight: only a claim not renewed for the TTL (its holder died) is taken over.
    alive_at: Mapped[datetime] = mapped_column(TZDateTime, server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime)


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


class TaskVersion(Base):
    """One version of a team's named task: what PUT /v1/tasks/{name} stored. Versions are never changed."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("team_id", "name", "version", name="uq_tasks_team_name_version"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold_probability"),
        CheckConstraint("shadow_rate >= 0 AND shadow_rate <= 1", name="shadow_rate_probability"),
        CheckConstraint("prompt_cache IN ('5m', '1h')", name="prompt_cache_known"),
        CheckConstraint("cache_ttl_s >= 0", name="cache_ttl_not_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[str]] = mapped_column(JSONB)
    instructions: Mapped[str | None] = mapped_column(Text)
    examples: Mapped[list[dict[str, str]]] = mapped_column(JSONB)  # [{"text", "label"}]
    threshold: Mapped[Decimal] = mapped_column(Numeric(9, 6))
    cheap_model: Mapped[str] = mapped_column(String(64))
    strong_model: Mapped[str] = mapped_column(String(64))
    shadow_rate: Mapped[Decimal] = mapped_column(Numeric(9, 6))
    prompt_cache: Mapped[str] = mapped_column(String(4))
    cache_ttl_s: Mapped[int] = mapped_column(Integer)  # how long its answers stay in the response cache; 0: never
    created_at: Mapped[datetime] = mapped_column(TZDateTime)


class EvalRun(Base):
    """One `cascade eval`: a task version over a file of labelled texts."""

    __tablename__ = "eval_runs"
    __table_args__ = (CheckConstraint("status IN ('running', 'done', 'stopped')", name="status_known"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="RESTRICT"))
    source: Mapped[str] = mapped_column(Text)
    item_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # running, done, or stopped (a cap refused a call)
    status_detail: Mapped[str | None] = mapped_column(Text)
    simulated: Mapped[bool] = mapped_column(Boolean)  # answered by the bundled simulator, not the API
    created_at: Mapped[datetime] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class EvalItem(Base):
    """One labelled text of an evaluation and what each model answered (and cost); its request has the rest."""

    __tablename__ = "eval_items"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    gold: Mapped[str] = mapped_column(Text)
    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    cheap_label: Mapped[str | None] = mapped_column(Text)  # None: no usable answer
    cheap_confidence: Mapped[Decimal | None] = mapped_column(Numeric(9, 6))
    cheap_cost_usd: Mapped[Decimal] = mapped_column(Money)
    strong_label: Mapped[str | None] = mapped_column(Text)
    strong_cost_usd: Mapped[Decimal] = mapped_column(Money)


class CachedResponse(Base):
    """An answer of a named task's version, kept for the same normalized text (service.cascade.response_cache)."""

    __tablename__ = "response_cache"
    __table_args__ = (Index("ix_response_cache_expires", "expires_at"),)

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(Text)
    confidence: Mapped[Decimal] = mapped_column(Numeric(9, 6))
    model: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(TZDateTime)
    expires_at: Mapped[datetime] = mapped_column(TZDateTime)


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


def table_names() -> list[str]:
    return [t.name for t in Base.metadata.sorted_tables]


def as_dict(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}
