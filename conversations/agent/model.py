"""Talking to Claude: the request, the agent's own retry loop, and failures in users' words.

The SDK's built-in retries are turned off (`max_retries=0`) because they happen invisibly inside
`messages.stream().__aenter__`; retrying here lets the agent tell every device it is retrying
(presence status `retrying`) between attempts. The policy mirrors the SDK's: 408, 409, 429 and
5xx (529 included) and connection failures are retried, `x-should-retry` and `retry-after(-ms)`
are obeyed. Nothing is retried once text has started to flow (anthropic-stream.md §0.6).

The reply's events are read from the SDK's raw streaming response (`with_streaming_response`)
and parsed here, not through `messages.stream()`: the SDK's helper builds and merges pydantic
objects for every delta, which was most of the agent's CPU per token (`bench agent_relay`). The
SDK still makes the request (auth, base URL, headers, status errors); only the agent's few event
fields are read, and an `error` event mid-stream raises the SDK's own `APIStatusError`. On the
aiohttp transport the body's chunks are split into lines here too (`ModelStream.__aiter__`),
not by httpx2's four nested generators per chunk; any other transport goes through the SDK's
`iter_lines`.

The SDK's aiohttp transport (`anthropic[aiohttp]`, `DefaultAioHttpClient`) carries the requests:
its C HTTP parser reads a streamed reply for half the CPU of the default httpx transport (about
50 instead of 105 us per token over 100 concurrent streams), and that read is most of what the
agent does per token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import httpx2
from anthropic._vendor.httpx_aiohttp.transport import (
    AiohttpResponseStream,
    map_aiohttp_exceptions,
)
from httpx2._client import BoundAsyncStream

from .config import AgentConfig

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 429})
# A server asking for a longer pause than this gets a final error instead of a stalled reply.
MAX_HONOURED_RETRY_AFTER = 60.0


class ModelFailure(Exception):
    """The model request failed for good; `user_message` is what the devices show."""

    def __init__(self, user_message: str, *, stop_reason: str, detail: str = "") -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message
        self.stop_reason = stop_reason


@dataclass(frozen=True)
class RetryNotice:
    attempt: int  # the attempt that failed, from 1
    delay: float
    reason: str


CONNECT_TIMEOUT_SECONDS = 10.0
NO_RESPONSE_MESSAGE = "Claude did not respond in time. Please try again."


def make_client(config: AgentConfig) -> anthropic.AsyncAnthropic:
    # The read timeout is the stall watchdog: it bounds the silence between any two chunks of a
    # stream (pings included), not the length of a reply, so long answers are unaffected.
    timeout = httpx2.Timeout(
        config.stall_timeout,
        connect=min(CONNECT_TIMEOUT_SECONDS, config.stall_timeout),
    )
    return anthropic.AsyncAnthropic(
        api_key=config.anthropic_api_key,
        base_url=config.anthropic_base_url or None,
        max_retries=0,
        timeout=timeout,
        http_client=anthropic.DefaultAioHttpClient(timeout=timeout),
        # None: the SDK's own default (spans, trace propagation, its ANTHROPIC_OPEN_TELEMETRY*
        # variables). False: no span per request, and no lazy import of the OpenTelemetry
        # propagators during the first request (~5 ms on the event loop, at a burst's start).
        open_telemetry=None if config.model_tracing else False,
    )


def is_stall(error: BaseException) -> bool:
    return isinstance(error, anthropic.APITimeoutError | httpx2.TimeoutException)


def _header(error: BaseException, name: str) -> str | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    return headers.get(name) if headers is not None else None


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, anthropic.APIStatusError):
        should_retry = _header(error, "x-should-retry")
        if should_retry in ("true", "false"):
            return should_retry == "true"
        return error.status_code in RETRYABLE_STATUSES or error.status_code >= 500
    return isinstance(error, anthropic.APIConnectionError)


def retry_delay(error: BaseException, failed_attempts: int, config: AgentConfig) -> float:
    """Seconds to wait before the next attempt: the server's `retry-after`, else backoff."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = _header(error, name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds > 0:
            return min(seconds, MAX_HONOURED_RETRY_AFTER)
    backoff = min(config.retry_base_delay * 2.0 ** (failed_attempts - 1), config.retry_max_delay)
    return backoff * (1 - 0.25 * random.random())


