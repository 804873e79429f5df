"""Issue 16 at the agent: reply versions claimed once, the path announced, context from the path."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from ably.types.message import Message as AblyMessage
from asgiref.sync import sync_to_async

from conversations import events
from conversations.models import Message
from tests.agent_fixtures import PATTERNS


async def regenerate(device, prompt_id: str) -> str:
    request = events.Regenerate(prompt_id=prompt_id, request_id=str(uuid.uuid4()))
    await device.channel.publish(
        AblyMessage(name=str(request.name), data=request.data(), extras=request.extras())
    )
    return request.request_id


async def new_version(device, prompt_id: str, known: set[str]):
    """The next reply version of `prompt_id` (one not in `known`), once final."""
    return await device.wait_for(
        lambda: next(
            (
                r
                for r in device.replies.values()
                if r.prompt_id == prompt_id and r.response_id not in known and r.final
            ),
            None,
        )
    )


def last_path(device) -> list[str]:
    paths = [m for m in device.received if m.name == events.Name.PATH]
    return json.loads(paths[-1].data) if paths else []


@sync_to_async
def stored(conversation):
    return list(Message.objects.filter(conversation=conversation).order_by("created_at", "id"))


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_regenerate_makes_versions_once_with_two_agents_and_context_follows_the_path(
    pattern, start_agent, devices, alice, conversation, anthropic_server
):
    await asyncio.to_thread(start_agent, streaming_pattern=pattern, agent_id="versions-a")
    await asyncio.to_thread(start_agent, streaming_pattern=pattern, agent_id="versions-b")
    laptop = await devices(alice, conversation)
    phone = await devices(alice, conversation)
    prompt_id = await laptop.prompt("Say exactly: the first version")
    first = await phone.final_reply(prompt_id)
    for _ in range(2):
        known = set(phone.replies)
        await regenerate(laptop, prompt_id)
        latest = await new_version(phone, prompt_id, known)
        assert latest.status == "complete"
        # Every device hears the new version is the shown path.
        await phone.wait_for(lambda newest=latest.response_id: last_path(phone)[-1:] == [newest])
    messages = await stored(conversation)
    assert [m.role for m in messages].count("user") == 1
    assert [m.role for m in messages].count("assistant") == 3  # exactly once per request
    # A follow-up that continues version one (as a device showing it sends it).
    follow_up = events.Prompt(
        prompt_id=str(uuid.uuid4()), text="Say exactly: after one", parent_id=first.response_id
    )
    await laptop.channel.publish(
        AblyMessage(name="prompt", data=follow_up.data(), extras=follow_up.extras())
    )
    await phone.final_reply(follow_up.prompt_id)
    sent = anthropic_server.messages_requests[-1].body["messages"]
    assert len(sent) == 3  # the path only: not the two other versions
    assert sent[1]["role"] == "assistant"
    assert "the first version" in json.dumps(sent[1]["content"])
    await phone.wait_for(lambda: last_path(phone)[:2] == [prompt_id, first.response_id])


async def test_retry_after_an_overload_is_a_second_version_of_the_same_prompt(
    start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.inject_fault("529", count=10)
    await asyncio.to_thread(start_agent, model_attempts=1)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: second time")
    failed = await phone.final_reply(prompt_id)
    assert failed.status == "error"
    anthropic_server.clear_faults()
    await regenerate(phone, prompt_id)
    retried = await new_version(phone, prompt_id, {failed.response_id})
    assert (retried.status, retried.text) == ("complete", "second time")
    messages = await stored(conversation)
    assert [(m.role, str(m.prompt_id)) for m in messages] == [
        ("user", prompt_id),
        ("assistant", prompt_id),
        ("assistant", prompt_id),
    ]


async def test_a_regenerate_while_the_reply_streams_waits_for_it_and_cancels_nothing(
    start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.set_pacing(ttft=0.05, tokens_per_second=60)
    await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: " + " ".join(["steady"] * 60))
    streaming = await phone.streaming(prompt_id)
    await regenerate(phone, prompt_id)
    latest = await new_version(phone, prompt_id, {streaming.response_id})
    first = phone.replies[streaming.response_id]
    assert (first.status, latest.status) == ("complete", "complete")
    # The documented policy: queued behind the reply in progress, never cancelling it.
    order = [
        (m.name, (m.extras or {}).get("headers", {}).get("responseId"))
        for m in phone.received
        if m.name in (events.Name.START, events.Name.STOP)
    ]
    assert order.index((events.Name.STOP, first.response_id)) < order.index(
        (events.Name.START, latest.response_id)
    )
