"""Benchmark the escalation and cost reports and the request list/export on a seeded ledger.

    uv run python bench/reports.py                      # embedded PostgreSQL under .cascade/bench, 1,000,000 requests
    uv run python bench/reports.py --requests 100000    # a smaller ledger
    uv run python bench/reports.py --database-url postgresql://root@127.0.0.1:5432/test
    uv run python bench/reports.py --keep               # keep the seeded database; later runs add --reuse
    uv run python bench/reports.py --reuse --explain    # time (and EXPLAIN) again without seeding

The bench creates a database of its own, `cascade_bench` (dropped and recreated on every seeding run, dropped at
the end unless `--keep`), migrates it with the project's alembic, and seeds it with set-based SQL: requests over the
last 30 days, ~1.3 attempts each (a quarter escalated, a few retries, timeouts charged at their reservation), three
teams, twenty tasks, cap rows, and every cost computed from the catalog's price rows. It then times the real service
code (`service.reports.service.Reports`, `service.reports.audit.list_requests` / `export_requests`): one
warm-up, then the median of `--runs` runs. It prints numbers only; nothing here fails on a slow figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cluster import admin_url_for  # bench/cluster.py (this directory leads sys.path)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.api.reports import _csv  # the CSV formatter of GET /v1/requests?format=csv
from service.cascade.prompt import Task, build_request
from service.core import schema
from service.core.database import Database
from service.core.settings import Settings
from service.money.caps import UNCAPPED
from service.money.catalog import Catalog, TokenUsage
from service.reports.audit import Cursor, RequestFilter, export_requests, list_requests
from service.reports.service import (
    Reports,
    Window,
    _attempt_cost_sql,
    _escalation_sql,
    _request_cost_sql,
    day_window,
)
from service.tenancy.keys import Scope

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "cascade_bench"
DAYS = 30
CANARY_MODEL = "claude-haiku-5-5"  # a share of requests use it as the cheap model, so `group_by=model` has >1 bucket
CANARY_SHARE = 0.15
LIST_LIMIT = 100  # the API's default page size

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


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Database set-up


def bench_url(admin_url: str) -> str:
    return make_url(admin_url).set(database=DB_NAME).render_as_string(hide_password=False)


async def database_exists(admin: AsyncEngine) -> bool:
    async with admin.connect() as conn:
        found = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DB_NAME})
    return found is not None


async def drop_database(admin: AsyncEngine) -> None:
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))


async def seeded_rows(url: str) -> int | None:
    """The requests in an existing bench database at the current head, or None if it cannot be reused."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            if version != schema.head():
                return None
            return int(await conn.scalar(text("SELECT count(*) FROM requests")) or 0) or None
    except Exception:
        return None
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------------------------------------------
# Seeding


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


