"""Reserve, settle and sweep on the real database: the authorize-then-capture rules."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from service.core.database import Database
from service.core.errors import CostCapExceeded
from service.money.attempts import AttemptPlan, Settlement
from service.money.budget import Budget
from service.money.catalog import TokenUsage
from service.tables import Attempt, Cap, Request
from tests.harness import NOON, Clock, assert_ledger_invariants, caps, plan, request_row


async def global_caps(db: Database) -> list[Cap]:
    return [c for c in await caps(db) if c.scope == "global"]


async def test_worst_case_reservation_then_settle_at_actual(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget()
    p = plan(team)
    reservation = await b.reserve(p, request_row(p, clock.now))
    assert reservation.amount == (Decimal(2000) * 1 + Decimal(64) * 5) / 1_000_000
    held = await global_caps(db)
    assert [c.reserved_usd for c in held] == [reservation.amount] * 2
    charged = await b.settle(reservation, Settlement("answered", TokenUsage(input=300, output=10)))
    assert charged == Decimal("0.00035")
    assert [(c.spent_usd, c.reserved_usd) for c in await global_caps(db)] == [(Decimal("0.00035"), 0)] * 2
    await assert_ledger_invariants(db, requests_finished=False)


async def test_unknown_outcome_is_charged_at_the_reservation(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget()
    p = plan(team)
    reservation = await b.reserve(p, request_row(p, clock.now))
    assert await b.settle(reservation, Settlement("timeout", None)) == reservation.amount
    assert [c.spent_usd for c in await global_caps(db)] == [reservation.amount] * 2


async def test_refusal_names_the_cap_and_holds_nothing(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget(CASCADE_DAILY_CAP_USD="0.003")
    first = plan(team)
    await b.reserve(first, request_row(first, clock.now))  # 0.00232 held
    second = plan(team)
    with pytest.raises(CostCapExceeded) as refused:
        await b.reserve(second, request_row(second, clock.now))
    assert refused.value.cap == "global_daily"
    assert refused.value.remaining_usd == Decimal("0.003") - Decimal("0.00232")
    assert [c.reserved_usd for c in await global_caps(db)] == [Decimal("0.00232")] * 2, "the refusal reserved nothing"


async def test_charges_land_in_the_period_of_their_reservation(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget()
    clock.now = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    p = plan(team)
    reservation = await b.reserve(p, request_row(p, clock.now))
    clock.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)  # settled after midnight, month end
    await b.settle(reservation, Settlement("answered", TokenUsage(input=100, output=5)))
    p2 = plan(team)
    await b.settle(await b.reserve(p2, request_row(p2, clock.now)), Settlement("answered", TokenUsage(input=100)))
    spent = {(c.period, c.period_start.isoformat()): c.spent_usd for c in await global_caps(db)}
    assert spent == {
        ("day", "2026-11-30"): Decimal("0.000125"),
        ("month", "2026-11-01"): Decimal("0.000125"),
        ("day", "2026-12-01"): Decimal("0.0001"),
        ("month", "2026-12-01"): Decimal("0.0001"),
    }
    await assert_ledger_invariants(db, requests_finished=False)


async def test_sweeper_charges_orphans_at_worst_case_and_the_late_holder_does_not_double_charge(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget(CASCADE_RESERVATION_TTL_S=120)
    orphan_plan, young_plan = plan(team), plan(team)
    orphan = await b.reserve(orphan_plan, request_row(orphan_plan, clock.now))
    clock.now += timedelta(seconds=100)
    young = await b.reserve(young_plan, request_row(young_plan, clock.now))

    assert await b.sweep(now=NOON + timedelta(seconds=121)) == 1, "only the reservation past its TTL is swept"
    late = await b.settle(orphan, Settlement("answered", TokenUsage(input=10, output=1)))
    assert late == orphan.amount, "the late holder learns what the sweeper charged, and charges nothing more"
    await b.settle(young, Settlement("answered", TokenUsage(input=10, output=1)))
    assert await b.sweep(now=NOON + timedelta(hours=1)) == 0

    async with db.transaction() as session:
        swept = await session.get(Attempt, orphan.attempt_id)
        abandoned = await session.get(Request, orphan_plan.request_id)
    assert swept is not None and abandoned is not None
    assert (swept.outcome, swept.settled_by, swept.cost_usd) == ("unknown", "sweeper", orphan.amount)
    assert (abandoned.status, abandoned.error_type, abandoned.cost_usd) == ("failed", "abandoned", orphan.amount)
    day = next(c for c in await global_caps(db) if c.period == "day")
    assert day.spent_usd == orphan.amount + Decimal("0.000015")
    await assert_ledger_invariants(db, requests_finished=False)


async def test_a_cost_above_its_reservation_is_recorded_as_an_overrun(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget(CASCADE_DAILY_CAP_USD="0.003")
    p = plan(team)
    reservation = await b.reserve(p, request_row(p, clock.now))  # 0.00232 of 0.003
    # An upstream that bills past the bound: the truth is kept, the period is closed.
    charged = await b.settle(reservation, Settlement("answered", TokenUsage(input=4000)))
    assert charged == Decimal("0.004")
    day = next(c for c in await global_caps(db) if c.period == "day")
    assert (day.spent_usd, day.reserved_usd, day.overrun_usd) == (Decimal("0.004"), 0, Decimal("0.001"))
    with pytest.raises(CostCapExceeded):
        await b.reserve(plan(team), None)
    async with db.transaction() as session:
        attempt = await session.get(Attempt, reservation.attempt_id)
    assert attempt is not None
    assert attempt.cost_usd == Decimal("0.004")


async def test_configured_global_caps_apply_at_start_but_never_below_what_is_committed(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget(CASCADE_DAILY_CAP_USD="1")
    p = plan(team)
    await b.settle(await b.reserve(p, request_row(p, clock.now)), Settlement("answered", None))  # 0.00232 spent
    lowered, _ = budget(CASCADE_DAILY_CAP_USD="0.001", CASCADE_MONTHLY_CAP_USD="5")
    await lowered.sync_global_caps(clock.now.date())
    amounts = {c.period: c.cap_usd for c in await global_caps(db)}
    assert amounts == {"day": Decimal("0.00232"), "month": Decimal("5")}
    with pytest.raises(CostCapExceeded):
        await lowered.reserve(plan(team), None)
    await assert_ledger_invariants(db, requests_finished=False)


async def test_a_repeated_settle_charges_once_and_still_finishes_the_request(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    """The retry after a lost commit acknowledgement: the second settle finds the first one's work."""
    b, clock = budget()
    p = plan(team)
    reservation = await b.reserve(p, request_row(p, clock.now))
    result = Settlement("answered", TokenUsage(input=300, output=10))
    first = await b.settle(reservation, result)
    again = await b.settle(reservation, result, finish={"status": "ok", "label": "a", "finished_at": clock.now})
    assert first == again == Decimal("0.00035")
    assert [c.spent_usd for c in await global_caps(db)] == [Decimal("0.00035")] * 2
    async with db.transaction() as session:
        request = await session.get(Request, p.request_id)
    assert request is not None
    assert (request.status, request.cost_usd) == ("ok", Decimal("0.00035"))
    await assert_ledger_invariants(db)


