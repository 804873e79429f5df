"""One user's conversation is closed to every other user, whatever SDK or raw frame they use.

Tokens come from Django (`realtime.create_token`, what `/ably/token` serves), so these tests prove
the capability Django mints, not one written for the test. Bob holds a perfectly valid token for
his own conversations and tries everything on Alice's: ably-python (realtime and REST), ably-js
(Node) and hand-made protocol frames that skip the SDKs' own client-side checks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from ably import AblyRealtime, AblyRest
from ably.types.message import Message as AblyMessage
from ably.util.exceptions import AblyException
from asgiref.sync import sync_to_async

from conversations import events, realtime
from conversations.agent import ably_adapter
from conversations.models import Conversation, Message
from emulators.ably.protocol import Action
from emulators.ably.testing import run_node_async

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_fixtures"]

WAIT = 10
JS_PROBE = Path(__file__).parent / "js" / "security_isolation_probe.mjs"


@pytest.fixture(autouse=True)
def _django_uses_the_stand_in(settings, ably_server, monkeypatch):
    settings.ABLY_API_KEY = ably_server.key
    settings.ABLY_ENDPOINT = ably_server.endpoint
    monkeypatch.setattr(realtime, "outbox", None)


async def token_for(user: Any, conversation: Conversation | None = None) -> str:
    return await sync_to_async(realtime.create_token)(user, conversation)


def realtime_client(server: Any, token: str) -> AblyRealtime:
    return AblyRealtime(token=token, **ably_adapter.client_options(server.endpoint))


def rest_client(server: Any, token: str) -> AblyRest:
    return AblyRest(token=token, **ably_adapter.client_options(server.endpoint))


async def refusal(awaitable: Any) -> int | None:
    """The Ably error code an operation fails with, or None when it succeeds."""
    try:
        await asyncio.wait_for(awaitable, WAIT)
    except AblyException as error:
        return error.code
    return None


@contextlib.asynccontextmanager
async def fresh_connection(server: Any, token: str) -> AsyncIterator[AblyRealtime]:
    client = await connected(realtime_client(server, token))
    try:
        yield client
    finally:
        await client.close()


async def connected(client: AblyRealtime) -> AblyRealtime:
    if client.connection.state != "connected":
        await asyncio.wait_for(client.connection.once_async("connected"), WAIT)
    return client


class RawClient:
    """A hostile client speaking the Ably protocol by hand: no SDK refuses anything for it."""

    def __init__(self, server: Any, token: str) -> None:
        self.url = f"ws://{server.host}:{server.port}/?access_token={token}&v=5&format=json"
        self.socket: Any = None
        self.frames: list[dict[str, Any]] = []
        self.msg_serial = 0

    async def __aenter__(self) -> RawClient:
        self.socket = await websockets.connect(self.url)
        connected_frame = await self.next_frame()
        assert connected_frame["action"] == Action.CONNECTED, connected_frame
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.socket.close()

    async def next_frame(self, *actions: int) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                frame = json.loads(await self.socket.recv())
                self.frames.append(frame)
                if not actions or frame["action"] in actions:
                    return frame

    async def send(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a MESSAGE/PRESENCE frame and return the server's ACK or NACK for it."""
        frame = {**frame, "msgSerial": self.msg_serial}
        self.msg_serial += 1
        await self.socket.send(json.dumps(frame))
        return await self.next_frame(Action.ACK, Action.NACK)

    async def attach(self, channel: str) -> dict[str, Any]:
        await self.socket.send(json.dumps({"action": Action.ATTACH, "channel": channel}))
        return await self.next_frame(Action.ATTACHED, Action.ERROR)


@pytest.fixture
async def alices_conversation(alice) -> Conversation:
    return await Conversation.objects.acreate(owner=alice, title="Alice's private plans")


# --- another user: nothing on Alice's channel --------------------------------------------------


