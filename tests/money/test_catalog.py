"""The dated price catalog: which row applies, the cost arithmetic, and which models may be served."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from service.api.app import create_app
from service.core.errors import ConfigurationError
from service.core.settings import Settings
from service.money.catalog import Catalog, TokenUsage

HAIKU_45 = "claude-haiku-4-5-20251001"
SONNET_45 = "claude-sonnet-4-5-20250929"
SONNET_46 = "claude-sonnet-4-6"
SONNET_55 = "claude-sonnet-5-5"
HAIKU_55 = "claude-haiku-5-5"
SONNET_5 = "claude-sonnet-5"  # live upstream, but no price on record

PRICE_CHANGE = date(2026, 10, 7)
SONNET_45_RETIRES = date(2026, 11, 30)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


# --- which row applies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "cache_read"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), "0.20"),
        (datetime(2026, 10, 6, 23, 59, 59, tzinfo=UTC), "0.20"),
        (datetime(2026, 10, 7, 0, 0, tzinfo=UTC), "0.10"),
        (datetime(2026, 10, 7, 12, tzinfo=UTC), "0.10"),
        (datetime(2027, 6, 1, tzinfo=UTC), "0.10"),
    ],
)
def test_sonnet_55_cache_read_price_drops_on_2026_10_07(catalog: Catalog, when: datetime, cache_read: str) -> None:
    row = catalog.price(SONNET_55, when)
    assert row.cache_read == Decimal(cache_read)
    # Only the cache-read price changed.
    assert (row.input, row.cache_write_5m, row.cache_write_1h, row.output) == (
        Decimal("2.00"),
        Decimal("2.50"),
        Decimal("4.00"),
        Decimal("10.00"),
    )


def test_sonnet_55_rows_have_distinct_ids(catalog: Catalog) -> None:
    before = catalog.price(SONNET_55, at(date(2026, 10, 6)))
    after = catalog.price(SONNET_55, at(PRICE_CHANGE))
    assert before.id != after.id
    assert after.id == "claude-sonnet-5-5@2026-10-07"


def test_price_date_is_taken_in_utc(catalog: Catalog) -> None:
    # 01:00 in UTC+5 on the 7th is still the 6th in UTC: the old price applies.
    when = datetime(2026, 10, 7, 1, tzinfo=timezone(timedelta(hours=5)))
    assert catalog.price(SONNET_55, when).cache_read == Decimal("0.20")
    # 23:30 in UTC-5 on the 6th is already the 7th in UTC: the new price applies.
    late = datetime(2026, 10, 6, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert catalog.price(SONNET_55, late).cache_read == Decimal("0.10")


@pytest.mark.parametrize(
    ("prompt_tokens", "input_price", "output_price", "tier"),
    [
        (0, "0.10", "0.50", ""),
        (1_000, "0.10", "0.50", ""),
        (100_000, "0.10", "0.50", ""),  # exactly 100K is still the low tier
        (100_001, "0.50", "2.50", "/above-100k"),
        (900_000, "0.50", "2.50", "/above-100k"),
    ],
)
def test_haiku_55_long_context_tier_starts_above_100k_prompt_tokens(
    catalog: Catalog, prompt_tokens: int, input_price: str, output_price: str, tier: str
) -> None:
    row = catalog.price(HAIKU_55, at(date(2026, 11, 1)), prompt_tokens)
    assert row.input == Decimal(input_price)
    assert row.output == Decimal(output_price)
    assert row.id == f"claude-haiku-5-5@2026-10-07{tier}"


def test_haiku_55_has_no_price_before_it_was_listed(catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError, match="no price"):
        catalog.price(HAIKU_55, at(date(2026, 10, 6)))


def test_tiers_do_not_apply_to_models_without_one(catalog: Catalog) -> None:
    assert catalog.price(SONNET_46, at(date(2026, 11, 1)), 900_000).input == Decimal("3.00")


@pytest.mark.parametrize(("alias", "pinned"), [("claude-haiku-4-5", HAIKU_45), ("claude-sonnet-4-5", SONNET_45)])
def test_aliases_resolve_to_pinned_ids(catalog: Catalog, alias: str, pinned: str) -> None:
    assert catalog.model(alias).id == pinned
    assert catalog.price(alias, at(date(2026, 6, 1))).model == pinned
    assert catalog.price(alias, at(date(2026, 6, 1))).id.startswith(pinned + "@")


def test_a_listed_model_without_a_price_is_refused(catalog: Catalog) -> None:
    assert catalog.model(SONNET_5).name == "Claude Sonnet 5"
    with pytest.raises(ConfigurationError, match="no price on record"):
        catalog.check_servable(SONNET_5, date(2026, 11, 25))


@pytest.mark.parametrize("model_id", ["gpt-4o", "claude-haiku-4", "", "CLAUDE-HAIKU-4-5"])
def test_an_unknown_model_raises_configuration_error(catalog: Catalog, model_id: str) -> None:
    with pytest.raises(ConfigurationError, match="not in the catalog"):
        catalog.model(model_id)
    with pytest.raises(ConfigurationError):
        catalog.price(model_id, at(date(2026, 6, 1)))
    with pytest.raises(ConfigurationError):
        catalog.check_servable(model_id, date(2026, 6, 1))


# --- the arithmetic ------------------------------------------------------------------------------


EVERY_KIND = TokenUsage(input=1234, cache_write_5m=567, cache_write_1h=89, cache_read=1011, output=222)


def test_cost_matches_a_hand_computation_with_every_token_kind(catalog: Catalog) -> None:
    row = catalog.price(SONNET_46, at(date(2026, 6, 1)))
    # 1234 * 3.00 + 567 * 3.75 + 89 * 6.00 + 1011 * 0.30 + 222 * 15.00
    # = 3702 + 2126.25 + 534 + 303.30 + 3330 = 9995.55 per million tokens
    assert row.cost(EVERY_KIND) == Decimal("0.00999555")
    assert row.cost(EVERY_KIND, batch=True) == Decimal("0.004997775")


def test_cost_is_exact_where_floats_are_not(catalog: Catalog) -> None:
    row = catalog.price(HAIKU_55, at(date(2026, 11, 1)))
    # 3 * 0.10 + 0 ... would be 0.30000000000000004 in floats.
    cost = row.cost(TokenUsage(input=3))
    assert cost == Decimal("0.0000003")
    assert str(cost.normalize()) == "3E-7"
    # Haiku 5.5's sub-cent prices, every kind: 7*0.10 + 11*0.125 + 13*0.20 + 17*0.01 + 19*0.50 = 14.345
    usage = TokenUsage(input=7, cache_write_5m=11, cache_write_1h=13, cache_read=17, output=19)
    assert row.cost(usage) == Decimal("0.000014345")
    assert row.cost(usage, batch=True) == Decimal("0.0000071725")


@pytest.mark.parametrize(
    ("model", "day"),
    [(HAIKU_45, date(2026, 6, 1)), (SONNET_55, date(2026, 6, 1)), (SONNET_55, PRICE_CHANGE), (HAIKU_55, PRICE_CHANGE)],
)
def test_batch_halves_every_cost(catalog: Catalog, model: str, day: date) -> None:
    row = catalog.price(model, at(day))
    assert row.cost(EVERY_KIND, batch=True) * 2 == row.cost(EVERY_KIND)
    assert row.for_batch().worst_case(5000, 300) * 2 == row.worst_case(5000, 300)


def test_zero_usage_costs_nothing(catalog: Catalog) -> None:
    assert catalog.price(SONNET_55, at(PRICE_CHANGE)).cost(TokenUsage()) == 0


PLAIN_USAGES = [
    # (model, day, bound, max_tokens, usage): no cache writes, as when the request asks for no caching
    (HAIKU_45, date(2026, 6, 1), 400, 60, TokenUsage(input=400, output=60)),
    (HAIKU_45, date(2026, 6, 1), 400, 60, TokenUsage(input=1, cache_read=399, output=1)),
    (HAIKU_45, date(2026, 6, 1), 400, 60, TokenUsage(input=0, output=0)),
    (SONNET_45, date(2026, 6, 1), 10, 1, TokenUsage(input=10, output=1)),
    (SONNET_55, date(2026, 6, 1), 5000, 112, TokenUsage(input=3000, cache_read=2000, output=112)),
    (SONNET_55, PRICE_CHANGE, 5000, 112, TokenUsage(input=5000, output=112)),
    (HAIKU_55, PRICE_CHANGE, 100_000, 100, TokenUsage(input=100_000, output=100)),
    # The reservation is priced at the bound's tier; the actual prompt may fall in a cheaper one.
    (HAIKU_55, PRICE_CHANGE, 150_000, 100, TokenUsage(input=100_000, output=100)),
    (HAIKU_55, PRICE_CHANGE, 150_000, 100, TokenUsage(input=150_000, output=100)),
    (HAIKU_55, PRICE_CHANGE, 100_001, 100, TokenUsage(input=100_001, output=100)),
    (HAIKU_55, PRICE_CHANGE, 100_001, 100, TokenUsage(input=50_001, cache_read=50_000, output=100)),
]
CACHING_USAGES = [
    # Any mix of kinds, cache writes included.
    (HAIKU_45, date(2026, 6, 1), 400, 60, TokenUsage(cache_write_1h=400, output=60)),
    (HAIKU_45, date(2026, 6, 1), 400, 60, TokenUsage(cache_write_5m=200, cache_write_1h=200, output=60)),
    (SONNET_55, date(2026, 6, 1), 5000, 112, TokenUsage(**vars(EVERY_KIND) | {"output": 112})),
    (SONNET_55, PRICE_CHANGE, 5000, 112, TokenUsage(cache_write_1h=5000, output=112)),
    (SONNET_45, date(2026, 6, 1), 10, 1, TokenUsage(cache_write_1h=10, output=1)),
    (HAIKU_55, PRICE_CHANGE, 100_000, 100, TokenUsage(cache_write_1h=100_000, output=100)),
    (HAIKU_55, PRICE_CHANGE, 150_000, 100, TokenUsage(cache_write_1h=100_000, output=100)),
    (HAIKU_55, PRICE_CHANGE, 150_000, 100, TokenUsage(cache_write_1h=150_000, output=100)),
    *PLAIN_USAGES,
]


def assert_reservation_covers(
    catalog: Catalog, model: str, day: date, bound: int, max_tokens: int, usage: TokenUsage, **kwargs: str
) -> None:
    assert usage.prompt_tokens <= bound
    assert usage.output <= max_tokens
    when = at(day)
    reserve_row = catalog.price(model, when, bound)
    charge_row = catalog.price(model, when, usage.prompt_tokens)
    assert reserve_row.worst_case(bound, max_tokens, **kwargs) >= charge_row.cost(usage)
    assert reserve_row.for_batch().worst_case(bound, max_tokens, **kwargs) >= charge_row.for_batch().cost(usage)


@pytest.mark.parametrize(("model", "day", "bound", "max_tokens", "usage"), PLAIN_USAGES)
def test_worst_case_covers_any_usage_within_the_bounds(
    catalog: Catalog, model: str, day: date, bound: int, max_tokens: int, usage: TokenUsage
) -> None:
    assert_reservation_covers(catalog, model, day, bound, max_tokens, usage)


@pytest.mark.parametrize(("model", "day", "bound", "max_tokens", "usage"), CACHING_USAGES)
def test_worst_case_with_caching_covers_cache_writes_too(
    catalog: Catalog, model: str, day: date, bound: int, max_tokens: int, usage: TokenUsage
) -> None:
    assert_reservation_covers(catalog, model, day, bound, max_tokens, usage, cache_ttl="1h")


def test_worst_case_prices_prompt_tokens_at_input_or_with_caching_at_the_dearest_kind(catalog: Catalog) -> None:
    row = catalog.price(SONNET_46, at(date(2026, 6, 1)))
    assert row.worst_case(1000, 50) == row.cost(TokenUsage(input=1000, output=50)) == Decimal("0.00375")
    assert row.worst_case(1000, 50, cache_ttl="1h") == row.cost(TokenUsage(cache_write_1h=1000, output=50))
    assert row.worst_case(1000, 50, cache_ttl="1h") == Decimal("0.00675")  # 1000 * 6 + 50 * 15 = 6750 per million
    # Marked for five minutes, a prompt token costs at most a five-minute write: 1000 * 3.75 + 50 * 15.
    assert row.worst_case(1000, 50, cache_ttl="5m") == row.cost(TokenUsage(cache_write_5m=1000, output=50))
    assert row.worst_case(1000, 50, cache_ttl="5m") == Decimal("0.0045")


# --- which models may be served --------------------------------------------------------------------


@pytest.mark.parametrize("today", [SONNET_45_RETIRES, SONNET_45_RETIRES + timedelta(days=1), date(2027, 3, 1)])
@pytest.mark.parametrize("model_id", [SONNET_45, "claude-sonnet-4-5"])
def test_sonnet_45_is_refused_on_and_after_its_retirement(catalog: Catalog, model_id: str, today: date) -> None:
    with pytest.raises(ConfigurationError) as raised:
        catalog.check_servable(model_id, today)
    message = str(raised.value)
    assert "Claude Sonnet 4.5" in message
    assert SONNET_45 in message
    assert "retired on 2026-11-30" in message
    assert "configure another model" in message


@pytest.mark.parametrize("days_before", [1, 5, 29, 30])
def test_sonnet_45_warns_within_30_days_of_retirement(catalog: Catalog, days_before: int) -> None:
    warnings = catalog.check_servable(SONNET_45, SONNET_45_RETIRES - timedelta(days=days_before))
    assert len(warnings) == 1
    assert "Claude Sonnet 4.5" in warnings[0]
    assert "retires on 2026-11-30" in warnings[0]


@pytest.mark.parametrize("days_before", [31, 60, 400])
def test_sonnet_45_is_silent_earlier(catalog: Catalog, days_before: int) -> None:
    assert catalog.check_servable(SONNET_45, SONNET_45_RETIRES - timedelta(days=days_before)) == []


@pytest.mark.parametrize(
    "today", [date(2025, 6, 1), SONNET_45_RETIRES - timedelta(days=1), SONNET_45_RETIRES, date(2030, 1, 1)]
)
@pytest.mark.parametrize("model_id", [HAIKU_45, "claude-haiku-4-5"])
def test_haiku_45_is_always_silent(catalog: Catalog, model_id: str, today: date) -> None:
    assert catalog.check_servable(model_id, today) == []


def test_sonnet_55_and_haiku_55_are_servable_after_the_price_change(catalog: Catalog) -> None:
    assert catalog.check_servable(SONNET_55, PRICE_CHANGE) == []
    assert catalog.check_servable(HAIKU_55, PRICE_CHANGE) == []


def test_haiku_55_is_refused_before_it_has_a_price(catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError, match="no price"):
        catalog.check_servable(HAIKU_55, date(2026, 10, 6))


def test_sonnet_5_has_no_price_and_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError):
        catalog.check_servable(SONNET_5, date(2026, 11, 1))


@pytest.mark.parametrize(
    "overrides",
    [
        {"CASCADE_STRONG_MODEL": SONNET_5},
        {"CASCADE_CHEAP_MODEL": SONNET_5},
        {"CASCADE_CHEAP_MODEL": "not-a-model"},
    ],
)
def test_the_service_refuses_to_start_with_an_unservable_model(overrides: dict[str, str]) -> None:
    settings = Settings(_env_file=None, ANTHROPIC_API_KEY="test-key", **overrides)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError):
        create_app(settings, "postgresql+asyncpg://unused@127.0.0.1:1/unused")
