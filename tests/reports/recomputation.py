"""The reports recomputed independently from the raw rows (tests/reports/rows.py), and the API's answers,
canonicalised, compared with them bucket by bucket."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from service.core.settings import Settings
from service.money.catalog import Catalog, TokenUsage
from tests.harness import Service
from tests.reports.rows import (
    Row,
    Window,
    load,
    nearest_rank,
    ratio,
    request_key,
    requests_in,
    rounded,
    settled_in,
    task_of,
    time_keys,
)
from tests.reports.workload import Workload

TOKEN_KINDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
ESCALATION_RATIOS = ("escalation_rate", "cheap_mean_confidence", "changed_share")
COST_DECIMALS = (
    "cost_usd",
    "shadow_cost_usd",
    "eval_cost_usd",
    "cost_mean_usd",
    "cost_p50_usd",
    "cost_p95_usd",
    "all_strong_cost_usd",
    "savings_usd",
    "savings_pct",
)
MAX_BUCKETS = 200

Query = dict[str, str] | None


# --- expected reports --------------------------------------------------------------------------------------------


def escalation_figures(rows: list[Row]) -> Row:
    decided = [r for r in rows if r["escalated"] or (r["status"] == "ok" and not r["cache_hit"])]
    escalated = [r for r in rows if r["escalated"]]
    confidences = [Fraction(r["cheap_confidence"]) for r in rows if r["cheap_confidence"] is not None]
    compared = [r for r in escalated if r["status"] == "ok" and r["cheap_label"] is not None]
    changed = [r for r in compared if r["label"] != r["cheap_label"]]
    return {
        "requests": len(rows),
        "answered": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "refused": sum(r["status"] == "refused" for r in rows),
        "decided": len(decided),
        "escalated": len(escalated),
        "cache_hits": sum(bool(r["cache_hit"]) for r in rows),
        "escalation_rate": ratio(len(escalated), len(decided)),
        "reasons": dict(Counter(r["escalation_reason"] for r in escalated)),
        "cheap_answers": len(confidences),
        "cheap_mean_confidence": ratio(sum(confidences, Fraction(0)), len(confidences)),
        "compared": len(compared),
        "changed": len(changed),
        "changed_share": ratio(len(changed), len(compared)),
    }


def expected_escalations(
    requests: list[Row], window: Window, group_by: str, team: str | None
) -> tuple[dict[Any, Row], list[Any] | None, Row]:
    """(buckets by key, the key order for time buckets else None, totals)."""
    rows = [r for r in requests_in(requests, window, team) if r["status"] != "pending" and r["eval_run_id"] is None]
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        groups[request_key(group_by, row)].append(row)
    order = time_keys(group_by, window) if group_by in ("hour", "day") else None
    buckets = {
        key: {
            "key": key,
            **escalation_figures(groups.get(key, [])),
            "task": task_of(rows, key) if group_by == "task" else None,
        }
        for key in (order if order is not None else groups)
    }
    assert order is None or set(groups) <= set(order), "a row outside the window's buckets"
    return buckets, order, {"key": None, **escalation_figures(rows), "task": None}


def money(costs: list[Decimal], all_strong: Decimal | None, rows: list[Row] | None = None) -> Row:
    """Cost figures of requests (`rows`: their request rows, for the request-based buckets; None per model)."""
    total = sum(costs, Decimal(0))
    savings = None if all_strong is None else all_strong - total
    rows = rows or []
    return {
        "requests": len(costs),
        "cache_hits": sum(bool(r["cache_hit"]) for r in rows),
        "cost_usd": total,
        "shadow_cost_usd": sum((r["shadow_cost_usd"] for r in rows), Decimal(0)),
        "cost_mean_usd": ratio(total, len(costs), 10),
        "cost_p50_usd": nearest_rank(costs, 50),
        "cost_p95_usd": nearest_rank(costs, 95),
        "all_strong_cost_usd": all_strong,
        "savings_usd": savings,
        "savings_pct": None if all_strong is None or savings is None else ratio(100 * savings, all_strong, 2),
    }


def model_costs(attempts: Iterable[Row]) -> list[Row]:
    by_model: dict[str, list[Row]] = defaultdict(list)
    for a in attempts:
        by_model[a["model"]].append(a)
    return [
        {
            "model": model,
            "attempts": len(rows),
            "tokens": {kind: sum(a[f"{kind}_tokens"] or 0 for a in rows) for kind in TOKEN_KINDS},
            "cost_usd": sum((a["cost_usd"] for a in rows), Decimal(0)),
        }
        for model, rows in sorted(by_model.items())
    ]


def request_costs(rows: list[Row]) -> Row:
    mine = [r for r in rows if r["eval_run_id"] is None]  # evaluations are apart
    figures = money([r["cost_usd"] for r in mine], sum((r["all_strong_cost_usd"] for r in mine), Decimal(0)), rows)
    figures["eval_cost_usd"] = sum((r["cost_usd"] for r in rows if r["eval_run_id"] is not None), Decimal(0))
    return figures


def usage_of(a: Row) -> TokenUsage:
    return TokenUsage(**{kind: a[f"{kind}_tokens"] or 0 for kind in TOKEN_KINDS})


def break_even(cheap_attempts: list[Row], observed: Decimal | None, cheap: str, strong: str) -> Row:
    usage = TokenUsage(**{kind: sum(a[f"{kind}_tokens"] or 0 for a in cheap_attempts) for kind in TOKEN_KINDS})
    basis = "observed"
    if usage.prompt_tokens + usage.output == 0:
        usage, basis = TokenUsage(input=1000, output=50), "nominal"
    now = datetime.now(UTC)
    catalog = Catalog()
    cheap_cost = Fraction(catalog.price(cheap, now).cost(usage))
    strong_cost = Fraction(catalog.price(strong, now).cost(usage))
    return {
        "cheap_model": cheap,
        "strong_model": strong,
        "rate": rounded(1 - cheap_cost / strong_cost, 6),
        "basis": basis,
        "observed_rate": observed,
    }


def expected_costs(
    requests: list[Row], attempts: list[Row], window: Window, group_by: str, team: str | None, settings: Settings
) -> tuple[dict[Any, Row], list[Any] | None, Row, Row]:
    """(buckets by key, the key order for day buckets else None, totals, break_even)."""
    rows = requests_in(requests, window, team)
    settled = settled_in(attempts, window, team)
    buckets: dict[Any, Row] = {}
    order = None
    if group_by == "model":
        for model, of_model in itertools.groupby(sorted(settled, key=lambda a: a["model"]), key=lambda a: a["model"]):
            spent: dict[uuid.UUID, Decimal] = defaultdict(Decimal)
            calls = list(of_model)
            for a in calls:
                spent[a["request_id"]] += a["cost_usd"]
            buckets[model] = {
                "key": model,
                **money(list(spent.values()), None),
                "eval_cost_usd": Decimal(0),
                "models": model_costs(calls),
            }
    else:
        groups: dict[Any, list[Row]] = defaultdict(list)
        calls_of: dict[Any, list[Row]] = defaultdict(list)
        for row in rows:
            groups[request_key(group_by, row)].append(row)
        for a in settled:
            calls_of[request_key(group_by, a, "request_created_at")].append(a)
        assert set(calls_of) <= set(groups), "an attempt whose request is outside the window"
        order = time_keys(group_by, window) if group_by == "day" else None
        for key in order if order is not None else groups:
            buckets[key] = {"key": key, **request_costs(groups.get(key, [])), "models": model_costs(calls_of[key])}
    for key, bucket in buckets.items():
        bucket["task"] = task_of(rows, key) if group_by == "task" else None
    totals = {"key": None, **request_costs(rows), "models": model_costs(settled), "task": None}
    mine = [r for r in rows if r["eval_run_id"] is None]
    decided = sum(r["escalated"] or (r["status"] == "ok" and not r["cache_hit"]) for r in mine)
    observed = ratio(sum(r["escalated"] for r in mine), decided)
    cheap = [a for a in settled if a["stage"] == "cheap"]
    return buckets, order, totals, break_even(cheap, observed, settings.cheap_model, settings.strong_model)


# --- the API's answers, canonicalised ----------------------------------------------------------------------------


def dec(value: Any) -> Decimal | None:
    """A decimal string as the API writes it: normalized, no exponent, "0" for zero; or null."""
    if value is None:
        return None
    assert isinstance(value, str), f"a decimal is a string on the wire, not {value!r}"
    number = Decimal(value)
    assert value == ("0" if number == 0 else format(number.normalize(), "f")), f"not normalized: {value!r}"
    return number


def escalation_bucket(bucket: Row) -> Row:
    return {k: dec(v) if k in ESCALATION_RATIOS else v for k, v in bucket.items()}


def cost_bucket(bucket: Row) -> Row:
    out = {k: dec(v) if k in COST_DECIMALS else v for k, v in bucket.items()}
    out["models"] = [{**m, "cost_usd": dec(m["cost_usd"])} for m in bucket["models"]]
    return out


async def get_json(svc: Service, path: str, headers: dict[str, str], **params: Any) -> Any:
    response = await svc.client.get(path, params={k: v for k, v in params.items() if v is not None}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def check_buckets(got: list[Row], expected: dict[Any, Row], order: list[Any] | None) -> None:
    """Time buckets: exactly `order`. Others: the largest first, ties by the key shown, at most 200."""
    if order is not None:
        assert [b["key"] for b in got] == order
        for bucket in got:
            assert bucket == expected[bucket["key"]], bucket["key"]
        return
    keys = [b["key"] for b in got]
    assert len(keys) == len(set(keys)) == min(len(expected), MAX_BUCKETS)
    for bucket in got:
        assert bucket == expected[bucket["key"]], bucket["key"]
    sizes = [b["requests"] for b in got]
    assert sizes == sorted(sizes, reverse=True), keys
    for first, second in itertools.pairwise(got):
        if first["requests"] == second["requests"] and None not in (first["key"], second["key"]):
            assert first["key"] < second["key"], (first["key"], second["key"])
    dropped = [b for k, b in expected.items() if k not in set(keys)]
    if dropped:
        smallest = sizes[-1]
        assert all(b["requests"] <= smallest for b in dropped)
        last_kept = max((b["key"] for b in got if b["requests"] == smallest and b["key"] is not None), default="")
        assert all(b["key"] > last_kept for b in dropped if b["requests"] == smallest and b["key"] is not None)


async def check_escalations(
    w: Workload, window: Window, group_by: str, headers: dict[str, str], team: str | None, query: Query = None
) -> Row:
    report: Row = await get_json(
        w.svc, "/v1/reports/escalations", headers, group_by=group_by, **window.params(), **(query or {})
    )
    requests, _ = await load(w.svc.db)
    buckets, order, totals = expected_escalations(requests, window, group_by, team)
    assert (report["group_by"], report["team"]) == (group_by, team)
    assert (datetime.fromisoformat(report["start"]), datetime.fromisoformat(report["end"])) == (
        window.start,
        window.end,
    )
    check_buckets([escalation_bucket(b) for b in report["buckets"]], buckets, order)
    assert escalation_bucket(report["totals"]) == totals
    assert report["truncated"] is (len(buckets) > MAX_BUCKETS and order is None)
    return report


async def check_costs(
    w: Workload, window: Window, group_by: str, headers: dict[str, str], team: str | None, query: Query = None
) -> Row:
    report: Row = await get_json(
        w.svc, "/v1/reports/costs", headers, group_by=group_by, **window.params(), **(query or {})
    )
    requests, attempts = await load(w.svc.db)
    buckets, order, totals, expected_break_even = expected_costs(
        requests, attempts, window, group_by, team, w.svc.settings
    )
    assert (report["group_by"], report["team"]) == (group_by, team)
    assert (datetime.fromisoformat(report["start"]), datetime.fromisoformat(report["end"])) == (
        window.start,
        window.end,
    )
    check_buckets([cost_bucket(b) for b in report["buckets"]], buckets, order)
    assert cost_bucket(report["totals"]) == totals
    got_break_even = report["break_even"]
    assert {
        **got_break_even,
        "rate": dec(got_break_even["rate"]),
        "observed_rate": dec(got_break_even["observed_rate"]),
    } == expected_break_even
    observed = expected_break_even["observed_rate"]
    past = observed is not None and observed > expected_break_even["rate"]
    assert len(report["warnings"]) == int(past), report["warnings"]
    assert all(isinstance(x, str) and x for x in report["warnings"])
    assert report["truncated"] is (len(buckets) > MAX_BUCKETS and order is None)
    return report