# Per request: independent draws first (materialized, so each random() is evaluated once), then the scenario.
# Scenario shares (of all requests): 1% refused by a cap before any attempt; the rest go to the cheap model,
# 4.5% of them after one or two failed attempts, and about 25% escalate (low confidence 21%, invalid 2%,
# refused 0.7%, truncated 0.8%, cheap model unavailable after 3 attempts 0.5%). Of the escalated, 1.8% need a
# second strong attempt, 0.8% find the strong model unavailable and 0.4% get no usable strong answer: failed.
REQUESTS_STAGING = """
CREATE UNLOGGED TABLE bench_seed.req AS
WITH draws AS MATERIALIZED (
    SELECT g AS n, random() AS r_team, random() AS r_task, random() AS r_time, random() AS r_model,
        random() AS r_text, random() AS r_path, random() AS r_cretry, random() AS r_strong, random() AS r_conf,
        random() AS r_sconf, random() AS r_clabel, random() AS r_slabel, random() AS r_changed, random() AS r_lat
    FROM generate_series(1, CAST(:n AS int)) AS g
),
shaped AS MATERIALIZED (
    SELECT d.*,
        CASE WHEN r_team < 0.5 THEN 1 WHEN r_team < 0.8 THEN 2 ELSE 3 END AS team_no,
        1 + least(floor(power(r_task, 1.8) * CAST(:ntasks AS int))::int, CAST(:ntasks AS int) - 1) AS task_no,
        CAST(:now AS timestamptz) - r_time * interval '30 days' AS created_at,
        CASE WHEN r_model < CAST(:canary_share AS float8) THEN CAST(:canary_model AS text)
            ELSE CAST(:cheap_model AS text) END AS cheap_model,
        80 + floor(power(r_text, 2.5) * 6000)::int AS text_chars,
        CASE
            WHEN r_path < 0.010 THEN 'cap_refused'
            WHEN r_path < 0.015 THEN 'cheap_unavailable'
            WHEN r_path < 0.035 THEN 'invalid_answer'
            WHEN r_path < 0.042 THEN 'refused'
            WHEN r_path < 0.050 THEN 'truncated'
            WHEN r_path < 0.260 THEN 'low_confidence'
            ELSE 'confident'
        END AS path,
        CASE WHEN r_cretry < 0.040 THEN 1 WHEN r_cretry < 0.045 THEN 2 ELSE 0 END AS cheap_retries,
        CASE
            WHEN r_strong < 0.008 THEN 'unavailable'
            WHEN r_strong < 0.012 THEN 'defect'
            WHEN r_strong < 0.030 THEN 'retried'
            ELSE 'answered'
        END AS strong_path
    FROM draws d
),
decided AS MATERIALIZED (
    SELECT s.*, t.task_hash, t.labels, t.instructions, t.nlabels, t.threshold, t.max_tokens,
        s.path NOT IN ('cap_refused', 'confident') AS escalated,
        s.path IN ('low_confidence', 'confident') AS cheap_answered,
        CASE s.path WHEN 'cap_refused' THEN 0 WHEN 'cheap_unavailable' THEN 3 ELSE s.cheap_retries END
            AS n_cheap_fail,
        s.path NOT IN ('cap_refused', 'cheap_unavailable') AS cheap_final,
        CASE
            WHEN s.path IN ('cap_refused', 'confident') THEN 0
            WHEN s.strong_path = 'unavailable' THEN 3
            WHEN s.strong_path = 'retried' THEN 1
            ELSE 0
        END AS n_strong_fail,
        s.path NOT IN ('cap_refused', 'confident') AND s.strong_path <> 'unavailable' AS strong_final,
        s.path NOT IN ('cap_refused', 'confident') AND s.strong_path IN ('answered', 'retried') AS strong_ok,
        t.labels ->> floor(s.r_clabel * t.nlabels)::int AS c_label,
        CASE s.path
            WHEN 'confident' THEN round((t.threshold + (1 - t.threshold) * s.r_conf::numeric), 6)
            WHEN 'low_confidence' THEN least(round(t.threshold * (0.35 + 0.65 * s.r_conf::numeric), 6),
                t.threshold - 0.000001)
        END AS c_confidence,
        round((0.6 + 0.4 * s.r_sconf)::numeric, 6) AS s_confidence
    FROM shaped s JOIN bench_seed.tasks t USING (task_no)
)
SELECT d.n, gen_random_uuid() AS id, tm.id AS team_id, d.created_at, d.task_no, d.task_hash, d.labels,
    d.instructions, d.threshold, d.text_chars, d.cheap_model, CAST(:strong_model AS text) AS strong_model,
    d.max_tokens, d.path, d.strong_path, d.escalated,
    CASE WHEN d.escalated THEN d.path END AS escalation_reason,
    d.n_cheap_fail + d.cheap_final::int AS n_cheap,
    d.n_strong_fail + d.strong_final::int AS n_strong,
    d.cheap_final, d.strong_final,
    CASE WHEN d.path = 'cap_refused' THEN 'refused' WHEN d.escalated AND NOT d.strong_ok THEN 'failed' ELSE 'ok' END
        AS status,
    CASE WHEN d.cheap_answered THEN d.c_label END AS cheap_label,
    d.c_confidence AS cheap_confidence,
    CASE WHEN d.cheap_answered AND d.r_changed >= 0.3 THEN d.c_label
        ELSE d.labels ->> floor(d.r_slabel * d.nlabels)::int END AS strong_label,
    d.s_confidence AS strong_confidence,
    CASE
        WHEN d.path = 'cap_refused' THEN 2 + floor(d.r_lat * 5)::int
        ELSE (d.n_cheap_fail + d.cheap_final::int) * (350 + floor(d.r_lat * 800)::int)
            + (d.n_strong_fail + d.strong_final::int) * (900 + floor(d.r_lat * 2500)::int)
            + (d.n_cheap_fail + d.n_strong_fail) * 300
    END AS latency_ms
FROM decided d JOIN bench_seed.teams tm USING (team_no)
"""

