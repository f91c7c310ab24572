"""The escalation and cost reports, and the request list."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.common import Confidence, MoneyStr, RateStr


class ReportTaskOut(BaseModel):
    labels: list[str]
    instructions: str | None
    name: str | None = Field(default=None, description="A named task's name (null for a task given inline)")
    version: int | None = Field(default=None, description="... and its version")


class EscalationBucketOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str | None = Field(description="The bucket: an hour or day (UTC), task hash, model, label or team")
    requests: int = Field(description="Finished requests")
    answered: int
    failed: int
    refused: int = Field(description="Refused by a cost cap before any call")
    decided: int = Field(description="Requests the cascade decided on: answered or escalated")
    escalated: int
    cache_hits: int = Field(description="Answered from the response cache (in `answered`, not in `decided`)")
    escalation_rate: RateStr | None = Field(description="escalated / decided, 6 places")
    reasons: dict[str, int]
    cheap_answers: int = Field(description="Cheap-model answers with a valid label and confidence")
    cheap_mean_confidence: RateStr | None
    compared: int = Field(description="Escalated requests where both models gave a valid label")
    changed: int = Field(description="... of which the strong model gave a different label")
    changed_share: RateStr | None
    task: ReportTaskOut | None = None


class EscalationReportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    start: datetime
    end: datetime
    group_by: str
    team: str | None = Field(description="The team the report covers; null: every team (admin)")
    buckets: list[EscalationBucketOut]
    totals: EscalationBucketOut
    truncated: bool = Field(description="Only the largest 200 buckets are listed")


class ModelCostOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model: str
    attempts: int
    tokens: dict[str, int]
    cost_usd: MoneyStr


class CostBucketOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str | None
    requests: int
    cache_hits: int = Field(description="Requests answered from the response cache, at no cost (in `requests`)")
    cost_usd: MoneyStr = Field(description="What the requests' answers cost (shadow calibration calls apart)")
    shadow_cost_usd: MoneyStr = Field(
        description="What shadow calibration calls of the strong model cost (0 in model buckets, whose figures "
        "include them)"
    )
    eval_cost_usd: MoneyStr = Field(
        description="What offline evaluations (`cascade eval`) cost; they are not counted in `requests`, `cost_usd` "
        "or the savings (0 in model buckets, whose figures include them)"
    )
    cost_mean_usd: MoneyStr | None
    cost_p50_usd: MoneyStr | None = Field(description="Nearest-rank percentile of cost per request")
    cost_p95_usd: MoneyStr | None
    all_strong_cost_usd: MoneyStr | None = Field(
        description="The same cheap-stage tokens at the strong model's prices of the day (null per model)"
    )
    savings_usd: MoneyStr | None
    savings_pct: RateStr | None
    models: list[ModelCostOut]
    task: ReportTaskOut | None = None


class BreakEvenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    cheap_model: str
    strong_model: str
    rate: RateStr = Field(description="The escalation rate above which the cascade costs more than the strong model")
    basis: str = Field(description="observed: this window's cheap-stage token mix; nominal: none was recorded")
    observed_rate: RateStr | None


class CostReportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    start: datetime
    end: datetime
    group_by: str
    team: str | None
    buckets: list[CostBucketOut]
    totals: CostBucketOut
    break_even: BreakEvenOut
    warnings: list[str]
    truncated: bool


class RequestRowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    team: str
    status: str
    task_hash: str
    label: str | None
    confidence: Confidence | None
    model: str | None
    escalated: bool
    escalation_reason: str | None
    cheap_label: str | None
    cheap_confidence: Confidence | None
    cost_usd: MoneyStr
    all_strong_cost_usd: MoneyStr
    latency_ms: int | None
    error_type: str | None


class RequestPageOut(BaseModel):
    items: list[RequestRowOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")
