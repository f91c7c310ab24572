"""Named tasks and their calibration."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.common import Confidence, MoneyStr, RateStr


class ExampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="A text, as it could be sent to classify.")
    label: str = Field(description="The label it should get (one of the task's labels).")


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[str] = Field(description="The allowed labels.")
    instructions: str | None = Field(default=None, description="Optional guidance on how to choose a label.")
    examples: list[ExampleIn] = Field(default_factory=list, description="Optional few-shot examples.")
    threshold: Decimal | None = Field(
        default=None, ge=0, le=1, decimal_places=6, description="Escalation threshold; the server's by default."
    )
    cheap_model: str | None = Field(default=None, max_length=64, description="Asked first; the server's by default.")
    strong_model: str | None = Field(default=None, max_length=64, description="Escalation target; the server's.")
    shadow_rate: Decimal = Field(
        default=Decimal(0),
        ge=0,
        le=1,
        decimal_places=6,
        description="Share of kept (not escalated) answers also asked of the strong model, for calibration.",
    )
    prompt_cache: Literal["5m", "1h"] = Field(
        default="5m", description="How long the API keeps the prompt's prefix cached, when it is long enough."
    )
    cache_ttl_s: int | None = Field(
        default=None,
        ge=0,
        le=30 * 86_400,
        description="How long an answer stays in the exact-match response cache (0: never cached); the "
        "server's CASCADE_CACHE_TTL_S by default.",
    )


class TaskVersionSummary(BaseModel):
    version: int
    created_at: datetime


class TaskOut(BaseModel):
    id: uuid.UUID = Field(description="This version's id.")
    name: str
    version: int
    labels: list[str]
    instructions: str | None
    examples: list[ExampleIn]
    threshold: Confidence
    cheap_model: str
    strong_model: str
    shadow_rate: Confidence
    prompt_cache: str
    cache_ttl_s: int
    created_at: datetime
    versions: list[TaskVersionSummary] = Field(
        default_factory=list, description="Every version of the task, the latest first (on GET of a task)."
    )


class TaskSummaryOut(BaseModel):
    name: str
    version: int = Field(description="The latest version.")
    labels: list[str]
    threshold: Confidence
    shadow_rate: Confidence
    created_at: datetime = Field(description="When the latest version was stored.")


class TaskListOut(BaseModel):
    tasks: list[TaskSummaryOut] = Field(description="The team's tasks at their latest versions, by name.")


class CalibrationBinOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    lower: RateStr
    upper: RateStr
    requests: int = Field(description="Decided requests whose cheap confidence is in the bin")
    escalated_pairs: int = Field(description="... escalated, with the strong model's answer")
    shadow_pairs: int = Field(description="... kept, and asked of the strong model too (shadow calibration)")
    mean_confidence: RateStr | None = Field(description="The pairs' mean cheap confidence")
    agreement: RateStr | None = Field(
        description="Estimated share of the bin's cheap answers the strong model agrees with"
    )


class CalibrationPointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    threshold: RateStr
    escalation_rate: RateStr
    agreement: RateStr | None = Field(description="Projected share of final answers the strong model agrees with")
    cost_per_1000_usd: MoneyStr


class AccuracyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    pairs: int = Field(description="Shadow pairs: kept answers also asked of the strong model")
    agreement: RateStr | None
    low: RateStr | None = Field(description="Wilson 95% interval")
    high: RateStr | None


class CalibrationOut(BaseModel):
    name: str
    version: int
    threshold: Confidence = Field(description="The version's threshold")
    shadow_rate: Confidence
    start: datetime
    end: datetime
    target: RateStr
    requests: int = Field(description="Decided requests of the version in the window (cache hits apart)")
    pairs: int
    bins: list[CalibrationBinOut] = Field(description="The reliability diagram")
    kept_accuracy: AccuracyOut = Field(description="Estimated accuracy (agreement) of answers that were not escalated")
    current: CalibrationPointOut | None = Field(description="At the version's threshold")
    recommended: CalibrationPointOut | None = Field(description="The cheapest threshold that reaches the target")
    sweep: list[CalibrationPointOut] = Field(description="Every threshold from 0.00 to 1.00")
    notes: list[str]
