"""The agent's channel is unusable for a while mid-reply: the reply still ends whole, with `stop`.

What the restart soak found (docs/reliability.md): after an Ably node restart, under load, the
node answers re-attaches too slowly, ably-python times them out and puts the agent's channel in
SUSPENDED, and then refuses every publish at once (90001) until its own retry timer re-attaches
15 s later. The agent used to retry its repair and `stop` for 3.5 s only: devices were left
with a reply showing `complete` with text missing, or with no final state at all.

Reproduced deterministically here: the stand-in's link to the agent drops (the agent resumes at
once) and the node ignores the agent's ATTACH frames for that conversation until the agent has
asked twice, so the channel is SUSPENDED when the reply ends. The fault is injected in the
stand-in (the network side), never in the agent or the SDK.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async

from conversations import events
from conversations.models import Message
from emulators.ably.protocol import Action
from emulators.ably.testing import python_connection_id

TEXT = " ".join(f"piece{i}" for i in range(80))


class IgnoredAttaches:
    """Makes the stand-in ignore the agent's ATTACH frames for one channel, as an overloaded
    node that never answers them; lets them through again after `limit` were ignored."""

    def __init__(self, hub, channel_name: str, agent_client_id: str, limit: int) -> None:
        self.hub = hub
        self.channel_name = channel_name
        self.agent_client_id = agent_client_id
        self.limit = limit
        self.ignored = 0
        self.released = threading.Event()
        self._receive = hub.receive

    def __call__(self, transport_id, frame) -> None:
        connection = self.hub.transports.get(transport_id)
        if (
            not self.released.is_set()
            and isinstance(frame, dict)
            and frame.get("action") == Action.ATTACH
            and frame.get("channel") == self.channel_name
            and connection is not None
            and connection.client_id == self.agent_client_id
        ):
            self.ignored += 1
            if self.ignored >= self.limit:
                self.released.set()
            return
        self._receive(transport_id, frame)


@pytest.mark.parametrize("pattern", ["message-per-response", "message-per-token"])
async def test_a_reply_that_ends_while_its_channel_is_suspended_still_reaches_every_device(
    pattern, stand_ins, start_agent, devices, alice, conversation, monkeypatch, settings
):
    ably_server, anthropic_server = stand_ins
    anthropic_server.set_pacing(ttft=0.05, tokens_per_second=80)
    agent_thread = await asyncio.to_thread(
        start_agent, streaming_pattern=pattern, stall_timeout=60.0, publish_deadline=60.0
    )
    agent = agent_thread.agent
    phone = await devices(alice, conversation)
    laptop = await devices(alice, conversation)
    channel_name = events.conversation_channel(conversation.pk)
    ignoring = IgnoredAttaches(ably_server.hub, channel_name, settings.ABLY_AGENT_CLIENT_ID, 2)
    monkeypatch.setattr(ably_server.hub, "receive", ignoring)

    # The model goes quiet part-way (well within the stall timeout), so the reply ends only
    # after ably-python has given up on the re-attach (10 s) and suspended the channel.
    prompt_id = await phone.prompt(f"Say exactly: {TEXT} [[fault:stall=20]]")
    await laptop.streaming(prompt_id)
    connection_id = python_connection_id(agent.pool.for_channel(channel_name).client)
    assert await asyncio.to_thread(ably_server.drop_transport, connection_id)

    for device in (phone, laptop):
        reply = await device.final_reply(prompt_id, timeout=90)
        assert reply.status == "complete", (reply.status, reply.error)
        assert reply.text == TEXT
    # The outage was real: the agent's channel did get suspended and re-attached.
    assert ignoring.released.is_set()
    await agent_thread.wait_idle(timeout=30)
    stored = await sync_to_async(Message.objects.get)(prompt_id=prompt_id, role="assistant")
    assert (stored.status, stored.text) == ("complete", TEXT)

    follow_up = await laptop.prompt("Say exactly: Still here.")
    assert (await phone.final_reply(follow_up, timeout=30)).text == "Still here."


async def test_a_reply_that_cannot_be_repaired_in_time_ends_as_an_error_never_as_complete(
    stand_ins, start_agent, devices, alice, conversation, monkeypatch, settings
):
    """An outage longer than the publish deadline: devices hold a reply with a gap, so `stop`
    must say so (status error, the whole reply kept in the database) rather than `complete`."""
    ably_server, anthropic_server = stand_ins
    anthropic_server.set_pacing(ttft=0.05, tokens_per_second=80)
    agent_thread = await asyncio.to_thread(start_agent, stall_timeout=60.0, publish_deadline=3.0)
    agent = agent_thread.agent
    phone = await devices(alice, conversation)
    channel_name = events.conversation_channel(conversation.pk)
    ignoring = IgnoredAttaches(ably_server.hub, channel_name, settings.ABLY_AGENT_CLIENT_ID, 2)
    monkeypatch.setattr(ably_server.hub, "receive", ignoring)

    prompt_id = await phone.prompt(f"Say exactly: {TEXT} [[fault:stall=20]]")
    await phone.streaming(prompt_id)
    connection_id = python_connection_id(agent.pool.for_channel(channel_name).client)
    assert await asyncio.to_thread(ably_server.drop_transport, connection_id)

    reply = await phone.final_reply(prompt_id, timeout=90)
    assert reply.status == events.Status.ERROR
    assert "may be missing" in reply.error and "reload" in reply.error
    assert TEXT.startswith(reply.text) and reply.text != TEXT
    await agent_thread.wait_idle(timeout=30)
    stored = await sync_to_async(Message.objects.get)(prompt_id=prompt_id, role="assistant")
    assert (stored.status, stored.text) == ("error", TEXT)
