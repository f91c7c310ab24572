"""Named task versions, offline evaluation runs and their items, and the response cache."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from service.tables.base import Base, Money, TZDateTime


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
