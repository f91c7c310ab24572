"""Classification on the wire: one text, a batch of texts, the answer, and a request's audit."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.common import Confidence, ErrorBody, MoneyStr, PriceOut, Tokens


class ClassifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text to classify. It is treated as data, never as instructions.")
    labels: list[str] | None = Field(
        default=None, description="The allowed labels; the answer is always one of them. Or give `task`."
    )
    instructions: str | None = Field(default=None, description="Optional guidance on how to choose a label.")
    task: str | None = Field(
        default=None,
        max_length=80,
        description="A named task of the team (`name`, or `name@version`) in place of `labels` and `instructions`.",
    )
    threshold: Decimal | None = Field(
        default=None,
        ge=0,
        le=1,
        decimal_places=6,
        description="Confidence below which the cheap answer escalates; defaults to the task's, else the server's "
        "setting, and may raise it but not lower it.",
    )
    cache: bool = Field(
        default=True, description="With a named task: answer from the response cache when the same text was seen."
    )


class BatchItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=200, description="Your id for the item, echoed in its result.")
    text: str = Field(description="The text to classify.")


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItemIn] = Field(description="The texts, each classified on its own (at most the server's limit).")
    labels: list[str] | None = Field(default=None, description="The allowed labels, shared by every item; or `task`.")
    instructions: str | None = Field(default=None, description="Optional guidance, shared by every item.")
    task: str | None = Field(
        default=None, max_length=80, description="A named task (`name` or `name@version`), shared by every item."
    )
    threshold: Decimal | None = Field(
        default=None, ge=0, le=1, decimal_places=6, description="Escalation threshold, shared by every item."
    )


class AttemptOut(BaseModel):
    attempt: int
    stage: str
    model: str
    outcome: str
    label: str | None
    confidence: Confidence | None
    stop_reason: str | None
    escalation_reason: str | None
    tokens: Tokens
    cost_usd: MoneyStr
    latency_ms: int | None
    upstream_request_id: str | None


class AuditAttemptOut(AttemptOut):
    price: PriceOut
    reserved_usd: MoneyStr
    reserved_at: datetime
    settled_at: datetime | None
    settled_by: str | None
    error_message: str | None


class ClassifyOut(BaseModel):
    id: uuid.UUID
    label: str
    confidence: Confidence
    model: str
    escalated: bool
    escalation_reason: str | None
    attempts: list[AttemptOut]
    cost_usd: MoneyStr
    latency_ms: int
    cache_hit: bool = Field(
        default=False, description="Answered from the response cache: no upstream call, no cost (named tasks)."
    )


class RequestAuditOut(BaseModel):
    id: uuid.UUID
    status: str
    label: str | None
    confidence: Confidence | None
    model: str | None
    escalated: bool
    escalation_reason: str | None
    attempts: list[AuditAttemptOut]
    cost_usd: MoneyStr
    latency_ms: int | None
    labels: list[str]
    instructions: str | None
    threshold: Confidence
    task_hash: str
    cheap_model: str
    strong_model: str
    error_type: str | None
    error_message: str | None
    created_at: datetime
    finished_at: datetime | None


class BatchItemOut(BaseModel):
    index: int = Field(description="The item's position in the request.")
    id: str | None = Field(description="Your id for the item, if you gave one.")
    request_id: uuid.UUID = Field(description="The item's classification id (GET /v1/requests/{id}).")
    status: int = Field(description="The HTTP status this item would have had as a POST /v1/classify.")
    result: ClassifyOut | None
    error: ErrorBody | None


class BatchOut(BaseModel):
    id: uuid.UUID = Field(description="The batch call's id (x-request-id).")
    items: list[BatchItemOut]
    ok: int = Field(description="Items answered.")
    failed: int = Field(description="Items with an error.")
    cost_usd: MoneyStr = Field(description="What the batch cost: the sum over its items.")