# Per attempt: the slots of each request in order (failed cheap attempts, the cheap answer, failed strong
# attempts, the strong answer), their outcome and usage, and the cost at the price row of the billing day.
ATTEMPTS_STAGING = """
CREATE UNLOGGED TABLE bench_seed.att AS
WITH slots AS MATERIALIZED (
    SELECT r.n, r.id AS request_id, r.team_id, r.created_at AS request_created_at, r.task_no, r.task_hash,
        r.text_chars, r.max_tokens, r.path, r.strong_path, r.escalation_reason, r.cheap_label, r.cheap_confidence,
        r.strong_label, r.strong_confidence, a AS attempt_no,
        a <= r.n_cheap AS is_cheap,
        CASE WHEN a <= r.n_cheap THEN r.cheap_model ELSE r.strong_model END AS model,
        CASE WHEN a <= r.n_cheap THEN a = r.n_cheap AND r.cheap_final
            ELSE a = r.n_cheap + r.n_strong AND r.strong_final END AS is_final,
        r.created_at + ((a - 1) * 900 + 2) * interval '1 millisecond' AS reserved_at,
        random() AS r_kind, random() AS r_in, random() AS r_out, random() AS r_lat
    FROM bench_seed.req r CROSS JOIN LATERAL generate_series(1, r.n_cheap + r.n_strong) AS a
),
outcomes AS (
    SELECT s.*,
        (s.reserved_at AT TIME ZONE 'UTC')::date AS billing_day,
        sh.bound_base + s.text_chars AS input_token_bound,
        CASE
            WHEN s.is_final AND s.is_cheap THEN
                CASE WHEN s.path IN ('invalid_answer', 'refused', 'truncated') THEN s.path ELSE 'answered' END
            WHEN s.is_final THEN CASE s.strong_path WHEN 'defect' THEN 'invalid_answer' ELSE 'answered' END
            WHEN s.r_kind < 0.60 THEN 'overloaded'
            WHEN s.r_kind < 0.85 THEN 'server_error'
            WHEN s.r_kind < 0.95 THEN 'rate_limited'
            ELSE 'timeout'
        END AS outcome
    FROM slots s JOIN bench_seed.shapes sh ON sh.task_no = s.task_no AND sh.model = s.model
),
usage AS (
    SELECT o.*,
        CASE WHEN o.outcome = 'timeout' THEN NULL
            WHEN o.is_final THEN floor((o.input_token_bound - 512) * (0.26 + 0.04 * o.r_in))::int + 3
            ELSE 0 END AS input_tokens,
        CASE WHEN o.outcome = 'timeout' THEN NULL ELSE 0 END AS cache_tokens,
        CASE WHEN o.outcome = 'timeout' THEN NULL
            WHEN NOT o.is_final THEN 0
            WHEN o.outcome = 'truncated' THEN o.max_tokens
            WHEN o.outcome = 'answered' THEN 12 + floor(o.r_out * 10)::int
            ELSE 15 + floor(o.r_out * 25)::int END AS output_tokens
    FROM outcomes o
)
SELECT u.n, u.request_id, u.team_id, u.request_created_at, u.task_hash, u.attempt_no,
    CASE WHEN u.is_cheap THEN 'cheap' ELSE 'strong' END AS stage, u.model, u.billing_day, u.input_token_bound,
    u.max_tokens, p.price_id, p.p_in, p.p_cw5m, p.p_cw1h, p.p_cr, p.p_out, u.outcome,
    CASE u.outcome WHEN 'overloaded' THEN 529 WHEN 'server_error' THEN 500 WHEN 'rate_limited' THEN 429
        WHEN 'timeout' THEN NULL ELSE 200 END AS http_status,
    CASE u.outcome WHEN 'answered' THEN 'end_turn' WHEN 'invalid_answer' THEN 'end_turn' WHEN 'refused' THEN 'refusal'
        WHEN 'truncated' THEN 'max_tokens' END AS stop_reason,
    CASE WHEN u.outcome <> 'answered' THEN NULL WHEN u.is_cheap THEN u.cheap_label ELSE u.strong_label END AS label,
    CASE WHEN u.outcome <> 'answered' THEN NULL WHEN u.is_cheap THEN u.cheap_confidence ELSE u.strong_confidence END
        AS confidence,
    CASE WHEN u.is_final AND u.is_cheap THEN u.escalation_reason END AS escalation_reason,
    u.input_tokens, u.cache_tokens AS cache_write_5m_tokens, u.cache_tokens AS cache_write_1h_tokens,
    u.cache_tokens AS cache_read_tokens, u.output_tokens,
    round((u.input_token_bound * p.p_in + u.max_tokens * p.p_out) / 1000000, 10) AS reserved_usd,
    round(CASE WHEN u.input_tokens IS NULL THEN (u.input_token_bound * p.p_in + u.max_tokens * p.p_out) / 1000000
        ELSE (u.input_tokens * p.p_in + u.cache_tokens * p.p_cw5m + u.cache_tokens * p.p_cw1h
            + u.cache_tokens * p.p_cr + u.output_tokens * p.p_out) / 1000000 END, 10) AS cost_usd,
    round(CASE WHEN NOT u.is_cheap THEN NULL
        WHEN u.input_tokens IS NULL THEN (u.input_token_bound * sp.p_in + u.max_tokens * sp.p_out) / 1000000
        ELSE (u.input_tokens * sp.p_in + u.cache_tokens * sp.p_cw5m + u.cache_tokens * sp.p_cw1h
            + u.cache_tokens * sp.p_cr + u.output_tokens * sp.p_out) / 1000000 END, 10) AS strong_equiv_usd,
    CASE WHEN u.outcome <> 'timeout' THEN 'req_bench_' || left(md5(u.request_id::text || u.attempt_no), 20) END
        AS upstream_request_id,
    CASE
        WHEN u.outcome = 'timeout' THEN 10000
        WHEN NOT u.is_final THEN 40 + floor(u.r_lat * 300)::int
        WHEN u.is_cheap THEN 300 + floor(u.r_lat * 900)::int
        ELSE 800 + floor(u.r_lat * 2500)::int
    END AS latency_ms,
    CASE u.outcome
        WHEN 'overloaded' THEN 'Overloaded'
        WHEN 'server_error' THEN 'Internal server error'
        WHEN 'rate_limited' THEN 'Number of request tokens has exceeded your per-minute rate limit'
        WHEN 'timeout' THEN 'no answer within 10.0s'
        WHEN 'invalid_answer' THEN 'the answer is not valid JSON'
        WHEN 'refused' THEN 'the model refused to classify the text'
        WHEN 'truncated' THEN 'the answer was cut off (max_tokens)'
    END AS error_message,
    u.reserved_at
FROM usage u
JOIN bench_seed.prices p ON p.model = u.model AND p.day = u.billing_day
JOIN bench_seed.prices sp ON sp.model = CAST(:strong_model AS text) AND sp.day = u.billing_day
"""

