"""How a report buckets its rows: the groupings, their SQL keys, time buckets with gaps filled, totals, and
the names shown for teams and tasks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.errors import InvalidInput
from service.reports.window import MAX_HOURLY_SPAN, Window
from service.tenancy.keys import Scope

MAX_CATEGORIES = 200


EscalationGrouping = Literal["hour", "day", "task", "model", "label", "team"]


CostGrouping = Literal["day", "model", "task", "team"]


ESCALATION_GROUPINGS: tuple[str, ...] = ("hour", "day", "task", "model", "label", "team")


COST_GROUPINGS: tuple[str, ...] = ("day", "model", "task", "team")


def bucket_sql(group_by: str, created: str) -> str:
    return {
        "hour": f"date_trunc('hour', {created} AT TIME ZONE 'UTC')",
        "day": f"({created} AT TIME ZONE 'UTC')::date",
        "task": "task_hash",
        "model": "cheap_model",
        "label": "label",
        "team": "team_id",
    }[group_by]


def time_keys(group_by: str, window: Window) -> list[Any]:
    """Every hour or day bucket the window touches, so a chart shows quiet periods as zero."""
    if group_by == "day":
        day, last = window.start.date(), (window.end - timedelta(microseconds=1)).date()
        return [day + timedelta(days=i) for i in range((last - day).days + 1)]
    hour = window.start.replace(minute=0, second=0, microsecond=0, tzinfo=None)
    keys = []
    while hour < window.end.replace(tzinfo=None):
        keys.append(hour)
        hour += timedelta(hours=1)
    return keys


def key_out(group_by: str, key: Any, teams: dict[uuid.UUID, str]) -> str | None:
    if key is None:
        return None
    if group_by == "hour":
        return f"{key.isoformat()}Z"
    if group_by == "day":
        return str(key.isoformat())
    if group_by == "team":
        return teams.get(key, str(key))
    return str(key)


def with_totals(columns: dict[str, str], keys: str, inner: str, total_keys: str = "") -> str:
    """Aggregate `inner` per bucket, then add the totals row by summing the buckets.

    Every column is additive, and summing the few bucket rows lets the per-bucket aggregation run in parallel
    (GROUPING SETS would not). An empty window has no totals row.
    """
    per = ",\n".join(f"{expr} AS {name}" for name, expr in columns.items())
    totals = ",\n".join(
        f"sum({name})" + ("" if name.endswith("_sum") or name == "cost_usd" else "::bigint") + f" AS {name}"
        for name in columns
    )
    kept = {k.strip() for k in total_keys.split(",")}
    select_total = ", ".join(k.strip() if k.strip() in kept else "NULL" for k in keys.split(","))
    return f"""
        WITH per AS (SELECT {keys}, {per} FROM ({inner}) r GROUP BY {keys})
        SELECT {keys}, false AS is_total, {", ".join(columns)} FROM per
        UNION ALL
        SELECT {select_total}, true, {totals} FROM per {f"GROUP BY {total_keys}" if total_keys else ""}
        HAVING count(*) > 0
    """


def check_grouping(group_by: str, allowed: Sequence[str], scope: Scope, window: Window) -> None:
    if group_by not in allowed:
        raise InvalidInput(f"`group_by` must be one of {', '.join(allowed)}", field="group_by")
    if group_by == "team" and not scope.is_admin:
        raise InvalidInput("only the admin can group by team", field="group_by")
    if group_by == "hour" and window.end - window.start > MAX_HOURLY_SPAN:
        raise InvalidInput(f"hourly buckets cover at most {MAX_HOURLY_SPAN.days} days", field="group_by")


def ordered_keys(
    group_by: str, window: Window, by_key: dict[Any, Any], size: Any, teams: dict[uuid.UUID, str]
) -> tuple[list[Any], bool]:
    """Time buckets in order with the gaps filled; other buckets largest first (ties by the key shown), at
    most MAX_CATEGORIES."""
    if group_by in ("hour", "day"):
        return time_keys(group_by, window), False
    keys = sorted(by_key, key=lambda k: (-size(by_key[k]), key_out(group_by, k, teams) or ""))
    return keys[:MAX_CATEGORIES], len(keys) > MAX_CATEGORIES


async def team_names(session: AsyncSession) -> dict[uuid.UUID, str]:
    return {row.id: row.name for row in await session.execute(text("SELECT id, name FROM teams"))}


async def task_rows(
    session: AsyncSession, hashes: list[Any], window: Window, scope: Scope
) -> dict[Any, dict[str, Any]]:
    """The label set and instructions behind each task hash (one example row per hash), and for a named task's
    version (whose hash is its own) its name and version."""
    if not hashes:
        return {}
    rows = await session.execute(
        text(
            f"""
            SELECT h.task_hash, r.labels, r.instructions, t.name, t.version
            FROM unnest(CAST(:hashes AS text[])) AS h(task_hash)
            CROSS JOIN LATERAL (
                SELECT labels, instructions, task_id FROM requests
                WHERE task_hash = h.task_hash AND created_at >= :start AND created_at < :end{scope.sql()}
                LIMIT 1
            ) r
            LEFT JOIN tasks t ON t.id = r.task_id
            """
        ),
        {"hashes": [str(h) for h in hashes], **window.params(), **scope.params()},
    )
    return {
        row.task_hash: {
            "labels": row.labels,
            "instructions": row.instructions,
            "name": row.name,
            "version": row.version,
        }
        for row in rows
    }
