"""ably-python 3.1.x, unmodified, against the Ably stand-in over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from ably import AblyException
from ably.types.message import Message, MessageAction
from ably.types.operations import MessageOperation
from ably.types.presence import PresenceAction

from emulators.ably.testing import (
    DEFAULT_KEY,
    EmulatorServer,
    ably_realtime,
    ably_rest,
    connected,
    eventually,
    python_connection_id as connection_id,
)

KEY_NAME, KEY_SECRET = DEFAULT_KEY.split(":")


def make_jwt(
    client_id: str | None = None,
    capability: str = '{"*":["*"]}',
    ttl_s: int = 3600,
    now_ms: int | None = None,
) -> str:
    now = (now_ms if now_ms is not None else int(time.time() * 1000)) // 1000
    claims: dict[str, Any] = {"iat": now, "exp": now + ttl_s, "x-ably-capability": capability}
    if client_id:
        claims["x-ably-clientId"] = client_id
    return jwt.encode(claims, KEY_SECRET, algorithm="HS256", headers={"kid": KEY_NAME})


def jwt_callback(client_id: str, **kwargs: Any) -> Callable[[dict], Any]:
    async def callback(params: dict) -> str:  # ably-python awaits auth_callback
        return make_jwt(client_id, **kwargs)

    return callback


async def test_publish_subscribe_and_rest_history(ably_server: EmulatorServer) -> None:
    alice = await connected(ably_realtime(ably_server, client_id="alice"))
    bob = await connected(ably_realtime(ably_server, client_id="bob"))
    try:
        received: list[Message] = []
        await bob.channels.get("ai:py").subscribe(lambda m: received.append(m))
        result = await alice.channels.get("ai:py").publish(
            Message(name="prompt", data="hello", extras={"headers": {"promptId": "p1"}})
        )
        await eventually(lambda: received, "bob receiving the prompt")
        message = received[0]
        assert message.data == "hello"
        assert message.client_id == "alice"
        assert message.extras == {"headers": {"promptId": "p1"}}
        assert message.id == f"{connection_id(alice)}:0:0"
        assert message.serial == result.serials[0]
        rest = ably_rest(ably_server)
        history = await rest.channels.get("ai:py").history()
        assert [m.data for m in history.items] == ["hello"]
        await rest.close()
    finally:
        await alice.close()
        await bob.close()


async def test_jwt_auth_callback_and_identity_enforcement(ably_server: EmulatorServer) -> None:
    client = await connected(
        ably_realtime(ably_server, key=None, auth_callback=jwt_callback("carol"))
    )
    try:
        assert client.auth.client_id == "carol"
        channel = client.channels.get("room")
        await channel.attach()
        with pytest.raises(AblyException) as excinfo:
            await channel.publish(Message(name="x", data="y", client_id="mallory"))
        assert excinfo.value.code == 40012
    finally:
        await client.close()


async def test_bad_key_fails_the_connection(ably_server: EmulatorServer) -> None:
    client = ably_realtime(ably_server, key="devapp.devkey:wrong-secret", use_token_auth=False)
    try:
        await asyncio.wait_for(client.connection.once_async("failed"), 10)
        assert client.connection.error_reason.code == 40101
    finally:
        await client.close()


async def test_capability_denies_publish(ably_server: EmulatorServer) -> None:
    token = make_jwt("dave", capability='{"room":["subscribe"]}')
    client = await connected(ably_realtime(ably_server, key=None, token=token))
    try:
        channel = client.channels.get("room")
        await channel.attach()
        with pytest.raises(AblyException) as excinfo:
            await channel.publish("x", "y")
        assert excinfo.value.code == 40160
        other = client.channels.get("forbidden")
        with pytest.raises(AblyException) as excinfo:
            await other.attach()
        assert excinfo.value.code == 40160
    finally:
        await client.close()


async def test_token_expiry_renews_and_keeps_the_connection(ably_server: EmulatorServer) -> None:
    issued: list[str] = []

    async def callback(params: dict) -> str:
        # Minted on the stand-in's clock, which the test moves forward.
        issued.append(make_jwt("erin", ttl_s=60, now_ms=ably_server.app.clock()))
        return issued[-1]

    client = await connected(ably_realtime(ably_server, key=None, auth_callback=callback))
    try:
        original_id = connection_id(client)
        ably_server.advance_clock(61_000)
        await eventually(lambda: len(issued) >= 2, "a renewed token")
        await eventually(
            lambda: client.connection.state.value == "connected" and len(issued) >= 2,
            "reconnection with the renewed token",
        )
        assert connection_id(client) == original_id
    finally:
        await client.close()


async def test_resume_after_transport_drop_delivers_missed_messages(
    ably_server: EmulatorServer,
) -> None:
    viewer = await connected(ably_realtime(ably_server, client_id="viewer"))
    publisher = ably_rest(ably_server)
    try:
        received: list[str] = []
        channel = viewer.channels.get("ai:resume")
        await channel.subscribe(lambda m: received.append(m.data))
        original_id = connection_id(viewer)
        assert ably_server.drop_transport(original_id)
        for index in range(3):
            await publisher.channels.get("ai:resume").publish("n", str(index))
        await eventually(lambda: len(received) >= 3, "missed messages after resume")
        assert received == ["0", "1", "2"]
        assert connection_id(viewer) == original_id
    finally:
        await viewer.close()
        await publisher.close()


async def test_appends_stream_to_subscribers_and_history_has_the_whole(
    ably_server: EmulatorServer,
) -> None:
    agent = await connected(
        ably_realtime(ably_server, client_id="agent", transport_params={"appendRollupWindow": "0"})
    )
    viewer = await connected(ably_realtime(ably_server, client_id="viewer"))
    try:
        received: list[Message] = []
        await viewer.channels.get("ai:stream").subscribe(lambda m: received.append(m))
        channel = agent.channels.get("ai:stream")
        result = await channel.publish("response", "")
        serial = result.serials[0]
        for piece in ("Hello", ", ", "world"):
            await channel.append_message(
                Message(serial=serial, data=piece), MessageOperation(description="token")
            )
        await eventually(lambda: len(received) >= 4, "the create and three appends")
        assert [m.action for m in received] == [MessageAction.MESSAGE_CREATE] + [
            MessageAction.MESSAGE_APPEND
        ] * 3
        assert "".join(m.data for m in received) == "Hello, world"
        rest = ably_rest(ably_server)
        history = await rest.channels.get("ai:stream").history()
        (whole,) = history.items
        assert whole.action == MessageAction.MESSAGE_UPDATE
        assert whole.data == "Hello, world"
        assert whole.serial == serial
        await rest.close()
    finally:
        await agent.close()
        await viewer.close()


async def test_presence_enter_get_and_leave_after_abrupt_disconnect(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    server = make_ably_server(presence_leave_delay_ms=300, connection_state_ttl_ms=600)
    alice = await connected(ably_realtime(server, client_id="alice"))
    bob = await connected(ably_realtime(server, client_id="bob"))
    try:
        await alice.channels.get("room").presence.enter({"status": "idle"})
        bob_presence = bob.channels.get("room").presence
        members = await bob_presence.get()
        assert [(m.client_id, m.data) for m in members] == [("alice", {"status": "idle"})]
        events: list[Any] = []
        await bob_presence.subscribe(lambda e: events.append(e))
        # Alice's socket dies and she never comes back: the stand-in's delayed leave removes her.
        await alice.close()
        await eventually(
            lambda: any(e.action == PresenceAction.LEAVE for e in events), "alice's leave"
        )
        assert await bob_presence.get() == []
    finally:
        await bob.close()


async def test_rest_history_pages_with_link_headers(ably_server: EmulatorServer) -> None:
    rest = ably_rest(ably_server)
    try:
        channel = rest.channels.get("ai:pages")
        for index in range(5):
            await channel.publish("n", str(index))
        page = await channel.history(limit=2)
        seen = [m.data for m in page.items]
        while page.has_next():
            page = await page.next()
            seen += [m.data for m in page.items]
        assert seen == ["4", "3", "2", "1", "0"]
        forwards = await channel.history(direction="forwards", limit=3)
        assert [m.data for m in forwards.items] == ["0", "1", "2"]
    finally:
        await rest.close()


async def test_binary_and_json_data_cross_wire_formats(ably_server: EmulatorServer) -> None:
    binary_publisher = await connected(ably_realtime(ably_server, client_id="bin"))
    json_subscriber = await connected(
        ably_realtime(ably_server, client_id="json", use_binary_protocol=False)
    )
    try:
        received: list[Any] = []
        await json_subscriber.channels.get("ai:data").subscribe(lambda m: received.append(m.data))
        channel = binary_publisher.channels.get("ai:data")
        await channel.publish("bytes", b"\x00\xffbinary")
        await channel.publish("object", {"answer": 42})
        await channel.publish("text", "plain")
        await eventually(lambda: len(received) == 3, "three payloads")
        assert received == [b"\x00\xffbinary", {"answer": 42}, "plain"]
    finally:
        await binary_publisher.close()
        await json_subscriber.close()


async def test_ping_rewind_detach_and_mutations(ably_server: EmulatorServer) -> None:
    from ably.types.channeloptions import ChannelOptions

    author = await connected(ably_realtime(ably_server, client_id="author"))
    try:
        assert await author.connection.ping() >= 0
        channel = author.channels.get("ai:edits")
        for text in ("one", "two", "three"):
            await channel.publish("prompt", text)
        edited = (await channel.publish("prompt", "tpyo")).serials[0]
        update = await channel.update_message(
            Message(serial=edited, data="typo"), MessageOperation(description="spelling")
        )
        assert update.version_serial
        deleted = await channel.delete_message(Message(serial=edited))
        assert deleted.version_serial > update.version_serial
        late = await connected(ably_realtime(ably_server, client_id="late"))
        try:
            backlog: list[Message] = []
            rewound = late.channels.get("ai:edits", ChannelOptions(params={"rewind": "2"}))
            await rewound.subscribe(lambda m: backlog.append(m))
            await eventually(lambda: len(backlog) == 2, "two rewound messages")
            assert [(m.data, m.action) for m in backlog] == [
                ("three", MessageAction.MESSAGE_CREATE),
                ("typo", MessageAction.MESSAGE_DELETE),
            ]
            await rewound.detach()
            assert rewound.state.value == "detached"
        finally:
            await late.close()
    finally:
        await author.close()


async def test_expired_resume_gives_a_new_connection_with_80008(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    server = make_ably_server(connection_state_ttl_ms=1_000)
    client = await connected(ably_realtime(server, client_id="sleepy"))
    try:
        first_id = connection_id(client)
        errors: list[Any] = []
        client.connection.on("connected", lambda change: errors.append(change.reason))

        def drop_and_expire() -> None:
            # Both on the stand-in's loop, before the client can come back: its state is gone.
            server.app.drop_transport(first_id)
            server.app.clock.offset_ms += 2_000
            server.hub.run_due_timers()

        server.call(drop_and_expire)
        await eventually(lambda: errors, "reconnection")
        assert errors[0] is not None and errors[0].code == 80008
        assert connection_id(client) != first_id
    finally:
        await client.close()


async def test_echo_off_keeps_own_messages_away(ably_server: EmulatorServer) -> None:
    # ably-python 3.1 has no echo_messages option; its transport_params reach the connect URL.
    quiet = await connected(
        ably_realtime(ably_server, client_id="quiet", transport_params={"echo": "false"})
    )
    loud = await connected(ably_realtime(ably_server, client_id="loud"))
    try:
        heard: list[str] = []
        await quiet.channels.get("ai:echo").subscribe(lambda m: heard.append(m.data))
        await quiet.channels.get("ai:echo").publish("n", "mine")
        await loud.channels.get("ai:echo").publish("n", "theirs")
        await eventually(lambda: "theirs" in heard, "the other client's message")
        assert heard == ["theirs"]
    finally:
        await quiet.close()
        await loud.close()


async def test_a_silent_server_trips_the_idle_timeout_and_the_client_resumes(
    make_ably_server: Callable[..., EmulatorServer],
) -> None:
    server = make_ably_server(max_idle_interval_ms=300)
    client = await connected(ably_realtime(server, client_id="idle", realtime_request_timeout=1000))
    try:
        received: list[str] = []
        await client.channels.get("ai:idle").subscribe(lambda m: received.append(m.data))
        states: list[str] = []
        client.connection.on(lambda change: states.append(change.current.value))
        original_id = connection_id(client)
        assert server.freeze_transport(original_id)
        server.publish("ai:idle", "n", "during the silence")
        await eventually(lambda: received == ["during the silence"], "recovery after idle", 20)
        assert "disconnected" in states
        assert connection_id(client) == original_id
    finally:
        await client.close()
