"""The one module that talks to the Anthropic SDK. It never retries: `service.cascade.retry` owns that."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import anthropic
import httpx2
from anthropic.types.messages import MessageBatch

from service.cascade.prompt import MessageRequest
from service.money.catalog import TokenUsage

logger = logging.getLogger(__name__)

# Statuses worth another attempt. A 429 without retry-after is a spend or tier cap: not retried.
_RETRYABLE_STATUS = {429, 500, 502, 503, 504, 529}
# Transport errors raised before any byte reached the API: nothing can have been billed.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)
# What a call can end in besides a reply: API errors, the overall timeout, and a body that cannot be read.
_READ_ERRORS = (anthropic.APIError, httpx2.HTTPError, TimeoutError, ValueError, TypeError, AttributeError)


@dataclass(frozen=True)
class UpstreamReply:
    text: str | None
    stop_reason: str | None
    usage: TokenUsage
    request_id: str | None
    latency_ms: int


class UpstreamFailure(Exception):
    """An attempt that produced no reply. `billed_unknown` means it may have reached the API anyway."""

    def __init__(
        self,
        outcome: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        billed_unknown: bool = False,
        latency_ms: int = 0,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.status = status
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.billed_unknown = billed_unknown
        self.latency_ms = latency_ms

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return True  # timeouts and connection errors
        if self.status == 429:
            return self.retry_after_s is not None
        return self.status in _RETRYABLE_STATUS


def retry_after(headers: httpx2.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date), if given."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _outcome_for(status: int) -> str:
    return {
        429: "rate_limited",
        529: "overloaded",
        400: "bad_request",
        401: "auth_error",
        403: "permission_error",
        404: "not_found",
        413: "too_large",
    }.get(status, "server_error" if status >= 500 else "client_error")


def _count(fields: dict[str, Any], name: str, *, required: bool = False, where: str = "usage") -> int:
    value = fields.get(name)
    if value is None and not required:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}.{name} is not a token count")
    return value


def read_message(body: object, cache_ttl: str | None = None) -> tuple[str | None, str | None, TokenUsage]:
    """The text, stop reason and usage of a Messages API body, read straight from its JSON.

    The SDK's typed `Message` costs a model construction per call on the hot path and checks nothing; this reads
    the three things the cascade needs and refuses (ValueError: the attempt is then charged its reservation) a
    body whose billing it cannot read in full: `input_tokens` and `output_tokens` must be counts, and a cache
    split, when given, must have both durations and add up to `cache_creation_input_tokens`.
    """
    if not isinstance(body, dict) or body.get("type") != "message" or not isinstance(body.get("content"), list):
        raise ValueError("not a Message")
    text = next(
        (
            block["text"]
            for block in body["content"]
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ),
        None,
    )
    stop_reason = body.get("stop_reason")
    usage = body.get("usage")
    if not isinstance(usage, dict) or (stop_reason is not None and not isinstance(stop_reason, str)):
        raise ValueError("a Message without usage or with a bad stop_reason")
    written = _count(usage, "cache_creation_input_tokens")
    split = usage.get("cache_creation")
    if split is None:
        # No split: the writes are of the duration the request marked (5 minutes, the API's default, otherwise).
        cw5m, cw1h = (0, written) if cache_ttl == "1h" else (written, 0)
    elif isinstance(split, dict):
        cw5m = _count(split, "ephemeral_5m_input_tokens", required=True, where="usage.cache_creation")
        cw1h = _count(split, "ephemeral_1h_input_tokens", required=True, where="usage.cache_creation")
        if cw5m + cw1h != written:
            raise ValueError("usage.cache_creation does not add up to cache_creation_input_tokens")
    else:
        raise ValueError("usage.cache_creation is not an object")
    return (
        text,
        stop_reason,
        TokenUsage(
            input=_count(usage, "input_tokens", required=True),
            cache_write_5m=cw5m,
            cache_write_1h=cw1h,
            cache_read=_count(usage, "cache_read_input_tokens"),
            output=_count(usage, "output_tokens", required=True),
        ),
    )


class Upstream:
    def __init__(self, api_key: str, base_url: str | None, pool_size: int) -> None:
        self._http = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0, http_client=self._http
        )

    async def create(self, request: MessageRequest, timeout_s: float) -> UpstreamReply:
        started = time.monotonic()
        body: dict[str, Any] = request.body
        try:
            # httpx timeouts are per phase (a trickling body resets the read timeout); this one is overall.
            async with asyncio.timeout(timeout_s):
                raw = await self._client.messages.with_raw_response.create(
                    **body, timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 5.0))
                )
                text, stop_reason, usage = read_message(raw.http_response.json(), request.cache_ttl)
        except _READ_ERRORS as exc:
            raise _failure(exc, timeout_s, started) from exc
        return UpstreamReply(
            text=text,
            stop_reason=stop_reason,
            usage=usage,
            request_id=raw.headers.get("request-id"),
            latency_ms=_ms_since(started),
        )

    # The Message Batches API (service.jobs.worker runs it). Like `create`, none of these retries: the worker's
    # loop comes back to whatever did not happen, on its next pass.

    async def create_batch(self, requests: list[dict[str, Any]], timeout_s: float) -> str:
        """Create a Message Batch and return its id. UpstreamFailure.billed_unknown here means the batch may
        exist all the same (the reply was lost): the caller must find it before it submits those items again."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                batch = await self._client.messages.batches.create(
                    requests=requests,  # type: ignore[arg-type]
                    timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
                )
        except _READ_ERRORS as exc:
            failure = _failure(exc, timeout_s, started)
            # A server error may come after the batch was committed (a proxy's 502 often does); only an overload
            # (529) says for sure that nothing was created.
            if failure.status is not None and failure.status >= 500 and failure.status != 529:
                failure.billed_unknown = True
            raise failure from exc
        return batch.id

    async def batch(self, batch_id: str) -> BatchView:
        try:
            return _view(await self._client.messages.batches.retrieve(batch_id))
        except _READ_ERRORS as exc:
            raise _failure(exc, 60.0, time.monotonic()) from exc

    async def batches_since(self, since: datetime) -> list[BatchView]:
        """The organisation's batches created at or after `since`, newest first."""
        found: list[BatchView] = []
        try:
            async for batch in self._client.messages.batches.list(limit=100):
                if batch.created_at < since:
                    break
                found.append(_view(batch))
        except _READ_ERRORS as exc:
            raise _failure(exc, 60.0, time.monotonic()) from exc
        return found

    async def cancel_batch(self, batch_id: str) -> None:
        try:
            await self._client.messages.batches.cancel(batch_id)
        except _READ_ERRORS as exc:
            raise _failure(exc, 60.0, time.monotonic()) from exc

    async def batch_results(self, batch_id: str) -> AsyncGenerator[dict[str, Any]]:
        """The result lines of an ended batch, as JSON objects, in the order the API sends them. A line that is
        not a JSON object is skipped (its request then has no result, and is charged as unknown)."""
        try:
            async with self._client.messages.batches.with_streaming_response.results(batch_id) as response:
                async for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        parsed = json.loads(line)
                    except ValueError:
                        logger.warning("batch %s: a result line is not JSON: %.200s", batch_id, line)
                        continue
                    if isinstance(parsed, dict):
                        yield parsed
                    else:
                        logger.warning("batch %s: a result line is not an object: %.200s", batch_id, line)
        except _READ_ERRORS as exc:
            raise _failure(exc, 600.0, time.monotonic()) from exc

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


