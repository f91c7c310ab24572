"""The reports' and the request list's parameters: each refusal names the field at fault, a team key names only
its own team, and garbage cursors, the ends of the calendar and NUL characters are 4xx, never a database error."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.harness import ADMIN, Service, assert_error
from tests.reports.recomputation import get_json


async def test_report_parameters_are_validated_with_the_field_at_fault(admin_service: Service) -> None:
    svc = admin_service
    team_a = svc.auth
    await svc.new_key("team-b")
    cases: list[tuple[str, dict[str, str], dict[str, str], str]] = [
        ("/v1/reports/escalations", team_a, {"start": "yesterday"}, "start"),
        ("/v1/reports/costs", team_a, {"end": "2026-13-01"}, "end"),
        ("/v1/reports/escalations", team_a, {"start": "2026-11-02T00:00:00Z", "end": "2026-11-02"}, "start"),
        ("/v1/reports/costs", team_a, {"start": "2026-11-03", "end": "2026-11-02"}, "start"),
        ("/v1/reports/escalations", ADMIN, {"start": "2025-01-01", "end": "2026-02-05T00:00:00.000001"}, "start"),
        (
            "/v1/reports/escalations",
            team_a,
            {"start": "2026-10-01", "end": "2026-11-01T00:00:00.000001", "group_by": "hour"},
            "group_by",
        ),
        ("/v1/reports/escalations", team_a, {"group_by": "week"}, "group_by"),
        ("/v1/reports/costs", team_a, {"group_by": "hour"}, "group_by"),
        ("/v1/reports/costs", team_a, {"group_by": "label"}, "group_by"),
        ("/v1/reports/escalations", team_a, {"group_by": "team"}, "group_by"),
        ("/v1/reports/costs", team_a, {"group_by": "team"}, "group_by"),
        ("/v1/requests", team_a, {"start": "soon"}, "start"),
        ("/v1/requests", team_a, {"limit": "0"}, "limit"),
        ("/v1/requests", team_a, {"limit": "1001"}, "limit"),
        ("/v1/requests", team_a, {"limit": "-5"}, "limit"),
        ("/v1/requests", team_a, {"limit": "ten"}, "limit"),
        ("/v1/requests", team_a, {"status": "done"}, "status"),
        ("/v1/requests", team_a, {"format": "xml"}, "format"),
        ("/v1/requests", team_a, {"escalated": "perhaps"}, "escalated"),
    ]
    for path, headers, params, field in cases:
        body = assert_error(await svc.client.get(path, params=params, headers=headers), 422, "invalid_request")
        assert body["error"].get("field") == field, (path, params, body)
    # The limits themselves are allowed: 400 days, hourly buckets over 31 days, pages of 1 and 1000.
    await get_json(svc, "/v1/reports/escalations", ADMIN, start="2025-01-01", end="2026-02-05")
    hourly = await get_json(
        svc, "/v1/reports/escalations", team_a, start="2026-10-01", end="2026-11-01", group_by="hour"
    )
    assert len(hourly["buckets"]) == 31 * 24
    await get_json(svc, "/v1/requests", team_a, limit=1)
    await get_json(svc, "/v1/requests", team_a, limit=1000)
    garbage = [
        "garbage",
        "!!!",
        "é",
        base64.urlsafe_b64encode(b"not json").decode(),
        encode_cursor(["2026-11-02T00:00:00", str(uuid.uuid4())]),  # no offset
        encode_cursor(["2026-11-02T00:00:00+00:00", "not-a-uuid"]),
        encode_cursor(["2026-11-02T00:00:00+00:00"]),
        encode_cursor([1, 2, 3]),
        encode_cursor({"a": 1}),
        encode_cursor(None),
    ]
    for cursor in garbage:
        body = assert_error(await svc.client.get("/v1/requests", params={"cursor": cursor}, headers=team_a), 422)
        assert body["error"]["field"] == "cursor", cursor

    # ?team=: a team key may name only itself; the admin may name any team that exists.
    assert (await svc.classify("One for team-a. {{sim:cheap=label=positive+conf=0.9}}")).status_code == 200
    today = datetime.now(UTC).date()
    window = {"start": (today - timedelta(days=1)).isoformat(), "end": (today + timedelta(days=1)).isoformat()}
    for path in ("/v1/reports/escalations", "/v1/reports/costs", "/v1/requests"):
        assert_error(await svc.client.get(path, params={"team": "team-b"}, headers=team_a), 403, "forbidden")
        assert_error(await svc.client.get(path, params={"team": "ghost"}, headers=ADMIN), 404, "not_found")
        assert_error(await svc.client.get(path, headers={"Authorization": "Bearer csk_nope"}), 401, "unauthorized")
        assert_error(await svc.client.get(path), 401, "unauthorized")
        own = await get_json(svc, path, team_a, team="team-a", **window)
        assert own == await get_json(svc, path, team_a, **window)


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize("id_", [5, ["x"]], ids=["int", "list"])
async def test_a_cursor_with_a_non_string_id_is_422(admin_service: Service, id_: Any) -> None:
    cursor = encode_cursor(["2026-11-02T00:00:00+00:00", id_])
    response = await admin_service.client.get("/v1/requests", params={"cursor": cursor}, headers=ADMIN)
    assert assert_error(response, 422, "invalid_request")["error"]["field"] == "cursor"


@pytest.mark.parametrize(
    "params",
    [
        {"end": "0001-01-01"},  # the default start, 7 days earlier, is before year 1
        {"start": "0001-01-01T00:00:00+01:00", "end": "0001-01-02"},  # in UTC this is year 0
        {"start": "9999-12-30", "end": "9999-12-31T23:59:59-01:00"},  # in UTC this is year 10000
    ],
    ids=["default-start-underflows", "start-underflows", "end-overflows"],
)
async def test_instants_at_the_ends_of_the_calendar_are_422(admin_service: Service, params: dict[str, str]) -> None:
    for path in ("/v1/reports/escalations", "/v1/requests"):
        response = await admin_service.client.get(path, params=params, headers=ADMIN)
        assert_error(response, 422, "invalid_request")


async def test_a_cursor_whose_instant_leaves_the_calendar_in_utc_is_422(admin_service: Service) -> None:
    cursor = encode_cursor(["0001-01-01T00:00:00+05:00", str(uuid.uuid4())])
    response = await admin_service.client.get("/v1/requests", params={"cursor": cursor}, headers=ADMIN)
    assert assert_error(response, 422, "invalid_request")["error"]["field"] == "cursor"


@pytest.mark.parametrize("field", ["model", "reason", "task"])
async def test_a_nul_in_a_list_filter_is_422_not_a_database_error(admin_service: Service, field: str) -> None:
    response = await admin_service.client.get("/v1/requests", params={field: "a\x00b"}, headers=admin_service.auth)
    assert assert_error(response, 422, "invalid_request")["error"]["field"] == field


async def test_an_admin_naming_a_team_with_a_nul_gets_404(admin_service: Service) -> None:
    response = await admin_service.client.get("/v1/reports/costs", params={"team": "a\x00b"}, headers=ADMIN)
    assert_error(response, 404, "not_found")
