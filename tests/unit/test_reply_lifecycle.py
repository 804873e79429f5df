"""A whole reply's lifecycle against a fake channel, store and model: no sockets.

`ReplyRun` is driven only through its `ReplyContext`, so here the channel records what devices
would receive, the store records the one outcome write, and the model is the real
`model.open_stream` over a scripted Anthropic client (its retries and its SSE parsing are the
product's). What is asserted is what a device shows and what a reload shows.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx2
import pytest
from django.utils import timezone

from conversations import events
from conversations.agent import model as claude, store
from conversations.agent.config import AgentConfig
from conversations.agent.reply import (
    INTERRUPTED_MESSAGE,
    Outcome,
    ReplyContext,
    ReplyRun,
)
from conversations.agent.streaming import RateLimiter
from conversations.models import Message

# Names the reply publishes that are not its text.
CONTROL_NAMES = {events.Name.START, events.Name.STOP, events.Name.PATH}


@dataclass
class Sent:
    kind: str  # publish, append, update
    name: str
    data: str
    headers: dict[str, Any]


class FakeChannel:
    """What devices would receive, in order; acknowledges everything at once."""

    name = "ai:fake"

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.statuses: list[str] = []

    def _record(self, kind: str, message: Any) -> None:
        headers = dict((message.extras or {}).get("headers") or {})
        data = message.data if isinstance(message.data, str) else ""
        self.sent.append(Sent(kind, str(message.name), data, headers))

    async def publish(self, message: Any) -> SimpleNamespace:
        self._record("publish", message)
        return SimpleNamespace(serials=[f"serial-{len(self.sent)}"])

    async def append_message(self, message: Any) -> None:
        self._record("append", message)

    async def update_message(self, message: Any) -> None:
        self._record("update", message)

    async def publish_until(self, event: Any, deadline: float) -> None:
        await self.publish(
            SimpleNamespace(name=event.name, data=event.data(), extras=event.extras())
        )

    async def set_status(self, status: events.AgentStatus) -> None:
        self.statuses.append(str(status))

    # --- what a device makes of it ---

    def names(self) -> list[str]:
        return [s.name for s in self.sent]

    def control_messages(self) -> list[str]:
        return [s.name for s in self.sent if s.name in CONTROL_NAMES]

    def text_shown(self) -> str:
        text = ""
        for sent in self.sent:
            if sent.headers.get("part", events.Part.TEXT) != events.Part.TEXT:
                continue
            if sent.name == events.Name.RESPONSE:
                text = text + sent.data if sent.kind == "append" else sent.data
            elif sent.name == events.Name.TOKEN:
                text += sent.data
        return text

    def stop(self) -> Sent:
        [stop] = [s for s in self.sent if s.name == events.Name.STOP]
        return stop


@dataclass
class FakeStore:
    """The reply's database: one claim, one outcome write (both recorded)."""

    reply: Message
    claims: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    already_settled: bool = False

    async def claim(self, prompt: Message, **_: Any) -> store.Claim:
        self.claims += 1
        context = store.ModelContext(
            system="Be brief.",
            messages=[{"role": "user", "content": prompt.text}],
            dropped_turns=0,
            first_exchange=True,
            needs_title=False,
        )
        path = events.Path(ids=(str(prompt.prompt_id), str(self.reply.response_id)))
        return store.Claim(reply=self.reply, context=context, path=path)

    async def finish(self, reply: Message, outcome: Outcome) -> bool:
        self.outcomes.append(outcome)
        return not self.already_settled


def sse(event: str, data: dict[str, Any]) -> list[str]:
    return [f"event: {event}", f"data: {json.dumps(data)}", ""]


def model_events(
    words: list[str], *, stop: bool = True, error_after: int | None = None
) -> list[str]:
    lines = sse(
        "message_start",
        {"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}},
    )
    for index, word in enumerate(words):
        if error_after is not None and index == error_after:
            return lines + sse(
                "error", {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
            )
        lines += sse(
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": word}},
        )
    if stop:
        lines += sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": len(words)},
            },
        )
        lines += sse("message_stop", {"type": "message_stop"})
    return lines


