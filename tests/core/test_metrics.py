"""GET /metrics after a mixed workload: every counter agrees with the ledger, every gauge with the cap rows."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service.core.database import Database
from service.core.settings import Settings
from service.simulator import Simulator
from service.tables import Attempt, Cap, Request
from tests.harness import Service, running_service

TEXT = "The kettle boils fast and the lid shuts well."
KINDS = {
    "input": "input_tokens",
    "cache_write_5m": "cache_write_5m_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "cache_read": "cache_read_tokens",
    "output": "output_tokens",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def series(samples: Samples, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
    """{label values: value} of one sample name, zero-valued series left out."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in samples.items():
        if sample == name and value:
            as_dict = dict(labels)
            out[tuple(as_dict[n] for n in label_names)] = value
    return out


async def scrape(service: Service) -> Samples:
    response = await service.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def ledger(db: Database) -> tuple[list[Request], list[Attempt], list[Cap]]:
    async with db.transaction() as session:
        requests = list((await session.scalars(select(Request))).all())
        attempts = list((await session.scalars(select(Attempt).order_by(Attempt.id))).all())
        caps = list((await session.scalars(select(Cap))).all())
    return requests, attempts, caps


# Each text is one request: confident, low confidence, malformed, refusal, a retried 529, a rejected 400, and a
# cheap model that is down (escalated as unavailable) -- every counter gets more than one series.
WORKLOAD = [
    TEXT + " {{sim:cheap=conf=0.97}}",
    TEXT + " {{sim:cheap=conf=0.95}}",
    TEXT + " {{sim:cheap=conf=0.40;strong=conf=0.9}}",
    TEXT + " {{sim:cheap=malformed;strong=conf=0.9}}",
    TEXT + " {{sim:cheap=refusal;strong=conf=0.9}}",
    TEXT + " {{sim:cheap=529,conf=0.96}}",
    TEXT + " {{sim:cheap=400}}",
    TEXT + " {{sim:cheap=529,529,529,529,529;strong=conf=0.9}}",
]


