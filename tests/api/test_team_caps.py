"""Per-team caps and spend on the admin API: setting caps, the operator's view of spend, and the caps enforced on
classify, as an operator and a team see them over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from service.core.clock import utcnow
from service.core.database import Database
from service.tables import Attempt, Request
from tests.api.teams import classify, create_team, issue_key, ticket
from tests.harness import ADMIN, Service, assert_error, assert_ledger_invariants


async def admin_spend(svc: Service) -> list[dict[str, Any]]:
    response = await svc.client.get("/v1/admin/spend", headers=ADMIN)
    assert response.status_code == 200, response.text
    rows = response.json()["caps"]
    for row in rows:
        for field in ("spent_usd", "reserved_usd", "overrun_usd"):
            assert isinstance(row[field], str), row
        if row["cap_usd"] is None:  # no cap of its own: spend is still counted
            assert row["scope"] == "team"
            assert row["remaining_usd"] is None
            continue
        assert isinstance(row["cap_usd"], str)
        assert Decimal(row["remaining_usd"]) == max(
            Decimal(row["cap_usd"]) - Decimal(row["spent_usd"]) - Decimal(row["reserved_usd"]), Decimal(0)
        )
    return list(rows)


def spend_row(rows: list[dict[str, Any]], team: str | None, period: str) -> dict[str, Any]:
    found = [r for r in rows if r["team"] == team and r["period"] == period]
    assert len(found) == 1, (team, period, rows)
    return found[0]


async def ledger_cost(db: Database, team_id: uuid.UUID | None = None) -> Decimal:
    async with db.transaction() as session:
        query = select(Attempt)
        if team_id is not None:
            query = query.where(Attempt.team_id == team_id)
        return sum((a.cost_usd or Decimal(0) for a in (await session.scalars(query)).all()), Decimal(0))


async def cheap_worst_case(svc: Service) -> tuple[Decimal, Decimal]:
    """(reservation, cost) of one confident cheap request of the `ticket` shape, made by the fixture's team."""
    response = await svc.classify(ticket(9999))
    assert response.status_code == 200, response.text
    assert response.json()["escalated"] is False
    audit = await svc.client.get(f"/v1/requests/{response.json()['id']}", headers=svc.auth)
    attempts = audit.json()["attempts"]
    assert len(attempts) == 1
    reserved, cost = Decimal(attempts[0]["reserved_usd"]), Decimal(attempts[0]["cost_usd"])
    assert 0 < cost < reserved
    return reserved, cost


# --- caps -------------------------------------------------------------------------------------------------


