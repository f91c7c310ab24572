"""Wire schemas. Money is a decimal string on the wire, never a float."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

MoneyStr = Annotated[
    Decimal,
    PlainSerializer(lambda d: format(d.normalize(), "f") if d else "0", return_type=str, when_used="json"),
]
# Confidence and thresholds are probabilities, not money: JSON numbers on the wire.
Confidence = float


class ClassifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text to classify. It is treated as data, never as instructions.")
    labels: list[str] = Field(description="The allowed labels; the answer is always one of them.")
    instructions: str | None = Field(default=None, description="Optional guidance on how to choose a label.")
    threshold: Decimal | None = Field(
        default=None,
        ge=0,
        le=1,
        decimal_places=6,
        description="Confidence below which the cheap answer escalates; defaults to the server's setting.",
    )


class Tokens(BaseModel):
    input: int | None
    cache_write_5m: int | None
    cache_write_1h: int | None
    cache_read: int | None
    output: int | None


class PriceOut(BaseModel):
    id: str
    input_per_mtok: MoneyStr
    cache_write_5m_per_mtok: MoneyStr
    cache_write_1h_per_mtok: MoneyStr
    cache_read_per_mtok: MoneyStr
    output_per_mtok: MoneyStr


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


class CapOut(BaseModel):
    scope: str
    period: str
    period_start: date
    cap_usd: MoneyStr | None = Field(description="null: no cap of its own (spend is still counted)")
    spent_usd: MoneyStr
    reserved_usd: MoneyStr
    remaining_usd: MoneyStr | None
    overrun_usd: MoneyStr


class SpendOut(BaseModel):
    caps: list[CapOut]


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
    request_id: str | None


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Team name: letters, digits, '_', '.', '-'.",
    )
    daily_usd: Decimal | None = Field(default=None, ge=0, lt=10**9, description="The team's daily cap, USD.")
    monthly_usd: Decimal | None = Field(default=None, ge=0, lt=10**9, description="The team's monthly cap, USD.")


class CapsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    daily_usd: Decimal | None = Field(ge=0, lt=10**9, description="Daily cap in USD; null removes it.")
    monthly_usd: Decimal | None = Field(ge=0, lt=10**9, description="Monthly cap in USD; null removes it.")


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    daily_usd: MoneyStr | None
    monthly_usd: MoneyStr | None
    created_at: datetime


class KeyOut(BaseModel):
    id: uuid.UUID
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class IssuedKeyOut(BaseModel):
    id: uuid.UUID
    team: str
    prefix: str
    key: str = Field(description="Shown once; only its SHA-256 hash is stored.")


class AdminCapOut(CapOut):
    team: str | None


class AdminSpendOut(BaseModel):
    caps: list[AdminCapOut]
