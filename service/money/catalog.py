"""The dated model and price catalog, and the cost arithmetic that uses it.

Prices are USD per million tokens. A price row applies from its `effective_from` date (UTC) until a later
row for the same model and tier replaces it; every ledger row stores the id and the values of the row it
was charged at, so a later price change never rewrites history.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from service.core.errors import ConfigurationError

logger = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
BATCH_DISCOUNT = Decimal("0.5")
RETIREMENT_WARNING_DAYS = 30


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    family: Literal["haiku", "sonnet"]
    context_tokens: int
    max_output_tokens: int
    retires_on: date | None = None
    # Haiku 5.5 thinks unless told not to; thinking tokens are billed as output and count toward max_tokens.
    thinks_by_default: bool = False
    aliases: tuple[str, ...] = ()
    # The shortest prompt prefix the API caches (shorter ones are sent, and billed, as plain input).
    min_cache_tokens: int = 1024


@dataclass(frozen=True)
class TokenUsage:
    input: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read


@dataclass(frozen=True)
class PriceRow:
    model: str
    effective_from: date
    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal
    # Long-context tier: the row applies to prompts of more than this many tokens.
    above_prompt_tokens: int = 0
    batch: bool = False  # the Message Batches rates: every price at BATCH_DISCOUNT

    @property
    def id(self) -> str:
        tier = f"/above-{self.above_prompt_tokens // 1000}k" if self.above_prompt_tokens else ""
        return f"{self.model}@{self.effective_from.isoformat()}{tier}{'/batch' if self.batch else ''}"

    def ledger_columns(self) -> dict[str, Any]:
        """The columns of a ledger row that keep the price it was charged at."""
        return {
            "price_id": self.id,
            "price_input": self.input,
            "price_cache_write_5m": self.cache_write_5m,
            "price_cache_write_1h": self.cache_write_1h,
            "price_cache_read": self.cache_read,
            "price_output": self.output,
        }

    def for_batch(self) -> PriceRow:
        """This row at the Message Batches rates. A ledger row stores these prices, so that its cost is its
        tokens times its own prices, batch or not."""
        if self.batch:
            return self
        return dataclasses.replace(
            self,
            input=self.input * BATCH_DISCOUNT,
            cache_write_5m=self.cache_write_5m * BATCH_DISCOUNT,
            cache_write_1h=self.cache_write_1h * BATCH_DISCOUNT,
            cache_read=self.cache_read * BATCH_DISCOUNT,
            output=self.output * BATCH_DISCOUNT,
            batch=True,
        )

    def cost(self, usage: TokenUsage, *, batch: bool = False) -> Decimal:
        total = (
            usage.input * self.input
            + usage.cache_write_5m * self.cache_write_5m
            + usage.cache_write_1h * self.cache_write_1h
            + usage.cache_read * self.cache_read
            + usage.output * self.output
        ) / MILLION
        return total * BATCH_DISCOUNT if batch else total

    def worst_case(self, input_tokens: int, max_output_tokens: int, *, cache_ttl: str | None = None) -> Decimal:
        """Most a call can cost: every output token billed, every prompt token at the input price.

        A prompt whose prefix is marked for caching (`cache_ttl` 5m or 1h) may instead be billed as a cache
        write at that duration's price, so the dearer of the two is used.
        """
        per_input = self.input
        if cache_ttl is not None:
            per_input = max(self.input, self.cache_write_1h if cache_ttl == "1h" else self.cache_write_5m)
        return (input_tokens * per_input + max_output_tokens * self.output) / MILLION


def _d(value: str) -> Decimal:
    return Decimal(value)


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "haiku",
        200_000,
        64_000,
        aliases=("claude-haiku-4-5",),
        min_cache_tokens=4096,
    ),
    ModelInfo(
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "sonnet",
        200_000,
        64_000,
        retires_on=date(2026, 11, 30),
        aliases=("claude-sonnet-4-5",),
    ),
    ModelInfo("claude-sonnet-4-6", "Claude Sonnet 4.6", "sonnet", 1_000_000, 128_000),
    ModelInfo("claude-sonnet-5", "Claude Sonnet 5", "sonnet", 1_000_000, 128_000),
    ModelInfo("claude-sonnet-5-5", "Claude Sonnet 5.5", "sonnet", 1_000_000, 128_000),
    # Not published for Haiku 5.5: taken as Haiku 4.5's (a prefix too short to cache costs nothing extra).
    ModelInfo(
        "claude-haiku-5-5",
        "Claude Haiku 5.5",
        "haiku",
        1_000_000,
        128_000,
        thinks_by_default=True,
        min_cache_tokens=4096,
    ),
)

# Claude Sonnet 5 is live but no price for it is on record here, so it is refused at start-up.
LISTED = date(2025, 1, 1)  # rows with no known start date apply from the catalog's first listing
PRICES: tuple[PriceRow, ...] = (
    PriceRow("claude-haiku-4-5-20251001", LISTED, _d("1.00"), _d("1.25"), _d("2.00"), _d("0.10"), _d("5.00")),
    PriceRow("claude-sonnet-4-5-20250929", LISTED, _d("3.00"), _d("3.75"), _d("6.00"), _d("0.30"), _d("15.00")),
    PriceRow("claude-sonnet-4-6", LISTED, _d("3.00"), _d("3.75"), _d("6.00"), _d("0.30"), _d("15.00")),
    PriceRow("claude-sonnet-5-5", LISTED, _d("2.00"), _d("2.50"), _d("4.00"), _d("0.20"), _d("10.00")),
    PriceRow("claude-sonnet-5-5", date(2026, 10, 7), _d("2.00"), _d("2.50"), _d("4.00"), _d("0.10"), _d("10.00")),
    PriceRow("claude-haiku-5-5", date(2026, 10, 7), _d("0.10"), _d("0.125"), _d("0.20"), _d("0.01"), _d("0.50")),
    # Above 100K prompt tokens only input and output prices are published; the cache kinds keep the same
    # multipliers of the input price (1.25x, 2x, 0.1x).
    PriceRow(
        "claude-haiku-5-5",
        date(2026, 10, 7),
        _d("0.50"),
        _d("0.625"),
        _d("1.00"),
        _d("0.05"),
        _d("2.50"),
        above_prompt_tokens=100_000,
    ),
)


class Catalog:
    def __init__(self, models: tuple[ModelInfo, ...] = MODELS, prices: tuple[PriceRow, ...] = PRICES) -> None:
        self._models = {m.id: m for m in models}
        self._aliases = {alias: m.id for m in models for alias in m.aliases}
        self._prices = prices

    def model(self, model_id: str) -> ModelInfo:
        canonical = self._aliases.get(model_id, model_id)
        try:
            return self._models[canonical]
        except KeyError:
            raise ConfigurationError(f"model {model_id!r} is not in the catalog") from None

    def price(self, model_id: str, at: datetime, prompt_tokens: int = 0) -> PriceRow:
        """The row in force for `model_id` on `at`'s UTC date, for a prompt of `prompt_tokens`."""
        model = self.model(model_id).id
        day = (at.astimezone(UTC) if at.tzinfo else at).date()
        rows = [
            p
            for p in self._prices
            if p.model == model
            and p.effective_from <= day
            and (p.above_prompt_tokens == 0 or prompt_tokens > p.above_prompt_tokens)
        ]
        if not rows:
            raise ConfigurationError(f"no price on record for {model_id!r} on {day.isoformat()}")
        return max(rows, key=lambda p: (p.above_prompt_tokens, p.effective_from))

    def check_servable(self, model_id: str, today: date) -> list[str]:
        """Refuse a retired or unpriced model; return warnings for one retiring within 30 days."""
        info = self.model(model_id)
        if info.id != model_id:
            logger.info("model alias %s resolves to the pinned id %s", model_id, info.id)
        if info.retires_on is not None and today >= info.retires_on:
            raise ConfigurationError(
                f"{info.name} ({info.id}) retired on {info.retires_on.isoformat()}; configure another model"
            )
        self.price(info.id, datetime.combine(today, datetime.min.time()))
        if info.retires_on is not None and (info.retires_on - today).days <= RETIREMENT_WARNING_DAYS:
            return [f"{info.name} ({info.id}) retires on {info.retires_on.isoformat()}: move off it before then"]
        return []
