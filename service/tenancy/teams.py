"""Teams, their keys and their caps: what the admin API and the CLI manage."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.database import Database
from service.core.errors import Conflict, NotFound
from service.money.caps import UNCAPPED, CapKey, CapRepository
from service.tables import ApiKey, Cap, Team
from service.tenancy.keys import hash_key, new_key


@dataclass(frozen=True)
class IssuedKey:
    id: uuid.UUID
    team: str
    key: str  # shown once
    prefix: str


class TeamRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, name: str) -> Team:
        team = await self.session.scalar(select(Team).where(Team.name == name))
        if team is None:
            raise NotFound(f"no team {name!r}")
        return team

    async def add(self, name: str, daily: Decimal | None, monthly: Decimal | None) -> Team | None:
        team_id = await self.session.scalar(
            insert(Team)
            .values(id=uuid.uuid4(), name=name, daily_cap_usd=daily, monthly_cap_usd=monthly)
            .on_conflict_do_nothing()
            .returning(Team.id)
        )
        return None if team_id is None else await self.session.get(Team, team_id)

    async def all(self) -> Sequence[Team]:
        return (await self.session.scalars(select(Team).order_by(Team.name))).all()

    async def keys(self, team_id: uuid.UUID) -> Sequence[ApiKey]:
        query = select(ApiKey).where(ApiKey.team_id == team_id).order_by(ApiKey.created_at)
        return (await self.session.scalars(query)).all()

    async def add_key(self, team_id: uuid.UUID, key: str) -> ApiKey:
        row = ApiKey(id=uuid.uuid4(), team_id=team_id, prefix=key[:12], key_hash=hash_key(key))
        self.session.add(row)
        await self.session.flush()
        return row

    async def revoke_key(self, team_id: uuid.UUID, key_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.team_id == team_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class Teams:
    """The team service: each method is one short transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, daily: Decimal | None = None, monthly: Decimal | None = None) -> Team:
        async with self.db.transaction() as session:
            team = await TeamRepository(session).add(name, daily, monthly)
        if team is None:
            raise Conflict(f"team {name!r} already exists")
        return team

    async def list(self) -> Sequence[Team]:
        async with self.db.transaction() as session:
            return await TeamRepository(session).all()

    async def issue_key(self, name: str) -> IssuedKey:
        key = new_key()
        async with self.db.transaction() as session:
            repo = TeamRepository(session)
            team = await repo.get(name)
            row = await repo.add_key(team.id, key)
        return IssuedKey(row.id, name, key, row.prefix)

    async def keys(self, name: str) -> Sequence[ApiKey]:
        async with self.db.transaction() as session:
            repo = TeamRepository(session)
            return await repo.keys((await repo.get(name)).id)

    async def revoke_key(self, name: str, key_id: uuid.UUID) -> None:
        async with self.db.transaction() as session:
            repo = TeamRepository(session)
            if not await repo.revoke_key((await repo.get(name)).id, key_id):
                raise NotFound(f"no active key {key_id} for team {name!r}")

    async def set_caps(self, name: str, daily: Decimal | None, monthly: Decimal | None, today: date) -> Team:
        """Set a team's caps; the current periods' rows follow at once (never below what is committed)."""
        async with self.db.transaction() as session:
            repo = TeamRepository(session)
            team = await repo.get(name)
            team.daily_cap_usd, team.monthly_cap_usd = daily, monthly
            caps = CapRepository(session)
            keys = [
                (CapKey("team", team.id, "day", today), UNCAPPED if daily is None else daily),
                (CapKey("team", team.id, "month", today.replace(day=1)), UNCAPPED if monthly is None else monthly),
            ]
            ids = [await caps.ensure(key, amount) for key, amount in keys]
            await caps.lock(ids)
            for key, amount in keys:
                await caps.set_amount(key, amount)
        return team

    async def current_caps(self, today: date) -> Sequence[tuple[Cap, str | None]]:
        async with self.db.transaction() as session:
            rows = await CapRepository(session).current(today)
            names = {t.id: t.name for t in await TeamRepository(session).all()}
        return [(row, names.get(row.team_id) if row.team_id else None) for row in rows]
