"""Limits, bad input and metadata through real sockets: the errors Ably gives, nobody else hurt."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import websockets
from ably import AblyException
from ably.types.message import Message

from emulators.ably.protocol import Action
from emulators.ably.testing import (
    DEFAULT_KEY,
    EmulatorServer,
    ably_realtime,
    connected,
    eventually,
    run_node,
)

JS = Path(__file__).parent / "js"


def ws_url(server: EmulatorServer, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"key": DEFAULT_KEY, **params}.items())
    return f"ws://{server.host}:{server.port}/?{query}"


async def next_frame(socket: websockets.ClientConnection) -> dict:
    raw = await asyncio.wait_for(socket.recv(), 10)
    return json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{not json", 40000),
        (b"\xc1\xc1", 40000),
        (json.dumps({"action": 42}), 40000),
        (json.dumps({"no": "action"}), 40000),
        ("x" * 600_000, 40009),
    ],
)
async def test_malformed_frames_get_an_ably_error_and_others_carry_on(
    ably_server: EmulatorServer, payload: str | bytes, code: int
) -> None:
    bystander = await connected(ably_realtime(ably_server, client_id="bystander"))
    try:
        async with websockets.connect(ws_url(ably_server), max_size=None) as socket:
            assert (await next_frame(socket))["action"] == Action.CONNECTED
            await socket.send(payload)
            error = await next_frame(socket)
            assert error["action"] == Action.ERROR
            assert error["error"]["code"] == code
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 10)
        result = await bystander.channels.get("room").publish("still", "fine")
        assert result.serials
    finally:
        await bystander.close()


async def test_msgpack_framing_on_a_raw_socket(ably_server: EmulatorServer) -> None:
    async with websockets.connect(ws_url(ably_server, format="msgpack")) as socket:
        connected_frame = await next_frame(socket)
        assert connected_frame["connectionDetails"]["maxMessageSize"] == 65_536
        await socket.send(msgpack.packb({"action": Action.HEARTBEAT, "id": "p"}))
        assert await next_frame(socket) == {"action": Action.HEARTBEAT, "id": "p"}


async def test_python_sdk_sees_rate_size_and_channel_limits(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    server = make_ably_server(max_inbound_rate=5, max_channels_per_connection=2)
    client = await connected(ably_realtime(server, client_id="busy"))
    try:
        channel = client.channels.get("ai:limits")
        results = await asyncio.gather(
            *(channel.publish("n", str(i)) for i in range(8)), return_exceptions=True
        )
        codes = [r.code for r in results if isinstance(r, AblyException)]
        assert len(codes) == 3 and set(codes) == {42911}
        with pytest.raises(AblyException) as too_big:
            await client.channels.get("ai:big").publish(Message(name="n", data="x" * 70_000))
        assert too_big.value.code == 40009
        await channel.attach()
        await client.channels.get("ai:second").attach()
        with pytest.raises(AblyException) as too_many:
            await client.channels.get("ai:third").attach()
        assert too_many.value.code == 90021
    finally:
        await client.close()


def test_ably_js_sees_limits_and_channel_lifecycle(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    server = make_ably_server(
        max_inbound_rate=5,
        max_channels_per_connection=3,
        key_capabilities={"devapp.devkey": '{"[*]*":["*"]}'},
    )
    result = run_node(JS / "ably_limits.mjs", server)
    assert result["rateCodes"] == [42911, 42911, 42911]
    assert result["sizeCode"] == 40009
    assert result["channelLimitCode"] == 90021
    assert result["appendTooBigCode"] == 40009
    assert result["lifecycle"][:2] == [
        ["channel.opened", "ai:watched"],
        ["channel.closed", "ai:watched"],
    ]
    assert result["lifecycleDeniedCode"] == 40160


async def test_lifecycle_events_reach_a_python_subscriber_with_channel_metadata(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    from tests.integration.test_ably_python import make_jwt

    server = make_ably_server(key_capabilities={"devapp.devkey": '{"[*]*":["*"]}'})
    token = make_jwt("watcher", capability='{"[meta]*":["channel-metadata"],"*":["subscribe"]}')
    watcher = await connected(ably_realtime(server, key=None, token=token))
    user = await connected(ably_realtime(server, client_id="user"))
    try:
        events: list[tuple[str, dict]] = []
        await watcher.channels.get("[meta]channel.lifecycle").subscribe(
            lambda m: events.append((m.name, m.data))
        )
        await user.channels.get("ai:new-conversation").attach()
        await eventually(lambda: events, "channel.opened")
        name, details = events[0]
        assert name == "channel.opened"
        assert details["channelId"] == "ai:new-conversation"
        assert details["status"]["occupancy"]["metrics"]["connections"] == 1
    finally:
        await watcher.close()
        await user.close()


def test_cli_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.ably", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "Ably stand-in on http://127.0.0.1:" in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_cli_rejects_a_malformed_key() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "emulators.ably", "--key", "not-a-key"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 2
    assert "key" in completed.stderr.lower()