async def test_put_caps_sets_and_removes_each_cap(admin_service: Service) -> None:
    await create_team(admin_service, "acme")
    key = (await issue_key(admin_service, "acme"))["key"]

    response = await admin_service.client.put(
        "/v1/admin/teams/acme/caps", json={"daily_usd": "1.50", "monthly_usd": "30"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert (response.json()["daily_usd"], response.json()["monthly_usd"]) == ("1.5", "30")
    rows = await admin_spend(admin_service)
    assert Decimal(spend_row(rows, "acme", "day")["cap_usd"]) == Decimal("1.5")
    assert Decimal(spend_row(rows, "acme", "month")["cap_usd"]) == Decimal(30)
    own = (await admin_service.client.get("/v1/spend", headers={"x-api-key": key})).json()["caps"]
    assert {(c["scope"], c["period"], Decimal(c["cap_usd"])) for c in own} == {
        ("team", "day", Decimal("1.5")),
        ("team", "month", Decimal(30)),
    }

    response = await admin_service.client.put(
        "/v1/admin/teams/acme/caps", json={"daily_usd": None, "monthly_usd": "25"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert (response.json()["daily_usd"], response.json()["monthly_usd"]) == (None, "25")
    teams = {t["name"]: t for t in (await admin_service.client.get("/v1/admin/teams", headers=ADMIN)).json()}
    assert (teams["acme"]["daily_usd"], teams["acme"]["monthly_usd"]) == (None, "25")
    assert Decimal(spend_row(await admin_spend(admin_service), "acme", "month")["cap_usd"]) == 25


@pytest.mark.parametrize(
    "body",
    [
        {"daily_usd": "1"},
        {"monthly_usd": "1"},
        {},
        {"daily_usd": "-0.01", "monthly_usd": None},
        {"daily_usd": "abc", "monthly_usd": None},
        {"daily_usd": "NaN", "monthly_usd": None},
        {"daily_usd": "Infinity", "monthly_usd": None},
        {"daily_usd": None, "monthly_usd": "1e10"},
        {"daily_usd": "1", "monthly_usd": "1", "weekly_usd": "1"},
    ],
    ids=["no-monthly", "no-daily", "empty", "negative", "not-a-number", "nan", "infinity", "too-big", "unknown-field"],
)
async def test_bad_caps_are_422_and_change_nothing(admin_service: Service, body: dict[str, Any]) -> None:
    await create_team(admin_service, "acme", daily_usd="2", monthly_usd="20")
    response = await admin_service.client.put("/v1/admin/teams/acme/caps", json=body, headers=ADMIN)
    assert_error(response, 422, "invalid_request")
    teams = {t["name"]: t for t in (await admin_service.client.get("/v1/admin/teams", headers=ADMIN)).json()}
    assert (teams["acme"]["daily_usd"], teams["acme"]["monthly_usd"]) == ("2", "20")


async def test_admin_spend_shows_global_and_team_rows(admin_service: Service) -> None:
    await create_team(admin_service, "acme", daily_usd="5", monthly_usd="50")
    await create_team(admin_service, "beta", monthly_usd="70")
    acme, beta = (await issue_key(admin_service, "acme"))["key"], (await issue_key(admin_service, "beta"))["key"]
    for n, key in enumerate([acme, acme, beta]):
        assert (await classify(admin_service, key, ticket(n))).status_code == 200

    rows = await admin_spend(admin_service)
    today = utcnow().date()
    assert {(r["scope"], r["team"], r["period"]) for r in rows} == {
        ("global", None, "day"),
        ("global", None, "month"),
        ("team", "acme", "day"),
        ("team", "acme", "month"),
        ("team", "beta", "day"),  # no daily cap of its own, but its spend is counted
        ("team", "beta", "month"),
    }
    assert spend_row(rows, "beta", "day")["cap_usd"] is None
    for row in rows:
        start = today if row["period"] == "day" else today.replace(day=1)
        assert row["period_start"] == start.isoformat()
        assert Decimal(row["reserved_usd"]) == 0
    total = await ledger_cost(admin_service.db)
    assert total > 0
    assert Decimal(spend_row(rows, None, "day")["spent_usd"]) == total
    assert Decimal(spend_row(rows, None, "month")["spent_usd"]) == total
    assert Decimal(spend_row(rows, None, "day")["cap_usd"]) == admin_service.settings.daily_cap_usd
    assert Decimal(spend_row(rows, None, "month")["cap_usd"]) == admin_service.settings.monthly_cap_usd
    teams = {
        t["name"]: uuid.UUID(t["id"]) for t in (await admin_service.client.get("/v1/admin/teams", headers=ADMIN)).json()
    }
    for name in ("acme", "beta"):
        own = await ledger_cost(admin_service.db, teams[name])
        assert own > 0
        for row in rows:
            if row["team"] == name:
                assert Decimal(row["spent_usd"]) == own
    assert Decimal(spend_row(rows, "acme", "day")["cap_usd"]) == 5
    assert Decimal(spend_row(rows, "beta", "month")["cap_usd"]) == 70
    await assert_ledger_invariants(admin_service.db)


# --- per-team caps are enforced ------------------------------------------------------------------------------


async def test_a_team_daily_cap_refuses_with_402_without_calling_upstream(admin_service: Service) -> None:
    svc = admin_service
    worst, _ = await cheap_worst_case(svc)
    # A daily cap of exactly one worst case: the first request fits, the second cannot.
    await create_team(svc, "capped", daily_usd=str(worst))
    await create_team(svc, "free")
    capped, free = (await issue_key(svc, "capped"))["key"], (await issue_key(svc, "free"))["key"]

    first = await classify(svc, capped, ticket(1))
    assert first.status_code == 200, first.text
    first_cost = Decimal(first.json()["cost_usd"])
    before = await admin_spend(svc)
    calls = len(svc.sim.calls)

    refused = await classify(svc, capped, ticket(2))
    body = assert_error(refused, 402, "cost_cap_exceeded")
    assert body["error"]["cap"] == "team_daily"
    assert isinstance(body["error"]["remaining_usd"], str)
    assert Decimal(body["error"]["remaining_usd"]) == worst - first_cost
    assert len(svc.sim.calls) == calls, "a refused request makes no upstream call"
    row = await svc.request_row(body["request_id"])
    assert (row.status, row.error_type) == ("refused", "cost_cap_exceeded")
    assert await svc.attempts(body["request_id"]) == []

    # All or nothing: the refusal left no reservation on the global rows (nor anywhere else).
    after = await admin_spend(svc)
    assert all(Decimal(r["reserved_usd"]) == 0 for r in after)
    assert after == before

    # Another team is unaffected.
    other = await classify(svc, free, ticket(3))
    assert other.status_code == 200, other.text
    await assert_ledger_invariants(svc.db)


async def test_concurrent_requests_under_a_one_request_team_cap_reserve_all_rows_or_none(
    admin_service: Service,
) -> None:
    svc = admin_service
    worst, _ = await cheap_worst_case(svc)
    await create_team(svc, "capped", daily_usd=str(worst))
    key = (await issue_key(svc, "capped"))["key"]
    calls = len(svc.sim.calls)

    responses = await asyncio.gather(*(classify(svc, key, ticket(n)) for n in range(1, 13)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [402] * 11, [r.text for r in responses]
    assert {r.json()["error"]["cap"] for r in responses if r.status_code == 402} == {"team_daily"}
    assert len(svc.sim.calls) == calls + 1

    rows = await admin_spend(svc)
    assert all(Decimal(r["reserved_usd"]) == 0 for r in rows)
    total = await ledger_cost(svc.db)
    assert Decimal(spend_row(rows, None, "day")["spent_usd"]) == total
    assert Decimal(spend_row(rows, "capped", "day")["spent_usd"]) == Decimal(
        next(r for r in responses if r.status_code == 200).json()["cost_usd"]
    )
    async with svc.db.transaction() as session:
        statuses_in_db = sorted((await session.scalars(select(Request.status))).all())
    assert statuses_in_db == ["ok", "ok"] + ["refused"] * 11
    await assert_ledger_invariants(svc.db)


async def test_raising_a_team_cap_lets_requests_through_again(admin_service: Service) -> None:
    svc = admin_service
    worst, _ = await cheap_worst_case(svc)
    await create_team(svc, "capped", daily_usd=str(worst))
    key = (await issue_key(svc, "capped"))["key"]
    assert (await classify(svc, key, ticket(1))).status_code == 200
    assert_error(await classify(svc, key, ticket(2)), 402, "cost_cap_exceeded")

    raised = await svc.client.put(
        "/v1/admin/teams/capped/caps", json={"daily_usd": str(worst * 3), "monthly_usd": None}, headers=ADMIN
    )
    assert raised.status_code == 200, raised.text
    again = await classify(svc, key, ticket(3))
    assert again.status_code == 200, again.text
    assert Decimal(spend_row(await admin_spend(svc), "capped", "day")["cap_usd"]) == worst * 3

    # Removing the cap altogether: only the global caps apply.
    removed = await svc.client.put(
        "/v1/admin/teams/capped/caps", json={"daily_usd": None, "monthly_usd": None}, headers=ADMIN
    )
    assert removed.status_code == 200, removed.text
    for n in range(4, 8):
        response = await classify(svc, key, ticket(n))
        assert response.status_code == 200, response.text


async def test_lowering_a_team_cap_below_its_spend_refuses_at_once(admin_service: Service) -> None:
    svc = admin_service
    await create_team(svc, "acme", daily_usd="10")
    key = (await issue_key(svc, "acme"))["key"]
    first = await classify(svc, key, ticket(1))
    assert first.status_code == 200
    lowered = await svc.client.put(
        "/v1/admin/teams/acme/caps", json={"daily_usd": "0", "monthly_usd": None}, headers=ADMIN
    )
    assert lowered.status_code == 200, lowered.text
    calls = len(svc.sim.calls)
    body = assert_error(await classify(svc, key, ticket(2)), 402, "cost_cap_exceeded")
    assert body["error"]["cap"] == "team_daily"
    assert Decimal(body["error"]["remaining_usd"]) == 0
    assert len(svc.sim.calls) == calls
    # The row is never set below what is already spent.
    row = spend_row(await admin_spend(svc), "acme", "day")
    assert Decimal(row["cap_usd"]) == Decimal(row["spent_usd"]) == Decimal(first.json()["cost_usd"])
    await assert_ledger_invariants(svc.db)


async def test_a_team_monthly_cap_refuses_with_team_monthly(admin_service: Service) -> None:
    svc = admin_service
    await create_team(svc, "monthly", daily_usd="100", monthly_usd="0.000001")
    key = (await issue_key(svc, "monthly"))["key"]
    body = assert_error(await classify(svc, key, ticket(1)), 402, "cost_cap_exceeded")
    assert body["error"]["cap"] == "team_monthly"
    assert Decimal(body["error"]["remaining_usd"]) == Decimal("0.000001")
    assert svc.sim.calls == []
    rows = await admin_spend(svc)
    assert all(Decimal(r["reserved_usd"]) == 0 and Decimal(r["spent_usd"]) == 0 for r in rows)
    # The fixture's team has no caps of its own and is not affected.
    assert (await svc.classify(ticket(2))).status_code == 200
    await assert_ledger_invariants(svc.db)


async def test_a_team_cap_is_checked_on_the_escalation_too(admin_service: Service) -> None:
    svc = admin_service
    worst, _ = await cheap_worst_case(svc)
    # Room for the cheap attempt, but not for the strong model's larger worst case.
    await create_team(svc, "capped", daily_usd=str(worst * 2))
    key = (await issue_key(svc, "capped"))["key"]
    text = ticket(1).replace("conf=0.95", "conf=0.50")
    assert len(text) == len(ticket(1))
    body = assert_error(await classify(svc, key, text), 402, "cost_cap_exceeded")
    assert body["error"]["cap"] == "team_daily"
    attempts = await svc.attempts(body["request_id"])
    assert [(a.stage, a.state) for a in attempts] == [("cheap", "settled")]
    assert [c.model for c in svc.sim.calls].count(svc.settings.strong_model) == 0
    row = await svc.request_row(body["request_id"])
    assert row.status == "failed" and row.cost_usd == attempts[0].cost_usd
    assert all(Decimal(r["reserved_usd"]) == 0 for r in await admin_spend(svc))
    await assert_ledger_invariants(svc.db)


async def test_a_cap_set_after_spending_counts_what_was_already_spent(admin_service: Service) -> None:
    svc = admin_service
    worst, _ = await cheap_worst_case(svc)
    await create_team(svc, "late")
    key = (await issue_key(svc, "late"))["key"]
    for n in range(1, 5):
        assert (await classify(svc, key, ticket(n))).status_code == 200
    teams = {t["name"]: uuid.UUID(t["id"]) for t in (await svc.client.get("/v1/admin/teams", headers=ADMIN)).json()}
    spent_today = await ledger_cost(svc.db, teams["late"])
    assert spent_today >= worst / 2

    # The operator caps the team so that less than one more request fits in today's budget.
    cap = spent_today + worst / 2
    response = await svc.client.put(
        "/v1/admin/teams/late/caps", json={"daily_usd": str(cap), "monthly_usd": None}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    refused = await classify(svc, key, ticket(5))
    assert refused.status_code == 402, f"the team spends past its daily cap of {cap}: {refused.text}"
    row = spend_row(await admin_spend(svc), "late", "day")
    assert Decimal(row["spent_usd"]) == spent_today
    await assert_ledger_invariants(svc.db)


async def test_removing_and_restoring_a_cap_does_not_forget_the_spend_in_between(admin_service: Service) -> None:
    svc = admin_service
    worst, _ = await cheap_worst_case(svc)
    await create_team(svc, "acme", daily_usd=str(worst * 3))
    key = (await issue_key(svc, "acme"))["key"]
    assert (await classify(svc, key, ticket(1))).status_code == 200
    off = await svc.client.put(
        "/v1/admin/teams/acme/caps", json={"daily_usd": None, "monthly_usd": None}, headers=ADMIN
    )
    assert off.status_code == 200, off.text
    for n in range(2, 16):
        assert (await classify(svc, key, ticket(n))).status_code == 200
    teams = {t["name"]: uuid.UUID(t["id"]) for t in (await svc.client.get("/v1/admin/teams", headers=ADMIN)).json()}
    spent_today = await ledger_cost(svc.db, teams["acme"])
    assert spent_today > worst * 2

    on = await svc.client.put(
        "/v1/admin/teams/acme/caps", json={"daily_usd": str(worst * 3), "monthly_usd": None}, headers=ADMIN
    )
    assert on.status_code == 200, on.text
    # The team has spent more than 2 worst cases today: with a 3-worst-case daily cap, one more cannot fit.
    refused = await classify(svc, key, ticket(16))
    assert refused.status_code == 402, f"the team spends past its restored daily cap: {refused.text}"
    await assert_ledger_invariants(svc.db)


async def test_caps_given_as_json_numbers_are_kept_exactly(admin_service: Service) -> None:
    created = await admin_service.client.post(
        "/v1/admin/teams", json={"name": "floaty", "daily_usd": 0.1, "monthly_usd": 12}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    assert (created.json()["daily_usd"], created.json()["monthly_usd"]) == ("0.1", "12")
    put = await admin_service.client.put(
        "/v1/admin/teams/floaty/caps", json={"daily_usd": 0.3, "monthly_usd": 1.1}, headers=ADMIN
    )
    assert put.status_code == 200, put.text
    assert (put.json()["daily_usd"], put.json()["monthly_usd"]) == ("0.3", "1.1")
    rows = await admin_spend(admin_service)
    assert spend_row(rows, "floaty", "day")["cap_usd"] == "0.3"
    assert spend_row(rows, "floaty", "month")["cap_usd"] == "1.1"


async def test_a_removed_cap_reports_no_cap_but_keeps_counting(admin_service: Service) -> None:
    svc = admin_service
    await create_team(svc, "acme", daily_usd="1", monthly_usd="10")
    key = (await issue_key(svc, "acme"))["key"]
    assert (await classify(svc, key, ticket(1))).status_code == 200
    removed = await svc.client.put(
        "/v1/admin/teams/acme/caps", json={"daily_usd": None, "monthly_usd": "10"}, headers=ADMIN
    )
    assert removed.status_code == 200, removed.text
    assert (await classify(svc, key, ticket(2))).status_code == 200

    own = {c["period"]: c for c in (await svc.client.get("/v1/spend", headers={"x-api-key": key})).json()["caps"]}
    assert (own["day"]["cap_usd"], own["day"]["remaining_usd"]) == (None, None), own
    assert own["month"]["cap_usd"] == "10"
    assert Decimal(own["day"]["spent_usd"]) == Decimal(own["month"]["spent_usd"]) == await ledger_cost(svc.db)
