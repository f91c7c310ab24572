"""A worker's lease on one job: the job store on a fresh connection per statement, the renewals (and the heartbeat
that makes them during a long step), conditional status moves, and the testing failpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator

from service.core.database import Database
from service.core.errors import DatabaseUnavailable
from service.core.settings import Settings
from service.jobs.store import RUNNABLE, JobStore
from service.tables import Job

logger = logging.getLogger("service.jobs.worker")

_FAILPOINT_EXIT = 137


class LeaseLost(Exception):
    """Another worker holds the job now; this pass stops without writing more."""


class Lease:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.name = f"{os.uname().nodename[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.failpoint = settings.worker_failpoint

    @contextlib.asynccontextmanager
    async def jobs(self) -> AsyncIterator[JobStore]:
        async with self.db.autocommit() as connection:
            yield JobStore(connection)

    async def job(self, job_id: uuid.UUID) -> Job:
        async with self.jobs() as jobs:
            job = await jobs.job(job_id)
        assert job is not None
        return job

    async def set_status(self, job_id: uuid.UUID, status: str, detail: str | None, *, ended: bool = False) -> bool:
        async with self.jobs() as jobs:
            return await jobs.set_status(job_id, status, detail, from_=RUNNABLE, ended=ended)

    @contextlib.asynccontextmanager
    async def heartbeat(self, job_id: uuid.UUID) -> AsyncIterator[None]:
        """Renew the lease every third of it while a pass runs (a batch creation alone may outlast it); a lease
        lost all the same is caught at the pass's next `renew`, before it writes anything more."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.job_lease_s / 3)
                with contextlib.suppress(DatabaseUnavailable):
                    async with self.jobs() as jobs:
                        if not await jobs.renew(job_id, self.name, self.settings.job_lease_s):
                            return

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew(self, job_id: uuid.UUID) -> None:
        async with self.jobs() as jobs:
            if not await jobs.renew(job_id, self.name, self.settings.job_lease_s):
                raise LeaseLost

    def fail_at(self, point: str) -> None:
        """Testing only (CASCADE_WORKER_FAILPOINT): die here, as a SIGKILL would, the first time."""
        if self.failpoint == point:
            logger.warning("failpoint %s reached: exiting", point)
            logging.shutdown()
            os._exit(_FAILPOINT_EXIT)
