"""A reply stream while its Ably connection is down or its SDK never answers (issue 13).

The channel here stands in for ably-python's: an SDK that takes an append and never answers
cannot be produced against the stand-in (the Ably adapter fixes the one known way), and the
connection state is set directly instead of waiting out ably-python's 15 s reconnect.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from ably.types.connectionstate import ConnectionState

from conversations import events
from conversations.agent.streaming import MessagePerResponseStream, RateLimiter

HEADERS = events.ReplyHeaders(response_id="r1", prompt_id="p1", model="m")


class SketchClient:
    def __init__(self) -> None:
        self.connection = SimpleNamespace(state=ConnectionState.CONNECTED, on=lambda _: None)


class SketchChannel:
    """Records publishes; appends are answered unless `answer_appends` is False."""

    name = "ai:sketch"

    def __init__(self, *, answer_appends: bool = True) -> None:
        self.ably = SketchClient()
        self.answer_appends = answer_appends
        self.created: list[str] = []
        self.appended: list[str] = []
        self.updated: list[str] = []

    async def publish(self, message) -> SimpleNamespace:
        self.created.append(message.data)
        return SimpleNamespace(serials=[f"serial-{len(self.created)}"])

    async def append_message(self, message) -> None:
        self.appended.append(message.data)
        if not self.answer_appends:
            await asyncio.get_running_loop().create_future()  # never answered

    async def update_message(self, message) -> None:
        self.updated.append(message.data)


def stream_on(channel: SketchChannel, publish_within: float = 10.0) -> MessagePerResponseStream:
    return MessagePerResponseStream(
        channel,
        HEADERS,
        RateLimiter(50),
        0.0,
        lambda: time.monotonic() + publish_within,
    )


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_deltas_made_while_the_connection_is_down_go_out_as_one_append_once_it_is_back():
    channel = SketchChannel()
    stream = stream_on(channel)
    stream.add(events.Part.TEXT, "Hello")
    await until(lambda: channel.appended == ["Hello"])

    channel.ably.connection.state = ConnectionState.DISCONNECTED
    for word in (" the", " model", " goes", " on"):
        stream.add(events.Part.TEXT, word)
        await asyncio.sleep(0.02)  # deltas arriving over time, each a flush of its own
    channel.ably.connection.state = ConnectionState.CONNECTED
    await until(lambda: len(channel.appended) == 2)
    # Not one queued send per delta for the SDK to fire at once when it reconnects.
    assert channel.appended == ["Hello", " the model goes on"]
    await asyncio.wait_for(stream.finish(), 10)


async def test_a_reply_ending_while_the_connection_is_down_is_repaired_whole_not_left_hanging():
    channel = SketchChannel()
    stream = stream_on(channel)
    stream.add(events.Part.TEXT, "Hello")
    await until(lambda: channel.appended == ["Hello"])
    channel.ably.connection.state = ConnectionState.DISCONNECTED
    stream.add(events.Part.TEXT, " world")
    finishing = asyncio.ensure_future(stream.finish())
    # The rest is held back, not queued in the SDK: the repair will carry it.
    await until(lambda: stream.failed_parts or channel.updated)
    assert channel.appended == ["Hello"]
    channel.ably.connection.state = ConnectionState.CONNECTED
    await asyncio.wait_for(finishing, 10)
    assert channel.updated == ["Hello world"]
    assert not stream.failed_parts


async def test_appends_the_sdk_never_answers_do_not_hang_the_reply():
    channel = SketchChannel(answer_appends=False)
    stream = stream_on(channel, publish_within=0.5)
    stream.add(events.Part.TEXT, "Hello")
    await until(lambda: channel.appended == ["Hello"])
    stream.add(events.Part.TEXT, " world")
    # Given up at the publish deadline; the whole text goes out as an update instead.
    await asyncio.wait_for(stream.finish(), 10)
    assert channel.updated == ["Hello world"]
    assert not stream.failed_parts