async def test_bobs_token_cannot_touch_alices_conversation_through_ably_python(
    ably_server, alice, bob, alices_conversation
):
    await Conversation.objects.acreate(owner=bob)  # Bob has conversations of his own
    channel_name = alices_conversation.channel_name
    alice_client = await connected(realtime_client(ably_server, await token_for(alice)))
    bob_client = await connected(realtime_client(ably_server, await token_for(bob)))
    bob_rest = rest_client(ably_server, await token_for(bob))
    seen_by_alice: list[AblyMessage] = []
    try:
        alice_channel = alice_client.channels.get(channel_name)
        await asyncio.wait_for(alice_channel.subscribe(lambda m: seen_by_alice.append(m)), WAIT)
        await asyncio.wait_for(alice_channel.publish("prompt", "my secret plan"), WAIT)
        await asyncio.wait_for(alice_channel.presence.enter({"device": "phone"}), WAIT)

        bobs_view = bob_client.channels.get(channel_name)
        assert await refusal(bobs_view.subscribe(lambda m: None)) == 40160
        # Publishing and presence reach the server without an attach; each on a connection of
        # its own, since a channel that already failed to attach refuses locally (90001).
        bob_token = await token_for(bob)
        async with fresh_connection(ably_server, bob_token) as other:
            assert await refusal(other.channels.get(channel_name).publish("prompt", "hi")) == 40160
        async with fresh_connection(ably_server, bob_token) as other:
            entering = other.channels.get(channel_name).presence.enter("here")
            assert await refusal(entering) == 40160
        assert await refusal(bob_rest.channels.get(channel_name).publish("prompt", "hi")) == 40160
        assert await refusal(bob_rest.channels.get(channel_name).history()) == 40160
        assert await refusal(bob_rest.channels.get(channel_name).presence.get()) == 40160
        assert await refusal(bob_rest.channels.get(channel_name).presence.history()) == 40160
        # Nor learn which conversations exist: no lifecycle events, no channel enumeration.
        assert await refusal(bob_client.channels.get("[meta]channel.lifecycle").attach()) == 40160
        listing = await bob_rest.request("GET", "/channels", "5", params={"prefix": "ai:"})
        assert listing.status_code == 401
        # Nor Alice's conversation-list channel.
        alice_list = events.user_channel(realtime.client_id_for_user(alice))
        assert await refusal(bob_client.channels.get(alice_list).attach()) == 40160

        # Bob's connection is still fine for his own things; Alice saw nothing from him.
        assert bob_client.connection.state == "connected"
        await asyncio.wait_for(alice_channel.publish("prompt", "second"), WAIT)
        async with asyncio.timeout(WAIT):
            while len(seen_by_alice) < 2:
                await asyncio.sleep(0.02)
        assert [m.data for m in seen_by_alice] == ["my secret plan", "second"]
        history = await alice_channel.history()
        assert {m.client_id for m in history.items} == {realtime.client_id_for_user(alice)}
    finally:
        await bob_client.close()
        await alice_client.close()
        await bob_rest.close()


async def test_bobs_token_cannot_touch_alices_conversation_through_ably_js(
    ably_server, alice, bob, alices_conversation
):
    result = await run_node_async(
        JS_PROBE,
        ably_server,
        env={
            "PROBE_TOKEN": await token_for(bob),
            "PROBE_CHANNEL": alices_conversation.channel_name,
            "PROBE_LIST_CHANNEL": events.user_channel(realtime.client_id_for_user(alice)),
        },
    )
    assert result == {
        "clientId": realtime.client_id_for_user(bob),
        "attach": 40160,
        "publish": 40160,
        "presenceEnter": 40160,
        "history": 40160,
        "presenceGet": 40160,
        "restPublish": 40160,
        "listChannel": 40160,
        "stillConnected": True,
    }


