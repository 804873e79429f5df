"""Prompt caching in the stand-in's core: breakpoints, prefixes, minimums and TTLs (no clock)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from emulators.anthropic.caching import PromptCache
from emulators.anthropic.core import (
    ApiError,
    Generation,
    MessagesRequest,
    SseEvent,
    input_tokens,
    parse_messages_request,
)

SONNET = "claude-sonnet-5-5"  # minimum cacheable prefix: 1,024 tokens
HAIKU_4_5 = "claude-haiku-4-5"  # 4,096
EPHEMERAL = {"type": "ephemeral"}
MANUAL = "word " * 1500  # 1,500 tokens of system prompt: cacheable on Sonnet, not on Haiku 4.5


def parse(
    question: str = "What does the manual say?",
    *,
    model: str = SONNET,
    system_text: str = MANUAL,
    cache_control: dict[str, Any] | None = EPHEMERAL,
    history: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> MessagesRequest:
    system_block: dict[str, Any] = {"type": "text", "text": system_text}
    if cache_control is not None:
        system_block["cache_control"] = cache_control
    body = {
        "model": model,
        "max_tokens": 1024,
        "system": [system_block],
        "messages": [*(history or []), {"role": "user", "content": question}],
        **fields,
    }
    return parse_messages_request(json.dumps(body).encode())


def apply(cache: PromptCache, parsed: MessagesRequest, now: float):
    usage = cache.apply(parsed.model, parsed.segments, now)
    assert usage.total == input_tokens(parsed)  # the three counts always add up to the prompt
    return usage


def test_the_first_request_writes_the_prefix_and_an_identical_prefix_then_reads_it():
    cache = PromptCache()
    first = apply(cache, parse("What does the manual say?"), now=0)
    assert first.cache_read_input_tokens == 0
    assert first.cache_creation_input_tokens >= 1500
    assert first.ephemeral_5m_input_tokens == first.cache_creation_input_tokens
    assert first.input_tokens < 20  # only the question after the breakpoint

    second = apply(cache, parse("And what about chapter two?"), now=10)
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    assert second.input_tokens < 20


def test_a_prefix_below_the_models_minimum_is_silently_not_cached():
    cache = PromptCache()
    short = parse(system_text="word " * 900)  # 900 tokens < 1,024
    assert apply(cache, short, now=0).cache_creation_input_tokens == 0
    assert apply(cache, short, now=1).cache_read_input_tokens == 0
    assert len(cache) == 0
    # The same 1,500-token prefix caches on Sonnet but not on Haiku 4.5 (4,096).
    assert apply(cache, parse(model=HAIKU_4_5), now=2).cache_creation_input_tokens == 0
    assert apply(cache, parse(model=SONNET), now=3).cache_creation_input_tokens > 0


def test_a_5_minute_entry_expires_300_seconds_after_its_last_use():
    cache = PromptCache()
    created = apply(cache, parse(), now=1000).cache_creation_input_tokens
    assert apply(cache, parse(), now=1299).cache_read_input_tokens == created  # refreshes it
    assert apply(cache, parse(), now=1598).cache_read_input_tokens == created  # 299 s after use
    expired = apply(cache, parse(), now=1898)  # 300 s after the last use
    assert expired.cache_read_input_tokens == 0
    assert expired.cache_creation_input_tokens == created


def test_a_1_hour_breakpoint_outlives_5_minutes_and_is_billed_as_1h():
    cache = PromptCache()
    one_hour = {"type": "ephemeral", "ttl": "1h"}
    created = apply(cache, parse(cache_control=one_hour), now=0)
    assert created.ephemeral_1h_input_tokens == created.cache_creation_input_tokens > 0
    assert created.ephemeral_5m_input_tokens == 0
    later = apply(cache, parse(cache_control=one_hour), now=3000)
    assert later.cache_read_input_tokens == created.cache_creation_input_tokens
    assert apply(cache, parse(cache_control=one_hour), now=6601).cache_read_input_tokens == 0


def test_caches_are_per_model():
    cache = PromptCache()
    apply(cache, parse(model=SONNET), now=0)
    assert apply(cache, parse(model="claude-opus-5-5"), now=1).cache_read_input_tokens == 0


def test_a_growing_conversation_reads_the_earlier_breakpoint_within_20_blocks():
    cache = PromptCache()
    unmarked = parse(cache_control=None, question="x")
    assert apply(cache, unmarked, now=0).cache_creation_input_tokens == 0  # no breakpoint at all
    marked = {"type": "text", "text": "first question " * 10, "cache_control": EPHEMERAL}
    history = [{"role": "user", "content": [marked]}]

    # Turn 1: the breakpoint is on the first user message.
    turn_one = parse_messages_request(
        json.dumps(
            {
                "model": SONNET,
                "max_tokens": 1024,
                "system": MANUAL,
                "messages": history,
            }
        ).encode()
    )
    written = apply(cache, turn_one, now=1)
    assert written.cache_creation_input_tokens == input_tokens(turn_one)

    # Turn 2: the breakpoint moves to the newest message; the old prefix is found by lookback.
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "first question " * 10}]},
        {"role": "assistant", "content": "An answer."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "follow-up", "cache_control": EPHEMERAL}],
        },
    ]
    turn_two = parse_messages_request(
        json.dumps(
            {"model": SONNET, "max_tokens": 1024, "system": MANUAL, "messages": turns}
        ).encode()
    )
    usage = apply(cache, turn_two, now=2)
    assert usage.cache_read_input_tokens == written.cache_creation_input_tokens
    assert (
        usage.cache_creation_input_tokens == input_tokens(turn_two) - usage.cache_read_input_tokens
    )
    assert usage.input_tokens == 0


def test_a_cached_prefix_more_than_20_blocks_back_is_not_found():
    cache = PromptCache()
    blocks = [{"type": "text", "text": f"note {n}"} for n in range(30)]
    first = [{**blocks[0], "text": MANUAL, "cache_control": EPHEMERAL}, *blocks[1:]]
    body: dict[str, Any] = {"model": SONNET, "max_tokens": 10}
    early = parse_messages_request(
        json.dumps({**body, "messages": [{"role": "user", "content": first[:1]}]}).encode()
    )
    assert apply(cache, early, now=0).cache_creation_input_tokens > 0
    late_blocks = [
        {**blocks[0], "text": MANUAL},
        *blocks[1:-1],
        {**blocks[-1], "cache_control": EPHEMERAL},
    ]
    late = parse_messages_request(
        json.dumps({**body, "messages": [{"role": "user", "content": late_blocks}]}).encode()
    )
    usage = apply(cache, late, now=1)
    assert usage.cache_read_input_tokens == 0  # the hit is 29 blocks back: past the lookback
    assert usage.cache_creation_input_tokens == input_tokens(late)


def test_moving_a_breakpoint_does_not_change_the_prefix_it_ends():
    cache = PromptCache()
    apply(cache, parse(cache_control={"type": "ephemeral"}), now=0)
    one_hour = apply(cache, parse(cache_control={"type": "ephemeral", "ttl": "1h"}), now=1)
    assert one_hour.cache_read_input_tokens > 0


def test_changing_tool_choice_keeps_the_system_cache_but_not_the_messages():
    tool = {"name": "lookup", "description": "Look up.", "input_schema": {"type": "object"}}
    history = [
        {"role": "user", "content": [{"type": "text", "text": MANUAL, "cache_control": EPHEMERAL}]},
        {"role": "assistant", "content": "Noted."},
    ]
    cache = PromptCache()
    apply(cache, parse(history=history, tools=[tool], tool_choice={"type": "auto"}), now=0)
    same = apply(cache, parse(history=history, tools=[tool], tool_choice={"type": "auto"}), now=1)
    changed = apply(
        cache, parse(history=history, tools=[tool], tool_choice={"type": "none"}), now=2
    )
    assert same.cache_read_input_tokens > changed.cache_read_input_tokens > 0


def test_automatic_caching_puts_the_breakpoint_on_the_last_block():
    cache = PromptCache()
    body = {
        "model": SONNET,
        "max_tokens": 10,
        "cache_control": {"type": "ephemeral"},
        "system": MANUAL,
        "messages": [{"role": "user", "content": "Summarise the manual."}],
    }
    parsed = parse_messages_request(json.dumps(body).encode())
    assert parsed.segments[-1].ttl == "5m"
    assert apply(cache, parsed, now=0).cache_creation_input_tokens == input_tokens(parsed)
    assert apply(cache, parsed, now=1).cache_read_input_tokens == input_tokens(parsed)


# --- refused breakpoints --------------------------------------------------------------------------


def refused(**fields: Any) -> str:
    with pytest.raises(ApiError) as caught:
        parse(**fields)
    assert caught.value.status == 400
    return caught.value.message


def test_more_than_four_breakpoints_are_refused():
    history = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"part {n}", "cache_control": EPHEMERAL} for n in range(4)
            ],
        },
        {"role": "assistant", "content": "ok"},
    ]
    assert refused(history=history) == (
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    )
    three = [{**history[0], "content": history[0]["content"][:3]}, history[1]]
    body = {
        "model": SONNET,
        "max_tokens": 10,
        "cache_control": EPHEMERAL,
        "system": [{"type": "text", "text": "s", "cache_control": EPHEMERAL}],
        "messages": [*three, {"role": "user", "content": "q"}],
    }
    with pytest.raises(ApiError) as caught:
        parse_messages_request(json.dumps(body).encode())
    assert caught.value.message.endswith("Found 5.")  # the automatic breakpoint takes a slot


def test_a_cache_control_that_is_not_ephemeral_is_refused():
    assert refused(cache_control={"type": "persistent"}) == (
        "system.0.cache_control.ephemeral.type: Input should be 'ephemeral'"
    )
    assert refused(cache_control={"type": "ephemeral", "ttl": "2h"}) == (
        "system.0.cache_control.ephemeral.ttl: Input should be '5m' or '1h'"
    )


def test_a_1_hour_breakpoint_after_a_5_minute_one_is_refused():
    history = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
        },
        {"role": "assistant", "content": "ok"},
    ]
    assert "ttl='1h'" in refused(history=history)  # the system breakpoint before it is 5m


# --- usage on the wire -----------------------------------------------------------------------------


def test_usage_in_message_start_message_delta_and_the_whole_message_reports_the_cache():
    cache = PromptCache()
    parsed = parse()
    apply(cache, parsed, now=0)
    usage = apply(cache, parse(), now=1)
    generation = Generation(parsed, message_id="msg_01", cache=usage)
    events = [step for step in generation.steps() if isinstance(step, SseEvent)]
    start = events[0].data["message"]["usage"]
    delta = next(e for e in events if e.name == "message_delta").data["usage"]
    whole = generation.message()["usage"]
    for reported in (start, delta, whole):
        assert reported["input_tokens"] == usage.input_tokens
        assert reported["cache_read_input_tokens"] == usage.cache_read_input_tokens > 0
        assert reported["cache_creation_input_tokens"] == 0
    assert start["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }


_PARTS = ["word " * 700, "other " * 400, "short", "more " * 1200]


@settings(max_examples=120, deadline=None, database=None)
@given(
    calls=st.lists(
        st.tuples(
            st.lists(
                st.tuples(st.sampled_from(range(len(_PARTS))), st.sampled_from([None, "5m", "1h"])),
                min_size=1,
                max_size=4,
            ),
            st.floats(min_value=0, max_value=4000),
            st.sampled_from([SONNET, HAIKU_4_5, "claude-opus-5-5"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_cache_usage_always_adds_up_and_never_goes_negative(calls):
    cache = PromptCache()
    now = 0.0
    for parts, step, model in calls:
        now += step
        system = []
        seen_5m = False
        for index, ttl in parts:
            block: dict[str, Any] = {"type": "text", "text": _PARTS[index]}
            if ttl and not (ttl == "1h" and seen_5m):
                block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
                seen_5m = seen_5m or ttl == "5m"
            system.append(block)
        body = {
            "model": model,
            "max_tokens": 10,
            "system": system,
            "messages": [{"role": "user", "content": "q"}],
        }
        usage = apply(cache, parse_messages_request(json.dumps(body).encode()), now)
        assert min(usage.input_tokens, usage.cache_read_input_tokens) >= 0
        assert usage.cache_creation_input_tokens == (
            usage.ephemeral_5m_input_tokens + usage.ephemeral_1h_input_tokens
        )
