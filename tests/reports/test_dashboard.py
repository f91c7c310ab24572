"""The dashboard in a real headless Chromium, against a seeded database and the running service."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ADMIN, ADMIN_KEY, Service, settled

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = os.environ.get("CASCADE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()

CHARTS = ("chart-escalation", "chart-caps", "chart-cost", "chart-confidence")

# What each chart plotted, and whether its canvas has any painted pixel.
CHART_STATE = """(id) => {
  const canvas = document.getElementById(id);
  const chart = Chart.getChart(canvas);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  const points = chart.data.datasets.map(d => d.data.filter(v => v !== null && v > 0).length);
  return {points: points.reduce((a, b) => a + b, 0), painted};
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium; skipped on a machine without it, unless CASCADE_REQUIRE_BROWSER is set (as in CI)."""
    if not HAVE_CHROMIUM and not os.environ.get("CASCADE_REQUIRE_BROWSER"):
        pytest.skip("no Chromium (apt-get install chromium; .ci/run installs it)")
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def seed(service: Service) -> tuple[list[str], list[str]]:
    """A mixed workload for team-a and a little for team-b; returns each team's request ids."""
    texts = [
        "I love it",
        "terrible service",
        "it is fine I guess",
        "{{sim:cheap=conf=0.3}} hmm",
        "{{sim:cheap=label=negative,conf=0.5;strong=label=positive}} mixed",
        "{{sim:cheap=malformed}} garbled",
        "{{sim:cheap=refusal}} no",
        "great value",
    ]
    a_ids = []
    for text in texts * 2:
        response = await service.classify(text)
        assert response.status_code == 200, response.text
        a_ids.append(response.json()["id"])
    b_key = await service.new_key("team-b")
    b_ids = []
    for text in ["team b text", "{{sim:cheap=conf=0.1}} team b low"]:
        response = await service.client.post(
            "/v1/classify",
            json={"text": text, "labels": ["x", "y"]},
            headers={"Authorization": f"Bearer {b_key}"},
        )
        assert response.status_code == 200, response.text
        b_ids.append(response.json()["id"])
    return a_ids, b_ids


async def sign_in(page: Any, base: str, key: str) -> None:
    await page.goto(f"{base}/dashboard")
    await page.fill("#key", key)
    await page.click("#sign-in")
    await page.wait_for_selector("#chart-escalation")


async def test_a_team_sees_its_charts_and_audits_a_request(
    admin_service: Service, browser: Any, tmp_path: Path
) -> None:
    a_ids, b_ids = await seed(admin_service)
    base = str(admin_service.client.base_url).rstrip("/")
    page = await browser.new_page(viewport={"width": 1400, "height": 1800})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    await sign_in(page, base, admin_service.key)
    for chart in CHARTS:
        state = await page.evaluate(CHART_STATE, chart)
        assert state["points"] > 0, f"{chart} plotted no data"
        assert state["painted"] > 0, f"{chart} painted nothing"
    assert await page.inner_text("#tile-requests") == str(len(a_ids))
    shot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Only the team's own requests are listed, and nothing was fetched from anywhere but the service.
    links = await page.eval_on_selector_all("a.audit-link", "els => els.map(e => e.getAttribute('href'))")
    listed = {href.rsplit("/", 1)[1] for href in links}
    assert listed and listed <= set(a_ids) and not listed & set(b_ids)
    assert requested and all(url.startswith(base) for url in requested), requested
    assert errors == []

    await page.click("a.audit-link >> nth=0")
    await page.wait_for_selector("#request-id")
    audited = await page.inner_text("#request-id")
    assert page.url == f"{base}/dashboard/requests/{audited}" and audited in a_ids
    ledger = await admin_service.attempts(audited)
    assert await page.locator("#attempts tbody tr").count() == len(ledger) > 0
    row = await admin_service.request_row(audited)
    assert await page.inner_text("#request-cost") == f"${row.cost_usd:,.10f}"

    # Another team's request is a 404 page, not a leak.
    response = await page.goto(f"{base}/dashboard/requests/{b_ids[0]}")
    assert response is not None and response.status == 404
    assert b_ids[0] in await page.inner_text(".error")


async def test_the_admin_sees_every_team_and_can_narrow_to_one(admin_service: Service, browser: Any) -> None:
    a_ids, b_ids = await seed(admin_service)
    base = str(admin_service.client.base_url).rstrip("/")
    page = await browser.new_page()
    await sign_in(page, base, ADMIN_KEY)
    assert await page.inner_text("#tile-requests") == str(len(a_ids) + len(b_ids))
    links = await page.eval_on_selector_all("a.audit-link", "els => els.map(e => e.getAttribute('href'))")
    listed = {href.rsplit("/", 1)[1] for href in links}
    assert set(b_ids) <= listed

    await page.goto(f"{base}/dashboard?days=7&team=team-b")
    assert await page.inner_text("#tile-requests") == str(len(b_ids))
    await page.goto(f"{base}/dashboard/requests/{b_ids[0]}")
    assert await page.inner_text("#request-id") == b_ids[0]


async def test_sessions_end_with_sign_out_a_revoked_key_or_a_bad_key(admin_service: Service, browser: Any) -> None:
    base = str(admin_service.client.base_url).rstrip("/")
    page = await browser.new_page()
    await page.goto(f"{base}/dashboard")
    await page.fill("#key", "csk_not-a-key")
    await page.click("#sign-in")
    assert "not valid" in await page.inner_text(".error")

    await sign_in(page, base, admin_service.key)
    await page.click("text=Sign out")
    await page.wait_for_selector("#key")

    key = await admin_service.new_key("team-c")
    await sign_in(page, base, key)
    listing = await admin_service.client.get("/v1/admin/teams/team-c/keys", headers=ADMIN)
    key_id = listing.json()[0]["id"]
    revoked = await admin_service.client.delete(f"/v1/admin/teams/team-c/keys/{key_id}", headers=ADMIN)
    assert revoked.status_code == 204
    await page.goto(f"{base}/dashboard")
    assert await page.locator("#key").count() == 1, "a revoked key's session must end at once"


async def test_a_forged_or_garbled_cookie_is_the_sign_in_page(admin_service: Service) -> None:
    for value in ["x.\u00e9", "e30.deadbeef", "not-a-session", "\u00ff" * 40 + ".00"]:
        response = await admin_service.client.get(
            "/dashboard", headers={"cookie": f"cascade_session={value}".encode("latin-1")}
        )
        assert response.status_code == 200 and 'id="key"' in response.text, value


async def test_sign_in_from_another_site_is_refused(admin_service: Service) -> None:
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "https://evil.example"}):
        response = await admin_service.client.post("/dashboard/login", data={"key": admin_service.key}, headers=headers)
        assert response.status_code == 403 and "set-cookie" not in response.headers
    same = await admin_service.client.post(
        "/dashboard/login", data={"key": admin_service.key}, headers={"sec-fetch-site": "same-origin"}
    )
    assert same.status_code == 303 and "cascade_session=" in same.headers["set-cookie"]
    attributes = same.headers["set-cookie"].lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/dashboard" in attributes


