"""Deadlines, permanent Ably errors and reply ids the agent alone chooses (issue 13).

- A model that never sends response headers is reported once the stall timeout has passed,
  without a second attempt that would wait it out again.
- When the realtime service has lost a reply's message (appends and updates answer 40400),
  the agent publishes the whole text as a new message instead of retrying what cannot work.
- A device that publishes a `response` under an id derived from `start` cannot pre-empt the
  agent's message.
- Two processes with the same `--agent-id`: the second is refused and the first one's reply
  is untouched.
"""

from __future__ import annotations

import asyncio

from ably.types.message import Message as AblyMessage
from asgiref.sync import sync_to_async
from django.conf import settings

from conversations import events
from conversations.models import Conversation
from tests.agent_fixtures import stored_reply

LONG_TEXT = " ".join(f"word{i}" for i in range(150))


async def test_a_model_that_never_answers_is_reported_within_the_stall_timeout(
    start_agent, devices, alice, conversation, anthropic_server
):
    await asyncio.to_thread(start_agent, stall_timeout=2.0, model_attempts=4)
    phone = await devices(alice, conversation)
    # No response headers for 60 s on every attempt.
    prompt_id = await phone.prompt("Say exactly: too late [[fault:hang=60]]")
    # Four attempts each waiting out the stall timeout would take 8 s and more.
    reply = await phone.final_reply(prompt_id, timeout=7)
    assert reply.status == events.Status.ERROR
    assert "did not respond in time" in reply.error
    assert len(anthropic_server.messages_requests) == 1
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.error) == ("error", reply.error)


async def test_a_reply_whose_message_the_realtime_service_lost_is_published_again_whole(
    stand_ins, start_agent, devices, alice, conversation, anthropic_server
):
    ably_server, _ = stand_ins
    anthropic_server.set_pacing(tokens_per_second=40)
    agent = await asyncio.to_thread(
        start_agent, streaming_pattern="message-per-response", publish_deadline=60.0
    )
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(prompt_id)

    def forget_messages() -> None:
        # As after a restart without its state: the reply's message is unknown to Ably now.
        channel = ably_server.hub.find_channel("devapp", conversation.channel_name)
        channel.by_serial.clear()

    before = len(phone.reply_for(prompt_id).text)
    ably_server.call(forget_messages)

    # The message is re-created whole while the model still writes: devices do not wait for
    # the end of the reply (nor for a repair to give up on 40400s) to see the text go on.
    def grown_while_streaming() -> bool:
        reply = phone.reply_for(prompt_id)
        return reply is not None and not reply.final and len(reply.text) > before + 20

    await phone.wait_for(grown_while_streaming, timeout=10)
    reply = await phone.final_reply(prompt_id, timeout=20)
    assert (reply.status, reply.text) == ("complete", LONG_TEXT)
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.text) == ("complete", LONG_TEXT)


async def test_a_device_cannot_pre_empt_the_agents_reply_message_with_a_guessed_id(
    start_agent, devices, alice, conversation, anthropic_server
):
    # Time between `start` and the first text for the device to strike first.
    anthropic_server.set_pacing(ttft=0.5)
    await asyncio.to_thread(start_agent, streaming_pattern="message-per-response")
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    guessed: list[str] = []

    async def pre_empt(message: AblyMessage) -> None:
        if message.client_id != settings.ABLY_AGENT_CLIENT_ID:
            return
        headers = events.ReplyHeaders.from_extras(message.extras)
        chunk = events.ResponseChunk(headers, events.Part.TEXT, "")
        for guess in (
            f"{headers.response_id}:{events.Part.TEXT}",
            f"{headers.response_id}:{events.Part.TEXT}:repair",
            headers.response_id,
            f"{headers.response_id}:0",
        ):
            guessed.append(guess)
            await phone.channel.publish(
                AblyMessage(name="response", data="", extras=chunk.extras(), id=guess)
            )

    await phone.channel.subscribe(events.Name.START, lambda m: asyncio.ensure_future(pre_empt(m)))
    prompt_id = await phone.prompt("Say exactly: The agent's own words.")
    reply = await laptop.final_reply(prompt_id)
    assert guessed
    assert (reply.status, reply.text) == ("complete", "The agent's own words.")
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert stored.text == reply.text


async def test_a_second_process_with_a_running_agents_id_is_refused_and_changes_nothing(
    agent_processes, devices, alice, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=60)
    conversation = await sync_to_async(Conversation.objects.create)(owner=alice)
    first = agent_processes("twin")
    await first.await_ready()
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    await phone.streaming(prompt_id)

    second = agent_processes("twin")
    exit_code = await asyncio.to_thread(second.process.wait, 60)
    assert exit_code != 0
    assert "agent id 'twin' is in use by a running agent" in second.output()

    reply = await phone.final_reply(prompt_id, timeout=30)
    assert (reply.status, reply.text) == ("complete", LONG_TEXT)
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.text) == ("complete", LONG_TEXT)
    assert await asyncio.to_thread(first.terminate) == 0
