"""Hypothesis stateful test of the money ledger: reserve, settle, sweep and time, checked against Postgres.

A model follows every reservation (held, settled by its holder, or swept) and what each one must have cost.
After every step the database is checked against the invariants of /work/shared/reliability.md:

- no cap row's spent + reserved exceeds its cap, and nothing overran;
- for every cap row, reserved = the sum of reserved_usd of its still-reserved attempts, and spent = the sum of
  cost_usd of its settled attempts in its period and scope, exactly (Decimal);
- every attempt is held on exactly the cap rows of its billing day and team (global and team, day and month; a
  team without a cap of its own has UNCAPPED rows that still count its spend), each with its configured cap;
- every attempt is charged once, at what the model says (the actual cost, or its reservation when unknown or
  swept); a late (after the sweeper) or repeated settle returns what was charged the first time, moves no money,
  and still finishes the request; requests.cost_usd is the sum of its attempts;
- a reservation is refused exactly when its worst case exceeds the room of some cap row (a worst case that fills
  the tightest cap exactly is held), the refusal names the first such cap and its room, holds nothing and writes
  no ledger row; the sweeper settles exactly the reservations older than the TTL;
- after a final sweep past the TTL nothing is held.

Hypothesis' state machines are synchronous, so the machine drives the async Budget on an event loop of its own
(with its own engine), never on pytest-asyncio's session loop.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from service.core.errors import ConfigurationError, CostCapExceeded
from service.core.settings import Settings
from service.money.attempts import AttemptPlan, Settlement
from service.money.budget import Budget
from service.money.caps import UNCAPPED, CapKey, TeamCaps
from service.money.catalog import MILLION, TokenUsage
from service.tables import Attempt, Cap, Request, Team, table_names
from tests.money.budget_model import (
    CATALOG,
    ENV,
    Clock,
    Env,
    Held,
    describe,
    expected_cost,
    expected_worst_case,
    fingerprint,
    in_period,
    label,
    money,
    run,
    snapshot,
)

TTL_S = 120
# (model, stage). Haiku 5.5 has no price before 2026-10-07 and a long-context tier above 100K prompt tokens.
MODELS = [
    ("claude-haiku-4-5-20251001", "cheap"),
    ("claude-haiku-5-5", "cheap"),
    ("claude-sonnet-4-6", "strong"),
    ("claude-sonnet-5-5", "strong"),
]
STARTS = [
    datetime(2026, 11, 30, 23, 58, tzinfo=UTC),  # a day and a month end
    datetime(2026, 12, 31, 23, 59, tzinfo=UTC),  # a year end
    datetime(2026, 10, 6, 23, 59, tzinfo=UTC),  # the day before the October price change
    datetime(2027, 2, 28, 12, 0, tzinfo=UTC),
]


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        run(self._truncate())
        self.team_a = uuid.uuid4()  # has team caps (drawn per example)
        self.team_b = uuid.uuid4()  # no caps of its own (its team rows are UNCAPPED)
        run(self._add_teams())
        self.held: dict[int, Held] = {}
        self.requests: dict[uuid.UUID, tuple[uuid.UUID, int]] = {}  # request id -> (team, last attempt_no)
        self.budget: Budget | None = None
        self.clock = Clock(STARTS[0])
        self.caps_of: dict[uuid.UUID, TeamCaps] = {}

    async def _truncate(self) -> None:
        async with ENV.db.transaction() as session:
            await session.execute(text(f"TRUNCATE {', '.join(table_names())} RESTART IDENTITY CASCADE"))

    async def _add_teams(self) -> None:
        async with ENV.db.transaction() as session:
            session.add_all([Team(id=self.team_a, name="team-a"), Team(id=self.team_b, name="team-b")])

    @initialize(
        start=st.sampled_from(STARTS),
        daily=st.sampled_from(["0.05", "0.15", "5"]),
        monthly=st.sampled_from(["0.12", "0.5", "50"]),
        team_daily=st.sampled_from([None, "0.01", "0.06"]),
        team_monthly=st.sampled_from([None, "0.04", "0.3"]),
    )
    def configure(
        self, start: datetime, daily: str, monthly: str, team_daily: str | None, team_monthly: str | None
    ) -> None:
        cfg = Settings(
            _env_file=None,
            ANTHROPIC_API_KEY="unused",
            CASCADE_DAILY_CAP_USD=daily,
            CASCADE_MONTHLY_CAP_USD=monthly,
            CASCADE_RESERVATION_TTL_S=TTL_S,
        )
        self.settings = cfg
        self.clock = Clock(start)
        self.budget = Budget(ENV.db, CATALOG, cfg, self.clock)
        self.caps_of = {
            self.team_a: TeamCaps(money(team_daily), money(team_monthly)),
            self.team_b: TeamCaps(),
        }

    # --- the model's view of the cap rows -------------------------------------------------------------

    def applicable(self, team: uuid.UUID, day: date) -> list[tuple[CapKey, Decimal]]:
        """The rows one charge must fit under, in Budget's order: global day and month, then the team's day and
        month (a team without a cap of its own still has rows, capped at UNCAPPED, that count its spend)."""
        month = day.replace(day=1)
        team_caps = self.caps_of[team]
        return [
            (CapKey("global", None, "day", day), self.settings.daily_cap_usd),
            (CapKey("global", None, "month", month), self.settings.monthly_cap_usd),
            (CapKey("team", team, "day", day), UNCAPPED if team_caps.daily_usd is None else team_caps.daily_usd),
            (
                CapKey("team", team, "month", month),
                UNCAPPED if team_caps.monthly_usd is None else team_caps.monthly_usd,
            ),
        ]

    def configured_cap(self, cap: Cap) -> Decimal:
        key = CapKey(cap.scope, cap.team_id, cap.period, cap.period_start)
        team = self.team_a if cap.team_id is None else cap.team_id
        return dict(self.applicable(team, cap.period_start))[key]

    @staticmethod
    def row_of(caps: list[Cap], key: CapKey) -> Cap | None:
        return next(
            (
                c
                for c in caps
                if (c.scope, c.team_id, c.period, c.period_start)
                == (key.scope, key.team_id, key.period, key.period_start)
            ),
            None,
        )

    # --- rules ---------------------------------------------------------------------------------------

    def rooms(self, team: uuid.UUID, caps: list[Cap]) -> list[tuple[CapKey, Cap | None, Decimal]]:
        """Each applicable cap (in the order Budget checks them), its row if it exists yet, and its room."""
        rooms = []
        for key, configured in self.applicable(team, self.clock.now.date()):
            row = self.row_of(caps, key)
            rooms.append((key, row, configured if row is None else row.cap_usd - row.spent_usd - row.reserved_usd))
        return rooms

    # --- rules ---------------------------------------------------------------------------------------

    @rule(
        model=st.sampled_from(MODELS),
        # Mostly everyday prompts; now and then one past Haiku 5.5's 100K long-context boundary.
        bound=st.one_of(st.integers(1, 4000), st.integers(1, 800), st.sampled_from([100_000, 100_001, 150_000])),
        max_tokens=st.integers(1, 1024),
        team_b=st.booleans(),
        retry_of=st.none() | st.integers(min_value=0),
    )
    def reserve(self, model: tuple[str, str], bound: int, max_tokens: int, team_b: bool, retry_of: int | None) -> None:
        self._reserve(model, bound, max_tokens, team_b, retry_of)

    @rule(team_b=st.booleans(), over=st.booleans())
    def reserve_to_the_edge(self, team_b: bool, over: bool) -> None:
        """A worst case that fills the tightest cap exactly (must be held) or by one micro-dollar more (refused)."""
        team = self.team_b if team_b else self.team_a
        tightest = min(room for _, _, room in self.rooms(team, run(snapshot())[0]))
        micro = tightest * MILLION  # Haiku 4.5: $1/MTok in, $5/MTok out, so 1 token in = one micro-dollar
        if micro != micro.to_integral_value() or micro < 6:
            return
        self._reserve(MODELS[0], int(micro) - 5 + over, 1, team_b, None)

    def _reserve(self, model: tuple[str, str], bound: int, max_tokens: int, team_b: bool, retry_of: int | None) -> None:
        assert self.budget is not None
        model_id, stage = model
        if retry_of is not None and self.requests:
            request_id = list(self.requests)[retry_of % len(self.requests)]  # in creation order: replayable
            team, last = self.requests[request_id]
            attempt_no, new_request = last + 1, None
        else:
            request_id, team, attempt_no = uuid.uuid4(), self.team_b if team_b else self.team_a, 1
            new_request = {
                "id": request_id,
                "team_id": team,
                "status": "pending",
                "task_hash": "t",
                "labels": ["a", "b"],
                "threshold": Decimal("0.85"),
                "text_chars": 1,
                "cheap_model": model_id,
                "strong_model": "s",
                "created_at": self.clock.now,
            }
        plan = AttemptPlan(request_id, team, attempt_no, stage, model_id, bound, max_tokens, self.caps_of[team])
        now = self.clock.now
        before = run(snapshot())

        if model_id == "claude-haiku-5-5" and now.date() < date(2026, 10, 7):
            with pytest.raises(ConfigurationError):
                run(self.budget.reserve(plan, new_request))
            assert fingerprint(run(snapshot())) == fingerprint(before), "an unpriced model changed the ledger"
            return

        amount = expected_worst_case(model_id, now, bound, max_tokens)
        rooms = self.rooms(team, before[0])
        refusing = [(key, room) for key, _, room in rooms if amount > room]
        refused: CostCapExceeded | None = None
        try:
            reservation = run(self.budget.reserve(plan, new_request))
        except CostCapExceeded as exc:
            refused = exc
        if refused is not None:
            assert fingerprint(run(snapshot())) == fingerprint(before), "a refusal held money or wrote a row"
            assert refusing, f"refused {amount} although every cap had room ({describe(rooms)}): {refused}"
            key, room = refusing[0]  # the first cap, in key order, without room names the refusal
            assert (refused.cap, refused.remaining_usd) == (label(key), max(room, Decimal(0))), describe(rooms)
            return

        assert not refusing, f"reserved {amount} past a cap ({describe(rooms)})"
        assert reservation.amount == amount, "the reservation is not the worst case"
        assert (reservation.model, reservation.reserved_at, reservation.input_token_bound) == (model_id, now, bound)
        assert reservation.attempt_id not in self.held
        self.held[reservation.attempt_id] = Held(reservation, plan)
        self.requests[request_id] = (team, attempt_no)

    def _pick(self, state: str, index: int) -> Held:
        candidates = [h for _, h in sorted(self.held.items()) if h.state == state]
        return candidates[index % len(candidates)]

    def _has(self, state: str) -> bool:
        return any(h.state == state for h in self.held.values())

    @precondition(lambda self: self._has("held"))
    @rule(index=st.integers(min_value=0), data=st.data())
    def settle_with_usage(self, index: int, data: st.DataObject) -> None:
        assert self.budget is not None
        held = self._pick("held", index)
        bound, max_tokens = held.reservation.input_token_bound, held.plan.max_tokens
        prompt = data.draw(st.integers(0, bound), label="prompt tokens")
        cache_read = data.draw(st.integers(0, prompt), label="cache read tokens")
        usage = TokenUsage(
            input=prompt - cache_read, cache_read=cache_read, output=data.draw(st.integers(0, max_tokens))
        )
        cost = expected_cost(held, usage)
        assert cost <= held.reservation.amount, "the model's own bound is wrong"
        charged = run(self.budget.settle(held.reservation, Settlement("answered", usage, http_status=200)))
        assert charged == cost
        held.state, held.cost = "settled", cost

    @precondition(lambda self: self._has("held"))
    @rule(index=st.integers(min_value=0), outcome=st.sampled_from(["timeout", "connection_error", "crash"]))
    def settle_unknown(self, index: int, outcome: str) -> None:
        assert self.budget is not None
        held = self._pick("held", index)
        charged = run(self.budget.settle(held.reservation, Settlement(outcome, None)))
        assert charged == held.reservation.amount, "an unknown outcome is charged at its reservation"
        held.state, held.cost = "settled", held.reservation.amount

    @precondition(lambda self: self._has("swept"))
    @rule(index=st.integers(min_value=0), unknown=st.booleans(), finish=st.booleans())
    def settle_after_sweep(self, index: int, unknown: bool, finish: bool) -> None:
        """The holder comes back after the sweeper charged its reservation: it learns what the sweeper charged,
        nothing more is charged, and the request can still be finished."""
        held = self._pick("swept", index)
        self._settle_again(held, None if unknown else TokenUsage(input=1, output=1), finish)

    @precondition(lambda self: self._has("settled"))
    @rule(index=st.integers(min_value=0), unknown=st.booleans(), finish=st.booleans())
    def settle_twice(self, index: int, unknown: bool, finish: bool) -> None:
        """A holder settles the same reservation again (a retry after a lost commit acknowledgement)."""
        self._settle_again(self._pick("settled", index), None if unknown else TokenUsage(output=1), finish)

    def _settle_again(self, held: Held, usage: TokenUsage | None, finish: bool) -> None:
        assert self.budget is not None
        before = run(snapshot())
        done = {"status": "ok", "label": "a", "finished_at": self.clock.now} if finish else None
        charged = run(self.budget.settle(held.reservation, Settlement("answered", usage), done))
        assert charged == held.cost, "a repeated settle must report the first settlement's charge"
        after = run(snapshot())
        assert fingerprint(after) == fingerprint(before), "a repeated settle moved money"
        if finish:
            request = next(r for r in after[2] if r.id == held.plan.request_id)
            assert request.status == "ok", "a repeated settle must still finish the request"

    @rule(
        how=st.sampled_from(["seconds", "past_ttl", "midnight", "month_end"]),
        seconds=st.integers(min_value=1, max_value=3 * TTL_S),
    )
    def advance_clock(self, how: str, seconds: int) -> None:
        now = self.clock.now
        if how == "seconds":
            self.clock.now = now + timedelta(seconds=seconds)
        elif how == "past_ttl":
            self.clock.now = now + timedelta(seconds=TTL_S + seconds % 60)
        elif how == "midnight":  # to just before or just after the next midnight
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
            self.clock.now = max(now, midnight + timedelta(seconds=seconds % 3 - 1))
        else:  # to the first second of next month
            first = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
            self.clock.now = datetime.combine(first, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=1)

    @rule()
    def sweep(self) -> None:
        assert self.budget is not None
        self._sweep()

    @precondition(lambda self: self._has("held"))
    @rule(index=st.integers(min_value=0), microseconds=st.sampled_from([-1, 0, 1]))
    def sweep_at_the_ttl_edge(self, index: int, microseconds: int) -> None:
        """Sweep when a held reservation is exactly its TTL old, or a microsecond either side."""
        held = self._pick("held", index)
        edge = held.reservation.reserved_at + timedelta(seconds=TTL_S, microseconds=microseconds)
        self.clock.now = max(self.clock.now, edge)
        self._sweep()

    def _sweep(self) -> None:
        assert self.budget is not None
        cutoff = self.clock.now - timedelta(seconds=TTL_S)
        due = [h for h in self.held.values() if h.state == "held" and h.reservation.reserved_at < cutoff]
        assert run(self.budget.sweep()) == len(due), "the sweeper settled the wrong reservations"
        for held in due:
            held.state, held.cost = "swept", held.reservation.amount

    # --- invariants, checked against the database after every step ------------------------------------

    @invariant()
    def ledger_matches(self) -> None:
        if self.budget is None:
            return
        caps, attempts, requests = run(snapshot())
        self.check(caps, attempts, requests)

    def check(self, caps: list[Cap], attempts: list[Attempt], requests: list[Request]) -> None:
        assert {a.id for a in attempts} == set(self.held), "ledger rows differ from the reservations made"
        for a in attempts:
            held = self.held[a.id]
            assert a.reserved_usd == held.reservation.amount
            assert a.billing_day == held.reservation.reserved_at.date()
            expected_ids = sorted(
                c.id
                for key, _ in self.applicable(a.team_id, a.billing_day)
                if (c := self.row_of(caps, key)) is not None
            )
            assert sorted(a.cap_ids) == expected_ids, f"attempt {a.id} is held on the wrong cap rows"
            if held.state == "held":
                assert (a.state, a.cost_usd) == ("reserved", None), f"attempt {a.id} should still be held"
            else:
                assert a.state == "settled", f"attempt {a.id} should be settled"
                assert a.cost_usd == held.cost, f"attempt {a.id} charged {a.cost_usd}, expected {held.cost}"
                assert a.settled_by == ("sweeper" if held.state == "swept" else "holder")
        for cap in caps:
            assert cap.cap_usd == self.configured_cap(cap), f"cap {cap.id} has the wrong amount"
            assert cap.overrun_usd == 0, f"cap {cap.id} overran by {cap.overrun_usd}"
            assert cap.spent_usd + cap.reserved_usd <= cap.cap_usd, f"cap {cap.id} exceeded"
            in_scope = [
                a
                for a in attempts
                if (cap.scope == "global" or a.team_id == cap.team_id) and in_period(cap, a.billing_day)
            ]
            assert {a.id for a in in_scope} == {a.id for a in attempts if cap.id in a.cap_ids}
            held_sum = sum((a.reserved_usd for a in in_scope if a.state == "reserved"), Decimal(0))
            spent_sum = sum((a.cost_usd or Decimal(0) for a in in_scope if a.state == "settled"), Decimal(0))
            assert cap.reserved_usd == held_sum, f"cap {cap.id} reserved {cap.reserved_usd} != held {held_sum}"
            assert cap.spent_usd == spent_sum, f"cap {cap.id} spent {cap.spent_usd} != ledger {spent_sum}"
        for request in requests:
            own = sum((a.cost_usd or Decimal(0) for a in attempts if a.request_id == request.id), Decimal(0))
            assert request.cost_usd == own, f"request {request.id} cost {request.cost_usd} != its attempts {own}"

    def teardown(self) -> None:
        """Quiescence: a sweep past every TTL settles everything, and then nothing is held."""
        if self.budget is None:
            return
        latest = max([self.clock.now, *(h.reservation.reserved_at for h in self.held.values())])
        self.clock.now = latest + timedelta(seconds=TTL_S + 1)
        self._sweep()
        caps, attempts, requests = run(snapshot())
        self.check(caps, attempts, requests)
        assert [a.id for a in attempts if a.state != "settled"] == [], "reservations still held"
        assert [c.id for c in caps if c.reserved_usd != 0] == [], "cap rows still hold money"
        assert [r.id for r in requests if r.status == "pending"] == [], "requests left pending after the sweep"


def test_budget_ledger_state_machine(machine_db: Env) -> None:
    run_state_machine_as_test(
        BudgetMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
