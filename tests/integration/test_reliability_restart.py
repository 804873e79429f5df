"""The Ably stand-in restarts mid-reply: agent and devices reconnect, the reply ends properly.

`EmulatorServer.restart()` closes every socket and comes back on the same port with the same
state, as an Ably front-end node restarting does to its clients (connections resume within the
2-minute TTL). The agent's in-flight publishes fail with the transport (ably-python fails
pending messages on disconnect, RTN7e); its documented fallback must still produce a whole reply.

Restarted without its state (issue 13), the stand-in knows neither the connections (they come
back as new ones) nor the reply's message (appends and updates answer 40400): the agent must
still end the reply with the whole text on every device, without a burst over 50 msg/s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from conversations import realtime
from conversations.agent.ably_adapter import unsettled_sends
from conversations.models import Message
from emulators.ably.server import AblyApp, EmulatorServer
from soak.devices import RecoveringDevice
from tests.agent_fixtures import PATTERNS

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


def restart_without_state(server: EmulatorServer) -> None:
    """Close every socket and come back on the same port remembering nothing (same keys), as
    an Ably node that lost its state: no connection resumes, no earlier message exists."""
    server.stop()
    server.app = AblyApp(server.app.config)
    server.start()


@pytest.fixture
async def recovering_devices(stand_ins: Any) -> Any:
    """Factory: devices that recover like the page does when a connection cannot resume (a new
    connection, so an attach without RESUMED): from channel history. Whoever reconnects first,
    the agent or a device, the device ends with what the channel holds."""
    ably_server, _ = stand_ins
    opened: list[RecoveringDevice] = []

    async def open_device(user: Any, conversation: Any) -> RecoveringDevice:
        token = await sync_to_async(realtime.create_token)(user)
        device = RecoveringDevice(user, conversation.pk, ably_server.endpoint, token)
        opened.append(device)
        await device.attach()
        return device

    yield open_device
    for device in opened:
        await device.close()


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_a_stand_in_restarted_without_its_state_mid_reply_ends_whole_on_every_device(
    pattern, stand_ins, start_agent, recovering_devices, alice, conversation, caplog
):
    ably_server, anthropic_server = stand_ins
    # The model goes on writing through the outage: ~20 deltas a second the agent cannot send.
    anthropic_server.set_pacing(ttft=0.05, tokens_per_second=40)
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern, connections=1)
    phone = await recovering_devices(alice, conversation)
    laptop = await recovering_devices(alice, conversation)
    prompt_id = await phone.prompt(f"Say exactly: {TEXT}")
    partial = await laptop.streaming(prompt_id)
    assert partial.text != TEXT

    # As when the node dies: sends it took whose acks never reached the agent. ably-python
    # re-sends them on the next connection, which is a new one.
    [connection] = agent.agent.pool.connections
    client = connection.client
    assert ably_server.freeze_transport(client.connection.connection_manager.connection_id)

    def unanswered_sends() -> bool:
        try:  # the agent's SDK state, read from this thread while its loop may change it
            return len(unsettled_sends(client) or ()) >= 3
        except RuntimeError:
            return False

    await phone.wait_for(unanswered_sends, timeout=10)
    caplog.set_level(logging.INFO, logger="ably.realtime.connectionmanager")
    await asyncio.to_thread(restart_without_state, ably_server)

    # A device's reconnect may come after the agent's repair: it reads that from history.
    for device in (phone, laptop):
        reply = await device.final_reply(prompt_id, timeout=60)
        assert (reply.status, reply.text) == ("complete", TEXT), reply.error
    await agent.wait_idle(timeout=30)
    stored = await sync_to_async(Message.objects.get)(prompt_id=prompt_id, role="assistant")
    assert (stored.status, stored.text) == ("complete", TEXT)
    # What the agent held back during the outage did not come out in one burst the service
    # refused (text refused for the rate is text devices do not get until a repair).
    rate_refusals = [r for r in caplog.records if "42911" in r.getMessage()]
    assert rate_refusals == []
