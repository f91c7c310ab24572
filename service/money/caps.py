"""Cap rows: SQL only, never commits. Every statement that moves money locks the rows in id order."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.tables import Cap, Team


@dataclass(frozen=True)
class CapKey:
    scope: str  # "global" or "team"
    team_id: uuid.UUID | None
    period: str  # "day" or "month"
    period_start: date

    @property
    def label(self) -> str:
        owner = "global" if self.scope == "global" else "team"
        return f"{owner} {'daily' if self.period == 'day' else 'monthly'}"


# A team with no cap of its own for a period still has a row for it, so that its spend is always counted
# (a cap set later starts from the truth); the row's cap is this, and reads show it as "no cap".
UNCAPPED = Decimal(1_000_000_000)


@dataclass(frozen=True)
class TeamCaps:
    """A team's own caps; None means no team cap for that period (the global caps still apply)."""

    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None


def period_keys(day: date, team_id: uuid.UUID | None = None) -> list[CapKey]:
    """The cap rows that one charge on `day` must fit under."""
    month = day.replace(day=1)
    keys = [CapKey("global", None, "day", day), CapKey("global", None, "month", month)]
    if team_id is not None:
        keys += [CapKey("team", team_id, "day", day), CapKey("team", team_id, "month", month)]
    return keys


# A cost above its reservation cannot be refused (it was billed): it is recorded, and the part that goes
# past the cap is kept in overrun_usd so the CHECK holds and the period refuses further work.
_SETTLE = text("""
    WITH locked AS (
        SELECT id FROM caps WHERE id = ANY(:ids) ORDER BY id FOR UPDATE
    )
    UPDATE caps
    SET spent_usd = caps.spent_usd + :cost,
        reserved_usd = caps.reserved_usd - :reserved,
        overrun_usd = caps.overrun_usd + GREATEST(
            0, caps.spent_usd + :cost + caps.reserved_usd - :reserved - caps.cap_usd - caps.overrun_usd),
        updated_at = now()
    FROM locked
    WHERE caps.id = locked.id
    RETURNING caps.id
""")

_LOCK = text("SELECT id FROM caps WHERE id = ANY(:ids) ORDER BY id FOR UPDATE")


class CapRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure(self, key: CapKey, cap_usd: Decimal) -> int:
        """Create the row for this key if missing (first charge of a period) and return its id."""
        stmt = (
            insert(Cap)
            .values(
                scope=key.scope, team_id=key.team_id, period=key.period, period_start=key.period_start, cap_usd=cap_usd
            )
            .on_conflict_do_nothing(constraint="uq_caps_scope_team_period")
        )
        await self.session.execute(stmt)
        found = await self.session.scalar(
            select(Cap.id).where(
                Cap.scope == key.scope,
                Cap.team_id.is_(None) if key.team_id is None else Cap.team_id == key.team_id,
                Cap.period == key.period,
                Cap.period_start == key.period_start,
            )
        )
        assert found is not None
        return found

    async def settle(self, ids: list[int], reserved: Decimal, cost: Decimal) -> None:
        rows = (await self.session.execute(_SETTLE, {"ids": ids, "reserved": reserved, "cost": cost})).all()
        if len(rows) != len(ids):
            raise LookupError(f"cap rows {ids} changed under a held reservation")

    async def lock(self, ids: list[int]) -> None:
        await self.session.execute(_LOCK, {"ids": ids})

    async def set_amount(self, key: CapKey, cap_usd: Decimal) -> None:
        """Set the cap of an existing row; never below what is already spent or held."""
        await self.session.execute(
            text("""
                UPDATE caps SET cap_usd = GREATEST(:cap, spent_usd + reserved_usd), updated_at = now()
                WHERE scope = :scope AND team_id IS NOT DISTINCT FROM :team_id
                  AND period = :period AND period_start = :start
            """),
            {
                "cap": cap_usd,
                "scope": key.scope,
                "team_id": key.team_id,
                "period": key.period,
                "start": key.period_start,
            },
        )

    async def current(self, day: date, team_id: uuid.UUID | None = None) -> list[Cap]:
        """The rows of the periods containing `day`: one team's, or (team_id None) every row."""
        month = day.replace(day=1)
        query = select(Cap).where(
            ((Cap.period == "day") & (Cap.period_start == day))
            | ((Cap.period == "month") & (Cap.period_start == month))
        )
        if team_id is not None:
            query = query.where(Cap.team_id == team_id)
        return list((await self.session.scalars(query.order_by(Cap.scope, Cap.team_id, Cap.period))).all())

    async def current_named(self, day: date) -> list[tuple[Cap, str | None]]:
        """Every row of the periods containing `day`, with its team's name (None for the global rows)."""
        month = day.replace(day=1)
        query = (
            select(Cap, Team.name)
            .outerjoin(Team, Team.id == Cap.team_id)
            .where(
                ((Cap.period == "day") & (Cap.period_start == day))
                | ((Cap.period == "month") & (Cap.period_start == month))
            )
            .order_by(Cap.scope, Team.name, Cap.period)
        )
        return [(row[0], row[1]) for row in await self.session.execute(query)]
