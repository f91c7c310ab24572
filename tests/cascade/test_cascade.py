"""Every escalation and retry path, end to end: service -> SDK -> simulator over loopback, ledger in Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest

from service.core.database import Database
from service.core.settings import Settings
from service.money.catalog import Catalog, TokenUsage
from service.simulator import Simulator
from service.tables import Attempt
from tests.harness import Service, assert_ledger_invariants, running_service

CHEAP = "claude-haiku-4-5-20251001"
STRONG = "claude-sonnet-5-5"
TEXT = "The blender arrived on time and works fine."


def directive(cheap: str | None = None, strong: str | None = None) -> str:
    clauses = [f"cheap={cheap}"] * bool(cheap) + [f"strong={strong}"] * bool(strong)
    return TEXT + " {{sim:" + ";".join(clauses) + "}}"


def messages(sim: Simulator) -> list[str]:
    return [c.model for c in sim.calls if c.endpoint == "messages"]


def usage_of(a: Attempt) -> TokenUsage:
    return TokenUsage(
        input=a.input_tokens or 0,
        cache_write_5m=a.cache_write_5m_tokens or 0,
        cache_write_1h=a.cache_write_1h_tokens or 0,
        cache_read=a.cache_read_tokens or 0,
        output=a.output_tokens or 0,
    )


async def check_ledger(service: Service, body: dict[str, object], expected: list[tuple[str, str]]) -> list[Attempt]:
    """The ledger has one settled row per attempt, in order, matching the response and the simulator."""
    rows = await service.attempts(str(body["id"]))
    assert [(a.model, a.outcome) for a in rows] == expected
    assert messages(service.sim) == [model for model, _ in expected]
    assert all(a.state == "settled" and a.settled_by == "holder" for a in rows)
    catalog = Catalog()
    for a in rows:
        assert a.cost_usd is not None and a.cost_usd <= a.reserved_usd
        if a.input_tokens is not None:
            price = catalog.price(a.model, a.reserved_at, usage_of(a).prompt_tokens)
            assert a.price_id == price.id and a.price_output == price.output
            assert a.cost_usd == price.cost(usage_of(a))
    if "attempts" in body:
        wire = body["attempts"]
        assert isinstance(wire, list)
        assert [Decimal(x["cost_usd"]) for x in wire] == [a.cost_usd for a in rows]
        assert Decimal(str(body["cost_usd"])) == sum((a.cost_usd or Decimal(0) for a in rows), Decimal(0))
    await assert_ledger_invariants(service.db)
    return rows


async def test_confident_cheap_answer_is_kept(service: Service) -> None:
    response = await service.classify(directive(cheap="label=positive+conf=0.97"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["label"], body["confidence"], body["model"]) == ("positive", 0.97, CHEAP)
    assert body["escalated"] is False and body["escalation_reason"] is None
    rows = await check_ledger(service, body, [(CHEAP, "answered")])
    assert rows[0].input_tokens and rows[0].output_tokens and rows[0].upstream_request_id.startswith("req_sim_")
    request = await service.request_row(body["id"])
    assert (request.status, request.label, request.escalated) == ("ok", "positive", False)


@pytest.mark.parametrize(
    ("behaviour", "reason", "outcome"),
    [
        ("label=positive+conf=0.5", "low_confidence", "answered"),
        ("label=positive+conf=0.8499", "low_confidence", "answered"),
        ("malformed", "invalid_answer", "invalid_answer"),
        ("label=furious+conf=0.99", "invalid_answer", "invalid_answer"),
        ("label=positive+conf=1.7", "invalid_answer", "invalid_answer"),
        ("label=positive+conf=-0.2", "invalid_answer", "invalid_answer"),
        ("refusal", "refused", "refused"),
        ("max_tokens", "truncated", "truncated"),
    ],
)
async def test_cheap_answer_escalates_with_its_reason(
    service: Service, behaviour: str, reason: str, outcome: str
) -> None:
    response = await service.classify(directive(cheap=behaviour, strong="label=neutral+conf=0.93"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["label"], body["model"], body["escalated"]) == ("neutral", STRONG, True)
    assert body["escalation_reason"] == reason
    rows = await check_ledger(service, body, [(CHEAP, outcome), (STRONG, "answered")])
    assert rows[0].escalation_reason == reason
    assert rows[0].cost_usd is not None and rows[0].cost_usd > 0, "a billed bad answer is still charged"
    request = await service.request_row(body["id"])
    assert (request.escalated, request.escalation_reason, request.model) == (True, reason, STRONG)


async def test_truncated_answer_is_charged_for_every_output_token(service: Service) -> None:
    body = (await service.classify(directive(cheap="max_tokens", strong="conf=0.9"))).json()
    cheap = (await service.attempts(body["id"]))[0]
    assert cheap.stop_reason == "max_tokens" and cheap.output_tokens == cheap.max_tokens


async def test_answer_after_a_thinking_block_is_read_by_type(service: Service) -> None:
    response = await service.classify(directive(cheap="thinking+label=negative+conf=0.95"))
    assert response.json()["label"] == "negative" and response.json()["escalated"] is False


async def test_a_caller_may_raise_the_threshold(service: Service) -> None:
    high = (await service.classify(TEXT + " {{sim:cheap=conf=0.95}}", threshold=0.99)).json()
    assert high["escalated"] is True and high["escalation_reason"] == "low_confidence"
    assert (await service.request_row(high["id"])).threshold == Decimal("0.99")


@pytest.mark.parametrize("status", ["529", "500", "503", "429:0.01"])
async def test_retryable_error_is_retried_then_answered(service: Service, status: str) -> None:
    response = await service.classify(directive(cheap=f"{status},label=positive+conf=0.95"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["escalated"] is False
    failed = {"529": "overloaded", "500": "server_error", "503": "server_error", "429:0.01": "rate_limited"}[status]
    rows = await check_ledger(service, body, [(CHEAP, failed), (CHEAP, "answered")])
    assert rows[0].cost_usd == 0 and rows[0].input_tokens == 0, "an error response is not billed"
    assert rows[0].http_status == int(status[:3]) and rows[0].upstream_request_id is not None


async def test_retry_after_is_honoured(service: Service) -> None:
    await service.classify(directive(cheap="429:0.4,conf=0.95"))
    first, second = [c.at for c in service.sim.calls if c.endpoint == "messages"]
    assert second - first >= 0.4


async def test_cheap_model_unavailable_after_retries_escalates(service: Service) -> None:
    response = await service.classify(directive(cheap="529,529,529,529", strong="label=negative+conf=0.9"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["escalated"], body["escalation_reason"], body["model"]) == (True, "cheap_unavailable", STRONG)
    await check_ledger(service, body, [(CHEAP, "overloaded")] * 3 + [(STRONG, "answered")])


async def test_rate_limit_without_retry_after_is_not_retried(service: Service) -> None:
    body = (await service.classify(directive(cheap="429nora", strong="conf=0.9"))).json()
    assert body["escalation_reason"] == "cheap_unavailable"
    await check_ledger(service, body, [(CHEAP, "rate_limited"), (STRONG, "answered")])


@pytest.mark.parametrize(("status", "outcome"), [("400", "bad_request"), ("401", "auth_error")])
async def test_rejected_request_is_never_retried_nor_escalated(service: Service, status: str, outcome: str) -> None:
    response = await service.classify(directive(cheap=status))
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    rows = await service.attempts()
    assert [(a.model, a.outcome, a.cost_usd) for a in rows] == [(CHEAP, outcome, 0)]
    assert messages(service.sim) == [CHEAP]
    request = await service.request_row(rows[0].request_id)
    assert (request.status, request.error_type) == ("failed", "upstream_error")
    await assert_ledger_invariants(service.db)


async def test_dropped_connection_is_charged_at_its_reservation_then_retried(service: Service) -> None:
    response = await service.classify(directive(cheap="drop,conf=0.95"))
    assert response.status_code == 200, response.text
    rows = await check_ledger(service, response.json(), [(CHEAP, "connection_error"), (CHEAP, "answered")])
    dropped = rows[0]
    assert dropped.cost_usd == dropped.reserved_usd > 0, "an unknown outcome is charged at the worst case"
    assert dropped.input_tokens is None and dropped.output_tokens is None, "unknown tokens are not zero"


async def test_timeout_is_charged_at_its_reservation_then_retried(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    settings = make_settings(CASCADE_ATTEMPT_TIMEOUT_S=0.5)
    async with running_service(settings, database_url, db, sim) as service:
        response = await service.classify(directive(cheap="slow:3,conf=0.95"))
        assert response.status_code == 200, response.text
        rows = await check_ledger(service, response.json(), [(CHEAP, "timeout"), (CHEAP, "answered")])
        assert rows[0].cost_usd == rows[0].reserved_usd


async def test_strong_model_unavailable_is_503_with_retry_after(service: Service) -> None:
    response = await service.classify(directive(cheap="conf=0.3", strong="529,529,529,529"))
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    rows = await service.attempts()
    assert [(a.model, a.outcome) for a in rows] == [(CHEAP, "answered")] + [(STRONG, "overloaded")] * 3
    request = await service.request_row(rows[0].request_id)
    assert (request.status, request.error_type) == ("failed", "upstream_unavailable")
    assert request.cost_usd == rows[0].cost_usd
    await assert_ledger_invariants(service.db)


async def test_strong_model_refusal_is_502_and_recorded(service: Service) -> None:
    response = await service.classify(directive(cheap="conf=0.3", strong="refusal"))
    assert response.status_code == 502
    rows = await service.attempts()
    assert [(a.model, a.outcome) for a in rows] == [(CHEAP, "answered"), (STRONG, "refused")]
    assert all(a.cost_usd and a.cost_usd > 0 for a in rows)
    await assert_ledger_invariants(service.db)


async def test_deadline_bounds_the_whole_request(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    settings = make_settings(CASCADE_REQUEST_DEADLINE_S=1.0, CASCADE_ATTEMPT_TIMEOUT_S=10)
    async with running_service(settings, database_url, db, sim) as service:
        response = await service.classify(directive(cheap="slow:5,slow:5,slow:5"))
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "deadline_exceeded"
        rows = await service.attempts()
        assert [a.outcome for a in rows] == ["timeout"], "no attempt starts once the deadline is too close"
        assert rows[0].cost_usd == rows[0].reserved_usd
        request = await service.request_row(rows[0].request_id)
        assert (request.status, request.error_type) == ("failed", "deadline_exceeded")
        await assert_ledger_invariants(db)


async def test_haiku_5_5_as_the_cheap_model(
    make_settings: Callable[..., Settings], database_url: str, db: Database, sim: Simulator
) -> None:
    settings = make_settings(CASCADE_CHEAP_MODEL="claude-haiku-5-5")
    async with running_service(settings, database_url, db, sim) as service:
        response = await service.classify(directive(cheap="label=positive+conf=0.96"))
        assert response.status_code == 200, response.text
        rows = await check_ledger(service, response.json(), [("claude-haiku-5-5", "answered")])
        assert rows[0].stop_reason == "end_turn", "thinking is disabled, so the small answer is not starved"
        assert rows[0].price_id == "claude-haiku-5-5@2026-10-07" and rows[0].price_input == Decimal("0.10")


async def test_request_ids_are_unique_and_audit_matches(service: Service) -> None:
    ids = set()
    for i in range(5):
        body = (await service.classify(f"{TEXT} #{i}")).json()
        ids.add(body["id"])
        audit = (await service.client.get(f"/v1/requests/{body['id']}", headers=service.auth)).json()
        assert audit["label"] == body["label"] and audit["cost_usd"] == body["cost_usd"]
        assert [a["outcome"] for a in audit["attempts"]] == [a["outcome"] for a in body["attempts"]]
    assert len(ids) == 5 and all(uuid.UUID(i) for i in ids)
    await assert_ledger_invariants(service.db)


async def test_a_200_that_is_not_a_message_is_charged_at_its_reservation(service: Service) -> None:
    response = await service.classify(directive(cheap="garbage,conf=0.95"))
    assert response.status_code == 200, response.text
    rows = await check_ledger(service, response.json(), [(CHEAP, "malformed_response"), (CHEAP, "answered")])
    assert rows[0].cost_usd == rows[0].reserved_usd


async def test_upstream_retry_after_reaches_the_client(service: Service) -> None:
    response = await service.classify(directive(cheap="conf=0.3", strong="529:7,529:7,529:7,529:7"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
