"""/v1/tasks: a team's named, versioned tasks. The handlers parse and shape; service.tasks does the rest."""

from __future__ import annotations

from litestar import Response, Router, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.api.errors import documented
from service.api.schemas import ExampleIn, TaskIn, TaskListOut, TaskOut, TaskSummaryOut, TaskVersionSummary
from service.keys import Caller
from service.logs import annotate
from service.prompt import Example
from service.runtime import Runtime
from service.tables import TaskVersion
from service.tasks import TaskSpec


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
    settings = runtime.settings
    spec = TaskSpec(
        labels=tuple(data.labels),
        instructions=data.instructions or None,
        examples=tuple(Example(e.text, e.label) for e in data.examples),
        threshold=settings.threshold if data.threshold is None else data.threshold,
        cheap_model=data.cheap_model or settings.cheap_model,
        strong_model=data.strong_model or settings.strong_model,
        shadow_rate=data.shadow_rate,
        prompt_cache=data.prompt_cache,
        cache_ttl_s=int(settings.cache_ttl_s) if data.cache_ttl_s is None else data.cache_ttl_s,
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


router = Router("/v1/tasks", route_handlers=[put_task, list_tasks, get_task, get_task_version])
