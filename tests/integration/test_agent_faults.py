"""Model failures as a user meets them: retried while devices see `retrying`, or a clear error."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations import events
from tests.agent_fixtures import PATTERNS, lifecycle_ably_config, stored_reply


@pytest.fixture
def agent_ably_config():
    # The agent's key may subscribe to [meta]channel.lifecycle, as a production key should.
    return lifecycle_ably_config()


@pytest.mark.parametrize("status", ["429=0.05", "529"])
async def test_rate_limits_and_overload_are_retried_and_devices_see_it(
    status, start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.inject_fault(status, count=2)
    await asyncio.to_thread(start_agent)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: Third time lucky.")
    reply = await phone.final_reply(prompt_id)
    assert (reply.status, reply.text) == ("complete", "Third time lucky.")
    assert [r.status for r in anthropic_server.messages_requests] == [int(status[:3])] * 2 + [200]
    assert "retrying" in phone.agent_status_history


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_a_server_error_that_persists_ends_the_reply_with_an_error_the_user_can_retry(
    pattern, start_agent, devices, alice, conversation, anthropic_server
):
    anthropic_server.inject_fault("500", count=4)
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern, model_attempts=4)
    phone = await devices(alice, conversation)
    prompt_id = await phone.prompt("Say exactly: never")
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.ERROR
    assert "internal error" in reply.error and "try again" in reply.error
    assert len(anthropic_server.messages_requests) == 4
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.error) == ("error", reply.error)
    # Retrying is just sending again.
    again = await phone.prompt("Say exactly: Works now.")
    assert (await phone.final_reply(again)).text == "Works now."


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize(
    ("fault", "expected"),
    [("midstream-error", "part-way"), ("drop", "dropped"), ("eof", "dropped")],
)
async def test_a_stream_that_breaks_part_way_keeps_the_partial_text_and_says_why(
    pattern, fault, expected, start_agent, devices, alice, conversation, anthropic_server
):
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern)
    phone = await devices(alice, conversation)
    text = " ".join(f"word{i}" for i in range(200)) + "."
    prompt_id = await phone.prompt(f"Say exactly: {text} [[fault:{fault}]]")
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.ERROR
    assert expected in reply.error
    assert reply.text and text.startswith(reply.text) and reply.text != text
    # Broken streams are not retried: the user decides whether to send again.
    assert len(anthropic_server.messages_requests) == 1
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.text) == ("error", reply.text)


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_a_stream_that_goes_silent_is_ended_and_the_user_can_send_again(
    pattern, start_agent, devices, alice, conversation, anthropic_server
):
    """The stall watchdog: a stream sending nothing for `stall_timeout` is a dead stream."""
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern, stall_timeout=2.0)
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    text = " ".join(f"word{i}" for i in range(100)) + "."
    prompt_id = await phone.prompt(f"Say exactly: {text} [[fault:stall=30]]")
    replies = [await device.final_reply(prompt_id) for device in (phone, laptop)]
    for reply in replies:
        assert reply.status == events.Status.ERROR
        assert "stopped responding" in reply.error and "again" in reply.error
        # The text that arrived before the silence is kept on every device.
        assert reply.text and text.startswith(reply.text) and reply.text != text
    assert replies[0].text == replies[1].text
    # The HTTP stream was closed, so the model stops generating (and billing).
    assert await anthropic_server.wait_for_aborted_async(count=1)
    await agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    assert (stored.status, stored.text) == ("error", replies[0].text)

    retry_id = await laptop.prompt("Say exactly: Back again.")
    assert (await phone.final_reply(retry_id)).text == "Back again."
