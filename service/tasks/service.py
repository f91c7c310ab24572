"""Named, versioned tasks: what a team classifies, stored once and referred to by name.

`PUT /v1/tasks/{name}` stores a new version whenever the definition changes; versions are never edited, so a
request, a report or a calibration that names `name@3` always means the same prompt, threshold and models.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy.exc
from sqlalchemy import Select, func, select

from service.cascade.prompt import Example, Task, system_prompt, text_problem, unicode_problem
from service.core.clock import utcnow
from service.core.database import Database
from service.core.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from service.core.settings import Settings
from service.money.catalog import Catalog
from service.tables import TaskVersion

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_REF = re.compile(r"(?P<name>[^@]+)(?:@v?(?P<version>\d{1,9}))?")
_PUT_TRIES = 3
MAX_CACHE_TTL_S = 30 * 86_400
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class TaskSpec:
    """A task's definition, as PUT /v1/tasks/{name} takes it (checked by `check_spec`)."""

    labels: tuple[str, ...]
    instructions: str | None
    examples: tuple[Example, ...]
    threshold: Decimal
    cheap_model: str
    strong_model: str
    shadow_rate: Decimal
    prompt_cache: str
    cache_ttl_s: int

    def same_as(self, version: TaskVersion) -> bool:
        return self == spec_of(version)


def _examples(version: TaskVersion) -> tuple[Example, ...]:
    return tuple(Example(e["text"], e["label"]) for e in version.examples)


def new_spec(
    settings: Settings,
    labels: Sequence[str],
    instructions: str | None = None,
    examples: Sequence[Example] = (),
    threshold: Decimal | None = None,
    cheap_model: str | None = None,
    strong_model: str | None = None,
    shadow_rate: Decimal = Decimal(0),
    prompt_cache: str = "5m",
    cache_ttl_s: int | None = None,
) -> TaskSpec:
    """A definition as given (API or CLI), with the server's defaults for what was left out."""
    return TaskSpec(
        labels=tuple(labels),
        instructions=instructions or None,
        examples=tuple(examples),
        threshold=settings.threshold if threshold is None else threshold,
        cheap_model=cheap_model or settings.cheap_model,
        strong_model=strong_model or settings.strong_model,
        shadow_rate=shadow_rate,
        prompt_cache=prompt_cache,
        cache_ttl_s=int(settings.cache_ttl_s) if cache_ttl_s is None else cache_ttl_s,
    )


def spec_of(version: TaskVersion) -> TaskSpec:
    return TaskSpec(
        labels=tuple(version.labels),
        instructions=version.instructions,
        examples=_examples(version),
        threshold=version.threshold,
        cheap_model=version.cheap_model,
        strong_model=version.strong_model,
        shadow_rate=version.shadow_rate,
        prompt_cache=version.prompt_cache,
        cache_ttl_s=version.cache_ttl_s,
    )


def as_task(version: TaskVersion) -> Task:
    """The prompt a version sends (its id makes it a task of its own in the reports)."""
    return Task(
        labels=tuple(version.labels),
        instructions=version.instructions,
        examples=_examples(version),
        version_id=version.id,
        prompt_cache=version.prompt_cache,
    )


def check_labels(labels: Sequence[str], instructions: str | None, settings: Settings) -> None:
    """The label set and the instructions, checked as every route checks them (422 naming the field)."""
    if not 2 <= len(labels) <= settings.max_labels:
        raise InvalidInput(f"labels must have between 2 and {settings.max_labels} entries", field="labels")
    for label in labels:
        if (problem := unicode_problem(label, "labels")) is not None:
            raise InvalidInput(problem, field="labels")
        if not label.strip():
            raise InvalidInput("labels must not be empty", field="labels")
        if len(label) > settings.max_label_chars:
            raise InvalidInput(
                f"label {label[:20]!r}... is longer than {settings.max_label_chars} characters", field="labels"
            )
    if len(set(labels)) != len(labels):
        raise InvalidInput("labels must be unique", field="labels")
    if instructions is not None:
        if (problem := unicode_problem(instructions, "instructions")) is not None:
            raise InvalidInput(problem, field="instructions")
        if len(instructions) > settings.max_instructions_chars:
            raise InvalidInput(
                f"instructions are longer than {settings.max_instructions_chars} characters", field="instructions"
            )


def check_spec(spec: TaskSpec, settings: Settings, catalog: Catalog) -> None:
    check_labels(spec.labels, spec.instructions, settings)
    if len(spec.examples) > settings.max_task_examples:
        raise InvalidInput(f"a task has at most {settings.max_task_examples} examples", field="examples")
    for i, example in enumerate(spec.examples):
        if (problem := text_problem(example.text, settings.max_text_chars)) is not None:
            raise InvalidInput(f"example {i}: {problem}", field="examples")
        if example.label not in spec.labels:
            raise InvalidInput(f"example {i}: label {example.label!r} is not one of the labels", field="examples")
    prompt = len(system_prompt(Task(spec.labels, spec.instructions, spec.examples)))
    if prompt > settings.max_task_prompt_chars:
        raise InvalidInput(
            f"the task's prompt is {prompt} characters; the limit is {settings.max_task_prompt_chars}",
            field="examples",
        )
    if not (spec.threshold.is_finite() and 0 <= spec.threshold <= 1):
        raise InvalidInput("threshold must be a number between 0 and 1", field="threshold")
    if not (spec.shadow_rate.is_finite() and 0 <= spec.shadow_rate <= 1):
        raise InvalidInput("shadow_rate must be a number between 0 and 1", field="shadow_rate")
    if not 0 <= spec.cache_ttl_s <= MAX_CACHE_TTL_S:
        raise InvalidInput(f"cache_ttl_s must be between 0 and {MAX_CACHE_TTL_S}", field="cache_ttl_s")
    if spec.prompt_cache not in ("5m", "1h"):
        raise InvalidInput("prompt_cache must be 5m or 1h", field="prompt_cache")
    for field, model in (("cheap_model", spec.cheap_model), ("strong_model", spec.strong_model)):
        if (problem := model_problem(catalog, model)) is not None:
            raise InvalidInput(problem, field=field)


