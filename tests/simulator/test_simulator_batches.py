"""The simulator's Message Batches API, through the real SDK over loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from service.cascade.prompt import Task, build_request
from service.money.catalog import Catalog
from service.simulator import Simulator, SimulatorConfig

HAIKU = Catalog().model("claude-haiku-4-5-20251001")
TASK = Task(("spam", "ham"))


def params(text: str) -> dict[str, Any]:
    return dict(build_request(HAIKU, TASK, text).body)


@pytest.fixture
async def slow_sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(batch_processing_s=0.6)) as simulator:
        yield simulator


def client(sim: Simulator) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sim", base_url=sim.url, max_retries=0)


async def test_a_batch_answers_each_request_once_and_its_results_join_on_custom_id(sim: Simulator) -> None:
    requests = [
        {"custom_id": "ok-1", "params": params("Win a free cruise now!")},
        {"custom_id": "ok-2", "params": params("Lunch at noon?")},
        {"custom_id": "bad", "params": params("Lunch at one? {{sim:cheap=400}}")},
        {"custom_id": "gone", "params": params("Lunch at two? {{sim:cheap=drop}}")},
    ]
    api = client(sim)
    batch = await api.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.processing_status == "ended"  # no processing time configured
    fetched = await api.messages.batches.retrieve(batch.id)
    counts = fetched.request_counts
    assert (counts.succeeded, counts.errored, counts.expired, counts.canceled, counts.processing) == (2, 1, 1, 0, 0)
    results = {entry.custom_id: entry.result async for entry in await api.messages.batches.results(batch.id)}
    assert set(results) == {"ok-1", "ok-2", "bad", "gone"}
    assert results["ok-1"].type == "succeeded" and results["ok-1"].message.usage.input_tokens > 0
    assert results["bad"].type == "errored" and results["bad"].error.error.type == "invalid_request_error"
    assert results["gone"].type == "expired"
    sent = [c.custom_id for c in sim.calls if c.endpoint == "batch"]
    assert sorted(sent) == ["bad", "gone", "ok-1", "ok-2"]  # each request sent exactly once
    listed = [b.id async for b in api.messages.batches.list()]
    assert listed == [batch.id]
    await api.close()


async def test_a_batch_in_progress_can_be_cancelled_and_then_deleted(slow_sim: Simulator) -> None:
    api = client(slow_sim)
    batch = await api.messages.batches.create(
        requests=[{"custom_id": f"r{n}", "params": params(f"Message {n}")} for n in range(3)]  # type: ignore[misc]
    )
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 3
    with pytest.raises(anthropic.AnthropicError, match="results_url"):  # the SDK waits for the batch to end
        await api.messages.batches.results(batch.id)
    with pytest.raises(anthropic.BadRequestError):  # and the simulator refuses to give them early
        await api.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)
    with pytest.raises(anthropic.BadRequestError):
        await api.messages.batches.delete(batch.id)

    cancelled = await api.messages.batches.cancel(batch.id)
    assert cancelled.processing_status == "ended" and cancelled.request_counts.canceled == 3
    results = [entry.result.type async for entry in await api.messages.batches.results(batch.id)]
    assert results == ["canceled"] * 3
    await api.messages.batches.delete(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        await api.messages.batches.retrieve(batch.id)
    await api.close()


async def test_a_batch_ends_after_its_processing_time(slow_sim: Simulator) -> None:
    api = client(slow_sim)
    batch = await api.messages.batches.create(requests=[{"custom_id": "a", "params": params("Hello")}])  # type: ignore[list-item]
    await asyncio.sleep(0.7)
    ended = await api.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 1
    assert ended.results_url is not None and ended.results_url.startswith(slow_sim.url)
    await api.close()


async def test_expiries_and_bad_batches() -> None:
    async with Simulator(SimulatorConfig(batch_expire_rate=1.0)) as sim:
        api = client(sim)
        batch = await api.messages.batches.create(
            requests=[{"custom_id": f"r{n}", "params": params(f"Hi {n}")} for n in range(4)]  # type: ignore[misc]
        )
        assert batch.request_counts.expired == 4
        for bad in ([], [{"custom_id": "x", "params": params("a")}, {"custom_id": "x", "params": params("b")}]):
            with pytest.raises(anthropic.BadRequestError):
                await api.messages.batches.create(requests=bad)  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=sim.url) as keyless:
            assert (await keyless.get("/v1/messages/batches")).status_code == 401
        await api.close()
