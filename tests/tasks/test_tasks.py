"""Named, versioned tasks: PUT makes versions, classify and batches use them, reports group by them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.harness import SENTIMENT, Service, assert_error, assert_ledger_invariants, classify_task, put_task

TOPICS = ["billing", "bug", "feature"]


async def test_a_put_makes_a_version_only_when_the_definition_changes(service: Service) -> None:
    first = await put_task(service, "sentiment", instructions="Product reviews.")
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert (v1["name"], v1["version"], v1["labels"]) == ("sentiment", 1, SENTIMENT)
    assert v1["threshold"] == 0.85 and v1["shadow_rate"] == 0 and v1["prompt_cache"] == "5m"
    assert (v1["cheap_model"], v1["strong_model"]) == (service.settings.cheap_model, service.settings.strong_model)
    same = await put_task(service, "sentiment", instructions="Product reviews.")
    assert same.status_code == 200 and same.json()["id"] == v1["id"] and same.json()["version"] == 1
    changed = await put_task(
        service,
        "sentiment",
        instructions="Product reviews.",
        threshold=0.7,
        examples=[{"text": "Love it", "label": "positive"}],
    )
    assert changed.status_code == 201 and changed.json()["version"] == 2
    shown = (await service.client.get("/v1/tasks/sentiment", headers=service.auth)).json()
    assert shown["version"] == 2 and shown["examples"] == [{"text": "Love it", "label": "positive"}]
    assert [v["version"] for v in shown["versions"]] == [2, 1]
    old = await service.client.get("/v1/tasks/sentiment/versions/1", headers=service.auth)
    assert old.status_code == 200 and old.json()["threshold"] == 0.85 and old.json()["examples"] == []
    await put_task(service, "topics", labels=TOPICS)
    listed = (await service.client.get("/v1/tasks", headers=service.auth)).json()["tasks"]
    assert [(t["name"], t["version"]) for t in listed] == [("sentiment", 2), ("topics", 1)]


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("Bad Name", {}, "name"),
        ("ok", {"labels": ["only"]}, "labels"),
        ("ok", {"examples": [{"text": "x", "label": "spam"}]}, "examples"),
        ("ok", {"examples": [{"text": " ", "label": "positive"}]}, "examples"),
        ("ok", {"cheap_model": "claude-sonnet-4-5-20250929"}, "cheap_model"),  # retired on 2026-11-30
        ("ok", {"strong_model": "gpt-5"}, "strong_model"),
        ("ok", {"instructions": "a\u0000b"}, "instructions"),
    ],
)
async def test_a_bad_task_is_refused_naming_its_field(
    service: Service, name: str, body: dict[str, Any], field: str
) -> None:
    response = await put_task(service, name, **body)
    assert assert_error(response, 422, "invalid_request")["error"]["field"] == field
    assert (await service.client.get("/v1/tasks", headers=service.auth)).json()["tasks"] == []


async def test_tasks_are_the_teams_own(service: Service) -> None:
    await put_task(service, "sentiment")
    other = {"Authorization": f"Bearer {await service.new_key('team-b')}"}
    assert_error(await service.client.get("/v1/tasks/sentiment", headers=other), 404, "not_found")
    assert (await service.client.get("/v1/tasks", headers=other)).json()["tasks"] == []
    body = {"text": "Great!", "task": "sentiment"}
    assert_error(await service.client.post("/v1/classify", json=body, headers=other), 404, "not_found")
    # The other team may have a task of the same name: each team sees its own.
    mine = await service.client.put("/v1/tasks/sentiment", json={"labels": TOPICS}, headers=other)
    assert mine.status_code == 201 and mine.json()["version"] == 1
    assert (await service.client.get("/v1/tasks/sentiment", headers=service.auth)).json()["labels"] == SENTIMENT


async def test_classify_by_task_name_or_version_uses_that_versions_labels_threshold_and_models(
    service: Service,
) -> None:
    await put_task(service, "support", labels=TOPICS, threshold=0.95)
    await put_task(service, "support", labels=["refund", "other"], cheap_model="claude-haiku-5-5")
    latest = await classify_task(service, "Where is my refund?", "support")
    assert latest.status_code == 200, latest.text
    assert latest.json()["label"] in ("refund", "other")
    assert latest.json()["attempts"][0]["model"] == "claude-haiku-5-5"
    pinned = await classify_task(service, "The app crashes on start. {{sim:cheap=conf=0.9}}", "support@1")
    assert pinned.status_code == 200, pinned.text
    body = pinned.json()
    assert body["label"] in TOPICS and body["escalated"], "0.9 is below version 1's threshold of 0.95"
    assert body["attempts"][0]["model"] == service.settings.cheap_model
    row = await service.request_row(body["id"])
    assert row.threshold == Decimal("0.95") and row.labels == TOPICS and row.task_id is not None
    await assert_ledger_invariants(service.db)


async def test_a_task_request_may_raise_the_tasks_threshold_but_not_lower_it(service: Service) -> None:
    await put_task(service, "lenient", threshold=0.6)
    kept = await classify_task(service, "Fine. {{sim:cheap=conf=0.7}}", "lenient")
    assert kept.status_code == 200 and not kept.json()["escalated"], "0.7 clears the task's own 0.6"
    raised = await classify_task(service, "Fine! {{sim:cheap=conf=0.7}}", "lenient", threshold=0.9)
    assert raised.status_code == 200 and raised.json()["escalated"]
    lowered = await classify_task(service, "Fine.", "lenient", threshold=0.5)
    assert "lenient@1" in assert_error(lowered, 422, "invalid_request")["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"text": "x", "task": "sentiment", "labels": SENTIMENT}, 422, "task"),
        ({"text": "x", "task": "sentiment", "instructions": "hm"}, 422, "task"),
        ({"text": "x"}, 422, "labels"),
        ({"text": "x", "task": "Not A Name"}, 422, "task"),
        ({"text": "x", "task": "missing"}, 404, None),
        ({"text": "x", "task": "sentiment@7"}, 404, None),
    ],
)
async def test_a_task_reference_is_checked(service: Service, body: dict[str, Any], status: int, field: str) -> None:
    await put_task(service, "sentiment")
    error = assert_error(await service.client.post("/v1/classify", json=body, headers=service.auth), status)
    assert error["error"].get("field") == field
    assert await service.attempts() == [], "nothing was reserved or sent"


async def test_a_batch_runs_a_named_task(service: Service) -> None:
    await put_task(service, "topics", labels=TOPICS)
    body = {"items": [{"text": "I was charged twice"}, {"text": " "}], "task": "topics"}
    response = await service.client.post("/v1/classify/batch", json=body, headers=service.auth)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert items[0]["status"] == 200 and items[0]["result"]["label"] in TOPICS
    assert items[1]["status"] == 422


async def test_reports_group_by_task_name_and_version(service: Service) -> None:
    await put_task(service, "sentiment")
    await put_task(service, "sentiment", instructions="Reviews of kettles.")
    for task in ("sentiment@1", "sentiment@2", "sentiment@2"):
        assert (await classify_task(service, "Lovely kettle.", task)).status_code == 200
    assert (await service.classify("Lovely kettle.")).status_code == 200  # inline: the same labels, no name
    report = (await service.client.get("/v1/reports/escalations?group_by=task", headers=service.auth)).json()
    seen = {(b["task"]["name"], b["task"]["version"]): b["requests"] for b in report["buckets"]}
    assert seen == {("sentiment", 1): 1, ("sentiment", 2): 2, (None, None): 1}
    costs = (await service.client.get("/v1/reports/costs?group_by=task", headers=service.auth)).json()
    assert sorted((b["task"]["name"] or "", b["requests"]) for b in costs["buckets"]) == [
        ("", 1),
        ("sentiment", 1),
        ("sentiment", 2),
    ]


async def test_unknown_names_and_out_of_range_versions_are_not_found(service: Service) -> None:
    await put_task(service, "sentiment")
    for path in (
        "/v1/tasks/sentiment/versions/99999999999",
        "/v1/tasks/sentiment/calibration?version=99999999999",
        "/v1/tasks/a%00b",
        "/v1/tasks/a%00b/calibration",
        "/v1/tasks/sentiment/versions/0",
    ):
        assert_error(await service.client.get(path, headers=service.auth), 404, "not_found")


async def test_a_version_whose_model_has_retired_is_refused_before_any_call(service: Service) -> None:
    import uuid
    from datetime import UTC, datetime

    from service.tables import TaskVersion

    async with service.db.transaction() as session:
        session.add(
            TaskVersion(
                id=uuid.uuid4(),
                team_id=service.team_id,
                name="old",
                version=1,
                labels=SENTIMENT,
                instructions=None,
                examples=[],
                threshold=Decimal("0.85"),
                cheap_model=service.settings.cheap_model,
                strong_model="claude-sonnet-4-5-20250929",  # stored before it retired on 2026-11-30
                shadow_rate=Decimal(0),
                prompt_cache="5m",
                cache_ttl_s=0,
                created_at=datetime(2026, 11, 1, tzinfo=UTC),
            )
        )
    response = await classify_task(service, "Fine.", "old")
    body = assert_error(response, 422, "invalid_request")
    assert "old@1" in body["error"]["message"] and "retired" in body["error"]["message"]
    assert await service.attempts() == []
