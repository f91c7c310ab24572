"""Every HTTP request gets an id (the classification id, the error body's request_id, the x-request-id header)
and one JSON access line when it is done."""

from __future__ import annotations

import logging
import time
import uuid

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.core.logs import ACCESS_LOGGER, close_fields, open_fields

logger = logging.getLogger(ACCESS_LOGGER)

# Probes and scrapes would drown the requests that matter; they are logged at debug level.
_QUIET_PREFIXES = ("/health/", "/metrics", "/dashboard/static/")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", str(request_id).encode())
        started = time.monotonic()
        path: str = scope["path"]
        fields, token = open_fields(request_id=str(request_id), method=scope["method"], path=path, status=500)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                fields["status"] = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message["headers"] = [*headers, header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields["latency_ms"] = round((time.monotonic() - started) * 1000, 2)
            level = logging.DEBUG if path.startswith(_QUIET_PREFIXES) else logging.INFO
            logger.log(level, "%s %s %s", scope["method"], path, fields["status"], extra={"fields": fields})
            close_fields(token)
