"""The cascade: cheap model first, escalate by policy, every attempt reserved, called, then settled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.budget import AttemptPlan, Budget, Reservation, Settlement
from service.caps import TeamCaps
from service.catalog import Catalog, ModelInfo, TokenUsage
from service.errors import (
    CascadeError,
    CostCapExceeded,
    DatabaseUnavailable,
    DeadlineExceeded,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.logs import annotate
from service.metrics import Metrics, status_label
from service.policy import Answer, Defect, EscalationReason, Unavailable, Verdict, escalation, read_answer
from service.prompt import MessageRequest, Task, build_request
from service.retry import MIN_ATTEMPT_S, Deadline, retrying
from service.settings import Settings
from service.upstream import Upstream, UpstreamFailure

logger = logging.getLogger(__name__)

_SETTLE_TRIES = 3


@dataclass(frozen=True)
class ClassifyCommand:
    request_id: uuid.UUID
    team_id: uuid.UUID
    text: str
    task: Task
    threshold: Decimal
    team_caps: TeamCaps = field(default_factory=TeamCaps)


@dataclass(frozen=True)
class AttemptRecord:
    attempt_no: int
    stage: str
    model: str
    outcome: str
    cost_usd: Decimal
    usage: TokenUsage | None
    latency_ms: int | None
    upstream_request_id: str | None
    stop_reason: str | None = None
    label: str | None = None
    confidence: Decimal | None = None
    escalation_reason: str | None = None
    http_status: int | None = None


@dataclass(frozen=True)
class Classification:
    id: uuid.UUID
    label: str
    confidence: Decimal
    model: str
    escalated: bool
    escalation_reason: str | None
    attempts: list[AttemptRecord]
    cost_usd: Decimal
    latency_ms: int


@dataclass
class _Run:
    cmd: ClassifyCommand
    created_at: datetime
    deadline: Deadline
    started: float = field(default_factory=time.monotonic)
    attempts: list[AttemptRecord] = field(default_factory=list)
    request_written: bool = False
    escalation_reason: EscalationReason | None = None
    finished_ms: int | None = None

    @property
    def cost(self) -> Decimal:
        return sum((a.cost_usd for a in self.attempts), Decimal(0))

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class Cascade:
    def __init__(
        self, budget: Budget, upstream: Upstream, catalog: Catalog, settings: Settings, metrics: Metrics
    ) -> None:
        self.budget = budget
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.cheap = catalog.model(settings.cheap_model)
        self.strong = catalog.model(settings.strong_model)

    async def classify(self, cmd: ClassifyCommand) -> Classification:
        run = _Run(cmd, created_at=self.budget.clock(), deadline=Deadline.after(self.settings.request_deadline_s))
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
            self._idle.clear()
        self.metrics.in_flight.inc()
        outcome, model = "failed", None
        try:
            result = await self._classify(run)
            outcome, model = "ok", result.model
            return result
        except CascadeError as exc:
            outcome = "refused" if isinstance(exc, CostCapExceeded) and not run.attempts else "failed"
            await self._record_failure(run, exc)
            raise
        except Exception as exc:
            logger.exception("request %s failed unexpectedly", cmd.request_id)
            await self._record_failure(run, CascadeError(f"internal error: {type(exc).__name__}"))
            raise
        finally:
            self.metrics.in_flight.dec()
            self.metrics.request(outcome, model, run.escalation_reason, time.monotonic() - run.started)
            annotate(
                team_id=str(cmd.team_id),
                task_hash=cmd.task.hash,
                outcome=outcome,
                model=model,
                escalated=run.escalation_reason is not None,
                escalation_reason=run.escalation_reason,
                upstream_request_ids=[a.upstream_request_id for a in run.attempts if a.upstream_request_id],
                attempts=len(run.attempts),
                cost_usd=str(run.cost),
            )
            if task is not None:
                self._in_flight.discard(task)
                if not self._in_flight:
                    self._idle.set()

    async def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for classifications in progress (settles included); returns how many remain."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return len(self._in_flight)

    async def _classify(self, run: _Run) -> Classification:
        cheap = await self._stage(run, "cheap", self.cheap)
        run.escalation_reason = escalation(cheap, run.cmd.threshold)
        answer, model = cheap, self.cheap
        if run.escalation_reason is not None:
            strong = await self._stage(run, "strong", self.strong)
            if isinstance(strong, Unavailable):
                raise UpstreamUnavailable(
                    f"the strong model is unavailable: {strong.detail}", retry_after_s=strong.retry_after_s
                )
            if isinstance(strong, Defect):
                raise UpstreamRejected(f"the strong model gave no usable answer: {strong.detail}")
            answer, model = strong, self.strong
        assert isinstance(answer, Answer)
        return Classification(
            id=run.cmd.request_id,
            label=answer.label,
            confidence=answer.confidence,
            model=model.id,
            escalated=run.escalation_reason is not None,
            escalation_reason=run.escalation_reason,
            attempts=run.attempts,
            cost_usd=run.cost,
            latency_ms=run.finished_ms or run.elapsed_ms(),
        )

    async def _stage(self, run: _Run, stage: str, model: ModelInfo) -> Verdict:
        request = build_request(model, run.cmd.task, run.cmd.text)
        s = self.settings
        try:
            async for attempt in retrying(run.deadline, s.max_attempts, s.retry_base_s, s.retry_cap_s):
                with attempt:
                    return await self._attempt(run, stage, request)
        except UpstreamFailure as failure:
            if failure.retryable or failure.status == 429:
                if run.deadline.remaining() < MIN_ATTEMPT_S:
                    raise DeadlineExceeded(
                        f"no answer within the {s.request_deadline_s:g}s deadline (last: {failure.message})"
                    ) from failure
                return Unavailable(failure.message, failure.retry_after_s)
            raise UpstreamRejected(f"{model.id} rejected the request: {failure.message}") from failure
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, run: _Run, stage: str, request: MessageRequest) -> Answer | Defect:
        remaining = run.deadline.remaining()
        if remaining < MIN_ATTEMPT_S:
            raise DeadlineExceeded(f"the {self.settings.request_deadline_s:g}s deadline passed")
        plan = AttemptPlan(
            request_id=run.cmd.request_id,
            team_id=run.cmd.team_id,
            attempt_no=len(run.attempts) + 1,
            stage=stage,
            model=request.model,
            input_token_bound=request.input_token_bound,
            max_tokens=request.max_tokens,
            team_caps=run.cmd.team_caps,
            strong_model=self.strong.id if stage == "cheap" else None,
            request_created_at=run.created_at,
            task_hash=run.cmd.task.hash,
        )
        reservation = await self._reserve(run, plan)
        try:
            reply = await self.upstream.create(request, min(self.settings.attempt_timeout_s, remaining))
        except UpstreamFailure as failure:
            result = Settlement(
                outcome=failure.outcome,
                usage=None if failure.billed_unknown else TokenUsage(),
                http_status=failure.status,
                upstream_request_id=failure.request_id,
                latency_ms=failure.latency_ms,
                error_message=failure.message,
            )
            await self._settle(run, plan, reservation, result)
            raise
        except BaseException:
            # Cancelled (or broken) mid-call: the call may have been billed, so charge the reservation now,
            # and let the original exception through whatever the settle does.
            unknown = Settlement("cancelled", None, error_message="the request was cancelled during the call")
            with contextlib.suppress(Exception):
                await self._settle(run, plan, reservation, unknown)
            raise
        verdict = read_answer(reply.text, reply.stop_reason, run.cmd.task.labels)
        reason = escalation(verdict, run.cmd.threshold) if stage == "cheap" else None
        answered = isinstance(verdict, Answer)
        result = Settlement(
            outcome=str(verdict.reason) if isinstance(verdict, Defect) else "answered",
            usage=reply.usage,
            http_status=200,
            stop_reason=reply.stop_reason,
            label=verdict.label if isinstance(verdict, Answer) else None,
            confidence=verdict.confidence if isinstance(verdict, Answer) else None,
            escalation_reason=reason,
            upstream_request_id=reply.request_id,
            latency_ms=reply.latency_ms,
            error_message=verdict.detail if isinstance(verdict, Defect) else None,
        )
        # An answer that ends the request is recorded in the same transaction as its charge, and so is the
        # cheap model's answer, which the reports compare with the strong model's.
        ends_request = answered and (stage == "strong" or reason is None)
        finish = self._finish_row(run, verdict, request.model) if ends_request else {}
        if stage == "cheap" and isinstance(verdict, Answer):
            finish |= {"cheap_label": verdict.label, "cheap_confidence": verdict.confidence}
        await self._settle(run, plan, reservation, result, finish or None)
        return verdict

    async def _reserve(self, run: _Run, plan: AttemptPlan) -> Reservation:
        """Reserve, shielded: a statement cancelled in flight may still commit (it runs in autocommit), so a
        cancellation (a shutdown past its grace period) waits for it and releases what it reserved, at no cost,
        since no call was made. Without that the sweeper would charge the worst case for a call never made."""
        task = asyncio.ensure_future(self.budget.reserve(plan, None if run.request_written else self._request_row(run)))
        try:
            reservation = await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                reservation = await task
                run.request_written = True
                not_sent = Settlement("cancelled", TokenUsage(), error_message="cancelled before the call")
                await self._settle(run, plan, reservation, not_sent)
            raise
        run.request_written = True
        return reservation

    def _finish_row(self, run: _Run, verdict: Answer | Defect, model: str) -> dict[str, Any]:
        assert isinstance(verdict, Answer)
        run.finished_ms = run.elapsed_ms()
        return {
            "status": "ok",
            "label": verdict.label,
            "confidence": verdict.confidence,
            "model": model,
            "escalated": run.escalation_reason is not None,
            "escalation_reason": run.escalation_reason,
            "latency_ms": run.finished_ms,
            "finished_at": self.budget.clock(),
        }

    async def _settle(
        self,
        run: _Run,
        plan: AttemptPlan,
        reservation: Reservation,
        result: Settlement,
        finish: dict[str, Any] | None = None,
    ) -> None:
        """Settle, shielded from cancellation and retried briefly if the database blinks.

        Past that the reservation stays held and the sweeper charges its worst case.
        """
        charged = reservation.amount
        for attempt in range(_SETTLE_TRIES):
            try:
                charged = await asyncio.shield(self.budget.settle(reservation, result, finish))
                break
            except DatabaseUnavailable:
                if attempt == _SETTLE_TRIES - 1:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        previous = next((a for a in reversed(run.attempts) if a.stage == plan.stage), None)
        self.metrics.attempt(
            plan.model,
            plan.stage,
            status_label(result.http_status, result.outcome),
            None if previous is None else status_label(previous.http_status, previous.outcome),
            result.usage,
            charged,
            result.latency_ms,
        )
        run.attempts.append(
            AttemptRecord(
                attempt_no=plan.attempt_no,
                stage=plan.stage,
                model=plan.model,
                outcome=result.outcome,
                cost_usd=charged,
                usage=result.usage,
                latency_ms=result.latency_ms,
                upstream_request_id=result.upstream_request_id,
                stop_reason=result.stop_reason,
                label=result.label,
                confidence=result.confidence,
                escalation_reason=result.escalation_reason,
                http_status=result.http_status,
            )
        )

    def _request_row(self, run: _Run) -> dict[str, Any]:
        cmd = run.cmd
        return {
            "id": cmd.request_id,
            "team_id": cmd.team_id,
            "status": "pending",
            "task_hash": cmd.task.hash,
            "labels": list(cmd.task.labels),
            "instructions": cmd.task.instructions,
            "threshold": cmd.threshold,
            "text_chars": len(cmd.text),
            "cheap_model": self.cheap.id,
            "strong_model": self.strong.id,
            "created_at": run.created_at,
        }

    async def _record_failure(self, run: _Run, exc: CascadeError) -> None:
        if isinstance(exc, DatabaseUnavailable):
            return  # nothing can be written; held reservations are left to the sweeper
        values = {
            "status": "refused" if isinstance(exc, CostCapExceeded) and not run.attempts else "failed",
            "error_type": exc.type,
            "error_message": exc.message[:2000],
            # A request that escalated and then failed still counts as escalated in the reports.
            "escalated": run.escalation_reason is not None,
            "escalation_reason": run.escalation_reason,
            "latency_ms": run.elapsed_ms(),
            "finished_at": self.budget.clock(),
        }
        try:
            await self.budget.record_request(
                run.cmd.request_id, values, None if run.request_written else self._request_row(run)
            )
        except Exception:
            logger.warning("could not record the failure of request %s", run.cmd.request_id, exc_info=True)