class ScriptedResponse:
    def __init__(self, lines: list[str], pause: asyncio.Event | None) -> None:
        self.lines = lines
        self.pause = pause
        request = httpx2.Request("POST", "http://model.invalid/v1/messages")
        self.http_response = httpx2.Response(200, request=request)
        self.closed = False

    async def iter_lines(self) -> AsyncIterator[str]:
        for index, line in enumerate(self.lines):
            if self.pause is not None and index == len(self.lines) // 2:
                await self.pause.wait()  # mid-stream until the test lets it go on
            yield line
            await asyncio.sleep(0)


class ScriptedAnthropic:
    """An Anthropic client whose streaming requests fail `overloads` times (529) and then
    answer with `lines`; `pause` holds the stream half-way."""

    def __init__(self, lines: list[str], *, overloads: int = 0) -> None:
        self.lines = lines
        self.overloads = overloads
        self.requests = 0
        self.pause: asyncio.Event | None = None
        self.responses: list[ScriptedResponse] = []
        self.messages = SimpleNamespace(
            with_streaming_response=SimpleNamespace(create=self._create)
        )

    def _create(self, **request: Any) -> Any:
        client = self

        class Manager:
            async def __aenter__(self) -> ScriptedResponse:
                client.requests += 1
                if client.requests <= client.overloads:
                    request = httpx2.Request("POST", "http://model.invalid/v1/messages")
                    response = httpx2.Response(529, request=request)
                    body = {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
                    raise anthropic.AsyncAnthropic(api_key="k")._make_status_error(
                        "overloaded", body=body, response=response
                    )
                answer = ScriptedResponse(client.lines, client.pause)
                client.responses.append(answer)
                return answer

            async def __aexit__(self, *exc: object) -> None:
                client.responses[-1].closed = True

        return Manager()


def config(**overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "agent_id": "unit-agent",
        "ably_key": "app.key:secret",
        "ably_endpoint": "",
        "agent_client_id": "agent",
        "anthropic_api_key": "k",
        "anthropic_base_url": "http://model.invalid",
        "model": "claude-test",
        "max_tokens": 256,
        "system_prompt": "Be brief.",
        "context_token_budget": 10_000,
        "flush_window": 0.0,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.02,
        "stall_timeout": 5.0,
        "generate_titles": False,
        "prompt_rate_limit_per_minute": 0,
    }
    values.update(overrides)
    return AgentConfig(**values)


@dataclass
class Harness:
    channel: FakeChannel
    store: FakeStore
    model: ScriptedAnthropic
    context: ReplyContext
    prompt: Message
    early_cancels: set[str] = field(default_factory=set)

    def run(self) -> ReplyRun:
        return ReplyRun(self.context, self.prompt)


def harness(
    model: ScriptedAnthropic,
    *,
    settings: AgentConfig | None = None,
    message_per_token: bool = False,
    hard_deadline: Callable[[], float] = lambda: float("inf"),
) -> Harness:
    settings = settings or config(
        streaming_pattern="message-per-token" if message_per_token else "message-per-response"
    )
    conversation_id = str(uuid.uuid4())
    prompt = Message(
        conversation_id=conversation_id,
        role=Message.Role.USER,
        prompt_id=uuid.uuid4(),
        text="Say something.",
        client_id="user-1",
        created_at=timezone.now(),
    )
    reply = Message(
        pk=7, conversation_id=conversation_id, role=Message.Role.ASSISTANT, response_id=uuid.uuid4()
    )
    channel = FakeChannel()
    fake_store = FakeStore(reply)
    early: set[str] = set()

    def open_model_stream(request: dict[str, Any], on_retry: Any) -> Any:
        return claude.open_stream(model, request, settings, on_retry)  # type: ignore[arg-type]

    context = ReplyContext(
        conversation_id=conversation_id,
        config=settings,
        channel=channel,
        limiter=RateLimiter(1000),
        publish_until=channel.publish_until,
        set_status=channel.set_status,
        store=fake_store,
        open_model_stream=open_model_stream,
        take_early_cancel=lambda response_id, prompt_id: prompt_id in early,
        hard_deadline=hard_deadline,
    )
    return Harness(channel, fake_store, model, context, prompt, early)


WORDS = ["Hello", " there,", " how", " are", " you?"]


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("message_per_token", [False, True], ids=["per-response", "per-token"])
async def test_a_reply_starts_streams_its_text_stops_and_writes_its_outcome_once(
    message_per_token: bool,
) -> None:
    test = harness(ScriptedAnthropic(model_events(WORDS)), message_per_token=message_per_token)
    await test.run().execute()

    names = test.channel.names()
    assert names[0] == events.Name.START and names[-1] == events.Name.STOP
    assert test.channel.text_shown() == "Hello there, how are you?"
    stop = test.channel.stop()
    assert stop.headers["status"] == events.Status.COMPLETE
    assert stop.headers["stopReason"] == "end_turn"
    [outcome] = test.store.outcomes
    assert (outcome.status, outcome.text, outcome.stop_reason) == (
        "complete",
        test.channel.text_shown(),
        "end_turn",
    )
    assert (outcome.input_tokens, outcome.output_tokens, outcome.usage_estimated) == (11, 5, False)
    assert outcome.first_token_at is not None
    # Nothing about the agent's status: devices read it from the reply itself.
    assert test.channel.statuses == []


async def test_a_reply_costs_three_control_messages_and_the_create_carries_its_first_text() -> None:
    test = harness(ScriptedAnthropic(model_events(WORDS)))
    await test.run().execute()
    assert test.channel.control_messages() == [
        events.Name.START,
        events.Name.PATH,
        events.Name.STOP,
    ]
    [create] = [
        s for s in test.channel.sent if s.name == events.Name.RESPONSE and s.kind == "publish"
    ]
    assert create.data.startswith("Hello")
    assert test.channel.statuses == []
    assert test.store.claims == 1 and len(test.store.outcomes) == 1


async def test_an_overloaded_model_shows_retrying_then_the_reply() -> None:
    model = ScriptedAnthropic(model_events(WORDS), overloads=2)
    test = harness(model)
    await test.run().execute()
    assert model.requests == 3
    # Retrying while the model is overloaded, then back (the reply shows the rest).
    assert test.channel.statuses == ["retrying", "idle"]
    assert test.channel.stop().headers["status"] == events.Status.COMPLETE
    assert test.channel.text_shown() == "Hello there, how are you?"
    assert len(test.store.outcomes) == 1


async def test_a_model_overloaded_for_good_ends_the_reply_as_an_error_and_clears_retrying() -> None:
    model = ScriptedAnthropic(model_events(WORDS), overloads=10)
    test = harness(model, settings=config(model_attempts=2))
    await test.run().execute()
    assert test.channel.statuses == ["retrying", "idle"]
    stop = test.channel.stop()
    assert stop.headers["status"] == events.Status.ERROR
    assert "overloaded" in stop.data
    [outcome] = test.store.outcomes
    assert outcome.status == events.Status.ERROR and outcome.text == ""


async def test_an_error_mid_stream_keeps_the_text_so_far_and_says_why() -> None:
    test = harness(ScriptedAnthropic(model_events(WORDS, error_after=2)))
    await test.run().execute()
    assert test.channel.text_shown() == "Hello there,"
    stop = test.channel.stop()
    assert stop.headers["status"] == events.Status.ERROR
    assert "part-way" in stop.data
    [outcome] = test.store.outcomes
    assert (outcome.status, outcome.text) == ("error", "Hello there,")


async def test_a_stream_that_ends_without_message_stop_is_an_error_with_its_text() -> None:
    test = harness(ScriptedAnthropic(model_events(WORDS, stop=False)))
    await test.run().execute()
    assert test.channel.stop().headers["status"] == events.Status.ERROR
    [outcome] = test.store.outcomes
    assert outcome.text == "Hello there, how are you?" and "dropped" in outcome.error


async def test_cancel_mid_stream_closes_the_model_stream_and_keeps_what_devices_saw() -> None:
    model = ScriptedAnthropic(model_events(WORDS))
    model.pause = asyncio.Event()
    test = harness(model)
    run = test.run()
    answering = asyncio.ensure_future(run.execute())
    await until(lambda: test.channel.text_shown())
    run.abort(events.Status.CANCELLED)
    await asyncio.wait_for(answering, 5)
    assert model.responses[0].closed  # the model stops generating (and billing)
    stop = test.channel.stop()
    assert stop.headers["status"] == events.Status.CANCELLED
    [outcome] = test.store.outcomes
    assert outcome.status == events.Status.CANCELLED
    assert outcome.text == test.channel.text_shown() != ""
    assert outcome.usage_estimated  # cut short before the API said how many


async def test_a_cancel_heard_before_the_claim_ends_the_reply_before_the_model_is_asked() -> None:
    model = ScriptedAnthropic(model_events(WORDS))
    test = harness(model)
    test.early_cancels.add(str(test.prompt.prompt_id))
    await test.run().execute()
    assert model.requests == 0
    assert test.channel.names() == [events.Name.START, events.Name.PATH, events.Name.STOP]
    assert test.channel.stop().headers["status"] == events.Status.CANCELLED
    assert [o.status for o in test.store.outcomes] == ["cancelled"]


async def test_shutdown_interrupts_a_reply_mid_stream() -> None:
    model = ScriptedAnthropic(model_events(WORDS))
    model.pause = asyncio.Event()
    test = harness(model)
    run = test.run()
    answering = asyncio.ensure_future(run.execute())
    await until(lambda: test.channel.text_shown())
    run.abort(events.Status.INTERRUPTED)
    await asyncio.wait_for(answering, 5)
    stop = test.channel.stop()
    assert stop.headers["status"] == events.Status.INTERRUPTED
    assert stop.data == INTERRUPTED_MESSAGE
    [outcome] = test.store.outcomes
    assert outcome.status == events.Status.INTERRUPTED and outcome.text


async def test_a_reply_another_process_settled_meanwhile_says_interrupted_as_the_database_does() -> (
    None
):
    test = harness(ScriptedAnthropic(model_events(WORDS)))
    test.store.already_settled = True
    await test.run().execute()
    stop = test.channel.stop()
    assert stop.headers["status"] == events.Status.INTERRUPTED
    assert len(test.store.outcomes) == 1


async def test_a_prompt_over_the_rate_limit_is_rejected_after_start_without_asking_the_model() -> (
    None
):
    model = ScriptedAnthropic(model_events(WORDS))
    test = harness(model, settings=config(prompt_rate_limit_per_minute=2))

    async def busy_claim(prompt: Message, **kwargs: Any) -> store.Claim:
        claim = await FakeStore.claim(test.store, prompt, **kwargs)
        return store.Claim(
            reply=claim.reply, context=claim.context, path=claim.path, recent_prompts=2
        )

    test.store.claim = busy_claim  # type: ignore[method-assign]
    await test.run().execute()
    assert model.requests == 0
    stop = test.channel.stop()
    assert stop.headers["status"] == events.Status.ERROR
    assert "faster than 2 a minute" in stop.data


async def test_a_reply_waits_for_an_earlier_reply_still_streaming_then_claims() -> None:
    test = harness(ScriptedAnthropic(model_events(WORDS)))
    earlier = Message(pk=3, role=Message.Role.ASSISTANT, agent_id="elsewhere")
    answers = [store.Claim(waiting_for=(earlier,)), store.Claim(waiting_for=(earlier,))]
    real_claim = test.store.claim
    waits: list[bool] = []

    async def claim(prompt: Message, **kwargs: Any) -> store.Claim:
        waits.append(kwargs["wait_for_earlier"])
        return answers.pop(0) if answers else await real_claim(prompt, **kwargs)

    test.store.claim = claim  # type: ignore[method-assign]
    await test.run().execute()
    assert waits == [True, True, True]
    assert test.channel.stop().headers["status"] == events.Status.COMPLETE


async def test_a_reply_answered_by_another_agent_publishes_nothing() -> None:
    model = ScriptedAnthropic(model_events(WORDS))
    test = harness(model)

    async def lost(prompt: Message, **kwargs: Any) -> store.Claim:
        return store.Claim()

    test.store.claim = lost  # type: ignore[method-assign]
    await test.run().execute()
    assert test.channel.sent == [] and test.store.outcomes == [] and model.requests == 0


async def test_the_rate_limit_counts_the_senders_prompts_in_the_minute_before_this_one() -> None:
    test = harness(
        ScriptedAnthropic(model_events(WORDS)), settings=config(prompt_rate_limit_per_minute=5)
    )
    real_claim = test.store.claim
    seen: list[datetime.datetime | None] = []

    async def claim(prompt: Message, **kwargs: Any) -> store.Claim:
        seen.append(kwargs["rate_window_start"])
        return await real_claim(prompt, **kwargs)

    test.store.claim = claim  # type: ignore[method-assign]
    await test.run().execute()
    assert seen == [test.prompt.created_at - datetime.timedelta(minutes=1)]
    assert test.channel.stop().headers["status"] == events.Status.COMPLETE
