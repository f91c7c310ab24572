"""The one-statement money path (service/charges.py: reserve and settle in autocommit) under races, lost
replies and cap changes, and the reading of a Message's billing (service/upstream.read_message)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text

from service.cascade.upstream import read_message
from service.core.database import Database
from service.core.errors import CostCapExceeded, DatabaseUnavailable
from service.core.settings import Settings
from service.money.attempts import Settlement
from service.money.budget import Budget
from service.money.caps import CapRepository
from service.money.catalog import Catalog, TokenUsage
from service.money.ledger import LedgerRepository
from service.tables import Attempt
from service.tenancy.teams import Teams
from tests.harness import NOON, Clock, assert_ledger_invariants, caps, plan, request_row, until
from tests.wire import LossyProxy


async def _sweeper_settles(db: Database, attempt_id: int, locked: asyncio.Event, release: asyncio.Event) -> None:
    """What Budget.sweep does for one reservation, holding its transaction open until `release`."""
    async with db.transaction() as session:
        ledger = LedgerRepository(session)
        row = (
            await session.execute(
                select(Attempt.cap_ids, Attempt.reserved_usd, Attempt.request_id)
                .where(Attempt.id == attempt_id)
                .with_for_update()
            )
        ).one()
        await ledger.settle_attempt(
            attempt_id,
            {"outcome": "unknown", "cost_usd": row.reserved_usd, "settled_by": "sweeper", "settled_at": NOON},
        )
        await CapRepository(session).settle(list(row.cap_ids), row.reserved_usd, row.reserved_usd)
        await ledger.add_request_cost(row.request_id, row.reserved_usd, None)
        locked.set()
        await release.wait()


async def lock_waiter(db: Database) -> None:
    """Until a statement of this database waits on a row lock."""

    async def waiting() -> bool:
        async with db.transaction() as session:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool(await session.scalar(text(query)))

    await until(waiting, "a statement waiting on the lock")


async def test_settle_that_waited_on_the_sweeper_reports_the_sweepers_charge(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    b, clock = budget()
    p = plan(team)
    reservation = await b.reserve(p, request_row(p, clock.now))
    locked, release = asyncio.Event(), asyncio.Event()
    sweeper = asyncio.create_task(_sweeper_settles(db, reservation.attempt_id, locked, release))
    await locked.wait()
    holder = asyncio.create_task(b.settle(reservation, Settlement("answered", TokenUsage(input=100, output=5))))
    await lock_waiter(db)  # the holder's statement is now waiting on the attempt row's lock
    release.set()
    await sweeper
    charged = await holder
    await assert_ledger_invariants(db, requests_finished=False)  # the ledger itself is right
    assert charged == reservation.amount, f"the holder reports {charged} for an attempt charged {reservation.amount}"


async def test_repeated_settle_charges_once_and_keeps_the_finish(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    """A settle retried after a lost acknowledgement: the second statement charges nothing."""
    b, clock = budget()
    p = plan(team)
    reservation = await b.reserve(p, request_row(p, clock.now))
    usage = Settlement("answered", TokenUsage(input=100, output=5))
    finish = {"status": "ok", "label": "a", "finished_at": NOON}
    first = await b.settle(reservation, usage, finish)
    second = await b.settle(reservation, usage, finish)
    assert first == second == Decimal("0.000125")
    assert {c.spent_usd for c in await caps(db)} == {first}
    await assert_ledger_invariants(db)


async def attempt_rows(db: Database) -> list[Attempt]:
    async with db.transaction() as session:
        return list((await session.scalars(select(Attempt))).all())


async def test_reserve_whose_reply_is_lost_charges_nothing(
    session_database_url: str, make_settings: Callable[..., Settings], team: uuid.UUID, db: Database
) -> None:
    """The reserve statement commits and its reply is lost on the wire: no call is made, and the reservation
    that did commit is released at no cost (not charged its worst case by the sweeper)."""
    settings = make_settings()
    clock = Clock(NOON)
    async with LossyProxy(session_database_url).running() as proxy:
        lossy = Database(proxy.url, settings)
        b = Budget(lossy, Catalog(), settings, clock)
        try:
            p = plan(team)
            proxy.drop_reply_to("INSERT INTO attempts")
            with pytest.raises(DatabaseUnavailable):
                await b.reserve(p, request_row(p, clock.now))  # the cascade answers 503 and calls nothing
            assert proxy.dropped == 1
            # The statement did commit: its row exists although the holder was told nothing.
            assert [a.reserved_usd > 0 for a in await attempt_rows(db)] == [True]
        finally:
            await b.flush_releases()  # the reservation that did commit is found and released at no cost
            await lossy.dispose()
    rows = await attempt_rows(db)
    assert [(a.state, a.outcome, a.cost_usd, a.settled_by) for a in rows] == [("settled", "not_sent", 0, "holder")]
    clock.now = NOON + timedelta(seconds=settings.reservation_ttl_s + 1)
    await Budget(db, Catalog(), settings, clock).sweep()
    assert {c.spent_usd for c in await caps(db)} == {Decimal(0)}, "charged the worst case for a call never made"
    assert {c.reserved_usd for c in await caps(db)} == {Decimal(0)}, "the released reservation is still held"


def _message(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "content": [{"type": "text", "text": '{"label": "a", "confidence": 0.9}'}],
        "stop_reason": "end_turn",
        "usage": usage,
    }


def test_read_message_reads_the_cache_split() -> None:
    _, _, usage = read_message(
        _message(
            {
                "input_tokens": 10,
                "output_tokens": 3,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": None,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            }
        )
    )
    assert (usage.input, usage.cache_write_5m, usage.cache_write_1h, usage.cache_read, usage.output) == (
        10,
        100,
        200,
        0,
        3,
    )


@pytest.mark.parametrize(
    "usage", [{"output_tokens": 5}, {"input_tokens": None, "output_tokens": 5}, {"input_tokens": 9}]
)
def test_read_message_refuses_usage_without_its_required_counts(usage: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="usage"):
        read_message(_message(usage))


@pytest.mark.parametrize(
    "split",
    [{}, {"ephemeral_5m_input_tokens": 100}, {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 100}],
)
def test_read_message_refuses_a_cache_split_that_does_not_account_for_every_write(split: dict[str, Any]) -> None:
    # Refused as malformed, the attempt is charged its reservation; trusted, 300 written tokens would go unbilled.
    with pytest.raises(ValueError, match="cache_creation"):
        read_message(
            _message(
                {"input_tokens": 10, "output_tokens": 3, "cache_creation_input_tokens": 500, "cache_creation": split}
            )
        )


async def test_bank_concurrent_reserve_settle_sweep_and_cap_changes(
    session_database_url: str,
    make_settings: Callable[..., Settings],
    team: uuid.UUID,
    db: Database,
) -> None:
    """Several 'processes' (own pool, own semaphore) race near the cap while admins change caps, the sweeper runs
    and one process keeps losing the replies of reserve statements that did commit: no overshoot, no deadlock, no
    constraint error, ledger sums exact, and nothing left held once the lost reservations are released."""
    settings = make_settings(CASCADE_DAILY_CAP_USD="0.05", CASCADE_MONTHLY_CAP_USD="0.5", CASCADE_MONEY_CONCURRENCY=4)
    clock = Clock(NOON)
    teams = Teams(db)
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    rng = random.Random(7)

    async def client(b: Budget) -> None:
        while not stop.is_set():
            p = plan(team)
            try:
                r = await b.reserve(p, request_row(p, clock.now))
            except CostCapExceeded:
                outcomes["refused"] += 1
                await asyncio.sleep(0.005)
                continue
            except DatabaseUnavailable:
                outcomes["503"] += 1
                continue
            outcomes["reserved"] += 1
            await asyncio.sleep(rng.random() * 0.01)
            usage = None if rng.random() < 0.01 else TokenUsage(input=rng.randint(0, 100), output=rng.randint(0, 5))
            await b.settle(r, Settlement("answered" if usage else "timeout", usage))

    async with LossyProxy(session_database_url).running() as proxy:
        dbs = [Database(proxy.url, settings)] + [Database(session_database_url, settings) for _ in range(3)]
        budgets = [Budget(d, Catalog(), settings, clock) for d in dbs]

        async def admin() -> None:
            while not stop.is_set():
                await teams.set_caps("budget-team", Decimal(rng.choice(["0.04", "0.06", "1"])), None, NOON.date())
                await budgets[1].sync_global_caps()
                await budgets[2].sweep()
                proxy.drop_reply_to("INSERT INTO attempts")  # the next reserve through the proxy loses its reply
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(client(b)) for b in budgets for _ in range(6)] + [asyncio.create_task(admin())]
        await asyncio.sleep(6)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for b in budgets:
            await b.flush_releases()
        for d in dbs:
            await d.dispose()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors
    assert outcomes["reserved"] > 50 and outcomes["503"] > 0 and proxy.dropped > 0, (outcomes, proxy.dropped)
    for cap in await caps(db):
        assert cap.spent_usd + cap.reserved_usd <= cap.cap_usd
        assert cap.reserved_usd == 0, "a reservation is still held after every holder settled or released"
    await assert_ledger_invariants(db, requests_finished=False)
    lost = [a for a in await attempt_rows(db) if a.outcome == "not_sent"]
    assert lost and all(a.cost_usd == 0 and a.state == "settled" for a in lost)


async def test_reserve_does_not_deadlock_with_a_team_cap_change(
    budget: Callable[..., tuple[Budget, Clock]], team: uuid.UUID, db: Database
) -> None:
    """set_caps holds the team row (NO KEY UPDATE) then locks cap rows; reserve holds cap rows and then takes
    KEY SHARE on the team row for its foreign keys. The two lock modes do not conflict."""
    b, clock = budget()
    warm = plan(team)
    await b.settle(await b.reserve(warm, request_row(warm, clock.now)), Settlement("answered", TokenUsage()))
    async with db.transaction() as session:
        await session.execute(text("UPDATE teams SET daily_cap_usd = 1 WHERE id = :id"), {"id": team})
        p = plan(team)
        reserved = await asyncio.wait_for(b.reserve(p, request_row(p, clock.now)), 5)
        assert reserved.attempt_id is not None
