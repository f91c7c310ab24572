"""The dashboard's histograms: the cheap model's confidence, and cost per request."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from service.core.database import Database
from service.reports.window import Window
from service.tenancy.keys import Scope


@dataclass(frozen=True)
class HistogramBin:
    lower: Decimal
    upper: Decimal
    counts: dict[str, int]


async def _histogram_rows(db: Database, sql: str, params: dict[str, Any]) -> list[Any]:
    async with db.transaction() as session:
        return list((await session.execute(text(sql), params)).all())


async def confidence_histogram(db: Database, scope: Scope, window: Window, bins: int = 20) -> list[HistogramBin]:
    """The cheap model's confidence in equal bins over [0, 1], split by whether the request escalated."""
    rows = await _histogram_rows(
        db,
        f"""
        SELECT least(width_bucket(cheap_confidence, 0, 1, :bins), :bins) AS bin, escalated, count(*) AS n
        FROM requests
        WHERE created_at >= :start AND created_at < :end AND status <> 'pending'
            AND cheap_confidence IS NOT NULL AND eval_run_id IS NULL{scope.sql()}
        GROUP BY 1, 2
        """,
        {"bins": bins, **window.params(), **scope.params()},
    )
    width = Decimal(1) / bins
    out = [HistogramBin(width * i, width * (i + 1), {"kept": 0, "escalated": 0}) for i in range(bins)]
    for row in rows:
        out[row.bin - 1].counts["escalated" if row.escalated else "kept"] += row.n
    return out


async def cost_histogram(db: Database, scope: Scope, window: Window, bins: int = 20) -> list[HistogramBin]:
    """Cost per request in equal bins from 0 to the window's most expensive request."""
    rows = await _histogram_rows(
        db,
        f"""
        WITH w AS (
            SELECT cost_usd FROM requests WHERE created_at >= :start AND created_at < :end{scope.sql()}
        ), m AS (SELECT max(cost_usd) AS hi FROM w)
        SELECT least(width_bucket(cost_usd, 0, m.hi, :bins), :bins) AS bin, m.hi, count(*) AS n
        FROM w, m WHERE m.hi > 0
        GROUP BY 1, 2
        """,
        {"bins": bins, **window.params(), **scope.params()},
    )
    if not rows:
        return []
    width = rows[0].hi / bins
    out = [HistogramBin(width * i, width * (i + 1), {"requests": 0}) for i in range(bins)]
    for row in rows:
        out[row.bin - 1].counts["requests"] += row.n
    return out
