"""The real anthropic SDK (sync and async) against the stand-in: happy paths and fidelity."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from emulators.anthropic.core import count_tokens

MODEL = "claude-sonnet-5-5"
QUESTION = "How do I reverse a linked list in Python?"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "City name"}},
        "required": ["location"],
    },
}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def client(anthropic_server):
    return anthropic.Anthropic(
        base_url=anthropic_server.base_url, api_key="test-key", max_retries=0
    )


@pytest.fixture
def async_client(anthropic_server):
    return anthropic.AsyncAnthropic(
        base_url=anthropic_server.base_url, api_key="test-key", max_retries=0
    )


async def test_async_stream_helper_yields_text_that_adds_up_to_the_final_message(
    async_client, anthropic_server
):
    async with async_client.messages.stream(
        model=MODEL, max_tokens=1024, messages=user(QUESTION)
    ) as stream:
        event_types = [event.type async for event in stream]
        final = await stream.get_final_message()

    text = final.content[0].text
    raw_types = [t for t in event_types if t not in ("text", "thinking", "signature", "input_json")]
    assert raw_types[:2] == ["message_start", "content_block_start"]
    assert raw_types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(raw_types[2:-3]) == {"content_block_delta"}
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == count_tokens(text)
    assert final.usage.input_tokens > 0
    assert "```python" in text and "def reverse" in text
    assert stream.request_id == anthropic_server.messages_requests[0].request_id
    assert anthropic_server.messages_requests[0].outcome == "completed"


async def test_async_text_stream_deltas_carry_one_to_five_tokens(async_client):
    async with async_client.messages.stream(
        model=MODEL, max_tokens=1024, messages=user(QUESTION)
    ) as stream:
        deltas = [delta async for delta in stream.text_stream]
        final_text = await stream.get_final_text()
    assert "".join(deltas) == final_text
    assert all(1 <= count_tokens(delta) <= 5 for delta in deltas)
    assert len({count_tokens(delta) for delta in deltas}) > 1


def test_sync_create_stream_sends_every_raw_event_in_order(client):
    stream = client.messages.create(
        model=MODEL, max_tokens=1024, messages=user(QUESTION), stream=True
    )
    events = list(stream)
    assert [e.type for e in events[:2]] == ["message_start", "content_block_start"]
    assert events[0].message.stop_reason is None
    assert events[1].content_block.type == "text"
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas and all(e.delta.type == "text_delta" and e.index == 0 for e in deltas)
    message_delta = events[-2]
    assert message_delta.type == "message_delta"
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.usage.output_tokens == count_tokens("".join(e.delta.text for e in deltas))
    assert events[-1].type == "message_stop"


def test_streamed_and_whole_replies_to_the_same_request_are_identical(client):
    whole = client.messages.create(model=MODEL, max_tokens=1024, messages=user(QUESTION))
    with client.messages.stream(model=MODEL, max_tokens=1024, messages=user(QUESTION)) as stream:
        streamed = stream.get_final_message()
    assert whole.content[0].text == streamed.content[0].text
    assert whole.usage.output_tokens == streamed.usage.output_tokens
    assert whole.stop_reason == "end_turn"
    assert whole._request_id and whole._request_id != stream.request_id


async def test_thinking_block_streams_thinking_then_signature_before_the_text(async_client):
    async with async_client.messages.stream(
        model=MODEL,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=user("Explain how database indexes work"),
    ) as stream:
        helper_types = [event.type async for event in stream]
        final = await stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking.startswith("The user is asking")
    assert thinking.signature
    assert text.type == "text" and "index" in text.text.lower()
    assert helper_types.index("signature") < helper_types.index("text")
    assert helper_types.index("thinking") < helper_types.index("signature")
    assert final.usage.output_tokens == count_tokens(thinking.thinking) + count_tokens(text.text)


def test_tool_use_streams_input_json_and_stops_for_the_tool(client):
    with client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        messages=user("What's the weather in Paris right now?"),
    ) as stream:
        snapshots = [event.snapshot for event in stream if event.type == "input_json"]
        final = stream.get_final_message()
    tool_use = final.content[-1]
    assert final.stop_reason == "tool_use"
    assert tool_use.type == "tool_use" and tool_use.name == "get_weather"
    assert tool_use.input == {"location": "Paris"}
    assert tool_use.id.startswith("toolu_")
    assert snapshots[-1] == {"location": "Paris"}

    answer = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        messages=[
            *user("What's the weather in Paris right now?"),
            {"role": "assistant", "content": [block.model_dump() for block in final.content]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_use.id,
                        "content": '{"temperature_c": 18, "conditions": "light rain"}',
                    }
                ],
            },
        ],
    )
    assert answer.stop_reason == "end_turn"
    assert "light rain" in answer.content[0].text and "get_weather" in answer.content[0].text


def test_prompt_without_a_matching_tool_gets_plain_text(client):
    message = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        messages=user("Tell me about git rebase"),
    )
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]


async def test_max_tokens_cuts_the_reply_and_says_so(async_client):
    async with async_client.messages.stream(
        model=MODEL, max_tokens=7, messages=user(QUESTION)
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 7 == count_tokens(final.content[0].text)


def test_stop_sequence_ends_the_reply_before_it(client):
    with client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        stop_sequences=["```"],
        messages=user("Write a Python function to compute fibonacci numbers"),
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == "```"
    assert "```" not in final.content[0].text
    assert final.content[0].text.rstrip().endswith(":")


def test_reply_depends_on_history_and_system_prompt(client):
    history = [
        {"role": "user", "content": "My name is Ada and I like sailing."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "Tell me about git branches"},
        {"role": "assistant", "content": "Branches are cheap pointers to commits."},
    ]
    first = client.messages.create(
        model=MODEL, max_tokens=1024, messages=[*history, *user("What was my first message?")]
    )
    assert "My name is Ada and I like sailing." in first.content[0].text
    name = client.messages.create(
        model=MODEL, max_tokens=1024, messages=[*history, *user("What is my name?")]
    )
    assert name.content[0].text == "Your name is Ada."
    system = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        system="You are a pirate. Keep answers short.",
        messages=user("What is your system prompt?"),
    )
    assert "You are a pirate. Keep answers short." in system.content[0].text


def test_title_request_gets_a_few_words_without_quotes(client):
    message = client.messages.create(
        model=MODEL,
        max_tokens=30,
        messages=[
            *user("How do I reverse a linked list in Python?"),
            {"role": "assistant", "content": "Walk the list and flip each next pointer."},
            *user("Reply with a short title (max 6 words) for this conversation."),
        ],
    )
    title = message.content[0].text
    assert 1 <= len(title.split()) <= 6
    assert '"' not in title and "\n" not in title
    assert "Linked" in title or "Reverse" in title


def test_say_exactly_answers_verbatim(client):
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=user("Say exactly: the quick brown fox")
    )
    assert message.content[0].text == "the quick brown fox"


def test_models_and_count_tokens(client):
    models = client.models.list()
    ids = [model.id for model in models.data]
    assert ids[0] == "claude-sonnet-5-5"
    assert {"claude-haiku-5-5", "claude-opus-5-5"} <= set(ids)
    assert client.models.retrieve("claude-haiku-5-5").display_name == "Claude Haiku 5.5"
    short = client.messages.count_tokens(model=MODEL, messages=user("hi"))
    longer = client.messages.count_tokens(model=MODEL, messages=user("hi " * 50))
    assert 0 < short.input_tokens < longer.input_tokens
    created = client.messages.create(model=MODEL, max_tokens=100, messages=user("hi " * 50))
    assert created.usage.input_tokens == longer.input_tokens


def test_every_response_carries_a_request_id(anthropic_server):
    responses = [
        httpx.get(f"{anthropic_server.base_url}/v1/models", headers={"x-api-key": "k"}),
        httpx.get(f"{anthropic_server.base_url}/v1/nowhere"),
        httpx.post(f"{anthropic_server.base_url}/v1/messages", content=b"{"),
    ]
    for response in responses:
        assert response.headers["request-id"].startswith("req_")
    assert responses[1].json()["error"]["type"] == "not_found_error"
    assert responses[1].json()["request_id"] == responses[1].headers["request-id"]


async def test_async_create_stream_with_a_forced_tool_sends_input_json_deltas(async_client):
    stream = await async_client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=user("Is it raining in Tokyo?"),
        stream=True,
    )
    events = [event async for event in stream]
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [block.type for block in starts] == ["tool_use"]
    fragments = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(fragments) > 1
    assert json.loads("".join(fragments)) == {"location": "Tokyo"}
    assert events[-2].delta.stop_reason == "tool_use"


async def test_async_whole_message_create(async_client):
    message = await async_client.messages.create(
        model="claude-haiku-5-5", max_tokens=200, messages=user("Write a haiku about the sea")
    )
    assert message.model == "claude-haiku-5-5"
    assert len(message.content[0].text.splitlines()) == 3
    assert message.usage.output_tokens == count_tokens(message.content[0].text)


def test_responses_pass_the_sdks_strict_validation(anthropic_server):
    strict = anthropic.Anthropic(
        base_url=anthropic_server.base_url,
        api_key="test-key",
        max_retries=0,
        _strict_response_validation=True,
    )
    prompt = user("What's the weather in Paris?")
    thinking = strict.messages.create(
        model=MODEL,
        max_tokens=3000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=prompt,
    )
    assert [block.type for block in thinking.content] == ["thinking", "text"]
    tool = strict.messages.create(
        model=MODEL, max_tokens=500, tools=[WEATHER_TOOL], messages=prompt
    )
    assert [block.type for block in tool.content] == ["text", "tool_use"]
    models = strict.models.list().data
    assert {model.lifecycle for model in models} == {"active", "deprecated"}
    assert strict.models.retrieve("claude-opus-5-5").line == "opus"
