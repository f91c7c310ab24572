"""Shadow calibration: a task's shadow rate asks the strong model about kept answers too, off the request path,
within the caps, and records whether the two agree."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from service.tables import Attempt, Request
from service.tenancy.teams import Teams
from tests.harness import Service, assert_ledger_invariants, classify_task, put_task, settled, until


async def shadow_attempts(service: Service) -> list[Attempt]:
    return [a for a in await service.attempts() if a.stage == "shadow"]


async def test_shadow_calls_follow_the_rate_within_sampling_noise_and_record_agreement(service: Service) -> None:
    n, rate = 300, 0.3
    await put_task(service, "shadowed", shadow_rate=rate, cache_ttl_s=0)
    for i in range(n):
        response = await classify_task(service, f"Review {i}: works well. {{{{sim:cheap=conf=0.99}}}}", "shadowed")
        assert response.status_code == 200, response.text
        assert not response.json()["escalated"]
    await settled(service)
    shadows = await shadow_attempts(service)
    # Binomial(300, 0.3): mean 90, sd 7.9; four sd either way fails a correct service about once in 16,000 runs.
    mean, sd = n * rate, math.sqrt(n * rate * (1 - rate))
    assert abs(len(shadows) - mean) <= 4 * sd, f"{len(shadows)} shadow calls for {n} requests at {rate}"
    strong = service.settings.strong_model
    assert all(a.model == strong and a.outcome == "answered" and a.strong_equiv_usd is None for a in shadows)
    assert len({a.request_id for a in shadows}) == len(shadows), "at most one shadow call per request"
    async with service.db.transaction() as session:
        requests = {r.id: r for r in (await session.scalars(select(Request))).all()}
    for a in shadows:
        request = requests[a.request_id]
        assert request.shadow_label == a.label and request.shadow_cost_usd == a.cost_usd > 0
        assert request.cost_usd == sum(x.cost_usd for x in await service.attempts(a.request_id) if x.stage == "cheap")
    unshadowed = [r for r in requests.values() if r.id not in {a.request_id for a in shadows}]
    assert all(r.shadow_label is None and r.shadow_cost_usd == 0 for r in unshadowed)
    metrics = (await service.client.get("/metrics")).text
    agreed = sum(1 for a in shadows if a.label == requests[a.request_id].label)
    assert f'cascade_shadow_requests_total{{result="agreed"}} {float(agreed)}' in metrics
    await assert_ledger_invariants(service.db)


async def test_an_escalated_request_is_never_shadowed(service: Service) -> None:
    await put_task(service, "always", shadow_rate=1, cache_ttl_s=0)
    for i in range(5):
        body = (await classify_task(service, f"Unsure {i}. {{{{sim:cheap=conf=0.2}}}}", "always")).json()
        assert body["escalated"]
    await asyncio.sleep(0.3)
    assert await shadow_attempts(service) == []


async def test_a_shadow_call_never_holds_the_response(service: Service) -> None:
    await put_task(service, "always", shadow_rate=1, cache_ttl_s=0)
    response = await classify_task(service, "Good. {{sim:cheap=conf=0.99;strong=slow:3}}", "always")
    assert response.status_code == 200 and not response.json()["escalated"]
    # The response is out while the strong model still sleeps on the shadow call: its ledger row is held.
    shadows = await shadow_attempts(service)
    assert len(shadows) == 1 and shadows[0].state == "reserved"
    await settled(service)
    (shadow,) = await shadow_attempts(service)
    assert shadow.state == "settled" and shadow.outcome == "answered"
    await assert_ledger_invariants(service.db)


async def test_a_shadow_call_is_refused_by_a_cap_like_any_other_spend(service: Service) -> None:
    await put_task(service, "always", shadow_rate=1, cache_ttl_s=0)
    probe = (await classify_task(service, "Probe. {{sim:cheap=conf=0.2}}", "always")).json()
    cheap_reserve = next(a.reserved_usd for a in await service.attempts(probe["id"]) if a.stage == "cheap")
    spent = Decimal(probe["cost_usd"])
    # Room for one more cheap call's worst case, but not for a strong one's (about twice as much).
    await Teams(service.db).set_caps("team-a", spent + cheap_reserve * Decimal("1.3"), None, datetime.now(UTC).date())
    response = await classify_task(service, "Good. {{sim:cheap=conf=0.99}}", "always")
    assert response.status_code == 200 and not response.json()["escalated"]

    # The shadow call runs after the response: wait until it has been refused, then look at the ledger.
    async def refused() -> bool:
        return 'cascade_shadow_requests_total{result="refused"} 1.0' in (await service.client.get("/metrics")).text

    await until(refused, "the shadow call refused")
    assert await shadow_attempts(service) == []
    await assert_ledger_invariants(service.db)
