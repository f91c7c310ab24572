"""The `cascade` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from service.core.errors import ConfigurationError
from service.core.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole cascade end to end and print the report")
    demo.add_argument("--requests", type=int, default=300)
    demo.add_argument("--concurrency", type=int, default=16)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--team", default="demo")
    demo.add_argument("--live", action="store_true", help="call the real API with ANTHROPIC_API_KEY")
    demo.add_argument("--json", action="store_true", help="print the report as JSON only")
    demo.add_argument("--keep-serving", action="store_true", help="keep the service up after the report")

    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)

    commands.add_parser("worker", help="run the job worker (Message Batches); several may run at once")

    jobs = commands.add_parser("jobs", help="bulk jobs through the service's API").add_subparsers(
        dest="action", required=True
    )
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url", default=os.environ.get("CASCADE_URL", "http://127.0.0.1:8000"), help="the service (CASCADE_URL)"
    )
    client.add_argument("--key", default=os.environ.get("CASCADE_API_KEY"), help="a team's API key (CASCADE_API_KEY)")
    submit = jobs.add_parser("submit", parents=[client], help='submit a JSONL file of {"text", "id"?} lines')
    submit.add_argument("file", type=Path)
    submit.add_argument("--labels", required=True, help="the allowed labels, comma-separated")
    submit.add_argument("--instructions")
    submit.add_argument("--threshold")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    for action, help_ in (
        ("status", "a job's status and counts"),
        ("results", "stream a job's results as JSONL to stdout"),
        ("cancel", "cancel a job"),
        ("wait", "show a job's progress until it ends"),
    ):
        jobs.add_parser(action, parents=[client], help=help_).add_argument("id")

    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")

    sim = commands.add_parser("simulator", help="run the Anthropic-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--latency-ms", type=float, default=0.0)
    sim.add_argument("--batch-processing-s", type=float, default=0.0, help="how long a Message Batch stays in progress")
    sim.add_argument("--batch-expire-rate", type=float, default=0.0, help="share of batch requests that expire")
    sim.add_argument(
        "--workload",
        choices=["sentiment", "support_intent", "moderation"],
        help="print the bundled labelled texts of one label set as JSONL ({text, label}) and exit",
    )
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="random fault rate, e.g. --fault 529=0.05 (repeatable)",
    )

    teams = commands.add_parser("teams", help="manage teams").add_subparsers(dest="action", required=True)
    team_create = teams.add_parser("create", help="create a team")
    team_create.add_argument("name")
    team_create.add_argument("--daily", type=Decimal, help="the team's daily cap in USD")
    team_create.add_argument("--monthly", type=Decimal, help="the team's monthly cap in USD")
    teams.add_parser("list", help="list teams and their caps")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    key_create = keys.add_parser("create", help="create a key for a team (the team is created if new)")
    key_create.add_argument("--team", required=True)
    keys.add_parser("list", help="list a team's keys (prefix and dates only)").add_argument("--team", required=True)
    key_revoke = keys.add_parser("revoke", help="revoke a key at once")
    key_revoke.add_argument("--team", required=True)
    key_revoke.add_argument("--id", required=True, type=uuid.UUID, help="the key's id, from `keys list`")

    caps = commands.add_parser("caps", help="team caps and spend").add_subparsers(dest="action", required=True)
    caps_set = caps.add_parser("set", help="set a team's caps (omit one to remove it)")
    caps_set.add_argument("--team", required=True)
    caps_set.add_argument("--daily", type=Decimal)
    caps_set.add_argument("--monthly", type=Decimal)
    caps.add_parser("show", help="every cap row of the current periods")

    report = commands.add_parser("report", help="escalation and cost reports from the ledger")
    report.add_argument("kind", choices=["escalations", "costs"])
    report.add_argument("--since", default="7d", help="7d, 24h, 90m or an ISO date/time (default 7d)")
    report.add_argument("--until", help="ISO date/time, exclusive (default now)")
    report.add_argument(
        "--group-by", default="day", help="escalations: hour|day|task|model|label|team; costs: day|model|task|team"
    )
    report.add_argument("--team", help="only this team (default: every team)")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    tasks = commands.add_parser("tasks", help="a team's named tasks").add_subparsers(dest="action", required=True)
    put = tasks.add_parser("put", help="store a task's definition as its next version")
    put.add_argument("name")
    put.add_argument("--team", required=True)
    put.add_argument("--labels", required=True, help="the allowed labels, comma-separated")
    put.add_argument("--instructions")
    put.add_argument("--examples", type=Path, help='a JSONL file of few-shot examples, {"text", "label"} per line')
    put.add_argument("--threshold", type=Decimal)
    put.add_argument("--shadow-rate", type=Decimal, default=Decimal(0))
    put.add_argument("--cheap-model")
    put.add_argument("--strong-model")
    put.add_argument("--prompt-cache", choices=["5m", "1h"], default="5m")
    put.add_argument("--cache-ttl-s", type=int)
    tasks.add_parser("list", help="the team's tasks at their latest versions").add_argument("--team", required=True)

    cal = commands.add_parser("calibration", help="a task version's reliability diagram and recommended threshold")
    cal.add_argument("task", help="NAME or NAME@VERSION")
    cal.add_argument("--team", required=True)
    cal.add_argument("--target", type=Decimal, default=Decimal("0.98"), help="agreement to reach (default 0.98)")
    cal.add_argument("--since", default="30d", help="30d, 24h, or an ISO date/time (default 30d)")
    cal.add_argument("--format", choices=["table", "json"], default="table")

    ev = commands.add_parser("eval", help="evaluate a task on labelled texts and sweep its threshold")
    ev.add_argument("data", nargs="?", type=Path, help='a JSONL file of {"text", "label"} rows')
    ev.add_argument("--task", required=True, help="NAME or NAME@VERSION")
    ev.add_argument("--team", required=True)
    ev.add_argument("--run", type=uuid.UUID, help="sweep a stored run again (no calls) instead of a file")
    ev.add_argument("--concurrency", type=_positive, default=8, help="items asked at once (default 8)")
    ev.add_argument("--plot", type=Path, help="where to save the cost-accuracy plot (SVG; default eval-NAME.svg)")
    ev.add_argument("--live", action="store_true", help="call the real API with ANTHROPIC_API_KEY")
    ev.add_argument(
        "--simulate",
        action="store_true",
        help="answer with the bundled simulator even with DATABASE_URL set (its costs go to that database's caps)",
    )
    ev.add_argument("--format", choices=["table", "json"], default="table")
    return parser


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings()
        if args.command == "demo":
            _demo(settings, args)
        elif args.command == "serve":
            _serve(settings, args)
        elif args.command == "migrate":
            _migrate(settings, args)
        elif args.command == "simulator":
            _simulator(args)
        elif args.command == "report":
            asyncio.run(_report(settings, args))
        elif args.command == "worker":
            _worker(settings)
        elif args.command == "jobs":
            asyncio.run(_jobs(args))
        elif args.command in ("tasks", "calibration", "eval"):
            from service.cli import tasks as task_commands

            asyncio.run(task_commands.run(settings, args))
        else:
            asyncio.run(_manage(settings, args))
    except ConfigurationError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    from service.cli.demo import DemoOptions, run_demo

    options = DemoOptions(
        requests=args.requests,
        concurrency=args.concurrency,
        live=args.live,
        seed=args.seed,
        team=args.team,
        as_json=args.json,
        keep_serving=args.keep_serving,
    )
    asyncio.run(run_demo(settings, options, Console()))


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    import tempfile

    import uvicorn

    from service.core import logs
    from service.runtime import Runtime

    logs.configure(settings.log_level)
    Runtime.check(settings)  # the one clear message, before uvicorn starts
    asyncio.run(_check_schema(settings))
    if args.workers > 1 and settings.session_secret is None:
        # Each worker builds its own app; without a shared secret, a dashboard session signed by one worker
        # would be refused by the others. The workers inherit this process's environment.
        os.environ["CASCADE_SESSION_SECRET"] = secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # The workers' counters are summed through files here, so any worker's /metrics tells the total.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="cascade-metrics-")
            )
        uvicorn.run(
            "service.api.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop" if _has("uvloop") else "asyncio",
            http="httptools" if _has("httptools") else "h11",
            log_config=None,  # logs.configure() owns logging, in this process and in every worker
            access_log=False,  # the app writes one JSON line per request
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
            backlog=2048,
        )


def _worker(settings: Settings) -> None:
    """The job loop (and the reservation sweeper) until SIGTERM or SIGINT; the pass in progress finishes."""
    import signal

    from service.core import logs
    from service.core.database import resolve_url
    from service.runtime import Runtime

    logs.configure(settings.log_level)
    Runtime.check(settings)
    asyncio.run(_check_schema(settings))

    async def work() -> None:
        runtime = Runtime.build(settings, resolve_url(settings))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await runtime.start()
            async with runtime.sweeping():
                await runtime.worker.run(stop)
        finally:
            await runtime.aclose()

    asyncio.run(work())


async def _jobs(args: argparse.Namespace) -> None:
    import httpx

    from service.jobs.client import JobClient, JobClientError, stdout_binary, summary

    if not args.key:
        raise ConfigurationError("an API key is needed: --key or CASCADE_API_KEY")
    client = JobClient(args.url, args.key)
    console = Console(stderr=True)
    try:
        if args.action == "submit":
            labels = [label.strip() for label in args.labels.split(",") if label.strip()]
            job = await client.submit(args.file, labels, args.instructions, args.threshold)
            if args.no_wait:
                print(job["id"])
                return
            console.print(f"job {job['id']}: {job['item_count']} items")
            print(summary(await client.wait(job["id"], console)))
        elif args.action == "wait":
            print(summary(await client.wait(args.id, console)))
        elif args.action == "status":
            print(summary(await client.status(args.id)))
        elif args.action == "cancel":
            print(summary(await client.cancel(args.id)))
        elif args.action == "results":
            lines = await client.results(args.id, stdout_binary())
            console.print(f"{lines} result lines")
    except JobClientError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    except httpx.HTTPError as exc:
        print(f"cascade: the service at {args.url} did not answer: {exc or type(exc).__name__}", file=sys.stderr)
        raise SystemExit(1) from exc
    except OSError as exc:
        print(f"cascade: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        raise SystemExit(1) from exc


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


async def _check_schema(settings: Settings) -> None:
    from service.core import schema
    from service.core.database import Database, resolve_url

    db = Database(resolve_url(settings), settings)
    try:
        await schema.check_current(db)
    finally:
        await db.dispose()


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


def _simulator(args: argparse.Namespace) -> None:
    from service.simulator import SimulatorConfig, serve_forever
    from service.simulator.corpus import SAMPLES

    if args.workload:
        for sample in SAMPLES:
            if sample.task == args.workload:
                print(json.dumps({"text": sample.text, "label": sample.truth}, ensure_ascii=False))
        return

    rates = {}
    for item in args.fault:
        kind, _, rate = item.partition("=")
        rates[kind] = float(rate)
    config = SimulatorConfig(
        seed=args.seed,
        latency_ms=args.latency_ms,
        fault_rates=rates,
        batch_processing_s=args.batch_processing_s,
        batch_expire_rate=args.batch_expire_rate,
    )
    print(f"Anthropic simulator on http://{args.host}:{args.port} (simulated answers, not Claude's)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, args.host, args.port))


async def _manage(settings: Settings, args: argparse.Namespace) -> None:
    """teams, keys and caps: the admin API's operations, straight on the database."""
    from service.core.database import Database, resolve_url
    from service.core.errors import CascadeError
    from service.money.budget import utcnow
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


async def _report(settings: Settings, args: argparse.Namespace) -> None:
    from service.api.schemas import CostReportOut, EscalationReportOut
    from service.core import schema
    from service.core.database import Database, resolve_url
    from service.core.errors import CascadeError
    from service.money.budget import utcnow
    from service.money.catalog import Catalog
    from service.reports.output import print_table, to_csv
    from service.reports.service import Reports, Window, parse_instant, parse_since
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


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else format(value.normalize(), "f")
