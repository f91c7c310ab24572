"""A simulator of the test's own: keep-alive, configured latency and seeded random faults, and stopping it.

Each test starts its own Simulator with the configuration it is about, and talks to it over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx2
import pytest

from service.simulator import Simulator, SimulatorConfig
from tests.simulator.message_requests import create, request


async def test_keep_alive_reuses_one_connection() -> None:
    async with Simulator() as simulator, httpx2.AsyncClient(base_url=simulator.url) as http:
        for _ in range(3):
            response = await http.post("/v1/messages", json=request("keep alive"), headers={"x-api-key": "test"})
            assert response.status_code == 200
        assert len(simulator._connections) == 1
        assert len(simulator.calls) == 3


async def test_latency_is_applied() -> None:
    config = SimulatorConfig(latency_ms=150, latency_per_output_token_ms=1, latency_jitter_ms=20)
    async with Simulator(config) as simulator:
        api = anthropic.AsyncAnthropic(api_key="test", base_url=simulator.url, max_retries=0)
        started = time.monotonic()
        message = await create(api, "quick")
        elapsed = time.monotonic() - started
        await api.close()
    assert elapsed >= 0.15 + message.usage.output_tokens / 1000


async def test_random_faults_are_reproducible() -> None:
    async def statuses(seed: int) -> list[int]:
        config = SimulatorConfig(seed=seed, fault_rates={"529": 0.3, "500": 0.2})
        async with Simulator(config) as simulator, httpx2.AsyncClient(base_url=simulator.url) as http:
            for i in range(40):
                await http.post("/v1/messages", json=request(f"text {i}"), headers={"x-api-key": "k"})
            return [call.status for call in simulator.calls]

    first, again, other = await statuses(3), await statuses(3), await statuses(4)
    assert first == again
    assert first != other
    assert 5 <= first.count(529) <= 22
    assert 2 <= first.count(500) <= 16
    assert first.count(200) >= 10


def test_bad_fault_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown behaviour"):
        SimulatorConfig(fault_rates={"gremlins": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        SimulatorConfig(fault_rates={"529": 0.6, "500": 0.6})


async def test_stop_closes_open_connections() -> None:
    simulator = Simulator(SimulatorConfig(slow_seconds=30))
    await simulator.start()
    api = anthropic.AsyncAnthropic(api_key="test", base_url=simulator.url, max_retries=0)
    pending = asyncio.create_task(create(api, "{{sim:cheap=slow}} never answered"))
    await asyncio.sleep(0.2)
    await asyncio.wait_for(simulator.stop(), timeout=5)
    with pytest.raises(anthropic.APIConnectionError):
        await asyncio.wait_for(pending, timeout=5)
    await api.close()
