"""Escalation and cost reports: every figure checked against the raw rows.

A realistic workload (tests/reports/workload.py) goes through the real service (two teams, two tasks, two model
pairs, every escalation reason, failures after escalation, a cap refusal); some of its requests are then moved in
time with SQL, so that windows can start and end exactly on them. The expected reports are computed from the
`requests` and `attempts` rows with exact arithmetic (Fraction, half-even rounding; tests/reports/recomputation.py),
never with service.reports.service, and compared with the API's decimal strings. The request list and its exports
are test_request_list.py; the validation of the parameters, test_report_parameters.py.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction

from service.money.catalog import Catalog, TokenUsage
from tests.harness import ADMIN, SENTIMENT, Service
from tests.reports.listing import walk
from tests.reports.recomputation import check_costs, check_escalations, dec, get_json, usage_of
from tests.reports.rows import MICRO, Window, iso, load, requests_in, rounded
from tests.reports.workload import CASES, OTHER_CHEAP, OTHER_STRONG, SPAM, SPAM_INSTRUCTIONS, Workload, execute, move


async def check_counterfactual(workload: Workload) -> None:
    """Every request's all-strong figure: its cheap-stage attempts' tokens at its strong model's prices of the day."""
    requests, attempts = await load(workload.svc.db)
    catalog = Catalog()
    unknown = 0
    for request in requests:
        expected = Decimal(0)
        for a in attempts:
            if a["request_id"] != request["id"] or a["stage"] != "cheap":
                continue
            assert a["state"] == "settled"
            if a["input_tokens"] is None:  # tokens unknown: the strong model's worst case for the reservation
                unknown += 1
                price = catalog.price(request["strong_model"], a["reserved_at"], a["input_token_bound"])
                expected += price.worst_case(a["input_token_bound"], a["max_tokens"])
            else:
                usage = usage_of(a)
                expected += catalog.price(request["strong_model"], a["reserved_at"], usage.prompt_tokens).cost(usage)
        assert request["all_strong_cost_usd"] == expected, request["id"]
        assert request["cost_usd"] == sum((a["cost_usd"] for a in attempts if a["request_id"] == request["id"]), 0)
    assert unknown == 2, "the 504 and the garbage reply leave two cheap attempts with unknown tokens"
    strong_models = {r["strong_model"] for r in requests if r["all_strong_cost_usd"] > 0}
    assert strong_models == {workload.svc.settings.strong_model, OTHER_STRONG}
    refused = next(r for r in requests if r["status"] == "refused")
    assert (refused["cost_usd"], refused["all_strong_cost_usd"]) == (0, 0)
    assert not [a for a in attempts if a["request_id"] == refused["id"]]


async def test_escalation_report_and_windows_equal_the_rows_for_every_grouping_and_reader(workload: Workload) -> None:
    w, at = workload, workload.at
    whole = Window(at["T0"] - timedelta(hours=1), w.tomorrow)
    windows = [
        whole,
        Window(at["T1"], at["T4"]),
        Window(at["T2"], at["T4"]),
        Window(at["T3"], at["T4"]),
        Window(at["T1"], at["T2"]),
        Window(at["T4"], w.tomorrow),
    ]
    readers: list[tuple[dict[str, str], str | None, dict[str, str]]] = [
        (ADMIN, None, {}),
        (w.auth["team-a"], "team-a", {}),
        (w.auth["team-b"], "team-b", {}),
        (ADMIN, "team-b", {"team": "team-b"}),
    ]
    for window, (headers, team, extra) in itertools.product(windows, readers):
        if team is not None and window not in (whole, windows[2], windows[4]):
            continue
        for group_by in ("task", "model", "label"):
            await check_escalations(w, window, group_by, headers, team, extra)
    for headers, team, extra in readers:
        await check_escalations(w, whole, "day", headers, team, extra)
        await check_escalations(w, Window(at["T1"], at["T4"] + timedelta(hours=2)), "hour", headers, team, extra)
    for window in windows:
        report = await check_escalations(w, window, "team", ADMIN, None)
        assert {b["key"] for b in report["buckets"]} <= {"team-a", "team-b"}
    narrowed = await check_escalations(w, whole, "team", ADMIN, "team-a", {"team": "team-a"})
    assert [b["key"] for b in narrowed["buckets"]] == ["team-a"]

    # The whole workload, by label: every reason, a changed and an unchanged answer, pending left out.
    report = await check_escalations(w, whole, "label", ADMIN, None)
    totals = report["totals"]
    assert set(totals["reasons"]) == {"low_confidence", "invalid_answer", "refused", "truncated", "cheap_unavailable"}
    assert totals["failed"] == 3 and totals["refused"] == 1 and totals["requests"] == len(CASES) - 1
    assert 0 < totals["changed"] < totals["compared"]
    assert None in {b["key"] for b in report["buckets"]}, "failed and refused requests have no label"
    by_model = await check_escalations(w, whole, "model", ADMIN, None)
    assert {b["key"] for b in by_model["buckets"]} == {w.svc.settings.cheap_model, OTHER_CHEAP}
    by_task = await check_escalations(w, whole, "task", w.auth["team-b"], "team-b")
    assert sorted(b["task"]["labels"] for b in by_task["buckets"]) == sorted([SPAM, SENTIMENT])
    assert {b["task"]["instructions"] for b in by_task["buckets"]} == {None, SPAM_INSTRUCTIONS}
    await check_time_buckets(w)
    await check_windows(w)


