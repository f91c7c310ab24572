"""A team's run report from the ledger: escalation, tokens and cost per model, and savings."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from service.core.database import Database
from service.tables import Attempt, Request


@dataclass
class ModelSpend:
    model: str
    attempts: int = 0
    tokens: Counter[str] = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True)
class RunReport:
    requests: int
    by_status: dict[str, int]
    escalated: int
    escalation_rate: Decimal  # of answered requests
    reasons: dict[str, int]
    models: list[ModelSpend]
    total_cost_usd: Decimal
    cost_mean_usd: Decimal
    cost_p50_usd: Decimal
    cost_p95_usd: Decimal
    all_strong_cost_usd: Decimal
    savings_usd: Decimal
    savings_pct: Decimal


def nearest_rank(sorted_values: list[Decimal], pct: int) -> Decimal:
    """The nearest-rank percentile: the smallest value with at least pct% of values at or below it."""
    if not sorted_values:
        return Decimal(0)
    rank = max(1, -(-pct * len(sorted_values) // 100))
    return sorted_values[rank - 1]


async def run_report(db: Database, team_id: uuid.UUID, since: datetime) -> RunReport:
    async with db.transaction() as session:
        requests = (
            await session.scalars(select(Request).where(Request.team_id == team_id, Request.created_at >= since))
        ).all()
        ids = [r.id for r in requests]
        attempts = (
            (
                await session.scalars(
                    select(Attempt).where(Attempt.request_id.in_(ids)).order_by(Attempt.request_id, Attempt.attempt_no)
                )
            ).all()
            if ids
            else []
        )

    by_request: dict[uuid.UUID, list[Attempt]] = {}
    models: dict[str, ModelSpend] = {}
    for a in attempts:
        by_request.setdefault(a.request_id, []).append(a)
        spend = models.setdefault(a.model, ModelSpend(a.model))
        spend.attempts += 1
        spend.cost_usd += a.cost_usd or Decimal(0)
        for kind in ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output"):
            spend.tokens[kind] += getattr(a, f"{kind}_tokens") or 0

    answered = [r for r in requests if r.status == "ok"]
    escalated = [r for r in answered if r.escalated]
    costs = sorted(r.cost_usd for r in requests)
    total = sum(costs, Decimal(0))
    counterfactual = sum((r.all_strong_cost_usd for r in requests), Decimal(0))
    savings = counterfactual - total
    return RunReport(
        requests=len(requests),
        by_status=dict(Counter(r.status for r in requests)),
        escalated=len(escalated),
        escalation_rate=Decimal(len(escalated)) / len(answered) if answered else Decimal(0),
        reasons=dict(Counter(r.escalation_reason for r in escalated if r.escalation_reason)),
        models=sorted(models.values(), key=lambda m: m.model),
        total_cost_usd=total,
        cost_mean_usd=total / len(costs) if costs else Decimal(0),
        cost_p50_usd=nearest_rank(costs, 50),
        cost_p95_usd=nearest_rank(costs, 95),
        all_strong_cost_usd=counterfactual,
        savings_usd=savings,
        savings_pct=savings / counterfactual * 100 if counterfactual else Decimal(0),
    )
