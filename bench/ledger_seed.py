"""The reports bench's seeded ledger: what it holds (teams, tasks, models, the days it spans), its dimension
tables, the run of the statements in bench/ledger_sql.py, and the check that its costs are the catalog's."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ledger_sql import (  # bench/ledger_sql.py
    ATTEMPTS_INSERT,
    ATTEMPTS_STAGING,
    CAP_SETS,
    CAPS,
    CONSISTENCY,
    DAYS,
    REQUESTS_INSERT,
    REQUESTS_STAGING,
)
from reports_printout import log  # bench/reports_printout.py
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from service.cascade.prompt import Task, build_request
from service.core.settings import Settings
from service.money.caps import UNCAPPED
from service.money.catalog import Catalog, TokenUsage

CANARY_MODEL = "claude-haiku-5-5"  # a share of requests use it as the cheap model, so `group_by=model` has >1 bucket
CANARY_SHARE = 0.15

# (name, share of requests)
TEAMS = (("acme", 0.5), ("globex", 0.3), ("initech", 0.2))

# Twenty tasks: (labels, instructions). Their hashes are the service's own (`Task.hash`).
TASKS: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("positive", "negative", "neutral"), None),
    (("billing", "shipping", "returns", "account", "technical", "other"), "Customer support tickets."),
    (("spam", "ham"), None),
    (("toxic", "not_toxic"), "Flag insults, threats and slurs; profanity alone is not toxic."),
    (("en", "de", "fr", "es", "it", "other"), None),
    (("p0", "p1", "p2", "p3"), "Incident reports: p0 means customers cannot use the product at all."),
    (("buy", "cancel", "upgrade", "complain", "question"), None),
    (("urgent", "normal", "low"), None),
    (("bug", "feature_request", "question", "praise"), "App store reviews."),
    (("approve", "reject", "escalate"), "Expense notes against the travel policy."),
    (("sports", "politics", "business", "technology", "entertainment", "science", "health", "world"), None),
    (("fraud", "legit"), "Card transaction descriptions with merchant and amount."),
    (("yes", "no", "unclear"), "Does the message ask to unsubscribe?"),
    (("hardware", "software", "network", "access"), None),
    (("happy", "sad", "angry", "afraid", "surprised"), None),
    (("contract", "invoice", "resume", "letter", "other"), "Scanned document first pages (OCR)."),
    (("safe", "unsafe"), "Product listings: unsafe means prohibited or recalled items."),
    (("relevant", "irrelevant"), "Is the search result relevant to the query in the first line?"),
    (("formal", "informal"), None),
    (("question", "statement", "command"), None),
)
TASK_THRESHOLDS = {5: Decimal("0.9"), 11: Decimal("0.95")}  # a request may raise the threshold, never lower it


@dataclass
class SeedPlan:
    requests: int
    now: datetime
    cheap_model: str
    strong_model: str
    canary_model: str | None
    daily_cap: Decimal
    monthly_cap: Decimal
    catalog: Catalog = field(default_factory=Catalog)

    @property
    def models(self) -> list[str]:
        return [m for m in (self.cheap_model, self.canary_model, self.strong_model) if m is not None]

    def days(self) -> list[date]:
        first = (self.now - timedelta(days=DAYS + 1)).date()
        return [first + timedelta(days=i) for i in range((self.now.date() - first).days + 3)]


def plan_for(requests: int, settings: Settings, now: datetime) -> SeedPlan:
    catalog = Catalog()
    plan = SeedPlan(
        requests,
        now,
        settings.cheap_model,
        settings.strong_model,
        None,
        settings.daily_cap_usd,
        settings.monthly_cap_usd,
    )
    canary_priced = True
    try:
        for day in plan.days():
            catalog.price(CANARY_MODEL, datetime.combine(day, datetime.min.time(), UTC))
    except Exception:
        canary_priced = False
    if canary_priced and settings.cheap_model != CANARY_MODEL:
        plan.canary_model = CANARY_MODEL
    return plan


async def step(conn: AsyncConnection, label: str, sql: str, params: dict[str, Any] | None = None) -> None:
    started = time.perf_counter()
    result = await conn.execute(text(sql), params or {})
    rows = f" ({result.rowcount:,} rows)" if result.rowcount is not None and result.rowcount >= 0 else ""
    log(f"  {label:<44} {time.perf_counter() - started:7.1f} s{rows}")


async def seed(url: str, plan: SeedPlan) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    started = time.perf_counter()
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SET synchronous_commit = off"))
            await conn.execute(text("SET work_mem = '256MB'"))
            await conn.execute(text("SET maintenance_work_mem = '512MB'"))
            await conn.execute(text("SELECT setseed(0.42)"))  # the same ledger every run (ids aside)
            await conn.execute(text("DROP SCHEMA IF EXISTS bench_seed CASCADE"))
            await conn.execute(text("CREATE SCHEMA bench_seed"))
            await seed_dimensions(conn, plan)
            params = {
                "n": plan.requests,
                "ntasks": len(TASKS),
                "now": plan.now,
                "cheap_model": plan.cheap_model,
                "canary_model": plan.canary_model or plan.cheap_model,
                "canary_share": CANARY_SHARE if plan.canary_model else 0.0,
                "strong_model": plan.strong_model,
            }
            await step(conn, "requests (staging)", REQUESTS_STAGING, params)
            await step(conn, "attempts (staging)", ATTEMPTS_STAGING, {"strong_model": plan.strong_model})
            await step(
                conn,
                "spend per day and team",
                "CREATE UNLOGGED TABLE bench_seed.spend AS SELECT billing_day, team_id, sum(cost_usd) AS spent "
                "FROM bench_seed.att GROUP BY billing_day, team_id",
            )
            cap_params = {
                "daily": plan.daily_cap,
                "monthly": plan.monthly_cap,
                "uncapped": UNCAPPED,
                "now": plan.now,
            }
            await step(conn, "caps", CAPS, cap_params)
            await step(conn, "cap ids per day and team", CAP_SETS)
            await step(conn, "INSERT requests", REQUESTS_INSERT)
            await step(conn, "INSERT attempts", ATTEMPTS_INSERT)
            await step(conn, "drop staging", "DROP SCHEMA bench_seed CASCADE")
            await step(conn, "VACUUM (ANALYZE)", "VACUUM (ANALYZE) teams, caps, requests, attempts")
    finally:
        await engine.dispose()
    log(f"seeded {plan.requests:,} requests in {time.perf_counter() - started:.1f} s")


async def seed_dimensions(conn: AsyncConnection, plan: SeedPlan) -> None:
    """Teams, tasks (with the service's task hashes), request shapes per model, and the catalog's price rows."""
    await conn.execute(text("CREATE TABLE bench_seed.teams (team_no int PRIMARY KEY, id uuid NOT NULL)"))
    for team_no, (name, _share) in enumerate(TEAMS, start=1):
        team_id = uuid.uuid4()
        await conn.execute(
            text("INSERT INTO teams (id, name, created_at) VALUES (:id, :name, :at)"),
            {"id": team_id, "name": name, "at": plan.now - timedelta(days=90)},
        )
        await conn.execute(text("INSERT INTO bench_seed.teams VALUES (:no, :id)"), {"no": team_no, "id": team_id})

    await conn.execute(
        text(
            "CREATE TABLE bench_seed.tasks (task_no int PRIMARY KEY, task_hash text NOT NULL, labels jsonb NOT NULL, "
            "instructions text, nlabels int NOT NULL, threshold numeric(9, 6) NOT NULL, max_tokens int NOT NULL)"
        )
    )
    await conn.execute(
        text("CREATE TABLE bench_seed.shapes (task_no int, model text, bound_base int, PRIMARY KEY (task_no, model))")
    )
    base = Settings(_env_file=None).threshold
    for task_no, (labels, instructions) in enumerate(TASKS, start=1):
        task = Task(labels, instructions)
        max_tokens = 0
        for model in plan.models:
            request = build_request(plan.catalog.model(model), task, "")
            max_tokens = request.max_tokens
            # The bound grows by one per ASCII character of text (the bench's texts need no escaping).
            await conn.execute(
                text("INSERT INTO bench_seed.shapes VALUES (:no, :model, :bound)"),
                {"no": task_no, "model": model, "bound": request.input_token_bound},
            )
        await conn.execute(
            text(
                "INSERT INTO bench_seed.tasks VALUES (:no, :hash, CAST(:labels AS jsonb), :instructions, :nlabels, "
                ":threshold, :max_tokens)"
            ),
            {
                "no": task_no,
                "hash": task.hash,
                "labels": json.dumps(list(labels)),
                "instructions": instructions,
                "nlabels": len(labels),
                "threshold": TASK_THRESHOLDS.get(task_no, base),
                "max_tokens": max_tokens,
            },
        )

    await conn.execute(
        text(
            "CREATE TABLE bench_seed.prices (model text, day date, price_id text, p_in numeric, p_cw5m numeric, "
            "p_cw1h numeric, p_cr numeric, p_out numeric, PRIMARY KEY (model, day))"
        )
    )
    for model in plan.models:
        for day in plan.days():
            price = plan.catalog.price(model, datetime.combine(day, datetime.min.time(), UTC))
            await conn.execute(
                text("INSERT INTO bench_seed.prices VALUES (:m, :d, :id, :i, :w5, :w1, :r, :o)"),
                {
                    "m": model,
                    "d": day,
                    "id": price.id,
                    "i": price.input,
                    "w5": price.cache_write_5m,
                    "w1": price.cache_write_1h,
                    "r": price.cache_read,
                    "o": price.output,
                },
            )


async def check_seed(url: str, catalog: Catalog, strong_model: str) -> None:
    """Request costs add up, and a sample of attempts costs what the catalog says (Decimal arithmetic)."""
    engine = create_async_engine(url)
    started = time.perf_counter()
    try:
        async with engine.connect() as conn:
            broken = await conn.scalar(text(CONSISTENCY))
            rows = (
                await conn.execute(
                    text(
                        "SELECT model, stage, reserved_at, input_token_bound, max_tokens, input_tokens, "
                        "cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, output_tokens, cost_usd, "
                        "strong_equiv_usd, reserved_usd, price_id "
                        "FROM attempts TABLESAMPLE SYSTEM (1) REPEATABLE (7) LIMIT 5000"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    wrong = 0
    for row in rows:
        strong: Decimal | None
        price = catalog.price(row.model, row.reserved_at, row.input_token_bound)
        strong_price = catalog.price(strong_model, row.reserved_at, row.input_token_bound)
        reserved = price.worst_case(row.input_token_bound, row.max_tokens)
        if row.input_tokens is None:  # outcome unknown: charged the reservation
            expected, strong = reserved, strong_price.worst_case(row.input_token_bound, row.max_tokens)
        else:
            usage = TokenUsage(
                row.input_tokens,
                row.cache_write_5m_tokens,
                row.cache_write_1h_tokens,
                row.cache_read_tokens,
                row.output_tokens,
            )
            expected, strong = price.cost(usage), strong_price.cost(usage)
        if row.stage != "cheap":
            strong = None
        bad = (row.reserved_usd, row.cost_usd, row.strong_equiv_usd, row.price_id) != (
            reserved,
            expected,
            strong,
            price.id,
        )
        wrong += bad
    log(
        f"consistency: {broken} requests whose costs differ from their attempts'; {wrong} of {len(rows):,} sampled "
        f"attempts differ from the catalog's Decimal arithmetic ({time.perf_counter() - started:.1f} s)"
    )
