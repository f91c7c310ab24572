"""`cascade demo --requests 50` end to end; every figure it prints is recomputed from the raw ledger rows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from service.core.database import Database
from service.money.catalog import Catalog, TokenUsage
from service.tables import Attempt, Cap, Request
from tests.processes import CASCADE


def money(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def percentile(values: list[Decimal], pct: int) -> Decimal:
    ordered = sorted(values)
    index = max(0, -(-pct * len(ordered) // 100) - 1)
    return ordered[index]


async def test_demo_report_equals_sums_over_the_ledger(database_url: str, db: Database, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CASCADE_"))}
    env |= {"DATABASE_URL": database_url, "CASCADE_DATA_DIR": str(tmp_path)}
    result = await asyncio.to_thread(
        subprocess.run,
        [CASCADE, "demo", "--requests", "50", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    async with db.transaction() as session:
        requests = (await session.scalars(select(Request))).all()
        attempts = (await session.scalars(select(Attempt))).all()
        caps = (await session.scalars(select(Cap))).all()

    assert report["requests"] == len(requests) == 50
    assert report["http_statuses"] == {"200": 50}
    answered = [r for r in requests if r.status == "ok"]
    escalated = [r for r in answered if r.escalated]
    assert report["escalated"] == len(escalated) > 0
    assert Decimal(report["escalation_rate"]) == Decimal(len(escalated)) / len(answered)
    assert report["escalation_reasons"] == dict(Counter(r.escalation_reason for r in escalated))

    for model in report["models"]:
        rows = [a for a in attempts if a.model == model["model"]]
        assert model["attempts"] == len(rows)
        assert Decimal(model["cost_usd"]) == sum((a.cost_usd for a in rows if a.cost_usd), Decimal(0))
        assert model["tokens"]["input"] == sum(a.input_tokens or 0 for a in rows)
        assert model["tokens"]["output"] == sum(a.output_tokens or 0 for a in rows)
    assert {m["model"] for m in report["models"]} == {a.model for a in attempts}

    costs = [r.cost_usd for r in requests]
    total = sum(costs, Decimal(0))
    assert Decimal(report["total_cost_usd"]) == total == sum((a.cost_usd or Decimal(0) for a in attempts), Decimal(0))
    per_request = report["cost_per_request_usd"]
    assert Decimal(per_request["mean"]) == total / len(costs)
    assert Decimal(per_request["p50"]) == percentile(costs, 50)
    assert Decimal(per_request["p95"]) == percentile(costs, 95)

    catalog = Catalog()
    all_strong = Decimal(0)
    strong_model = {r.id: r.strong_model for r in requests}
    for a in attempts:  # every cheap-stage call, priced at the strong model's price of its day
        if a.stage != "cheap":
            continue
        price = catalog.price(strong_model[a.request_id], a.reserved_at)
        if a.input_tokens is None:
            all_strong += price.worst_case(a.input_token_bound, a.max_tokens)
        else:
            usage = TokenUsage(input=a.input_tokens, output=a.output_tokens or 0)
            all_strong += price.cost(usage)
    assert Decimal(report["all_strong_cost_usd"]) == all_strong
    assert Decimal(report["savings_usd"]) == all_strong - total > 0

    day = next(c for c in caps if c.period == "day")
    reported = next(c for c in report["caps"] if c["cap"].startswith("global day"))
    assert Decimal(reported["spent_usd"]) == day.spent_usd == total
    assert Decimal(reported["reserved_usd"]) == 0
