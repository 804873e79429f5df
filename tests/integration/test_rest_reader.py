"""The agent's REST reads (`ably_adapter.RestReader`) against the Ably stand-in: what ably-python
publishes comes back whole and decoded, across pages, in either direction; channel listing;
Ably's errors as the SDK's exceptions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from ably import AblyException
from ably.types.message import Message
from aiohttp import web

from conversations.agent.ably_adapter import RestReader
from emulators.ably.testing import EmulatorServer, ably_realtime, ably_rest, connected
from tests.stub_http import start_one_route


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def reader(ably_server: EmulatorServer, http: aiohttp.ClientSession) -> RestReader:
    return RestReader(ably_server.endpoint, key=ably_server.key, http=http)


async def _publish(server: EmulatorServer, channel: str, messages: list[Message]) -> None:
    rest = ably_rest(server)
    try:
        await rest.channels.get(channel).publish(messages)
    finally:
        await rest.close()


def _messages(count: int) -> list[Message]:
    # Every data shape the agent reads back: JSON objects, text, and extras with headers.
    return [
        Message(
            name="prompt" if i % 2 else "stop",
            data={"text": f"prompt {i}", "nested": [i, "é✓"]} if i % 2 else f"text {i} ✓",
            extras={"headers": {"promptId": f"p-{i}"}},
        )
        for i in range(count)
    ]


async def test_history_reads_every_page_decoded_in_either_direction(
    ably_server: EmulatorServer, reader: RestReader
) -> None:
    before_ms = int(time.time() * 1000) - 1000
    sent = _messages(25)
    await _publish(ably_server, "ai:history", sent)

    forwards = await reader.history("ai:history", start_ms=before_ms, direction="forwards", limit=7)
    assert [(m.name, m.data, m.extras) for m in forwards] == [
        (m.name, m.data, m.extras) for m in sent
    ]
    assert all(m.id and m.timestamp for m in forwards)
    backwards = await reader.history("ai:history", start_ms=before_ms, direction="backwards")
    assert [m.id for m in backwards] == [m.id for m in reversed(forwards)]


async def test_history_starts_where_asked(ably_server: EmulatorServer, reader: RestReader) -> None:
    await _publish(ably_server, "ai:start", _messages(3))
    assert (
        await reader.history(
            "ai:start", start_ms=int(time.time() * 1000) + 60_000, direction="forwards"
        )
        == []
    )


async def test_channel_names_lists_the_attached_channels_with_the_prefix(
    ably_server: EmulatorServer, reader: RestReader
) -> None:
    client = await connected(ably_realtime(ably_server))
    try:
        for channel in ("ai:one", "ai:two", "other:three"):
            await client.channels.get(channel).attach()
        assert sorted(await reader.channel_names("ai:")) == ["ai:one", "ai:two"]
    finally:
        await client.close()


async def test_a_refused_read_raises_ablys_error(
    ably_server: EmulatorServer, http: aiohttp.ClientSession
) -> None:
    name = ably_server.key.partition(":")[0]
    wrong = RestReader(ably_server.endpoint, key=f"{name}:not-the-secret", http=http)
    with pytest.raises(AblyException) as refused:
        await wrong.history("ai:x", start_ms=0, direction="forwards")
    assert refused.value.code == 40101
    assert refused.value.status_code == 401


async def test_a_reply_that_is_not_json_raises_an_ably_error(http: aiohttp.ClientSession) -> None:
    # A proxy's error page in front of Ably, say: the caller gets an AblyException it can log.
    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad gateway</html>", content_type="text/html")

    runner, url = await start_one_route("GET", "/channels", bad_gateway)
    try:
        with pytest.raises(AblyException) as failed:
            await RestReader(url, key="a.b:c", http=http).channel_names("ai:")
        assert failed.value.status_code == 502
    finally:
        await runner.cleanup()
