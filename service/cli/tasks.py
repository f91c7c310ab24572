"""`cascade tasks`, `cascade calibration` and `cascade eval`: named tasks from the command line, on the database
(and, for an evaluation, the upstream: the real API with ANTHROPIC_API_KEY, else the bundled simulator)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from service.cascade.prompt import Example
from service.core import schema
from service.core.clock import utcnow
from service.core.database import Database, resolve_url
from service.core.errors import CascadeError, InvalidInput
from service.core.settings import Settings
from service.money.caps import TeamCaps
from service.money.catalog import Catalog
from service.reports.window import Window, parse_since
from service.runtime import Runtime
from service.simulator import Simulator, SimulatorConfig
from service.tables import Team
from service.tasks import evaluation
from service.tasks.calibration import Calibration, calibration
from service.tasks.plot import render
from service.tasks.service import Tasks, new_spec, parse_ref
from service.tenancy.teams import TeamRepository


async def run(settings: Settings, args: argparse.Namespace) -> None:
    db = Database(resolve_url(settings), settings)
    console = Console()
    try:
        await schema.check_current(db)
        team = await _team(db, args.team)
        tasks = Tasks(db, settings, Catalog())
        if args.command == "tasks" and args.action == "put":
            await _put(tasks, team, args, settings, console)
        elif args.command == "tasks":
            _task_table(console, await tasks.latest(team.id))
        elif args.command == "calibration":
            name, version = parse_ref(args.task)
            task = await tasks.get(team.id, name, version)
            window = Window(parse_since(args.since, utcnow()), utcnow())
            report = await calibration(db, task, window, args.target)
            print_calibration(console, report) if args.format == "table" else console.print_json(_json(report))
        else:
            await _evaluate(settings, db, tasks, team, args, console)
    except CascadeError as exc:
        console.print(f"cascade: {escape(exc.message)}", style="red", highlight=False)
        raise SystemExit(1) from exc
    finally:
        await db.dispose()


def percent(value: Decimal) -> str:
    return f"{value * 100:.1f}%"


async def _team(db: Database, name: str) -> Team:
    async with db.transaction() as session:
        return await TeamRepository(session).get(name)


async def _put(tasks: Tasks, team: Team, args: argparse.Namespace, settings: Settings, console: Console) -> None:
    examples: tuple[Example, ...] = ()
    if args.examples:
        lines = args.examples.read_text(encoding="utf-8").splitlines()
        try:
            examples = tuple(Example(r["text"], r["label"]) for r in (json.loads(x) for x in lines if x.strip()))
        except (ValueError, KeyError, TypeError):
            raise InvalidInput('--examples: each line must be {"text": ..., "label": ...}', field="examples") from None
        if not all(isinstance(e.text, str) and isinstance(e.label, str) for e in examples):
            raise InvalidInput('--examples: "text" and "label" must be strings', field="examples")
    spec = new_spec(
        settings,
        [label.strip() for label in args.labels.split(",") if label.strip()],
        args.instructions,
        examples,
        args.threshold,
        args.cheap_model,
        args.strong_model,
        args.shadow_rate,
        args.prompt_cache,
        args.cache_ttl_s,
    )
    version, created = await tasks.put(team.id, args.name, spec)
    what = "stored as version" if created else "unchanged at version"
    console.print(f"task {version.name} {what} {version.version} ({version.id})", highlight=False)


def _task_table(console: Console, versions: list[Any]) -> None:
    table = Table("task", "version", "labels", "threshold", "shadow rate", "models", "created")
    for v in versions:
        table.add_row(
            escape(v.name),
            str(v.version),
            escape(", ".join(v.labels)),
            f"{v.threshold:f}",
            f"{v.shadow_rate:f}",
            f"{v.cheap_model} → {v.strong_model}",
            f"{v.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


def print_calibration(console: Console, report: Calibration) -> None:
    v = report.version
    console.print(
        f"[bold]{escape(v.name)}@{v.version}[/]: {report.requests} decided requests, {report.pairs} pairs with the "
        f"strong model, {report.window.start:%Y-%m-%d} to {report.window.end:%Y-%m-%d}",
        highlight=False,
    )
    bins = Table("confidence", "requests", "escalated pairs", "shadow pairs", "mean confidence", "agreement")
    for b in report.bins:
        bins.add_row(
            f"{b.lower:.2f}-{b.upper:.2f}",
            str(b.requests),
            str(b.escalated_pairs),
            str(b.shadow_pairs),
            "—" if b.mean_confidence is None else f"{b.mean_confidence:.3f}",
            "—" if b.agreement is None else percent(b.agreement),
        )
    console.print(bins)
    kept = report.kept_accuracy
    if kept.agreement is not None and kept.low is not None and kept.high is not None:
        console.print(
            f"kept answers' accuracy (agreement with the strong model): {percent(kept.agreement)}, 95% interval "
            f"{percent(kept.low)} to {percent(kept.high)}, from {kept.pairs} shadow pairs",
            highlight=False,
        )
    points = Table("", "threshold", "escalation rate", "agreement", "cost per 1,000")
    for title, p in (("current", report.current), (f"for {percent(report.target)}", report.recommended)):
        if p is not None:
            agreement = "—" if p.agreement is None else percent(p.agreement)
            points.add_row(
                title, f"{p.threshold:.2f}", percent(p.escalation_rate), agreement, f"${p.cost_per_1000_usd}"
            )
    console.print(points)
    for note in report.notes:
        console.print(f"note: {escape(note)}", style="yellow", highlight=False)


def _json(report: Calibration) -> str:
    from service.api.tasks import calibration_out

    return calibration_out(report).model_dump_json()


@contextlib.asynccontextmanager
async def _upstream(settings: Settings, live: bool, console: Console) -> AsyncIterator[Settings]:
    if live:
        if settings.anthropic_api_key is None:
            raise SystemExit("--live needs ANTHROPIC_API_KEY")
        console.print("[bold]Upstream:[/] the real Anthropic API (--live): this evaluation costs real money")
        yield settings
        return
    async with Simulator(SimulatorConfig()) as sim:
        console.print(
            f"[bold yellow]Upstream: the built-in Anthropic simulator at {sim.url} (no --live); answers are "
            "simulated, not Claude's.[/]"
        )
        update = {"anthropic_api_key": "simulator", "anthropic_base_url": sim.url}
        yield Settings.model_validate(settings.model_copy(update=update).model_dump())


async def _evaluate(
    settings: Settings, db: Database, tasks: Tasks, team: Team, args: argparse.Namespace, console: Console
) -> None:
    name, version_no = parse_ref(args.task)
    version = await tasks.get(team.id, name, version_no)
    if args.run is not None:
        run_id = args.run
    elif args.data is None:
        raise SystemExit("cascade eval: give a data file, or --run ID to sweep a stored run")
    else:
        tasks.check_models(version)
        if not args.live and settings.database_url and not args.simulate:
            raise SystemExit(
                "cascade eval: without --live the answers come from the bundled simulator, and their simulated "
                "costs would be charged to the caps and ledger of DATABASE_URL. Pass --live to ask the real API, "
                "--simulate to accept that, or unset DATABASE_URL to use the embedded database."
            )
        items = evaluation.load_file(args.data, version.labels, settings)
        async with _upstream(settings, args.live, console) as upstream_settings:
            runtime = Runtime.build(upstream_settings, db.url)
            try:
                caps = TeamCaps(team.daily_cap_usd, team.monthly_cap_usd)
                with Progress(
                    "both models", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
                ) as bar:
                    job = bar.add_task("ask", total=len(items))
                    run_id = await evaluation.run(
                        runtime.cascade,
                        runtime.db,
                        version,
                        caps,
                        items,
                        str(args.data),
                        args.concurrency,
                        not args.live,
                        lambda done: bar.update(job, completed=done),
                    )
            finally:
                await runtime.aclose()
    found = await evaluation.stored_run(db, run_id, version)
    if found.status != "done":
        console.print(
            f"run {run_id} is {found.status}"
            + (f" ({escape(found.status_detail)})" if found.status_detail else "")
            + ": the sweep covers only the items it answered",
            style="yellow",
            highlight=False,
        )
    result = evaluation.sweep(run_id, await evaluation.stored(db, run_id))
    plot = args.plot or Path(f"eval-{version.name}.svg")
    plot.write_text(render(result, f"{version.name}@{version.version}: cost against accuracy"), encoding="utf-8")
    if args.format == "json":
        console.print_json(json.dumps(_sweep_json(result), default=str))
    else:
        print_sweep(console, result, version.name, version.version)
    console.print(f"run {result.run_id}; plot saved to {plot}", highlight=False)


def print_sweep(console: Console, result: evaluation.Sweep, name: str, version: int) -> None:
    console.print(f"[bold]{escape(name)}@{version}[/]: {result.items} labelled items, both models asked once each")
    table = Table("threshold", "accuracy", "escalation rate", "cost per 1,000", "")
    shown = {Decimal(k) / 20 for k in range(21)} | {evaluation.FIXED}
    for special in (result.recommended, result.at_strong):
        if special is not None and special.threshold is not None:
            shown.add(special.threshold)
    for p in result.points:
        if p.threshold not in shown:
            continue
        marks = []
        if result.recommended is not None and p.threshold == result.recommended.threshold:
            marks.append("[green]recommended[/]")
        if result.at_strong is not None and p.threshold == result.at_strong.threshold:
            marks.append("cheapest ≥ strong only")
        if p.threshold == evaluation.FIXED:
            marks.append("fixed 0.85")
        table.add_row(
            f"{p.threshold:.2f}",
            percent(p.accuracy),
            percent(p.escalation_rate),
            f"${p.cost_per_1000_usd}",
            "; ".join(marks),
        )
    s = result.all_strong
    mark = "[green]recommended[/]" if result.recommended is s else ""
    table.add_row("strong only", percent(s.accuracy), "100.0%", f"${s.cost_per_1000_usd}", mark)
    console.print(table)
    r = result.recommended
    if r is None:
        console.print("no threshold is as accurate as both the strong model alone and 0.85", style="yellow")
    else:
        f = result.fixed
        what = "the strong model alone" if r.threshold is None else f"{r.threshold:.2f}"
        console.print(
            f"recommended {what}: accuracy {percent(r.accuracy)} (fixed 0.85: {percent(f.accuracy)}, "
            f"strong only: {percent(result.all_strong.accuracy)}) at ${r.cost_per_1000_usd} per 1,000 "
            f"(fixed 0.85: ${f.cost_per_1000_usd})",
            highlight=False,
        )


def _sweep_json(result: evaluation.Sweep) -> dict[str, Any]:
    def point(p: evaluation.Point | None) -> dict[str, Any] | None:
        if p is None:
            return None
        return {
            "threshold": None if p.threshold is None else str(p.threshold),
            "accuracy": str(p.accuracy),
            "escalation_rate": str(p.escalation_rate),
            "cost_per_1000_usd": str(p.cost_per_1000_usd),
        }

    return {
        "run": str(result.run_id),
        "items": result.items,
        "recommended": point(result.recommended),
        "cheapest_at_strong_accuracy": point(result.at_strong),
        "fixed": point(result.fixed),
        "all_strong": point(result.all_strong),
        "sweep": [point(p) for p in result.points],
    }
