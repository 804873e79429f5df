"""Starlette adapter for the Anthropic stand-in: HTTP in, core steps out, timing and sockets here.

Routes:

- `POST /v1/messages` (JSON or, with `"stream": true`, SSE), `POST /v1/messages/count_tokens`,
  `GET /v1/models`, `GET /v1/models/{id}`: the public API.
- `POST /_emulator/faults` `{"fault": "529", "count": 2}`: the next `count` Messages requests
  fail with that fault (same names as the `[[fault:...]]` prompt markers). `DELETE` clears them.
- `POST /_emulator/pacing` `{"ttft_ms": 300, "tokens_per_second": 80}`.
- `GET /_emulator/requests`: what was received (the newest 256), and how each request ended.
- `POST /_emulator/reset`: forget requests, queued faults and the prompt cache.

Prompt caching: `EmulatorState.prompt_cache` (see `caching.py`) lives as long as the server and
is read and written with the injected `clock`, only for requests that get an answer.

Every response, errors included, carries a `request-id` header.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulators.anthropic.caching import CacheUsage, PromptCache
from emulators.anthropic.core import (
    MAX_BODY_BYTES,
    MODELS,
    ApiError,
    Drop,
    Fault,
    Generation,
    MessagesRequest,
    Pacing,
    Pause,
    check_auth,
    fault_for,
    input_tokens,
    list_models,
    model_info,
    parse_fault,
    parse_messages_request,
)

# Idle HTTP keep-alive longer than the SDK's connection pool keeps sockets: with uvicorn's 5 s
# default, a request made just as the server closes an idle pooled socket dies mid-flight
# (the Ably stand-in hit this on token renewal).
KEEP_ALIVE_SECONDS = 75

log = logging.getLogger(__name__)

# How many requests the stand-in remembers for `/_emulator/requests` and the test fixtures.
REQUEST_LOG_LIMIT = 256
# ...and how many body bytes: with images and PDFs (up to 32 MB a request) 256 whole bodies could
# take gigabytes, so older records drop their bodies first (the newest one always keeps its own).
REQUEST_LOG_BODY_BYTES = 64 * 1024 * 1024

# Bodies larger than this (images, PDFs) are parsed on a worker thread, so decoding them does not
# hold up the replies other clients are streaming.
PARSE_IN_THREAD_BYTES = 256 * 1024

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def random_id(prefix: str) -> str:
    """An id shaped like the real API's (`msg_01...`, `req_01...`, `toolu_01...`)."""
    return f"{prefix}_01" + "".join(secrets.choice(_BASE58) for _ in range(22))


@dataclass
class RecordedRequest:
    """One request as the server saw it, and how it ended."""

    request_id: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = 0.0
    body_bytes: int = 0
    status: int = 0
    fault: str | None = None
    # "completed", "aborted" (client went away mid-stream), "dropped", "error", "eof".
    outcome: str = ""
    events_sent: int = 0

    @property
    def retry_count(self) -> int | None:
        value = self.headers.get("x-stainless-retry-count")
        return int(value) if value and value.isdigit() else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "fault": self.fault,
            "outcome": self.outcome,
            "events_sent": self.events_sent,
            "retry_count": self.retry_count,
        }


