"""Authorize, then capture: every upstream attempt reserves its worst case before the call.

Reserve and settle are one statement each (service.money.charges); the sweeper and the rest are short transactions.
No connection is held while the model is called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from service.core.clock import utcnow
from service.core.database import Database
from service.core.errors import CostCapExceeded, DatabaseUnavailable
from service.core.metrics import CapGauge, LedgerGauges
from service.core.settings import Settings
from service.money.attempts import AttemptPlan, Reservation, Settlement
from service.money.batch_charges import BatchHold, HeldItem, JobLedger, ResultLine, SettleResult
from service.money.caps import UNCAPPED, CapKey, CapRepository, TeamCaps, period_keys
from service.money.catalog import Catalog, PriceRow, TokenUsage
from service.money.charges import ChargeRepository, StaleSnapshot
from service.money.ledger import LedgerRepository

logger = logging.getLogger(__name__)

_RESERVE_TRIES = 5
# After a reserve's reply is lost: when to look for (and release) what it may have committed.
_RELEASE_PAUSES_S = (0.2, 1.0, 3.0, 10.0)


def _or_uncapped(amount: Decimal | None) -> Decimal:
    return UNCAPPED if amount is None else amount


class _StaleCapRows(Exception):
    """A cached cap row id no longer exists."""


class Budget:
    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        on_sweep: Callable[[str, Decimal], None] | None = None,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.settings = settings
        self.clock = clock
        self.on_sweep = on_sweep  # told of each worst-case charge the sweeper makes (model, cost)
        self._cap_ids: dict[CapKey, int] = {}
        # Every reserve and settle locks the same global cap rows. Past a few at once, more only queue inside
        # PostgreSQL as a lock convoy (each waiter a backend to wake, on the same cores); they wait here instead.
        self._money_slots = asyncio.Semaphore(settings.money_concurrency)
        self._releases: set[asyncio.Task[None]] = set()

    def _cap_amount(self, key: CapKey) -> Decimal:
        return self.settings.daily_cap_usd if key.period == "day" else self.settings.monthly_cap_usd

    def _applicable(self, day: date, team_id: uuid.UUID, team: TeamCaps) -> list[tuple[CapKey, Decimal]]:
        """Every cap one charge must fit under: global day and month, team day and month (uncapped rows
        still count the team's spend)."""
        month = day.replace(day=1)
        caps = [(key, self._cap_amount(key)) for key in period_keys(day)]
        caps.append((CapKey("team", team_id, "day", day), _or_uncapped(team.daily_usd)))
        caps.append((CapKey("team", team_id, "month", month), _or_uncapped(team.monthly_usd)))
        return caps

    async def reserve(self, plan: AttemptPlan, new_request: dict[str, Any] | None = None) -> Reservation:
        """Hold the attempt's worst case on every applicable cap row and write its ledger row, or raise."""
        at = self.clock()
        day = at.date()
        price = self.catalog.price(plan.model, at, plan.input_token_bound)
        amount = price.worst_case(plan.input_token_bound, plan.max_tokens, cache_ttl=plan.cache_ttl)
        strong_equiv = None
        if plan.strong_model is not None:
            strong_price = self.catalog.price(plan.strong_model, at, plan.input_token_bound)
            strong_equiv = strong_price.worst_case(plan.input_token_bound, plan.max_tokens, cache_ttl=plan.cache_ttl)
        applicable = self._applicable(day, plan.team_id, plan.team_caps)
        try:
            return await self._reserve(plan, new_request, applicable, price, amount, strong_equiv, at)
        except _StaleCapRows:
            self._cap_ids.clear()  # a cached row is gone (never in production: rows are not deleted)
            return await self._reserve(plan, new_request, applicable, price, amount, strong_equiv, at)

    async def _reserve(
        self,
        plan: AttemptPlan,
        new_request: dict[str, Any] | None,
        applicable: list[tuple[CapKey, Decimal]],
        price: PriceRow,
        amount: Decimal,
        strong_equiv: Decimal | None,
        at: datetime,
    ) -> Reservation:
        day = at.date()
        keys = [key for key, _ in applicable]
        ids = await self._cap_row_ids(applicable)
        attempt = {
            "request_id": plan.request_id,
            "team_id": plan.team_id,
            "request_created_at": plan.request_created_at or at,
            "task_hash": plan.task_hash,
            "attempt_no": plan.attempt_no,
            "stage": plan.stage,
            "model": plan.model,
            "state": "reserved",
            "cap_ids": ids,
            "billing_day": day,
            "reserved_usd": amount,
            "input_token_bound": plan.input_token_bound,
            "max_tokens": plan.max_tokens,
            "reserved_at": at,
            "strong_equiv_usd": strong_equiv,
            **price.ledger_columns(),
        }
        # One statement: all the cap rows and the ledger rows, or nothing. It is run again if its partial-
        # reservation guard fires or a refusal has no locked row to explain it (neither should happen; see
        # service.money.charges).
        for _ in range(_RESERVE_TRIES):
            try:
                async with self._money_slots, self.db.autocommit() as connection:
                    result = await ChargeRepository(connection).reserve(ids, amount, attempt, new_request)
            except StaleSnapshot:
                continue
            except DatabaseUnavailable:
                # The statement may have committed with only its reply lost. No call will be made, so a
                # reservation that did commit is released at no cost as soon as the database answers again
                # (else the sweeper would charge its worst case after the TTL).
                self._release_later(
                    Reservation(0, plan.request_id, plan.model, amount, at, plan.input_token_bound), plan
                )
                raise
            if not result.complete:
                raise _StaleCapRows
            if result.attempt_id is not None:
                break
            refused = {i: room for i, room in result.remaining.items() if room < amount}
            if refused:
                raise self._refusal(keys, ids, refused, amount)
        else:
            raise DatabaseUnavailable("the cap rows are too contended to reserve on; retry")
        return Reservation(
            result.attempt_id, plan.request_id, plan.model, amount, at, plan.input_token_bound, plan.strong_model
        )

    def _release_later(self, unconfirmed: Reservation, plan: AttemptPlan) -> None:
        task = asyncio.create_task(self._release_unacknowledged(unconfirmed, plan.attempt_no))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_unacknowledged(self, unconfirmed: Reservation, attempt_no: int) -> None:
        for pause in _RELEASE_PAUSES_S:
            await asyncio.sleep(pause)
            try:
                async with self.db.autocommit() as connection:
                    attempt_id = await ChargeRepository(connection).held_attempt(unconfirmed.request_id, attempt_no)
                if attempt_id is None:
                    return  # it never committed (or it is settled already)
                held = dataclasses.replace(unconfirmed, attempt_id=attempt_id)
                not_sent = Settlement(
                    "not_sent", TokenUsage(), error_message="the reservation's reply was lost; no call was made"
                )
                await self.settle(held, not_sent)
                logger.warning("released attempt %s, whose reservation reply was lost, at no cost", attempt_id)
                return
            except DatabaseUnavailable:
                continue
            except Exception:
                logger.exception("could not release an unacknowledged reservation of %s", unconfirmed.request_id)
                return

    async def flush_releases(self) -> None:
        """Wait for the releases of unacknowledged reservations still running (shutdown, tests)."""
        while self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    async def _cap_row_ids(self, applicable: list[tuple[CapKey, Decimal]]) -> list[int]:
        """The cap rows' ids, creating a period's rows on its first charge (cached after that)."""
        if all(key in self._cap_ids for key, _ in applicable):
            return [self._cap_ids[key] for key, _ in applicable]
        async with self.db.transaction() as session:
            caps = CapRepository(session)
            return [await self._cap_id(caps, key, cap_usd) for key, cap_usd in applicable]

    async def _cap_id(self, caps: CapRepository, key: CapKey, amount: Decimal) -> int:
        cached = self._cap_ids.get(key)
        if cached is None:
            cached = self._cap_ids[key] = await caps.ensure(key, amount)
        return cached

    def _refusal(
        self, keys: list[CapKey], ids: list[int], refused: dict[int, Decimal], amount: Decimal
    ) -> CostCapExceeded:
        key, remaining = next((k, refused[i]) for k, i in zip(keys, ids, strict=True) if i in refused)
        remaining = max(remaining, Decimal(0))
        return CostCapExceeded(
            f"the {key.label} cost cap would be exceeded: ${remaining.normalize():f} remains and this attempt "
            f"may cost up to ${amount.normalize():f}",
            cap=key.label.replace(" ", "_"),
            remaining_usd=remaining,
        )

    async def settle(
        self, reservation: Reservation, result: Settlement, finish: dict[str, Any] | None = None
    ) -> Decimal:
        """Charge the actual cost (or the reservation, if unknown), release the rest; returns what was charged.

        Safe to repeat: an attempt that is already settled is charged nothing more.
        """
        if result.usage is None:
            cost = reservation.amount
            price_cols: dict[str, Any] = {}
            tokens: dict[str, Any] = {}
        else:
            price = self.catalog.price(reservation.model, reservation.reserved_at, result.usage.prompt_tokens)
            cost = price.cost(result.usage)
            if cost > reservation.amount:
                # The bound is built to make this impossible. If it happens the truth is still recorded, and
                # what goes past a cap shows as that cap's overrun_usd (the period then refuses all work).
                logger.error(
                    "attempt %s cost %s above its reservation %s", reservation.attempt_id, cost, reservation.amount
                )
            elif result.usage.prompt_tokens > reservation.input_token_bound * 0.9:
                logger.warning(
                    "attempt %s used %d of its %d-token input bound",
                    reservation.attempt_id,
                    result.usage.prompt_tokens,
                    reservation.input_token_bound,
                )
            price_cols = price.ledger_columns()
            if reservation.strong_model is not None:
                strong_price = self.catalog.price(
                    reservation.strong_model, reservation.reserved_at, result.usage.prompt_tokens
                )
                price_cols["strong_equiv_usd"] = strong_price.cost(result.usage)
            tokens = {
                "input_tokens": result.usage.input,
                "cache_write_5m_tokens": result.usage.cache_write_5m,
                "cache_write_1h_tokens": result.usage.cache_write_1h,
                "cache_read_tokens": result.usage.cache_read,
                "output_tokens": result.usage.output,
            }
        values = {
            "outcome": result.outcome,
            "http_status": result.http_status,
            "stop_reason": result.stop_reason,
            "label": result.label,
            "confidence": result.confidence,
            "escalation_reason": result.escalation_reason,
            "upstream_request_id": result.upstream_request_id,
            "latency_ms": result.latency_ms,
            "error_message": result.error_message,
            "cost_usd": cost,
            "settled_by": "holder",
            "settled_at": self.clock(),
            **price_cols,
            **tokens,
        }
        # One statement: the ledger row, the cap rows, the request's cost and (if it ends the request) outcome.
        async with self._money_slots, self.db.autocommit() as connection:
            charges = ChargeRepository(connection)
            if not await charges.settle(reservation.attempt_id, reservation.request_id, cost, values, finish):
                # Settled already: by this holder, whose commit went through but whose acknowledgement was
                # lost (then this is a retry), or by the sweeper. Either way nothing is charged again.
                earlier = await charges.settled(reservation.attempt_id)
                if earlier.settled_by == "sweeper":
                    logger.warning("attempt %s was settled by the sweeper first", reservation.attempt_id)
                cost = earlier.cost_usd
        return cost

    async def hold_batch(self, batch: BatchHold, items: list[HeldItem], team_caps: TeamCaps) -> int:
        """Hold a Message Batch's worst case (the sum of its items') and write its ledger rows, or raise
        CostCapExceeded; returns the `job_batches` id."""
        applicable = self._applicable(batch.now.date(), batch.team_id, team_caps)
        keys = [key for key, _ in applicable]
        amount = sum((item.reserved for item in items), Decimal(0))
        for _ in range(_RESERVE_TRIES):
            ids = await self._cap_row_ids(applicable)
            try:
                async with self._money_slots, self.db.autocommit() as connection:
                    result = await JobLedger(connection).hold(batch, ids, items)
            except StaleSnapshot:
                continue  # a stale cap row, or an item another worker claimed: look again
            if not result.complete:
                self._cap_ids.clear()
                continue
            if result.batch_id is not None:
                return result.batch_id
            refused = {i: room for i, room in result.remaining.items() if room < amount}
            if refused:
                raise self._refusal(keys, ids, refused, amount)
        raise DatabaseUnavailable("the cap rows are too contended to hold a batch on; retry")

    async def settle_batch(self, batch_id: int, cap_ids: list[int], lines: list[ResultLine]) -> SettleResult:
        """Settle result lines of a batch in one statement; lines already settled are charged nothing."""
        for _ in range(_RESERVE_TRIES):
            try:
                async with self._money_slots, self.db.autocommit() as connection:
                    return await JobLedger(connection).settle(batch_id, cap_ids, lines, self.clock())
            except StaleSnapshot:
                continue
        raise DatabaseUnavailable("the cap rows are too contended to settle a batch on; retry")

    async def record_request(
        self, request_id: uuid.UUID, values: dict[str, Any], new_request: dict[str, Any] | None = None
    ) -> None:
        """Write a request's outcome; `new_request` creates the row if no attempt ever did."""
        async with self.db.transaction() as session:
            ledger = LedgerRepository(session)
            if new_request is not None:
                await ledger.add_request(new_request)
            await ledger.finish_request(request_id, values)

    async def sweep(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Charge reservations whose holder died at their worst case; returns how many were settled.

        One short transaction per reservation, so the cap rows are never held for a whole batch.
        """
        now = now or self.clock()
        cutoff = now - timedelta(seconds=self.settings.reservation_ttl_s)
        swept = 0
        while swept < limit:
            async with self.db.transaction() as session:
                ledger = LedgerRepository(session)
                stale = await ledger.stale_reservations(cutoff, 1)
                if not stale:
                    break
                held = stale[0]
                await ledger.settle_attempt(
                    held.attempt_id,
                    {
                        "outcome": "unknown",
                        "cost_usd": held.reserved_usd,
                        "settled_by": "sweeper",
                        "settled_at": now,
                        "error_message": "holder did not settle within the reservation TTL; charged the worst case",
                    },
                )
                await CapRepository(session).settle(held.cap_ids, held.reserved_usd, held.reserved_usd)
                await ledger.add_request_cost(held.request_id, held.reserved_usd, held.strong_equiv_usd, held.stage)
            swept += 1
            if self.on_sweep is not None:
                self.on_sweep(held.model, held.reserved_usd)
        async with self.db.transaction() as session:
            await LedgerRepository(session).abandon_stale_requests(cutoff, now)
        if swept:
            logger.warning("sweeper settled %d orphaned reservations at their worst case", swept)
        return swept

    async def sync_global_caps(self, day: date | None = None) -> None:
        """Apply the configured global caps to the current period rows (never below what is committed)."""
        day = day or self.clock().date()
        keys = period_keys(day)
        async with self.db.transaction() as session:
            caps = CapRepository(session)
            ids = [await caps.ensure(key, self._cap_amount(key)) for key in keys]
            await caps.lock(ids)  # in id order, like every other statement that touches cap rows
            for key in keys:
                await caps.set_amount(key, self._cap_amount(key))

    async def gauges(self) -> LedgerGauges:
        """Every cap row of the current periods, and the reservations held: what /metrics reports."""
        async with self.db.snapshot() as session:
            rows = await CapRepository(session).current_named(self.clock().date())
            held, held_usd = await LedgerRepository(session).held_totals()
        caps = [
            CapGauge(
                scope=cap.scope,
                period=cap.period,
                team=name or "",
                cap_usd=cap.cap_usd if cap.cap_usd < UNCAPPED else None,
                spent_usd=cap.spent_usd,
                reserved_usd=cap.reserved_usd,
            )
            for cap, name in rows
        ]
        return LedgerGauges(caps=caps, reservations_held=held, reservations_held_usd=held_usd)

    async def status(self, team_id: uuid.UUID | None = None) -> list[Any]:
        async with self.db.transaction() as session:
            return list(await CapRepository(session).current(self.clock().date(), team_id))