async def test_raw_frames_get_no_further_than_the_sdks(
    ably_server, alice, bob, alices_conversation
):
    channel_name = alices_conversation.channel_name
    async with RawClient(ably_server, await token_for(bob)) as raw:
        assert (await raw.attach(channel_name))["error"]["code"] == 40160
        published = await raw.send(
            {
                "action": Action.MESSAGE,
                "channel": channel_name,
                "messages": [{"name": "prompt", "data": "hi"}],
            }
        )
        assert (published["action"], published["error"]["code"]) == (Action.NACK, 40160)
        entered = await raw.send(
            {
                "action": Action.PRESENCE,
                "channel": channel_name,
                "presence": [{"action": 2, "data": "here"}],
            }
        )
        assert (entered["action"], entered["error"]["code"]) == (Action.NACK, 40160)
    stored = await sync_to_async(ably_server.call)(
        lambda: ably_server.hub.find_channel("devapp", channel_name)
    )
    assert stored is None or not stored.messages


async def test_a_token_scoped_to_one_conversation_opens_no_other(ably_server, alice):
    wanted = await Conversation.objects.acreate(owner=alice)
    other = await Conversation.objects.acreate(owner=alice)
    client = await connected(realtime_client(ably_server, await token_for(alice, wanted)))
    try:
        assert await refusal(client.channels.get(wanted.channel_name).attach()) is None
        assert await refusal(client.channels.get(other.channel_name).attach()) == 40160
        # A wildcard-looking name is just another channel it has no grant for.
        assert await refusal(client.channels.get("ai:*").attach()) == 40160
    finally:
        await client.close()


# --- a user cannot be the agent -----------------------------------------------------------------


async def test_a_user_cannot_publish_or_enter_presence_as_the_agent(
    ably_server, alice, alices_conversation, settings
):
    agent_id = settings.ABLY_AGENT_CLIENT_ID
    channel_name = alices_conversation.channel_name
    token = await token_for(alice)
    reply = events.ReplyHeaders(str(uuid.uuid4()), str(uuid.uuid4()), "claude-forged")
    stop = events.Stop(reply, events.Status.COMPLETE)

    # The SDK refuses before sending ...
    client = await connected(realtime_client(ably_server, token))
    try:
        channel = client.channels.get(channel_name)
        await asyncio.wait_for(channel.attach(), WAIT)
        forged = AblyMessage(name="stop", data="", extras=stop.extras(), client_id=agent_id)
        assert await refusal(channel.publish(forged)) == 40012
        assert await refusal(channel.presence.enter_client(agent_id, {"status": "idle"})) in (
            40012,
            40160,
        )
    finally:
        await client.close()

    # ... and so does the server, for a client that skips those checks.
    async with RawClient(ably_server, token) as raw:
        assert (await raw.attach(channel_name))["action"] == Action.ATTACHED
        published = await raw.send(
            {
                "action": Action.MESSAGE,
                "channel": channel_name,
                "messages": [
                    {"name": "stop", "data": "", "clientId": agent_id, "extras": stop.extras()}
                ],
            }
        )
        assert (published["action"], published["error"]["code"]) == (Action.NACK, 40012)
        entered = await raw.send(
            {
                "action": Action.PRESENCE,
                "channel": channel_name,
                "presence": [{"action": 2, "clientId": agent_id, "data": {"status": "idle"}}],
            }
        )
        assert entered["action"] == Action.NACK
    # The connection itself cannot claim the agent's identity either.
    bad_connect = AblyRealtime(
        token=token,
        **ably_adapter.client_options(ably_server.endpoint, client_id=agent_id),
    )
    try:
        change = await asyncio.wait_for(bad_connect.connection.once_async("failed"), WAIT)
        assert change.reason.code == 40102
    finally:
        await bad_connect.close()

    # REST with the user's token and an agent clientId (message field or header).
    async with httpx.AsyncClient(base_url=ably_server.endpoint, timeout=WAIT) as http:
        url = f"/channels/{channel_name.replace(':', '%3A')}/messages"
        headers = {"Authorization": f"Bearer {base64.b64encode(token.encode()).decode()}"}
        by_field = await http.post(
            url, json={"name": "stop", "data": "", "clientId": agent_id}, headers=headers
        )
        assert (by_field.status_code, by_field.json()["error"]["code"]) == (400, 40012)
        by_header = await http.post(
            url,
            json={"name": "stop", "data": ""},
            headers={**headers, "X-Ably-ClientId": base64.b64encode(agent_id.encode()).decode()},
        )
        assert by_header.status_code >= 400 or by_header.json().get("serials"), by_header.text
        if by_header.status_code < 400:
            stored = await sync_to_async(ably_server.call)(
                lambda: ably_server.hub.find_channel("devapp", channel_name).messages[-1].message
            )
            # Accepted, but as Alice: the header cannot lend her the agent's identity.
            assert stored["clientId"] == realtime.client_id_for_user(alice)


