"""Prompt caching: a named task's long prefix is marked, and its cache writes and reads are priced right.

Each cost below is computed by hand from the attempt's usage fields and the published per-million prices of
Claude Haiku 4.5 (input 1.00, 5-minute write 1.25, 1-hour write 2.00, read 0.10, output 5.00), not through
the service's catalog.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.tables import Attempt
from tests.harness import Service, assert_ledger_invariants, classify_task, put_task

HAIKU_45 = {"input": "1.00", "cache_write_5m": "1.25", "cache_write_1h": "2.00", "cache_read": "0.10", "output": "5.00"}
# About 6,600 tokens of examples: past Haiku 4.5's minimum cacheable prefix of 4,096 tokens.
EXAMPLES = [
    {"text": f"Example review number {i}: " + "the kettle boils fast and pours well. " * 12, "label": "positive"}
    for i in range(50)
]


def by_hand(a: Attempt) -> Decimal:
    tokens = {
        "input": a.input_tokens,
        "cache_write_5m": a.cache_write_5m_tokens,
        "cache_write_1h": a.cache_write_1h_tokens,
        "cache_read": a.cache_read_tokens,
        "output": a.output_tokens,
    }
    return sum((Decimal(n) * Decimal(HAIKU_45[kind]) for kind, n in tokens.items()), Decimal(0)) / 1_000_000


async def cheap_attempt(service: Service, body: dict[str, Any]) -> Attempt:
    attempts = [a for a in await service.attempts(body["id"]) if a.stage == "cheap"]
    assert len(attempts) == 1
    return attempts[0]


async def test_five_minute_writes_then_reads_are_priced_from_the_usage_fields(service: Service) -> None:
    await put_task(service, "long", examples=EXAMPLES, cache_ttl_s=0)
    first = (await classify_task(service, "Great kettle. {{sim:cheap=conf=0.99}}", "long")).json()
    written = await cheap_attempt(service, first)
    assert written.cache_write_5m_tokens > 4096 and written.cache_write_1h_tokens == 0
    assert written.cache_read_tokens == 0 and written.input_tokens > 0
    assert written.cost_usd == by_hand(written) == Decimal(first["cost_usd"])
    second = (await classify_task(service, "Awful kettle. {{sim:cheap=conf=0.99}}", "long")).json()
    read = await cheap_attempt(service, second)
    assert read.cache_read_tokens == written.cache_write_5m_tokens, "the same prefix, read back"
    assert read.cache_write_5m_tokens == read.cache_write_1h_tokens == 0
    assert read.cost_usd == by_hand(read) < written.cost_usd
    # The reservation covered the dearest case (every prompt token a five-minute write), so nothing overran.
    for a in (written, read):
        assert a.reserved_usd >= a.cost_usd
        assert (
            a.reserved_usd
            == (Decimal(a.input_token_bound) * Decimal("1.25") + Decimal(a.max_tokens) * Decimal("5.00")) / 1_000_000
        )
    await assert_ledger_invariants(service.db)


async def test_one_hour_writes_are_priced_at_twice_the_input_price(service: Service) -> None:
    await put_task(service, "long-1h", examples=EXAMPLES, prompt_cache="1h", cache_ttl_s=0)
    body = (await classify_task(service, "Great kettle. {{sim:cheap=conf=0.99}}", "long-1h")).json()
    written = await cheap_attempt(service, body)
    assert written.cache_write_1h_tokens > 4096 and written.cache_write_5m_tokens == 0
    assert written.cost_usd == by_hand(written)
    assert (
        written.reserved_usd
        == (Decimal(written.input_token_bound) * Decimal("2.00") + Decimal(written.max_tokens) * Decimal("5.00"))
        / 1_000_000
    )
    again = await cheap_attempt(service, (await classify_task(service, "Fine kettle.", "long-1h")).json())
    assert again.cache_read_tokens == written.cache_write_1h_tokens and again.cost_usd == by_hand(again)
    await assert_ledger_invariants(service.db)


async def test_a_short_prefix_is_not_marked_and_is_billed_as_plain_input(service: Service) -> None:
    await put_task(service, "short", examples=EXAMPLES[:2], cache_ttl_s=0)
    for text in ("Great kettle.", "Awful kettle."):
        attempt = await cheap_attempt(service, (await classify_task(service, text, "short")).json())
        assert attempt.cache_write_5m_tokens == attempt.cache_write_1h_tokens == attempt.cache_read_tokens == 0
        assert attempt.cost_usd == by_hand(attempt)
        # Not marked, so reserved at the plain input price.
        assert (
            attempt.reserved_usd
            == (Decimal(attempt.input_token_bound) * Decimal("1.00") + Decimal(attempt.max_tokens) * Decimal("5.00"))
            / 1_000_000
        )
