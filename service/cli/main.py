"""The `cascade` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from rich.console import Console

from service.cli import jobs, manage, migration, report, serve, simulator
from service.core.errors import ConfigurationError
from service.core.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # Each family of commands adds its own parsers and handler, in the order `cascade --help` lists them.
    _register_demo(commands)
    serve.register(commands)  # serve, worker
    jobs.register(commands)
    migration.register(commands)  # migrate
    simulator.register(commands)
    manage.register(commands)  # teams, keys, caps
    report.register(commands)
    _register_tasks(commands)  # tasks, calibration, eval
    return parser


# The demo's and the tasks' commands are added here, not in service.cli.demo and service.cli.tasks: those
# modules import the whole service, which `cascade --help` and the other commands need not wait for.


def _register_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="run the whole cascade end to end and print the report")
    demo.add_argument("--requests", type=int, default=300)
    demo.add_argument("--concurrency", type=int, default=16)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--team", default="demo")
    demo.add_argument("--live", action="store_true", help="call the real API with ANTHROPIC_API_KEY")
    demo.add_argument("--json", action="store_true", help="print the report as JSON only")
    demo.add_argument("--keep-serving", action="store_true", help="keep the service up after the report")
    demo.set_defaults(handler=_demo)


def _register_tasks(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tasks_parser = commands.add_parser("tasks", help="a team's named tasks")
    tasks_parser.set_defaults(handler=_tasks)
    tasks = tasks_parser.add_subparsers(dest="action", required=True)
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
    cal.set_defaults(handler=_tasks)

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
    ev.set_defaults(handler=_tasks)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handler: Callable[[Settings, argparse.Namespace], None] = args.handler
    try:
        settings = Settings()
        handler(settings, args)
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


def _tasks(settings: Settings, args: argparse.Namespace) -> None:
    from service.cli import tasks as task_commands

    asyncio.run(task_commands.run(settings, args))