async def check_time_buckets(workload: Workload) -> None:
    """Hour and day buckets: every one the window touches, in order, the quiet ones zero."""
    w, at = workload, workload.at
    day = at["T2"]
    hourly = await check_escalations(w, Window(at["T1"], day + timedelta(hours=3)), "hour", ADMIN, None)
    keys = [b["key"] for b in hourly["buckets"]]
    assert keys == [f"{(day + timedelta(hours=h)).strftime('%Y-%m-%dT%H')}:00:00Z" for h in range(-1, 3)]
    assert [b["requests"] for b in hourly["buckets"]] == [2, 5, 2, 0]  # T1 | T2 and T3 | T4 | nothing
    # An end one microsecond into an hour touches it; an end on the hour does not.
    touched = await check_escalations(w, Window(at["T3"], at["T4"] + MICRO), "hour", ADMIN, None)
    assert [b["requests"] for b in touched["buckets"]] == [2, 2]
    untouched = await check_escalations(w, Window(at["T3"], at["T4"]), "hour", ADMIN, None)
    assert [b["requests"] for b in untouched["buckets"]] == [2]

    daily = await check_escalations(w, Window(at["T1"], day + timedelta(days=1)), "day", ADMIN, None)
    assert [b["key"] for b in daily["buckets"]] == [(day - MICRO).date().isoformat(), day.date().isoformat()]
    assert [b["requests"] for b in daily["buckets"]] == [2, 7]
    ends_at_midnight = await check_escalations(w, Window(at["T1"], day), "day", ADMIN, None)
    assert [b["key"] for b in ends_at_midnight["buckets"]] == [(day - MICRO).date().isoformat()]
    quiet = await check_escalations(w, Window(day + timedelta(days=2), day + timedelta(days=5)), "day", ADMIN, None)
    assert [b["requests"] for b in quiet["buckets"]] == [0, 0, 0]
    assert all(b["escalation_rate"] is None and b["reasons"] == {} for b in quiet["buckets"])


async def test_counterfactual_and_cost_report_equal_the_rows_for_every_grouping_window_and_reader(
    workload: Workload,
) -> None:
    await check_counterfactual(workload)
    w, at = workload, workload.at
    whole = Window(at["T0"] - timedelta(hours=1), w.tomorrow)
    windows = [
        whole,
        Window(at["T1"], at["T4"]),
        Window(at["T2"], at["T4"]),
        Window(at["T4"], w.tomorrow),
        Window(at["T1"], at["T2"]),
    ]
    readers: list[tuple[dict[str, str], str | None, dict[str, str]]] = [
        (ADMIN, None, {}),
        (w.auth["team-a"], "team-a", {}),
        (w.auth["team-b"], "team-b", {}),
        (ADMIN, "team-a", {"team": "team-a"}),
    ]
    for window, (headers, team, extra) in itertools.product(windows, readers):
        for group_by in ("model", "task"):
            await check_costs(w, window, group_by, headers, team, extra)
    for window in windows:
        await check_costs(w, window, "team", ADMIN, None)
    # Day buckets over windows whose every day has requests: an empty day is
    # test_a_cost_bucket_without_requests_has_a_zero_counterfactual.
    for headers, team, extra in readers:
        await check_costs(w, Window(at["T1"], at["T4"] + MICRO), "day", headers, team, extra)
        await check_costs(w, Window(datetime.combine(w.today, time(), UTC), w.tomorrow), "day", headers, team, extra)

    report = await check_costs(w, whole, "model", ADMIN, None)
    models = {b["key"] for b in report["buckets"]}
    assert models == {w.svc.settings.cheap_model, w.svc.settings.strong_model, OTHER_CHEAP, OTHER_STRONG}
    assert all(b["all_strong_cost_usd"] is None and b["savings_usd"] is None for b in report["buckets"])
    assert report["totals"]["all_strong_cost_usd"] is not None
    assert report["break_even"]["basis"] == "observed"
    assert report["warnings"], "this workload escalates past the break-even rate"
    pending = next(r for r in (await load(w.svc.db))[0] if r["status"] == "pending")
    assert report["totals"]["requests"] == len(CASES), f"the pending request {pending['id']} counts in costs"

    # Only confident answers: an observed rate of 0, below the break-even rate, and no warning.
    calm = await check_costs(w, Window(at["T1"], at["T2"]), "task", ADMIN, None)
    assert dec(calm["break_even"]["observed_rate"]) == 0 and calm["warnings"] == []
    # Only a request refused by the cap: nothing decided, no cheap tokens, so the nominal token mix.
    refused = await check_costs(w, Window(at["T3"], at["T4"]), "task", w.auth["team-b"], "team-b")
    assert refused["break_even"]["basis"] == "nominal" and refused["break_even"]["observed_rate"] is None
    assert refused["totals"]["requests"] == 1 and refused["totals"]["savings_pct"] is None


