"""The calibration report, recomputed here from the raw ledger rows in plain Python.

The workload scripts each request's cheap and strong answers (label and confidence) through simulator
directives, so that every confidence range has agreeing and disagreeing pairs, some escalations have no strong
answer, and some cheap answers are unusable. The test then reads the requests and attempts back and derives
every figure of the report on its own: per request, not per bucket as the service does.
"""

from __future__ import annotations

import math
import random
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from sqlalchemy import select

from service.tables import Attempt, Request
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, classify_task, put_task, settled

Q = Decimal("0.000001")


def q(value: Decimal) -> str:
    return format(value.quantize(Q, ROUND_HALF_EVEN).normalize(), "f") if value else "0"


def money(value: Decimal) -> str:
    value = value.quantize(Decimal("0.0000000001"), ROUND_HALF_EVEN)
    return format(value.normalize(), "f") if value else "0"


def workload(rng: random.Random) -> list[str]:
    texts = []
    for i in range(120):
        confidence = rng.choice([0.15, 0.42, 0.63, 0.71, 0.8, 0.84, 0.86, 0.9, 0.93, 0.97, 0.99, 1.0])
        cheap = rng.choice(SENTIMENT)
        strong = cheap if rng.random() < 0.4 + confidence / 2 else rng.choice([s for s in SENTIMENT if s != cheap])
        strong_behaviour = "400" if i % 29 == 0 else f"label={strong}+conf=0.9"
        texts.append(f"Item {i}. {{{{sim:cheap=label={cheap}+conf={confidence};strong={strong_behaviour}}}}}")
    texts += [f"Broken {i}. {{{{sim:cheap=malformed;strong=label=neutral+conf=0.9}}}}" for i in range(4)]
    return texts


def expected(requests: list[Request], attempts: list[Attempt], threshold: Decimal, target: Decimal) -> dict[str, Any]:
    decided = [r for r in requests if not r.cache_hit and (r.status == "ok" or r.escalated)]
    n = len(decided)
    valid = [r for r in decided if r.cheap_confidence is not None]
    defects = n - len(valid)

    def pct(r: Request) -> int:
        assert r.cheap_confidence is not None
        return min(int(r.cheap_confidence * 100), 100)

    def escalated_pair(r: Request) -> bool:
        return r.escalated and r.status == "ok"

    def shadow_pair(r: Request) -> bool:
        return not r.escalated and r.shadow_label is not None

    def agrees(r: Request) -> bool:
        return (r.label if r.escalated else r.shadow_label) == r.cheap_label

    shadow = [r for r in valid if shadow_pair(r)]

    def rate_of(pairs: list[Request]) -> Decimal | None:
        return Decimal(sum(1 for p in pairs if not agrees(p))) / len(pairs) if pairs else None

    pooled = {True: rate_of([r for r in valid if escalated_pair(r)]), False: rate_of(shadow)}

    def disagreement(r: Request) -> Decimal | None:
        """This request's expected disagreement were it kept: the rate of its own stratum in its percentile, else of
        all pairs of its kind."""
        peers = [p for p in valid if pct(p) == pct(r) and p.escalated == r.escalated]
        own = rate_of([p for p in peers if (escalated_pair(p) if r.escalated else shadow_pair(p))])
        return own if own is not None else pooled[r.escalated]

    per_request = {r.id: disagreement(r) for r in valid}
    cheap_cost = sum(a.cost_usd for a in attempts if a.stage == "cheap" and a.request_id in {r.id for r in decided})
    strong_attempts = [
        a for a in attempts if a.stage in ("strong", "shadow") and a.request_id in {r.id for r in decided}
    ]
    strong_cost = sum((a.cost_usd for a in strong_attempts), Decimal(0))
    strong_calls = len({(a.request_id, a.stage) for a in strong_attempts})
    mean_cheap, mean_strong = cheap_cost / n, strong_cost / strong_calls

    sweep = []
    for k in range(101):
        t = Decimal(k) / 100
        rate = (Decimal(defects + sum(1 for r in valid if r.cheap_confidence < t)) / n).quantize(Q, ROUND_HALF_EVEN)
        kept = [per_request[r.id] for r in valid if r.cheap_confidence >= t]
        agreement = None if any(d is None for d in kept) else q(1 - sum(kept, Decimal(0)) / n)
        cost = money(1000 * (mean_cheap + rate * mean_strong))
        sweep.append({"threshold": q(t), "escalation_rate": q(rate), "agreement": agreement, "cost_per_1000_usd": cost})
    recommended = next((p for p in sweep if p["agreement"] is not None and Decimal(p["agreement"]) >= target), None)
    # As it ran: the escalated requests got the strong answer, the kept ones are estimated.
    current_rate = (Decimal(defects + sum(1 for r in valid if r.escalated)) / n).quantize(Q, ROUND_HALF_EVEN)
    kept_now = [per_request[r.id] for r in valid if not r.escalated]
    current = {
        "threshold": q(threshold),
        "escalation_rate": q(current_rate),
        "agreement": None if any(d is None for d in kept_now) else q(1 - sum(kept_now, Decimal(0)) / n),
        "cost_per_1000_usd": money(1000 * (mean_cheap + current_rate * mean_strong)),
    }

    bins = []
    for i in range(10):
        lo, hi = Decimal(i) / 10, Decimal(i + 1) / 10
        members = [r for r in valid if lo <= r.cheap_confidence < hi or (i == 9 and r.cheap_confidence == 1)]
        pairs = [r for r in members if escalated_pair(r) or shadow_pair(r)]
        estimates = [per_request[r.id] for r in members]
        bins.append(
            {
                "requests": len(members),
                "escalated_pairs": sum(1 for r in members if escalated_pair(r)),
                "shadow_pairs": sum(1 for r in members if shadow_pair(r)),
                "mean_confidence": q(sum(r.cheap_confidence for r in pairs) / len(pairs)) if pairs else None,
                "agreement": None
                if not members or any(e is None for e in estimates)
                else q(1 - sum(estimates, Decimal(0)) / len(members)),
            }
        )
    agree = sum(1 for r in shadow if agrees(r))
    z = 1.959964
    p, z2, m = agree / len(shadow), z * z, len(shadow)
    centre, half = (p + z2 / (2 * m)) / (1 + z2 / m), z * math.sqrt(p * (1 - p) / m + z2 / (4 * m * m)) / (1 + z2 / m)
    return {
        "requests": n,
        "sweep": sweep,
        "current": current,
        "recommended": recommended,
        "bins": bins,
        "kept": {
            "pairs": len(shadow),
            "agreement": q(Decimal(agree) / len(shadow)),
            "low": q(Decimal(max(0.0, centre - half))),
            "high": q(Decimal(min(1.0, centre + half))),
        },
    }