@dataclass
class EmulatorState:
    """Settings and observations shared by the app and whoever controls it (tests, endpoint).

    Safe to use from another thread: the in-process test server runs in its own thread.
    """

    pacing: Pacing = field(default_factory=Pacing)
    require_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    # The newest REQUEST_LOG_LIMIT requests: a long-running stand-in (`make run`, soaks) must not
    # grow with every request it has ever served.
    requests: deque[RecordedRequest] = field(
        default_factory=lambda: deque(maxlen=REQUEST_LOG_LIMIT)
    )
    prompt_cache: PromptCache = field(default_factory=PromptCache)
    _queued_faults: list[Fault] = field(default_factory=list)
    # Set when the server starts shutting down: streams still running end at once (as a real
    # server going away drops them) rather than outlast uvicorn's graceful-shutdown timeout.
    closing: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def apply_prompt_cache(self, request: MessagesRequest, now: float) -> CacheUsage:
        """Read and write the prompt cache for a request answered at `now`."""
        with self._changed:
            return self.prompt_cache.apply(request.model, request.segments, now)

    def queue_fault(self, fault: Fault | str, count: int = 1) -> None:
        if isinstance(fault, str):
            fault = parse_fault(fault)
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._changed:
            self._queued_faults.extend([fault] * count)

    def clear_faults(self) -> None:
        with self._changed:
            self._queued_faults.clear()

    @property
    def queued_faults(self) -> list[Fault]:
        with self._changed:
            return list(self._queued_faults)

    def take_fault(self) -> Fault | None:
        with self._changed:
            return self._queued_faults.pop(0) if self._queued_faults else None

    def record(self, request: RecordedRequest) -> None:
        with self._changed:
            self.requests.append(request)
            kept = sum(r.body_bytes for r in self.requests)
            for older in list(self.requests)[:-1]:
                if kept <= REQUEST_LOG_BODY_BYTES:
                    break
                if older.body_bytes:
                    kept -= older.body_bytes
                    older.body = f"<{older.body_bytes} bytes, dropped to bound memory>"
                    older.body_bytes = 0
            self._changed.notify_all()

    def finish(self, request: RecordedRequest, outcome: str) -> None:
        with self._changed:
            request.outcome = outcome
            self._changed.notify_all()
        fault = f" fault={request.fault}" if request.fault else ""
        log.info(
            "%s %s %s %s %s events=%d%s",
            request.request_id,
            request.method,
            request.path,
            request.status,
            outcome,
            request.events_sent,
            fault,
        )

    def reset(self) -> None:
        with self._changed:
            self.requests.clear()
            self._queued_faults.clear()
            self.prompt_cache.clear()
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until predicate() holds (checked whenever a request starts or ends)."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)


