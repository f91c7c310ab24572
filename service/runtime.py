"""The collaborators one process needs, built once at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service.cascade.response_cache import ResponseCache
from service.cascade.service import Cascade
from service.cascade.upstream import Upstream
from service.core import schema
from service.core.clock import utcnow
from service.core.database import Database
from service.core.errors import ConfigurationError, DatabaseUnavailable
from service.core.metrics import Metrics
from service.core.settings import Settings
from service.jobs.service import Jobs
from service.jobs.worker import Worker
from service.money.budget import Budget
from service.money.catalog import Catalog
from service.reports.service import Reports
from service.tasks.service import Tasks
from service.tenancy.idempotency import Idempotency
from service.tenancy.ratelimit import RateLimiter
from service.tenancy.teams import Teams

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    upstream: Upstream
    budget: Budget
    cascade: Cascade
    teams: Teams
    idempotency: Idempotency
    limiter: RateLimiter
    reports: Reports
    metrics: Metrics
    jobs: Jobs
    worker: Worker
    tasks: Tasks

    @staticmethod
    def check(settings: Settings, *, warn: bool = True) -> str:
        """Refuse settings that must not be served; returns the API key. Warnings go to the log."""
        if settings.anthropic_api_key is None:
            raise ConfigurationError(
                "ANTHROPIC_API_KEY is not set. cascade never fakes answers: set a key, or point "
                "ANTHROPIC_BASE_URL at `cascade simulator` with any key, or run `cascade demo`."
            )
        catalog = Catalog()
        today = utcnow().date()
        for model in (settings.cheap_model, settings.strong_model):
            for warning in catalog.check_servable(model, today):
                if warn:
                    logger.warning(warning)
        return settings.anthropic_api_key.get_secret_value()

    @classmethod
    def build(cls, settings: Settings, db_url: str) -> Runtime:
        api_key = cls.check(settings, warn=False)
        catalog = Catalog()
        db = Database(db_url, settings)
        upstream = Upstream(api_key, settings.anthropic_base_url, settings.upstream_pool_size)
        metrics = Metrics()
        budget = Budget(db, catalog, settings, on_sweep=metrics.charge)
        return cls(
            settings=settings,
            db=db,
            upstream=upstream,
            budget=budget,
            cascade=Cascade(budget, upstream, catalog, settings, metrics, ResponseCache(db)),
            teams=Teams(db),
            idempotency=Idempotency(db, budget.clock, settings.reservation_ttl_s),
            limiter=RateLimiter(settings.team_rate_per_s, settings.team_burst),
            reports=Reports(db, catalog, settings.cheap_model, settings.strong_model, settings.report_concurrency),
            metrics=metrics,
            jobs=Jobs(db, settings),
            worker=Worker(budget, upstream, catalog, settings),
            tasks=Tasks(db, settings, catalog),
        )

    async def start(self) -> None:
        """Check the schema and apply the configured global caps; a database outage is not fatal here."""
        try:
            await schema.check_current(self.db)
            await self.budget.sync_global_caps()
        except DatabaseUnavailable:
            logger.warning("database unavailable at start-up; caps will be applied when it answers")

    async def run_sweeper(self) -> None:
        """Settle orphaned reservations forever; every replica runs one, SKIP LOCKED keeps them apart."""
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.budget.sweep()
                await self.idempotency.purge_expired()
                await self.cascade.cache.purge_expired(utcnow())
            except DatabaseUnavailable:
                logger.warning("sweeper: database unavailable, will retry")
            except Exception:
                logger.exception("sweeper failed")

    @contextlib.asynccontextmanager
    async def sweeping(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run_sweeper(), name="reservation-sweeper")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Run the job worker alongside; on exit it finishes the pass it is in (every step of which is safe to
        interrupt, so a second signal may cut it short)."""
        stop = asyncio.Event()
        task = asyncio.create_task(self.worker.run(stop), name="job-worker")
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.settings.shutdown_grace_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def metrics_text(self) -> bytes:
        """The /metrics exposition; the database gauges are left out (database_up 0) when it does not answer."""
        try:
            gauges = await self.budget.gauges()
        except DatabaseUnavailable:
            gauges = None
        return self.metrics.render(gauges)

    async def aclose(self) -> None:
        """Close the pools, after letting classifications still in progress settle (the server has stopped
        accepting and has waited its grace period; what it cancelled is settling now)."""
        left = await self.cascade.drain(max(5.0, self.settings.attempt_timeout_s))
        if left:
            logger.warning("closing with %d classifications unsettled; the sweeper will charge them", left)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.budget.flush_releases(), 15.0)
        await self.upstream.aclose()
        await self.db.dispose()
