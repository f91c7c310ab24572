"""Bulk jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.classify import BatchItemIn
from service.api.schemas.common import Confidence, MoneyStr


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItemIn] = Field(description="The texts (or upload JSONL to POST /v1/jobs/jsonl).")
    labels: list[str] = Field(description="The allowed labels, shared by every item.")
    instructions: str | None = Field(default=None, description="Optional guidance, shared by every item.")
    threshold: Decimal | None = Field(
        default=None, ge=0, le=1, decimal_places=6, description="Escalation threshold, shared by every item."
    )


class StageCountsOut(BaseModel):
    pending: int = Field(description="Items waiting to be sent at this stage.")
    in_batch: int = Field(description="Items in a Message Batch in progress at this stage.")


class JobCountsOut(BaseModel):
    total: int
    cheap: StageCountsOut
    strong: StageCountsOut
    escalated: int = Field(description="Items the cheap model's answers sent on to the strong model.")
    done: int
    failed: int
    canceled: int


class JobSummaryOut(BaseModel):
    id: uuid.UUID
    status: str = Field(description="queued, running, paused_cost_cap, paused_upstream, canceling, canceled or done.")
    status_detail: str | None = Field(description="Why the job is paused, when it is.")
    item_count: int
    created_at: datetime
    finished_at: datetime | None


class JobOut(BaseModel):
    id: uuid.UUID
    status: str = Field(description="queued, running, paused_cost_cap, paused_upstream, canceling, canceled or done.")
    status_detail: str | None = Field(description="Why the job is paused, when it is.")
    item_count: int
    counts: JobCountsOut
    cost_usd: MoneyStr = Field(description="What the job has cost so far, at the batch rates.")
    labels: list[str]
    instructions: str | None
    threshold: Confidence
    cheap_model: str
    strong_model: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobListOut(BaseModel):
    jobs: list[JobSummaryOut] = Field(description="The team's latest jobs, newest first.")