class _RequestIdMiddleware:
    """Give every request an id and make sure every response carries it as `request-id`."""

    def __init__(self, app: ASGIApp, new_id: Callable[[str], str]) -> None:
        self.app = app
        self.new_id = new_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"request-id" for name, _ in headers):
                    headers.append((b"request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class _DropFilter(logging.Filter):
    # A dropped connection is an injected fault, not a server bug: keep uvicorn quiet about it.
    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


_DROP_FILTER = _DropFilter()


def create_app(
    state: EmulatorState | None = None,
    *,
    sleep: Sleep = anyio.sleep,
    clock: Clock = time.time,
    new_id: Callable[[str], str] = random_id,
) -> ASGIApp:
    """The ASGI app. `sleep`, `clock` and `new_id` are injectable for tests."""
    state = state or EmulatorState()
    logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)  # adding it twice is a no-op

    def common_headers() -> dict[str, str]:
        reset = dt.datetime.fromtimestamp(clock() + 60, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": "2000000",
            "anthropic-ratelimit-tokens-remaining": "1999000",
            "anthropic-ratelimit-tokens-reset": reset,
        }

    def error_response(error: ApiError, request_id: str) -> JSONResponse:
        return JSONResponse(
            error.body(request_id),
            status_code=error.status,
            headers={**common_headers(), **error.headers},
        )

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > state.max_body_bytes:
            raise ApiError(413, error_type="request_too_large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > state.max_body_bytes:
                raise ApiError(413, error_type="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def parse(body: bytes, *, for_count_tokens: bool) -> MessagesRequest:
        def parse_now() -> MessagesRequest:
            parsed = parse_messages_request(
                body, for_count_tokens=for_count_tokens, max_body_bytes=state.max_body_bytes
            )
            _ = parsed.segments  # hash the prompt's blocks here too, off the event loop
            return parsed

        if len(body) > PARSE_IN_THREAD_BYTES:
            return await anyio.to_thread.run_sync(parse_now)
        return parse_now()

    def start_record(request: Request, body: bytes) -> RecordedRequest:
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode(errors="replace")
        record = RecordedRequest(
            request_id=request.state.request_id,
            method=request.method,
            path=request.url.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=parsed,
            received_at=clock(),
            body_bytes=len(body),
        )
        state.record(record)
        return record

    async def messages(request: Request) -> Response:
        request_id: str = request.state.request_id
        body = b""
        try:
            body = await read_body(request)
        except ApiError as error:
            record = start_record(request, b"")
            record.status = error.status
            state.finish(record, "error")
            return error_response(error, request_id)
        record = start_record(request, body)
        try:
            check_auth(request.headers, state.require_key)
            parsed = await parse(body, for_count_tokens=False)
            fault = state.take_fault() or fault_for(parsed)
        except (ApiError, ValueError) as error:
            if isinstance(error, ValueError):  # a malformed [[fault:...]] marker
                error = ApiError(400, f"emulator fault marker: {error}")
            record.status = error.status
            state.finish(record, "error")
            return error_response(error, request_id)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.status is not None:
            error = fault.api_error()
            record.status = error.status
            state.finish(record, "error")
            return error_response(error, request_id)
        if fault is not None and fault.kind == "hang" and isinstance(fault.value, float):
            await sleep(fault.value)
        # The API writes the cache once the response begins, so refused requests leave it alone.
        cache = state.apply_prompt_cache(parsed, clock())
        generation = Generation(
            parsed,
            message_id=new_id("msg"),
            request_id=request_id,
            tool_id=new_id("toolu"),
            pacing=state.pacing,
            fault=fault,
            cache=cache,
        )
        record.status = 200
        headers = {**common_headers(), "request-id": request_id}
        if parsed.stream:
            return _EventStream(generation, record, state, sleep, headers)
        return _WholeMessage(generation, record, state, sleep, headers)

    async def count_tokens(request: Request) -> Response:
        request_id: str = request.state.request_id
        try:
            body = await read_body(request)
            check_auth(request.headers, state.require_key)
            parsed = await parse(body, for_count_tokens=True)
        except ApiError as error:
            return error_response(error, request_id)
        # Like the API's count_tokens: every input token, cached or not, and no cache effects.
        return JSONResponse({"input_tokens": input_tokens(parsed)}, headers=common_headers())

    async def models(request: Request) -> Response:
        try:
            check_auth(request.headers, state.require_key)
        except ApiError as error:
            return error_response(error, request.state.request_id)
        return JSONResponse(list_models(), headers=common_headers())

    async def model(request: Request) -> Response:
        request_id: str = request.state.request_id
        model_id = request.path_params["model_id"]
        try:
            check_auth(request.headers, state.require_key)
            if model_id not in MODELS:
                raise ApiError(404, f"model: {model_id}", error_type="not_found_error")
        except ApiError as error:
            return error_response(error, request_id)
        return JSONResponse(model_info(model_id), headers=common_headers())

    async def control_faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.clear_faults()
            return JSONResponse({"queued": []})
        try:
            data = await request.json()
            fault = parse_fault(str(data["fault"]))
            count = int(data.get("count", 1))
            state.queue_fault(fault, count)
        except (ValueError, KeyError, TypeError) as error:
            message = f"expected {{'fault': '<name>', 'count': N}}: {error}"
            return error_response(ApiError(400, message), request.state.request_id)
        return JSONResponse({"queued": [f.kind for f in state.queued_faults]})

    async def control_pacing(request: Request) -> Response:
        try:
            data = await request.json()
            ttft = float(data.get("ttft_ms", state.pacing.ttft * 1000)) / 1000
            rate = float(data.get("tokens_per_second", state.pacing.tokens_per_second))
            if ttft < 0 or rate < 0:
                raise ValueError("values must be non-negative")
        except (ValueError, TypeError, AttributeError) as error:
            message = f"expected {{'ttft_ms': N, 'tokens_per_second': N}}: {error}"
            return error_response(ApiError(400, message), request.state.request_id)
        state.pacing = Pacing(ttft=ttft, tokens_per_second=rate)
        return JSONResponse({"ttft_ms": ttft * 1000, "tokens_per_second": rate})

    async def control_requests(request: Request) -> Response:
        return JSONResponse({"requests": [r.as_dict() for r in list(state.requests)]})

    async def control_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    async def not_found(request: Request, exc: Exception) -> Response:
        error = ApiError(
            404, f"Not found: {request.method} {request.url.path}", error_type="not_found_error"
        )
        return error_response(error, request.state.request_id)

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model_id}", model, methods=["GET"]),
            Route("/_emulator/faults", control_faults, methods=["POST", "DELETE"]),
            Route("/_emulator/pacing", control_pacing, methods=["POST"]),
            Route("/_emulator/requests", control_requests, methods=["GET"]),
            Route("/_emulator/reset", control_reset, methods=["POST"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.emulator = state
    return _RequestIdMiddleware(app, new_id)


class _EventStream(Response):
    """SSE body driven by the core's steps; stops generating the moment the client leaves."""

    def __init__(
        self,
        generation: Generation,
        record: RecordedRequest,
        state: EmulatorState,
        sleep: Sleep,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(
            status_code=200,
            headers={**headers, "cache-control": "no-cache"},
            media_type="text/event-stream; charset=utf-8",
        )
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.generation = generation
        self.record = record
        self.state = state
        self.sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No content-length: uvicorn sends the body chunked, so a drop is distinguishable from
        # a clean end (the final zero-length chunk never comes).
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        outcome = "completed"
        async with anyio.create_task_group() as group:

            async def watch_for_disconnect() -> None:
                nonlocal outcome
                while (await receive())["type"] != "http.disconnect":
                    pass
                outcome = "aborted"
                group.cancel_scope.cancel()

            group.start_soon(watch_for_disconnect)
            for step in self.generation.steps():
                if self.state.closing:
                    outcome = "dropped"
                    break
                if isinstance(step, Pause):
                    await self.sleep(step.seconds)
                elif isinstance(step, Drop):
                    outcome = "dropped"
                    break
                else:
                    await send(
                        {"type": "http.response.body", "body": step.encode(), "more_body": True}
                    )
                    self.record.events_sent += 1
            group.cancel_scope.cancel()
        if outcome == "completed":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            fault = self.generation.fault
            if fault is not None and fault.kind in ("midstream-error", "eof"):
                outcome = "error" if fault.kind == "midstream-error" else "eof"
        # "dropped": returning without the final chunk makes uvicorn close the socket.
        self.state.finish(self.record, outcome)


class _WholeMessage(Response):
    """Non-streaming body; stream-only faults map to their closest whole-response equivalent."""

    def __init__(
        self,
        generation: Generation,
        record: RecordedRequest,
        state: EmulatorState,
        sleep: Sleep,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(status_code=200, headers=dict(headers), media_type="application/json")
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.generation = generation
        self.record = record
        self.state = state
        self.sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        generation = self.generation
        fault = generation.fault
        kind = fault.kind if fault else None
        pacing = generation.pacing
        delay = pacing.ttft + pacing.for_tokens(generation.output_tokens)
        if (
            fault is not None
            and kind in ("stall", "slow-first-token")
            and isinstance(fault.value, float)
        ):
            delay += fault.value
        if delay > 0:
            await self.sleep(delay)
        if kind == "midstream-error":
            assert fault is not None
            error = ApiError(
                529 if fault.value == "overloaded_error" else 500, error_type=str(fault.value)
            )
            self.record.status = error.status
            response: Response = JSONResponse(
                error.body(self.record.request_id),
                status_code=error.status,
                headers=dict(self.headers),
            )
            await response(scope, receive, send)
            self.state.finish(self.record, "error")
            return
        body = json.dumps(generation.message()).encode()
        if kind in ("drop", "eof"):
            # Promise the whole body, send half, and hang up.
            headers = [*self.raw_headers, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send(
                {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
            )
            self.state.finish(self.record, "dropped")
            return
        self.body = body
        self.init_headers(self.headers)
        await super().__call__(scope, receive, send)
        self.state.finish(self.record, "completed")


class EmulatorServer:
    """Runs the app with uvicorn in a background thread on 127.0.0.1 and a free port."""

    def __init__(
        self,
        state: EmulatorState | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = time.time,
    ) -> None:
        self.state = state or EmulatorState()
        self.clock = clock
        self.host = host
        self._requested_port = port
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.state, clock=self.clock),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=[sock]),
            name=f"anthropic-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Anthropic stand-in did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        # Open streams (e.g. a stalled one) must not hold the test run hostage.
        self._server.force_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None
