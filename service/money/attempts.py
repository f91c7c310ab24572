"""What one upstream attempt is to the money path: its plan, the reservation it holds, and what it came to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from service.money.caps import TeamCaps
from service.money.catalog import TokenUsage


@dataclass(frozen=True)
class AttemptPlan:
    request_id: uuid.UUID
    team_id: uuid.UUID
    attempt_no: int
    stage: str
    model: str
    input_token_bound: int
    max_tokens: int
    team_caps: TeamCaps = field(default_factory=TeamCaps)
    # The model the all-strong counterfactual prices a cheap-stage attempt at; None for the strong stage.
    strong_model: str | None = None
    request_created_at: datetime | None = None  # None: the reservation's own time
    task_hash: str = ""
    cache_ttl: str | None = None  # the prompt's prefix is marked for caching (its writes may cost more)


@dataclass(frozen=True)
class Reservation:
    attempt_id: int
    request_id: uuid.UUID
    model: str
    amount: Decimal
    reserved_at: datetime
    input_token_bound: int
    strong_model: str | None = None


@dataclass(frozen=True)
class Settlement:
    """What one attempt came to. `usage` None means the outcome is unknown: charge the reservation."""

    outcome: str
    usage: TokenUsage | None
    http_status: int | None = None
    stop_reason: str | None = None
    label: str | None = None
    confidence: Decimal | None = None
    escalation_reason: str | None = None
    upstream_request_id: str | None = None
    latency_ms: int | None = None
    error_message: str | None = None
