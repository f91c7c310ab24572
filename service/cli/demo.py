"""`cascade demo`: embedded Postgres + simulator + the service, a concurrent workload, and the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.api.app import create_app
from service.api.server import serving
from service.core import schema
from service.core.clock import utcnow
from service.core.database import Database, resolve_url
from service.core.settings import Settings
from service.money.caps import UNCAPPED
from service.money.catalog import Catalog
from service.reports.run import RunReport, run_report
from service.simulator import Simulator, SimulatorConfig
from service.simulator.corpus import LABEL_SETS, SAMPLES, TASK_INSTRUCTIONS
from service.tenancy.keys import issue_key


@dataclass(frozen=True)
class DemoOptions:
    requests: int = 300
    concurrency: int = 16
    live: bool = False
    seed: int = 7
    team: str = "demo"
    as_json: bool = False
    keep_serving: bool = False


def workload(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    picks = [SAMPLES[rng.randrange(len(SAMPLES))] for _ in range(count)]
    return [{"text": s.text, "labels": LABEL_SETS[s.task], "instructions": TASK_INSTRUCTIONS[s.task]} for s in picks]


async def _send_all(
    url: str, key: str, bodies: list[dict[str, Any]], concurrency: int, console: Console, quiet: bool
) -> tuple[dict[int, int], str | None]:
    statuses: dict[int, int] = {}
    escalated_id: list[str] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    progress = Progress(
        TextColumn("classifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        with progress:
            bar = progress.add_task("classify", total=len(bodies))

            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    response = await client.post("/v1/classify", json=body)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200 and response.json()["escalated"] and not escalated_id:
                        escalated_id.append(response.json()["id"])
                    progress.advance(bar)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, (escalated_id[0] if escalated_id else None)


async def run_demo(settings: Settings, options: DemoOptions, console: Console) -> RunReport:
    quiet = options.as_json

    def say(message: str) -> None:
        if not quiet:
            console.print(message)

    live = options.live and settings.anthropic_api_key is not None
    if options.live and not live:
        raise SystemExit("--live needs ANTHROPIC_API_KEY")
    where = "DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.data_dir}/pg"
    say(f"[bold]Database:[/] {where}")
    db_url = await asyncio.to_thread(resolve_url, settings)
    await asyncio.to_thread(schema.upgrade, db_url)
    async with contextlib.AsyncExitStack() as stack:
        if live:
            say("[bold]Upstream:[/] the real Anthropic API (--live): this run costs real money")
            service_settings = settings
        else:
            reason = "no ANTHROPIC_API_KEY is set" if settings.anthropic_api_key is None else "--live not given"
            sim = await stack.enter_async_context(
                Simulator(
                    SimulatorConfig(
                        seed=options.seed, latency_ms=25, latency_per_output_token_ms=1, latency_jitter_ms=15
                    )
                )
            )
            say(
                f"[bold yellow]Upstream: the built-in Anthropic simulator at {sim.url} ({reason}); "
                "answers are simulated, not Claude's.[/]"
            )
            service_settings = settings.model_copy(
                update={"anthropic_api_key": "simulator", "anthropic_base_url": sim.url}
            )
        service_settings = Settings.model_validate(service_settings.model_dump())
        url = await stack.enter_async_context(serving(create_app(service_settings, db_url)))
        db = Database(db_url, settings)
        stack.push_async_callback(db.dispose)
        key = await issue_key(db, options.team)
        team_id = await _team_id(db, options.team)
        started = utcnow()
        bodies = workload(options.requests, options.seed)
        say(
            f"Sending {len(bodies)} requests over {len(LABEL_SETS)} label sets, "
            f"{options.concurrency} at a time, to {url}"
        )
        t0 = time.monotonic()
        statuses, escalated_id = await _send_all(url, key, bodies, options.concurrency, console, quiet)
        elapsed = time.monotonic() - t0
        report = await run_report(db, team_id, started)
        caps = await _caps(db_url, service_settings)
        if quiet:
            console.print_json(json.dumps(report_json(report, statuses, caps), default=str))
        else:
            _print_report(console, report, statuses, elapsed, caps, url, key, escalated_id, options.keep_serving)
        if options.keep_serving:
            say("Serving until Ctrl-C.")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
    return report


async def _team_id(db: Database, team: str) -> Any:
    from service.tenancy.keys import KeyRepository

    async with db.transaction() as session:
        return await KeyRepository(session).ensure_team(team)


async def _caps(db_url: str, settings: Settings) -> list[dict[str, str]]:
    from service.money.budget import Budget

    db = Database(db_url, settings)
    try:
        rows = await Budget(db, Catalog(), settings).status()
    finally:
        await db.dispose()
    return [
        {
            "cap": f"{r.scope} {r.period} {r.period_start}",
            "cap_usd": _money(r.cap_usd) if r.cap_usd < UNCAPPED else "none",
            "spent_usd": _money(r.spent_usd),
            "reserved_usd": _money(r.reserved_usd),
            "remaining_usd": _money(r.cap_usd - r.spent_usd - r.reserved_usd) if r.cap_usd < UNCAPPED else "-",
        }
        for r in rows
    ]


def _money(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def report_json(report: RunReport, statuses: dict[int, int], caps: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "requests": report.requests,
        "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "by_status": report.by_status,
        "escalated": report.escalated,
        "escalation_rate": str(report.escalation_rate),
        "escalation_reasons": report.reasons,
        "models": [
            {"model": m.model, "attempts": m.attempts, "tokens": dict(m.tokens), "cost_usd": _money(m.cost_usd)}
            for m in report.models
        ],
        "total_cost_usd": _money(report.total_cost_usd),
        "cost_per_request_usd": {
            "mean": _money(report.cost_mean_usd),
            "p50": _money(report.cost_p50_usd),
            "p95": _money(report.cost_p95_usd),
        },
        "all_strong_cost_usd": _money(report.all_strong_cost_usd),
        "savings_usd": _money(report.savings_usd),
        "savings_pct": str(round(report.savings_pct, 2)),
        "caps": caps,
    }


def _print_report(
    console: Console,
    report: RunReport,
    statuses: dict[int, int],
    elapsed: float,
    caps: list[dict[str, str]],
    url: str,
    key: str,
    escalated_id: str | None,
    keep_serving: bool,
) -> None:
    console.print()
    console.print(
        f"[bold]{report.requests} requests[/] in {elapsed:.1f}s; HTTP statuses: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.reasons.items())) or "none"
    console.print(
        f"Escalated: {report.escalated} ({report.escalation_rate * 100:.1f}% of answered); reasons: {reasons}"
    )
    table = Table(title="Tokens and cost per model")
    table.add_column("model", no_wrap=True)
    for column in ("calls", "input", "output", "cache w/r", "cost USD"):
        table.add_column(column, justify="right", no_wrap=True)
    for m in report.models:
        cache = f"{m.tokens['cache_write_5m'] + m.tokens['cache_write_1h']}/{m.tokens['cache_read']}"
        table.add_row(
            m.model, str(m.attempts), str(m.tokens["input"]), str(m.tokens["output"]), cache, f"{m.cost_usd:.6f}"
        )
    console.print(table)
    console.print(
        f"Cost per request: mean ${report.cost_mean_usd:.6f}, p50 ${report.cost_p50_usd:.6f}, "
        f"p95 ${report.cost_p95_usd:.6f}; total ${report.total_cost_usd:.6f}"
    )
    console.print(
        f"All to the strong model would have cost ${report.all_strong_cost_usd:.6f}: "
        f"the cascade saved ${report.savings_usd:.6f} ({report.savings_pct:.1f}%)"
    )
    caps_table = Table(title="Caps")
    for column in ("cap", "cap_usd", "spent_usd", "reserved_usd", "remaining_usd"):
        caps_table.add_column(column)
    for cap in caps:
        caps_table.add_row(*cap.values())
    console.print(caps_table)
    if escalated_id:
        how = "now" if keep_serving else "with `uv run cascade demo --keep-serving`"
        console.print(f"Audit one escalated request ({how}):")
        console.print(f"  curl -s -H 'Authorization: Bearer {key}' {url}/v1/requests/{escalated_id}", soft_wrap=True)