@dataclass(frozen=True)
class BatchView:
    id: str
    ended: bool
    request_count: int
    created_at: datetime


def _view(batch: MessageBatch) -> BatchView:
    counts = batch.request_counts
    total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
    return BatchView(batch.id, batch.processing_status == "ended", total, batch.created_at)


def _failure(exc: Exception, timeout_s: float, started: float) -> UpstreamFailure:
    """An API error as an UpstreamFailure; `billed_unknown`: the request may have taken effect (been billed)."""
    if isinstance(exc, anthropic.APIStatusError):
        # A gateway timeout reached the API and may have run (and been billed) anyway.
        return UpstreamFailure(
            _outcome_for(exc.status_code),
            _error_message(exc),
            status=exc.status_code,
            request_id=exc.request_id,
            retry_after_s=retry_after(exc.response.headers),
            billed_unknown=exc.status_code == 504,
            latency_ms=_ms_since(started),
        )
    if isinstance(exc, anthropic.APITimeoutError | TimeoutError):
        # httpx timeouts are per phase (a trickling body resets the read timeout); asyncio's is overall.
        return UpstreamFailure(
            "timeout",
            f"no answer within {timeout_s:.1f}s",
            billed_unknown=not isinstance(exc.__cause__, _NOT_SENT),
            latency_ms=_ms_since(started),
        )
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamFailure(
            "connection_error",
            f"connection failed: {exc.__cause__ or exc}",
            billed_unknown=not isinstance(exc.__cause__, _NOT_SENT),
            latency_ms=_ms_since(started),
        )
    # A 200 whose body is not what was asked for: it may have been billed, and its usage is unreadable.
    return UpstreamFailure(
        "malformed_response",
        f"the API answered with a body that is not a Message: {type(exc).__name__}",
        billed_unknown=True,
        latency_ms=_ms_since(started),
    )


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{exc.status_code} {body['error'].get('type')}: {body['error'].get('message')}"
    return f"{exc.status_code}: {exc.message}"


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
