"""What a caller reads back from the HTTP API, over real loopback HTTP: a request's audit record (its own team's
only, any other is an indistinguishable 404), money on the wire always as decimal strings, the 402 and 503 answers
and what they leave in the ledger, and the team's spend."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from service.core.clock import utcnow
from service.core.database import Database
from service.core.settings import Settings
from service.money.catalog import Catalog, TokenUsage
from service.simulator import Simulator
from service.tenancy.teams import Teams
from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, running_service

MONEY_SUFFIXES = ("_usd", "_per_mtok")
FLOAT_KEYS = {"confidence", "threshold"}  # probabilities, not money


def walk(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every leaf of a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list):
                yield from walk(item, f"{path}.{key}")
            else:
                yield f"{path}.{key}", key, item
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, f"{path}[{i}]")


def assert_money_is_decimal_strings(document: Any) -> int:
    """Every money field is a string that parses as a Decimal; no float on the wire is money."""
    count = 0
    for path, key, value in walk(document):
        if key.endswith(MONEY_SUFFIXES):
            assert isinstance(value, str), f"{path} is {value!r}, not a decimal string"
            assert Decimal(value).is_finite(), path
            assert "e" not in value.lower(), f"{path} uses an exponent: {value}"
            count += 1
        elif isinstance(value, float):
            assert key in FLOAT_KEYS, f"{path} is a JSON number: {value!r}"
    return count


# --- 404 and team scoping -------------------------------------------------------------------------------


async def test_404_for_an_unknown_request_id(service: Service) -> None:
    missing = uuid.uuid4()
    response = await service.client.get(f"/v1/requests/{missing}", headers=service.auth)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("path", ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g", "%00"])
async def test_404_for_a_malformed_request_id(service: Service, path: str) -> None:
    response = await service.client.get(f"/v1/requests/{path}", headers=service.auth)
    assert response.status_code == 404, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["type"] == "not_found"


async def test_another_teams_request_is_404_and_indistinguishable_from_a_missing_one(service: Service) -> None:
    secret_text = "Team A's confidential memo about the blender recall"
    created = await service.classify(secret_text, instructions="team A's private rubric")
    assert created.status_code == 200, created.text
    request_id = created.json()["id"]
    assert (await service.client.get(f"/v1/requests/{request_id}", headers=service.auth)).status_code == 200

    other = {"Authorization": f"Bearer {await service.new_key('team-b')}"}
    theirs = await service.client.get(f"/v1/requests/{request_id}", headers=other)
    missing_id = str(uuid.uuid4())
    missing = await service.client.get(f"/v1/requests/{missing_id}", headers=other)

    body = assert_error(theirs, 404, "not_found")
    assert theirs.status_code != 403
    # Same answer as for an id that does not exist, down to the message.
    assert body["error"] == {
        k: (v.replace(missing_id, request_id) if isinstance(v, str) else v) for k, v in missing.json()["error"].items()
    }
    raw = theirs.text
    for leak in ("team-a", "team A", "confidential", "private rubric", created.json()["label"], "cost", "attempt"):
        assert leak not in raw
    assert str(service.team_id) not in raw


# --- the audit record ---------------------------------------------------------------------------------------


async def test_the_audit_record_shows_each_attempt_with_its_price_and_tokens(service: Service) -> None:
    text = "{{sim:cheap=529,conf=0.5;strong=conf=0.95}} The blender is loud but works."
    created = await service.classify(text)
    assert created.status_code == 200, created.text
    result = created.json()
    assert result["escalated"] is True

    response = await service.client.get(f"/v1/requests/{result['id']}", headers=service.auth)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] != result["id"]  # the read has its own id
    audit = response.json()
    assert audit["id"] == result["id"]
    assert audit["status"] == "ok"
    assert audit["label"] == result["label"]
    assert audit["escalated"] is True
    assert audit["escalation_reason"] == "low_confidence"
    assert audit["labels"] == SENTIMENT
    assert audit["cheap_model"] == service.settings.cheap_model
    assert audit["strong_model"] == service.settings.strong_model

    attempts = audit["attempts"]
    assert [(a["attempt"], a["stage"], a["outcome"]) for a in attempts] == [
        (1, "cheap", "overloaded"),
        (2, "cheap", "answered"),
        (3, "strong", "answered"),
    ]
    catalog = Catalog()
    ledger = {row.attempt_no: row for row in await service.attempts(result["id"])}
    for attempt in attempts:
        price, tokens = attempt["price"], attempt["tokens"]
        assert set(tokens) == {"input", "cache_write_5m", "cache_write_1h", "cache_read", "output"}
        assert all(isinstance(v, int) for v in tokens.values()), tokens
        expected_row = catalog.price(attempt["model"], utcnow(), tokens["input"])
        assert price["id"] == expected_row.id
        per_mtok = {k: Decimal(price[f"{k}_per_mtok"]) for k in tokens}
        assert per_mtok == {
            "input": expected_row.input,
            "cache_write_5m": expected_row.cache_write_5m,
            "cache_write_1h": expected_row.cache_write_1h,
            "cache_read": expected_row.cache_read,
            "output": expected_row.output,
        }
        # The cost can be recomputed from what the record itself shows.
        usage = TokenUsage(**tokens)
        cost = Decimal(attempt["cost_usd"])
        assert cost == sum((tokens[k] * per_mtok[k] for k in tokens), Decimal(0)) / 1_000_000
        assert cost == expected_row.cost(usage)
        assert Decimal(attempt["reserved_usd"]) >= cost
        assert attempt["settled_by"] == "holder"
        assert attempt["reserved_at"] and attempt["settled_at"]
        row = ledger[attempt["attempt"]]
        assert row.cost_usd == cost
        assert row.reserved_usd == Decimal(attempt["reserved_usd"])
        assert row.price_id == price["id"]
    assert attempts[0]["tokens"]["output"] == 0 and Decimal(attempts[0]["cost_usd"]) == 0
    assert attempts[2]["model"] == service.settings.strong_model
    assert Decimal(attempts[2]["cost_usd"]) > 0

    total = sum((Decimal(a["cost_usd"]) for a in attempts), Decimal(0))
    assert Decimal(audit["cost_usd"]) == total
    assert Decimal(result["cost_usd"]) == total
    assert (await service.request_row(result["id"])).cost_usd == total
    await assert_ledger_invariants(service.db)


async def test_money_on_the_wire_is_always_a_decimal_string(service: Service) -> None:
    await Teams(service.db).set_caps("team-a", Decimal(5), Decimal(50), utcnow().date())
    created = await service.classify("{{sim:cheap=conf=0.5}} The blender is loud but works.")
    assert created.status_code == 200, created.text
    audit = await service.client.get(f"/v1/requests/{created.json()['id']}", headers=service.auth)
    spend = await service.client.get("/v1/spend", headers=service.auth)
    assert assert_money_is_decimal_strings(created.json()) >= 3  # the total and each attempt's cost
    assert assert_money_is_decimal_strings(audit.json()) == 1 + 2 * 7  # cost, reserved and 5 prices per attempt
    assert assert_money_is_decimal_strings(spend.json()) >= 8  # 4 amounts for each of the team's 2 caps
    # The raw JSON holds no bare number where money is.
    for raw in (created.text, audit.text, spend.text):
        assert not re.search(r'"\w+(_usd|_per_mtok)"\s*:\s*[-\d]', raw), raw


async def test_a_cap_refusal_is_402_with_the_remaining_money_as_a_string(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    settings = make_settings(CASCADE_DAILY_CAP_USD="0.0001")
    async with running_service(settings, database_url, db, sim) as svc:
        response = await svc.classify("The blender works great.")
        body = assert_error(response, 402, "cost_cap_exceeded")
        assert body["error"]["cap"] == "global_daily"
        assert isinstance(body["error"]["remaining_usd"], str)
        assert Decimal(body["error"]["remaining_usd"]) == Decimal("0.0001")
        assert sim.calls == []
        assert await svc.attempts() == []
        row = await svc.request_row(body["request_id"])
        assert row.status == "refused"
        assert row.error_type == "cost_cap_exceeded"
        await assert_ledger_invariants(db)


async def test_the_audit_explains_a_low_confidence_escalation(service: Service) -> None:
    created = await service.classify("{{sim:cheap=conf=0.84999}} The blender is fine.")
    assert created.status_code == 200, created.text
    assert created.json()["escalation_reason"] == "low_confidence"
    audit = (await service.client.get(f"/v1/requests/{created.json()['id']}", headers=service.auth)).json()
    cheap = audit["attempts"][0]
    assert cheap["escalation_reason"] == "low_confidence"
    assert Decimal(str(cheap["confidence"])) < Decimal(str(audit["threshold"]))


async def test_upstream_overload_on_both_models_is_503_with_retry_after(service: Service) -> None:
    response = await service.classify("{{sim:all=529,529,529}} The blender is fine.")
    body = assert_error(response, 503, "upstream_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert "strong model" in body["error"]["message"]
    assert len(service.sim.calls) == 2 * service.settings.max_attempts
    assert all(Decimal(a.cost_usd or 0) == 0 for a in await service.attempts())
    assert (await service.request_row(body["request_id"])).status == "failed"
    await assert_ledger_invariants(service.db)


async def test_the_upstream_retry_after_reaches_the_client(service: Service) -> None:
    response = await service.classify("{{sim:all=429:30}} The blender is fine.")
    assert_error(response, 503, "upstream_unavailable")
    assert int(response.headers["retry-after"]) >= 30


# --- spend ------------------------------------------------------------------------------------------------


def team_caps(spend: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert all(c["scope"] == "team" for c in spend["caps"]), "a team sees only its own caps"
    return {c["period"]: c for c in spend["caps"]}


def assert_cap_arithmetic(cap: dict[str, Any]) -> None:
    for key in ("cap_usd", "spent_usd", "reserved_usd", "remaining_usd"):
        assert isinstance(cap[key], str), cap
    assert Decimal(cap["remaining_usd"]) == Decimal(cap["cap_usd"]) - Decimal(cap["spent_usd"]) - Decimal(
        cap["reserved_usd"]
    )


async def test_spend_lists_the_teams_day_and_month_caps(service: Service) -> None:
    await Teams(service.db).set_caps("team-a", Decimal(5), Decimal(50), utcnow().date())
    created = await service.classify("{{sim:cheap=conf=0.5}} The blender is loud but works.")
    assert created.status_code == 200, created.text
    response = await service.client.get("/v1/spend", headers=service.auth)
    assert response.status_code == 200, response.text
    caps = team_caps(response.json())
    assert set(caps) == {"day", "month"}
    today = utcnow().date()
    assert caps["day"]["period_start"] == today.isoformat()
    assert caps["month"]["period_start"] == today.replace(day=1).isoformat()
    assert Decimal(caps["day"]["cap_usd"]) == 5
    assert Decimal(caps["month"]["cap_usd"]) == 50
    spent = sum((a.cost_usd or Decimal(0) for a in await service.attempts()), Decimal(0))
    assert spent > 0
    for cap in caps.values():
        assert_cap_arithmetic(cap)
        assert Decimal(cap["spent_usd"]) == spent
        assert Decimal(cap["reserved_usd"]) == 0
    assert Decimal(created.json()["cost_usd"]) == spent


async def test_spend_lists_the_caps_before_any_spend(service: Service) -> None:
    assert (await service.client.get("/v1/spend", headers=service.auth)).json() == {"caps": []}
    await Teams(service.db).set_caps("team-a", Decimal(5), None, utcnow().date())
    response = await service.client.get("/v1/spend", headers=service.auth)
    assert response.status_code == 200, response.text
    caps = team_caps(response.json())
    assert set(caps) == {"day", "month"}
    assert (caps["month"]["cap_usd"], caps["month"]["remaining_usd"]) == (None, None), "no monthly cap of its own"
    assert_cap_arithmetic(caps["day"])
    for cap in caps.values():
        assert Decimal(cap["spent_usd"]) == 0
    assert Decimal(caps["day"]["remaining_usd"]) == 5