def model_problem(catalog: Catalog, model: str) -> str | None:
    """Why a model cannot be served today (not in the catalog, unpriced or retired), or None."""
    try:
        catalog.check_servable(model, utcnow().date())
    except ConfigurationError as exc:
        return str(exc)
    return None


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`name` (the latest version) or `name@3` (also `name@v3`)."""
    match = _REF.fullmatch(ref)
    if match is None or NAME.fullmatch(match["name"]) is None:
        raise InvalidInput(f"task {ref[:80]!r} is not a task name, or name@version", field="task")
    return match["name"], int(match["version"]) if match["version"] else None


class Tasks:
    def __init__(self, db: Database, settings: Settings, catalog: Catalog) -> None:
        self.db = db
        self.settings = settings
        self.catalog = catalog

    async def put(self, team_id: uuid.UUID, name: str, spec: TaskSpec) -> tuple[TaskVersion, bool]:
        """Store `spec` as the task's next version; (the latest version, False) if it is the same already."""
        if NAME.fullmatch(name) is None:
            raise InvalidInput(
                "a task name is 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter or a digit",
                field="name",
            )
        check_spec(spec, self.settings, self.catalog)
        for _ in range(_PUT_TRIES):
            try:
                async with self.db.transaction() as session:
                    latest = await session.scalar(_latest(team_id, name))
                    if latest is not None and spec.same_as(latest):
                        return latest, False
                    version = TaskVersion(
                        id=uuid.uuid4(),
                        team_id=team_id,
                        name=name,
                        version=1 if latest is None else latest.version + 1,
                        labels=list(spec.labels),
                        instructions=spec.instructions,
                        examples=[{"text": e.text, "label": e.label} for e in spec.examples],
                        threshold=spec.threshold,
                        cheap_model=spec.cheap_model,
                        strong_model=spec.strong_model,
                        shadow_rate=spec.shadow_rate,
                        prompt_cache=spec.prompt_cache,
                        cache_ttl_s=spec.cache_ttl_s,
                        created_at=utcnow(),
                    )
                    session.add(version)
                return version, True
            except sqlalchemy.exc.IntegrityError:
                continue  # another PUT of this name took the version number: read the latest again
        raise Conflict(f"task {name!r} is being changed by another request; try again")

    async def latest(self, team_id: uuid.UUID) -> list[TaskVersion]:
        """Each of the team's tasks at its latest version, by name."""
        async with self.db.transaction() as session:
            newest = (
                select(TaskVersion.name, func.max(TaskVersion.version).label("version"))
                .where(TaskVersion.team_id == team_id)
                .group_by(TaskVersion.name)
                .subquery()
            )
            rows = await session.scalars(
                select(TaskVersion)
                .join(newest, (newest.c.name == TaskVersion.name) & (newest.c.version == TaskVersion.version))
                .where(TaskVersion.team_id == team_id)
                .order_by(TaskVersion.name)
            )
            return list(rows.all())

    async def versions(self, team_id: uuid.UUID, name: str) -> list[TaskVersion]:
        """Every version of a task, the latest first; NotFound (404) when the team has no such task."""
        if NAME.fullmatch(name) is None:
            raise NotFound(f"no task {name[:80]!r}")
        async with self.db.transaction() as session:
            rows = await session.scalars(
                select(TaskVersion)
                .where(TaskVersion.team_id == team_id, TaskVersion.name == name)
                .order_by(TaskVersion.version.desc())
            )
            found = list(rows.all())
        if not found:
            raise NotFound(f"no task {name!r}")
        return found

    async def get(self, team_id: uuid.UUID, name: str, version: int | None = None) -> TaskVersion:
        if NAME.fullmatch(name) is None or (version is not None and not 1 <= version <= MAX_VERSION):
            raise NotFound(f"no task {name[:80]!r}" + ("" if version is None else f" at version {version}"))
        query = (
            _latest(team_id, name)
            if version is None
            else select(TaskVersion).where(
                TaskVersion.team_id == team_id, TaskVersion.name == name, TaskVersion.version == version
            )
        )
        # One statement in autocommit: a named task's every request reads it, so no BEGIN and COMMIT round trips.
        async with self.db.autocommit() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            raise NotFound(f"no task {name!r}" + ("" if version is None else f" at version {version}"))
        return TaskVersion(**row._mapping)

    async def resolve(self, team_id: uuid.UUID, ref: str) -> TaskVersion:
        """A request's `task`: `name` or `name@version`, the team's own only (another team's is not found), and
        still servable (a model it names may have retired since it was stored)."""
        name, version = parse_ref(ref)
        found = await self.get(team_id, name, version)
        self.check_models(found)
        return found

    def check_models(self, version: TaskVersion) -> None:
        for model in (version.cheap_model, version.strong_model):
            if (problem := model_problem(self.catalog, model)) is not None:
                raise InvalidInput(
                    f"task {version.name}@{version.version} cannot be run: {problem}; store a new version", field="task"
                )


def _latest(team_id: uuid.UUID, name: str) -> Select[TaskVersion]:
    return (
        select(TaskVersion)
        .where(TaskVersion.team_id == team_id, TaskVersion.name == name)
        .order_by(TaskVersion.version.desc())
        .limit(1)
    )
