"""Team API keys: shown once, stored as a SHA-256 hash of a 256-bit random secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field

from sqlalchemy import String, Uuid, bindparam, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.database import Database
from service.core.errors import Forbidden, NotFound, Unauthorized
from service.money.caps import TeamCaps
from service.tables import ApiKey, Team

KEY_PREFIX = "csk_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    team_id: uuid.UUID
    team_name: str
    caps: TeamCaps = field(default_factory=TeamCaps)
    key_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Scope:
    """Whose rows a reader sees: one team's, or every team's (`team_id` None; the admin only)."""

    team_id: uuid.UUID | None
    team_name: str | None = None
    admin: bool = False

    @property
    def is_admin(self) -> bool:
        return self.admin

    def sql(self, column: str = "team_id") -> str:
        """A fixed SQL fragment; the team id itself is always a bound parameter."""
        return "" if self.team_id is None else f" AND {column} = :team_id"

    def params(self) -> dict[str, uuid.UUID]:
        return {} if self.team_id is None else {"team_id": self.team_id}


def is_admin_key(key: str, admin_key: str | None) -> bool:
    return admin_key is not None and hmac.compare_digest(key.encode(), admin_key.encode())


class KeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure_team(self, name: str) -> uuid.UUID:
        await self.session.execute(insert(Team).values(id=uuid.uuid4(), name=name).on_conflict_do_nothing())
        team_id = await self.session.scalar(select(Team.id).where(Team.name == name))
        assert team_id is not None
        return team_id

    async def add_key(self, team_id: uuid.UUID, key: str) -> None:
        self.session.add(ApiKey(team_id=team_id, prefix=key[:12], key_hash=hash_key(key)))

    async def team_id(self, name: str) -> uuid.UUID | None:
        return await self.session.scalar(select(Team.id).where(Team.name == name))


async def issue_key(db: Database, team: str) -> str:
    """Create the team if needed and a new key for it; the key is returned once and never stored."""
    key = new_key()
    async with db.transaction() as session:
        repo = KeyRepository(session)
        await repo.add_key(await repo.ensure_team(team), key)
    return key


# Fixed SQL, so each request skips building and cache-keying a query (it runs on every request).
_CALLER = """
    SELECT k.id AS key_id, t.id, t.name, t.daily_cap_usd, t.monthly_cap_usd
    FROM api_keys AS k JOIN teams AS t ON t.id = k.team_id
    WHERE k.revoked_at IS NULL AND {match}
"""
_CALLER_BY_HASH = text(_CALLER.format(match="k.key_hash = :key_hash")).bindparams(bindparam("key_hash", type_=String))
_CALLER_BY_ID = text(_CALLER.format(match="k.id = :key_id")).bindparams(bindparam("key_id", type_=Uuid))


async def authenticate(db: Database, key: str | None = None, key_id: uuid.UUID | None = None) -> Caller | None:
    """The caller a key (or a session's key id) stands for, if the key is live. It runs on every request: one
    SELECT in one round trip, no transaction around it. A revoked key fails at once."""
    async with db.autocommit() as connection:
        if key is not None:
            result = await connection.execute(_CALLER_BY_HASH, {"key_hash": hash_key(key)})
        else:
            result = await connection.execute(_CALLER_BY_ID, {"key_id": key_id})
        row = result.one_or_none()
    if row is None:
        return None
    return Caller(row.id, row.name, TeamCaps(row.daily_cap_usd, row.monthly_cap_usd), row.key_id)


async def admin_scope(db: Database, team: str | None = None) -> Scope:
    """The admin's view: every team, or the one named."""
    if team is None:
        return Scope(None, admin=True)
    if "\x00" in team or len(team) > 64:
        raise NotFound(f"no team named {team[:64]!r}")
    async with db.transaction() as session:
        team_id = await KeyRepository(session).team_id(team)
    if team_id is None:
        raise NotFound(f"no team named {team!r}")
    return Scope(team_id, team, admin=True)


def team_scope(caller: Caller, team: str | None = None) -> Scope:
    if team is not None and team != caller.team_name:
        raise Forbidden("a team key reads only its own team's rows")
    return Scope(caller.team_id, caller.team_name)


async def reader_scope(db: Database, key: str, admin_key: str | None, team: str | None = None) -> Scope:
    """What a key may read: the admin key sees every team (or the one named), a team key its own."""
    if is_admin_key(key, admin_key):
        return await admin_scope(db, team)
    caller = await authenticate(db, key)
    if caller is None:
        raise Unauthorized("invalid or revoked API key")
    return team_scope(caller, team)
