"""The Litestar application factory. Nothing is created at import; the lifespan owns every resource."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from service.api import admin, batch, classify, health, jobs, metrics, reports, requests, spend, tasks
from service.api.dashboard import pages as dashboard
from service.api.dashboard.session import SessionSigner
from service.api.dependencies import provide_caller, provide_reader, provide_request_id, provide_runtime
from service.api.errors import EXCEPTION_HANDLERS
from service.api.middleware import RequestIdMiddleware
from service.core.settings import Settings
from service.runtime import Runtime


def create_app(settings: Settings, db_url: str, *, sweeper: bool = True) -> Litestar:
    """Build the app; `db_url` is resolved by the caller (an embedded cluster or DATABASE_URL)."""
    Runtime.check(settings)  # fail fast on configuration errors, before anything is served
    sessions = SessionSigner.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = app.state.runtime = Runtime.build(settings, db_url)
        app.state.sessions = sessions
        try:
            await runtime.start()
            async with contextlib.AsyncExitStack() as background:
                if sweeper:
                    await background.enter_async_context(runtime.sweeping())
                if settings.run_worker:
                    await background.enter_async_context(runtime.working())
                yield
        finally:
            await runtime.aclose()

    return Litestar(
        route_handlers=[
            classify.classify,
            batch.route(settings),
            jobs.router(settings),
            tasks.router,
            requests.get_request,
            reports.escalations,
            reports.costs,
            reports.list_,
            spend.spend,
            health.live,
            health.ready,
            metrics.metrics,
            admin.admin_router,
            dashboard.dashboard_router,
        ],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "caller": Provide(provide_caller),
            "reader": Provide(provide_reader),
            "call_id": Provide(provide_request_id, sync_to_thread=False),
        },
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[RequestIdMiddleware],
        request_max_body_size=settings.max_body_bytes,
        template_config=TemplateConfig(directory=dashboard.WEB / "templates", engine=JinjaTemplateEngine),
        openapi_config=OpenAPIConfig(title="cascade", version="0.1.0", path="/schema"),
        logging_config=None,  # the process configures logging; the app must not
        debug=False,
    )


def app_from_env() -> Litestar:
    """Factory for `cascade serve` (uvicorn imports it in every worker)."""
    from service.core import logs
    from service.core.database import resolve_url

    settings = Settings()
    logs.configure(settings.log_level)  # a worker process starts with no logging of its own
    return create_app(settings, resolve_url(settings))
