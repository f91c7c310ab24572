"""A classification as the cascade sees it: the command, one run in progress, and what it came to."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.cascade.policy import EscalationReason, Verdict
from service.cascade.prompt import Task
from service.cascade.retry import Deadline
from service.money.caps import TeamCaps
from service.money.catalog import ModelInfo, TokenUsage


@dataclass(frozen=True)
class ClassifyCommand:
    request_id: uuid.UUID
    team_id: uuid.UUID
    text: str
    task: Task
    threshold: Decimal
    team_caps: TeamCaps = field(default_factory=TeamCaps)
    cheap_model: str | None = None  # None: the server's (a named task names its own)
    strong_model: str | None = None
    shadow_rate: Decimal = Decimal(0)  # the share of kept answers also asked of the strong model (calibration)
    cache_key: str | None = None  # a named task's response-cache entry for this text (None: not cached)
    cache_ttl_s: int = 0
    eval_run_id: uuid.UUID | None = None  # an offline evaluation's item (Cascade.pair)


@dataclass(frozen=True)
class Pair:
    """What each model answered for one text (an offline evaluation), and what each call cost."""

    cheap: Verdict
    cheap_cost: Decimal
    strong: Verdict
    strong_cost: Decimal
    refused: bool = False  # a cap refused the strong call


@dataclass(frozen=True)
class AttemptRecord:
    attempt_no: int
    stage: str
    model: str
    outcome: str
    cost_usd: Decimal
    usage: TokenUsage | None
    latency_ms: int | None
    upstream_request_id: str | None
    stop_reason: str | None = None
    label: str | None = None
    confidence: Decimal | None = None
    escalation_reason: str | None = None
    http_status: int | None = None


@dataclass(frozen=True)
class Classification:
    id: uuid.UUID
    label: str
    confidence: Decimal
    model: str
    escalated: bool
    escalation_reason: str | None
    attempts: list[AttemptRecord]
    cost_usd: Decimal
    latency_ms: int
    cache_hit: bool = False


@dataclass
class Run:
    """One classification in progress: its command, deadline, models and the attempts made so far."""

    cmd: ClassifyCommand
    created_at: datetime
    deadline: Deadline
    cheap: ModelInfo
    strong: ModelInfo
    started: float = field(default_factory=time.monotonic)
    attempts: list[AttemptRecord] = field(default_factory=list)
    request_written: bool = False
    escalation_reason: EscalationReason | None = None
    finished_ms: int | None = None

    @property
    def cost(self) -> Decimal:
        return sum((a.cost_usd for a in self.attempts), Decimal(0))

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def request_row(self) -> dict[str, Any]:
        """The request's row as its first reservation (or its failure, or a cache hit) writes it."""
        cmd = self.cmd
        return {
            "id": cmd.request_id,
            "team_id": cmd.team_id,
            "status": "pending",
            "task_hash": cmd.task.hash,
            "labels": list(cmd.task.labels),
            "instructions": cmd.task.instructions,
            "threshold": cmd.threshold,
            "text_chars": len(cmd.text),
            "cheap_model": self.cheap.id,
            "strong_model": self.strong.id,
            "created_at": self.created_at,
            "task_id": cmd.task.version_id,
            "eval_run_id": cmd.eval_run_id,
        }
