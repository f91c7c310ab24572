"""Message Batches in progress: ingest an ended one, resolve one whose creation is in doubt, release one that was
never created, and charge the requests of one gone from the API at their reservations."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

from service.cascade.upstream import Upstream, UpstreamFailure
from service.core.settings import Settings
from service.jobs.lease import Lease
from service.jobs.results import JobTask, ResultReader, custom_id_prefix, seq_of, settled_columns
from service.jobs.store import PENDING_STATE
from service.money.batch_charges import ResultLine
from service.money.budget import Budget
from service.money.catalog import TokenUsage
from service.tables import JobBatch

logger = logging.getLogger("service.jobs.worker")

_SETTLE_LINES = 2000  # result lines per settle statement
_CLOCK_SLACK = timedelta(minutes=5)  # between the database's clock and the API's, when looking for a batch in doubt


class Ingest:
    def __init__(
        self, lease: Lease, budget: Budget, upstream: Upstream, results: ResultReader, settings: Settings
    ) -> None:
        self.lease = lease
        self.budget = budget
        self.upstream = upstream
        self.results = results
        self.settings = settings

    async def progress(self, run: JobTask, batch: JobBatch) -> bool:
        """Move one open batch on; True if it is finished with (ingested or released)."""
        await self.lease.renew(run.job.id)
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

    async def _gone(self, run: JobTask, batch: JobBatch) -> None:
        """The API no longer has the batch (deleted, or its results are past retention): what it ran cannot be
        known, so every request still held is charged its reservation, and its item ends as the policy says."""
        logger.error(
            "job %s: batch %s (%s) is gone from the API; its %d requests still held are charged their reservations",
            run.job.id,
            batch.id,
            batch.anthropic_id,
            batch.item_count,
        )
        async with self.lease.jobs() as jobs:
            held = await jobs.held_attempts(batch.id)
        detail = "the batch is gone from the API; its results could not be read"
        await self._settle(batch, [self.results.unknown(run, batch, a, detail) for a in held.values()])
        async with self.lease.jobs() as jobs:
            await jobs.mark_batch(batch.id, "ingested")

    async def _resolve(self, run: JobTask, batch: JobBatch) -> bool:
        """A batch held but not known to be created: its holder died, or its creation never answered. After the
        longest a creation can take, look for it at the API: adopt it if it is there, else release it."""
        async with self.lease.jobs() as jobs:
            now = await jobs.clock()
        if now - batch.created_at < timedelta(seconds=self.settings.job_doubt_s):
            return False
        since = batch.created_at - _CLOCK_SLACK
        async with self.lease.jobs() as jobs:
            known = await jobs.known_batch_ids(since)
        prefix = custom_id_prefix(run.job.id, batch.id)
        for view in await self.upstream.batches_since(since):
            if view.id in known or view.request_count != batch.item_count:
                continue
            if not view.ended:
                return False  # it might be this one: wait until its results tell
            async with contextlib.aclosing(self.upstream.batch_results(view.id)) as results:
                first: dict[str, Any] = await anext(results, {})
            if seq_of(first.get("custom_id"), prefix) is not None:
                logger.warning("job %s: batch %s was created as %s; its reply was lost", run.job.id, batch.id, view.id)
                async with self.lease.jobs() as jobs:
                    await jobs.mark_submitted(batch.id, view.id)
                return False
        logger.warning("job %s: batch %s was never created; releasing its reservation", run.job.id, batch.id)
        await self.release(run, batch, "the batch was never created")
        return True

    async def release(self, run: JobTask, batch: JobBatch, why: str) -> None:
        """No request of the batch reached the API: settle each at no cost and put its item back to pending."""
        async with self.lease.jobs() as jobs:
            held = await jobs.held_attempts(batch.id)
        pending = PENDING_STATE[batch.stage]
        lines = [
            ResultLine(
                a.attempt_id, settled_columns("not_sent", TokenUsage(), None, error=why), Decimal(0), False, {}, pending
            )
            for a in held.values()
        ]
        await self._settle(batch, lines)
        async with self.lease.jobs() as jobs:
            await jobs.mark_batch(batch.id, "released")

    async def _ingest(self, run: JobTask, batch: JobBatch) -> None:
        """Settle every result line of an ended batch; a request with no line is charged its reservation."""
        assert batch.anthropic_id is not None
        async with self.lease.jobs() as jobs:
            held = await jobs.held_attempts(batch.id)
        prefix = custom_id_prefix(run.job.id, batch.id)
        lines: list[ResultLine] = []
        chunks = 0
        try:
            async for line in self.upstream.batch_results(batch.anthropic_id):
                seq = seq_of(line.get("custom_id"), prefix)
                attempt = held.pop(seq, None) if seq is not None else None
                if attempt is None:
                    continue  # settled on an earlier pass, or not ours
                lines.append(self.results.read(run, batch, attempt, line))
                if len(lines) >= _SETTLE_LINES:
                    await self._settle(batch, lines)
                    await self.lease.renew(run.job.id)
                    lines = []
                    chunks += 1
                    if chunks == 1:
                        self.lease.fail_at("mid_ingest")
        except UpstreamFailure as failure:
            if failure.status != 404:
                raise
            await self._settle(batch, lines)  # the results are gone (the 404 comes before any line, in practice)
            await self._gone(run, batch)
            return
        missing = len(held)
        for attempt in held.values():
            lines.append(self.results.unknown(run, batch, attempt))
        await self._settle(batch, lines)
        async with self.lease.jobs() as jobs:
            await jobs.mark_batch(batch.id, "ingested")
        logger.info("job %s: batch %s ingested (%d without a result line)", run.job.id, batch.id, missing)

    async def _settle(self, batch: JobBatch, lines: list[ResultLine]) -> None:
        for start in range(0, len(lines), _SETTLE_LINES):
            await self.budget.settle_batch(batch.id, list(batch.cap_ids), lines[start : start + _SETTLE_LINES])
