"""Wire schemas. Money is a decimal string on the wire, never a float."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer


def money_str(amount: Decimal) -> str:
    """Money on the wire: a plain decimal string, without exponent or trailing zeros."""
    return format(amount.normalize(), "f") if amount else "0"


MoneyStr = Annotated[Decimal, PlainSerializer(money_str, return_type=str, when_used="json")]
# Confidence and thresholds are probabilities, not money: JSON numbers on the wire.
Confidence = float


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
    model_config = ConfigDict(extra="allow")  # `field`, `cap`, `remaining_usd` where they apply

    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
    request_id: str | None


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


# Report ratios are exact decimal strings (quantized, documented), like money.
RateStr = MoneyStr


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
