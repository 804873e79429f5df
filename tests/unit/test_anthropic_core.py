"""The stand-in's sans-I/O core: validation, faults, the event sequence and the replies."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, strategies as st

from emulators.anthropic.bank import JOKES
from emulators.anthropic.core import (
    ApiError,
    Drop,
    Fault,
    Generation,
    Pacing,
    Pause,
    SseEvent,
    check_auth,
    count_tokens,
    fault_for,
    parse_fault,
    parse_messages_request,
    tokenize,
)

MODEL = "claude-sonnet-5-5"


def body(**fields: Any) -> bytes:
    data: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "How do I reverse a linked list in Python?"}],
    }
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def request(text: str, **fields: Any):
    fields.setdefault("messages", [{"role": "user", "content": text}])
    return parse_messages_request(body(**fields))


def generate(text: str, *, fault: str | None = None, pacing: Pacing | None = None, **fields: Any):
    return Generation(
        request(text, **fields),
        message_id="msg_test",
        request_id="req_test",
        pacing=pacing,
        fault=parse_fault(fault) if fault else None,
    )


def events(generation: Generation) -> list[SseEvent]:
    return [step for step in generation.steps() if isinstance(step, SseEvent)]


def reply_text(text: str, **fields: Any) -> str:
    return "".join(
        block["text"]
        for block in generate(text, **fields).message()["content"]
        if block["type"] == "text"
    )


def words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


# --- tokens -----------------------------------------------------------------------------------


@given(st.text())
def test_tokens_always_rejoin_to_the_text(text):
    assert "".join(tokenize(text)) == text


def test_tokens_are_words_numbers_and_symbols_with_leading_space():
    assert tokenize("Hello, world 12345!") == ["Hello", ",", " world", " 123", "45", "!"]


# --- auth and validation ----------------------------------------------------------------------


def test_auth_accepts_either_header_and_any_key_unless_one_is_required():
    check_auth({"x-api-key": "anything"})
    check_auth({"authorization": "Bearer anything"})
    check_auth({"authorization": "Bearer right"}, required_key="right")
    with pytest.raises(ApiError, match="x-api-key header is required") as missing:
        check_auth({})
    assert missing.value.status == 401 and missing.value.error_type == "authentication_error"
    with pytest.raises(ApiError, match="invalid x-api-key"):
        check_auth({"x-api-key": "wrong"}, required_key="right")
    with pytest.raises(ApiError):
        check_auth({"authorization": "Bearer "})


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"messages": []}, 400, "messages: at least one message is required"),
        ({"messages": ...}, 400, "messages: Field required"),
        ({"max_tokens": ...}, 400, "max_tokens: Field required"),
        ({"max_tokens": -1}, 400, "max_tokens: Input should be greater than or equal to 0"),
        ({"max_tokens": "10"}, 400, "max_tokens: Input should be a valid integer"),
        ({"model": ...}, 400, "model: Field required"),
        ({"model": "gpt-4"}, 404, "model: gpt-4"),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            400,
            'messages: first message must use the "user" role',
        ),
        (
            {"messages": [{"role": "bot", "content": "hi"}]},
            400,
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            {"messages": [{"role": "user", "content": []}]},
            400,
            "messages.0: all messages must have non-empty content except for the optional final "
            "assistant message",
        ),
        ({"temperaturee": 1}, 400, "temperaturee: Extra inputs are not permitted"),
        (
            {"max_tokens": 200_000},
            400,
            "max_tokens: 200000 > 128000, which is the maximum allowed number of output tokens "
            "for claude-sonnet-5-5",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 500}},
            400,
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            {"max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            400,
            "`max_tokens` must be greater than `thinking.budget_tokens`.",
        ),
        (
            {"stop_sequences": ["  "]},
            400,
            "stop_sequences: each stop sequence must contain non-whitespace",
        ),
        (
            {"tool_choice": {"type": "tool", "name": "nope"}, "tools": []},
            400,
            "tool_choice: tool 'nope' not found in tools",
        ),
    ],
)
def test_invalid_requests_get_the_real_apis_status_and_message(fields, status, message):
    with pytest.raises(ApiError) as caught:
        parse_messages_request(body(**fields))
    assert (caught.value.status, caught.value.message) == (status, message)
    assert caught.value.headers["x-should-retry"] == "false"


def test_error_body_has_the_api_shape():
    with pytest.raises(ApiError) as caught:
        parse_messages_request(b"not json")
    assert caught.value.body("req_1") == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "There was an error parsing the body of the request.",
        },
        "request_id": "req_1",
    }


def test_body_over_the_limit_is_request_too_large():
    with pytest.raises(ApiError) as caught:
        parse_messages_request(body(), max_body_bytes=10)
    assert (caught.value.status, caught.value.error_type) == (413, "request_too_large")


def test_final_assistant_prefill_may_be_empty_and_consecutive_roles_are_accepted():
    parsed = parse_messages_request(
        body(
            messages=[
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": ""},
            ]
        )
    )
    assert [turn.role for turn in parsed.turns] == ["user", "user", "assistant"]


def test_count_tokens_body_needs_no_max_tokens():
    parsed = parse_messages_request(body(max_tokens=...), for_count_tokens=True)
    assert parsed.max_tokens == 0
    with pytest.raises(ApiError, match="stream: Extra inputs"):
        parse_messages_request(body(max_tokens=..., stream=True), for_count_tokens=True)


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("529", Fault("529")),
        ("429=0.25", Fault("429", 0.25)),
        ("midstream-error", Fault("midstream-error", "overloaded_error")),
        ("midstream-error=api_error", Fault("midstream-error", "api_error")),
        ("drop", Fault("drop")),
        ("stall", Fault("stall", 5.0)),
        ("stall=2", Fault("stall", 2.0)),
        ("slow-first-token=3", Fault("slow-first-token", 3.0)),
    ],
)
def test_fault_specs_parse(spec, fault):
    assert parse_fault(spec) == fault


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("teapot", "unknown fault 'teapot'"),
        ("418", "unknown fault status '418'"),
        ("stall=soon", "needs a number of seconds"),
        ("stall=-1", "non-negative"),
        ("drop=3", "takes no value"),
    ],
)
def test_bad_fault_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_fault(spec)


def test_status_faults_carry_the_error_type_and_429_a_retry_after():
    rate_limited = parse_fault("429=0.5").api_error()
    assert (rate_limited.status, rate_limited.error_type) == (429, "rate_limit_error")
    assert rate_limited.headers == {"retry-after": "0.5"}
    assert parse_fault("429").api_error().headers == {"retry-after": "1"}
    assert parse_fault("529").api_error().error_type == "overloaded_error"
    assert parse_fault("500").api_error().error_type == "api_error"


def test_only_the_last_user_turn_can_carry_a_fault_marker():
    earlier = parse_messages_request(
        body(
            messages=[
                {"role": "user", "content": "hi [[fault:529]]"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "again"},
            ]
        )
    )
    assert fault_for(earlier) is None
    assert fault_for(request("hi [[fault:drop]]")) == Fault("drop")


def test_fault_markers_do_not_leak_into_the_reply():
    assert "fault" not in reply_text("Tell me about sourdough bread [[fault:stall=0]]")


# --- the event sequence -----------------------------------------------------------------------


def test_a_reply_streams_in_the_documented_order_with_consistent_usage():
    generation = generate("How do I reverse a linked list in Python?")
    sequence = events(generation)
    names = [event.name for event in sequence]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    deltas = [
        event.data["delta"]["text"] for event in sequence if event.name == "content_block_delta"
    ]
    assert all(1 <= len(tokenize(delta)) <= 5 for delta in deltas)
    message_delta = sequence[-2].data
    assert message_delta["usage"]["output_tokens"] == count_tokens("".join(deltas))
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert generation.message()["content"] == [{"type": "text", "text": "".join(deltas)}]
    assert all(
        event.encode().startswith(f"event: {event.name}\ndata: ".encode()) for event in sequence
    )


def test_equal_requests_give_identical_streams_and_different_histories_differ():
    first = generate("Tell me about travel in Japan")
    again = generate("Tell me about travel in Japan")
    assert list(first.steps()) == list(again.steps()) == list(first.steps())
    other = generate("Tell me about travel in Japan", system="You are a travel agent.")
    assert other.message()["content"] != first.message()["content"]


def test_pacing_waits_for_the_first_token_then_by_tokens_per_second():
    pacing = Pacing(ttft=0.3, tokens_per_second=50)
    generation = generate("Say exactly: one two three four five six seven", pacing=pacing)
    steps = list(generation.steps())
    pauses = [step.seconds for step in steps if isinstance(step, Pause)]
    assert pauses[0] == 0.3
    assert sum(pauses[1:]) == pytest.approx(generation.output_tokens / 50)
    first_delta = next(
        i
        for i, s in enumerate(steps)
        if isinstance(s, SseEvent) and s.name == "content_block_delta"
    )
    assert isinstance(steps[first_delta - 1], Pause)


def test_unpaced_generation_never_pauses():
    assert not [s for s in generate("Tell me about git").steps() if isinstance(s, Pause)]


def test_midstream_error_follows_three_deltas_and_nothing_after():
    sequence = events(generate("Tell me about git", fault="midstream-error"))
    assert [e.name for e in sequence].count("content_block_delta") == 3
    assert sequence[-1].name == "error"
    assert sequence[-1].data == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_test",
    }


def test_a_reply_shorter_than_the_fault_point_fails_at_its_end():
    sequence = events(generate("Say exactly: ok", fault="midstream-error"))
    assert [e.name for e in sequence][-2:] == ["content_block_stop", "error"]


def test_drop_and_eof_end_without_message_stop():
    dropped = list(generate("Tell me about git", fault="drop").steps())
    assert isinstance(dropped[-1], Drop)
    eof = events(generate("Tell me about git", fault="eof"))
    assert "message_stop" not in [e.name for e in eof] and eof[-1].name == "content_block_delta"


def test_stall_pauses_mid_stream_then_finishes():
    steps = list(generate("Tell me about git", fault="stall=7").steps())
    stall_at = steps.index(Pause(7.0))
    assert [s.name for s in steps[:stall_at] if isinstance(s, SseEvent)].count(
        "content_block_delta"
    ) == 3
    assert steps[-1] == SseEvent("message_stop", {"type": "message_stop"})


def test_slow_first_token_keeps_the_connection_alive_with_pings():
    steps = list(generate("Tell me about git", fault="slow-first-token=12").steps())
    start = [type(s).__name__ if isinstance(s, Pause) else s.name for s in steps[:7]]
    assert start == ["message_start", "ping", "Pause", "ping", "Pause", "ping", "Pause"]
    assert sum(s.seconds for s in steps if isinstance(s, Pause)) == 12


def test_max_tokens_truncates_and_zero_produces_no_content():
    generation = generate("Tell me about git", max_tokens=5)
    assert generation.stop_reason == "max_tokens"
    assert generation.output_tokens == 5
    empty = generate("Tell me about git", max_tokens=0)
    assert empty.message()["content"] == [] and empty.stop_reason == "max_tokens"


def test_stop_sequence_cuts_at_the_earliest_match():
    generation = generate("Count to 10", stop_sequences=["7", "4"])
    assert generation.message()["content"][0]["text"] == "1, 2, 3, "
    assert (generation.stop_reason, generation.stop_sequence) == ("stop_sequence", "4")


def test_thinking_comes_first_with_a_signature():
    generation = generate(
        "Explain recursion", max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048}
    )
    thinking, text = generation.message()["content"]
    assert thinking["type"] == "thinking" and thinking["signature"]
    names = [(e.name, e.data.get("delta", {}).get("type")) for e in events(generation)]
    signature_at = names.index(("content_block_delta", "signature_delta"))
    assert names[signature_at - 1] == ("content_block_delta", "thinking_delta")
    assert names[signature_at + 1] == ("content_block_stop", None)
    assert text["type"] == "text"


def test_tool_call_builds_arguments_from_the_prompt_and_schema():
    tool = {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit", "days"],
        },
    }
    generation = generate(
        "What will the weather be in New York for 3 days, in fahrenheit?", tools=[tool]
    )
    assert generation.stop_reason == "tool_use"
    call = generation.message()["content"][-1]
    assert call["input"] == {"city": "New York", "unit": "fahrenheit", "days": 3}
    forced = generate("Hello", tools=[tool], tool_choice={"type": "any"})
    assert [b["type"] for b in forced.message()["content"]] == ["tool_use"]
    declined = generate("What's the weather in Oslo?", tools=[tool], tool_choice={"type": "none"})
    assert declined.stop_reason == "end_turn"


# --- replies ----------------------------------------------------------------------------------


def test_code_requests_get_a_fenced_block_in_the_asked_language():
    assert "```python\n" in reply_text("Write a Python function that removes duplicates")
    js = reply_text("Show me a JavaScript function to compute fibonacci numbers")
    assert "```javascript\n" in js and "function fibonacci" in js
    assert "```sql\n" in reply_text("Write a SQL query for the latest events per user")
    assert "```" not in reply_text("Tell me about sourdough bread")


def test_length_is_steerable_from_the_prompt():
    sentence = reply_text("Explain websockets in one sentence")
    assert len(re.findall(r"[.!?](\s|$)", sentence)) == 1
    short = reply_text("Briefly, how do I start running?")
    normal = reply_text("How do I start running?")
    long = reply_text("Give me a long answer: how do I start running?")
    assert words(short) < words(normal) < words(long)
    for target in (150, 500, 1500):
        text = reply_text(f"Write {target} words about the history of Rome", max_tokens=8000)
        assert 0.85 * target <= words(text) <= 1.15 * target


def test_replies_are_markdown_with_paragraphs_and_a_list():
    text = reply_text("How should I plan a trip to Lisbon?")
    assert "\n\n" in text
    assert re.search(r"^(1\.|-) \*\*", text, re.MULTILINE)


def test_replies_recall_the_conversation_and_system_prompt():
    history = [
        {"role": "user", "content": "Tell me about sourdough bread"},
        {"role": "assistant", "content": "Sourdough uses a wild yeast starter."},
        {"role": "user", "content": "And about pizza dough?"},
        {"role": "assistant", "content": "Pizza dough is a lean dough."},
    ]
    first = reply_text(
        "", messages=[*history, {"role": "user", "content": "What was my first message?"}]
    )
    assert "> Tell me about sourdough bread" in first
    previous = reply_text(
        "", messages=[*history, {"role": "user", "content": "What did I just say?"}]
    )
    assert "> And about pizza dough?" in previous
    assert "> Be terse." in reply_text("What is your system prompt?", system="Be terse.")
    assert "no system prompt" in reply_text("What is your system prompt?")


def test_titles_are_a_few_words_about_the_conversation():
    title = reply_text(
        "",
        messages=[
            {"role": "user", "content": "What are good sourdough bread recipes?"},
            {"role": "assistant", "content": "Here are a few."},
            {
                "role": "user",
                "content": "Reply with a short title (max 6 words) for this conversation.",
            },
        ],
    )
    assert 1 <= len(title.split()) <= 6
    assert "Sourdough" in title and not re.search(r"[\"'.]$", title)
    quoted = reply_text(
        "Give this conversation a short title of at most 6 words.\n\nUser: how do I configure postgres replication?"
    )
    assert "Postgres" in quoted and len(quoted.split()) <= 6


@given(
    prompt=st.text(min_size=1, max_size=200).filter(lambda s: s.strip()),
    max_tokens=st.integers(min_value=0, max_value=3000),
    thinking=st.booleans(),
)
def test_streamed_deltas_always_rebuild_the_whole_message(prompt, max_tokens, thinking):
    fields: dict[str, Any] = {"max_tokens": max_tokens}
    if thinking and max_tokens > 1024:
        fields["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    generation = generate(prompt, **fields)
    blocks: list[dict[str, Any]] = []
    for event in events(generation):
        if event.name == "content_block_start":
            assert event.data["index"] == len(blocks)
            blocks.append(dict(event.data["content_block"]))
        elif event.name == "content_block_delta":
            block, delta = blocks[event.data["index"]], event.data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                block["partial"] = block.get("partial", "") + delta["partial_json"]
    for block in blocks:
        if block["type"] == "tool_use":
            block["input"] = json.loads(block.pop("partial"))
    whole = generation.message()
    assert blocks == whole["content"]
    assert whole["usage"]["output_tokens"] <= max_tokens
    assert whole["stop_reason"] in ("end_turn", "max_tokens", "tool_use")


def test_title_instruction_in_the_system_prompt_titles_the_quoted_transcript():
    title = reply_text(
        "User: What's the weather like in Paris in spring?\n\nAssistant: Mild, with some rain.",
        system="Reply with a short title of at most six words for the conversation below.",
        max_tokens=32,
    )
    assert title == "Weather Paris Spring"


def conversation(*turns: str, **fields: Any) -> str:
    messages = [
        {"role": "user" if index % 2 == 0 else "assistant", "content": text}
        for index, text in enumerate(turns)
    ]
    return reply_text("", messages=messages, **fields)


def test_follow_ups_continue_the_previous_question():
    example = conversation(
        "How do I reverse a linked list in Python?",
        "Flip the pointers.",
        "Can you give me an example?",
    )
    assert example.startswith("Sure. Here's an example for how to reverse a linked list in Python")
    assert "```python" in example
    more = conversation("How do I start running?", "Start slowly.", "Tell me more")
    assert more.startswith("Sure, there's more to say about how to start running.")
    assert (
        conversation("Tell me more")
        == "Happy to. What would you like me to go into more detail on?"
    )


def test_common_questions_get_direct_answers():
    assert reply_text("What is the capital of France?").startswith(
        "The capital of France is **Paris**"
    )
    assert "Rayleigh scattering" in reply_text("Why is the sky blue?")
    table = reply_text("What's the difference between Django and Flask?")
    assert "| | Django | Flask |" in table


def test_creative_requests_get_creative_replies():
    haiku = reply_text("Write a haiku about autumn")
    assert len(haiku.splitlines()) == 3 and "utumn" in haiku
    assert reply_text("Tell me a joke") in JOKES
    assert "Mara" in reply_text("Tell me a short story about a lighthouse")
    assert "I'm sorry you're feeling stressed" in reply_text("I'm feeling stressed about exams")


def test_code_requests_lead_with_the_code():
    text = reply_text("Write JavaScript code to fetch data from an API")
    assert text.startswith("Here's JavaScript code to fetch data from an API:\n\n```javascript\n")
    assert "fetch(" in text


def tool_turns(result_id: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "What's the weather in Oslo?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": result_id, "content": "Sunny"}],
        },
    ]


def test_tool_results_must_answer_the_previous_tool_use():
    assert reply_text("", messages=tool_turns("toolu_a")).startswith(
        "According to `get_weather`: Sunny"
    )
    with pytest.raises(
        ApiError, match="unexpected `tool_use_id` found in `tool_result` blocks: toolu_b"
    ):
        parse_messages_request(body(messages=tool_turns("toolu_b")))
    unanswered = [*tool_turns("toolu_a")[:2], {"role": "user", "content": "never mind"}]
    with pytest.raises(ApiError, match="`tool_use` ids were found without `tool_result` blocks"):
        parse_messages_request(body(messages=unanswered))


def test_thinking_cannot_be_combined_with_a_forced_tool():
    tool = {"name": "t", "input_schema": {"type": "object"}}
    with pytest.raises(ApiError, match="Thinking may not be enabled when tool_choice forces"):
        parse_messages_request(
            body(
                max_tokens=4096,
                thinking={"type": "enabled", "budget_tokens": 1024},
                tools=[tool],
                tool_choice={"type": "any"},
            )
        )


def test_an_assistant_prefill_is_continued_not_repeated():
    messages = [
        {"role": "user", "content": "Say exactly: Hello there, friend"},
        {"role": "assistant", "content": "Hello there,"},
    ]
    assert reply_text("", messages=messages) == " friend"
    messages[-1]["content"] = "Hello there, "
    with pytest.raises(ApiError, match="cannot end with trailing whitespace"):
        parse_messages_request(body(messages=messages))


def test_questions_about_the_assistant_get_honest_answers():
    assert "local stand-in for Claude" in reply_text("Who are you?")
    assert "`Say exactly: ...`" in reply_text("What can you do?")
    assert "don't have access to a clock" in reply_text("What time is it?")
    assert reply_text("Translate hello into French") == 'In French, "hello" is **bonjour**.'


@pytest.mark.parametrize(
    ("prompt", "asks_for_code"),
    [
        ("How does binary search work? Show me Python.", True),
        ("Write a function that reverses a list", True),
        ("What is Python?", False),
        ("Tell me about Java", False),
    ],
)
def test_a_prompt_asking_to_be_shown_code_gets_a_code_block(prompt, asks_for_code):
    from emulators.anthropic.replies import compose_reply

    assert ("```" in compose_reply(request(prompt)).text) is asks_for_code