async def test_a_bad_query_string_on_a_page_is_an_html_page(admin_service: Service) -> None:
    response = await admin_service.client.get("/dashboard", params={"days": "0"})
    assert response.status_code == 400 and response.headers["content-type"].startswith("text/html")
    assert "Invalid request" in response.text


async def test_a_task_page_draws_its_reliability_diagram(service: Service, browser: Any) -> None:
    put = await service.client.put(
        "/v1/tasks/reviews",
        json={"labels": ["positive", "negative", "neutral"], "shadow_rate": 1, "cache_ttl_s": 0},
        headers=service.auth,
    )
    assert put.status_code == 201, put.text
    for i, confidence in enumerate([0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 0.99, 0.92]):
        body = {"text": f"Review {i} {{{{sim:cheap=conf={confidence}}}}}", "task": "reviews"}
        assert (await service.client.post("/v1/classify", json=body, headers=service.auth)).status_code == 200
    await settled(service)
    base = str(service.client.base_url).rstrip("/")
    page = await browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await sign_in(page, base, service.key)
    await page.click("a.task-link")
    await page.wait_for_selector("#chart-reliability")
    assert await page.inner_text("#task-name") == "reviews@1"
    assert await page.inner_text("#task-requests") == "8"
    state = await page.evaluate(CHART_STATE, "chart-reliability")
    assert state["points"] > 0 and state["painted"] > 0
    assert "shadow pairs" in await page.inner_text("#task-accuracy")
    assert await page.locator("#thresholds tbody tr").count() == 2
    assert errors == []
