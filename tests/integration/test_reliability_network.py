"""A device loses its network mid-reply, for 10 seconds and for 3 minutes.

The device reaches Ably through a TCP proxy that can cut the network (live sockets reset, new
ones refused). Waiting 3 real minutes is not needed: the stand-in's clock is moved on by the
outage, which is all Ably's side sees of time passing (connection state TTL: 2 minutes). The
reply finishes while the device is away; once back, the device must show the whole reply, once.

- 10 s: under the TTL, so the connection resumes and Ably replays what was missed.
- 3 min: over it, so the connection is new. The channel re-attaches from its last
  channelSerial (ably-python sends it, RTL4c1) and Ably delivers what followed; if it could not
  (no RESUMED flag), the device rebuilds the reply from history (`soak.devices.RecoveringDevice`).
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations import realtime
from soak.devices import RecoveringDevice
from soak.proxy import NetworkProxy

TEXT = " ".join(f"fragment{i}" for i in range(150))
TTL_MS = 120_000


async def wait_until_server_sees_the_drop(ably_server, connection_id: str) -> None:
    def transport_gone() -> bool:
        connection = ably_server.hub.connections.get(connection_id)
        return connection is None or connection.transport_id is None

    async with asyncio.timeout(10):
        while not await asyncio.to_thread(ably_server.call, transport_gone):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("outage_ms", "pattern"),
    [
        (10_000, "message-per-token"),
        (180_000, "message-per-response"),
    ],
    ids=["10s-token", "3min-response"],
)
async def test_a_device_offline_mid_reply_shows_the_whole_reply_once_back(
    outage_ms, pattern, stand_ins, start_agent, devices, alice, conversation
):
    ably_server, anthropic_server = stand_ins
    anthropic_server.set_pacing(ttft=0.05, tokens_per_second=60)
    await asyncio.to_thread(start_agent, streaming_pattern=pattern)
    proxy = await NetworkProxy(ably_server.host, ably_server.port).start()
    token = await sync_to_async(realtime.create_token)(alice)
    laptop = await RecoveringDevice(alice, conversation.pk, proxy.endpoint, token).attach()
    phone = await devices(alice, conversation)
    try:
        prompt_id = await phone.prompt(f"Say exactly: {TEXT}")
        partial = await laptop.streaming(prompt_id)
        assert partial.text and partial.text != TEXT
        connection_id = laptop.client.connection.connection_manager.connection_id

        await proxy.cut()
        await wait_until_server_sees_the_drop(ably_server, connection_id)
        await asyncio.to_thread(ably_server.advance_clock, outage_ms)
        # The reply ends while the laptop is away; the phone saw all of it.
        assert (await phone.final_reply(prompt_id)).text == TEXT
        assert not laptop.reply_for(prompt_id).final
        await proxy.restore()

        reply = await laptop.final_reply(prompt_id, timeout=30)
        assert (reply.status, reply.text) == ("complete", TEXT)
        assert laptop.doubled_live_fragments == 0
        if outage_ms < TTL_MS:
            # Resumed: Ably replayed the gap, no history read needed.
            assert laptop.recoveries == 0
            assert laptop.client.connection.connection_manager.connection_id == connection_id
        else:
            # A new connection (the old one expired with the TTL). The channel still carries on
            # from its last channelSerial (RTL4c1); had that failed, history would have.
            assert laptop.client.connection.connection_manager.connection_id != connection_id
            assert laptop.resumed[-1] or laptop.recoveries >= 1

        # And the conversation carries on over the new connection.
        follow_up = await laptop.prompt("Say exactly: Back online.")
        assert (await laptop.final_reply(follow_up)).text == "Back online."
    finally:
        await laptop.close()
        await proxy.close()
