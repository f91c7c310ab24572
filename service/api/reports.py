"""Reports and the request audit list, for a team key (its own rows) or the admin key (every team's)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any

from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream

from service.api.errors import documented
from service.api.schemas.reports import CostReportOut, EscalationReportOut, RequestPageOut, RequestRowOut
from service.core.clock import utcnow
from service.core.errors import InvalidInput
from service.reports.audit import COLUMNS, Cursor, RequestFilter, csv_cell, export_requests, list_requests
from service.reports.window import Window
from service.runtime import Runtime
from service.tenancy.keys import Scope

_READ = documented(401, 403, 404, 422, 503)
Start = Annotated[
    str | None,
    QueryParameter(description="ISO 8601 date or date-time, inclusive (UTC if no offset); default: end - 7 days"),
]
End = Annotated[str | None, QueryParameter(description="ISO 8601 date or date-time, exclusive; default: now")]


@get("/v1/reports/escalations", summary="Escalation rate and reasons per bucket", responses=_READ)
async def escalations(
    reader: NamedDependency[Scope],
    runtime: NamedDependency[Runtime],
    start: Start = None,
    end: End = None,
    group_by: Annotated[str, QueryParameter(description="hour | day | task | model | label | team (admin)")] = "day",
) -> EscalationReportOut:
    window = Window.parse(start, end, utcnow())
    report = await runtime.reports.escalations(reader, window, group_by)
    return EscalationReportOut.model_validate(report)


@get("/v1/reports/costs", summary="Tokens, cost, savings and break-even per bucket", responses=_READ)
async def costs(
    reader: NamedDependency[Scope],
    runtime: NamedDependency[Runtime],
    start: Start = None,
    end: End = None,
    group_by: Annotated[str, QueryParameter(description="day | model | task | team (admin)")] = "day",
) -> CostReportOut:
    window = Window.parse(start, end, utcnow())
    return CostReportOut.model_validate(await runtime.reports.costs(reader, window, group_by))


def _format(request: Request[Any, Any, Any], format_: str | None) -> str:
    if format_ is None:
        return "csv" if "text/csv" in request.headers.get("accept", "") else "json"
    if format_ not in ("json", "csv", "ndjson"):
        raise InvalidInput("`format` must be json, csv or ndjson", field="format")
    return format_


async def _csv(rows: AsyncIterator[Any]) -> AsyncIterator[str]:
    def line(values: Iterable[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow([csv_cell(v) for v in values])
        return buffer.getvalue()

    yield line(COLUMNS)
    async for row in rows:
        yield line(row)


async def _ndjson(rows: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for row in rows:
        yield RequestRowOut.model_validate(row).model_dump_json() + "\n"


@get(
    "/v1/requests",
    summary="List and export requests, newest first",
    responses={
        200: ResponseSpec(
            data_container=RequestPageOut,
            description="A page of requests; with format=csv or ndjson, every matching row streamed as text/csv "
            "or application/x-ndjson instead",
        ),
        **_READ,
    },
)
async def list_(
    request: Request[Any, Any, Any],
    reader: NamedDependency[Scope],
    runtime: NamedDependency[Runtime],
    start: Annotated[str | None, QueryParameter(description="Inclusive; default: end - 30 days")] = None,
    end: End = None,
    escalated: Annotated[bool | None, QueryParameter(description="Only escalated (true) or not (false)")] = None,
    reason: Annotated[str | None, QueryParameter(description="Escalation reason, e.g. low_confidence")] = None,
    model: Annotated[str | None, QueryParameter(description="The model that gave the final answer")] = None,
    status: Annotated[str | None, QueryParameter(description="pending | ok | failed | refused")] = None,
    task: Annotated[str | None, QueryParameter(description="Task hash")] = None,
    limit: Annotated[int, QueryParameter(description="Page size, 1 to 1000 (JSON pages only)")] = 100,
    cursor: Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page")] = None,
    format_: Annotated[
        str | None,
        QueryParameter(name="format", description="json (a page), or csv / ndjson (every matching row, streamed)"),
    ] = None,
) -> Response[Any]:
    flt = RequestFilter(Window.parse(start, end, utcnow(), 30), escalated, reason, model, status, task)
    fmt = _format(request, format_)
    if fmt == "json":
        rows, next_cursor = await list_requests(
            runtime.db, reader, flt, limit, Cursor.decode(cursor) if cursor else None
        )
        page = RequestPageOut(
            items=[RequestRowOut.model_validate(r) for r in rows],
            next_cursor=next_cursor.encode() if next_cursor else None,
        )
        return Response(page, media_type=MediaType.JSON)
    rows_out = await export_requests(runtime.db, reader, flt)
    if fmt == "csv":
        return Stream(
            _csv(rows_out),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="requests.csv"'},
        )
    return Stream(_ndjson(rows_out), media_type="application/x-ndjson")