def describe_failure(error: BaseException, *, mid_stream: bool) -> ModelFailure:
    """Turn any model-side failure into a message a user can act on."""
    if isinstance(error, ModelFailure):
        return error
    if is_stall(error):
        if mid_stream:
            message = (
                "Claude stopped responding part-way through this reply. The text so far is "
                "kept; please send your message again."
            )
        else:
            message = NO_RESPONSE_MESSAGE
        return ModelFailure(message, stop_reason="error", detail=repr(error))
    if isinstance(error, anthropic.APIStatusError):
        kind = getattr(error, "type", None) or ""
        if error.status_code == 200 or mid_stream:
            what = "overloaded" if kind == "overloaded_error" else "had an error"
            return ModelFailure(
                f"Claude {what} part-way through this reply. The text so far is kept; "
                "please send your message again.",
                stop_reason="error",
                detail=str(error),
            )
        if error.status_code == 429:
            message = (
                "Claude is receiving too many requests right now. Please try again in a moment."
            )
        elif error.status_code == 529 or kind == "overloaded_error":
            message = "Claude is overloaded right now. Please try again in a moment."
        elif error.status_code >= 500:
            message = "Claude had an internal error. Please try again."
        elif error.status_code in (401, 403):
            message = "The assistant is not configured correctly (model access was refused)."
        else:
            api_message = getattr(error, "api_message", None) or getattr(error, "message", "")
            message = f"Claude could not handle this request: {api_message}"
        return ModelFailure(message, stop_reason="error", detail=str(error))
    # Mid-stream, the SDK (from anthropic 2.17, when its own Stream reads the body) wraps a
    # dropped connection in APIConnectionError: it is the same drop as the bare transport error.
    if isinstance(error, anthropic.APIConnectionError) and not mid_stream:
        return ModelFailure(
            "Could not reach Claude. Please try again.", stop_reason="error", detail=repr(error)
        )
    if isinstance(error, anthropic.APIConnectionError | httpx2.HTTPError):
        return ModelFailure(
            "The connection to Claude dropped before the reply finished. The text so far is "
            "kept; please send your message again.",
            stop_reason="error",
            detail=repr(error),
        )
    return ModelFailure(
        "Something went wrong while writing this reply. Please try again.",
        stop_reason="error",
        detail=repr(error),
    )


# Claude's tokenizer averages about four characters of English prose per token. The one figure
# behind every estimate the agent makes: output tokens of a stream cut short, context budgets.
CHARS_PER_TOKEN = 4


def estimate_output_tokens(*texts: str) -> int:
    """An estimate of the tokens it took to generate `texts` (stored marked as an estimate)."""
    return _tokens_for_chars(sum(len(text) for text in texts))


