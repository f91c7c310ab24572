"""The cascade: cheap model first, escalate by policy, every attempt reserved, called, then settled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.cascade.policy import Answer, Defect, EscalationReason, Unavailable, Verdict, escalation, read_answer
from service.cascade.prompt import MessageRequest, Task, build_request
from service.cascade.response_cache import ResponseCache
from service.cascade.retry import MIN_ATTEMPT_S, Deadline, retrying
from service.cascade.upstream import Upstream, UpstreamFailure
from service.core.errors import (
    CascadeError,
    CostCapExceeded,
    DatabaseUnavailable,
    DeadlineExceeded,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.core.logs import annotate
from service.core.metrics import Metrics, status_label
from service.core.settings import Settings
from service.money.budget import AttemptPlan, Budget, Reservation, Settlement
from service.money.caps import TeamCaps
from service.money.catalog import Catalog, ModelInfo, TokenUsage

logger = logging.getLogger(__name__)

_SETTLE_TRIES = 3
STAGES = ("cheap", "strong")


@dataclass(frozen=True)
class ClassifyCommand:
    request_id: uuid.UUID
    team_id: uuid.UUID
    text: str
    task: Task
    threshold: Decimal
    team_caps: TeamCaps = field(default_factory=TeamCaps)
    cheap_model: str | None = None  # None: the server's (a named task names its own)
    strong_model: str | None = None
    shadow_rate: Decimal = Decimal(0)  # the share of kept answers also asked of the strong model (calibration)
    cache_key: str | None = None  # a named task's response-cache entry for this text (None: not cached)
    cache_ttl_s: int = 0
    eval_run_id: uuid.UUID | None = None  # an offline evaluation's item (Cascade.pair)


@dataclass(frozen=True)
class Pair:
    """What each model answered for one text (an offline evaluation), and what each call cost."""

    cheap: Verdict
    cheap_cost: Decimal
    strong: Verdict
    strong_cost: Decimal
    refused: bool = False  # a cap refused the strong call


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
    cache_hit: bool = False


@dataclass
class _Run:
    cmd: ClassifyCommand
    created_at: datetime
    deadline: Deadline
    cheap: ModelInfo
    strong: ModelInfo
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
        self,
        budget: Budget,
        upstream: Upstream,
        catalog: Catalog,
        settings: Settings,
        metrics: Metrics,
        cache: ResponseCache,
    ) -> None:
        self.budget = budget
        self.cache = cache
        self._rng = random.Random()
        self._shadows: set[asyncio.Task[None]] = set()
        self._shadow_slots = asyncio.Semaphore(settings.shadow_concurrency)
        self._closing = False
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.catalog = catalog

    def _run(self, cmd: ClassifyCommand, deadline_s: float) -> _Run:
        return _Run(
            cmd,
            created_at=self.budget.clock(),
            deadline=Deadline.after(deadline_s),
            cheap=self.catalog.model(cmd.cheap_model or self.settings.cheap_model),
            strong=self.catalog.model(cmd.strong_model or self.settings.strong_model),
        )

    async def classify(self, cmd: ClassifyCommand) -> Classification:
        run = self._run(cmd, self.settings.request_deadline_s)
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
            self._idle.clear()
        self.metrics.in_flight.inc()
        outcome, model = "failed", None
        try:
            result = await self._cached(run) or await self._classify(run)
            outcome, model = "ok", result.model
            self._maybe_shadow(run, result)
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

    async def pair(self, cmd: ClassifyCommand) -> Pair:
        """Ask both models about the text, whatever the cheap one says (an offline evaluation's item): each call
        reserved, made and settled like any other, and the request recorded with the strong model's answer.

        A model that gives no answer (unavailable, rejected, out of time) is an Unavailable verdict, so a paid
        cheap answer is never lost. A cap that refuses the cheap call raises CostCapExceeded (nothing was spent);
        one that refuses the strong call gives `refused` (the evaluation stops there)."""
        run = self._run(cmd, self.settings.request_deadline_s)
        verdicts: dict[str, Verdict] = {}
        refused: CostCapExceeded | None = None
        for stage, model in (("cheap", run.cheap), ("strong", run.strong)):
            # Each stage has the request deadline of its own: no reservation outlives it, so none can reach the
            # sweeper's TTL while its holder is still waiting on the call.
            run.deadline = Deadline.after(self.settings.request_deadline_s)
            try:
                verdicts[stage] = await self._stage(run, stage, model)
            except CostCapExceeded as exc:
                if stage == "cheap":
                    await self._record_failure(run, exc)
                    raise
                refused, verdicts[stage] = exc, Unavailable(exc.message)
            except DatabaseUnavailable:
                raise
            except CascadeError as exc:
                verdicts[stage] = Unavailable(exc.message)
        strong = verdicts["strong"]
        if not isinstance(strong, Answer):
            detail = strong.detail
            failure = refused or UpstreamUnavailable(f"the strong model gave no answer: {detail}")
            await self._record_failure(run, failure)
        costs = {stage: sum((a.cost_usd for a in run.attempts if a.stage == stage), Decimal(0)) for stage in STAGES}
        return Pair(verdicts["cheap"], costs["cheap"], strong, costs["strong"], refused is not None)

    async def _cached(self, run: _Run) -> Classification | None:
        """A response-cache hit, recorded as a request of its own (no attempt, no cost); None on a miss."""
        cmd = run.cmd
        if cmd.cache_key is None:
            return None
        hit = await self.cache.lookup(cmd.team_id, cmd.cache_key, run.created_at)
        if hit is None:
            return None
        run.finished_ms = run.elapsed_ms()
        row = self._request_row(run) | {"cache_hit": True, "cached_from": hit.request_id}
        answer = {"status": "ok", "label": hit.label, "confidence": hit.confidence, "model": hit.model}
        finish = answer | {"latency_ms": run.finished_ms, "finished_at": self.budget.clock()}
        await self.budget.record_request(cmd.request_id, finish, row)
        self.metrics.cache_hit()
        annotate(cache_hit=True, cached_from=str(hit.request_id))
        return Classification(
            id=cmd.request_id,
            label=hit.label,
            confidence=hit.confidence,
            model=hit.model,
            escalated=False,
            escalation_reason=None,
            attempts=[],
            cost_usd=Decimal(0),
            latency_ms=run.finished_ms,
            cache_hit=True,
        )

    async def _remember(self, run: _Run, result: Classification) -> None:
        """Keep a final answer for the same text; the cache is a saving, so failing to write it fails nothing."""
        cmd = run.cmd
        if cmd.cache_key is None or result.cache_hit:
            return
        try:
            answer = (result.label, result.confidence, result.model)
            await self.cache.store(cmd.team_id, cmd.cache_key, answer, cmd.request_id, run.created_at, cmd.cache_ttl_s)
        except DatabaseUnavailable:
            logger.warning("request %s: its answer could not be cached", cmd.request_id)

    def _maybe_shadow(self, run: _Run, result: Classification) -> None:
        """With the task's shadow rate, ask the strong model about a kept answer too, off the request path: the
        response is not held for it, and it is reserved on the caps like any other call (and refused like one)."""
        rate = run.cmd.shadow_rate
        if result.escalated or result.cache_hit or rate <= 0 or self._closing or self._rng.random() >= rate:
            return
        if self._shadow_slots.locked():
            self.metrics.shadow("skipped")  # too many at once: calibration can wait, requests cannot
            return
        task = asyncio.create_task(self._shadow(run, result.label), name=f"shadow-{run.cmd.request_id}")
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, run: _Run, cheap_label: str) -> None:
        async with self._shadow_slots:
            shadow = _Run(
                run.cmd,
                created_at=run.created_at,
                deadline=Deadline.after(self.settings.attempt_timeout_s + MIN_ATTEMPT_S),
                cheap=run.cheap,
                strong=run.strong,
                attempts=list(run.attempts),
                request_written=True,
            )
            request = build_request(run.strong, run.cmd.task, run.cmd.text)
            try:
                verdict = await self._attempt(shadow, "shadow", request)
            except CostCapExceeded:
                self.metrics.shadow("refused")
                return
            except (CascadeError, UpstreamFailure) as exc:
                logger.info("request %s: its shadow call failed: %s", run.cmd.request_id, exc)
                self.metrics.shadow("failed")
                return
            except Exception:
                logger.exception("request %s: its shadow call failed", run.cmd.request_id)
                self.metrics.shadow("failed")
                return
            if isinstance(verdict, Answer):
                self.metrics.shadow("agreed" if verdict.label == cheap_label else "disagreed")
            else:
                self.metrics.shadow("failed")

    async def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for classifications in progress (settles included), then for shadow calls
        (cancelled past it: a cancelled call is charged its reservation); returns how many remain."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        self._closing = True  # no new shadow call from here on, even from a request still finishing
        while self._shadows:
            _, pending = await asyncio.wait(list(self._shadows), timeout=max(0.0, end - loop.time()))
            if pending:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)
                break
        return len(self._in_flight)

    async def _classify(self, run: _Run) -> Classification:
        cheap = await self._stage(run, "cheap", run.cheap)
        run.escalation_reason = escalation(cheap, run.cmd.threshold)
        answer, model = cheap, run.cheap
        if run.escalation_reason is not None:
            strong = await self._stage(run, "strong", run.strong)
            if isinstance(strong, Unavailable):
                raise UpstreamUnavailable(
                    f"the strong model is unavailable: {strong.detail}", retry_after_s=strong.retry_after_s
                )
            if isinstance(strong, Defect):
                raise UpstreamRejected(f"the strong model gave no usable answer: {strong.detail}")
            answer, model = strong, run.strong
        assert isinstance(answer, Answer)
        result = Classification(
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
        await self._remember(run, result)
        return result

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
            "cheap_model": run.cheap.id,
            "strong_model": run.strong.id,
            "created_at": run.created_at,
            "task_id": cmd.task.version_id,
            "eval_run_id": cmd.eval_run_id,
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
