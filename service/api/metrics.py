"""GET /metrics: Prometheus exposition, unauthenticated like the probes (serve it on a private network)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from service.core.metrics import CONTENT_TYPE
from service.runtime import Runtime


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(runtime: NamedDependency[Runtime]) -> Response[bytes]:
    return Response(await runtime.metrics_text(), media_type=CONTENT_TYPE)
