"""What a Message Batch's result line comes to: the ledger row's settled columns, the request's, and the item's
next state, by the same policy as the online cascade. Pure: no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from service.cascade.policy import Answer, Defect, Unavailable, Verdict, escalation, read_answer
from service.cascade.prompt import Task
from service.cascade.upstream import read_message
from service.jobs.store import PENDING_STATE, BatchAttempt
from service.money.batch_charges import ResultLine
from service.money.catalog import Catalog, ModelInfo, PriceRow, TokenUsage
from service.tables import Job, JobBatch

# A batch-level error that the next attempt may not see again; other errored requests were refused for good.
_TRANSIENT_ERRORS = {"rate_limit_error", "api_error", "overloaded_error", "timeout_error"}


@dataclass(frozen=True)
class JobTask:
    job: Job
    task: Task
    threshold: Decimal
    cheap: ModelInfo
    strong: ModelInfo

    def model(self, stage: str) -> ModelInfo:
        return self.cheap if stage == "cheap" else self.strong


def custom_id_prefix(job_id: uuid.UUID, batch_id: int) -> str:
    """The custom ids of a batch's requests start with its job and its row, so that a batch found at the API
    can be told apart from any other's; the item's seq follows."""
    return f"{job_id.hex[:12]}-{batch_id}-"


def seq_of(custom: object, prefix: str) -> int | None:
    if not isinstance(custom, str) or not custom.startswith(prefix):
        return None
    try:
        return int(custom[len(prefix) :])
    except ValueError:
        return None


def settled_columns(
    outcome: str,
    usage: TokenUsage | None,
    price: PriceRow | None,
    *,
    http_status: int | None = None,
    stop_reason: str | None = None,
    upstream_id: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A ledger row's settled columns. With no price row the row keeps the prices it was reserved at."""
    values: dict[str, Any] = {
        "outcome": outcome,
        "http_status": http_status,
        "stop_reason": stop_reason,
        "upstream_request_id": upstream_id,
        "error_message": error[:2000] if error else None,
        "cost_usd": Decimal(0),
    }
    if usage is not None:
        values |= {
            "input_tokens": usage.input,
            "cache_write_5m_tokens": usage.cache_write_5m,
            "cache_write_1h_tokens": usage.cache_write_1h,
            "cache_read_tokens": usage.cache_read,
            "output_tokens": usage.output,
        }
    if price is not None and usage is not None:
        values |= price.ledger_columns() | {"cost_usd": price.cost(usage)}
    return values


def answered(answer: Answer, model: str) -> dict[str, Any]:
    return {
        "status": "ok",
        "label": answer.label,
        "confidence": answer.confidence,
        "model": model,
        "error_type": None,
        "error_message": None,
    }


def error_of(error: object) -> tuple[str | None, str]:
    """An errored result's error type and a readable detail."""
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        assert isinstance(inner, dict)
        kind = inner.get("type")
        return (kind if isinstance(kind, str) else None), f"{kind}: {inner.get('message')}"
    return None, "the request errored"


