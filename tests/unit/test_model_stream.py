"""The model's stream as the agent reads it through the SDK's aiohttp transport: the raw body
split into lines by `model.ModelStream` itself, against a local SSE server that cuts its chunks
in awkward places. The same stream must give the same deltas, stop reason and usage as the
SDK's own line reader, and an `error` event must fail the reply as the API's error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from aiohttp import web

from conversations.agent import model
from conversations.agent.config import AgentConfig
from tests.stub_http import start_one_route


def sse(event: str, data: dict[str, Any], *, newline: str = "\n") -> str:
    return f"event: {event}{newline}data: {json.dumps(data)}{newline}{newline}"


def reply_events(*, newline: str = "\n", error: bool = False) -> str:
    usage = {
        "input_tokens": 12,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2048,
    }
    parts = [
        sse(
            "message_start", {"type": "message_start", "message": {"usage": usage}}, newline=newline
        ),
        sse("ping", {"type": "ping"}, newline=newline),
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "Hm"}},
            newline=newline,
        ),
    ]
    for word in ("Hello", " wörld", ", ", "again"):
        delta = {"type": "text_delta", "text": word}
        parts.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "delta": delta},
                newline=newline,
            )
        )
    if error:
        overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        parts.append(sse("error", overloaded, newline=newline))
        return "".join(parts)
    parts.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 7},
            },
            newline=newline,
        )
    )
    parts.append(sse("message_stop", {"type": "message_stop"}, newline=newline))
    return "".join(parts)


async def serve(body: bytes, chunk: int) -> tuple[web.AppRunner, str]:
    async def messages(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), chunk):
            await response.write(body[start : start + chunk])
        await response.write_eof()
        return response

    return await start_one_route("POST", "/v1/messages", messages)


def config(base_url: str) -> AgentConfig:
    return AgentConfig(
        agent_id="test",
        ably_key="app.key:secret",
        ably_endpoint="localhost",
        agent_client_id="agent",
        anthropic_api_key="test-key",
        anthropic_base_url=base_url,
        model="claude-test",
        max_tokens=256,
        system_prompt="",
        context_token_budget=10_000,
        model_attempts=1,
        stall_timeout=5.0,
    )


async def no_retry(notice: model.RetryNotice) -> None:
    raise AssertionError("no retry expected")


async def read(base_url: str) -> tuple[list[tuple[str, str]], model.ModelStream, bool]:
    cfg = config(base_url)
    client = model.make_client(cfg)
    request = {
        "model": cfg.model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    deltas: list[tuple[str, str]] = []
    try:
        async with model.open_stream(client, request, cfg, no_retry) as stream:
            raw = model._aiohttp_body(stream._response) is not None
            try:
                async for delta in stream:
                    deltas.append(delta)
            finally:
                result = stream
    finally:
        await client.close()
    return deltas, result, raw


@pytest.fixture
async def server_for() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(body: str, chunk: int) -> str:
        runner, url = await serve(body.encode(), chunk)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


# Chunk sizes: one byte at a time (every line split, a UTF-8 character too), a size that
# splits lines mid-way, and the whole body at once.
@pytest.mark.parametrize("chunk", [1, 37, 100_000])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
async def test_the_raw_body_gives_the_replys_deltas_and_usage(
    server_for: Any, chunk: int, newline: str
) -> None:
    url = await server_for(reply_events(newline=newline), chunk)
    deltas, stream, raw = await read(url)
    # The SDK's aiohttp transport still exposes its aiohttp response: the fast path is used.
    assert raw
    assert deltas == [
        ("thinking", "Hm"),
        ("text", "Hello"),
        ("text", " wörld"),
        ("text", ", "),
        ("text", "again"),
    ]
    assert stream.finished and stream.stop_reason == "end_turn"
    assert stream.usage() == (12, 7, False)
    assert stream.cache_usage() == (0, 2048)


async def test_an_error_event_mid_stream_is_the_apis_error(server_for: Any) -> None:
    url = await server_for(reply_events(error=True), 37)
    with pytest.raises(anthropic.APIStatusError) as raised:
        await read(url)
    failure = model.describe_failure(raised.value, mid_stream=True)
    assert "overloaded" in failure.user_message


async def test_the_sdks_spans_are_off_unless_the_settings_ask_for_them() -> None:
    # Off: no span is started per request and the propagators are never imported (the first
    # request would import them on the agent's event loop). On: the SDK's own default.
    quiet = model.make_client(config("http://127.0.0.1:9"))
    traced = model.make_client(config("http://127.0.0.1:9").replace(model_tracing=True))
    try:
        assert quiet.open_telemetry["traces"]["enabled"] is False
        assert traced.open_telemetry["traces"]["enabled"] is True
        assert traced.open_telemetry["propagation"] is True
    finally:
        await quiet.close()
        await traced.close()
