"""The cascade: cheap model first, escalate by policy, every attempt reserved, called, then settled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from decimal import Decimal
from typing import Any

from service.cascade.attempts import Attempts
from service.cascade.classification import Classification, ClassifyCommand, Pair, Run
from service.cascade.policy import Answer, Defect, Unavailable, Verdict, escalation
from service.cascade.prompt import build_request
from service.cascade.response_cache import ResponseCache
from service.cascade.retry import MIN_ATTEMPT_S, Deadline
from service.cascade.upstream import Upstream, UpstreamFailure
from service.core.errors import (
    CascadeError,
    CostCapExceeded,
    DatabaseUnavailable,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.core.logs import annotate
from service.core.metrics import Metrics
from service.core.settings import Settings
from service.money.budget import Budget
from service.money.catalog import Catalog

logger = logging.getLogger(__name__)

STAGES = ("cheap", "strong")


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
        self.attempts = Attempts(budget, upstream, settings, metrics)

    def _run(self, cmd: ClassifyCommand, deadline_s: float) -> Run:
        return Run(
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
                verdicts[stage] = await self.attempts.stage(run, stage, model)
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

    async def _cached(self, run: Run) -> Classification | None:
        """A response-cache hit, recorded as a request of its own (no attempt, no cost); None on a miss."""
        cmd = run.cmd
        if cmd.cache_key is None:
            return None
        hit = await self.cache.lookup(cmd.team_id, cmd.cache_key, run.created_at)
        if hit is None:
            return None
        run.finished_ms = run.elapsed_ms()
        row = run.request_row() | {"cache_hit": True, "cached_from": hit.request_id}
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

    async def _remember(self, run: Run, result: Classification) -> None:
        """Keep a final answer for the same text; the cache is a saving, so failing to write it fails nothing."""
        cmd = run.cmd
        if cmd.cache_key is None or result.cache_hit:
            return
        try:
            answer = (result.label, result.confidence, result.model)
            await self.cache.store(cmd.team_id, cmd.cache_key, answer, cmd.request_id, run.created_at, cmd.cache_ttl_s)
        except DatabaseUnavailable:
            logger.warning("request %s: its answer could not be cached", cmd.request_id)

    def _maybe_shadow(self, run: Run, result: Classification) -> None:
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

    async def _shadow(self, run: Run, cheap_label: str) -> None:
        async with self._shadow_slots:
            shadow = Run(
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
                verdict = await self.attempts.attempt(shadow, "shadow", request)
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

    async def _classify(self, run: Run) -> Classification:
        cheap = await self.attempts.stage(run, "cheap", run.cheap)
        run.escalation_reason = escalation(cheap, run.cmd.threshold)
        answer, model = cheap, run.cheap
        if run.escalation_reason is not None:
            strong = await self.attempts.stage(run, "strong", run.strong)
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

    async def _record_failure(self, run: Run, exc: CascadeError) -> None:
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
                run.cmd.request_id, values, None if run.request_written else run.request_row()
            )
        except Exception:
            logger.warning("could not record the failure of request %s", run.cmd.request_id, exc_info=True)
