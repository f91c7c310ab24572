"""Liveness and readiness probes."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from service.api.errors import documented
from service.runtime import Runtime


@get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", summary="The database answers", responses=documented(503))
async def ready(runtime: NamedDependency[Runtime]) -> dict[str, str]:
    await runtime.db.ping()  # DatabaseUnavailable maps to 503
    return {"status": "ok"}