async def test_metrics_agree_with_the_ledger(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    settings = make_settings(CASCADE_MAX_ATTEMPTS=3, CASCADE_DAILY_CAP_USD=5)
    async with running_service(settings, database_url, db, sim) as service:
        before = await scrape(service)
        assert series(before, "cascade_requests_total", "outcome", "model") == {}
        # A directive's comma sequence runs per distinct text, so each copy is made distinct.
        texts = [f"{text} (copy {n})" for n in range(3) for text in WORKLOAD]
        responses = await asyncio.gather(*(service.classify(text) for text in texts))
        statuses = Counter(r.status_code for r in responses)
        assert statuses[200] >= 15 and statuses[502] == 3, statuses
        samples = await scrape(service)
        requests, attempts, caps = await ledger(db)

    assert len(requests) == len(WORKLOAD) * 3
    expected_requests = Counter((r.status, r.model or "") for r in requests)
    assert series(samples, "cascade_requests_total", "outcome", "model") == {
        k: float(v) for k, v in expected_requests.items()
    }
    expected_escalations = Counter(r.escalation_reason for r in requests if r.escalated)
    assert len(expected_escalations) >= 3
    assert series(samples, "cascade_escalations_total", "reason") == {
        (k,): float(v) for k, v in expected_escalations.items() if k is not None
    }

    tokens: Counter[tuple[str, str]] = Counter()
    cost: dict[str, Decimal] = {}
    by_status: Counter[tuple[str, str, str]] = Counter()
    for a in attempts:
        for kind, column in KINDS.items():
            tokens[(a.model, kind)] += getattr(a, column) or 0
        cost[a.model] = cost.get(a.model, Decimal(0)) + (a.cost_usd or Decimal(0))
        by_status[(a.model, a.stage, str(a.http_status) if a.http_status is not None else a.outcome)] += 1
    assert series(samples, "cascade_tokens_total", "model", "kind") == {k: float(v) for k, v in tokens.items() if v}
    got_cost = series(samples, "cascade_cost_usd_total", "model")
    assert set(got_cost) == {(m,) for m, c in cost.items() if c}
    for model, exact in cost.items():
        assert got_cost.get((model,), 0.0) == pytest.approx(float(exact), rel=1e-12, abs=1e-12)
    assert series(samples, "cascade_upstream_attempts_total", "model", "stage", "status") == {
        k: float(v) for k, v in by_status.items()
    }
    assert any(status == "529" for _, _, status in by_status)

    # A retry is an attempt after another of the same request and stage; it is counted by the status retried.
    retries: Counter[tuple[str, str]] = Counter()
    last: dict[tuple[object, str], Attempt] = {}
    for a in sorted(attempts, key=lambda a: (str(a.request_id), a.attempt_no)):
        previous = last.get((a.request_id, a.stage))
        if previous is not None:
            retries[(a.model, str(previous.http_status) if previous.http_status else previous.outcome)] += 1
        last[(a.request_id, a.stage)] = a
    assert retries, "the workload retries"
    assert series(samples, "cascade_upstream_retries_total", "model", "status") == {
        k: float(v) for k, v in retries.items()
    }

    assert samples[("cascade_request_duration_seconds_count", (("outcome", "ok"),))] == expected_requests_by(
        requests, "ok"
    )
    timed = Counter(a.model for a in attempts if a.latency_ms is not None)
    for model, n in timed.items():
        assert samples[("cascade_upstream_duration_seconds_count", (("model", model),))] == n
    assert samples[("cascade_requests_in_flight", ())] == 0

    # Gauges come from the cap rows at scrape time: nothing held, and the global day cap's spend is the ledger's.
    assert samples[("cascade_database_up", ())] == 1
    assert samples[("cascade_reservations_held", ())] == 0
    day = next(c for c in caps if c.scope == "global" and c.period == "day")
    labels = (("period", "day"), ("scope", "global"), ("team", ""))
    assert samples[("cascade_cap_spent_usd", labels)] == pytest.approx(float(day.spent_usd), abs=1e-12)
    assert samples[("cascade_cap_limit_usd", labels)] == 5.0
    assert samples[("cascade_cap_remaining_usd", labels)] == pytest.approx(5.0 - float(day.spent_usd), abs=1e-12)
    team_day = (("period", "day"), ("scope", "team"), ("team", "team-a"))
    assert ("cascade_cap_remaining_usd", team_day) not in samples, "a team without a cap has no remaining"
    assert samples[("cascade_cap_spent_usd", team_day)] == pytest.approx(float(day.spent_usd), abs=1e-12)


def expected_requests_by(requests: list[Request], status: str) -> float:
    return float(sum(1 for r in requests if r.status == status))


async def test_held_reservations_show_while_a_call_is_in_flight(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    async with running_service(make_settings(), database_url, db, sim) as service:
        slow = asyncio.create_task(service.classify(TEXT + " {{sim:cheap=slow:1.5+conf=0.97}}"))
        for _ in range(100):
            samples = await scrape(service)
            if samples[("cascade_reservations_held", ())] == 1:
                break
            await asyncio.sleep(0.02)
        assert samples[("cascade_reservations_held", ())] == 1
        assert samples[("cascade_reservations_held_usd", ())] > 0
        assert samples[("cascade_requests_in_flight", ())] == 1
        reserved = samples[("cascade_cap_reserved_usd", (("period", "day"), ("scope", "global"), ("team", "")))]
        assert reserved == samples[("cascade_reservations_held_usd", ())]
        assert (await slow).status_code == 200
        after = await scrape(service)
    assert after[("cascade_reservations_held", ())] == 0
    assert after[("cascade_requests_in_flight", ())] == 0


async def test_metrics_still_answer_when_the_database_is_gone(
    make_settings: Callable[..., Settings], sim: Simulator, db: Database
) -> None:
    settings = make_settings(DATABASE_URL="postgresql+asyncpg://nobody@127.0.0.1:9/none", CASCADE_DB_TIMEOUT_S=1)
    async with running_service(settings, "postgresql+asyncpg://nobody@127.0.0.1:9/none", db, sim) as service:
        samples = await scrape(service)
    assert samples[("cascade_database_up", ())] == 0
    assert ("cascade_reservations_held", ()) not in samples
