"""POST /v1/classify: parse and bound the input, hand it to the cascade, shape the answer."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from pydantic import BaseModel

from service.api.errors import documented, error_details
from service.api.schemas.classify import AttemptOut, BatchIn, ClassifyIn, ClassifyOut
from service.api.schemas.common import Tokens
from service.cascade.classification import AttemptRecord, Classification, ClassifyCommand
from service.cascade.prompt import Task, text_problem
from service.cascade.response_cache import cache_key
from service.core.errors import CascadeError, InvalidInput, Replayed, UpstreamRejected
from service.core.logs import annotate
from service.core.settings import Settings
from service.runtime import Runtime
from service.tables import TaskVersion
from service.tasks.service import as_task, check_labels
from service.tenancy.idempotency import body_hash
from service.tenancy.keys import Caller

Out = TypeVar("Out", bound=BaseModel)

_RESPONSES = documented(400, 401, 402, 409, 413, 422, 429, 502, 503, 504)


async def task_of(data: ClassifyIn | BatchIn, caller: Caller, runtime: Runtime) -> TaskVersion | None:
    """The named task a request gives (the team's own; another team's is not found), or None for an inline one."""
    if data.task is None:
        if data.labels is None:
            raise InvalidInput("give `labels` (and optional `instructions`), or a named `task`", field="labels")
        return None
    if data.labels is not None or data.instructions is not None:
        raise InvalidInput("give either a named `task` or `labels` and `instructions`, not both", field="task")
    return await runtime.tasks.resolve(caller.team_id, data.task)


def to_command(
    data: ClassifyIn, caller: Caller, request_id: uuid.UUID, settings: Settings, version: TaskVersion | None = None
) -> ClassifyCommand:
    if (problem := text_problem(data.text, settings.max_text_chars)) is not None:
        raise InvalidInput(problem, field="text")
    if version is None:
        labels = data.labels or []
        check_labels(labels, data.instructions, settings)
        task = Task(tuple(labels), data.instructions or None)
        floor, whose = settings.threshold, "the server's"
        cheap, strong, shadow = settings.cheap_model, settings.strong_model, Decimal(0)
    else:
        task = as_task(version)
        floor, whose = version.threshold, f"task {version.name}@{version.version}'s"
        cheap, strong, shadow = version.cheap_model, version.strong_model, version.shadow_rate
    if data.threshold is not None and data.threshold < floor:
        raise InvalidInput(f"threshold may raise {whose} {floor} but not lower it", field="threshold")
    threshold = floor if data.threshold is None else data.threshold
    key = None
    if version is not None and version.cache_ttl_s > 0 and data.cache:
        key = cache_key(version.id, threshold, cheap, strong, data.text)
    return ClassifyCommand(
        request_id=request_id,
        team_id=caller.team_id,
        text=data.text,
        task=task,
        threshold=threshold,
        team_caps=caller.caps,
        cheap_model=cheap,
        strong_model=strong,
        shadow_rate=shadow,
        cache_key=key,
        cache_ttl_s=0 if version is None else version.cache_ttl_s,
    )


def attempt_out(a: AttemptRecord) -> AttemptOut:
    usage = a.usage
    return AttemptOut(
        attempt=a.attempt_no,
        stage=a.stage,
        model=a.model,
        outcome=a.outcome,
        label=a.label,
        confidence=a.confidence,
        stop_reason=a.stop_reason,
        escalation_reason=a.escalation_reason,
        tokens=Tokens(
            input=usage.input if usage else None,
            cache_write_5m=usage.cache_write_5m if usage else None,
            cache_write_1h=usage.cache_write_1h if usage else None,
            cache_read=usage.cache_read if usage else None,
            output=usage.output if usage else None,
        ),
        cost_usd=a.cost_usd,
        latency_ms=a.latency_ms,
        upstream_request_id=a.upstream_request_id,
    )


def classification_out(result: Classification) -> ClassifyOut:
    return ClassifyOut(
        id=result.id,
        label=result.label,
        confidence=result.confidence,
        model=result.model,
        escalated=result.escalated,
        escalation_reason=result.escalation_reason,
        attempts=[attempt_out(a) for a in result.attempts],
        cost_usd=result.cost_usd,
        latency_ms=result.latency_ms,
        cache_hit=result.cache_hit,
    )


def idempotency_key(headers: Any) -> str | None:
    key = headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidInput("Idempotency-Key must be 1 to 255 printable characters", field="Idempotency-Key")
    return str(key)


async def idempotently(
    runtime: Runtime,
    caller: Caller,
    key: str,
    digest: str,
    call_id: uuid.UUID,
    schema: type[Out],
    work: Callable[[], Awaitable[Out]],
    status: int = 200,
) -> Response[Out]:
    """Run `work` once for this Idempotency-Key and body (`digest`), Stripe's way: a repeat replays the stored
    answer (an error as the same error), another body is 422, a repeat while it runs is 409. A final answer
    (success, 4xx, 502) is stored; a transient one (503, 504, a cancellation) frees the key for a retry."""
    idempotency = runtime.idempotency
    stored = await idempotency.begin(caller.team_id, key, digest, call_id)
    if stored is not None:
        if stored.status >= 300:
            raise Replayed(stored.status, stored.body)
        return Response(
            schema.model_validate(stored.body), status_code=stored.status, headers={"idempotent-replayed": "true"}
        )
    try:
        async with idempotency.kept_alive(caller.team_id, key, call_id):
            out = await work()
    except CascadeError as exc:
        if exc.status_code < 500 or isinstance(exc, UpstreamRejected):
            body = {"error": error_details(exc), "request_id": str(call_id)}
            await _last_word(idempotency.finish(caller.team_id, key, call_id, exc.status_code, body))
        else:
            await _last_word(idempotency.abandon(caller.team_id, key, call_id))
        raise
    except BaseException:
        await _last_word(idempotency.abandon(caller.team_id, key, call_id))
        raise
    # Shielded: the work is paid for, so a client that hangs up now must not leave the key to a second run.
    await asyncio.shield(idempotency.finish(caller.team_id, key, call_id, status, out.model_dump(mode="json")))
    return Response(out, status_code=status)


async def _last_word(write: Awaitable[None]) -> None:
    """Store or free the key after a failure, whatever else is failing: if this write fails too, the claim
    stays until its TTL (a retry meanwhile is 409) and the original error is what the client sees."""
    with contextlib.suppress(Exception):
        await asyncio.shield(write)


@post("/v1/classify", status_code=200, responses=_RESPONSES, summary="Classify one text")
async def classify(
    data: JSONBody[ClassifyIn],
    request: Request[Any, Any, Any],
    caller: NamedDependency[Caller],
    runtime: NamedDependency[Runtime],
    call_id: NamedDependency[uuid.UUID],
) -> Response[ClassifyOut]:
    annotate(team_id=str(caller.team_id), key_id=str(caller.key_id))
    if runtime.settings.log_text:
        annotate(text=data.text)
    runtime.limiter.acquire(caller.team_id)
    command = to_command(data, caller, call_id, runtime.settings, await task_of(data, caller, runtime))

    async def work() -> ClassifyOut:
        return classification_out(await runtime.cascade.classify(command))

    key = idempotency_key(request.headers)
    if key is None:
        return Response(await work())
    digest = body_hash(data.model_dump(mode="json"))
    return await idempotently(runtime, caller, key, digest, call_id, ClassifyOut, work)
