"""`cascade report`: the escalation and cost reports from the ledger, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from rich.console import Console

from service.core.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser("report", help="escalation and cost reports from the ledger")
    report.add_argument("kind", choices=["escalations", "costs"])
    report.add_argument("--since", default="7d", help="7d, 24h, 90m or an ISO date/time (default 7d)")
    report.add_argument("--until", help="ISO date/time, exclusive (default now)")
    report.add_argument(
        "--group-by", default="day", help="escalations: hour|day|task|model|label|team; costs: day|model|task|team"
    )
    report.add_argument("--team", help="only this team (default: every team)")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.set_defaults(handler=_run)


def _run(settings: Settings, args: argparse.Namespace) -> None:
    asyncio.run(_report(settings, args))


async def _report(settings: Settings, args: argparse.Namespace) -> None:
    from service.api.schemas.reports import CostReportOut, EscalationReportOut
    from service.core import schema
    from service.core.clock import utcnow
    from service.core.database import Database, resolve_url
    from service.core.errors import CascadeError
    from service.money.catalog import Catalog
    from service.reports.output import print_table, to_csv
    from service.reports.service import Reports
    from service.reports.window import Window, parse_instant, parse_since
    from service.tenancy.keys import admin_scope

    db = Database(resolve_url(settings), settings)
    try:
        await schema.check_current(db)
        now = utcnow()
        end = parse_instant(args.until, "until") if args.until else now
        window = Window.parse(parse_since(args.since, now).isoformat(), end.isoformat(), now)
        reports = Reports(db, Catalog(), settings.cheap_model, settings.strong_model)
        scope = await admin_scope(db, args.team)
        if args.kind == "escalations":
            report: Any = await reports.escalations(scope, window, args.group_by)
            out: Any = EscalationReportOut
        else:
            report, out = await reports.costs(scope, window, args.group_by), CostReportOut
    except CascadeError as exc:
        print(f"cascade: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from exc
    finally:
        await db.dispose()
    if args.format == "json":
        print(out.model_validate(report).model_dump_json(indent=2))
    elif args.format == "csv":
        sys.stdout.write(to_csv(report))
    else:
        print_table(report, Console())
