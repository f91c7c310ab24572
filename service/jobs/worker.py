"""The job worker: runs each job's two-stage cascade through the Message Batches API.

One pass over a claimed job (`step`):
1. each Message Batch in progress: ingest it if it has ended; resolve it if its creation is in doubt;
2. a canceling job: cancel its batches at the API and its unsent items here;
3. otherwise submit pending items, cheap stage then strong, in batches of at most `job_batch_items`: hold the
   batch's worst case (service.money.budget), create it at the API, store its id;
4. end the job when nothing is pending or in progress, and hand the lease back.

Every write is conditional on the state it moves from, so a pass interrupted anywhere (SIGKILL) is taken up by the
next one with nothing done twice: a batch's id is stored before anything else happens to its items; results are
settled only from 'reserved' ledger rows; and a batch whose creation never answered is looked for at the API
(custom ids carry its row id) and adopted, or proven absent and released, never created again blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from service.cascade.policy import Answer, Defect, Unavailable, Verdict, escalation, read_answer
from service.cascade.prompt import Task, build_request
from service.cascade.upstream import Upstream, UpstreamFailure, read_message
from service.core.clock import utcnow
from service.core.errors import CostCapExceeded, DatabaseUnavailable
from service.core.settings import Settings
from service.jobs.store import PENDING_STATE, RUNNABLE, SENT_STATE, BatchAttempt, JobStore
from service.money.batch_charges import BatchHold, HeldItem, ResultLine
from service.money.budget import Budget
from service.money.caps import TeamCaps
from service.money.catalog import Catalog, ModelInfo, PriceRow, TokenUsage
from service.tables import Job, JobBatch, Team

logger = logging.getLogger(__name__)

_SETTLE_LINES = 2000  # result lines per settle statement
_CLOCK_SLACK = timedelta(minutes=5)  # between the database's clock and the API's, when looking for a batch in doubt
_FAILPOINT_EXIT = 137
_CUSTOM_ID_BYTES = 64  # a request's custom id and the JSON around its params, in a batch's size
# A batch-level error that the next attempt may not see again; other errored requests were refused for good.
_TRANSIENT_ERRORS = {"rate_limit_error", "api_error", "overloaded_error", "timeout_error"}


class LeaseLost(Exception):
    """Another worker holds the job now; this pass stops without writing more."""


@dataclass(frozen=True)
class _JobTask:
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


def _seq_of(custom: object, prefix: str) -> int | None:
    if not isinstance(custom, str) or not custom.startswith(prefix):
        return None
    try:
        return int(custom[len(prefix) :])
    except ValueError:
        return None


class Worker:
    def __init__(
        self,
        budget: Budget,
        upstream: Upstream,
        catalog: Catalog,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = budget.db
        self.budget = budget
        self.upstream = upstream
        self.catalog = catalog
        self.settings = settings
        self.clock = clock
        self.name = f"{os.uname().nodename[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._failpoint = settings.worker_failpoint

    # The loop

    async def run(self, stop: asyncio.Event) -> None:
        """Work on due jobs until `stop` is set; an idle worker looks again every `job_poll_s`."""
        logger.info("job worker %s started", self.name)
        while not stop.is_set():
            try:
                worked = await self.run_once()
            except DatabaseUnavailable:
                logger.warning("job worker: database unavailable, will retry")
                worked = False
            except Exception:
                logger.exception("job worker failed; will retry")
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.job_poll_s)

    async def run_once(self) -> bool:
        """Claim one due job and make one pass over it; False if none was due."""
        async with self.db.autocommit() as connection:
            job_id = await JobStore(connection).claim(self.name, self.settings.job_lease_s)
        if job_id is None:
            return False
        after_s = self.settings.job_poll_s
        try:
            async with self._heartbeat(job_id):
                after_s = await self.step(job_id)
        except LeaseLost:
            logger.warning("job %s: lease lost to another worker; stopping this pass", job_id)
            return True
        except (DatabaseUnavailable, UpstreamFailure) as exc:
            logger.warning("job %s: %s; will retry", job_id, exc)
        except Exception:
            logger.exception("job %s: pass failed; will retry", job_id)
        with contextlib.suppress(DatabaseUnavailable):
            async with self.db.autocommit() as connection:
                await JobStore(connection).release(job_id, self.name, after_s)
        return True

    async def step(self, job_id: uuid.UUID) -> float:
        """One pass over a claimed job; returns the seconds until it should be looked at again."""
        job = await self._job(job_id)
        if job.status in ("done", "canceled"):
            return 0.0
        run = self._task(job)
        waiting = False
        async with self._jobs() as jobs:
            open_batches = await jobs.open_batches(job_id)
        for batch in open_batches:
            waiting |= not await self._progress(run, batch)
        job = await self._job(job_id)
        if job.status == "canceling":
            return await self._cancel(job, waiting)
        refused = await self._submit(self._task(job))
        async with self._jobs() as jobs:
            counts = await jobs.counts(job_id)
        # Each status move is conditional on the job still being runnable: a cancel that arrived during this
        # pass is never overwritten, and the next pass (at once) carries it out.
        if counts.of("cheap_pending", "strong_pending", "cheap_sent", "strong_sent") == 0:
            if not await self._set_status(job_id, "done", None, ended=True):
                return 0.0
            logger.info("job %s done", job_id)
            return 0.0
        if refused is not None:
            status, detail = refused
            if not await self._set_status(job_id, status, detail):
                return 0.0
            return self.settings.job_pause_recheck_s
        if job.status != "running" and not await self._set_status(job_id, "running", None):
            return 0.0
        if counts.of("cheap_pending", "strong_pending") and not waiting:
            return 0.0  # more to submit right away (the open-batch limit was reached, or a stage just opened)
        return self.settings.job_poll_s

    # Batches in progress

    async def _progress(self, run: _JobTask, batch: JobBatch) -> bool:
        """Move one open batch on; True if it is finished with (ingested or released)."""
        await self._renew(run.job.id)
        if batch.state == "submitting":
            return await self._resolve(run, batch)
        assert batch.anthropic_id is not None
        try:
            view = await self.upstream.batch(batch.anthropic_id)
        except UpstreamFailure as failure:
            if failure.status != 404:
                raise
            await self._gone(run, batch)
            return True
        if not view.ended:
            return False
        await self._ingest(run, batch)
        return True

    async def _gone(self, run: _JobTask, batch: JobBatch) -> None:
        """The API no longer has the batch (deleted, or its results are past retention): what it ran cannot be
        known, so every request still held is charged its reservation, and its item ends as the policy says."""
        logger.error(
            "job %s: batch %s (%s) is gone from the API; its %d requests still held are charged their reservations",
            run.job.id,
            batch.id,
            batch.anthropic_id,
            batch.item_count,
        )
        async with self._jobs() as jobs:
            held = await jobs.held_attempts(batch.id)
        detail = "the batch is gone from the API; its results could not be read"
        await self._settle(batch, [self._unknown(run, batch, a, detail) for a in held.values()])
        async with self._jobs() as jobs:
            await jobs.mark_batch(batch.id, "ingested")

    async def _resolve(self, run: _JobTask, batch: JobBatch) -> bool:
        """A batch held but not known to be created: its holder died, or its creation never answered. After the
        longest a creation can take, look for it at the API: adopt it if it is there, else release it."""
        async with self._jobs() as jobs:
            now = await jobs.clock()
        if now - batch.created_at < timedelta(seconds=self.settings.job_doubt_s):
            return False
        since = batch.created_at - _CLOCK_SLACK
        async with self._jobs() as jobs:
            known = await jobs.known_batch_ids(since)
        prefix = custom_id_prefix(run.job.id, batch.id)
        for view in await self.upstream.batches_since(since):
            if view.id in known or view.request_count != batch.item_count:
                continue
            if not view.ended:
                return False  # it might be this one: wait until its results tell
            async with contextlib.aclosing(self.upstream.batch_results(view.id)) as results:
                first: dict[str, Any] = await anext(results, {})
            if _seq_of(first.get("custom_id"), prefix) is not None:
                logger.warning("job %s: batch %s was created as %s; its reply was lost", run.job.id, batch.id, view.id)
                async with self._jobs() as jobs:
                    await jobs.mark_submitted(batch.id, view.id)
                return False
        logger.warning("job %s: batch %s was never created; releasing its reservation", run.job.id, batch.id)
        await self._release(run, batch, "the batch was never created")
        return True

    async def _release(self, run: _JobTask, batch: JobBatch, why: str) -> None:
        """No request of the batch reached the API: settle each at no cost and put its item back to pending."""
        async with self._jobs() as jobs:
            held = await jobs.held_attempts(batch.id)
        pending = PENDING_STATE[batch.stage]
        lines = [
            ResultLine(a.attempt_id, _ledger("not_sent", TokenUsage(), None, error=why), Decimal(0), False, {}, pending)
            for a in held.values()
        ]
        await self._settle(batch, lines)
        async with self._jobs() as jobs:
            await jobs.mark_batch(batch.id, "released")

    async def _ingest(self, run: _JobTask, batch: JobBatch) -> None:
        """Settle every result line of an ended batch; a request with no line is charged its reservation."""
        assert batch.anthropic_id is not None
        async with self._jobs() as jobs:
            held = await jobs.held_attempts(batch.id)
        prefix = custom_id_prefix(run.job.id, batch.id)
        lines: list[ResultLine] = []
        chunks = 0
        try:
            async for line in self.upstream.batch_results(batch.anthropic_id):
                seq = _seq_of(line.get("custom_id"), prefix)
                attempt = held.pop(seq, None) if seq is not None else None
                if attempt is None:
                    continue  # settled on an earlier pass, or not ours
                lines.append(self._result(run, batch, attempt, line))
                if len(lines) >= _SETTLE_LINES:
                    await self._settle(batch, lines)
                    await self._renew(run.job.id)
                    lines = []
                    chunks += 1
                    if chunks == 1:
                        self._fail_at("mid_ingest")
        except UpstreamFailure as failure:
            if failure.status != 404:
                raise
            await self._settle(batch, lines)  # the results are gone (the 404 comes before any line, in practice)
            await self._gone(run, batch)
            return
        missing = len(held)
        for attempt in held.values():
            lines.append(self._unknown(run, batch, attempt))
        await self._settle(batch, lines)
        async with self._jobs() as jobs:
            await jobs.mark_batch(batch.id, "ingested")
        logger.info("job %s: batch %s ingested (%d without a result line)", run.job.id, batch.id, missing)

    async def _settle(self, batch: JobBatch, lines: list[ResultLine]) -> None:
        for start in range(0, len(lines), _SETTLE_LINES):
            await self.budget.settle_batch(batch.id, list(batch.cap_ids), lines[start : start + _SETTLE_LINES])

    def _result(self, run: _JobTask, batch: JobBatch, attempt: BatchAttempt, line: dict[str, Any]) -> ResultLine:
        result = line.get("result") if isinstance(line.get("result"), dict) else {}
        assert isinstance(result, dict)
        kind = result.get("type")
        upstream_id = f"{batch.anthropic_id}/{line.get('custom_id')}"[:128]
        if kind == "succeeded":
            try:
                text, stop_reason, usage = read_message(result.get("message"))
            except ValueError as exc:
                return self._unknown(run, batch, attempt, f"an unreadable result: {exc}", upstream_id)
            price = self.catalog.price(batch.model, batch.created_at, usage.prompt_tokens).for_batch()
            verdict: Verdict = read_answer(text, stop_reason, run.task.labels)
            ledger = _ledger(
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
            ledger = _ledger("canceled", TokenUsage(), None, upstream_id=upstream_id, error="the batch was canceled")
            request = {"status": "failed", "error_type": "canceled", "error_message": "the job was canceled"}
            return ResultLine(attempt.attempt_id, ledger, Decimal(0), True, request, "canceled")
        if kind not in ("errored", "expired"):
            return self._unknown(run, batch, attempt, f"a result of unknown type {kind!r}", upstream_id)
        # No message was created, and neither is billed.
        error_type, detail = _error_of(result.get("error")) if kind == "errored" else (None, "")
        if kind == "expired":
            detail = "the request expired before it was processed"
        ledger = _ledger(kind, TokenUsage(), None, upstream_id=upstream_id, error=detail)
        strong_equiv = Decimal(0) if batch.stage == "cheap" else None
        if kind == "errored" and error_type not in _TRANSIENT_ERRORS:
            return self._rejected(run, batch, attempt, ledger, strong_equiv, detail)
        if attempt.sends < self.settings.job_item_attempts and run.job.status != "canceling":
            # Sent again, at the same stage, in a later batch: an expiry or an overload says nothing of the text.
            return ResultLine(attempt.attempt_id, ledger, strong_equiv, False, {}, PENDING_STATE[batch.stage])
        return self._outcome(run, batch, attempt, Unavailable(detail), ledger, strong_equiv)

    def _rejected(
        self,
        run: _JobTask,
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

    def _unknown(
        self,
        run: _JobTask,
        batch: JobBatch,
        attempt: BatchAttempt,
        detail: str = "the batch's results have no line for this request",
        upstream_id: str | None = None,
    ) -> ResultLine:
        """No usable result: it may have been billed, so it is charged its reservation (tokens unknown)."""
        ledger = _ledger("unknown", None, None, upstream_id=upstream_id, error=detail)
        ledger["cost_usd"] = attempt.reserved_usd
        return self._outcome(run, batch, attempt, Unavailable(detail), ledger, None)

    def _outcome(
        self,
        run: _JobTask,
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
                request |= _answered(answer, model)
                return ResultLine(attempt.attempt_id, ledger, strong_equiv, True, request, "done")
            request |= {"escalated": True, "escalation_reason": str(reason)}
            if run.job.status == "canceling":
                request |= {"status": "failed", "error_type": "canceled", "error_message": "the job was canceled"}
                return ResultLine(attempt.attempt_id, ledger, strong_equiv, True, request, "canceled")
            return ResultLine(attempt.attempt_id, ledger, strong_equiv, False, request, "strong_pending")
        if answer is not None:
            return ResultLine(attempt.attempt_id, ledger, None, True, _answered(answer, model), "done")
        if isinstance(verdict, Defect):
            error_type, message = "upstream_rejected", f"the strong model gave no usable answer: {verdict.detail}"
        else:
            assert isinstance(verdict, Unavailable)
            error_type, message = "upstream_unavailable", f"the strong model is unavailable: {verdict.detail}"
        request = {"status": "failed", "error_type": error_type, "error_message": message[:2000]}
        return ResultLine(attempt.attempt_id, ledger, None, True, request, "failed", message[:2000])

    # Submitting

    async def _submit(self, run: _JobTask) -> tuple[str, str] | None:
        """Submit what is pending, cheap stage first; returns (status, detail) if the job must wait: a cap
        refused its next batch (paused_cost_cap), or the API refused a batch outright (paused_upstream)."""
        for stage in ("cheap", "strong"):
            while True:
                async with self._jobs() as jobs:
                    open_now = len(await jobs.open_batches(run.job.id))
                    pending = await jobs.pending(run.job.id, stage, self.settings.job_batch_items)
                if open_now >= self.settings.job_open_batches:
                    return None
                if not pending:
                    break
                try:
                    await self._submit_batch(run, stage, [(row.seq, row.text) for row in pending])
                except CostCapExceeded as refused:
                    return "paused_cost_cap", refused.message
                except UpstreamFailure as failure:
                    if failure.billed_unknown or failure.retryable:
                        raise  # in doubt, or worth another try on the next pass
                    return "paused_upstream", f"the API refused a batch: {failure.message}"[:2000]
        return None

    async def _submit_batch(self, run: _JobTask, stage: str, pending: list[tuple[int, str]]) -> None:
        model = run.model(stage)
        now = self.clock()
        bodies: dict[int, dict[str, Any]] = {}
        items: list[HeldItem] = []
        max_tokens = 0
        size = 0
        for seq, text in pending:
            request = build_request(model, run.task, text)
            # As sent, JSON escapes a character in at most three times its UTF-8 bytes (the bound counts those).
            size += 3 * request.input_token_bound + _CUSTOM_ID_BYTES
            if items and size > self.settings.job_batch_bytes:
                break  # the rest go in the next batch
            price = self.catalog.price(model.id, now, request.input_token_bound).for_batch()
            strong_equiv = None
            if stage == "cheap":
                strong_row = self.catalog.price(run.strong.id, now, request.input_token_bound).for_batch()
                strong_equiv = strong_row.worst_case(
                    request.input_token_bound, request.max_tokens, cache_ttl=request.cache_ttl
                )
            bodies[seq] = request.body
            max_tokens = request.max_tokens
            reserved = price.worst_case(request.input_token_bound, request.max_tokens, cache_ttl=request.cache_ttl)
            items.append(
                HeldItem(seq, len(text), request.input_token_bound, reserved, strong_equiv, price.ledger_columns())
            )
        hold = BatchHold(
            job_id=run.job.id,
            team_id=run.job.team_id,
            stage=stage,
            model=model.id,
            from_state=PENDING_STATE[stage],
            to_state=SENT_STATE[stage],
            max_tokens=max_tokens,
            now=now,
            billing_day=now.date(),
            task={
                "task_hash": run.job.task_hash,
                "labels": list(run.task.labels),
                "instructions": run.task.instructions,
                "threshold": run.threshold,
                "cheap_model": run.cheap.id,
                "strong_model": run.strong.id,
            },
        )
        team_caps = await self._team_caps(run.job.team_id)
        try:
            batch_id = await self.budget.hold_batch(hold, items, team_caps)
        except CostCapExceeded as refused:
            fits = _fitting(items, refused.remaining_usd)
            if fits == 0:
                raise
            logger.info("job %s: %d of %d items fit under the caps now", run.job.id, fits, len(items))
            items = items[:fits]
            batch_id = await self.budget.hold_batch(hold, items, team_caps)
        self._fail_at("after_hold")
        prefix = custom_id_prefix(run.job.id, batch_id)
        requests = [{"custom_id": f"{prefix}{i.seq}", "params": bodies[i.seq]} for i in items]
        del bodies
        await self._renew(run.job.id)
        try:
            anthropic_id = await self.upstream.create_batch(requests, self.settings.job_submit_timeout_s)
        except UpstreamFailure as failure:
            async with self._jobs() as jobs:
                batch = await jobs.batch(batch_id)
            if failure.billed_unknown:
                logger.warning("job %s: batch %s may have been created (%s); in doubt", run.job.id, batch_id, failure)
            else:
                await self._release(run, batch, f"the batch was refused: {failure.message}")
            raise
        self._fail_at("after_create")
        async with self._jobs() as jobs:
            if not await jobs.mark_submitted(batch_id, anthropic_id):
                await self._late(run, await jobs.batch(batch_id), anthropic_id)
                return
        self._fail_at("after_submitted")
        logger.info("job %s: %s batch %s (%s): %d items", run.job.id, stage, batch_id, anthropic_id, len(items))

    async def _late(self, run: _JobTask, batch: JobBatch, anthropic_id: str) -> None:
        """The creation answered after the batch had been given up on. Adopted by another worker (it found the
        batch at the API): nothing to do. Released: its items may be in another batch by now, so it is canceled
        at once; what it ran before that is not in the ledger, and this says so loudly."""
        if batch.anthropic_id == anthropic_id:
            return
        with contextlib.suppress(UpstreamFailure):
            await self.upstream.cancel_batch(anthropic_id)
        logger.error(
            "job %s: batch %s was created as %s after it had been released (no creation took longer than "
            "CASCADE_JOB_DOUBT_S); it was canceled at the API, and requests it ran before that are not in the ledger",
            run.job.id,
            batch.id,
            anthropic_id,
        )

    # Canceling

    async def _cancel(self, job: Job, waiting: bool) -> float:
        async with self._jobs() as jobs:
            await jobs.cancel_pending(job.id)
        async with self._jobs() as jobs:
            open_batches = await jobs.open_batches(job.id)
        for batch in open_batches:
            if batch.anthropic_id is not None:
                with contextlib.suppress(UpstreamFailure):
                    await self.upstream.cancel_batch(batch.anthropic_id)
        if open_batches:
            return self.settings.job_poll_s if waiting else 0.0
        async with self._jobs() as jobs:
            # Items an ingest put back to pending since (an escalation, a resend) are canceled too; the job ends
            # only with nothing pending or sent.
            await jobs.cancel_pending(job.id)
            counts = await jobs.counts(job.id)
        if counts.of("cheap_pending", "strong_pending", "cheap_sent", "strong_sent"):
            return 0.0
        async with self._jobs() as jobs:
            if await jobs.set_status(job.id, "canceled", None, from_=("canceling",), ended=True):
                logger.info("job %s canceled", job.id)
        return 0.0

    # Helpers

    @contextlib.asynccontextmanager
    async def _jobs(self) -> AsyncIterator[JobStore]:
        async with self.db.autocommit() as connection:
            yield JobStore(connection)

    async def _job(self, job_id: uuid.UUID) -> Job:
        async with self._jobs() as jobs:
            job = await jobs.job(job_id)
        assert job is not None
        return job

    async def _set_status(self, job_id: uuid.UUID, status: str, detail: str | None, *, ended: bool = False) -> bool:
        async with self._jobs() as jobs:
            return await jobs.set_status(job_id, status, detail, from_=RUNNABLE, ended=ended)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, job_id: uuid.UUID) -> AsyncIterator[None]:
        """Renew the lease every third of it while a pass runs (a batch creation alone may outlast it); a lease
        lost all the same is caught at the pass's next `_renew`, before it writes anything more."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.job_lease_s / 3)
                with contextlib.suppress(DatabaseUnavailable):
                    async with self._jobs() as jobs:
                        if not await jobs.renew(job_id, self.name, self.settings.job_lease_s):
                            return

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _team_caps(self, team_id: uuid.UUID) -> TeamCaps:
        async with self.db.autocommit() as connection:
            row = (
                await connection.execute(select(Team.daily_cap_usd, Team.monthly_cap_usd).where(Team.id == team_id))
            ).one()
        return TeamCaps(row.daily_cap_usd, row.monthly_cap_usd)

    async def _renew(self, job_id: uuid.UUID) -> None:
        async with self._jobs() as jobs:
            if not await jobs.renew(job_id, self.name, self.settings.job_lease_s):
                raise LeaseLost

    def _task(self, job: Job) -> _JobTask:
        return _JobTask(
            job=job,
            task=Task(tuple(job.labels), job.instructions),
            threshold=job.threshold,
            cheap=self.catalog.model(job.cheap_model),
            strong=self.catalog.model(job.strong_model),
        )

    def _fail_at(self, point: str) -> None:
        """Testing only (CASCADE_WORKER_FAILPOINT): die here, as a SIGKILL would, the first time."""
        if self._failpoint == point:
            logger.warning("failpoint %s reached: exiting", point)
            logging.shutdown()
            os._exit(_FAILPOINT_EXIT)


def _fitting(items: list[HeldItem], room: Decimal) -> int:
    """How many of the items, in order, fit in `room`."""
    total, fits = Decimal(0), 0
    for item in items:
        total += item.reserved
        if total > room:
            break
        fits += 1
    return fits


def _ledger(
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


def _answered(answer: Answer, model: str) -> dict[str, Any]:
    return {
        "status": "ok",
        "label": answer.label,
        "confidence": answer.confidence,
        "model": model,
        "error_type": None,
        "error_message": None,
    }


def _error_of(error: object) -> tuple[str | None, str]:
    """An errored result's error type and a readable detail."""
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        assert isinstance(inner, dict)
        kind = inner.get("type")
        return (kind if isinstance(kind, str) else None), f"{kind}: {inner.get('message')}"
    return None, "the request errored"