class ResultReader:
    def __init__(self, catalog: Catalog, item_attempts: int) -> None:
        self.catalog = catalog
        self.item_attempts = item_attempts  # CASCADE_JOB_ITEM_ATTEMPTS: sends of one item at one stage

    def read(self, run: JobTask, batch: JobBatch, attempt: BatchAttempt, line: dict[str, Any]) -> ResultLine:
        result = line.get("result") if isinstance(line.get("result"), dict) else {}
        assert isinstance(result, dict)
        kind = result.get("type")
        upstream_id = f"{batch.anthropic_id}/{line.get('custom_id')}"[:128]
        if kind == "succeeded":
            try:
                text, stop_reason, usage = read_message(result.get("message"))
            except ValueError as exc:
                return self.unknown(run, batch, attempt, f"an unreadable result: {exc}", upstream_id)
            price = self.catalog.price(batch.model, batch.created_at, usage.prompt_tokens).for_batch()
            verdict: Verdict = read_answer(text, stop_reason, run.task.labels)
            ledger = settled_columns(
                str(verdict.reason) if isinstance(verdict, Defect) else "answered",
                usage,
                price,
                http_status=200,
                stop_reason=stop_reason,
                upstream_id=upstream_id,
                error=verdict.detail if isinstance(verdict, Defect) else None,
            )
            strong_equiv = None
            if batch.stage == "cheap":
                strong_row = self.catalog.price(run.strong.id, batch.created_at, usage.prompt_tokens).for_batch()
                strong_equiv = strong_row.cost(usage)
            return self._outcome(run, batch, attempt, verdict, ledger, strong_equiv)
        if kind == "canceled":
            ledger = settled_columns(
                "canceled", TokenUsage(), None, upstream_id=upstream_id, error="the batch was canceled"
            )
            request = {"status": "failed", "error_type": "canceled", "error_message": "the job was canceled"}
            return ResultLine(attempt.attempt_id, ledger, Decimal(0), True, request, "canceled")
        if kind not in ("errored", "expired"):
            return self.unknown(run, batch, attempt, f"a result of unknown type {kind!r}", upstream_id)
        # No message was created, and neither is billed.
        error_type, detail = error_of(result.get("error")) if kind == "errored" else (None, "")
        if kind == "expired":
            detail = "the request expired before it was processed"
        ledger = settled_columns(kind, TokenUsage(), None, upstream_id=upstream_id, error=detail)
        strong_equiv = Decimal(0) if batch.stage == "cheap" else None
        if kind == "errored" and error_type not in _TRANSIENT_ERRORS:
            return self._rejected(run, batch, attempt, ledger, strong_equiv, detail)
        if attempt.sends < self.item_attempts and run.job.status != "canceling":
            # Sent again, at the same stage, in a later batch: an expiry or an overload says nothing of the text.
            return ResultLine(attempt.attempt_id, ledger, strong_equiv, False, {}, PENDING_STATE[batch.stage])
        return self._outcome(run, batch, attempt, Unavailable(detail), ledger, strong_equiv)

    def _rejected(
        self,
        run: JobTask,
        batch: JobBatch,
        attempt: BatchAttempt,
        ledger: dict[str, Any],
        strong_equiv: Decimal | None,
        detail: str,
    ) -> ResultLine:
        """The API refused the request itself: the item fails, at either stage, as POST /v1/classify would
        (upstream_rejected); the strong model would be refused the same text too."""
        message = f"{run.model(batch.stage).id} rejected the request: {detail}"[:2000]
        request = {"status": "failed", "error_type": "upstream_rejected", "error_message": message}
        return ResultLine(attempt.attempt_id, ledger, strong_equiv, True, request, "failed", message)

    def unknown(
        self,
        run: JobTask,
        batch: JobBatch,
        attempt: BatchAttempt,
        detail: str = "the batch's results have no line for this request",
        upstream_id: str | None = None,
    ) -> ResultLine:
        """No usable result: it may have been billed, so it is charged its reservation (tokens unknown)."""
        ledger = settled_columns("unknown", None, None, upstream_id=upstream_id, error=detail)
        ledger["cost_usd"] = attempt.reserved_usd
        return self._outcome(run, batch, attempt, Unavailable(detail), ledger, None)

    def _outcome(
        self,
        run: JobTask,
        batch: JobBatch,
        attempt: BatchAttempt,
        verdict: Verdict,
        ledger: dict[str, Any],
        strong_equiv: Decimal | None,
    ) -> ResultLine:
        """What the verdict does to the request and the item: the same policy as the online cascade."""
        answer = verdict if isinstance(verdict, Answer) else None
        if answer is not None:
            ledger |= {"label": answer.label, "confidence": answer.confidence}
        model = run.model(batch.stage).id
        if batch.stage == "cheap":
            reason = escalation(verdict, run.threshold)
            ledger["escalation_reason"] = reason
            request: dict[str, Any] = {}
            if answer is not None:
                request |= {"cheap_label": answer.label, "cheap_confidence": answer.confidence}
            if reason is None:
                assert answer is not None
                request |= answered(answer, model)
                return ResultLine(attempt.attempt_id, ledger, strong_equiv, True, request, "done")
            request |= {"escalated": True, "escalation_reason": str(reason)}
            if run.job.status == "canceling":
                request |= {"status": "failed", "error_type": "canceled", "error_message": "the job was canceled"}
                return ResultLine(attempt.attempt_id, ledger, strong_equiv, True, request, "canceled")
            return ResultLine(attempt.attempt_id, ledger, strong_equiv, False, request, "strong_pending")
        if answer is not None:
            return ResultLine(attempt.attempt_id, ledger, None, True, answered(answer, model), "done")
        if isinstance(verdict, Defect):
            error_type, message = "upstream_rejected", f"the strong model gave no usable answer: {verdict.detail}"
        else:
            assert isinstance(verdict, Unavailable)
            error_type, message = "upstream_unavailable", f"the strong model is unavailable: {verdict.detail}"
        request = {"status": "failed", "error_type": error_type, "error_message": message[:2000]}
        return ResultLine(attempt.attempt_id, ledger, None, True, request, "failed", message[:2000])
