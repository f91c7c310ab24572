"""/v1/tasks: a team's named, versioned tasks. The handlers parse and shape; service.tasks.service does the rest."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

from litestar import Response, Router, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api.errors import documented
from service.api.schemas.tasks import (
    AccuracyOut,
    CalibrationBinOut,
    CalibrationOut,
    CalibrationPointOut,
    ExampleIn,
    TaskIn,
    TaskListOut,
    TaskOut,
    TaskSummaryOut,
    TaskVersionSummary,
)
from service.cascade.prompt import Example
from service.core.clock import utcnow
from service.core.errors import InvalidInput
from service.core.logs import annotate
from service.reports.window import Window
from service.runtime import Runtime
from service.tables import TaskVersion
from service.tasks.calibration import Calibration, calibration
from service.tasks.service import new_spec
from service.tenancy.keys import Caller


def task_out(version: TaskVersion, versions: list[TaskVersion] | None = None) -> TaskOut:
    return TaskOut(
        id=version.id,
        name=version.name,
        version=version.version,
        labels=list(version.labels),
        instructions=version.instructions,
        examples=[ExampleIn(text=e["text"], label=e["label"]) for e in version.examples],
        threshold=float(version.threshold),
        cheap_model=version.cheap_model,
        strong_model=version.strong_model,
        shadow_rate=float(version.shadow_rate),
        prompt_cache=version.prompt_cache,
        cache_ttl_s=version.cache_ttl_s,
        created_at=version.created_at,
        versions=[TaskVersionSummary(version=v.version, created_at=v.created_at) for v in versions or []],
    )


@put(
    "/{name:str}",
    status_code=201,
    responses=documented(400, 401, 409, 413, 422, 503),
    summary="Store a task's definition as its next version (200 and the latest when nothing changed)",
)
async def put_task(
    name: FromPath[str], data: JSONBody[TaskIn], caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]
) -> Response[TaskOut]:
    annotate(team_id=str(caller.team_id), key_id=str(caller.key_id), task=name)
    spec = new_spec(
        runtime.settings,
        data.labels,
        data.instructions,
        [Example(e.text, e.label) for e in data.examples],
        data.threshold,
        data.cheap_model,
        data.strong_model,
        data.shadow_rate,
        data.prompt_cache,
        data.cache_ttl_s,
    )
    version, created = await runtime.tasks.put(caller.team_id, name, spec)
    return Response(task_out(version), status_code=201 if created else 200)


@get("/", responses=documented(401, 503), summary="The team's tasks, each at its latest version")
async def list_tasks(caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]) -> TaskListOut:
    return TaskListOut(
        tasks=[
            TaskSummaryOut(
                name=v.name,
                version=v.version,
                labels=list(v.labels),
                threshold=float(v.threshold),
                shadow_rate=float(v.shadow_rate),
                created_at=v.created_at,
            )
            for v in await runtime.tasks.latest(caller.team_id)
        ]
    )


@get("/{name:str}", responses=documented(401, 404, 503), summary="A task at its latest version, and its versions")
async def get_task(name: FromPath[str], caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]) -> TaskOut:
    versions = await runtime.tasks.versions(caller.team_id, name)
    return task_out(versions[0], versions)


@get("/{name:str}/versions/{version:int}", responses=documented(401, 404, 503), summary="One version of a task")
async def get_task_version(
    name: FromPath[str], version: FromPath[int], caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]
) -> TaskOut:
    return task_out(await runtime.tasks.get(caller.team_id, name, version))


@get(
    "/{name:str}/calibration",
    responses=documented(401, 404, 422, 503),
    summary="A task version's reliability diagram, the accuracy of kept answers, and the threshold for a target",
)
async def get_calibration(
    name: FromPath[str],
    caller: NamedDependency[Caller],
    runtime: NamedDependency[Runtime],
    version: Annotated[int | None, QueryParameter(description="The version; the latest by default")] = None,
    target: Annotated[str, QueryParameter(description="The agreement with the strong model to reach, 0 to 1")] = "0.98",
    bins: Annotated[int, QueryParameter(ge=2, le=50, description="Bins of the reliability diagram")] = 10,
    start: Annotated[str | None, QueryParameter(description="ISO 8601, inclusive; default: end - 30 days")] = None,
    end: Annotated[str | None, QueryParameter(description="ISO 8601, exclusive; default: now")] = None,
) -> CalibrationOut:
    try:
        goal = Decimal(target)
    except InvalidOperation:
        goal = Decimal("NaN")
    if not (goal.is_finite() and 0 <= goal <= 1):
        raise InvalidInput("target must be a number between 0 and 1", field="target")
    task = await runtime.tasks.get(caller.team_id, name, version)
    window = Window.parse(start, end, utcnow(), default_days=30)
    return calibration_out(await calibration(runtime.db, task, window, goal, bins))


def calibration_out(report: Calibration) -> CalibrationOut:
    return CalibrationOut(
        name=report.version.name,
        version=report.version.version,
        threshold=float(report.version.threshold),
        shadow_rate=float(report.version.shadow_rate),
        start=report.window.start,
        end=report.window.end,
        target=report.target,
        requests=report.requests,
        pairs=report.pairs,
        bins=[CalibrationBinOut.model_validate(b) for b in report.bins],
        kept_accuracy=AccuracyOut.model_validate(report.kept_accuracy),
        current=CalibrationPointOut.model_validate(report.current) if report.current else None,
        recommended=CalibrationPointOut.model_validate(report.recommended) if report.recommended else None,
        sweep=[CalibrationPointOut.model_validate(p) for p in report.sweep],
        notes=report.notes,
    )


router = Router("/v1/tasks", route_handlers=[put_task, list_tasks, get_task, get_task_version, get_calibration])
