"""Offline evaluation of a named task (`cascade eval`): choose a threshold before going live.

Each labelled text is asked of both models once (`Cascade.pair`: reserved, called and settled like any call,
so the caps hold and the ledger has every cost), and the answers are stored (`eval_runs`, `eval_items`). The
sweep then replays the cascade at every threshold from 0.00 to 1.00 from those answers alone, with no further
calls: an item whose cheap answer is usable and at least as confident as the threshold keeps it, any other
takes the strong model's answer. For each threshold it reports the accuracy against the gold labels, the
escalation rate, and the cost per 1,000 items (every cheap call, plus the strong calls of escalated items).
It marks the cheapest threshold whose accuracy is at least the strong model's alone, and recommends the
cheapest that is at least as accurate as both the strong model alone and the fixed 0.85 (so a team switching to
it loses accuracy against neither).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import IO

from sqlalchemy import insert, select, update

from service.cascade.classification import ClassifyCommand
from service.cascade.policy import Answer, Unavailable
from service.cascade.prompt import text_problem
from service.cascade.service import Cascade
from service.core.clock import utcnow
from service.core.database import Database
from service.core.errors import CostCapExceeded, InvalidInput
from service.core.settings import Settings
from service.money.caps import TeamCaps
from service.tables import EvalItem, EvalRun, TaskVersion
from service.tasks.service import as_task

PLACES = Decimal("0.000001")
MONEY_PLACES = Decimal("0.0001")
FIXED = Decimal("0.85")  # the one-size threshold a calibrated one is compared with


@dataclass(frozen=True)
class Labelled:
    text: str
    gold: str


@dataclass(frozen=True)
class Point:
    threshold: Decimal | None  # None: the strong model alone
    accuracy: Decimal
    escalation_rate: Decimal
    cost_per_1000_usd: Decimal


@dataclass(frozen=True)
class Sweep:
    run_id: uuid.UUID
    items: int
    points: list[Point]  # thresholds 0.00 .. 1.00
    all_strong: Point
    fixed: Point  # at FIXED
    at_strong: Point | None  # the cheapest threshold at or above the strong model's accuracy
    # The cheapest at least as accurate as the strong model alone and as FIXED: a threshold, or the strong model
    # alone (threshold None) when no cascade that accurate costs less.
    recommended: Point | None


def read_labelled(source: IO[str], labels: Sequence[str], settings: Settings) -> list[Labelled]:
    """Rows of {"text", "label"}: one JSON object per line; the gold label must be one of the task's."""
    rows = []
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise InvalidInput(f"line {number} is not valid JSON", field="data") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("label"), str):
            raise InvalidInput(f'line {number} must be an object with a string "text" and "label"', field="data")
        if (problem := text_problem(row["text"], settings.max_text_chars)) is not None:
            raise InvalidInput(f"line {number}: {problem}", field="data")
        if row["label"] not in labels:
            raise InvalidInput(f"line {number}: label {row['label']!r} is not one of the task's labels", field="data")
        rows.append(Labelled(row["text"], row["label"]))
    if not rows:
        raise InvalidInput("the file has no rows", field="data")
    return rows


