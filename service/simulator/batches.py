"""The Message Batches API of the simulator: create, retrieve, list, cancel, delete, and results as JSONL.

A batch's requests are answered when it is created (each is recorded as a call, `endpoint="batch"`, so a test
can see every request that was sent), and the answers are revealed once its processing time has passed. A
request that the Messages endpoint would have failed is `errored` (with that error), a dropped one `expired`,
and `batch_expire_rate` expires a share of the others. A batch cancelled while in progress ends with every
request `canceled`. Result lines come out in a shuffled order, as the real API's may.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_REQUESTS = 100_000


class BatchError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Batch:
    id: str
    created_at: datetime
    ends_at: float  # time.monotonic()
    results: dict[str, dict[str, Any]]  # custom_id -> result
    canceled: bool = False
    cancel_initiated_at: datetime | None = None
    ended_at: datetime | None = None
    order: list[str] = field(default_factory=list)

    def ended(self) -> bool:
        if self.ended_at is None and (self.canceled or time.monotonic() >= self.ends_at):
            self.ended_at = datetime.now(UTC)
        return self.ended_at is not None


# (custom_id, params) -> a result: {"type": "succeeded", "message": ...} or {"type": "errored", "error": ...} ...
Answer = Callable[[str, dict[str, Any]], dict[str, Any]]


class Batches:
    def __init__(self, processing_s: float, expire_rate: float, rng: random.Random) -> None:
        self.processing_s = processing_s
        self.expire_rate = expire_rate
        self.rng = rng
        self._batches: dict[str, Batch] = {}

    def create(self, payload: object, answer: Answer) -> Batch:
        requests = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(requests, list) or not 1 <= len(requests) <= MAX_REQUESTS:
            raise BatchError(400, f"requests: a list of 1 to {MAX_REQUESTS} requests is required")
        seen: set[str] = set()
        for entry in requests:
            custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 64:
                raise BatchError(400, "requests.custom_id: a string of 1 to 64 characters is required")
            if custom_id in seen:
                raise BatchError(400, f"requests.custom_id: {custom_id!r} is not unique")
            if not isinstance(entry.get("params"), dict):
                raise BatchError(400, f"requests.params of {custom_id!r} must be an object")
            seen.add(custom_id)
        results: dict[str, dict[str, Any]] = {}
        for entry in requests:
            result = answer(entry["custom_id"], entry["params"])
            if result["type"] == "succeeded" and self.rng.random() < self.expire_rate:
                result = {"type": "expired"}
            results[entry["custom_id"]] = result
        order = list(results)
        self.rng.shuffle(order)
        batch = Batch(
            id=f"msgbatch_sim_{uuid.uuid4().hex[:24]}",
            created_at=datetime.now(UTC),
            ends_at=time.monotonic() + self.processing_s,
            results=results,
            order=order,
        )
        self._batches[batch.id] = batch
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise BatchError(404, f"no batch {batch_id!r}")
        return batch

    def all(self) -> list[Batch]:
        return sorted(self._batches.values(), key=lambda b: b.created_at, reverse=True)

    def cancel(self, batch_id: str) -> Batch:
        batch = self.get(batch_id)
        if not batch.ended():
            batch.canceled = True
            batch.cancel_initiated_at = datetime.now(UTC)
            batch.results = {custom_id: {"type": "canceled"} for custom_id in batch.results}
            batch.ended()
        return batch

    def delete(self, batch_id: str) -> None:
        batch = self.get(batch_id)
        if not batch.ended():
            raise BatchError(400, "a batch must end before it can be deleted; cancel it first")
        del self._batches[batch_id]

    def results_jsonl(self, batch_id: str) -> bytes:
        batch = self.get(batch_id)
        if not batch.ended():
            raise BatchError(400, f"batch {batch_id!r} has not ended yet")
        lines = (json.dumps({"custom_id": c, "result": batch.results[c]}) for c in batch.order)
        return ("\n".join(lines) + "\n").encode()

    @staticmethod
    def view(batch: Batch, base_url: str) -> dict[str, Any]:
        """The batch as `GET /v1/messages/batches/{id}` shows it."""
        ended = batch.ended()
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for result in batch.results.values():
                counts[result["type"]] += 1
        else:
            counts["processing"] = len(batch.results)
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": iso(batch.created_at),
            "expires_at": iso(batch.created_at + timedelta(hours=24)),
            "ended_at": iso(batch.ended_at),
            "cancel_initiated_at": iso(batch.cancel_initiated_at),
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
