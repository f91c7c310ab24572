"""An Anthropic Messages API look-alike: the Simulator's lifecycle, the calls it records, and its endpoints
(Messages, token counting, Message Batches). It speaks real HTTP/1.1 through service.simulator.transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import h11

from service.simulator import behaviour
from service.simulator.batches import BatchError, Batches
from service.simulator.behaviour import Behaviour, model_family
from service.simulator.config import SimulatorConfig
from service.simulator.prompt_cache import PromptCache
from service.simulator.ratelimit import RateWindow
from service.simulator.request import ParsedRequest, RequestError, load, parse, text_to_classify
from service.simulator.transport import Response, serve

logger = logging.getLogger(__name__)

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
BATCHES = "/v1/messages/batches"
_BATCH_PATH = re.compile(r"/v1/messages/batches/(?P<id>[A-Za-z0-9_]+)(?P<tail>/cancel|/results)?")
_BEARER = re.compile(r"Bearer\s+\S+", re.IGNORECASE)

REFUSAL_DETAILS = {"type": "refusal", "category": None, "explanation": None}


@dataclass
class CallRecord:
    model: str
    text: str
    behaviour: str
    status: int  # 0 when the connection was dropped
    request_id: str | None
    at: float  # time.monotonic()
    endpoint: str = "messages"  # or "count_tokens", or "batch" (one request of a Message Batch)
    custom_id: str | None = None  # a batch request's custom_id


def _request_id() -> str:
    return f"req_sim_{uuid.uuid4().hex[:24]}"


def _seconds(value: float) -> str:
    return f"{value:g}"


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


class Simulator:
    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._faults = [(behaviour.parse_behaviour(t), rate) for t, rate in self.config.fault_rates.items()]
        self._rng = random.Random(self.config.seed)
        self._calls: list[CallRecord] = []
        self._directive_uses: dict[tuple[str, str], int] = {}
        self._prompt_cache = PromptCache()
        self._window = RateWindow()
        self._batches = Batches(self.config.batch_processing_s, self.config.batch_expire_rate, self._rng)
        # Settable while running, so that a test can refuse batches and then take them.
        self.batch_max_bytes = self.config.batch_max_bytes
        self._server: asyncio.Server | None = None
        self._port = 0
        self._host = "127.0.0.1"
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        self._stopping = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._serve_connection, host, port)
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's Server.close() leaves accepted connections open: wake any slow sleeps and abort
        # the connections, so each handler ends on its own. (Cancelling a handler instead makes 3.11's
        # StreamReaderProtocol log a spurious CancelledError.)
        self._stopping.set()
        tasks = list(self._connections.values())
        for writer in list(self._connections):
            writer.transport.abort()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5)
            for task in stuck:
                task.cancel()
        await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("simulator not started")
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

    @property
    def calls(self) -> list[CallRecord]:
        return self._calls

    @property
    def batch_processing_s(self) -> float:
        """How long a new Message Batch stays in progress; settable while running."""
        return self._batches.processing_s

    @batch_processing_s.setter
    def batch_processing_s(self, seconds: float) -> None:
        self._batches.processing_s = seconds

    def reset(self) -> None:
        """Forget every call and batch, and take the configured batch settings again."""
        self._calls.clear()
        self._directive_uses.clear()
        self._prompt_cache.clear()
        self._batches = Batches(self.config.batch_processing_s, self.config.batch_expire_rate, self._rng)
        self.batch_max_bytes = self.config.batch_max_bytes

    def summary(self) -> dict[str, Any]:
        return {
            "total": len(self._calls),
            "by_model": dict(Counter(call.model for call in self._calls)),
            "by_behaviour": dict(Counter(call.behaviour for call in self._calls)),
            "by_status": dict(Counter(str(call.status) for call in self._calls)),
            "by_endpoint": dict(Counter(call.endpoint for call in self._calls)),
        }

    # --- connections (the HTTP/1.1 itself is in transport.py) ----------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            await serve(reader, writer, self._respond, lambda problem: self._error(400, problem, _request_id()))
        finally:
            self._connections.pop(writer, None)

    async def _respond(self, request: h11.Request, body: bytes) -> Response:
        try:
            response = self._route(request, body)
        except Exception:
            logger.exception("simulator failed on %s %s", request.method, request.target)
            response = self._error(500, "simulator bug", _request_id())
        if response.delay > 0:
            # A sleep that stop() can cut short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), response.delay)
        return response

    # --- the API --------------------------------------------------------------------------------------

    def _route(self, request: h11.Request, body: bytes) -> Response:
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0].rstrip("/")
        headers = {name.decode().lower(): value.decode("latin-1") for name, value in request.headers}
        if method == "POST" and path in (MESSAGES, COUNT_TOKENS):
            return self._api_call(path, headers, body)
        if path == BATCHES or path.startswith(BATCHES + "/"):
            return self._batch_call(method, path, headers, body)
        if method == "GET" and path == "/_simulator/calls":
            return self._ok(self.summary(), _request_id())
        if method == "POST" and path == "/_simulator/reset":
            self.reset()
            return self._ok({"reset": True}, _request_id())
        return self._error(404, f"Not found: {method} {path}", _request_id())

    def _api_call(self, path: str, headers: dict[str, str], body: bytes) -> Response:
        request_id = _request_id()
        record = CallRecord(
            model="",
            text="",
            behaviour="ok",
            status=0,
            request_id=request_id,
            at=time.monotonic(),
            endpoint="count_tokens" if path == COUNT_TOKENS else "messages",
        )
        self._calls.append(record)
        payload: dict[str, Any] | None = None
        load_error: RequestError | None = None
        try:
            payload = load(body)
        except RequestError as exc:
            load_error = exc
        if payload is not None:
            model = payload.get("model")
            record.model = model if isinstance(model, str) else ""
            record.text = text_to_classify(payload)
        try:
            if not (headers.get("x-api-key") or _BEARER.fullmatch(headers.get("authorization", "").strip())):
                raise RequestError(401, "x-api-key header is required")
            if payload is None:
                raise load_error or RequestError(400, "empty body")
            parsed = parse(payload, count_only=record.endpoint == "count_tokens")
            if record.endpoint == "count_tokens":
                record.status = 200
                return self._ok({"input_tokens": parsed.input_tokens}, request_id)
            plan = self._next_behaviour(parsed)
        except RequestError as exc:
            record.behaviour, record.status = str(exc.status), exc.status
            return self._error(exc.status, exc.message, request_id)
        record.behaviour = plan.spec
        response = self._outcome(parsed, plan, request_id)
        record.status = response.status
        if response.drop:
            record.request_id = None
        return response

    def _batch_call(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        request_id = _request_id()
        try:
            if not (headers.get("x-api-key") or _BEARER.fullmatch(headers.get("authorization", "").strip())):
                raise BatchError(401, "x-api-key header is required")
            if path == BATCHES and method == "POST":
                if len(body) > self.batch_max_bytes:
                    raise BatchError(413, f"the batch is {len(body)} bytes; the limit is {self.batch_max_bytes}")
                try:
                    payload = load(body)
                except RequestError as exc:
                    raise BatchError(exc.status, exc.message) from None
                batch = self._batches.create(payload, self._batch_answer)
                return self._ok(self._batches.view(batch, self.url), request_id)
            if path == BATCHES and method == "GET":
                data = [self._batches.view(b, self.url) for b in self._batches.all()]
                first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
                return self._ok({"data": data, "has_more": False, "first_id": first, "last_id": last}, request_id)
            match = _BATCH_PATH.fullmatch(path)
            if match is None:
                raise BatchError(404, f"Not found: {method} {path}")
            batch_id, tail = match["id"], match["tail"]
            if method == "GET" and tail is None:
                return self._ok(self._batches.view(self._batches.get(batch_id), self.url), request_id)
            if method == "POST" and tail == "/cancel":
                return self._ok(self._batches.view(self._batches.cancel(batch_id), self.url), request_id)
            if method == "DELETE" and tail is None:
                self._batches.delete(batch_id)
                return self._ok({"id": batch_id, "type": "message_batch_deleted"}, request_id)
            if method == "GET" and tail == "/results":
                response = Response(status=200, body=self._batches.results_jsonl(batch_id))
                response.headers = [("request-id", request_id), ("content-type", "application/x-jsonl")]
                return response
            raise BatchError(404, f"Not found: {method} {path}")
        except BatchError as exc:
            return self._error(exc.status, exc.message, request_id)

    def _batch_answer(self, custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """One request of a batch, answered as the Messages endpoint would have answered it."""
        model = params.get("model")
        record = CallRecord(
            model=model if isinstance(model, str) else "",
            text=text_to_classify(params),
            behaviour="ok",
            status=0,
            request_id=None,
            at=time.monotonic(),
            endpoint="batch",
            custom_id=custom_id,
        )
        self._calls.append(record)
        request_id = _request_id()
        try:
            parsed = parse(params)
            plan = self._next_behaviour(parsed)
        except RequestError as exc:
            record.behaviour, record.status = str(exc.status), exc.status
            return {"type": "errored", "error": json.loads(self._error(exc.status, exc.message, request_id).body)}
        record.behaviour = plan.spec
        response = self._outcome(parsed, plan, request_id)
        record.status, record.request_id = response.status, request_id
        if response.drop:
            return {"type": "expired"}
        if response.status != 200:
            return {"type": "errored", "error": json.loads(response.body)}
        try:
            message = json.loads(response.body)
        except ValueError:
            return {"type": "errored", "error": json.loads(self._error(500, "Internal server error", request_id).body)}
        return {"type": "succeeded", "message": message}

    def _next_behaviour(self, parsed: ParsedRequest) -> Behaviour:
        family = model_family(parsed.model)
        try:
            plan = behaviour.plan_for(behaviour.parse_directives(parsed.text), family)
        except ValueError as exc:
            raise RequestError(400, f"simulator directive: {exc}") from None
        if plan:
            key = (parsed.text, family)
            used = self._directive_uses.get(key, 0)
            self._directive_uses[key] = used + 1
            if used < len(plan):
                return plan[used]
        if self._faults:
            draw, cumulative = self._rng.random(), 0.0
            for fault, rate in self._faults:
                cumulative += rate
                if draw < cumulative:
                    return fault
        return behaviour.OK

    def _outcome(self, parsed: ParsedRequest, plan: Behaviour, request_id: str) -> Response:
        slow = plan.delay(self.config.slow_seconds)
        if plan.drop:
            return Response(status=0, drop=True, delay=slow)
        if plan.status is not None:
            response = self._error(plan.status, behaviour.ERROR_MESSAGES[plan.status], request_id)
            if plan.status == 429 and plan.no_retry_after:
                response = self._error(429, behaviour.SPEND_CAP_MESSAGE, request_id)
            elif plan.retry_after is not None:
                response.headers.append(("retry-after", plan.retry_after))
            elif plan.status == 429:
                response.headers.append(("retry-after", _seconds(self.config.retry_after_seconds)))
            response.delay = slow
            return response

        self._window.charge(parsed.input_tokens, parsed.max_tokens)
        if plan.garbage:
            return Response(status=200, body=b"<html>upstream proxy error</html>", headers=self._headers(request_id))
        answer = behaviour.classify(self.config.seed, parsed.model, parsed.text, parsed.labels)
        thinks = plan.thinking or (parsed.model in behaviour.ADAPTIVE_THINKING_MODELS and not parsed.thinking_disabled)
        reply = behaviour.reply(
            behaviour.answer_text(answer, plan, structured=parsed.structured),
            plan,
            max_tokens=parsed.max_tokens,
            thinks=thinks,
        )
        written, read = self._prompt_cache.use(parsed)
        message = {
            "id": f"msg_sim_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": reply.content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "stop_details": REFUSAL_DETAILS if plan.refusal else None,
            "usage": {
                "input_tokens": parsed.input_tokens - sum(written.values()) - read,
                "output_tokens": reply.output_tokens,
                "cache_creation_input_tokens": sum(written.values()),
                "cache_read_input_tokens": read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": written.get("5m", 0),
                    "ephemeral_1h_input_tokens": written.get("1h", 0),
                },
                "service_tier": "standard",
            },
        }
        response = self._ok(message, request_id)
        response.delay = slow + self._latency(reply.output_tokens)
        return response

    def _latency(self, output_tokens: int) -> float:
        config = self.config
        millis = config.latency_ms + output_tokens * config.latency_per_output_token_ms
        if config.latency_jitter_ms > 0:
            millis += self._rng.uniform(0.0, config.latency_jitter_ms)
        return max(0.0, millis / 1000)

    def _headers(self, request_id: str) -> list[tuple[str, str]]:
        return [("request-id", request_id), ("content-type", "application/json"), *self._window.headers()]

    def _ok(self, body: object, request_id: str) -> Response:
        return Response(status=200, body=_json(body), headers=self._headers(request_id))

    def _error(self, status: int, message: str, request_id: str) -> Response:
        body = {
            "type": "error",
            "error": {"type": behaviour.ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id,
        }
        return Response(status=status, body=_json(body), headers=self._headers(request_id))


async def serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    """Run a simulator until cancelled (the `cascade simulator` command)."""
    simulator = Simulator(config)
    await simulator.start(host, port)
    logger.info("Anthropic API simulator listening on %s", simulator.url)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
