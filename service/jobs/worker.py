"""The job worker: runs each job's two-stage cascade through the Message Batches API.

One pass over a claimed job (`step`):
1. each Message Batch in progress: ingest it if it has ended; resolve it if its creation is in doubt
   (service.jobs.ingest, which reads result lines with service.jobs.results);
2. a canceling job: cancel its batches at the API and its unsent items here;
3. otherwise submit pending items, cheap stage then strong, in batches of at most `job_batch_items`: hold the
   batch's worst case (service.money.budget), create it at the API, store its id (service.jobs.submission);
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
import uuid
from collections.abc import Callable
from datetime import datetime

from service.cascade.prompt import Task
from service.cascade.upstream import Upstream, UpstreamFailure
from service.core.clock import utcnow
from service.core.errors import DatabaseUnavailable
from service.core.settings import Settings
from service.jobs.ingest import Ingest
from service.jobs.lease import Lease, LeaseLost
from service.jobs.results import JobTask, ResultReader
from service.jobs.store import JobStore
from service.jobs.submission import Submission
from service.money.budget import Budget
from service.money.catalog import Catalog
from service.tables import Job

logger = logging.getLogger(__name__)


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
        self.upstream = upstream
        self.catalog = catalog
        self.settings = settings
        self.lease = Lease(budget.db, settings)
        results = ResultReader(catalog, settings.job_item_attempts)
        self.ingest = Ingest(self.lease, budget, upstream, results, settings)
        self.submission = Submission(self.lease, budget, upstream, catalog, settings, self.ingest, clock)

    # The loop (batches in progress are service.jobs.ingest's; submitting is service.jobs.submission's)

    async def run(self, stop: asyncio.Event) -> None:
        """Work on due jobs until `stop` is set; an idle worker looks again every `job_poll_s`."""
        logger.info("job worker %s started", self.lease.name)
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
            job_id = await JobStore(connection).claim(self.lease.name, self.settings.job_lease_s)
        if job_id is None:
            return False
        after_s = self.settings.job_poll_s
        try:
            async with self.lease.heartbeat(job_id):
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
                await JobStore(connection).release(job_id, self.lease.name, after_s)
        return True

    async def step(self, job_id: uuid.UUID) -> float:
        """One pass over a claimed job; returns the seconds until it should be looked at again."""
        job = await self.lease.job(job_id)
        if job.status in ("done", "canceled"):
            return 0.0
        run = self._task(job)
        waiting = False
        async with self.lease.jobs() as jobs:
            open_batches = await jobs.open_batches(job_id)
        for batch in open_batches:
            waiting |= not await self.ingest.progress(run, batch)
        job = await self.lease.job(job_id)
        if job.status == "canceling":
            return await self._cancel(job, waiting)
        refused = await self.submission.submit(self._task(job))
        async with self.lease.jobs() as jobs:
            counts = await jobs.counts(job_id)
        # Each status move is conditional on the job still being runnable: a cancel that arrived during this
        # pass is never overwritten, and the next pass (at once) carries it out.
        if counts.of("cheap_pending", "strong_pending", "cheap_sent", "strong_sent") == 0:
            if not await self.lease.set_status(job_id, "done", None, ended=True):
                return 0.0
            logger.info("job %s done", job_id)
            return 0.0
        if refused is not None:
            status, detail = refused
            if not await self.lease.set_status(job_id, status, detail):
                return 0.0
            return self.settings.job_pause_recheck_s
        if job.status != "running" and not await self.lease.set_status(job_id, "running", None):
            return 0.0
        if counts.of("cheap_pending", "strong_pending") and not waiting:
            return 0.0  # more to submit right away (the open-batch limit was reached, or a stage just opened)
        return self.settings.job_poll_s

    # Canceling

    async def _cancel(self, job: Job, waiting: bool) -> float:
        async with self.lease.jobs() as jobs:
            await jobs.cancel_pending(job.id)
        async with self.lease.jobs() as jobs:
            open_batches = await jobs.open_batches(job.id)
        for batch in open_batches:
            if batch.anthropic_id is not None:
                with contextlib.suppress(UpstreamFailure):
                    await self.upstream.cancel_batch(batch.anthropic_id)
        if open_batches:
            return self.settings.job_poll_s if waiting else 0.0
        async with self.lease.jobs() as jobs:
            # Items an ingest put back to pending since (an escalation, a resend) are canceled too; the job ends
            # only with nothing pending or sent.
            await jobs.cancel_pending(job.id)
            counts = await jobs.counts(job.id)
        if counts.of("cheap_pending", "strong_pending", "cheap_sent", "strong_sent"):
            return 0.0
        async with self.lease.jobs() as jobs:
            if await jobs.set_status(job.id, "canceled", None, from_=("canceling",), ended=True):
                logger.info("job %s canceled", job.id)
        return 0.0

    # Helpers

    def _task(self, job: Job) -> JobTask:
        return JobTask(
            job=job,
            task=Task(tuple(job.labels), job.instructions),
            threshold=job.threshold,
            cheap=self.catalog.model(job.cheap_model),
            strong=self.catalog.model(job.strong_model),
        )
