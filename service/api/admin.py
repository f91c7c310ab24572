"""The admin API: teams, keys and caps. Only CASCADE_ADMIN_KEY opens it; a team key gets 403."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Router, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, JSONBody

from service.api.dependencies import presented_key
from service.api.errors import documented
from service.api.schemas.teams import AdminCapOut, AdminSpendOut, CapsIn, IssuedKeyOut, KeyOut, TeamIn, TeamOut
from service.api.spend import cap_out
from service.core.clock import utcnow
from service.core.errors import Forbidden, Unauthorized
from service.runtime import Runtime
from service.tables import Cap, Team
from service.tenancy.keys import authenticate, is_admin_key


async def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    runtime: Runtime = connection.app.state.runtime
    key = presented_key(connection)
    if key is None:
        raise Unauthorized("missing admin key: send `Authorization: Bearer <CASCADE_ADMIN_KEY>`")
    admin = runtime.settings.admin_key
    if is_admin_key(key, admin.get_secret_value() if admin else None):
        return
    if admin is not None and await authenticate(runtime.db, key) is None:
        raise Unauthorized("invalid admin key")
    raise Forbidden("the admin API needs CASCADE_ADMIN_KEY" + ("" if admin else ", which is not configured"))


_ADMIN = documented(401, 403, 503)
_TEAM = documented(401, 403, 404, 503)


def team_out(team: Team) -> TeamOut:
    return TeamOut(
        id=team.id,
        name=team.name,
        daily_usd=team.daily_cap_usd,
        monthly_usd=team.monthly_cap_usd,
        created_at=team.created_at,
    )


def admin_cap_out(cap: Cap, team: str | None) -> AdminCapOut:
    return AdminCapOut(**cap_out(cap).model_dump(), team=team)


@post("/teams", status_code=201, summary="Create a team", responses=documented(400, 401, 403, 409, 422, 503))
async def create_team(data: JSONBody[TeamIn], runtime: NamedDependency[Runtime]) -> TeamOut:
    return team_out(await runtime.teams.create(data.name, data.daily_usd, data.monthly_usd))


@get("/teams", summary="List teams", responses=_ADMIN)
async def list_teams(runtime: NamedDependency[Runtime]) -> list[TeamOut]:
    return [team_out(t) for t in await runtime.teams.list()]


@post("/teams/{team:str}/keys", status_code=201, summary="Create a key for a team (shown once)", responses=_TEAM)
async def create_key(team: FromPath[str], runtime: NamedDependency[Runtime]) -> IssuedKeyOut:
    issued = await runtime.teams.issue_key(team)
    return IssuedKeyOut(id=issued.id, team=issued.team, prefix=issued.prefix, key=issued.key)


@get("/teams/{team:str}/keys", summary="List a team's keys (prefix and dates only)", responses=_TEAM)
async def list_keys(team: FromPath[str], runtime: NamedDependency[Runtime]) -> list[KeyOut]:
    return [
        KeyOut(id=k.id, prefix=k.prefix, created_at=k.created_at, revoked_at=k.revoked_at)
        for k in await runtime.teams.keys(team)
    ]


@delete("/teams/{team:str}/keys/{key_id:uuid}", status_code=204, summary="Revoke a key at once", responses=_TEAM)
async def revoke_key(team: FromPath[str], key_id: FromPath[uuid.UUID], runtime: NamedDependency[Runtime]) -> None:
    await runtime.teams.revoke_key(team, key_id)


@put(
    "/teams/{team:str}/caps",
    summary="Set a team's daily and monthly caps",
    responses=documented(400, 401, 403, 404, 422, 503),
)
async def set_caps(team: FromPath[str], data: JSONBody[CapsIn], runtime: NamedDependency[Runtime]) -> TeamOut:
    return team_out(await runtime.teams.set_caps(team, data.daily_usd, data.monthly_usd, utcnow().date()))


@get("/spend", summary="Every cap row of the current periods", responses=_ADMIN)
async def all_spend(runtime: NamedDependency[Runtime]) -> AdminSpendOut:
    return AdminSpendOut(caps=[admin_cap_out(c, name) for c, name in await runtime.teams.current_caps(utcnow().date())])


admin_router = Router(
    path="/v1/admin",
    route_handlers=[create_team, list_teams, create_key, list_keys, revoke_key, set_caps, all_spend],
    guards=[admin_only],
    tags=["admin"],
)