async def run(
    cascade: Cascade,
    db: Database,
    version: TaskVersion,
    team_caps: TeamCaps,
    items: list[Labelled],
    source: str,
    concurrency: int,
    simulated: bool,
    progress: Callable[[int], None] = lambda done: None,
) -> uuid.UUID:
    """Ask both models about every item and store their answers; returns the run's id.

    Every paid call has its item stored. When a cap refuses a call, no further item is started, the items in
    progress finish, and the run ends `stopped` with the cap's message (its sweep covers the items it has)."""
    run_id = uuid.uuid4()
    async with db.transaction() as session:
        session.add(
            EvalRun(
                id=run_id,
                team_id=version.team_id,
                task_id=version.id,
                source=source[:500],
                item_count=len(items),
                status="running",
                simulated=simulated,
                created_at=utcnow(),
            )
        )
    slots = asyncio.Semaphore(concurrency)
    done = 0
    stopped: list[str] = []

    async def one(seq: int, item: Labelled) -> None:
        nonlocal done
        async with slots:
            if stopped:
                return
            command = ClassifyCommand(
                request_id=uuid.uuid4(),
                team_id=version.team_id,
                text=item.text,
                task=as_task(version),
                threshold=version.threshold,
                team_caps=team_caps,
                cheap_model=version.cheap_model,
                strong_model=version.strong_model,
                eval_run_id=run_id,
            )
            try:
                pair = await cascade.pair(command)
            except CostCapExceeded as refused:
                stopped.append(refused.message)  # nothing was spent on this item
                return
            if pair.refused and isinstance(pair.strong, Unavailable):
                stopped.append(pair.strong.detail)
            cheap = pair.cheap if isinstance(pair.cheap, Answer) else None
            strong = pair.strong if isinstance(pair.strong, Answer) else None
            async with db.transaction() as session:
                await session.execute(
                    insert(EvalItem).values(
                        run_id=run_id,
                        seq=seq,
                        gold=item.gold,
                        request_id=command.request_id,
                        cheap_label=cheap.label if cheap else None,
                        cheap_confidence=cheap.confidence if cheap else None,
                        cheap_cost_usd=pair.cheap_cost,
                        strong_label=strong.label if strong else None,
                        strong_cost_usd=pair.strong_cost,
                    )
                )
        done += 1
        progress(done)

    await asyncio.gather(*(one(seq, item) for seq, item in enumerate(items)))
    status = {"status": "stopped", "status_detail": stopped[0][:2000]} if stopped else {"status": "done"}
    async with db.transaction() as session:
        await session.execute(update(EvalRun).where(EvalRun.id == run_id).values(finished_at=utcnow(), **status))
    return run_id


async def stored_run(db: Database, run_id: uuid.UUID, version: TaskVersion) -> EvalRun:
    """The run, if it evaluated this task's version (of this team)."""
    async with db.transaction() as session:
        found = await session.scalar(select(EvalRun).where(EvalRun.id == run_id, EvalRun.team_id == version.team_id))
    if found is None or found.task_id != version.id:
        raise InvalidInput(f"no evaluation run {run_id} of task {version.name}@{version.version}", field="run")
    return found


async def stored(db: Database, run_id: uuid.UUID) -> list[EvalItem]:
    async with db.transaction() as session:
        rows = await session.scalars(select(EvalItem).where(EvalItem.run_id == run_id).order_by(EvalItem.seq))
        found = list(rows.all())
    if not found:
        raise InvalidInput(f"no evaluation run {run_id} (or it has no items)", field="run")
    return found


def _point(threshold: Decimal | None, items: Sequence[EvalItem]) -> Point:
    right, escalated, cost = 0, 0, Decimal(0)
    for item in items:
        keep = (
            threshold is not None
            and item.cheap_label is not None
            and item.cheap_confidence is not None
            and item.cheap_confidence >= threshold
        )
        answer = item.cheap_label if keep else item.strong_label
        right += answer == item.gold
        escalated += not keep
        cost += item.cheap_cost_usd if threshold is not None else Decimal(0)
        cost += Decimal(0) if keep else item.strong_cost_usd
    n = len(items)
    return Point(
        threshold,
        (Decimal(right) / n).quantize(PLACES, ROUND_HALF_EVEN),
        (Decimal(escalated) / n).quantize(PLACES, ROUND_HALF_EVEN),
        (1000 * cost / n).quantize(MONEY_PLACES, ROUND_HALF_EVEN),
    )


def sweep(run_id: uuid.UUID, items: Sequence[EvalItem]) -> Sweep:
    points = [_point(Decimal(k) / 100, items) for k in range(101)]
    all_strong, fixed = _point(None, items), _point(FIXED, items)
    at_strong = next((p for p in points if p.accuracy >= all_strong.accuracy), None)
    bar = max(all_strong.accuracy, fixed.accuracy)
    recommended = next((p for p in points if p.accuracy >= bar), None)
    if all_strong.accuracy >= bar and (
        recommended is None or all_strong.cost_per_1000_usd < recommended.cost_per_1000_usd
    ):
        recommended = all_strong  # no cascade beats sending everything to the strong model
    return Sweep(run_id, len(items), points, all_strong, fixed, at_strong, recommended)


def load_file(path: Path, labels: Sequence[str], settings: Settings) -> list[Labelled]:
    with path.open(encoding="utf-8") as source:
        return read_labelled(source, labels, settings)
