"""The request list as the rows say it should be, and as the API pages and exports it, in comparable form."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.reports.audit import COLUMNS
from tests.harness import Service
from tests.reports.recomputation import dec, get_json
from tests.reports.rows import Row, Window, requests_in


def listed(requests: list[Row], window: Window, team: str | None, **filters: Any) -> list[Row]:
    rows = requests_in(requests, window, team)
    for name, value in filters.items():
        column = {"reason": "escalation_reason", "task": "task_hash"}.get(name, name)
        rows = [r for r in rows if r[column] == value]
    return sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)


def canonical(values: dict[str, Any]) -> tuple[Any, ...]:
    """One list row, from the database, a JSON item or a CSV line, in comparable form."""
    out: list[Any] = []
    for column in COLUMNS:
        value = values[column]
        if value is None or value == "":
            out.append(None)
        elif column == "id":
            out.append(uuid.UUID(str(value)))
        elif column == "created_at":
            out.append(value if isinstance(value, datetime) else datetime.fromisoformat(value))
        elif column == "escalated":
            out.append(value if isinstance(value, bool) else {"true": True, "false": False}[str(value).lower()])
        elif column == "latency_ms":
            out.append(int(value))
        elif column in ("cost_usd", "all_strong_cost_usd"):
            out.append(dec(value) if isinstance(value, str) else value)  # the wire's strings are normalized
        elif column in ("confidence", "cheap_confidence"):
            out.append(Decimal(str(value)))  # a JSON number, a CSV cell or NUMERIC
        else:
            out.append(str(value))
    return tuple(out)


def params_of(window: Window, filters: dict[str, Any]) -> dict[str, str]:
    wire = {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in filters.items()}
    return {**window.params(), **wire}


async def walk(svc: Service, headers: dict[str, str], limit: int, **params: str) -> list[Row]:
    """Every page, following next_cursor; returns the items in order."""
    items: list[Row] = []
    cursor = None
    while True:
        page = await get_json(svc, "/v1/requests", headers, limit=limit, cursor=cursor, **params)
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit


async def export(svc: Service, headers: dict[str, str], how: str, **params: str) -> list[tuple[Any, ...]]:
    accept = {"accept": "text/csv"} if how == "accept" else {}
    fmt = None if how == "accept" else how
    response = await svc.client.get(
        "/v1/requests", params={**params, **({"format": fmt} if fmt else {})}, headers={**headers, **accept}
    )
    assert response.status_code == 200, response.text
    if how == "ndjson":
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.text.splitlines()
        return [canonical(json.loads(line)) for line in lines]
    assert response.headers["content-type"].startswith("text/csv")
    reader = csv.reader(io.StringIO(response.text, newline=""))
    header = next(reader)
    assert header == list(COLUMNS)
    return [canonical(dict(zip(header, line, strict=True))) for line in reader]
