"""`cascade serve` and `cascade worker`: the service's long-running processes, the HTTP API and the job worker.

Both check the configuration and the database schema before they start; uvicorn and the runtime are imported
only when one of them runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets

from service.core.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run the job worker (Message Batches); several may run at once")
    worker.set_defaults(handler=_worker)


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


def _worker(settings: Settings, args: argparse.Namespace) -> None:
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