# Cap rows as the budget keeps them (global day and month, team day and month), charged with what was spent.
CAPS = """
INSERT INTO caps (scope, team_id, period, period_start, cap_usd, spent_usd, reserved_usd, overrun_usd, updated_at)
SELECT 'global', CAST(NULL AS uuid), 'day', billing_day, greatest(CAST(:daily AS numeric), sum(spent)),
    sum(spent), 0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY billing_day
UNION ALL
SELECT 'global', CAST(NULL AS uuid), 'month', date_trunc('month', billing_day)::date,
    greatest(CAST(:monthly AS numeric), sum(spent)), sum(spent), 0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY date_trunc('month', billing_day)::date
UNION ALL
SELECT 'team', team_id, 'day', billing_day, CAST(:uncapped AS numeric), sum(spent), 0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY team_id, billing_day
UNION ALL
SELECT 'team', team_id, 'month', date_trunc('month', billing_day)::date, CAST(:uncapped AS numeric), sum(spent),
    0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY team_id, date_trunc('month', billing_day)::date
"""

CAP_SETS = """
CREATE UNLOGGED TABLE bench_seed.capset AS
SELECT s.billing_day, s.team_id, ARRAY[gd.id, gm.id, td.id, tm.id] AS cap_ids
FROM bench_seed.spend s
JOIN caps gd ON gd.scope = 'global' AND gd.period = 'day' AND gd.period_start = s.billing_day
JOIN caps gm ON gm.scope = 'global' AND gm.period = 'month'
    AND gm.period_start = date_trunc('month', s.billing_day)::date
JOIN caps td ON td.scope = 'team' AND td.team_id = s.team_id AND td.period = 'day' AND td.period_start = s.billing_day
JOIN caps tm ON tm.scope = 'team' AND tm.team_id = s.team_id AND tm.period = 'month'
    AND tm.period_start = date_trunc('month', s.billing_day)::date
"""

