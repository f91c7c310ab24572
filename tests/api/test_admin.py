"""The admin API (teams, keys, and who may use it), as an operator and a team see it over HTTP. Caps and spend
are test_team_caps.py."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.teams import classify, create_team, issue_key, ticket
from tests.harness import ADMIN, ADMIN_KEY, Service, assert_error, assert_ledger_invariants, caps

# --- teams ------------------------------------------------------------------------------------------------


async def test_create_and_list_teams_with_caps_as_decimal_strings(admin_service: Service) -> None:
    created = await create_team(admin_service, "acme", daily_usd="2.50", monthly_usd="40")
    uuid.UUID(created["id"])
    assert created["name"] == "acme"
    assert (created["daily_usd"], created["monthly_usd"]) == ("2.5", "40")
    assert created["created_at"]

    plain = await create_team(admin_service, "plain.team_2")
    assert (plain["daily_usd"], plain["monthly_usd"]) == (None, None)

    response = await admin_service.client.get("/v1/admin/teams", headers=ADMIN)
    assert response.status_code == 200, response.text
    teams = {t["name"]: t for t in response.json()}
    assert set(teams) == {"team-a", "acme", "plain.team_2"}
    assert teams["acme"] == created
    assert teams["plain.team_2"] == plain
    assert not re.search(r'_usd"\s*:\s*[-\d]', response.text), "money is never a bare JSON number"
    assert (await issue_key(admin_service, "plain.team_2"))["team"] == "plain.team_2"


async def test_a_duplicate_team_name_is_409_and_changes_nothing(admin_service: Service) -> None:
    first = await create_team(admin_service, "acme", daily_usd="3")
    again = await admin_service.client.post("/v1/admin/teams", json={"name": "acme", "daily_usd": "999"}, headers=ADMIN)
    assert_error(again, 409, "conflict")
    teams = (await admin_service.client.get("/v1/admin/teams", headers=ADMIN)).json()
    assert [t for t in teams if t["name"] == "acme"] == [first]
    # The fixture's team, created by the CLI path, is a duplicate too.
    assert_error(await admin_service.client.post("/v1/admin/teams", json={"name": "team-a"}, headers=ADMIN), 409)


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "has space"},
        {"name": "-leading-dash"},
        {"name": ".leading-dot"},
        {"name": "x" * 65},
        {"name": "slash/team"},
        {"name": "ünïcode"},
        {"name": "nul\u0000"},
        {"name": "acme\n"},
        {"name": "acme\nSYSTEM"},
        {},
        {"name": 42},
        {"name": "ok", "daily_usd": "-1"},
        {"name": "ok", "monthly_usd": "lots"},
        {"name": "ok", "extra": True},
    ],
    ids=[
        "empty",
        "space",
        "leading-dash",
        "leading-dot",
        "too-long",
        "slash",
        "unicode",
        "nul",
        "trailing-newline",
        "embedded-newline",
        "missing",
        "number",
        "negative-cap",
        "bad-cap",
        "unknown-field",
    ],
)
async def test_a_bad_team_is_422_and_not_created(admin_service: Service, body: dict[str, Any]) -> None:
    response = await admin_service.client.post("/v1/admin/teams", json=body, headers=ADMIN)
    assert_error(response, 422, "invalid_request")
    teams = (await admin_service.client.get("/v1/admin/teams", headers=ADMIN)).json()
    assert [t["name"] for t in teams] == ["team-a"]


async def test_the_longest_valid_team_name_is_accepted(admin_service: Service) -> None:
    name = "T" + "x" * 63
    assert (await create_team(admin_service, name))["name"] == name


# --- keys ----------------------------------------------------------------------------------------------


async def test_a_key_is_shown_once_and_works_for_classify(admin_service: Service) -> None:
    await create_team(admin_service, "acme")
    issued = await issue_key(admin_service, "acme")
    assert set(issued) == {"id", "team", "prefix", "key"}
    uuid.UUID(issued["id"])
    assert issued["team"] == "acme"
    assert issued["key"].startswith("csk_") and len(issued["key"]) >= 40
    assert issued["key"].startswith(issued["prefix"]) and len(issued["prefix"]) < len(issued["key"]) // 2

    response = await classify(admin_service, issued["key"], ticket(1))
    assert response.status_code == 200, response.text
    request = await admin_service.request_row(response.json()["id"])
    teams = {t["name"]: t["id"] for t in (await admin_service.client.get("/v1/admin/teams", headers=ADMIN)).json()}
    assert str(request.team_id) == teams["acme"]

    second = await issue_key(admin_service, "acme")
    assert second["key"] != issued["key"] and second["id"] != issued["id"]


async def test_listing_keys_shows_prefix_and_dates_never_the_key_or_its_hash(admin_service: Service) -> None:
    await create_team(admin_service, "acme")
    issued = [await issue_key(admin_service, "acme") for _ in range(2)]
    response = await admin_service.client.get("/v1/admin/teams/acme/keys", headers=ADMIN)
    assert response.status_code == 200, response.text
    listed = response.json()
    assert [k["id"] for k in listed] == [k["id"] for k in issued]
    for row, key in zip(listed, issued, strict=True):
        assert set(row) == {"id", "prefix", "created_at", "revoked_at"}
        assert row["prefix"] == key["prefix"]
        assert row["created_at"] and row["revoked_at"] is None
    for key in issued:
        secret = key["key"]
        assert secret not in response.text
        assert secret[len(key["prefix"]) :] not in response.text
        assert hashlib.sha256(secret.encode()).hexdigest() not in response.text
    # Another team's listing shows only its own keys.
    others = (await admin_service.client.get("/v1/admin/teams/team-a/keys", headers=ADMIN)).json()
    assert {k["id"] for k in others}.isdisjoint({k["id"] for k in issued})
    assert len(others) == 1


async def test_a_revoked_key_answers_401_on_the_very_next_request(admin_service: Service) -> None:
    await create_team(admin_service, "acme")
    doomed, kept = await issue_key(admin_service, "acme"), await issue_key(admin_service, "acme")
    assert (await classify(admin_service, doomed["key"], ticket(1))).status_code == 200

    revoked = await admin_service.client.delete(f"/v1/admin/teams/acme/keys/{doomed['id']}", headers=ADMIN)
    assert revoked.status_code == 204, revoked.text
    calls = len(admin_service.sim.calls)
    refused = await classify(admin_service, doomed["key"], ticket(2))
    assert_error(refused, 401, "unauthorized")
    spend = await admin_service.client.get("/v1/spend", headers={"x-api-key": doomed["key"]})
    assert_error(spend, 401, "unauthorized")
    assert len(admin_service.sim.calls) == calls

    # The team's other key is untouched.
    assert (await classify(admin_service, kept["key"], ticket(3))).status_code == 200
    listed = {k["id"]: k for k in (await admin_service.client.get("/v1/admin/teams/acme/keys", headers=ADMIN)).json()}
    assert listed[doomed["id"]]["revoked_at"] is not None
    assert listed[kept["id"]]["revoked_at"] is None

    # Revoking again, or revoking through another team's path, finds no active key.
    again = await admin_service.client.delete(f"/v1/admin/teams/acme/keys/{doomed['id']}", headers=ADMIN)
    assert_error(again, 404, "not_found")
    wrong_team = await admin_service.client.delete(f"/v1/admin/teams/team-a/keys/{kept['id']}", headers=ADMIN)
    assert_error(wrong_team, 404, "not_found")
    assert (await classify(admin_service, kept["key"], ticket(4))).status_code == 200
    await assert_ledger_invariants(admin_service.db)


async def test_revocation_is_immediate_even_between_back_to_back_requests(admin_service: Service) -> None:
    await create_team(admin_service, "acme")
    key = await issue_key(admin_service, "acme")
    headers = {"x-api-key": key["key"]}
    for _ in range(3):
        assert (await admin_service.client.get("/v1/spend", headers=headers)).status_code == 200
    await admin_service.client.delete(f"/v1/admin/teams/acme/keys/{key['id']}", headers=ADMIN)
    for _ in range(3):
        assert_error(await admin_service.client.get("/v1/spend", headers=headers), 401)


# --- 404 for unknown teams and keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/admin/teams/ghost/keys", None),
        ("GET", "/v1/admin/teams/ghost/keys", None),
        ("DELETE", f"/v1/admin/teams/ghost/keys/{uuid.uuid4()}", None),
        ("PUT", "/v1/admin/teams/ghost/caps", {"daily_usd": "1", "monthly_usd": None}),
        ("DELETE", f"/v1/admin/teams/team-a/keys/{uuid.uuid4()}", None),
    ],
    ids=["issue-key", "list-keys", "revoke-key", "set-caps", "unknown-key-id"],
)
async def test_unknown_team_or_key_is_404(
    admin_service: Service, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = await admin_service.client.request(method, path, json=body, headers=ADMIN)
    assert_error(response, 404, "not_found")
    teams = (await admin_service.client.get("/v1/admin/teams", headers=ADMIN)).json()
    assert [t["name"] for t in teams] == ["team-a"], "a 404 creates nothing"
    assert all(c.scope == "global" for c in await caps(admin_service.db))


# --- who may use the admin API ----------------------------------------------------------------------------


ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/admin/teams", {"name": "intruders", "daily_usd": "1000"}),
    ("GET", "/v1/admin/teams", None),
    ("POST", "/v1/admin/teams/team-a/keys", None),
    ("GET", "/v1/admin/teams/team-a/keys", None),
    ("DELETE", "/v1/admin/teams/team-a/keys/{key_id}", None),
    ("PUT", "/v1/admin/teams/team-a/caps", {"daily_usd": "1000000", "monthly_usd": None}),
    ("GET", "/v1/admin/spend", None),
]
ROUTE_IDS = ["create-team", "list-teams", "issue-key", "list-keys", "revoke-key", "set-caps", "spend"]


async def team_a_key_id(svc: Service) -> str:
    keys = (await svc.client.get("/v1/admin/teams/team-a/keys", headers=ADMIN)).json()
    assert len(keys) == 1
    return str(keys[0]["id"])


async def assert_admin_state_untouched(svc: Service) -> None:
    teams = (await svc.client.get("/v1/admin/teams", headers=ADMIN)).json()
    assert [(t["name"], t["daily_usd"]) for t in teams] == [("team-a", None)]
    keys = (await svc.client.get("/v1/admin/teams/team-a/keys", headers=ADMIN)).json()
    assert [k["revoked_at"] for k in keys] == [None]
    assert (await svc.classify(ticket(1))).status_code == 200, "the team's key still works"


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "header", [lambda k: {"Authorization": f"Bearer {k}"}, lambda k: {"x-api-key": k}], ids=["bearer", "x-api-key"]
)
async def test_a_team_key_gets_403_on_every_admin_route(
    admin_service: Service,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    header: Callable[[str], dict[str, str]],
) -> None:
    path = path.format(key_id=await team_a_key_id(admin_service))
    response = await admin_service.client.request(method, path, json=body, headers=header(admin_service.key))
    assert_error(response, 403, "forbidden")
    await assert_admin_state_untouched(admin_service)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer admin-secreT"},
        {"Authorization": f"Bearer {ADMIN_KEY}x"},
        {"x-api-key": "csk_not-a-real-key"},
        {"Authorization": "Basic YWRtaW46YWRtaW4tc2VjcmV0"},
    ],
    ids=["no-key", "wrong-case", "suffix", "unknown-csk", "basic"],
)
async def test_no_key_or_a_wrong_key_gets_401_on_every_admin_route(
    admin_service: Service, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> None:
    path = path.format(key_id=await team_a_key_id(admin_service))
    response = await admin_service.client.request(method, path, json=body, headers=headers)
    assert_error(response, 401, "unauthorized")
    await assert_admin_state_untouched(admin_service)


async def test_a_revoked_team_key_gets_401_on_the_admin_api(admin_service: Service) -> None:
    key_id = await team_a_key_id(admin_service)
    await admin_service.client.delete(f"/v1/admin/teams/team-a/keys/{key_id}", headers=ADMIN)
    response = await admin_service.client.get("/v1/admin/teams", headers=admin_service.auth)
    assert_error(response, 401, "unauthorized")


async def test_the_guard_runs_before_body_validation(admin_service: Service) -> None:
    response = await admin_service.client.post("/v1/admin/teams", json={"name": ""}, headers=admin_service.auth)
    assert_error(response, 403, "forbidden")
    response = await admin_service.client.post("/v1/admin/teams", json={"name": ""})
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_without_an_admin_key_configured_the_admin_api_is_403(
    service: Service, method: str, path: str, body: dict[str, Any] | None
) -> None:
    assert service.settings.admin_key is None
    path = path.format(key_id=uuid.uuid4())
    for headers in ({"Authorization": f"Bearer {ADMIN_KEY}"}, service.auth):
        response = await service.client.request(method, path, json=body, headers=headers)
        body_ = assert_error(response, 403, "forbidden")
        assert "not configured" in body_["error"]["message"]
    assert (await service.classify(ticket(1))).status_code == 200
