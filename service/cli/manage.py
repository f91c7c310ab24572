"""`cascade teams`, `cascade keys` and `cascade caps`: the admin API's operations, straight on the database."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from decimal import Decimal

from rich.console import Console
from rich.table import Table

from service.core.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    teams_parser = commands.add_parser("teams", help="manage teams")
    teams_parser.set_defaults(handler=_run)
    teams = teams_parser.add_subparsers(dest="action", required=True)
    team_create = teams.add_parser("create", help="create a team")
    team_create.add_argument("name")
    team_create.add_argument("--daily", type=Decimal, help="the team's daily cap in USD")
    team_create.add_argument("--monthly", type=Decimal, help="the team's monthly cap in USD")
    teams.add_parser("list", help="list teams and their caps")

    keys_parser = commands.add_parser("keys", help="manage API keys")
    keys_parser.set_defaults(handler=_run)
    keys = keys_parser.add_subparsers(dest="action", required=True)
    key_create = keys.add_parser("create", help="create a key for a team (the team is created if new)")
    key_create.add_argument("--team", required=True)
    keys.add_parser("list", help="list a team's keys (prefix and dates only)").add_argument("--team", required=True)
    key_revoke = keys.add_parser("revoke", help="revoke a key at once")
    key_revoke.add_argument("--team", required=True)
    key_revoke.add_argument("--id", required=True, type=uuid.UUID, help="the key's id, from `keys list`")

    caps_parser = commands.add_parser("caps", help="team caps and spend")
    caps_parser.set_defaults(handler=_run)
    caps = caps_parser.add_subparsers(dest="action", required=True)
    caps_set = caps.add_parser("set", help="set a team's caps (omit one to remove it)")
    caps_set.add_argument("--team", required=True)
    caps_set.add_argument("--daily", type=Decimal)
    caps_set.add_argument("--monthly", type=Decimal)
    caps.add_parser("show", help="every cap row of the current periods")


def _run(settings: Settings, args: argparse.Namespace) -> None:
    asyncio.run(_manage(settings, args))


async def _manage(settings: Settings, args: argparse.Namespace) -> None:
    """teams, keys and caps: the admin API's operations, straight on the database."""
    from service.core.clock import utcnow
    from service.core.database import Database, resolve_url
    from service.core.errors import CascadeError
    from service.tenancy.keys import issue_key
    from service.tenancy.teams import Teams

    db = Database(resolve_url(settings), settings)
    teams = Teams(db)
    console = Console()
    try:
        match args.command, args.action:
            case "teams", "create":
                team = await teams.create(args.name, args.daily, args.monthly)
                print(f"team {team.name} created ({team.id})")
            case "teams", "list":
                table = Table("team", "daily cap USD", "monthly cap USD", "created")
                for t in await teams.list():
                    table.add_row(t.name, _usd(t.daily_cap_usd), _usd(t.monthly_cap_usd), f"{t.created_at:%Y-%m-%d}")
                console.print(table)
            case "keys", "create":
                key = await issue_key(db, args.team)
                print(f"API key for team {args.team!r} (shown once; only its hash is stored):\n{key}")
            case "keys", "list":
                table = Table("prefix", "created", "revoked")
                table.add_column("id", no_wrap=True, min_width=36)
                for k in await teams.keys(args.team):
                    revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else ""
                    table.add_row(k.prefix, f"{k.created_at:%Y-%m-%d %H:%M}", revoked, str(k.id))
                console.print(table)
            case "keys", "revoke":
                await teams.revoke_key(args.team, args.id)
                print(f"key {args.id} revoked")
            case "caps", "set":
                team = await teams.set_caps(args.team, args.daily, args.monthly, utcnow().date())
                print(f"team {team.name}: daily {_usd(team.daily_cap_usd)}, monthly {_usd(team.monthly_cap_usd)}")
            case "caps", "show":
                table = Table("scope", "period", "cap", "spent", "reserved", "remaining")
                for cap, team_name in await teams.current_caps(utcnow().date()):
                    remaining = cap.cap_usd - cap.spent_usd - cap.reserved_usd
                    table.add_row(
                        team_name or "global",
                        f"{cap.period} {cap.period_start}",
                        _usd(cap.cap_usd),
                        _usd(cap.spent_usd),
                        _usd(cap.reserved_usd),
                        _usd(remaining),
                    )
                console.print(table)
    except CascadeError as exc:
        print(f"cascade: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from exc
    finally:
        await db.dispose()


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else format(value.normalize(), "f")