def _tokens_for_chars(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


CACHE_BREAKPOINT = {"type": "ephemeral"}


def with_cache_breakpoints(
    system: str, messages: list[dict[str, Any]]
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The system prompt and messages with prompt-caching breakpoints (`cache_control`).

    Each turn re-sends the whole conversation, so without caching a long conversation pays for
    all of it at the full input price every time. With a breakpoint the API caches the prefix
    up to it (written at 1.25x the input price, read at 0.1x for 5 minutes from last use), and a
    later request starting with the same prefix reads it, looking back up to 20 blocks from each
    breakpoint. Three breakpoints (the API allows four):

    - the system prompt: the same for every turn of a conversation;
    - the last block of the previous turns (the reply before this prompt): the stable prefix,
      which the previous turn's prompt breakpoint cached up to its own prompt; it keeps that
      within reach when this prompt has more than 20 blocks (attachments);
    - the last block of this prompt: so the next turn reads everything up to here.

    A prefix shorter than the model's minimum cacheable length (1,024 tokens for most models) is
    simply not cached (no error, no extra cost). The caller's messages are not modified.
    """
    cached_system: str | list[dict[str, Any]] = system
    if system:
        cached_system = [{"type": "text", "text": system, "cache_control": CACHE_BREAKPOINT}]
    marked = list(messages)
    for index in {len(marked) - 2, len(marked) - 1}:
        if index >= 0:
            marked[index] = _with_breakpoint_on_last_block(marked[index])
    return cached_system, marked


def _with_breakpoint_on_last_block(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            return message  # an empty text block is refused; nothing to cache here anyway
        blocks = [{"type": "text", "text": content, "cache_control": CACHE_BREAKPOINT}]
    elif isinstance(content, list) and content and isinstance(content[-1], dict):
        blocks = [*content[:-1], {**content[-1], "cache_control": CACHE_BREAKPOINT}]
    else:
        return message
    return {**message, "content": blocks}


def _aiohttp_body(response: Any) -> aiohttp.StreamReader | None:
    """The raw body of a streamed response the SDK's aiohttp transport (`DefaultAioHttpClient`)
    carries, or None for any other transport, or a body that is compressed (httpx2 would
    decode it): those are read through the SDK's `iter_lines`. The transport keeps its aiohttp
    response as `AiohttpResponseStream._aiohttp_response` (anthropic 2.17's vendored
    httpx-aiohttp 0.2.0), inside httpx2's `BoundAsyncStream._stream`;
    tests/unit/test_model_stream.py fails if either stops doing so.
    """
    http_response: Any = getattr(response, "http_response", None)
    stream = getattr(http_response, "stream", None)
    if isinstance(stream, BoundAsyncStream):
        # httpx2's client wraps the transport's stream to time the response.
        stream = getattr(stream, "_stream", None)
    if not isinstance(stream, AiohttpResponseStream):
        return None
    if http_response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    aiohttp_response = getattr(stream, "_aiohttp_response", None)
    return aiohttp_response.content if aiohttp_response is not None else None


class ModelStream:
    """One reply's server-sent events, read as `(kind, text)` deltas: kind is "text" or
    "thinking". `stop_reason` and the token counts are filled in as their events pass; a
    stream that ends without `message_stop` leaves `stop_reason` None.

    `message_start` reports the output tokens so far (1), `message_delta` the reply's real count.
    A stream cut short before `message_delta` (Stop, an error, shutdown) has only the first, so
    `usage()` then estimates the output from the characters streamed and says so.
    """

    def __init__(self, response: Any) -> None:
        self._response = response
        self.stop_reason: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.output_tokens_reported = False
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0
        self.streamed_chars = 0
        self.finished = False

    def usage(self) -> tuple[int, int, bool]:
        """(input tokens, output tokens, whether the output count is an estimate)."""
        if self.output_tokens_reported:
            return self.input_tokens, self.output_tokens, False
        estimate = _tokens_for_chars(self.streamed_chars)
        return self.input_tokens, max(estimate, self.output_tokens), True

    def cache_usage(self) -> tuple[int, int]:
        """(prompt tokens written to the cache, prompt tokens read from it), as the API said."""
        return self.cache_creation_input_tokens, self.cache_read_input_tokens

    def _read_cache_usage(self, usage: dict[str, Any]) -> None:
        # Both counts come with `message_start`; `message_delta` may repeat them (cumulative).
        if usage.get("cache_creation_input_tokens") is not None:
            self.cache_creation_input_tokens = usage["cache_creation_input_tokens"]
        if usage.get("cache_read_input_tokens") is not None:
            self.cache_read_input_tokens = usage["cache_read_input_tokens"]

    async def __aiter__(self) -> AsyncIterator[tuple[str, str]]:
        body = _aiohttp_body(self._response)
        if body is None:
            async for line_delta in self._from_lines(self._response.iter_lines()):
                yield line_delta
            return
        # The hot path: the body's chunks as aiohttp hands them over, split into lines here.
        # httpx2's `aiter_lines` would take each chunk through four nested async generators
        # (bytes, decoding, text, lines) and a line decoder first. aiohttp's errors become
        # httpx2's exactly as the SDK's transport maps them (`map_aiohttp_exceptions`), so a
        # stall is still a `ReadTimeout` and a dropped connection a `ReadError`.
        event_name = ""
        partial = b""
        with map_aiohttp_exceptions():
            async for chunk in body.iter_any():
                if partial:
                    chunk = partial + chunk
                lines = chunk.split(b"\n")
                partial = lines.pop()
                for line in lines:
                    if line.startswith(b"data:"):
                        delta = self._handle(event_name, line[5:].strip())
                        if delta is not None:
                            yield delta
                    elif line.startswith(b"event:"):
                        event_name = line[6:].strip().decode()
                    elif not line.strip():
                        event_name = ""
            if partial.startswith(b"data:"):
                # A last line without its newline (httpx2's line decoder yields it too).
                delta = self._handle(event_name, partial[5:].strip())
                if delta is not None:
                    yield delta

    async def _from_lines(self, lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
        event_name = ""
        async for line in lines:
            if line.startswith("event:"):
                event_name = line[6:].strip()
            elif line.startswith("data:"):
                delta = self._handle(event_name, line[5:].strip())
                if delta is not None:
                    yield delta
            elif not line:
                event_name = ""

    def _handle(self, event_name: str, data: str | bytes) -> tuple[str, str] | None:
        if event_name == "error":
            try:
                body: Any = json.loads(data)
            except ValueError:
                body = None
            if isinstance(data, bytes):
                data = data.decode(errors="replace")
            raise anthropic.APIStatusError(
                str(body if body is not None else data),
                response=self._response.http_response,
                body=body,
            )
        if event_name == "ping":
            return None
        event = json.loads(data)
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                text = delta.get("text", "")
                self.streamed_chars += len(text)
                return "text", text
            if delta.get("type") == "thinking_delta":
                thinking = delta.get("thinking", "")
                self.streamed_chars += len(thinking)
                return "thinking", thinking
        elif kind == "message_start":
            usage = (event.get("message") or {}).get("usage") or {}
            self.input_tokens = usage.get("input_tokens") or 0
            self.output_tokens = usage.get("output_tokens") or 0
            self._read_cache_usage(usage)
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            usage = event.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.output_tokens = usage["output_tokens"]
                self.output_tokens_reported = True
            if usage.get("input_tokens"):
                self.input_tokens = usage["input_tokens"]
            self._read_cache_usage(usage)
        elif kind == "message_stop":
            self.finished = True
        return None


@asynccontextmanager
async def open_stream(
    client: anthropic.AsyncAnthropic,
    request: dict[str, Any],
    config: AgentConfig,
    on_retry: Callable[[RetryNotice], Awaitable[None]],
) -> AsyncIterator[ModelStream]:
    """A streaming Messages request entered with retries; leaving the block closes the HTTP
    stream (which is what stops generation server-side).

    Every attempt and every pause between them share one deadline, `config.stall_timeout` from
    the first request: a model that never answers (not even with response headers) is reported
    once that has passed, not after each attempt has waited out its own read timeout.
    """
    deadline = time.monotonic() + config.stall_timeout
    attempt = 0
    while True:
        attempt += 1
        manager = client.messages.with_streaming_response.create(**request, stream=True)
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                stream = await manager.__aenter__()
        except TimeoutError as error:
            logger.info("model attempt %d got no response before the deadline", attempt)
            raise ModelFailure(
                NO_RESPONSE_MESSAGE, stop_reason="error", detail="no response headers in time"
            ) from error
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as error:
            if attempt >= config.model_attempts or not is_retryable(error):
                raise describe_failure(error, mid_stream=False) from error
            delay = retry_delay(error, attempt, config)
            if time.monotonic() + delay >= deadline:
                # The next attempt could not even start in time: report this failure now.
                raise describe_failure(error, mid_stream=False) from error
            reason = (
                f"HTTP {error.status_code}"
                if isinstance(error, anthropic.APIStatusError)
                else "connection"
            )
            logger.info("model attempt %d failed (%s); retrying in %.2fs", attempt, reason, delay)
            await on_retry(RetryNotice(attempt=attempt, delay=delay, reason=reason))
            await asyncio.sleep(delay)
            continue
        break
    try:
        yield ModelStream(stream)
    finally:
        # Closes the HTTP response, which is what aborts generation server-side.
        await manager.__aexit__(None, None, None)


async def complete_text(
    client: anthropic.AsyncAnthropic, request: dict[str, Any], *, timeout: float = 30.0
) -> str:
    """A short non-streaming request (titles); returns its text."""
    message = await client.messages.create(**request, timeout=timeout)
    return "".join(block.text for block in message.content if getattr(block, "type", "") == "text")
