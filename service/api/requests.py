"""GET /v1/requests/{id}: the audit record of one request, with the prices it was charged at."""

from __future__ import annotations

import uuid

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from service.api.errors import documented
from service.api.schemas.classify import AuditAttemptOut, RequestAuditOut
from service.api.schemas.common import PriceOut, Tokens
from service.reports.audit import request_audit
from service.runtime import Runtime
from service.tables import Attempt
from service.tenancy.keys import Scope


def audit_attempt_out(a: Attempt) -> AuditAttemptOut:
    return AuditAttemptOut(
        attempt=a.attempt_no,
        stage=a.stage,
        model=a.model,
        outcome=a.outcome or "pending",
        label=a.label,
        confidence=a.confidence,
        stop_reason=a.stop_reason,
        escalation_reason=a.escalation_reason,
        tokens=Tokens(
            input=a.input_tokens,
            cache_write_5m=a.cache_write_5m_tokens,
            cache_write_1h=a.cache_write_1h_tokens,
            cache_read=a.cache_read_tokens,
            output=a.output_tokens,
        ),
        cost_usd=a.cost_usd if a.cost_usd is not None else a.reserved_usd,
        latency_ms=a.latency_ms,
        upstream_request_id=a.upstream_request_id,
        price=PriceOut(
            id=a.price_id,
            input_per_mtok=a.price_input,
            cache_write_5m_per_mtok=a.price_cache_write_5m,
            cache_write_1h_per_mtok=a.price_cache_write_1h,
            cache_read_per_mtok=a.price_cache_read,
            output_per_mtok=a.price_output,
        ),
        reserved_usd=a.reserved_usd,
        reserved_at=a.reserved_at,
        settled_at=a.settled_at,
        settled_by=a.settled_by,
        error_message=a.error_message,
    )


@get("/v1/requests/{request_id:uuid}", summary="Audit one request", responses=documented(401, 404, 503))
async def get_request(
    request_id: FromPath[uuid.UUID], reader: NamedDependency[Scope], runtime: NamedDependency[Runtime]
) -> RequestAuditOut:
    request, attempts = await request_audit(runtime.db, reader, request_id)
    return RequestAuditOut(
        id=request.id,
        status=request.status,
        label=request.label,
        confidence=request.confidence,
        model=request.model,
        escalated=request.escalated,
        escalation_reason=request.escalation_reason,
        attempts=[audit_attempt_out(a) for a in attempts],
        cost_usd=request.cost_usd,
        latency_ms=request.latency_ms,
        labels=request.labels,
        instructions=request.instructions,
        threshold=request.threshold,
        task_hash=request.task_hash,
        cheap_model=request.cheap_model,
        strong_model=request.strong_model,
        error_type=request.error_type,
        error_message=request.error_message,
        created_at=request.created_at,
        finished_at=request.finished_at,
    )
