"""The request list: its pages, filters, CSV and NDJSON exports and team scoping, compared with the raw rows."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from service.reports.audit import COLUMNS
from tests.harness import ADMIN, SENTIMENT, Service, assert_error
from tests.reports.listing import canonical, export, listed, params_of, walk
from tests.reports.recomputation import MAX_BUCKETS, check_costs, check_escalations, get_json
from tests.reports.rows import Window, load
from tests.reports.workload import CASES, OTHER_CHEAP, SPAM, Workload, execute


async def test_the_request_list_pages_filters_exports_and_scoping_agree_with_the_rows(workload: Workload) -> None:
    w = workload
    requests, _ = await load(w.svc.db)
    window = Window(w.at["T0"] - timedelta(hours=1), w.tomorrow)
    settings = w.svc.settings
    spam_task = next(r["task_hash"] for r in requests if r["labels"] == SPAM)
    filters: list[dict[str, Any]] = [
        {},
        {"escalated": True},
        {"escalated": False},
        {"reason": "low_confidence"},
        {"reason": "invalid_answer"},
        {"model": settings.strong_model},
        {"model": OTHER_CHEAP},
        {"status": "ok"},
        {"status": "failed"},
        {"status": "refused"},
        {"status": "pending"},
        {"task": spam_task},
        {"escalated": True, "status": "ok", "task": spam_task},
    ]
    readers: list[tuple[dict[str, str], str | None, dict[str, str]]] = [
        (ADMIN, None, {}),
        (w.auth["team-a"], "team-a", {}),
        (w.auth["team-b"], "team-b", {}),
        (ADMIN, "team-b", {"team": "team-b"}),
    ]
    for (headers, team, extra), flt in itertools.product(readers, filters):
        if team == "team-b" and flt not in filters[:3]:
            continue  # team-b has few rows: every filter is exercised by the admin and team-a
        expected = [canonical(r) for r in listed(requests, window, team, **flt)]
        params = {**params_of(window, flt), **extra}
        for limit in (1, 4) if not flt and team is None else (10,):
            items = await walk(w.svc, headers, limit, **params)
            assert all(set(item) == set(COLUMNS) for item in items)
            assert [canonical(item) for item in items] == expected, (team, flt, limit)
        for how in ("csv", "ndjson", "accept") if not flt else ("ndjson",) if "escalated" in flt else ("csv",):
            assert await export(w.svc, headers, how, **params) == expected, (team, flt, how)
    everything = await walk(w.svc, ADMIN, 1000, **window.params())
    assert {i["team"] for i in everything} == {"team-a", "team-b"}
    assert len(everything) == len(CASES) and len({i["id"] for i in everything}) == len(CASES)
    # Requests moved to the same instant are ordered by id, newest first; a page boundary may fall between them.
    tied = [i for i in everything if datetime.fromisoformat(i["created_at"]) == w.at["T2"]]
    assert len(tied) == 3 and [i["id"] for i in tied] == sorted((i["id"] for i in tied), key=uuid.UUID, reverse=True)
    await check_scoping(w)


async def check_scoping(w: Workload) -> None:
    """The audit of one request: its team and the admin only. (The lists, exports and reports are compared
    with each team's own rows above and in the report tests.)"""
    window = Window(w.at["T0"] - timedelta(hours=1), w.tomorrow)
    for team, headers in w.auth.items():
        for path in ("/v1/reports/escalations", "/v1/reports/costs"):
            report = await get_json(w.svc, path, headers, group_by="day", **window.params())
            assert report["team"] == team
    admin = await get_json(w.svc, "/v1/reports/costs", ADMIN, group_by="team", **window.params())
    assert {b["key"]: b["requests"] for b in admin["buckets"]} == Counter(c.team for c in CASES)

    for case in CASES:
        request_id = w.ids[case.name]
        other = "team-b" if case.team == "team-a" else "team-a"
        assert_error(await w.svc.client.get(f"/v1/requests/{request_id}", headers=w.auth[other]), 404, "not_found")
        admin_response = await w.svc.client.get(f"/v1/requests/{request_id}", headers=ADMIN)
        assert admin_response.status_code == 200, admin_response.text
        if case.name in ("a-low-changed", "b-refused"):
            own_response = await w.svc.client.get(f"/v1/requests/{request_id}", headers=w.auth[case.team])
            assert own_response.status_code == 200 and own_response.json() == admin_response.json()
            narrowed = await w.svc.client.get(f"/v1/requests/{request_id}", params={"team": other}, headers=ADMIN)
            assert_error(narrowed, 404, "not_found")


SYNTHETIC = 2600  # every fifth for team-b: 2080 rows of team-a alone, past the exports' internal page of 2000


async def test_exports_stream_every_row_exactly_once_past_the_internal_page(admin_service: Service) -> None:
    svc = admin_service
    db = svc.db
    auth = {"team-a": svc.auth, "team-b": {"Authorization": f"Bearer {await svc.new_key('team-b')}"}}
    ids = {}
    for name, sender, directive in (
        ("escalated", "team-a", "cheap=label=negative+conf=0.3;strong=label=positive+conf=0.9"),
        ("kept", "team-a", "cheap=label=positive+conf=0.95"),
        ("other-team", "team-b", "cheap=label=neutral+conf=0.9"),
    ):
        body = {"text": f"Export case {name}. {{{{sim:{directive}}}}}", "labels": SENTIMENT}
        response = await svc.client.post("/v1/classify", json=body, headers=auth[sender])
        assert response.status_code == 200, response.text
        ids[name] = response.json()["id"]
    now = datetime.now(UTC)
    w = Workload(svc, auth, ids, {}, now.date())
    async with db.transaction() as session:
        team_b = await session.scalar(text("SELECT id FROM teams WHERE name = 'team-b'"))
    # Copies of a real request at three instants a microsecond apart, so pages end inside runs of equal times;
    # 250 distinct labels and varied costs.
    await execute(
        db,
        """
        INSERT INTO requests (id, team_id, status, task_hash, labels, instructions, threshold, text_chars,
            cheap_model, strong_model, label, confidence, model, escalated, escalation_reason, cheap_label,
            cheap_confidence, cost_usd, all_strong_cost_usd, error_type, error_message, latency_ms, created_at,
            finished_at)
        SELECT gen_random_uuid(), CASE WHEN g % 5 = 0 THEN :team_b ELSE r.team_id END, r.status, r.task_hash,
            r.labels, r.instructions, r.threshold, r.text_chars, r.cheap_model, r.strong_model, 'syn-' || (g % 250),
            r.confidence, r.model, g % 2 = 0, CASE WHEN g % 2 = 0 THEN 'low_confidence' END, r.cheap_label,
            r.cheap_confidence, r.cost_usd + (g % 97) * 0.0000001, r.all_strong_cost_usd, r.error_type,
            r.error_message, r.latency_ms, CAST(:at AS timestamptz) - (g % 3) * interval '1 microsecond', r.finished_at
        FROM requests r, generate_series(1, :n) AS g
        WHERE r.id = :source
        """,
        team_b=team_b,
        at=now - timedelta(days=2),
        n=SYNTHETIC,
        source=uuid.UUID(ids["escalated"]),
    )
    requests, _ = await load(db)
    window = Window(now - timedelta(days=3), w.tomorrow)
    readers: list[tuple[dict[str, str], str | None]] = [
        (ADMIN, None),
        (auth["team-a"], "team-a"),
        (auth["team-b"], "team-b"),
    ]
    for headers, team in readers:
        expected = [canonical(r) for r in listed(requests, window, team)]
        for how in ("csv", "ndjson"):
            rows = await export(w.svc, headers, how, **window.params())
            assert len({row[0] for row in rows}) == len(rows), "a row streamed twice"
            assert rows == expected, (team, how)
        if team != "team-b":
            assert len(expected) > 2000
    pages = await walk(w.svc, ADMIN, 1000, **window.params())
    assert [canonical(i) for i in pages] == [canonical(r) for r in listed(requests, window, None)]
    escalated_only = await export(w.svc, w.auth["team-a"], "csv", escalated="true", **window.params())
    assert escalated_only == [canonical(r) for r in listed(requests, window, "team-a", escalated=True)]

    # The reports over the same rows: 250 + 2 labels, of which only the 200 largest are listed.
    report = await check_escalations(w, window, "label", ADMIN, None)
    assert report["truncated"] is True and len(report["buckets"]) == MAX_BUCKETS
    await check_escalations(w, window, "label", w.auth["team-b"], "team-b")
    await check_costs(w, window, "task", ADMIN, None)
    await check_costs(w, window, "team", ADMIN, None)


@pytest.mark.parametrize(
    ("params", "accept", "media_type"),
    [
        ({"format": "csv"}, None, "text/csv"),
        ({}, "text/csv", "text/csv"),
        ({"format": "ndjson"}, None, "application/x-ndjson"),
    ],
    ids=["format-csv", "accept-csv", "format-ndjson"],
)
async def test_exports_are_labelled_with_their_media_type(
    admin_service: Service, params: dict[str, str], accept: str | None, media_type: str
) -> None:
    svc = admin_service
    assert (await svc.classify("Export me. {{sim:cheap=label=positive+conf=0.9}}")).status_code == 200
    headers = {**svc.auth, **({"accept": accept} if accept else {})}
    response = await svc.client.get("/v1/requests", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.text.startswith("id,created_at,") == (media_type == "text/csv"), "the body is the export"
    assert response.headers["content-type"].split(";")[0] == media_type


async def test_exported_cells_that_a_spreadsheet_would_run_are_quoted(admin_service: Service) -> None:
    labels = ["=HYPERLINK(1)", "+1", "plain"]
    sent = await admin_service.classify("{{sim:cheap=label==HYPERLINK(1)+conf=0.99}} x", labels)
    assert sent.status_code == 200, sent.text
    exported = await admin_service.client.get("/v1/requests", params={"format": "csv"}, headers=admin_service.auth)
    row = next(csv.DictReader(io.StringIO(exported.text)))
    assert row["label"] == "'=HYPERLINK(1)" and row["cheap_label"] == "'=HYPERLINK(1)"
    page = await admin_service.client.get("/v1/requests", headers=admin_service.auth)
    assert page.json()["items"][0]["label"] == "=HYPERLINK(1)", "only the CSV cell is quoted"
