"""One stage of a classification: its attempts, each reserved, sent and settled, retried by tenacity."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from service.cascade.classification import AttemptRecord, Run
from service.cascade.policy import Answer, Defect, Unavailable, Verdict, escalation, read_answer
from service.cascade.prompt import MessageRequest, build_request
from service.cascade.retry import MIN_ATTEMPT_S, retrying
from service.cascade.upstream import Upstream, UpstreamFailure
from service.core.errors import DatabaseUnavailable, DeadlineExceeded, UpstreamRejected
from service.core.metrics import Metrics, status_label
from service.core.settings import Settings
from service.money.attempts import AttemptPlan, Reservation, Settlement
from service.money.budget import Budget
from service.money.catalog import ModelInfo, TokenUsage

_SETTLE_TRIES = 3


class Attempts:
    def __init__(self, budget: Budget, upstream: Upstream, settings: Settings, metrics: Metrics) -> None:
        self.budget = budget
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics

    async def stage(self, run: Run, stage: str, model: ModelInfo) -> Verdict:
        request = build_request(model, run.cmd.task, run.cmd.text)
        s = self.settings
        try:
            async for attempt in retrying(run.deadline, s.max_attempts, s.retry_base_s, s.retry_cap_s):
                with attempt:
                    return await self.attempt(run, stage, request)
        except UpstreamFailure as failure:
            if failure.retryable or failure.status == 429:
                if run.deadline.remaining() < MIN_ATTEMPT_S:
                    raise DeadlineExceeded(
                        f"no answer within the {s.request_deadline_s:g}s deadline (last: {failure.message})"
                    ) from failure
                return Unavailable(failure.message, failure.retry_after_s)
            raise UpstreamRejected(f"{model.id} rejected the request: {failure.message}") from failure
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def attempt(self, run: Run, stage: str, request: MessageRequest) -> Answer | Defect:
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
            strong_model=run.strong.id if stage == "cheap" else None,  # a shadow call has no counterfactual
            request_created_at=run.created_at,
            task_hash=run.cmd.task.hash,
            cache_ttl=request.cache_ttl,
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
        if stage == "shadow":  # never ends the request: it records the strong model's label beside the answer
            shadow = {"shadow_label": verdict.label} if isinstance(verdict, Answer) else None
            await self._settle(run, plan, reservation, result, shadow)
            return verdict
        # An answer that ends the request is recorded in the same transaction as its charge, and so is the
        # cheap model's answer, which the reports compare with the strong model's.
        ends_request = answered and (stage == "strong" or reason is None)
        finish = self._finish_row(run, verdict, request.model) if ends_request else {}
        if stage == "cheap" and isinstance(verdict, Answer):
            finish |= {"cheap_label": verdict.label, "cheap_confidence": verdict.confidence}
        await self._settle(run, plan, reservation, result, finish or None)
        return verdict

    async def _reserve(self, run: Run, plan: AttemptPlan) -> Reservation:
        """Reserve, shielded: a statement cancelled in flight may still commit (it runs in autocommit), so a
        cancellation (a shutdown past its grace period) waits for it and releases what it reserved, at no cost,
        since no call was made. Without that the sweeper would charge the worst case for a call never made."""
        task = asyncio.ensure_future(self.budget.reserve(plan, None if run.request_written else run.request_row()))
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

    def _finish_row(self, run: Run, verdict: Answer | Defect, model: str) -> dict[str, Any]:
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
        run: Run,
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
