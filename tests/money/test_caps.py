"""The hard cap under concurrency: 200 clients at once against a cap of about half their worst case."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from service.cascade.prompt import Task, build_request
from service.core.clock import utcnow
from service.core.database import Database
from service.core.settings import Settings
from service.money.catalog import Catalog
from service.simulator import Simulator, SimulatorConfig
from tests.harness import SENTIMENT, assert_ledger_invariants, caps, running_service

CLIENTS = 200


def text_of(i: int, behaviour: str) -> str:
    return f"Review {i:04d}: the kettle boils quickly and looks nice. {{{{sim:cheap={behaviour}}}}}"


def worst_case(model: str, text: str) -> Decimal:
    catalog = Catalog()
    request = build_request(catalog.model(model), Task(tuple(SENTIMENT)), text)
    return catalog.price(model, utcnow(), request.input_token_bound).worst_case(
        request.input_token_bound, request.max_tokens
    )


async def sample_caps(db: Database, peaks: list[tuple[Decimal, Decimal]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for cap in await caps(db):
            peaks.append((cap.spent_usd + cap.reserved_usd, cap.cap_usd))
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(
    ("behaviour", "share"),
    [
        # Every request escalates; the cap is half of everything's worst case: refusals come at the strong stage.
        ("conf=0.3", Decimal("0.5")),
        # Confident answers; the cap is half the worst case of the first attempts: refusals come up front.
        ("conf=0.97", Decimal("0.5")),
    ],
)
async def test_concurrent_requests_never_exceed_the_cap(
    make_settings: Callable[..., Settings], database_url: str, db: Database, behaviour: str, share: Decimal
) -> None:
    texts = [text_of(i, behaviour) for i in range(CLIENTS)]
    escalates = behaviour == "conf=0.3"
    demand = sum(
        (worst_case("claude-haiku-4-5-20251001", t) + (worst_case("claude-sonnet-5-5", t) if escalates else 0))
        for t in texts
    )
    cap = (demand * share).quantize(Decimal("0.000001"))
    # Slow answers keep every first reservation held at once, so the cap bites whatever the scheduling.
    async with Simulator(SimulatorConfig(latency_ms=1500)) as sim:
        # 200 reservations at once queue on the global cap rows; a slow CI machine can make the last of them
        # wait past the default 5 s for a pooled connection, which is a 503 by design (overload), not what
        # this test is about. Issue 5 (throughput) is where that queue gets shorter.
        settings = make_settings(
            ANTHROPIC_BASE_URL=sim.url,
            CASCADE_DAILY_CAP_USD=cap,
            CASCADE_DB_POOL_SIZE=20,
            CASCADE_DB_TIMEOUT_S=20,
        )
        async with running_service(settings, database_url, db, sim) as service:
            peaks: list[tuple[Decimal, Decimal]] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_caps(db, peaks, stop))
            limits = httpx.Limits(max_connections=CLIENTS)
            async with httpx.AsyncClient(base_url=str(service.client.base_url), limits=limits, timeout=120) as client:
                responses = await asyncio.gather(
                    *(
                        client.post("/v1/classify", json={"text": t, "labels": SENTIMENT}, headers=service.auth)
                        for t in texts
                    )
                )
            stop.set()
            await sampler

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 402}, (statuses, {r.text for r in responses if r.status_code not in (200, 402)})
    assert statuses[200] > 0 and statuses[402] > 0, f"the cap should bite but not stop everything: {statuses}"
    assert peaks and all(used <= limit for used, limit in peaks), "spent + reserved exceeded the cap"

    refused = [r for r in responses if r.status_code == 402]
    for r in refused:
        error = r.json()["error"]
        assert error["type"] == "cost_cap_exceeded" and error["cap"] == "global_daily"
        assert Decimal(error["remaining_usd"]) >= 0

    attempts = await service.attempts()
    calls = [c for c in sim.calls if c.endpoint == "messages"]
    assert len(calls) == len(attempts), "every upstream call has exactly one ledger row, and no refusal made a call"
    assert Counter(c.model for c in calls) == Counter(a.model for a in attempts)
    if not escalates:
        called = {c.text for c in calls}
        sent = dict(zip(texts, responses, strict=True))
        assert all(sent[t].status_code == 200 for t in called)
        assert not any(t in called for t, r in sent.items() if r.status_code == 402), "a refused request was sent"

    await assert_ledger_invariants(db)
    day = next(c for c in await caps(db) if c.period == "day")
    assert day.cap_usd == cap
    assert day.spent_usd == sum((a.cost_usd or Decimal(0) for a in attempts), Decimal(0))