# Physically in created_at order, as a live service appends them.
REQUESTS_INSERT = """
INSERT INTO requests (id, team_id, status, task_hash, labels, instructions, threshold, text_chars, cheap_model,
    strong_model, label, confidence, model, escalated, escalation_reason, cheap_label, cheap_confidence, cost_usd,
    all_strong_cost_usd, error_type, error_message, latency_ms, created_at, finished_at)
SELECT r.id, r.team_id, r.status, r.task_hash, r.labels, r.instructions, r.threshold, r.text_chars, r.cheap_model,
    r.strong_model,
    CASE WHEN r.status <> 'ok' THEN NULL WHEN r.escalated THEN r.strong_label ELSE r.cheap_label END,
    CASE WHEN r.status <> 'ok' THEN NULL WHEN r.escalated THEN r.strong_confidence ELSE r.cheap_confidence END,
    CASE WHEN r.status <> 'ok' THEN NULL WHEN r.escalated THEN r.strong_model ELSE r.cheap_model END,
    r.escalated, r.escalation_reason, r.cheap_label, r.cheap_confidence,
    coalesce(c.cost_usd, 0), coalesce(c.strong_equiv_usd, 0),
    CASE
        WHEN r.status = 'refused' THEN 'cost_cap_exceeded'
        WHEN r.status = 'failed' AND r.strong_path = 'unavailable' THEN 'upstream_unavailable'
        WHEN r.status = 'failed' THEN 'upstream_error'
    END,
    CASE
        WHEN r.status = 'refused' THEN 'the team daily cost cap would be exceeded: $0 remains and this attempt may '
            || 'cost up to $0.0123'
        WHEN r.status = 'failed' AND r.strong_path = 'unavailable' THEN 'the strong model is unavailable: Overloaded'
        WHEN r.status = 'failed' THEN 'the strong model gave no usable answer: the answer is not valid JSON'
    END,
    r.latency_ms, r.created_at, r.created_at + r.latency_ms * interval '1 millisecond'
FROM bench_seed.req r
LEFT JOIN (
    SELECT n, sum(cost_usd) AS cost_usd, sum(strong_equiv_usd) FILTER (WHERE stage = 'cheap') AS strong_equiv_usd
    FROM bench_seed.att GROUP BY n
) c USING (n)
ORDER BY r.created_at
"""

ATTEMPTS_INSERT = """
INSERT INTO attempts (request_id, team_id, request_created_at, task_hash, attempt_no, stage, model, state, cap_ids,
    billing_day, reserved_usd, input_token_bound, max_tokens, price_id, price_input, price_cache_write_5m,
    price_cache_write_1h, price_cache_read, price_output, outcome, http_status, stop_reason, label, confidence,
    escalation_reason, input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, output_tokens,
    cost_usd, strong_equiv_usd, upstream_request_id, latency_ms, error_message, settled_by, reserved_at, settled_at)
SELECT a.request_id, a.team_id, a.request_created_at, a.task_hash, a.attempt_no, a.stage, a.model, 'settled',
    cs.cap_ids, a.billing_day, a.reserved_usd, a.input_token_bound, a.max_tokens, a.price_id, a.p_in, a.p_cw5m,
    a.p_cw1h, a.p_cr, a.p_out, a.outcome, a.http_status, a.stop_reason, a.label, a.confidence, a.escalation_reason,
    a.input_tokens, a.cache_write_5m_tokens, a.cache_write_1h_tokens, a.cache_read_tokens, a.output_tokens,
    a.cost_usd, a.strong_equiv_usd, a.upstream_request_id, a.latency_ms, a.error_message, 'holder', a.reserved_at,
    a.reserved_at + a.latency_ms * interval '1 millisecond'
FROM bench_seed.att a JOIN bench_seed.capset cs ON cs.billing_day = a.billing_day AND cs.team_id = a.team_id
ORDER BY a.reserved_at, a.attempt_no
"""

