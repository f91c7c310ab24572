"""Teams as the admin API tests make them: created and given keys by the operator over HTTP, and the tickets
they send with those keys."""

from __future__ import annotations

from typing import Any

import httpx

from tests.harness import ADMIN, SENTIMENT, Service


def ticket(n: int) -> str:
    """A text the cheap model answers confidently (no escalation); every n has the same length, so the same bound."""
    return f"{{{{sim:cheap=label=positive+conf=0.95}}}} Ticket {n:04d}: the blender arrived and works fine."


async def create_team(svc: Service, name: str, **caps_usd: str | None) -> dict[str, Any]:
    response = await svc.client.post("/v1/admin/teams", json={"name": name, **caps_usd}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def issue_key(svc: Service, team: str) -> dict[str, Any]:
    response = await svc.client.post(f"/v1/admin/teams/{team}/keys", headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def classify(svc: Service, key: str, text: str) -> httpx.Response:
    body = {"text": text, "labels": SENTIMENT}
    return await svc.client.post("/v1/classify", json=body, headers={"Authorization": f"Bearer {key}"})
