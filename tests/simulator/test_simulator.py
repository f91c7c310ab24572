"""The Anthropic API simulator, exercised through the real SDK over loopback HTTP.

One simulator for the whole module, reset before each test: successes, errors, odd successes, the directives,
Haiku 5.5 and the calls summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anthropic
import httpx2
import pytest
import pytest_asyncio
from anthropic.types import Message, TextBlock
from anthropic.types.shared import ErrorResponse

from service.simulator import Simulator, SimulatorConfig
from service.simulator.behaviour import classify, input_tokens, parse_behaviour, parse_directives
from service.simulator.corpus import SAMPLES
from tests.simulator.message_requests import (
    HAIKU,
    HAIKU_55,
    SENTIMENT,
    SONNET,
    SONNET_55,
    SYSTEM,
    answer,
    create,
    request,
    text_of,
    user_content,
)


@pytest_asyncio.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(slow_seconds=5.0)) as simulator:
        yield simulator


@pytest_asyncio.fixture(scope="module")
async def client(sim: Simulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    api = anthropic.AsyncAnthropic(api_key="test", base_url=sim.url, max_retries=0)
    yield api
    await api.close()


@pytest.fixture(autouse=True)
def _fresh(sim: Simulator) -> None:
    sim.reset()


# --- success ------------------------------------------------------------------------------------


async def test_success_is_a_message_with_headers(client: anthropic.AsyncAnthropic, sim: Simulator) -> None:
    raw = await client.messages.with_raw_response.create(**request(SAMPLES[0].text))
    assert raw.headers["request-id"].startswith("req_sim_")
    assert len(raw.headers["request-id"]) == len("req_sim_") + 24
    assert raw.headers["content-type"] == "application/json"
    for kind in ("requests", "tokens"):
        assert int(raw.headers[f"anthropic-ratelimit-{kind}-limit"]) > 0
        assert int(raw.headers[f"anthropic-ratelimit-{kind}-remaining"]) >= 0
        assert raw.headers[f"anthropic-ratelimit-{kind}-reset"].endswith("Z")
    message = await raw.parse()
    assert isinstance(message, Message)
    assert message.id.startswith("msg_sim_")
    assert message.model == HAIKU
    assert message.stop_reason == "end_turn"
    result = answer(message)
    assert result["label"] in SENTIMENT
    assert 0.0 <= result["confidence"] <= 1.0
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 0
    [call] = sim.calls
    assert (call.model, call.status, call.behaviour, call.endpoint) == (HAIKU, 200, "ok", "messages")
    assert call.text == SAMPLES[0].text
    assert call.request_id == raw.headers["request-id"]


async def test_plain_text_label_without_output_config(client: anthropic.AsyncAnthropic) -> None:
    body = request(SAMPLES[0].text)
    del body["output_config"]
    message = await client.messages.create(**body)
    assert text_of(message) in SENTIMENT


async def test_answers_are_deterministic(client: anthropic.AsyncAnthropic) -> None:
    text = "The strap on this watch is comfortable but the screen scratches easily."
    first, second = await create(client, text), await create(client, text)
    assert answer(first) == answer(second)
    assert first.usage == second.usage
    assert classify(7, HAIKU, text, SENTIMENT) == classify(7, HAIKU, text, SENTIMENT)
    # The seed matters: over many texts, two seeds must disagree somewhere.
    texts = [s.text for s in SAMPLES if s.task == "sentiment"]
    assert any(classify(7, HAIKU, t, SENTIMENT) != classify(8, HAIKU, t, SENTIMENT) for t in texts)


# --- errors ---------------------------------------------------------------------------------------

ERRORS = [
    ("429", anthropic.RateLimitError, 429, "rate_limit_error"),
    ("529", anthropic.OverloadedError, 529, "overloaded_error"),
    ("500", anthropic.InternalServerError, 500, "api_error"),
    ("503", anthropic.ServiceUnavailableError, 503, "api_error"),
    ("400", anthropic.BadRequestError, 400, "invalid_request_error"),
    ("401", anthropic.AuthenticationError, 401, "authentication_error"),
]


@pytest.mark.parametrize(("token", "exception", "status", "error_type"), ERRORS)
async def test_error_behaviours_raise_sdk_errors(
    client: anthropic.AsyncAnthropic,
    sim: Simulator,
    token: str,
    exception: type[anthropic.APIStatusError],
    status: int,
    error_type: str,
) -> None:
    with pytest.raises(exception) as caught:
        await create(client, f"{{{{sim:cheap={token}}}}} The kettle is fine.")
    error = caught.value
    assert error.status_code == status
    assert error.request_id is not None
    assert error.request_id.startswith("req_sim_")
    body = ErrorResponse.model_validate(error.body)
    assert body.type == "error"
    assert body.error.type == error_type
    assert body.request_id == error.request_id
    assert error.response.headers["anthropic-ratelimit-requests-limit"]
    if status == 429:
        assert error.response.headers["retry-after"] == "1"
    else:
        assert "retry-after" not in error.response.headers
    [call] = sim.calls
    assert (call.status, call.behaviour) == (status, token)


async def test_retry_after_variants(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as short:
        await create(client, "{{sim:cheap=429:0.05}} short wait")
    assert short.value.response.headers["retry-after"] == "0.05"
    with pytest.raises(anthropic.RateLimitError) as capped:
        await create(client, "{{sim:cheap=429nora}} a monthly cap")
    assert "retry-after" not in capped.value.response.headers
    assert ErrorResponse.model_validate(capped.value.body).error.type == "rate_limit_error"


async def test_unknown_model_is_not_found(client: anthropic.AsyncAnthropic, sim: Simulator) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await create(client, "hello", model="claude-haiku-9")
    assert ErrorResponse.model_validate(caught.value.body).error.type == "not_found_error"
    assert sim.calls[0].status == 404


async def test_missing_api_key_is_401(sim: Simulator, client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await client.messages.create(**request("hello"), extra_headers={"Authorization": anthropic.Omit()})
    assert ErrorResponse.model_validate(caught.value.body).error.type == "authentication_error"
    async with httpx2.AsyncClient(base_url=sim.url) as http:
        bare = await http.post("/v1/messages", json=request("hello"))
        empty = await http.post("/v1/messages", json=request("hello"), headers={"authorization": "Bearer"})
        keyed = await http.post("/v1/messages", json=request("hello"), headers={"x-api-key": "k"})
    assert bare.status_code == empty.status_code == 401
    assert keyed.status_code == 200


async def test_sampling_parameters_are_rejected(client: anthropic.AsyncAnthropic) -> None:
    for name, value in (("temperature", 0.0), ("top_p", 0.9), ("top_k", 5)):
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(**request("hello"), extra_body={name: value})
        assert ErrorResponse.model_validate(caught.value.body).error.type == "invalid_request_error"


async def test_invalid_bodies_are_400(sim: Simulator) -> None:
    async with httpx2.AsyncClient(base_url=sim.url, headers={"x-api-key": "test"}) as http:
        broken = await http.post("/v1/messages", content=b"{not json")
        no_max_tokens = await http.post("/v1/messages", json={"model": HAIKU, "messages": []})
        no_messages = await http.post("/v1/messages", json={"model": HAIKU, "max_tokens": 5})
        bad_directive = await http.post("/v1/messages", json=request("{{sim:cheap=explode}} hi"))
        unknown_path = await http.get("/v1/models")
    for response in (broken, no_max_tokens, no_messages, bad_directive):
        assert response.status_code == 400
        assert ErrorResponse.model_validate(response.json()).error.type == "invalid_request_error"
        assert response.headers["request-id"].startswith("req_sim_")
    assert unknown_path.status_code == 404


async def test_drop_aborts_the_connection(client: anthropic.AsyncAnthropic, sim: Simulator) -> None:
    with pytest.raises(anthropic.APIConnectionError) as caught:
        await create(client, "{{sim:cheap=drop}} gone")
    assert not isinstance(caught.value, anthropic.APITimeoutError)
    [call] = sim.calls
    assert (call.status, call.behaviour, call.request_id) == (0, "drop", None)
    # The simulator keeps serving on new connections.
    assert answer(await create(client, "{{sim:cheap=drop}} gone"))["label"] in SENTIMENT


async def test_slow_times_out(client: anthropic.AsyncAnthropic) -> None:
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        await client.with_options(timeout=0.5).messages.create(**request("{{sim:cheap=slow:5}} patience"))
    assert time.monotonic() - started < 3


async def test_slow_answers_after_the_delay(client: anthropic.AsyncAnthropic) -> None:
    started = time.monotonic()
    message = await create(client, "{{sim:cheap=slow:0.3}} patience")
    assert time.monotonic() - started >= 0.3
    assert answer(message)["label"] in SENTIMENT


# --- odd successes ----------------------------------------------------------------------------------


async def test_malformed_is_broken_json_and_billed(client: anthropic.AsyncAnthropic) -> None:
    message = await create(client, "{{sim:cheap=malformed}} broken")
    assert message.stop_reason == "end_turn"
    with pytest.raises(json.JSONDecodeError):
        json.loads(text_of(message))
    assert text_of(message).startswith('{"label": ')
    assert message.usage.output_tokens > 0


async def test_refusal(client: anthropic.AsyncAnthropic) -> None:
    message = await create(client, "{{sim:cheap=refusal}} refused")
    assert message.stop_reason == "refusal"
    assert message.usage.output_tokens > 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(text_of(message))


async def test_max_tokens_is_truncated(client: anthropic.AsyncAnthropic) -> None:
    message = await create(client, "{{sim:cheap=max_tokens}} cut short")
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 64
    with pytest.raises(json.JSONDecodeError):
        json.loads(text_of(message))


async def test_thinking_block_comes_first(client: anthropic.AsyncAnthropic) -> None:
    plain = await create(client, "thoughtful")
    message = await create(client, "{{sim:cheap=thinking}} thoughtful")
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert answer(message)["label"] in SENTIMENT
    assert message.usage.output_tokens == plain.usage.output_tokens + 40


async def test_confidence_and_label_overrides(client: anthropic.AsyncAnthropic) -> None:
    assert answer(await create(client, "{{sim:cheap=conf=0.42}} a"))["confidence"] == 0.42
    assert answer(await create(client, "{{sim:cheap=conf=1.7}} b"))["confidence"] == 1.7
    assert answer(await create(client, "{{sim:cheap=conf=-0.2}} c"))["confidence"] == -0.2
    assert answer(await create(client, "{{sim:cheap=label=spam+conf=0.99}} d")) == {
        "label": "spam",
        "confidence": 0.99,
    }


async def test_directive_sequence_then_normal(client: anthropic.AsyncAnthropic, sim: Simulator) -> None:
    text = "{{sim:cheap=529,ok}} the sequence"
    with pytest.raises(anthropic.OverloadedError):
        await create(client, text)
    first = await create(client, text)
    second = await create(client, text)
    assert answer(first) == answer(second)
    assert [(c.behaviour, c.status) for c in sim.calls] == [("529", 529), ("ok", 200), ("ok", 200)]
    sim.reset()
    with pytest.raises(anthropic.OverloadedError):
        await create(client, text)


async def test_directive_groups_pick_the_family(client: anthropic.AsyncAnthropic) -> None:
    text = "{{sim:cheap=500}} families"
    assert answer(await create(client, text, model=SONNET))["label"] in SENTIMENT
    with pytest.raises(anthropic.InternalServerError):
        await create(client, text, model=HAIKU)
    both = "{{sim:all=503;strong=ok,529}} everyone"
    with pytest.raises(anthropic.ServiceUnavailableError):
        await create(client, both, model=HAIKU_55)
    assert answer(await create(client, both, model=SONNET_55))["label"] in SENTIMENT
    with pytest.raises(anthropic.OverloadedError):
        await create(client, both, model=SONNET_55)


def test_directive_grammar() -> None:
    plans = parse_directives("x {{sim:cheap=429:0.05,slow:2.5+label=spam;all=ok}} y")
    assert [b.spec for b in plans["cheap"]] == ["429:0.05", "slow:2.5+label=spam"]
    assert plans["cheap"][0].status == 429
    assert plans["cheap"][0].retry_after == "0.05"
    assert plans["cheap"][1].delay(30.0) == 2.5
    assert plans["cheap"][1].label == "spam"
    assert parse_behaviour("slow").delay(30.0) == 30.0
    assert parse_behaviour("429nora").no_retry_after
    for bad in ("{{sim:cheep=ok}}", "{{sim:cheap=teapot}}", "{{sim:cheap=418}}", "{{sim:cheap=conf=high}}"):
        with pytest.raises(ValueError, match=r"."):
            parse_directives(bad)


# --- Haiku 5.5 ----------------------------------------------------------------------------------------


async def test_haiku_55_thinks_unless_disabled(client: anthropic.AsyncAnthropic) -> None:
    text = SAMPLES[3].text
    thinking = await create(client, text, model=HAIKU_55)
    assert [block.type for block in thinking.content] == ["thinking", "text"]
    quiet = await create(client, text, model=HAIKU_55, thinking={"type": "disabled"})
    assert [block.type for block in quiet.content] == ["text"]
    assert thinking.usage.output_tokens == quiet.usage.output_tokens + 40
    starved = await create(client, text, model=HAIKU_55, max_tokens=30)
    assert starved.stop_reason == "max_tokens"
    assert starved.usage.output_tokens == 30
    assert not any(isinstance(block, TextBlock) for block in starved.content)


async def test_input_tokens_stay_under_the_byte_bound(client: anthropic.AsyncAnthropic) -> None:
    texts = ["", "a", "Ünïcödé ✓ 日本語のレビューです。" * 3, SAMPLES[0].text, "word " * 2000]
    for model in (HAIKU, HAIKU_55, SONNET_55):
        for text in texts:
            body = request(text, model=model)
            message = await client.messages.create(**body)
            sent = SYSTEM + user_content(text) + json.dumps(body["output_config"])
            assert message.usage.input_tokens <= len(sent.encode()) + 8
    long_text = "word " * 2000
    old = await create(client, long_text, model=HAIKU)
    new = await create(client, long_text, model=HAIKU_55)
    assert new.usage.input_tokens >= 1.29 * old.usage.input_tokens
    assert input_tokens(HAIKU_55, 0) <= 8


async def test_count_tokens_matches_messages(client: anthropic.AsyncAnthropic, sim: Simulator) -> None:
    body = request(SAMPLES[5].text, model=HAIKU_55)
    count = await client.messages.count_tokens(
        model=body["model"],
        system=body["system"],
        messages=body["messages"],
        output_config=body["output_config"],
    )
    message = await client.messages.create(**body)
    assert count.input_tokens == message.usage.input_tokens
    assert [call.endpoint for call in sim.calls] == ["count_tokens", "messages"]


async def test_calls_endpoint_summarises(client: anthropic.AsyncAnthropic, sim: Simulator) -> None:
    await create(client, "one")
    await create(client, "two", model=SONNET)
    with pytest.raises(anthropic.OverloadedError):
        await create(client, "{{sim:cheap=529}} three")
    async with httpx2.AsyncClient(base_url=sim.url) as http:
        summary = (await http.get("/_simulator/calls")).json()
    assert summary["total"] == 3
    assert summary["by_model"] == {HAIKU: 2, SONNET: 1}
    assert summary["by_behaviour"] == {"ok": 2, "529": 1}