# Every request's cost is the sum of its attempts' costs, and its all-strong cost that of its cheap attempts'
# strong equivalents: the rows that break either rule (0 expected).
CONSISTENCY = """
SELECT count(*) FROM requests r
LEFT JOIN (
    SELECT request_id, sum(cost_usd) AS cost_usd,
        coalesce(sum(strong_equiv_usd) FILTER (WHERE stage = 'cheap'), 0) AS strong_equiv_usd
    FROM attempts GROUP BY request_id
) a ON a.request_id = r.id
WHERE r.cost_usd <> coalesce(a.cost_usd, 0) OR r.all_strong_cost_usd <> coalesce(a.strong_equiv_usd, 0)
"""


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


# --------------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Result:
    name: str
    scope: str
    times: list[float] = field(default_factory=list)
    rows: int | None = None
    error: str | None = None
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


class OverBudget(Exception):
    """An export run that passed --export-budget: it was stopped, and the case is not repeated."""

    def __init__(self, rows: int, seconds: float, note: str) -> None:
        super().__init__(f"stopped after {seconds:.0f} s at {rows:,} rows")
        self.rows, self.seconds, self.note = rows, seconds, note


async def measure(
    name: str, scope: str, run: Callable[[], Awaitable[int | None]], runs: int, results: list[Result]
) -> None:
    result = Result(name, scope)
    try:
        result.rows = await run()  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            result.rows = await run()
            result.times.append(time.perf_counter() - started)
    except OverBudget as over:
        result.rows, result.times, result.note = over.rows, [over.seconds], f"{over}; {over.note}"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:100]
    results.append(result)
    if result.error:
        log(f"  {name:<44} {scope:<6} error: {result.error}")
    else:
        log(f"  {name:<44} {scope:<6} {result.median_ms:10.1f} ms {result.note}")


EXPORT_MARK = 100_000  # rows between throughput samples of an export


async def count_csv(db: Database, scope: Scope, flt: RequestFilter, budget_s: float) -> int:
    """Every row of the export through the API's CSV formatter; stops past the budget (see OverBudget)."""
    started = last = time.perf_counter()
    rates: list[float] = []
    rows = -1  # the header line is not a row
    async for _line in _csv(await export_requests(db, scope, flt)):
        rows += 1
        if rows and rows % EXPORT_MARK == 0:
            now = time.perf_counter()
            rates.append(EXPORT_MARK / (now - last))
            last = now
            if now - started > budget_s:
                note = f"{rates[0]:,.0f} rows/s over the first {EXPORT_MARK:,} rows, {rates[-1]:,.0f} over the last"
                raise OverBudget(rows, now - started, note)
    return rows


