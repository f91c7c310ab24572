"""The one place errors become HTTP responses, all in one JSON shape."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from service.api.schemas.common import ErrorOut
from service.core.errors import CascadeError, CostCapExceeded, InvalidInput, Replayed

logger = logging.getLogger(__name__)

_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


def request_id_of(request: Request[Any, Any, Any]) -> str:
    """The request's id; errors raised by the router (before the middleware runs) get one here."""
    state = request.scope.setdefault("state", {})
    if not state.get("request_id"):
        state["request_id"] = uuid.uuid4()
    return str(state["request_id"])


def error_response(
    request: Request[Any, Any, Any],
    status: int,
    type_: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    request_id = request_id_of(request)
    body = {"error": {"type": type_, "message": message, **extra}, "request_id": request_id}
    headers = {**(headers or {}), "x-request-id": request_id}
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


def error_details(exc: CascadeError) -> dict[str, Any]:
    """The `error` object of the wire shape for one of our errors."""
    error: dict[str, Any] = {"type": exc.type, "message": exc.message}
    if isinstance(exc, InvalidInput) and exc.field:
        error["field"] = exc.field
    if isinstance(exc, CostCapExceeded):
        error["cap"] = exc.cap
        error["remaining_usd"] = format(exc.remaining_usd.normalize(), "f")
    return error


def cascade_error(request: Request[Any, Any, Any], exc: CascadeError) -> Response[dict[str, Any]]:
    if isinstance(exc, Replayed):
        headers = {**exc.headers, "x-request-id": request_id_of(request), "idempotent-replayed": "true"}
        return Response(exc.body, status_code=exc.status_code, headers=headers, media_type=MediaType.JSON)
    error = error_details(exc)
    return error_response(request, exc.status_code, error.pop("type"), error.pop("message"), exc.headers, **error)


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    fields = [str(p.get("key")) for p in problems if isinstance(p, dict) and p.get("key")]
    details = (
        "; ".join(f"{p.get('key') or 'body'}: {p.get('message')}" for p in problems if isinstance(p, dict))
        or exc.detail
    )
    extra: dict[str, Any] = {"field": fields[0]} if fields else {}
    return error_response(request, 422, "invalid_request", f"invalid request body: {details}", **extra)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status >= 500:
        logger.error("HTTP %s on %s: %s", status, request.url.path, exc.detail)
    return error_response(request, status, _HTTP_TYPES.get(status, "http_error"), exc.detail, exc.headers)


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    logger.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(request, 500, "internal_error", "an internal error occurred; it has been logged")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    CascadeError: cascade_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}


_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: "Missing, invalid or revoked key",
    402: "A cost cap would be exceeded; no upstream call was made",
    403: "The admin API needs CASCADE_ADMIN_KEY",
    404: "Not found (or another team's)",
    409: "Conflict: an Idempotency-Key still in flight, or a name already taken",
    413: "Request body too large",
    422: "Invalid input; `error.field` names the field",
    429: "The team's request rate; retry after `Retry-After`",
    502: "Anthropic rejected the request or gave no usable answer",
    503: "Anthropic or the database is unavailable; retry after `Retry-After`",
    504: "The request deadline passed",
}


def documented(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error responses a route can give, all in the one error shape."""
    return {code: ResponseSpec(data_container=ErrorOut, description=_DESCRIPTIONS[code]) for code in codes}
