"""Schema migrations, run by `cascade migrate` (never as a side effect of serving)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from service.core.database import Database
from service.core.errors import ConfigurationError

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking: call from a thread when an event loop is running (env.py runs its own)."""
    command.upgrade(_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(_config(url), revision)


def head() -> str | None:
    return ScriptDirectory.from_config(_config("")).get_current_head()


async def check_current(db: Database) -> None:
    """Refuse to serve a database that `cascade migrate` has not brought to head."""
    expected = head()
    try:
        async with db.transaction() as session:
            found = await session.scalar(text("SELECT version_num FROM alembic_version"))
    except ProgrammingError:
        found = None
    if found != expected:
        raise ConfigurationError(
            f"the database schema is at {found or 'nothing'} but this release needs {expected}: "
            "run `cascade migrate` first"
        )