async def time_everything(db: Database, settings: Settings, team: Scope, args: argparse.Namespace) -> list[Result]:
    reports = Reports(db, Catalog(), settings.cheap_model, settings.strong_model)
    now = datetime.now(UTC)
    month = day_window(DAYS, now)
    week = Window.parse(None, None, now, default_days=7)
    listed = RequestFilter(Window.parse(None, None, now, DAYS))
    # A page deep in the list, as a client paging (or the export) reaches it: just past the window's middle.
    middle = Cursor(now - timedelta(days=DAYS / 2), uuid.UUID(int=(1 << 128) - 1))
    admin = Scope(None, admin=True)
    results: list[Result] = []
    runs = args.runs

    def escalations(scope: Scope, window: Window, group_by: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return len((await reports.escalations(scope, window, group_by)).buckets)

        return run

    def costs(scope: Scope, window: Window, group_by: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return len((await reports.costs(scope, window, group_by)).buckets)

        return run

    def page(scope: Scope, after: Cursor | None) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return len((await list_requests(db, scope, listed, LIST_LIMIT, after))[0])

        return run

    def export(scope: Scope) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return await count_csv(db, scope, listed, args.export_budget)

        return run

    log(f"timing ({runs} runs after a warm-up; median):")
    for label, scope in (("admin", admin), ("team", team)):
        await measure("escalations 30d by day", label, escalations(scope, month, "day"), runs, results)
        await measure("costs 30d by day", label, costs(scope, month, "day"), runs, results)
    await measure("escalations 7d by hour", "admin", escalations(admin, week, "hour"), runs, results)
    await measure("escalations 30d by task", "admin", escalations(admin, month, "task"), runs, results)
    await measure("escalations 30d by model", "admin", escalations(admin, month, "model"), runs, results)
    await measure("costs 30d by model", "admin", costs(admin, month, "model"), runs, results)
    await measure("costs 30d by task", "admin", costs(admin, month, "task"), runs, results)
    for label, scope in (("admin", admin), ("team", team)):
        await measure(f"list_requests first page ({LIST_LIMIT})", label, page(scope, None), runs, results)
        await measure(f"list_requests page mid-window ({LIST_LIMIT})", label, page(scope, middle), runs, results)
    if not args.no_export:
        for label, scope in (("admin", admin), ("team", team)):
            await measure("export_requests 30d as CSV", label, export(scope), args.export_runs, results)
    return results


def print_table(results: list[Result]) -> None:
    log("")
    header = f"{'case':<44} {'scope':<6} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'rows':>10} {'rows/s':>9}"
    log(header)
    log("-" * len(header))
    for r in results:
        if r.error:
            log(f"{r.name:<44} {r.scope:<6} error: {r.error}")
            continue
        rows = "" if r.rows is None else f"{r.rows:,}"
        rate = f"{r.rows / statistics.median(r.times):,.0f}" if r.rows and "export" in r.name else ""
        log(
            f"{r.name:<44} {r.scope:<6} {r.median_ms:>10.1f} {min(r.times) * 1000:>9.1f} {max(r.times) * 1000:>9.1f} "
            f"{rows:>10} {rate:>9}"
        )
    log("(rows: buckets of a report, rows of a page or of the export)")
    for r in results:
        if r.note:
            log(f"note: {r.name} ({r.scope}): {r.note}")


async def describe(db: Database) -> None:
    async with db.transaction() as session:
        version = await session.scalar(text("SELECT version()"))
        jit_available = await session.scalar(text("SELECT pg_jit_available()"))
        settings = {
            name: await session.scalar(text(f"SHOW {name}"))
            for name in (
                "shared_buffers",
                "work_mem",
                "effective_cache_size",
                "max_parallel_workers_per_gather",
                "jit",
                "max_parallel_workers",
                "random_page_cost",
            )
        }
        counts = (
            await session.execute(
                text(
                    "SELECT (SELECT count(*) FROM requests) AS requests, (SELECT count(*) FROM attempts) AS attempts, "
                    "(SELECT count(*) FROM teams) AS teams, (SELECT count(*) FROM caps) AS caps, "
                    "(SELECT count(DISTINCT task_hash) FROM requests) AS tasks, "
                    "pg_size_pretty(pg_table_size('requests')) AS requests_heap, "
                    "pg_size_pretty(pg_indexes_size('requests')) AS requests_indexes, "
                    "pg_size_pretty(pg_table_size('attempts')) AS attempts_heap, "
                    "pg_size_pretty(pg_indexes_size('attempts')) AS attempts_indexes"
                )
            )
        ).one()
        mix = (
            await session.execute(
                text(
                    "SELECT count(*) FILTER (WHERE status = 'ok') AS ok, count(*) FILTER (WHERE status = 'failed') "
                    "AS failed, count(*) FILTER (WHERE status = 'refused') AS refused, count(*) FILTER (WHERE "
                    "escalated) AS escalated, min(created_at) AS first, max(created_at) AS last FROM requests"
                )
            )
        ).one()
    log(f"PostgreSQL: {version}")
    log("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + f", jit available={jit_available}")
    log(
        f"rows: requests {counts.requests:,}, attempts {counts.attempts:,} "
        f"({counts.attempts / max(counts.requests, 1):.2f} per request), teams {counts.teams}, caps {counts.caps}, "
        f"tasks {counts.tasks}"
    )
    log(
        f"sizes: requests {counts.requests_heap} + {counts.requests_indexes} indexes, "
        f"attempts {counts.attempts_heap} + {counts.attempts_indexes} indexes"
    )
    total = max(counts.requests, 1)
    log(
        f"mix: ok {mix.ok / total:.1%}, failed {mix.failed / total:.1%}, refused {mix.refused / total:.1%}, "
        f"escalated {mix.escalated / total:.1%}; created {mix.first:%Y-%m-%d %H:%M} .. {mix.last:%Y-%m-%d %H:%M} UTC"
    )


async def explain(db: Database) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL behind the two 30-day, by-day reports in admin scope."""
    admin = Scope(None, admin=True)
    params = day_window(DAYS, datetime.now(UTC)).params()
    queries = (
        ("escalations 30d by day (admin): _escalation_sql", _escalation_sql("day", admin)),
        ("costs 30d by day (admin): _request_cost_sql", _request_cost_sql("day", admin)),
        ("costs 30d by day (admin): _attempt_cost_sql", _attempt_cost_sql("day", admin)),
    )
    for title, sql in queries:
        async with db.transaction() as session:
            plan = (await session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"), params)).scalars().all()
        log("")
        log(f"== {title}")
        log("\n".join(plan))


# --------------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, admin_url: str) -> int:
    settings = Settings(_env_file=None)
    url = bench_url(admin_url)
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    dropped = False
    try:
        existing = await seeded_rows(url) if args.reuse and await database_exists(admin) else None
        if existing:
            log(f"reusing {DB_NAME}: {existing:,} requests (seeded earlier; --requests is ignored)")
        else:
            await drop_database(admin)
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
            started = time.perf_counter()
            await asyncio.to_thread(schema.upgrade, url)
            log(f"created {DB_NAME} and migrated it to {schema.head()} in {time.perf_counter() - started:.1f} s")
            plan = plan_for(args.requests, settings, datetime.now(UTC))
            log(
                f"seeding {args.requests:,} requests over {DAYS} days (cheap {plan.cheap_model}"
                f"{f' + {CANARY_SHARE:.0%} {plan.canary_model}' if plan.canary_model else ''}, "
                f"strong {plan.strong_model}):"
            )
            await seed(url, plan)
            await check_seed(url, plan.catalog, plan.strong_model)

        db = Database(url, Settings(_env_file=None, DATABASE_URL=url))
        try:
            await describe(db)
            async with db.transaction() as session:
                team_row = (
                    await session.execute(
                        text(
                            "SELECT t.id, t.name FROM teams t JOIN requests r ON r.team_id = t.id "
                            "GROUP BY t.id, t.name ORDER BY count(*) DESC LIMIT 1"
                        )
                    )
                ).one()
            team = Scope(team_row.id, team_row.name)
            log(f"team scope: {team.team_name} (the largest team)")
            results = await time_everything(db, settings, team, args)
            print_table(results)
            if args.explain:
                await explain(db)
        finally:
            await db.dispose()
        if not args.keep:
            await drop_database(admin)
            dropped = True
            log(f"dropped {DB_NAME} (pass --keep to keep it, then --reuse to time it again)")
    except BaseException:
        if not dropped and not args.keep:
            await drop_database(admin)
        raise
    finally:
        await admin.dispose()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests to seed (default 1,000,000)")
    parser.add_argument(
        "--database-url",
        help=f"a PostgreSQL server to use (postgresql://...); the bench creates and drops `{DB_NAME}` on it. "
        "Default: an embedded PostgreSQL under --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        default=str(ROOT / ".cascade" / "bench"),
        help="embedded cluster directory (default .cascade/bench)",
    )
    parser.add_argument("--keep", action="store_true", help=f"keep `{DB_NAME}` afterwards")
    parser.add_argument("--reuse", action="store_true", help=f"time an existing `{DB_NAME}` instead of seeding")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case, after one warm-up (default 5)")
    parser.add_argument("--export-runs", type=int, default=5, help="timed runs of each full export (default 5)")
    parser.add_argument(
        "--export-budget",
        type=float,
        default=120.0,
        help="seconds after which an export run is stopped and reported as such (default 120)",
    )
    parser.add_argument("--no-export", action="store_true", help="skip the full export")
    parser.add_argument(
        "--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) of the 30-day admin reports"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.runs < 1 or args.export_runs < 1:
        parser.error("--requests, --runs and --export-runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin_url = admin_url_for(args)
    return asyncio.run(run(args, admin_url))


if __name__ == "__main__":
    sys.exit(main())
