"""`cascade jobs ...`: a client of the jobs API over HTTP (httpx), with a live progress bar per stage."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

ENDED = ("done", "canceled")


class JobClientError(Exception):
    """The service answered with an error (its message is shown as is)."""


@dataclass(frozen=True)
class JobClient:
    url: str
    key: str
    timeout_s: float = 600.0

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url.rstrip("/"),
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
        )

    async def submit(
        self, path: Path, labels: Sequence[str], instructions: str | None, threshold: str | None
    ) -> dict[str, Any]:
        params: list[tuple[str, str | int | float | bool | None]] = [("labels", label) for label in labels]
        if instructions is not None:
            params.append(("instructions", instructions))
        if threshold is not None:
            params.append(("threshold", threshold))

        async def chunks() -> Any:
            with path.open("rb") as upload:
                while chunk := upload.read(1 << 20):
                    yield chunk

        size = (await asyncio.to_thread(path.stat)).st_size
        async with self._client() as client:
            response = await client.post(
                "/v1/jobs/jsonl",
                params=params,
                content=chunks(),
                headers={"Content-Type": "application/x-ndjson", "Content-Length": str(size)},
            )
        return _json(response)

    async def status(self, job_id: str) -> dict[str, Any]:
        async with self._client() as client:
            return _json(await client.get(f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        async with self._client() as client:
            return _json(await client.post(f"/v1/jobs/{job_id}/cancel"))

    async def results(self, job_id: str, out: Any) -> int:
        """Stream the results to `out` (a binary file); returns the number of lines."""
        lines = 0
        async with self._client() as client, client.stream("GET", f"/v1/jobs/{job_id}/results") as response:
            if response.status_code != 200:
                await response.aread()
                _json(response)
            async for chunk in response.aiter_bytes():
                out.write(chunk)
                lines += chunk.count(b"\n")
        return lines

    async def wait(self, job_id: str, console: Console, poll_s: float = 1.0) -> dict[str, Any]:
        """Show a progress bar per stage until the job ends; returns its final status."""
        with Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bars:
            status = await self.status(job_id)
            total = status["item_count"]
            cheap = bars.add_task("cheap model", total=total, detail="")
            strong = bars.add_task("strong model", total=0, detail="")
            while True:
                _draw(bars, cheap, strong, status)
                if status["status"] in ENDED:
                    return status
                await asyncio.sleep(poll_s)
                status = await self.status(job_id)


def _draw(bars: Progress, cheap: TaskID, strong: TaskID, status: dict[str, Any]) -> None:
    counts = status["counts"]
    total = counts["total"]
    # Past the cheap stage: everything not pending or in a batch at the cheap stage.
    cheap_done = total - counts["cheap"]["pending"] - counts["cheap"]["in_batch"]
    strong_open = counts["strong"]["pending"] + counts["strong"]["in_batch"]
    detail = f"{status['status']}  ${status['cost_usd']}"
    if status.get("status_detail"):
        detail += f"  ({status['status_detail']})"
    bars.update(cheap, completed=cheap_done, detail=detail)
    # The strong stage's total grows as items escalate; what it has finished is what is no longer open.
    escalated = counts["escalated"]
    bars.update(strong, total=escalated, completed=escalated - strong_open, detail="")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else response.text[:500]
        raise JobClientError(f"{response.status_code}: {message}")
    if not isinstance(body, dict):
        raise JobClientError(f"unexpected answer: {response.text[:200]}")
    return body


def summary(status: dict[str, Any]) -> str:
    counts = status["counts"]
    return (
        f"job {status['id']}: {status['status']}"
        + (f" ({status['status_detail']})" if status.get("status_detail") else "")
        + f"\n  items {counts['total']}: done {counts['done']}, failed {counts['failed']},"
        f" canceled {counts['canceled']}"
        f"\n  cheap stage: {counts['cheap']['pending']} pending, {counts['cheap']['in_batch']} in a batch"
        f"\n  strong stage: {counts['strong']['pending']} pending, {counts['strong']['in_batch']} in a batch"
        f"\n  cost ${status['cost_usd']}"
    )


def stdout_binary() -> Any:
    return sys.stdout.buffer
