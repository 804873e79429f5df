"""The end-of-reply repair when the agent's connection was interrupted, through ably-python.

After a reconnect ably-python re-sends what it had queued, but a publish made just after
CONNECTED can overtake those re-sends, and a send it reported failed can still go out later.
So a reply whose connection dropped ends with its full text (an update, or a `snapshot`), and
a create whose ack was lost is repeated under the same id, never published twice.
"""

from __future__ import annotations

from typing import Any

import pytest
from ably.types.message import Message, MessageAction
from ably.util.exceptions import AblyException

from conversations import events
from conversations.agent.streaming import (
    MessagePerResponseStream,
    MessagePerTokenStream,
    RateLimiter,
)
from emulators.ably.server import EmulatorServer
from emulators.ably.testing import ably_realtime, connected, eventually, python_connection_id

REPLY = events.ReplyHeaders("response-1", "prompt-1", "claude-test")
CHANNEL = "ai:repair-test"


async def open_pair(ably_server: EmulatorServer) -> tuple[Any, Any, list[Message]]:
    """The agent's attached channel and a device's, with what the device receives."""
    agent = await connected(ably_realtime(ably_server, client_id="agent"))
    device = await connected(ably_realtime(ably_server, client_id="device"))
    channel = agent.channels.get(CHANNEL)
    await channel.attach()
    received: list[Message] = []
    await device.channels.get(CHANNEL).subscribe(lambda message: received.append(message))
    return agent, device, received


def text_messages(received: list[Message]) -> list[Message]:
    return [m for m in received if m.name in (events.Name.RESPONSE, events.Name.SNAPSHOT)]


async def last_text_becomes(received: list[Message], text: str, what: str) -> Message:
    """Until the device's latest text-carrying message holds exactly `text`; returns it."""

    def arrived() -> bool:
        texts = text_messages(received)
        return bool(texts) and texts[-1].data == text

    await eventually(arrived, what)
    return text_messages(received)[-1]


@pytest.mark.parametrize("stream_class", [MessagePerResponseStream, MessagePerTokenStream])
async def test_a_reply_whose_connection_dropped_ends_with_its_full_text(
    ably_server: EmulatorServer, stream_class: type
) -> None:
    agent, device, received = await open_pair(ably_server)
    try:
        stream = stream_class(agent.channels.get(CHANNEL), REPLY, RateLimiter(45), 0.0)
        stream.add(events.Part.TEXT, "before the drop, ")
        await eventually(lambda: len(received) >= 1, "the first part of the reply")
        assert ably_server.drop_transport(python_connection_id(agent))
        stream.add(events.Part.TEXT, "after it.")
        await stream.finish()

        # Every publish was acknowledged (ably-python re-sent the unacked ones on resume), yet
        # the order they landed in is not guaranteed: the last word must be the whole text.
        last = await last_text_becomes(
            received, "before the drop, after it.", "the full text, last"
        )
        if stream_class is MessagePerResponseStream:
            assert last.action == MessageAction.MESSAGE_UPDATE
        else:
            assert last.name == events.Name.SNAPSHOT
    finally:
        await agent.close()
        await device.close()


class AckLostOnFirstPublish:
    """A channel whose first publish reaches Ably but whose ack never comes back."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self.publishes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        self.publishes += 1
        result = await self._channel.publish(*args, **kwargs)
        if self.publishes == 1:
            raise AblyException("connection lost before the ack", 500, 50000)
        return result


async def test_a_create_whose_ack_was_lost_is_repeated_not_duplicated(
    ably_server: EmulatorServer,
) -> None:
    agent, device, received = await open_pair(ably_server)
    try:
        channel = AckLostOnFirstPublish(agent.channels.get(CHANNEL))
        stream = MessagePerResponseStream(channel, REPLY, RateLimiter(45), 0.0)
        stream.add(events.Part.TEXT, "the whole answer")
        await stream.finish()

        await last_text_becomes(received, "the whole answer", "the repaired text")
        creates = [m for m in received if m.action == MessageAction.MESSAGE_CREATE]
        assert len(creates) == 1, "a second create would be a second copy of the reply"
        history = await agent.channels.get(CHANNEL).history()
        assert [m.serial for m in history.items] == [creates[0].serial]
    finally:
        await agent.close()
        await device.close()