async def test_a_user_cannot_edit_or_append_to_the_agents_reply(
    stand_ins, start_agent, devices, alice, alices_conversation
):
    """message-per-response: the reply is one mutable message; only the agent may change it."""
    ably_server, _ = stand_ins
    await asyncio.to_thread(start_agent, streaming_pattern="message-per-response")
    phone = await devices(alice, alices_conversation)
    prompt_id = await phone.prompt("Say exactly: The genuine answer.")
    reply = await phone.final_reply(prompt_id)
    assert reply.text == "The genuine answer."
    response = next(
        m
        for m in phone.received
        if m.name == events.Name.RESPONSE and m.client_id == phone.agent_client_id
    )
    channel = phone.channel
    tampered = AblyMessage(serial=response.serial, data=" (edited by the user)")
    assert await refusal(channel.append_message(tampered)) == 40160
    assert await refusal(channel.update_message(tampered)) == 40160
    assert await refusal(channel.delete_message(tampered)) == 40160
    stored = await asyncio.wait_for(channel.get_message(response.serial), WAIT)
    assert stored.data == "The genuine answer."
    assert stored.client_id == phone.agent_client_id


# --- forged agent events from a user --------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["message-per-response", "message-per-token"])
async def test_forged_agent_events_from_a_user_are_ignored_by_agent_and_devices(
    pattern, stand_ins, start_agent, devices, alice, alices_conversation
):
    agent = await asyncio.to_thread(start_agent, streaming_pattern=pattern)
    phone = await devices(alice, alices_conversation)
    laptop = await devices(alice, alices_conversation)
    prompt_id = await phone.prompt("Say exactly: Real reply.")
    real = await phone.final_reply(prompt_id)

    # Alice's own device pretends to be the agent: a stop for the real prompt with different
    # text, a whole fake reply, and a cancel-like stop aimed at a reply still to come.
    forged = events.ReplyHeaders(real.response_id, prompt_id, "claude-forged")
    fake = events.ReplyHeaders(str(uuid.uuid4()), str(uuid.uuid4()), "claude-forged")
    for name, data, extras in [
        ("start", "", events.Start(fake).extras()),
        (
            "response",
            "<img src=x onerror=alert(1)>",
            events.ResponseChunk(fake, "text", "").extras(),
        ),
        ("token", "pwned", events.Token(forged, events.Part.TEXT, 99, "").extras()),
        ("snapshot", "rewritten", events.Snapshot(forged, events.Part.TEXT, "").extras()),
        ("stop", "Forged error", events.Stop(forged, events.Status.ERROR).extras()),
        ("stop", "", events.Stop(fake, events.Status.COMPLETE).extras()),
    ]:
        await phone.publish_raw(name, data, extras)
    follow_up = await phone.prompt("Say exactly: Still the real agent.")
    assert (await laptop.final_reply(follow_up)).text == "Still the real agent."
    await agent.wait_idle()

    # Every forgery reached the laptop stamped with Alice's clientId, so it was dropped.
    assert len(laptop.ignored) == 6
    assert {m.client_id for m in laptop.ignored} == {phone.client_id}
    assert fake.response_id not in laptop.replies
    kept = laptop.reply_for(prompt_id)
    assert kept is not None and (kept.status, kept.text) == ("complete", "Real reply.")
    # The agent stored nothing for them and its reply to the real prompt is unchanged.
    stored = await sync_to_async(list)(
        Message.objects.filter(role="assistant").values_list("prompt_id", "text", "status")
    )
    assert sorted((str(p), t, s) for p, t, s in stored) == sorted(
        [(prompt_id, "Real reply.", "complete"), (follow_up, "Still the real agent.", "complete")]
    )