async def test_an_abandoned_request_that_had_escalated_counts_as_escalated(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget(CASCADE_RESERVATION_TTL_S=120)
    cheap_plan = plan(team)
    cheap = await b.reserve(cheap_plan, request_row(cheap_plan, clock.now))
    low = Settlement("answered", TokenUsage(input=10, output=1), escalation_reason="low_confidence")
    await b.settle(cheap, low)
    strong_plan = AttemptPlan(
        cheap_plan.request_id, team, 2, "strong", "claude-sonnet-5-5", input_token_bound=2000, max_tokens=64
    )
    await b.reserve(strong_plan)  # the replica dies during the strong call
    assert await b.sweep(now=clock.now + timedelta(seconds=121)) == 1
    async with db.transaction() as session:
        abandoned = await session.get(Request, cheap_plan.request_id)
    assert abandoned is not None
    assert (abandoned.status, abandoned.error_type) == ("failed", "abandoned")
    assert (abandoned.escalated, abandoned.escalation_reason) == (True, "low_confidence")


async def test_the_gauges_read_the_cap_rows_and_the_reservations_from_one_snapshot(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    """/metrics reads the cap rows and the held reservations in two statements; a reservation that commits
    between them must not show as held on one and missing from the other."""
    b, clock = budget()
    done = asyncio.Event()

    async def churn() -> None:
        for _ in range(150):
            p = plan(team)
            reservation = await b.reserve(p, request_row(p, clock.now))
            await b.settle(reservation, Settlement("answered", TokenUsage(input=100, output=5)))
        done.set()

    async def read() -> list[tuple[Decimal, Decimal]]:
        seen = []
        while not done.is_set():
            gauges = await b.gauges()
            global_day = [c.reserved_usd for c in gauges.caps if c.scope == "global" and c.period == "day"]
            seen.append((sum(global_day, Decimal(0)), gauges.reservations_held_usd))
        return seen

    _, *readers = await asyncio.gather(churn(), read(), read(), read())
    seen = [pair for reader in readers for pair in reader]
    assert any(held for _, held in seen), "no read landed while a reservation was held"
    assert [pair for pair in seen if pair[0] != pair[1]] == []
