"""Submitting a job's pending items: hold a batch's worst case on the caps, create the Message Batch, store its id."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from service.cascade.prompt import build_request
from service.cascade.upstream import Upstream, UpstreamFailure
from service.core.errors import CostCapExceeded
from service.core.settings import Settings
from service.jobs.ingest import Ingest
from service.jobs.lease import Lease
from service.jobs.results import JobTask, custom_id_prefix
from service.jobs.store import PENDING_STATE, SENT_STATE
from service.money.batch_charges import BatchHold, HeldItem
from service.money.budget import Budget
from service.money.caps import TeamCaps
from service.money.catalog import Catalog
from service.tables import JobBatch, Team

logger = logging.getLogger("service.jobs.worker")

_CUSTOM_ID_BYTES = 64  # a request's custom id and the JSON around its params, in a batch's size


class Submission:
    def __init__(
        self,
        lease: Lease,
        budget: Budget,
        upstream: Upstream,
        catalog: Catalog,
        settings: Settings,
        ingest: Ingest,
        clock: Callable[[], datetime],
    ) -> None:
        self.lease = lease
        self.db = budget.db
        self.budget = budget
        self.upstream = upstream
        self.catalog = catalog
        self.settings = settings
        self.ingest = ingest
        self.clock = clock

    async def submit(self, run: JobTask) -> tuple[str, str] | None:
        """Submit what is pending, cheap stage first; returns (status, detail) if the job must wait: a cap
        refused its next batch (paused_cost_cap), or the API refused a batch outright (paused_upstream)."""
        for stage in ("cheap", "strong"):
            while True:
                async with self.lease.jobs() as jobs:
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

    async def _submit_batch(self, run: JobTask, stage: str, pending: list[tuple[int, str]]) -> None:
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
        self.lease.fail_at("after_hold")
        prefix = custom_id_prefix(run.job.id, batch_id)
        requests = [{"custom_id": f"{prefix}{i.seq}", "params": bodies[i.seq]} for i in items]
        del bodies
        await self.lease.renew(run.job.id)
        try:
            anthropic_id = await self.upstream.create_batch(requests, self.settings.job_submit_timeout_s)
        except UpstreamFailure as failure:
            async with self.lease.jobs() as jobs:
                batch = await jobs.batch(batch_id)
            if failure.billed_unknown:
                logger.warning("job %s: batch %s may have been created (%s); in doubt", run.job.id, batch_id, failure)
            else:
                await self.ingest.release(run, batch, f"the batch was refused: {failure.message}")
            raise
        self.lease.fail_at("after_create")
        async with self.lease.jobs() as jobs:
            if not await jobs.mark_submitted(batch_id, anthropic_id):
                await self._late(run, await jobs.batch(batch_id), anthropic_id)
                return
        self.lease.fail_at("after_submitted")
        logger.info("job %s: %s batch %s (%s): %d items", run.job.id, stage, batch_id, anthropic_id, len(items))

    async def _late(self, run: JobTask, batch: JobBatch, anthropic_id: str) -> None:
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

    async def _team_caps(self, team_id: uuid.UUID) -> TeamCaps:
        async with self.db.autocommit() as connection:
            row = (
                await connection.execute(select(Team.daily_cap_usd, Team.monthly_cap_usd).where(Team.id == team_id))
            ).one()
        return TeamCaps(row.daily_cap_usd, row.monthly_cap_usd)


def _fitting(items: list[HeldItem], room: Decimal) -> int:
    """How many of the items, in order, fit in `room`."""
    total, fits = Decimal(0), 0
    for item in items:
        total += item.reserved
        if total > room:
            break
        fits += 1
    return fits
