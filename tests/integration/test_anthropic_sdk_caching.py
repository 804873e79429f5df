"""Prompt caching seen through the real anthropic SDK: usage as the API reports it."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from emulators.anthropic import samples

MODEL = "claude-sonnet-5-5"  # minimum cacheable prefix: 1,024 tokens
MANUAL = "The manual says many things. " * 300  # ~1,800 tokens


def cached_system(text: str = MANUAL, ttl: str | None = None) -> list[dict[str, Any]]:
    control: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        control["ttl"] = ttl
    return [{"type": "text", "text": text, "cache_control": control}]


def ask(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}]


def make_client(server: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="test-key", max_retries=0)


async def test_a_stream_reports_cache_creation_then_cache_reads_in_message_start(anthropic_server):
    client = anthropic.AsyncAnthropic(
        base_url=anthropic_server.base_url, api_key="test-key", max_retries=0
    )
    starts = []
    finals = []
    for question in ("What does it say?", "And in short?"):
        async with client.messages.stream(
            model=MODEL, max_tokens=200, system=cached_system(), messages=ask(question)
        ) as stream:
            async for event in stream:
                if event.type == "message_start":
                    starts.append(event.message.usage)
            finals.append(await stream.get_final_message())

    total = await client.messages.count_tokens(
        model=MODEL, system=cached_system(), messages=ask("What does it say?")
    )
    created, read = starts
    assert created.cache_creation_input_tokens > 1024
    assert created.cache_read_input_tokens == 0
    assert created.cache_creation.ephemeral_5m_input_tokens == created.cache_creation_input_tokens
    assert created.input_tokens + created.cache_creation_input_tokens == total.input_tokens
    assert read.cache_read_input_tokens == created.cache_creation_input_tokens
    assert read.cache_creation_input_tokens == 0
    assert read.input_tokens < 20  # only the new question is billed in full
    # The final usage agrees with message_start.
    assert finals[1].usage.cache_read_input_tokens == read.cache_read_input_tokens
    assert finals[1].usage.input_tokens == read.input_tokens


def test_a_prefix_below_the_minimum_is_not_cached(anthropic_server):
    client = make_client(anthropic_server)
    short = cached_system("A short system prompt.")
    for _ in range(2):
        message = client.messages.create(
            model=MODEL, max_tokens=50, system=short, messages=ask("Hello?")
        )
        assert message.usage.cache_creation_input_tokens == 0
        assert message.usage.cache_read_input_tokens == 0


def test_the_5_minute_cache_expires_on_the_servers_clock(anthropic_server_manual_clock):
    server = anthropic_server_manual_clock
    client = make_client(server)

    def usage() -> anthropic.types.Usage:
        return client.messages.create(
            model=MODEL, max_tokens=50, system=cached_system(), messages=ask("Summary?")
        ).usage

    created = usage().cache_creation_input_tokens
    server.clock.advance(299)
    assert usage().cache_read_input_tokens == created
    server.clock.advance(300)  # 300 s after the last use
    expired = usage()
    assert expired.cache_read_input_tokens == 0
    assert expired.cache_creation_input_tokens == created


def test_a_1_hour_breakpoint_survives_half_an_hour(anthropic_server_manual_clock):
    server = anthropic_server_manual_clock
    client = make_client(server)
    first = client.messages.create(
        model=MODEL, max_tokens=50, system=cached_system(ttl="1h"), messages=ask("Summary?")
    )
    assert first.usage.cache_creation.ephemeral_1h_input_tokens > 1024
    server.clock.advance(1800)
    later = client.messages.create(
        model=MODEL, max_tokens=50, system=cached_system(ttl="1h"), messages=ask("Details?")
    )
    assert later.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_an_image_in_the_cached_prefix_is_read_from_the_cache(anthropic_server):
    client = make_client(anthropic_server)
    photo = samples.image_block(
        samples.png(1200, 900, (30, 70, 220)), cache_control={"type": "ephemeral"}
    )
    turns = [{"role": "user", "content": [photo, {"type": "text", "text": "What is this?"}]}]
    first = client.messages.create(model=MODEL, max_tokens=100, messages=turns)
    assert first.usage.cache_creation_input_tokens > 1024  # 1200x900 px = 1,440 tokens
    follow_up = [
        *turns,
        {"role": "assistant", "content": first.content[0].text},
        {"role": "user", "content": "What colour was the image?"},
    ]
    second = client.messages.create(model=MODEL, max_tokens=100, messages=follow_up)
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert "mostly blue" in second.content[0].text


def test_a_refused_request_does_not_write_the_cache(anthropic_server):
    client = make_client(anthropic_server)
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(
            model=MODEL, max_tokens=50, system=cached_system(), messages=ask("[[fault:529]] Hi")
        )
    message = client.messages.create(
        model=MODEL, max_tokens=50, system=cached_system(), messages=ask("Hi")
    )
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens > 1024


def test_more_than_four_breakpoints_are_refused(anthropic_server):
    client = make_client(anthropic_server)
    marked = [
        {"type": "text", "text": f"part {n}", "cache_control": {"type": "ephemeral"}}
        for n in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": marked}]
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["message"] == (
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    )


def test_count_tokens_counts_every_token_and_leaves_the_cache_alone(anthropic_server):
    client = make_client(anthropic_server)
    counted = client.messages.count_tokens(model=MODEL, system=cached_system(), messages=ask("Hi"))
    assert len(anthropic_server.state.prompt_cache) == 0
    message = client.messages.create(
        model=MODEL, max_tokens=50, system=cached_system(), messages=ask("Hi")
    )
    usage = message.usage
    assert usage.input_tokens + usage.cache_creation_input_tokens == counted.input_tokens
