"""`cascade jobs`: bulk jobs through the service's HTTP API (submit, status, results, cancel, wait), as a client."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from rich.console import Console

from service.core.errors import ConfigurationError
from service.core.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("jobs", help="bulk jobs through the service's API")
    parser.set_defaults(handler=_run)
    jobs = parser.add_subparsers(dest="action", required=True)
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


def _run(settings: Settings, args: argparse.Namespace) -> None:
    asyncio.run(_jobs(args))


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
