"""POST /v1/classify/batch: one task over many texts, a result or an error per item, in order."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from service.api.classify import classification_out, idempotency_key, idempotently, task_of, to_command
from service.api.errors import documented, error_details
from service.api.schemas.classify import BatchIn, BatchItemOut, BatchOut, ClassifyIn
from service.api.schemas.common import ErrorBody
from service.cascade.batch import BatchItem, BatchRunner, ItemOutcome
from service.core.errors import InvalidInput
from service.core.logs import annotate
from service.core.settings import Settings
from service.runtime import Runtime
from service.tables import TaskVersion
from service.tenancy.idempotency import body_hash
from service.tenancy.keys import Caller

_RESPONSES = documented(400, 401, 409, 413, 422, 503)


def batch_items(data: BatchIn, caller: Caller, settings: Settings, version: TaskVersion | None) -> list[BatchItem]:
    """Check the shared fields once (a bad label set fails the batch: 422) and each text on its own (a bad
    text fails its item only)."""
    if not 1 <= len(data.items) <= settings.max_batch_items:
        raise InvalidInput(f"items must have between 1 and {settings.max_batch_items} entries", field="items")
    shared = {"labels": data.labels, "instructions": data.instructions, "threshold": data.threshold}
    to_command(ClassifyIn(text="-", **shared), caller, uuid.uuid4(), settings, version)
    items = []
    for index, item in enumerate(data.items):
        request_id = uuid.uuid4()
        try:
            command = to_command(ClassifyIn(text=item.text, **shared), caller, request_id, settings, version)
        except InvalidInput as exc:
            items.append(BatchItem(index, item.id, request_id, None, exc))
        else:
            items.append(BatchItem(index, item.id, request_id, command))
    return items


def item_out(outcome: ItemOutcome) -> BatchItemOut:
    item, error = outcome.item, outcome.error
    return BatchItemOut(
        index=item.index,
        id=item.client_id,
        request_id=item.request_id,
        status=200 if outcome.result is not None else (error.status_code if error else 500),
        result=classification_out(outcome.result) if outcome.result is not None else None,
        error=ErrorBody(**error_details(error)) if error is not None else None,
    )


def batch_out(batch_id: uuid.UUID, outcomes: list[ItemOutcome]) -> BatchOut:
    answered = [o.result for o in outcomes if o.result is not None]
    return BatchOut(
        id=batch_id,
        items=[item_out(o) for o in outcomes],
        ok=len(answered),
        failed=len(outcomes) - len(answered),
        cost_usd=sum((r.cost_usd for r in answered), Decimal(0)),
    )


async def classify_batch(
    data: JSONBody[BatchIn],
    request: Request[Any, Any, Any],
    caller: NamedDependency[Caller],
    runtime: NamedDependency[Runtime],
    call_id: NamedDependency[uuid.UUID],
) -> Response[BatchOut]:
    annotate(team_id=str(caller.team_id), key_id=str(caller.key_id))
    items = batch_items(data, caller, runtime.settings, await task_of(data, caller, runtime))
    runner = BatchRunner(runtime.cascade, runtime.limiter, runtime.settings.batch_concurrency)

    async def work() -> BatchOut:
        # Every item ends (answered, or failed for good in this batch), so the batch's answer is final.
        return batch_out(call_id, await runner.run(call_id, caller.team_id, items))

    key = idempotency_key(request.headers)
    if key is None:
        return Response(await work())
    digest = body_hash(data.model_dump(mode="json"))
    return await idempotently(runtime, caller, key, digest, call_id, BatchOut, work)


def route(settings: Settings) -> HTTPRouteHandler:
    """The route, with a body limit of its own (a batch carries many texts)."""
    return post(
        "/v1/classify/batch",
        status_code=200,
        responses=_RESPONSES,
        request_max_body_size=settings.max_batch_body_bytes,
        summary="Classify many texts of one task; one result or error per item",
    )(classify_batch)