async def test_every_figure_of_the_calibration_report_is_recomputed_from_the_ledger(service: Service) -> None:
    await put_task(service, "reviews", shadow_rate=0.6, cache_ttl_s=0)
    for text in workload(random.Random(7)):
        response = await classify_task(service, text, "reviews")
        assert response.status_code in (200, 502), response.text
    # A request that raised the threshold and whose strong call failed: an escalated percentile without a pair
    # of its own (it takes the rate of all escalated pairs).
    raised = "Raised. {{sim:cheap=label=positive+conf=0.97;strong=400}}"
    assert (await classify_task(service, raised, "reviews", threshold=0.99)).status_code == 502
    await settled(service)
    report = await service.client.get("/v1/tasks/reviews/calibration?target=0.9", headers=service.auth)
    assert report.status_code == 200, report.text
    body = report.json()
    async with service.db.transaction() as session:
        requests = list((await session.scalars(select(Request))).all())
        attempts = list((await session.scalars(select(Attempt))).all())
    want = expected(requests, attempts, Decimal("0.85"), Decimal("0.9"))
    assert body["requests"] == want["requests"] == 125
    assert body["sweep"] == want["sweep"]
    assert body["current"] == want["current"] and body["current"]["threshold"] == "0.85"
    assert body["recommended"] == want["recommended"] and want["recommended"] is not None
    assert [{k: b[k] for k in want["bins"][0]} for b in body["bins"]] == want["bins"]
    assert body["kept_accuracy"] == want["kept"] and want["kept"]["pairs"] > 10
    # The recommendation is the cheapest threshold that reaches the target: the one below it does not.
    below = next(
        p
        for p in body["sweep"]
        if Decimal(p["threshold"]) == Decimal(body["recommended"]["threshold"]) - Decimal("0.01")
    )
    assert below["agreement"] is None or Decimal(below["agreement"]) < Decimal("0.9")
    await assert_ledger_invariants(service.db)


async def test_calibration_without_shadow_pairs_says_what_is_missing(service: Service) -> None:
    await put_task(service, "plain", cache_ttl_s=0)
    for i in range(5):
        await classify_task(service, f"Text {i}. {{{{sim:cheap=conf=0.99}}}}", "plain")
    body = (await service.client.get("/v1/tasks/plain/calibration", headers=service.auth)).json()
    assert body["requests"] == 5 and body["kept_accuracy"]["pairs"] == 0
    assert any("shadow" in note for note in body["notes"])
    # Nothing is known of the kept answers, so only escalating everything is known to reach the target.
    assert body["current"]["agreement"] is None
    assert (body["recommended"]["threshold"], body["recommended"]["escalation_rate"]) == ("1", "1")


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 404), ("?version=9", 404), ("?target=1.5", 422), ("?bins=1", 422), ("?start=yesterday", 422)],
)
async def test_calibration_is_scoped_and_checked(service: Service, query: str, status: int) -> None:
    name = "mine" if query else "someone-elses"
    await put_task(service, "mine")
    response = await service.client.get(f"/v1/tasks/{name}/calibration{query}", headers=service.auth)
    assert_error(response, status)
