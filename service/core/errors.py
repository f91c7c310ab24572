"""The one error hierarchy; `service.api.errors` maps it to HTTP in one place."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any


class CascadeError(Exception):
    """Base of every error a client may see. `type` is the wire `error.type`."""

    status_code = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(CascadeError):
    status_code = 422
    type = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(CascadeError):
    status_code = 413
    type = "payload_too_large"


class Unauthorized(CascadeError):
    status_code = 401
    type = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="cascade"'})


class Forbidden(CascadeError):
    status_code = 403
    type = "forbidden"


class NotFound(CascadeError):
    status_code = 404
    type = "not_found"


class Conflict(CascadeError):
    status_code = 409
    type = "conflict"


class IdempotencyInFlight(CascadeError):
    status_code = 409
    type = "idempotency_key_in_flight"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class IdempotencyKeyReused(CascadeError):
    status_code = 422
    type = "idempotency_key_reused"


class Replayed(CascadeError):
    """A stored error response replayed for a repeated Idempotency-Key: same status, same body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__("replayed")
        self.status_code = status
        self.body = body


class RateLimited(CascadeError):
    """This team sent more requests than its rate allows; distinct from an upstream rate limit (503)."""

    status_code = 429
    type = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class CostCapExceeded(CascadeError):
    status_code = 402
    type = "cost_cap_exceeded"

    def __init__(self, message: str, *, cap: str, remaining_usd: Decimal) -> None:
        super().__init__(message)
        self.cap = cap
        self.remaining_usd = remaining_usd


class DatabaseUnavailable(CascadeError):
    status_code = 503
    type = "database_unavailable"

    def __init__(self, message: str = "The database is unreachable; no work was started.") -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class UpstreamUnavailable(CascadeError):
    """Anthropic kept failing with retryable errors (429/529/5xx/timeouts) until the attempts ran out."""

    status_code = 503
    type = "upstream_unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        retry_after = str(max(1, round(retry_after_s))) if retry_after_s is not None else "5"
        super().__init__(message, headers={"Retry-After": retry_after})


class UpstreamRejected(CascadeError):
    """Anthropic refused the request itself (400/401/403/404/413/422) or gave no usable answer."""

    status_code = 502
    type = "upstream_error"


class DeadlineExceeded(CascadeError):
    status_code = 504
    type = "deadline_exceeded"


class ConfigurationError(Exception):
    """Raised at start-up for settings that must not be served (a retired model, no API key)."""
