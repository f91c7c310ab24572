"""Structured logs: one JSON line per HTTP request, and JSON for every other record when serving.

The access middleware opens a field dict for each request in a context variable; code deeper down (the cascade)
adds to it with `annotate`, and the middleware writes the one line when the response is done. Keys and texts are
never logged; the text only with CASCADE_LOG_TEXT on, for debugging.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "cascade.access"

_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("cascade_log_fields", default=None)


def open_fields(**fields: Any) -> tuple[dict[str, Any], contextvars.Token[dict[str, Any] | None]]:
    """Start collecting fields for the current request (the access middleware calls this)."""
    current: dict[str, Any] = dict(fields)
    return current, _fields.set(current)


def close_fields(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _fields.reset(token)


def annotate(**fields: Any) -> None:
    """Add fields to the current request's log line; a no-op outside a request (the CLI, the tests' direct calls)."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request's fields, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Configure the process's logging (cascade serve): JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in ("service", "cascade", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
    # uvicorn's own access log would be a second line per request, and not JSON.
    logging.getLogger("uvicorn.access").disabled = True
