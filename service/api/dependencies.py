"""Dependencies shared by the handlers: the runtime and the authenticated caller."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency

from service.core.errors import Unauthorized
from service.runtime import Runtime
from service.tenancy.keys import Caller, Scope, authenticate, reader_scope


def provide_runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def provide_request_id(request: Request[Any, Any, Any]) -> uuid.UUID:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, uuid.UUID) else uuid.uuid4()


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    authorization = connection.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return connection.headers.get("x-api-key") or None


async def provide_caller(request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Caller:
    key = presented_key(request)
    if key is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
    caller = await authenticate(runtime.db, key)
    if caller is None:
        raise Unauthorized("invalid or revoked API key")
    return caller


async def provide_reader(request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Scope:
    """Whose rows the caller may read; the admin key may narrow to one team with `?team=`."""
    key = presented_key(request)
    if key is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
    admin = runtime.settings.admin_key
    team = request.query_params.get("team")
    return await reader_scope(runtime.db, key, admin.get_secret_value() if admin else None, team)
