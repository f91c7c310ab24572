"""`cascade migrate`: upgrade (or downgrade) the database schema with the bundled Alembic migrations."""

from __future__ import annotations

import argparse

from service.core.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    migrate.set_defaults(handler=_migrate)


def _migrate(settings: Settings, args: argparse.Namespace) -> None:
    from service.core import schema
    from service.core.database import resolve_url

    url = resolve_url(settings)
    if args.downgrade:
        schema.downgrade(url, args.downgrade)
        print(f"downgraded to {args.downgrade}")
    else:
        schema.upgrade(url, args.revision)
        print(f"database at {args.revision} ({schema.head()})")
