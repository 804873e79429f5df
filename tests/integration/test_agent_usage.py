"""Usage stored for every reply: the API's count when the stream reported it, otherwise an
estimate from the text streamed, marked as such (Stop, a failure part-way, shutdown)."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async

from conversations import events
from conversations.agent.model import estimate_output_tokens
from conversations.models import Message
from emulators.anthropic.core import count_tokens
from tests.agent_fixtures import stored_reply

LONG_TEXT = " ".join(f"word{i}" for i in range(300))


async def test_a_complete_reply_stores_the_apis_count(start_agent, devices, alice, conversation):
    agent = await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: Counted by the API, not guessed.")
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.COMPLETE
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert stored.output_tokens == count_tokens("Counted by the API, not guessed.")
    assert not stored.usage_estimated
    assert stored.input_tokens > 0


async def test_a_stopped_reply_stores_an_estimate_of_what_was_streamed(
    start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.set_pacing(tokens_per_second=40)
    agent = await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {LONG_TEXT}")
    # Stop once a good part of the reply has streamed: its cost is well above one token.
    streaming = await phone.wait_for(
        lambda: (r := phone.reply_for(prompt_id)) and len(r.text) > 60 and r
    )
    await phone.cancel(response_id=streaming.response_id)
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.CANCELLED
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert stored.status == Message.Status.CANCELLED
    assert stored.usage_estimated
    # At least what the user saw (the model may have sent a little more before the close).
    assert stored.output_tokens >= estimate_output_tokens(stored.text) > 10
    assert stored.output_tokens < estimate_output_tokens(LONG_TEXT)
    assert stored.input_tokens > 0


async def test_a_reply_failing_part_way_stores_an_estimate(
    start_agent, devices, alice, conversation
):
    agent = await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"[[fault:midstream-error]] Say exactly: {LONG_TEXT}")
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.ERROR
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert stored.text and stored.usage_estimated
    assert stored.output_tokens == estimate_output_tokens(stored.text)
