"""The Ably stand-in restarts mid-reply: agent and devices reconnect, the reply ends properly.

`EmulatorServer.restart()` closes every socket and comes back on the same port with the same
state, as an Ably front-end node restarting does to its clients (connections resume within the
2-minute TTL). The agent's in-flight publishes fail with the transport (ably-python fails
pending messages on disconnect, RTN7e); its documented fallback must still produce a whole reply.
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message

TEXT = " ".join(f"piece{i}" for i in range(150))


# One pattern here (reconnecting takes ~15 s of ably-python's retry timer per run); the other
# is exercised by `python -m soak restart` with STREAMING_PATTERN=message-per-token.
@pytest.mark.parametrize("pattern", ["message-per-response"])
async def test_a_stand_in_restart_mid_reply_ends_in_a_whole_reply_on_every_device(
    pattern, stand_ins, start_agent, devices, alice, conversation
):
    ably_server, anthropic_server = stand_ins
    anthropic_server.set_pacing(ttft=0.05, tokens_per_second=60)
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern)
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {TEXT}")
    partial = await laptop.streaming(prompt_id)
    assert partial.text != TEXT

    await asyncio.to_thread(ably_server.restart)

    for device in (phone, laptop):
        reply = await device.final_reply(prompt_id, timeout=40)
        assert reply.status == "complete", (reply.status, reply.error)
        assert reply.text == TEXT
    await agent.wait_idle(timeout=40)
    stored = await sync_to_async(Message.objects.get)(prompt_id=prompt_id, role="assistant")
    assert (stored.status, stored.text) == ("complete", TEXT)

    # Everyone is connected again: a new prompt goes through end to end.
    follow_up = await laptop.prompt("Say exactly: After the restart.")
    assert (await phone.final_reply(follow_up, timeout=40)).text == "After the restart."
