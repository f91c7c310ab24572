"""Bulk jobs: POST /v1/jobs (inline) or /v1/jobs/jsonl (an uploaded JSONL file), then status, results, cancel.

The handlers only parse and shape; service.jobs.service stores the job and service.jobs.worker runs it. Every
route is scoped to the caller's team (another team's job is a 404).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import IO, Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, JSONBody, Parameter
from litestar.response import Stream

from service.api.classify import idempotency_key, idempotently, to_command
from service.api.errors import documented
from service.api.schemas.classify import ClassifyIn
from service.api.schemas.common import money_str
from service.api.schemas.jobs import JobCountsOut, JobIn, JobListOut, JobOut, JobSummaryOut, StageCountsOut
from service.core.errors import InvalidInput
from service.core.logs import annotate
from service.core.settings import Settings
from service.jobs.service import JobSpec, JobStatus, ResultRow, progress
from service.runtime import Runtime
from service.tenancy.idempotency import body_hash
from service.tenancy.keys import Caller

_SPOOL_BYTES = 16_000_000  # an upload larger than this is spooled to a temporary file


@dataclass
class _JsonlUpload(Operation):
    """The upload is read as a stream (never parsed whole), so its body is documented here rather than typed."""

    def __post_init__(self) -> None:
        line = Schema(
            type=OpenAPIType.STRING,
            description='One JSON object per line: {"text": "...", "id"?: "..."} (blank lines are skipped).',
        )
        self.request_body = RequestBody(content={"application/x-ndjson": OpenAPIMediaType(schema=line)}, required=True)


def job_out(status: JobStatus) -> JobOut:
    job, counts = status.job, progress(status.counts)
    return JobOut(
        id=job.id,
        status=job.status,
        status_detail=job.status_detail,
        item_count=job.item_count,
        counts=JobCountsOut(
            total=counts["total"],
            cheap=StageCountsOut(**counts["cheap"]),
            strong=StageCountsOut(**counts["strong"]),
            escalated=counts["escalated"],
            done=counts["done"],
            failed=counts["failed"],
            canceled=counts["canceled"],
        ),
        cost_usd=status.counts.cost_usd,
        labels=list(job.labels),
        instructions=job.instructions,
        threshold=float(job.threshold),
        cheap_model=job.cheap_model,
        strong_model=job.strong_model,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
    )


def job_spec(
    labels: list[str], instructions: str | None, threshold: Decimal | None, caller: Caller, settings: Settings
) -> JobSpec:
    """The shared fields, checked as POST /v1/classify checks them (422 on a bad label set)."""
    command = to_command(
        ClassifyIn(text="-", labels=labels, instructions=instructions, threshold=threshold),
        caller,
        uuid.uuid4(),
        settings,
    )
    return JobSpec(caller.team_id, command.task, command.threshold)


async def create_job(
    data: JSONBody[JobIn],
    request: Request[Any, Any, Any],
    caller: NamedDependency[Caller],
    runtime: NamedDependency[Runtime],
    call_id: NamedDependency[uuid.UUID],
) -> Response[JobOut]:
    annotate(team_id=str(caller.team_id), key_id=str(caller.key_id))
    spec = job_spec(data.labels, data.instructions, data.threshold, caller, runtime.settings)
    key = idempotency_key(request.headers)
    digest = body_hash(data.model_dump(mode="json")) if key is not None else ""
    return await _create(runtime, caller, call_id, key, digest, spec, ((item.id, item.text) for item in data.items))


def _jsonl_items(upload: IO[bytes], max_line_bytes: int) -> Iterator[tuple[str | None, str]]:
    """Items of a JSONL upload: one JSON object per line, {"text": ..., "id"?: ...}; blank lines are skipped.
    A line is read only up to `max_line_bytes` (more than the longest text allowed can take, escaped)."""
    upload.seek(0)
    number = 0
    while raw := upload.readline(max_line_bytes + 1):
        number += 1
        if len(raw) > max_line_bytes:
            raise InvalidInput(f"line {number} is longer than {max_line_bytes} bytes", field="items")
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput(f"line {number} is not valid JSON", field="items") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise InvalidInput(f'line {number} must be an object with a string "text"', field="items")
        client_id = item.get("id")
        if client_id is not None and not isinstance(client_id, str | int):
            raise InvalidInput(f'line {number}: "id" must be a string or a number', field="items")
        if client_id is not None and len(str(client_id)) > 200:
            raise InvalidInput(f'line {number}: "id" is longer than 200 characters', field="items")
        yield (None if client_id is None else str(client_id)), item["text"]


async def create_job_from_jsonl(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Caller],
    runtime: NamedDependency[Runtime],
    call_id: NamedDependency[uuid.UUID],
    labels: Annotated[list[str], Parameter(description="An allowed label (repeat the parameter for each).")],
    instructions: Annotated[str | None, Parameter(description="Optional guidance, shared by every item.")] = None,
    threshold: Annotated[str | None, Parameter(description="Escalation threshold, shared by every item.")] = None,
) -> Response[JobOut]:
    annotate(team_id=str(caller.team_id), key_id=str(caller.key_id))
    try:
        level = None if threshold is None else Decimal(threshold)
    except InvalidOperation:
        raise InvalidInput("threshold must be a number between 0 and 1", field="threshold") from None
    if level is not None and not (level.is_finite() and 0 <= level <= 1):
        raise InvalidInput("threshold must be a number between 0 and 1", field="threshold")
    spec = job_spec(labels, instructions, level, caller, runtime.settings)
    key = idempotency_key(request.headers)
    # The upload is spooled first, so that no database connection waits on the client's network.
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as upload:
        digest = hashlib.sha256()
        digest.update(json.dumps([labels, instructions, threshold]).encode() + b"\n")
        async for chunk in request.stream():
            upload.write(chunk)
            digest.update(chunk)
        # The longest text allowed, every character escaped (a surrogate pair is 12 bytes for 2), and an id.
        max_line = 6 * runtime.settings.max_text_chars + 4096
        return await _create(runtime, caller, call_id, key, digest.hexdigest(), spec, _jsonl_items(upload, max_line))


async def _create(
    runtime: Runtime,
    caller: Caller,
    call_id: uuid.UUID,
    key: str | None,
    digest: str,
    spec: JobSpec,
    items: Iterable[tuple[str | None, str]],
) -> Response[JobOut]:
    """Store the job; with an Idempotency-Key, the same key and body answer with the first job, not a new one."""

    async def work() -> JobOut:
        created = await runtime.jobs.create(spec, items)
        annotate(job_id=str(created.job.id), items=created.job.item_count)
        return job_out(created)

    if key is None:
        return Response(await work(), status_code=202)
    return await idempotently(runtime, caller, key, digest, call_id, JobOut, work, status=202)


@get("/", responses=documented(401), summary="The team's latest jobs")
async def list_jobs(caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]) -> JobListOut:
    jobs = await runtime.jobs.list(caller.team_id)
    return JobListOut(
        jobs=[
            JobSummaryOut(
                id=j.id,
                status=j.status,
                status_detail=j.status_detail,
                item_count=j.item_count,
                created_at=j.created_at,
                finished_at=j.finished_at,
            )
            for j in jobs
        ]
    )


@get("/{job_id:uuid}", responses=documented(401, 404), summary="A job's status and counts per stage")
async def get_job(
    job_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]
) -> JobOut:
    return job_out(await runtime.jobs.status(caller.team_id, job_id))


@get(
    "/{job_id:uuid}/results",
    responses=documented(401, 404),
    media_type="application/x-ndjson",
    summary="One JSON line per ended item, in input order",
)
async def job_results(
    job_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]
) -> Stream:
    rows = runtime.jobs.results(caller.team_id, job_id)
    first = await anext(rows, None)  # a missing job is a 404 before the stream starts

    async def body() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield result_line(first)
        async for row in rows:
            yield result_line(row)

    return Stream(body(), media_type="application/x-ndjson")


def result_line(row: ResultRow) -> bytes:
    """One line of a job's results: the answer or the error, its cost (a decimal string, as everywhere in this
    API) and its request id (for GET /v1/requests/{id})."""
    line: dict[str, Any] = {"id": row.item_id, "status": row.status}
    if row.status == "done":
        assert row.confidence is not None
        line |= {
            "label": row.label,
            "confidence": float(row.confidence),
            "model": row.model,
            "escalated": row.escalated,
            "escalation_reason": row.escalation_reason,
        }
    else:
        line["error"] = {"type": row.error_type, "message": row.error_message}
    line["cost_usd"] = money_str(row.cost_usd)
    line["request_id"] = None if row.request_id is None else str(row.request_id)
    return (json.dumps(line) + "\n").encode()


@post("/{job_id:uuid}/cancel", status_code=202, responses=documented(401, 404), summary="Cancel a job")
async def cancel_job(
    job_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]
) -> JobOut:
    return job_out(await runtime.jobs.cancel(caller.team_id, job_id))


def router(settings: Settings) -> Router:
    """The routes; the two that take items have a body limit of their own."""
    create = post(
        "/",
        status_code=202,
        responses=documented(400, 401, 409, 413, 422, 503),
        request_max_body_size=settings.max_job_inline_bytes,
        summary="Create a job from inline items",
    )(create_job)
    upload = post(
        "/jsonl",
        status_code=202,
        responses=documented(400, 401, 409, 413, 422, 503),
        request_max_body_size=settings.max_job_body_bytes,
        summary='Create a job from a JSONL upload (one {"text", "id"?} object per line)',
        operation_class=_JsonlUpload,
    )(create_job_from_jsonl)
    return Router("/v1/jobs", route_handlers=[create, upload, list_jobs, get_job, job_results, cancel_job])
