"""The one retry layer: which failures are retried, how long it waits, and that it always stops."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx2
import pytest
from tenacity import AsyncRetrying, Future, RetryCallState

from service.cascade.retry import MIN_ATTEMPT_S, Deadline, FullJitter, retrying
from service.cascade.upstream import UpstreamFailure, retry_after


def failure(status: int | None = 529, retry_after_s: float | None = None) -> UpstreamFailure:
    return UpstreamFailure("overloaded", f"{status} simulated", status=status, retry_after_s=retry_after_s)


def state_after(attempt_number: int, exc: BaseException | None) -> RetryCallState:
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt_number
    if exc is not None:
        state.outcome = Future.construct(attempt_number, exc, has_exception=True)
    else:
        state.outcome = Future.construct(attempt_number, "ok", has_exception=False)
    return state


# --- FullJitter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, 0.5, 3.0, 30.0, 120.0])
@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_full_jitter_returns_retry_after_exactly(seconds: float, attempt: int) -> None:
    wait = FullJitter(base=0.25, cap=4.0)
    for _ in range(20):
        assert wait(state_after(attempt, failure(429, retry_after_s=seconds))) == seconds


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (5, 0.5), (10, 0.5)])
@pytest.mark.parametrize("exc", [failure(529), failure(None), failure(500), ValueError("not upstream"), None])
def test_full_jitter_without_retry_after_is_uniform_up_to_the_capped_exponential(
    attempt: int, ceiling: float, exc: BaseException | None
) -> None:
    wait = FullJitter(base=0.1, cap=0.5)
    samples = [wait(state_after(attempt, exc)) for _ in range(400)]
    assert all(0 <= s <= ceiling for s in samples)
    # Full jitter spreads over the whole range rather than sitting at the ceiling.
    assert min(samples) < ceiling * 0.25
    assert max(samples) > ceiling * 0.75


# --- which failures are retryable ------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        failure(429, retry_after_s=1.0),
        failure(429, retry_after_s=0.0),
        failure(500),
        failure(502),
        failure(503),
        failure(504),
        failure(529),
        failure(529, retry_after_s=2.0),
        UpstreamFailure("timeout", "no answer within 10.0s", billed_unknown=True),
        UpstreamFailure("connection_error", "connection failed: reset"),
    ],
    ids=lambda e: f"{e.status}-ra{e.retry_after_s}",
)
def test_retryable_failures(exc: UpstreamFailure) -> None:
    assert exc.retryable is True


@pytest.mark.parametrize(
    "exc",
    [failure(429), failure(400), failure(401), failure(403), failure(404), failure(413), failure(422)],
    ids=lambda e: str(e.status),
)
def test_failures_that_are_never_retried(exc: UpstreamFailure) -> None:
    assert exc.retryable is False


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_a_retry_after_does_not_make_a_client_error_retryable(status: int) -> None:
    assert failure(status, retry_after_s=1.0).retryable is False


# --- retry_after ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "0"}, 0.0),
        ({"retry-after-ms": "250.5"}, 0.2505),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "300", "retry-after": "9"}, 0.3),  # the precise header wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # a bad ms header falls back
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "Tomorrow, 99 Foo 2026"}, None),
        ({}, None),
        ({"x-other": "5"}, None),
    ],
)
def test_retry_after_parses_the_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after(httpx2.Headers(headers)) == expected


def test_retry_after_parses_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = retry_after(httpx2.Headers({"retry-after": format_datetime(when, usegmt=True)}))
    assert seconds is not None
    assert 27 <= seconds <= 30.5


def test_retry_after_in_the_past_is_zero() -> None:
    seconds = retry_after(httpx2.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert seconds == 0.0


# --- tenacity, driven for real -----------------------------------------------------------------------


class Upstream:
    """A coroutine that fails with the given failures in turn, then answers."""

    def __init__(self, *failures: UpstreamFailure, forever: UpstreamFailure | None = None, delay: float = 0) -> None:
        self.failures = list(failures)
        self.forever = forever
        self.delay = delay
        self.calls = 0
        self.raised: list[UpstreamFailure] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        exc = self.failures.pop(0) if self.failures else self.forever
        if exc is not None:
            # A fresh instance each time, so the test can tell which one was reraised.
            raised = UpstreamFailure(exc.outcome, exc.message, status=exc.status, retry_after_s=exc.retry_after_s)
            self.raised.append(raised)
            raise raised
        return "answer"


async def call(retry: AsyncRetrying, upstream: Upstream) -> str:
    async for attempt in retry:
        with attempt:
            return await upstream()
    raise AssertionError("unreachable: tenacity either returns or raises")


async def test_stops_at_the_attempt_bound_and_reraises_the_upstream_failure() -> None:
    upstream = Upstream(forever=failure(529))
    started = time.monotonic()
    with pytest.raises(UpstreamFailure) as raised:
        await call(retrying(Deadline.after(5), 4, 0.01, 0.02), upstream)
    assert upstream.calls == 4
    assert raised.value is upstream.raised[-1]
    assert raised.value.status == 529
    assert time.monotonic() - started < 1


async def test_stops_by_the_deadline_and_reraises_the_upstream_failure() -> None:
    deadline = Deadline.after(0.3)
    upstream = Upstream(forever=failure(503), delay=0.03)
    with pytest.raises(UpstreamFailure) as raised:
        await call(retrying(deadline, 4, 0.01, 0.02), upstream)
    assert 1 <= upstream.calls < 4
    assert raised.value is upstream.raised[-1]
    # It gave up rather than start an attempt that could not finish in time.
    assert deadline.remaining() > -0.05
    assert deadline.remaining() < MIN_ATTEMPT_S + 0.05


async def test_the_small_deadline_from_the_brief_stops_by_either_bound() -> None:
    deadline = Deadline.after(0.3)
    upstream = Upstream(forever=failure(529))
    with pytest.raises(UpstreamFailure):
        await call(retrying(deadline, 4, 0.01, 0.02), upstream)
    assert 1 <= upstream.calls <= 4
    assert deadline.remaining() > 0  # it never overran the deadline


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_a_non_retryable_failure_is_tried_once(status: int) -> None:
    upstream = Upstream(forever=failure(status))
    with pytest.raises(UpstreamFailure) as raised:
        await call(retrying(Deadline.after(5), 4, 0.01, 0.02), upstream)
    assert upstream.calls == 1
    assert raised.value.status == status


async def test_a_429_without_retry_after_is_tried_once() -> None:
    upstream = Upstream(forever=failure(429))
    with pytest.raises(UpstreamFailure):
        await call(retrying(Deadline.after(5), 4, 0.01, 0.02), upstream)
    assert upstream.calls == 1


async def test_recovers_after_retryable_failures() -> None:
    upstream = Upstream(failure(529), failure(None), failure(429, retry_after_s=0.01))
    assert await call(retrying(Deadline.after(5), 4, 0.01, 0.02), upstream) == "answer"
    assert upstream.calls == 4


async def test_retry_after_is_honoured_between_attempts() -> None:
    upstream = Upstream(failure(429, retry_after_s=0.15), failure(429, retry_after_s=0.15))
    started = time.monotonic()
    assert await call(retrying(Deadline.after(5), 3, 0.001, 0.002), upstream) == "answer"
    assert upstream.calls == 3
    assert time.monotonic() - started >= 0.3


async def test_a_retry_after_past_the_deadline_gives_up_at_once() -> None:
    upstream = Upstream(forever=failure(429, retry_after_s=30))
    started = time.monotonic()
    with pytest.raises(UpstreamFailure) as raised:
        await call(retrying(Deadline.after(2), 4, 0.01, 0.02), upstream)
    assert upstream.calls == 1
    assert raised.value.retry_after_s == 30
    assert time.monotonic() - started < 0.5  # it did not sleep 30 s (nor 2 s) first


async def test_non_upstream_errors_are_not_retried() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("a bug")

    async def run() -> None:
        async for attempt in retrying(Deadline.after(5), 4, 0.01, 0.02):
            with attempt:
                await broken()

    with pytest.raises(KeyError):
        await run()
    assert calls == 1


async def test_an_expired_deadline_still_allows_the_first_attempt_but_no_retry() -> None:
    upstream = Upstream(forever=failure(529))
    with pytest.raises(UpstreamFailure):
        await call(retrying(Deadline.after(0), 4, 0.01, 0.02), upstream)
    assert upstream.calls == 1
