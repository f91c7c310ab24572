"""One JSON access line per request, with the ledger's ids, outcome and cost; never a key, never the text."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from service.core.database import Database
from service.core.logs import ACCESS_LOGGER, JsonFormatter
from service.core.settings import Settings
from service.simulator import Simulator
from tests.harness import Service, running_service

SECRET_TEXT = "My order 7781 never arrived and nobody answers the phone."


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == ACCESS_LOGGER]


def line_for(lines: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    matching = [line for line in lines if line["request_id"] == request_id]
    assert len(matching) == 1, f"{len(matching)} lines for {request_id}"
    return matching[0]


async def test_one_line_per_request_with_the_ledger_fields(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    escalated = await service.classify(SECRET_TEXT + " {{sim:cheap=conf=0.3;strong=conf=0.9}}")
    rejected = await service.classify(SECRET_TEXT + " {{sim:cheap=400}}")
    unauthorized = await service.client.post("/v1/classify", json={"text": "x", "labels": ["a", "b"]})
    await service.client.get("/health/live")
    assert (escalated.status_code, rejected.status_code, unauthorized.status_code) == (200, 502, 401)
    lines = access_lines(caplog)

    body = escalated.json()
    line = line_for(lines, body["id"])
    attempts = await service.attempts(body["id"])
    row = await service.request_row(body["id"])
    assert line["method"] == "POST" and line["path"] == "/v1/classify" and line["status"] == 200
    assert line["team_id"] == str(service.team_id)
    assert line["task_hash"] == row.task_hash
    assert line["upstream_request_ids"] == [a.upstream_request_id for a in attempts]
    assert len(line["upstream_request_ids"]) == 2
    assert (line["outcome"], line["model"], line["escalated"]) == ("ok", row.model, True)
    assert line["escalation_reason"] == "low_confidence"
    assert Decimal(line["cost_usd"]) == row.cost_usd == sum(a.cost_usd or 0 for a in attempts)
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert line["level"] == "info" and line["logger"] == ACCESS_LOGGER

    failed = line_for(lines, rejected.json()["request_id"])
    assert (failed["status"], failed["outcome"]) == (502, "failed")
    assert Decimal(failed["cost_usd"]) == (await service.request_row(failed["request_id"])).cost_usd

    denied = line_for(lines, unauthorized.json()["request_id"])
    assert denied["status"] == 401 and "outcome" not in denied

    assert not [line for line in lines if line["path"].startswith("/health/")], "probes are logged at debug"
    for text in (json.dumps(line) for line in lines):
        assert service.key not in text
        assert "never arrived" not in text


async def test_the_text_is_logged_only_when_debugging_says_so(
    make_settings: Callable[..., Settings],
    database_url: str,
    db: Database,
    sim: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with running_service(make_settings(CASCADE_LOG_TEXT=True), database_url, db, sim) as service:
        response = await service.classify(SECRET_TEXT)
    line = line_for(access_lines(caplog), response.json()["id"])
    assert line["text"] == SECRET_TEXT
    assert service.key not in json.dumps(line)
