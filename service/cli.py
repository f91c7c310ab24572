"""The `cascade` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from rich.console import Console

from service.errors import ConfigurationError
from service.settings import Settings


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

    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")

    sim = commands.add_parser("simulator", help="run the Anthropic-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--latency-ms", type=float, default=0.0)
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="random fault rate, e.g. --fault 529=0.05 (repeatable)",
    )

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key for a team (the team is created if new)")
    create.add_argument("--team", required=True)
    return parser


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
        elif args.command == "keys":
            _keys_create(settings, args.team)
    except ConfigurationError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    from service.demo import DemoOptions, run_demo

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
    import uvicorn

    from service.runtime import Runtime

    Runtime.check(settings)  # the one clear message, before uvicorn starts
    asyncio.run(_check_schema(settings))
    uvicorn.run(
        "service.api.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
    )


async def _check_schema(settings: Settings) -> None:
    from service import schema
    from service.database import Database, resolve_url

    db = Database(resolve_url(settings), settings)
    try:
        await schema.check_current(db)
    finally:
        await db.dispose()


def _migrate(settings: Settings, args: argparse.Namespace) -> None:
    from service import schema
    from service.database import resolve_url

    url = resolve_url(settings)
    if args.downgrade:
        schema.downgrade(url, args.downgrade)
        print(f"downgraded to {args.downgrade}")
    else:
        schema.upgrade(url, args.revision)
        print(f"database at {args.revision} ({schema.head()})")


def _simulator(args: argparse.Namespace) -> None:
    from service.simulator import SimulatorConfig, serve_forever

    rates = {}
    for item in args.fault:
        kind, _, rate = item.partition("=")
        rates[kind] = float(rate)
    config = SimulatorConfig(seed=args.seed, latency_ms=args.latency_ms, fault_rates=rates)
    print(f"Anthropic simulator on http://{args.host}:{args.port} (simulated answers, not Claude's)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, args.host, args.port))


def _keys_create(settings: Settings, team: str) -> None:
    from service.database import Database, resolve_url
    from service.keys import issue_key

    async def create() -> str:
        db = Database(resolve_url(settings), settings)
        try:
            return await issue_key(db, team)
        finally:
            await db.dispose()

    key = asyncio.run(create())
    print(f"API key for team {team!r} (shown once; only its hash is stored):\n{key}")
