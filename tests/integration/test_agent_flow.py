"""The agent end to end: ably-python devices, the real Agent, both stand-ins, both patterns."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import pytest
from ably.types.message import Message as AblyMessage
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from conversations import events, realtime
from conversations.models import Conversation, Message
from tests.agent_fixtures import LEFT, PATTERNS, lifecycle_ably_config, stored_reply


@pytest.fixture
def agent_ably_config():
    # The agent's key may subscribe to [meta]channel.lifecycle, as a production key should.
    return lifecycle_ably_config()


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_a_prompt_gets_a_streamed_reply_that_is_stored(
    pattern, start_agent, devices, alice, conversation, caplog
):
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: Hello from the agent, streamed in pieces.")
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.COMPLETE
    assert reply.text == "Hello from the agent, streamed in pieces."
    assert reply.names[0] == events.Name.START and reply.names[-1] == events.Name.STOP
    expected = events.Name.TOKEN if pattern == "message-per-token" else events.Name.RESPONSE
    assert expected in reply.names
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert stored.text == reply.text
    assert stored.status == Message.Status.COMPLETE
    assert str(stored.response_id) == reply.response_id
    assert stored.stop_reason == "end_turn"
    assert stored.output_tokens > 0 and stored.input_tokens > 0
    assert stored.first_token_at is not None and stored.completed_at is not None
    prompt = await sync_to_async(Message.objects.get)(prompt_id=prompt_id, role="user")
    assert prompt.text.startswith("Say exactly") and prompt.client_id == phone.client_id
    # One operations log line per reply.
    [line] = [r.getMessage() for r in caplog.records if r.name == "conversations.agent.replies"]
    assert f"conversation={conversation.pk}" in line and "status=complete" in line
    for field in ("ttft_ms=", "output_tokens=", "duration_ms="):
        assert field in line


async def test_a_finished_reply_moves_its_conversation_up_on_the_owners_devices(
    start_agent, devices, alice, conversation, stand_ins
):
    """The reply's list change (`activity`) reaches the owner's user channel from the agent's
    own event loop (`Agent.publish_after_commit`), published as the server."""
    from emulators.ably.testing import ably_realtime

    ably_server, _ = stand_ins
    token = await sync_to_async(realtime.create_token)(alice)
    client = ably_realtime(ably_server, token=token)
    received: asyncio.Queue[Any] = asyncio.Queue()
    try:
        user_channel = client.channels.get(events.user_channel(realtime.client_id_for_user(alice)))
        await asyncio.wait_for(user_channel.subscribe(received.put_nowait), 10)
        agent = await asyncio.to_thread(start_agent)
        phone = await devices(alice, conversation)
        prompt_id = await phone.prompt("Say exactly: Move me up the list.")
        reply = await phone.final_reply(prompt_id)
        assert reply.status == events.Status.COMPLETE
        await agent.wait_idle()
        message = await asyncio.wait_for(received.get(), 10)
        assert message.name == events.Name.CONVERSATION
        assert message.client_id == settings.ABLY_SERVER_CLIENT_ID
        assert message.data["action"] == events.ListAction.ACTIVITY
        assert message.data["id"] == str(conversation.pk)
    finally:
        await client.close()


async def test_a_reply_cut_short_by_max_tokens_says_so_and_counts_its_tokens(
    start_agent, devices, alice, conversation, anthropic_server
):
    agent = await asyncio.to_thread(start_agent, max_tokens=12)
    phone = await devices(alice, conversation)
    long_text = " ".join(f"word{i}" for i in range(200))
    prompt_id = await phone.prompt(f"Say exactly: {long_text}")
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.stop_reason) == (events.Status.COMPLETE, "max_tokens")
    assert reply.text and long_text.startswith(reply.text)
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.text, stored.stop_reason, stored.output_tokens) == (
        reply.text,
        "max_tokens",
        12,
    )


async def new_conversation(owner) -> Conversation:
    return await sync_to_async(Conversation.objects.create)(owner=owner)


async def impostor(ably_server, client_id: str):
    """A client that holds the API key (all capabilities) but is identified as `client_id`."""
    from emulators.ably.testing import ably_realtime

    client = ably_realtime(
        ably_server, client_id=client_id, default_token_params={"client_id": client_id}
    )
    return client


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_a_device_that_publishes_the_instant_it_attaches_is_answered(
    pattern, start_agent, devices, alice
):
    # The agent is already running; the conversation is new, so only discovery can find it.
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern)
    conversation = await new_conversation(alice)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: Found you.")
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", "Found you.")
    await agent.wait_idle()
    assert await sync_to_async(Message.objects.filter(prompt_id=prompt_id).count)() == 2


async def test_prompts_sent_while_one_streams_are_answered_in_order_with_context(
    start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=200)
    await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    first = await phone.prompt("Say exactly: One, two, three, four, five, six, seven.")
    second = await phone.prompt("Say exactly: Second answer.")
    first_reply = await phone.final_reply(first)
    second_reply = await phone.final_reply(second)
    assert (first_reply.status, second_reply.status) == ("complete", "complete")
    # Queued, not concurrent: the second reply starts only after the first one stopped.
    names = [(m.name, (m.extras or {}).get("headers", {}).get("promptId")) for m in phone.received]
    assert names.index(("stop", first)) < names.index(("start", second))
    # And Claude saw the first exchange when answering the second.
    last_request = anthropic_server.messages_requests[-1].body
    assert [m["role"] for m in last_request["messages"]] == ["user", "assistant", "user"]
    # (as one text block, the prompt-cache breakpoint of the conversation so far)
    assert [b["text"] for b in last_request["messages"][1]["content"]] == [first_reply.text]


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_cancel_from_a_second_device_stops_the_model_and_keeps_the_partial_text(
    pattern, start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=40)
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern)
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    long_text = " ".join(f"word{i}" for i in range(300))
    prompt_id = await phone.prompt(f"Say exactly: {long_text}")
    streaming = await laptop.streaming(prompt_id)
    await laptop.cancel(response_id=streaming.response_id)
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.CANCELLED
    assert reply.text and long_text.startswith(reply.text) and reply.text != long_text
    # The HTTP stream to the model was closed, which is what stops generation.
    assert await anthropic_server.wait_for_aborted_async(count=1)
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert stored.status == Message.Status.CANCELLED
    assert stored.text == reply.text
    # Every device reaches the same final state.
    assert (await laptop.final_reply(prompt_id)).text == reply.text

    # Repeated and unknown cancels are harmless: the conversation carries on.
    await laptop.cancel(response_id=streaming.response_id)
    await laptop.cancel(response_id=str(uuid.uuid4()))
    await laptop.cancel(prompt_id=str(uuid.uuid4()))
    anthropic_server.set_pacing()
    again = await phone.prompt("Say exactly: Still here.")
    assert (await phone.final_reply(again)).text == "Still here."


async def test_a_cancel_sent_right_after_the_prompt_is_not_lost(
    start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=40)
    await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: " + "never finished " * 100)
    # By promptId: the device need not wait for `start` (or the agent may not have claimed yet).
    await laptop.cancel(prompt_id=prompt_id)
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.CANCELLED


async def test_forged_agent_messages_and_unauthorised_prompts_are_ignored(
    stand_ins, start_agent, devices, alice, bob, conversation
):
    ably_server, _ = stand_ins
    agent = await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    fake_response_id, fake_prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    forged = events.ReplyHeaders(fake_response_id, fake_prompt_id, "claude-fake")
    await phone.publish_raw("token", "I am the agent", events.Token(forged, "text", 0, "").extras())
    await phone.publish_raw("stop", "", events.Stop(forged, events.Status.COMPLETE).extras())

    bob_id = await sync_to_async(lambda: f"user-{bob.pk}")()
    outsiders = [await impostor(ably_server, bob_id), await impostor(ably_server, "agent")]
    outsider_prompts = []
    try:
        for outsider in outsiders:
            channel = outsider.channels.get(conversation.channel_name)
            prompt = events.Prompt(str(uuid.uuid4()), "Say exactly: I should not be answered.")
            await channel.publish(
                AblyMessage(name="prompt", data=prompt.data(), extras=prompt.extras())
            )
            outsider_prompts.append(prompt.prompt_id)
        # The agent handles a channel's messages in order: once this is answered, the
        # forgeries before it have been seen (and must have been ignored).
        real = await phone.prompt("Say exactly: Only this.")
        assert (await phone.final_reply(real)).text == "Only this."
    finally:
        for outsider in outsiders:
            await outsider.close()
    await agent.wait_idle()

    # Devices drop the forgeries: they carry the forger's clientId, not the agent's.
    assert {m.client_id for m in laptop.ignored} == {phone.client_id}
    assert fake_response_id not in laptop.replies
    for prompt_id in outsider_prompts:
        assert laptop.reply_for(prompt_id) is None
    stored = await sync_to_async(list)(Message.objects.values_list("prompt_id", "role"))
    assert {str(p) for p, _ in stored} == {real}


async def test_an_oversize_prompt_is_refused_with_a_clear_message_and_never_sent_to_claude(
    start_agent, devices, alice, conversation, anthropic_server
):
    await asyncio.to_thread(start_agent, max_prompt_chars=40)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: " + "x" * 100)
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.ERROR
    assert "too long" in reply.error and "40" in reply.error
    assert anthropic_server.messages_requests == []
    ok = await phone.prompt("Say exactly: short")
    assert (await phone.final_reply(ok)).status == "complete"


async def test_a_user_over_the_rate_limit_is_told_to_slow_down(
    start_agent, devices, alice, conversation, anthropic_server
):
    await asyncio.to_thread(start_agent, prompt_rate_limit_per_minute=2)
    phone = await devices(alice, conversation)
    replies = []
    for index in range(3):
        prompt_id = await phone.prompt(f"Say exactly: answer {index}")
        replies.append(await phone.final_reply(prompt_id))
    assert [r.status for r in replies] == ["complete", "complete", "error"]
    assert "faster than 2 a minute" in replies[2].error
    assert len(anthropic_server.messages_requests) == 2


async def test_agent_presence_shows_its_status_on_the_conversation_and_leaves_on_shutdown(
    start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=100)
    agent = await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    assert await phone.agent_statuses() == ["idle"]
    prompt_id = await phone.prompt("Say exactly: " + "busy " * 30)
    await phone.final_reply(prompt_id)
    await phone.wait_for(lambda: phone.agent_status_history[-1:] == ["idle"])
    history = phone.agent_status_history
    assert history.index("thinking") < history.index("streaming") < len(history) - 1
    await asyncio.to_thread(agent.stop)
    await phone.wait_for(lambda: phone.agent_status_history[-1:] == [LEFT])
    assert await phone.agent_statuses() == []


async def test_a_prompt_sent_while_no_agent_ran_is_answered_when_one_starts(
    start_agent, devices, alice
):
    # An old conversation (nothing recent in the database) that a device has open.
    conversation = await new_conversation(alice)
    long_ago = timezone.now() - datetime.timedelta(days=3)
    await Conversation.objects.filter(pk=conversation.pk).aupdate(updated_at=long_ago)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: Sorry for the wait.")
    await asyncio.to_thread(start_agent)
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", "Sorry for the wait.")