async def check_windows(w: Workload) -> None:
    """Start inclusive, end exclusive, in any ISO 8601 spelling; the defaults."""
    at = w.at
    requests, _ = await load(w.svc.db)
    name_of = {uuid.UUID(v): k for k, v in w.ids.items()}

    def names(window: Window) -> set[str]:
        return {name_of[r["id"]] for r in requests_in(requests, window, None)}

    assert names(Window(at["T1"], at["T2"])) == {"a-confident", "b-confident"}
    assert names(Window(at["T2"], at["T3"])) == {"a-low-changed", "a-strong-down", "a2-changed"}
    assert names(Window(at["T3"], at["T4"])) == {"a-malformed", "b-refused"}
    for window in (Window(at["T1"], at["T2"]), Window(at["T2"], at["T3"]), Window(at["T3"], at["T4"])):
        esc = await check_escalations(w, window, "label", ADMIN, None)
        assert esc["totals"]["requests"] == len(names(window))
        cost = await check_costs(w, window, "task", ADMIN, None)
        assert cost["totals"]["requests"] == len(names(window))
        listed_ids = {item["id"] for item in await walk(w.svc, ADMIN, 100, **window.params())}
        assert {name_of[uuid.UUID(i)] for i in listed_ids} == names(window)

    # The same window written as a date, without an offset (UTC), with Z, and with another offset.
    day = at["T2"]
    canonical_report = await get_json(w.svc, "/v1/reports/escalations", ADMIN, start=iso(day), end=iso(at["T4"]))
    spellings = [
        (day.date().isoformat(), at["T4"].strftime("%Y-%m-%dT%H:%M:%S")),
        (day.strftime("%Y-%m-%dT%H:%M:%S"), iso(at["T4"])),
        ((day + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"), at["T4"].strftime("%Y-%m-%dT%H:%M:%S-00:00")),
        ((day - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%S.000000-05:00"), iso(at["T4"])),
    ]
    for start, end in spellings:
        assert await get_json(w.svc, "/v1/reports/escalations", ADMIN, start=start, end=end) == canonical_report
    # `T3` written with microseconds and an offset is still that instant, so it is in [T3, T4) and not in [T2, T3).
    t3 = (at["T3"] + timedelta(hours=-3)).strftime("%Y-%m-%dT%H:%M:%S.%f-03:00")
    late = await get_json(w.svc, "/v1/reports/escalations", ADMIN, start=t3, end=iso(at["T4"]))
    assert late["totals"]["requests"] == 2

    # Defaults: the reports cover the 7 days up to now, the list the last 30.
    for path in ("/v1/reports/escalations", "/v1/reports/costs"):
        report = await get_json(w.svc, path, w.auth["team-a"], group_by="task")
        default = Window(datetime.fromisoformat(report["start"]), datetime.fromisoformat(report["end"]))
        assert default.end - default.start == timedelta(days=7)
        assert abs(datetime.now(UTC) - default.end) < timedelta(minutes=1)
        if path.endswith("escalations"):
            await check_escalations(w, default, "task", w.auth["team-a"], "team-a")
        else:
            await check_costs(w, default, "task", w.auth["team-a"], "team-a")
        # Only the requests of the last 7 days; the pending one counts in costs only.
        recent = requests_in(requests, default, "team-a")
        assert report["totals"]["requests"] == len(recent) - path.endswith("escalations")
    default_list = {uuid.UUID(i["id"]) for i in await walk(w.svc, ADMIN, 1000)}
    assert default_list == {r["id"] for r in requests} - {uuid.UUID(w.ids["a-confident-2"])}, "T0 is 31 days old"
    only_end = await get_json(w.svc, "/v1/reports/escalations", ADMIN, end=iso(at["T4"]))
    assert datetime.fromisoformat(only_end["start"]) == at["T4"] - timedelta(days=7)


async def test_a_window_without_requests_reports_zeros_and_the_nominal_break_even(admin_service: Service) -> None:
    svc = admin_service
    assert (await svc.classify("Outside the window. {{sim:cheap=label=neutral+conf=0.9}}")).status_code == 200
    window = {"start": "2026-01-01", "end": "2026-01-02T00:00:00.000001"}
    for headers in (svc.auth, ADMIN):
        esc = await get_json(svc, "/v1/reports/escalations", headers, **window)
        assert [b["key"] for b in esc["buckets"]] == ["2026-01-01", "2026-01-02"]
        for bucket in [*esc["buckets"], esc["totals"]]:
            assert bucket["requests"] == bucket["decided"] == 0 and bucket["reasons"] == {}
            assert bucket["escalation_rate"] is bucket["cheap_mean_confidence"] is bucket["changed_share"] is None
        cost = await get_json(svc, "/v1/reports/costs", headers, group_by="task", **window)
        assert cost["buckets"] == [] and cost["warnings"] == [] and cost["truncated"] is False
        totals = cost["totals"]
        assert (totals["requests"], totals["cost_usd"], totals["models"]) == (0, "0", [])
        assert totals["cost_mean_usd"] is totals["cost_p50_usd"] is totals["cost_p95_usd"] is None
        assert totals["savings_pct"] is None
        catalog, now = Catalog(), datetime.now(UTC)
        nominal = TokenUsage(input=1000, output=50)
        cheap = Fraction(catalog.price(svc.settings.cheap_model, now).cost(nominal))
        strong = Fraction(catalog.price(svc.settings.strong_model, now).cost(nominal))
        assert cost["break_even"] == {
            "cheap_model": svc.settings.cheap_model,
            "strong_model": svc.settings.strong_model,
            "rate": format(rounded(1 - cheap / strong, 6).normalize(), "f"),
            "basis": "nominal",
            "observed_rate": None,
        }


# --- edges: empty buckets, ties -------------------------------------------------------------------------------


async def test_a_cost_bucket_without_requests_has_a_zero_counterfactual(admin_service: Service) -> None:
    svc = admin_service
    assert (await svc.classify("A quiet week. {{sim:cheap=label=neutral+conf=0.9}}")).status_code == 200
    today = datetime.now(UTC).date()
    report = await get_json(
        svc,
        "/v1/reports/costs",
        svc.auth,
        start=(today - timedelta(days=1)).isoformat(),
        end=(today + timedelta(days=1)).isoformat(),
    )
    empty_window = await get_json(svc, "/v1/reports/costs", svc.auth, start="2026-01-01", end="2026-01-02")
    for quiet in (report["buckets"][0], empty_window["buckets"][0], empty_window["totals"]):
        assert (quiet["requests"], quiet["cost_usd"], quiet["savings_pct"]) == (0, "0", None)
        assert (quiet["all_strong_cost_usd"], quiet["savings_usd"]) == ("0", "0")


async def test_teams_with_as_many_requests_are_ordered_by_name(admin_service: Service) -> None:
    svc = admin_service
    # Ids in the opposite order of the names, so the two orders differ whatever uuid4 would have drawn.
    await execute(
        svc.db,
        "INSERT INTO teams (id, name) VALUES (:low, 'zz-team'), (:high, 'aa-team')",
        low=uuid.UUID(int=1),
        high=uuid.UUID(int=2**128 - 1),
    )
    at = datetime.combine(datetime.now(UTC).date() - timedelta(days=3), time(12), UTC)
    for team in ("zz-team", "aa-team"):
        headers = {"Authorization": f"Bearer {await svc.new_key(team)}"}
        body = {"text": f"{team} says hello. {{{{sim:cheap=label=positive+conf=0.9}}}}", "labels": SENTIMENT}
        response = await svc.client.post("/v1/classify", json=body, headers=headers)
        assert response.status_code == 200, response.text
        await move(svc.db, response.json()["id"], at)
    window = Window(at, at + timedelta(hours=1)).params()
    for path in ("/v1/reports/escalations", "/v1/reports/costs"):
        report = await get_json(svc, path, ADMIN, group_by="team", **window)
        assert [(b["key"], b["requests"]) for b in report["buckets"]] == [("aa-team", 1), ("zz-team", 1)]
